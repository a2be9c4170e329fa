#!/bin/sh
# Other EDR 4.2 - a coexisting security product (demo).
# Installs its kernel driver (other_edr.ko, which hooks process execution), a boot.d
# hook that loads it at every boot, and its agent service; both start right away.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
[ -f "$src/other_edr.ko" ] || { echo "other-edr: other_edr.ko missing from the payload (run payloads/build.sh)" >&2; exit 10; }
mkdir -p /opt/other-edr
cp "$src/other_edr.ko" "$src/other-edr-agent" /opt/other-edr/
chmod 755 /opt/other-edr/other-edr-agent
cat > /etc/compatlab/boot.d/40-other-edr <<'HOOK'
#!/bin/sh
# Other EDR driver.
exec insmod /opt/other-edr/other_edr.ko
HOOK
chmod 755 /etc/compatlab/boot.d/40-other-edr
cat > /etc/compatlab/services.d/other-edr <<'SVC'
#!/bin/sh
exec /opt/other-edr/other-edr-agent
SVC
chmod 755 /etc/compatlab/services.d/other-edr
sync
if [ ! -d /sys/module/other_edr ] && ! insmod /opt/other-edr/other_edr.ko; then
    echo "other-edr: the kernel refused other_edr.ko (under Secure Boot it must be signed by a trusted key)" >&2
    exit 20
fi
svc start other-edr
echo "other-edr 4.2.0 installed"
