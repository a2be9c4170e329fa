#!/bin/sh
# Remove Other EDR: agent, driver, boot hook, files.
set -u
svc stop other-edr > /dev/null 2>&1
rm -f /etc/compatlab/boot.d/40-other-edr /etc/compatlab/services.d/other-edr
[ -d /sys/module/other_edr ] && rmmod other_edr
rm -rf /opt/other-edr
sync
echo "other-edr removed"
