#!/bin/sh
# Remove TuneUp and restart what it had stopped.
set -u
svc stop tuneup > /dev/null 2>&1
rm -f /etc/compatlab/services.d/tuneup
rm -rf /opt/tuneup
sync
[ -x /etc/compatlab/services.d/acme-av ] && svc start acme-av > /dev/null
echo "health-breaker (tuneup) removed"
