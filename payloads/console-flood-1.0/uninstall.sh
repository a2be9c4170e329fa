#!/bin/sh
# Remove Console Flood.
set -u
svc stop flood > /dev/null 2>&1
rm -f /etc/compatlab/services.d/flood
rm -rf /opt/console-flood /var/lib/console-flood
sync
echo "console-flood removed"
