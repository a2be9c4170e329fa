#!/bin/sh
# Acme Sensor 7.11.1 - the demo candidate update.
# Installs a boot-start driver (acme_sensor.ko, loaded by a boot.d hook at the next boot,
# like a Windows boot-start driver), its content (channel) file and the sensor service.
# Nothing is loaded now: the update takes effect at the next boot. Exit 0 on success.
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
echo 7.11.1 > /opt/acme-sensor/VERSION

cat > /etc/compatlab/boot.d/50-acme-sensor <<'HOOK'
#!/bin/sh
# Acme Sensor boot-start driver.
exec insmod /opt/acme-sensor/acme_sensor.ko channel=/opt/acme-sensor/channel/C-00000312.chn
HOOK
chmod 755 /etc/compatlab/boot.d/50-acme-sensor
cat > /etc/compatlab/services.d/acme-sensor <<'SVC'
#!/bin/sh
exec /opt/acme-sensor/acme-sensord
SVC
chmod 755 /etc/compatlab/services.d/acme-sensor
sync
echo "acme-sensor 7.11.1 installed; the driver loads at the next boot"
