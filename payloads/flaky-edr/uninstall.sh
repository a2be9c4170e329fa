#!/bin/sh
# Remove Flaky EDR: agent, driver, boot hook, files.
set -u
svc stop flaky-edr > /dev/null 2>&1
rm -f /etc/compatlab/boot.d/40-flaky-edr /etc/compatlab/services.d/flaky-edr
[ -d /sys/module/flaky_edr ] && rmmod flaky_edr
rm -rf /opt/flaky-edr /var/lib/flaky-edr
sync
echo "flaky-edr removed"
