#!/bin/sh
# Acme AV 3.2 - a coexisting security product (demo): a user-mode real-time scanner
# service, started now and at every boot. Health: `svc status acme-av`.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p /opt/acme-av
cp "$src/acme-avd" /opt/acme-av/
chmod 755 /opt/acme-av/acme-avd
cat > /etc/compatlab/services.d/acme-av <<'SVC'
#!/bin/sh
exec /opt/acme-av/acme-avd
SVC
chmod 755 /etc/compatlab/services.d/acme-av
sync
svc start acme-av
echo "acme-av 3.2.0 installed"
