#!/bin/sh
# Fence 1.0 ("uninstall-crash") - demo candidate whose uninstaller crashes the machine.
# Installs a boot-start driver (fence_filter.ko, hook 50-fence, loaded now and at every
# boot) and its service. Install and boots are clean (verdict so far: pass); the defect is
# in the driver's unload path, which only uninstall.sh reaches (see there).
# Exit 0 on success; 10 no driver in the payload; 20 the kernel refused the driver.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
[ -f "$src/fence_filter.ko" ] || { echo "fence: fence_filter.ko missing from the payload (run payloads/build.sh)" >&2; exit 10; }
mkdir -p /opt/fence
cp "$src/fence_filter.ko" "$src/fenced" /opt/fence/
chmod 755 /opt/fence/fenced
echo 1.0 > /opt/fence/VERSION
cat > /etc/compatlab/boot.d/50-fence <<'HOOK'
#!/bin/sh
# Fence file filter driver.
exec insmod /opt/fence/fence_filter.ko
HOOK
chmod 755 /etc/compatlab/boot.d/50-fence
cat > /etc/compatlab/services.d/fence <<'SVC'
#!/bin/sh
exec /opt/fence/fenced
SVC
chmod 755 /etc/compatlab/services.d/fence
sync
if [ ! -d /sys/module/fence_filter ] && ! insmod /opt/fence/fence_filter.ko; then
    echo "fence: the kernel refused fence_filter.ko (under Secure Boot it must be signed by a trusted key)" >&2
    exit 20
fi
svc start fence
echo "fence 1.0 installed"
