#!/bin/sh
# Flaky EDR 1.0 - a coexisting security product (demo) with a fault of its own.
# Installs its kernel driver (flaky_edr.ko), a boot.d hook that loads it at every boot, and
# its agent service; the driver and agent start right away. The install also stages the
# signature database for a one-time migration at the next boot, and that migration has a
# NULL dereference: the first boot after this install panics in the boot hook (in a lab
# run, the baseline boot, before any candidate is there). The hook clears the pending flag
# (synced) before it loads the driver, so every later boot is clean. Health: the agent runs.
# Exit 0 on success; 10 no driver in the payload; 20 the kernel refused the driver.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
[ -f "$src/flaky_edr.ko" ] || { echo "flaky-edr: flaky_edr.ko missing from the payload (run payloads/build.sh)" >&2; exit 10; }
mkdir -p /opt/flaky-edr /var/lib/flaky-edr
cp "$src/flaky_edr.ko" "$src/flaky-edr-agent" /opt/flaky-edr/
chmod 755 /opt/flaky-edr/flaky-edr-agent
cat > /etc/compatlab/boot.d/40-flaky-edr <<'HOOK'
#!/bin/sh
# Flaky EDR driver. The first boot after an install migrates the staged signature database;
# the flag is cleared (and synced) first, so a migration that fails is not tried again.
if [ -e /var/lib/flaky-edr/migrate-pending ]; then
    rm -f /var/lib/flaky-edr/migrate-pending
    sync
    exec insmod /opt/flaky-edr/flaky_edr.ko migrate=1
fi
exec insmod /opt/flaky-edr/flaky_edr.ko
HOOK
chmod 755 /etc/compatlab/boot.d/40-flaky-edr
cat > /etc/compatlab/services.d/flaky-edr <<'SVC'
#!/bin/sh
exec /opt/flaky-edr/flaky-edr-agent
SVC
chmod 755 /etc/compatlab/services.d/flaky-edr
: > /var/lib/flaky-edr/migrate-pending
sync
if [ ! -d /sys/module/flaky_edr ] && ! insmod /opt/flaky-edr/flaky_edr.ko; then
    echo "flaky-edr: the kernel refused flaky_edr.ko (under Secure Boot it must be signed by a trusted key)" >&2
    exit 20
fi
svc start flaky-edr
echo "flaky-edr 1.0.0 installed; the signature database migrates at the next boot"
