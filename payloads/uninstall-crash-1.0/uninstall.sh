#!/bin/sh
# Remove Fence 1.0. The boot hook and service go first (synced), then the driver is
# unloaded - and its exit routine dereferences the rule table it has just freed (NULL):
# the kernel panics while this uninstaller runs. The files it would have removed next
# stay behind; the next boot is clean, since the hook is already gone.
set -u
svc stop fence > /dev/null 2>&1
rm -f /etc/compatlab/boot.d/50-fence /etc/compatlab/services.d/fence
sync
[ -d /sys/module/fence_filter ] && rmmod fence_filter
rm -rf /opt/fence
sync
echo "fence removed"
