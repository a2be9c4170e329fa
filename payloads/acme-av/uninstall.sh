#!/bin/sh
# Remove Acme AV.
set -u
svc stop acme-av > /dev/null 2>&1
rm -f /etc/compatlab/services.d/acme-av
rm -rf /opt/acme-av
sync
echo "acme-av removed"
