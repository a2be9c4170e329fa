#!/bin/sh
# Acme Sensor 7.11.2 "live" - the July-2024 shape of the demo candidate.
# Same boot-start driver and service as 7.11.1 (built from the same source: src/ and
# acme-sensord are links to ../acme-sensor-7.11.1/), new content: channel file
# C-00000291. Unlike 7.11.1, the update does not wait for the next boot: the running sensor
# applies the new content at once, while this installer runs (the driver is (re)loaded with
# the new channel file). Next to other-edr the first process started after that (the
# installer's own `svc start`, or an agent's `sleep`) hits the driver's NULL dereference:
# the kernel panics during the install command. The boot hook is in place and synced by
# then, so the same panic comes back at every boot (a boot loop). Without other-edr it
# installs and runs cleanly.
# Exit 0 on success (where it does not crash); 10 no driver in the payload, 11 wrong kernel.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
[ -f "$src/acme_sensor.ko" ] || { echo "acme-sensor: acme_sensor.ko missing from the payload (run payloads/build.sh)" >&2; exit 10; }
kver=$(uname -r)
mod_kver=$(modinfo -F vermagic "$src/acme_sensor.ko" | cut -d' ' -f1)
[ "$mod_kver" = "$kver" ] || { echo "acme-sensor: driver built for $mod_kver, this kernel is $kver" >&2; exit 11; }

mkdir -p /opt/acme-sensor/channel /var/lib/acme-sensor
cp "$src/acme_sensor.ko" /opt/acme-sensor/
cp "$src/channel/"*.chn /opt/acme-sensor/channel/
cp "$src/acme-sensord" /opt/acme-sensor/
chmod 755 /opt/acme-sensor/acme-sensord
echo 7.11.2 > /opt/acme-sensor/VERSION

cat > /etc/compatlab/boot.d/50-acme-sensor <<'HOOK'
#!/bin/sh
# Acme Sensor boot-start driver.
exec insmod /opt/acme-sensor/acme_sensor.ko channel=/opt/acme-sensor/channel/C-00000291.chn
HOOK
chmod 755 /etc/compatlab/boot.d/50-acme-sensor
cat > /etc/compatlab/services.d/acme-sensor <<'SVC'
#!/bin/sh
exec /opt/acme-sensor/acme-sensord
SVC
chmod 755 /etc/compatlab/services.d/acme-sensor
sync

# Apply the new content now: the driver reads its channel file when it loads, so a running
# sensor is reloaded with the new file. From here on every exec runs the new rules.
echo "acme-sensor: applying channel 291 to the running sensor"
[ -d /sys/module/acme_sensor ] && rmmod acme_sensor
insmod /opt/acme-sensor/acme_sensor.ko channel=/opt/acme-sensor/channel/C-00000291.chn
svc start acme-sensor
echo "acme-sensor 7.11.2 installed; channel 291 is live"
