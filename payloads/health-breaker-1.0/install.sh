#!/bin/sh
# Health Breaker 1.0 ("Acme TuneUp") - demo candidate that installs and boots fine but
# breaks a neighbour: its service terminates processes it wrongly considers resource
# hogs, among them Acme AV's scanner, so `svc status acme-av` fails (verdict:
# check_failed where acme-av is installed; harmless elsewhere).
set -eu
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p /opt/tuneup
cp "$src/tuneupd" /opt/tuneup/
chmod 755 /opt/tuneup/tuneupd
cat > /etc/compatlab/services.d/tuneup <<'SVC'
#!/bin/sh
exec /opt/tuneup/tuneupd
SVC
chmod 755 /etc/compatlab/services.d/tuneup
sync
svc start tuneup
echo "health-breaker (tuneup) 1.0 installed"
