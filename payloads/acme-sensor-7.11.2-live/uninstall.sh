#!/bin/sh
# Roll back Acme Sensor 7.11.2: stop the service, unload the driver, remove every file.
# (Where 7.11.2 crashes, only a safe-mode boot gets this far.)
set -u
svc stop acme-sensor > /dev/null 2>&1
rm -f /etc/compatlab/boot.d/50-acme-sensor /etc/compatlab/services.d/acme-sensor
[ -d /sys/module/acme_sensor ] && rmmod acme_sensor
rm -rf /opt/acme-sensor /var/lib/acme-sensor
sync
echo "acme-sensor removed"
