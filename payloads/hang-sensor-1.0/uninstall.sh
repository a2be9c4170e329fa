#!/bin/sh
# Remove Hang Sensor (only reachable from a boot that completes, e.g. safe mode).
set -u
rm -f /etc/compatlab/boot.d/50-hang-sensor
rm -rf /opt/hang-sensor
sync
echo "hang-sensor removed"
