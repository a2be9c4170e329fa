#!/bin/sh
# Remove AppGuard (only reachable where the agent works, e.g. a safe-mode boot).
set -u
svc stop appguard > /dev/null 2>&1
rm -f /etc/compatlab/boot.d/30-appguard /etc/compatlab/services.d/appguard
[ -d /sys/module/appguard ] && rmmod appguard
rm -rf /opt/appguard
sync
echo "appguard removed"
