#!/bin/sh
# compatlab tiny-linux boot sequence (busybox init runs this as its sysinit action).
#
# Modelled on a Windows boot so that an update can break it the same ways:
#   1. kernel filesystems, boot counter     -> "compatlab-guest: boot N started"
#   2. base drivers (/etc/compatlab/modules)
#   3. boot-start drivers: every executable in /etc/compatlab/boot.d, in name order,
#      in the foreground (a hook that hangs hangs the boot; one that oopses crashes it)
#   4. services: every executable in /etc/compatlab/services.d, started in the background
#                                           -> "compatlab-guest: services started"
#   5. the QEMU guest agent                 -> "compatlab-guest: agent started"
# The machine counts as booted only when the agent answers, i.e. after all of the above.
# Markers go to /dev/console (ttyS0), one line each, prefixed "compatlab-guest: ".
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
umask 022

say() { echo "compatlab-guest: $*"; }

cmdline_value() {  # cmdline_value KEY -> value of KEY=value on the kernel command line
    for arg in $(cat /proc/cmdline); do
        case "$arg" in "$1"=*) echo "${arg#*=}"; return 0 ;; esac
    done
    return 1
}

# --- 1. kernel filesystems (the initramfs moved proc, sys and dev here already) ---------
[ -e /proc/mounts ] || mount -t proc proc /proc
grep -q '^[^ ]* /sys ' /proc/mounts || mount -t sysfs sysfs /sys
grep -q '^[^ ]* /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o gid=5,mode=620 devpts /dev/pts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
mount -t tmpfs -o mode=0755,nosuid tmpfs /run
mount -t tmpfs -o mode=1777,nosuid tmpfs /tmp
mount -t securityfs securityfs /sys/kernel/security 2>/dev/null
mount -o remount,rw / 2>/dev/null
mkdir -p /run/services /run/qemu-ga /var/log/services /var/lib/compatlab

# The boot counter lives on the disk, so it counts resets and crashes too; synced at once
# because a boot-start hook may crash the kernel a moment later.
count=$(cat /var/lib/compatlab/boot-count 2>/dev/null)
case "$count" in ''|*[!0-9]*) count=0 ;; esac
count=$((count + 1))
echo "$count" > /var/lib/compatlab/boot-count
sync
say "boot $count started"
. /etc/compatlab/build
say "build $VARIANT ($BUILD) kernel $(uname -r)"

hostname -F /etc/hostname
ip link set lo up 2>/dev/null

# --- 2. base drivers -------------------------------------------------------------------
kdir=/lib/modules/$(uname -r)
wd_seconds=$(cmdline_value compatlab.watchdog) || wd_seconds=
while read -r rel args; do
    case "$rel" in ''|'#'*) continue ;; esac
    mod=${rel##*/}; mod=${mod%.ko}
    [ -d "/sys/module/$(echo "$mod" | tr - _)" ] && continue
    [ "$mod" = efivarfs ] && [ ! -d /sys/firmware/efi ] && continue
    # i6300esb's heartbeat is the time to reset (the driver splits it over the chip's
    # two stages); measured under TCG: heartbeat=30 resets ~35 s after arming.
    if [ "$mod" = i6300esb ] && [ -n "$wd_seconds" ]; then
        args="$args heartbeat=$wd_seconds"
    fi
    # shellcheck disable=SC2086  # args are module parameters, split on purpose
    insmod "$kdir/$rel" $args 2>/dev/null || say "base driver $mod did not load"
done < /etc/compatlab/modules

if [ -d /sys/firmware/efi ]; then
    mount -t efivarfs efivarfs /sys/firmware/efi/efivars 2>/dev/null
    # efivarfs files are 4 bytes of attributes, then the value.
    sb=$(od -An -tu1 /sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c 2>/dev/null | awk '{ print $5 }')
    say "firmware uefi secureboot=${sb:-unknown} lockdown=$(sed 's/.*\[\(.*\)\].*/\1/' /sys/kernel/security/lockdown 2>/dev/null)"
else
    say "firmware bios"
fi

for f in /etc/sysctl.d/*.conf; do [ -f "$f" ] && sysctl -q -p "$f"; done

# Boot watchdog (only where the kernel command line asks for it): open the device and
# close it without the magic 'V', which leaves it running. Nothing feeds it until the
# agent is up, so a boot that stalls in a hook or a service is reset by the hypervisor
# (libvirt <watchdog action=...>) instead of sitting there.
if [ -n "$wd_seconds" ]; then
    if [ -c /dev/watchdog ]; then
        : > /dev/watchdog 2>/dev/null
        say "boot watchdog armed (${wd_seconds}s)"
    else
        say "boot watchdog requested but there is no watchdog device"
    fi
fi

# Safe mode (compatlab.safemode=1 on the kernel command line), like Windows' safe boot:
# no boot-start hooks and no services, only the agent, so a lab can roll back an update
# that crashes or hangs every normal boot.
safemode=$(cmdline_value compatlab.safemode) || safemode=0
if [ "$safemode" = 1 ]; then
    say "safe mode: boot-start hooks and services skipped"
fi

# --- 3. boot-start drivers ---------------------------------------------------------------
[ "$safemode" = 1 ] || for hook in /etc/compatlab/boot.d/*; do
    [ -f "$hook" ] && [ -x "$hook" ] || continue
    name=${hook##*/}
    say "boot-start $name"
    "$hook" < /dev/null
    rc=$?
    [ "$rc" -eq 0 ] || say "boot-start $name failed (exit $rc)"
done

# --- 4. services -------------------------------------------------------------------------
[ "$safemode" = 1 ] || for svcfile in /etc/compatlab/services.d/*; do
    [ -f "$svcfile" ] && [ -x "$svcfile" ] || continue
    svc start "${svcfile##*/}" > /dev/null || say "service ${svcfile##*/} did not start"
done
say "services started"

# --- 5. guest agent ----------------------------------------------------------------------
# No udev: find the virtio-serial port named org.qemu.guest_agent.0 and make the link
# udev would make. The port appears a moment after virtio_console binds.
port=
i=0
while [ -z "$port" ] && [ "$i" -lt 50 ]; do
    for f in /sys/class/virtio-ports/*/name; do
        [ -f "$f" ] && [ "$(cat "$f")" = org.qemu.guest_agent.0 ] && port=${f%/name} && port=${port##*/}
    done
    [ -n "$port" ] || { usleep 100000; i=$((i + 1)); }
done
if [ -n "$port" ]; then
    mkdir -p /dev/virtio-ports
    ln -sf "../$port" /dev/virtio-ports/org.qemu.guest_agent.0
    qemu-ga -d -m virtio-serial -p /dev/virtio-ports/org.qemu.guest_agent.0 \
        -f /run/qemu-ga.pid -t /run/qemu-ga -l /var/log/qemu-ga.log
    i=0
    while [ ! -s /run/qemu-ga.pid ] && [ "$i" -lt 50 ]; do usleep 100000; i=$((i + 1)); done
    if [ -s /run/qemu-ga.pid ]; then
        say "agent started"
    else
        say "agent failed to start"
    fi
else
    say "agent not started: no org.qemu.guest_agent.0 virtio-serial port"
fi

# Hand the boot watchdog to a feeder now that the machine is up.
if [ -n "$wd_seconds" ] && [ -c /dev/watchdog ]; then
    watchdog -t 5 -T "$wd_seconds" /dev/watchdog && say "boot watchdog handed to feeder"
fi
say "boot $count complete"
