#!/bin/sh
# Hang Sensor 1.0 - demo candidate whose boot-start hook never returns.
# The hook waits for a device its driver was supposed to create; the driver is not
# there, so the wait never ends, rc.boot never reaches the services or the guest agent,
# and the boot never completes (verdict: hang). The install itself succeeds.
set -eu
mkdir -p /opt/hang-sensor
echo 1.0 > /opt/hang-sensor/VERSION
cat > /etc/compatlab/boot.d/50-hang-sensor <<'HOOK'
#!/bin/sh
# Hang Sensor boot-start hook: wait for /dev/hang_sensor before letting the boot go on.
echo "hang-sensor: waiting for /dev/hang_sensor"
while [ ! -e /dev/hang_sensor ]; do sleep 1; done
HOOK
chmod 755 /etc/compatlab/boot.d/50-hang-sensor
sync
echo "hang-sensor 1.0 installed; active from the next boot"
