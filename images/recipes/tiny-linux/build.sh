#!/usr/bin/env bash
# Build a tiny Linux golden image from this host's Debian packages:
#   build.sh OUTDIR VARIANT        (VARIANT = a file name in variants/, e.g. tinylinux-a)
# Writes OUTDIR/{vmlinuz,initrd.img,disk.qcow2,cmdline,manifest.json}. Idempotent: when
# manifest.json records the same inputs (sha256 of every input file, the variant, the
# kernel version) the build is skipped; FORCE=1 rebuilds anyway.
#
# Needs (Debian): linux-image-amd64, busybox-static, dash, qemu-guest-agent, cpio, e2fsprogs,
# qemu-utils, kmod, python3; variants with WINRS=1 also python3-minimal (/usr/bin/python3.11).
# No loop mounts, no root-only steps besides mknod of /dev/console in the initramfs (run as
# root, as the lab does).
# Environment: KVER (kernel version, default: the newest in /boot that has modules),
# DISK_SIZE (root filesystem size, default 256M), SOURCE_DATE_EPOCH, FORCE.
#
# A variant with WINRS=1 (tinylinux-a-winrm) also gets the WinRS stand-in (winrs/: a stand-in for
# Windows's WinRM service), Debian's Python trimmed to the modules it loads, DHCP on its NIC
# (MODULES_EXTRA names the NIC drivers), and an account: the password is generated once into
# OUTDIR/winrm-password (0600, kept across rebuilds; the catalog points at it), the guest gets
# only its NT hash.
set -euo pipefail

die() { echo "build.sh: $*" >&2; exit 1; }
[ $# -eq 2 ] || die "usage: build.sh OUTDIR VARIANT"
OUTDIR=$1
VARIANT=$2
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VARFILE=$HERE/variants/$VARIANT.env
[ -f "$VARFILE" ] || die "unknown variant '$VARIANT' (have: $(cd "$HERE/variants" && ls | sed 's/\.env$//' | tr '\n' ' '))"

DISPLAY_NAME='' BUILD='' CMDLINE_EXTRA='' SYSCTL='' MODULES_EXTRA='' WINRS='' WINRS_USER=compatlab
# shellcheck source=/dev/null
. "$VARFILE"

if [ -z "${KVER:-}" ]; then
    KVER=$(for k in /boot/vmlinuz-*; do v=${k#/boot/vmlinuz-}; [ -d "/lib/modules/$v/kernel" ] && echo "$v"; done | sort -V | tail -n 1)
fi
[ -n "$KVER" ] || die "no kernel in /boot with modules in /lib/modules (apt-get install linux-image-amd64)"
VMLINUZ=/boot/vmlinuz-$KVER
MODDIR=/lib/modules/$KVER
BUSYBOX=/bin/busybox
DASH=/bin/dash
QEMU_GA=/usr/sbin/qemu-ga
DISK_SIZE=${DISK_SIZE:-256M}
ROOT_LABEL=compatlab-root
# Debian's own Python (python3-minimal), not whatever python3 comes first in PATH.
PYTHON=/usr/bin/python3.11
WINRS_SRC=$HERE/winrs/compatlab_winrs.py
for f in "$VMLINUZ" "$BUSYBOX" "$DASH" "$QEMU_GA"; do [ -e "$f" ] || die "missing $f"; done
[ -z "$WINRS" ] || [ -x "$PYTHON" ] || die "missing $PYTHON (apt-get install python3-minimal)"
for t in modinfo depmod cpio gzip mkfs.ext4 qemu-img python3 ldd sha256sum; do
    command -v "$t" > /dev/null || die "missing tool $t"
done
# The initramfs has no shared libraries: busybox must be the static build.
if ldd "$BUSYBOX" > /dev/null 2>&1; then die "$BUSYBOX is not static (apt-get install busybox-static)"; fi

# Stable root UUID per variant (and the ext4 hash seed): same inputs, same image.
ROOT_UUID=$(printf 'compatlab-%s' "$VARIANT" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
CMDLINE="console=tty0 console=ttyS0,115200 root=LABEL=$ROOT_LABEL rootfstype=ext4 $CMDLINE_EXTRA compatlab.variant=$VARIANT"

# --- modules: expand the lists to dependency order ------------------------------------------
declare -A SEEN=()
resolve() {  # resolve NAME: append NAME's dependencies, then NAME, to RESOLVED (paths)
    local name=$1 file dep
    file=$(modinfo -k "$KVER" -F filename "$name" 2>/dev/null | head -n 1) || true
    [ -n "$file" ] || die "module $name not found for $KVER"
    case "$file" in /*) ;; *) return 0 ;; esac   # "(builtin)"
    [ -z "${SEEN[$file]:-}" ] || return 0
    SEEN[$file]=1
    for dep in $(modinfo -k "$KVER" -F depends "$name" | tr ',' ' '); do resolve "$dep"; done
    RESOLVED+=("$file")
}
expand_list() {  # expand_list FILE: print "path [params]" lines in load order
    local name params f
    while read -r name params; do
        case "$name" in ''|'#'*) continue ;; esac
        RESOLVED=()
        resolve "$name"
        for f in "${RESOLVED[@]}"; do
            if [ "$(basename "$f" .ko)" = "$name" ]; then echo "$f $params"; else echo "$f"; fi
        done
    done < "$1"
}
EARLY=$(expand_list "$HERE/modules.early")
BASE=$(expand_list "$HERE/modules.base")   # SEEN carries over: nothing is listed twice
if [ -n "$MODULES_EXTRA" ]; then
    BASE=$BASE$'\n'$(expand_list <(printf '%s\n' $MODULES_EXTRA))
fi

LIBS=$(ldd "$QEMU_GA" "$DASH" ${WINRS:+"$PYTHON"} | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | sort -u)

# WinRS stand-in: the standard library modules its self-test loads (it serves one command over
# HTTP), as Debian's Python finds them; lib-dynload extensions left out (the ones it touches,
# _ssl _hashlib _bz2 _lzma, are optional imports), and with them ssl, bz2, lzma.
PYMODS=
if [ -n "$WINRS" ]; then
    PYMODS=$("$PYTHON" -I -S "$WINRS_SRC" --self-test --list-modules | grep '^/usr/lib/python3\.11/.*\.py$' \
        | grep -v -E '/(ssl|bz2|lzma|_compression)\.py$' | LC_ALL=C sort -u) \
        || die "the WinRS stand-in's self-test failed on this host"
    mkdir -p "$OUTDIR"
    chmod 0755 "$OUTDIR"
    if [ ! -s "$OUTDIR/winrm-password" ]; then
        (umask 077; "$PYTHON" -I -S -c 'import secrets; print(secrets.token_urlsafe(18))' > "$OUTDIR/winrm-password")
    fi
    chmod 0600 "$OUTDIR/winrm-password"
    WINRS_ACCOUNT=$(printf 'username=%s\nnt_hash=%s\n' "$WINRS_USER" \
        "$("$PYTHON" -I -S "$WINRS_SRC" --nt-hash < "$OUTDIR/winrm-password")")
fi

# --- cache: hash every input ---------------------------------------------------------------
inputs_list() {
    {
        echo "$VMLINUZ"; echo "$BUSYBOX"; echo "$DASH"; echo "$QEMU_GA"
        echo "$LIBS"
        echo "$EARLY" | awk '{print $1}'
        echo "$BASE" | awk '{print $1}'
        echo "$HERE/build.sh"; echo "$HERE/modules.early"; echo "$HERE/modules.base"
        echo "$VARFILE"; echo "$HERE/initrd/init"
        find "$HERE/rootfs" -type f
        if [ -n "$WINRS" ]; then echo "$PYTHON"; echo "$PYMODS"; find "$HERE/winrs" -type f; fi
    } | sed '/^$/d' | LC_ALL=C sort -u
}
INPUTS=$(inputs_list | while read -r f; do printf '%s  %s\n' "$(sha256sum < "$(readlink -f "$f")" | cut -d' ' -f1)" "$f"; done)
# The account (NT hash) changes the image, so it counts; it is not listed in the manifest.
INPUTS_SHA=$(printf '%s\nvariant=%s\nkver=%s\ndisk=%s\ncmdline=%s\n%s' "$INPUTS" "$VARIANT" "$KVER" "$DISK_SIZE" "$CMDLINE" "${WINRS_ACCOUNT:-}" | sha256sum | cut -d' ' -f1)

OUTPUTS=(vmlinuz initrd.img disk.qcow2 cmdline manifest.json)
if [ -z "${FORCE:-}" ] && [ -f "$OUTDIR/manifest.json" ]; then
    have=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("inputs_sha256",""))' "$OUTDIR/manifest.json" 2>/dev/null || true)
    complete=1
    for o in "${OUTPUTS[@]}"; do [ -s "$OUTDIR/$o" ] || complete=; done
    if [ "$have" = "$INPUTS_SHA" ] && [ -n "$complete" ]; then
        echo "build.sh: $VARIANT is up to date in $OUTDIR"
        exit 0
    fi
fi

# --- build in a scratch folder beside OUTDIR, then move into place -------------------------
mkdir -p "$OUTDIR"
chmod 0755 "$OUTDIR"
WORK=$(mktemp -d "$OUTDIR/.build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
SDE=${SOURCE_DATE_EPOCH:-$(stat -c %Y "$VMLINUZ")}
START=$(date +%s.%N)

# initramfs: static busybox, the early modules (flat), /init.
IRD=$WORK/initrd
mkdir -p "$IRD"/{bin,dev,proc,sys,newroot,etc,lib/modules}
cp "$BUSYBOX" "$IRD/bin/busybox"
# (one python call: ~400 `ln` processes take seconds)
"$BUSYBOX" --list | python3 -c 'import os, sys
for a in sys.stdin.read().split():
    if a != "busybox": os.symlink("busybox", os.path.join(sys.argv[1], a))' "$IRD/bin"
mknod -m 600 "$IRD/dev/console" c 5 1
mknod -m 666 "$IRD/dev/null" c 1 3
install -m 0755 "$HERE/initrd/init" "$IRD/init"
echo "$EARLY" | while read -r path params; do
    cp "$path" "$IRD/lib/modules/"
    echo "$(basename "$path" .ko) $params"
done > "$IRD/etc/modules.early"
find "$IRD" -exec touch -h -d "@$SDE" {} +
(cd "$IRD" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --reproducible --quiet) | gzip -9 -n > "$WORK/initrd.img"

# Root filesystem.
ROOT=$WORK/rootfs
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,lib64,dev,proc,sys,run,tmp,root,mnt,opt,var/log/services,var/lib/compatlab,etc/sysctl.d,etc/compatlab/boot.d,etc/compatlab/services.d,"lib/modules/$KVER"}
chmod 1777 "$ROOT/tmp"
chmod 0700 "$ROOT/root"
cp "$BUSYBOX" "$ROOT/bin/busybox"
# busybox's own svc/svok applets would shadow ours; shutdown is ours too.
"$BUSYBOX" --list-full | python3 -c 'import os, sys
for a in sys.stdin.read().split():
    link = os.path.join(sys.argv[1], a)
    if os.path.basename(a) not in ("busybox", "svc", "svok", "shutdown") and not os.path.lexists(link):
        os.symlink("/bin/busybox", link)' "$ROOT"
# /bin/sh is dash, not busybox: Debian's static busybox runs its own applets in
# preference to PATH, so in a busybox shell `svc` would be busybox's runit applet.
install -m 0755 "$DASH" "$ROOT/bin/dash"
ln -sf dash "$ROOT/bin/sh"
cp -a "$HERE/rootfs/." "$ROOT/"
install -m 0755 "$QEMU_GA" "$ROOT/usr/sbin/qemu-ga"
for lib in $LIBS; do
    mkdir -p "$ROOT/$(dirname "$lib")"
    cp -L "$lib" "$ROOT/$lib"
done
# Modules keep their tree and get a modules.dep, so modprobe works for what products add.
{ echo "$EARLY"; echo "$BASE"; } | while read -r path _; do
    rel=${path#"$MODDIR"/}
    mkdir -p "$ROOT/lib/modules/$KVER/$(dirname "$rel")"
    cp "$path" "$ROOT/lib/modules/$KVER/$rel"
done
cp "$MODDIR"/modules.builtin "$MODDIR"/modules.builtin.modinfo "$MODDIR"/modules.order "$ROOT/lib/modules/$KVER/"
depmod -b "$ROOT" "$KVER"
echo "$BASE" | while read -r path params; do echo "${path#"$MODDIR"/} $params"; done > "$ROOT/etc/compatlab/modules"
cat > "$ROOT/etc/compatlab/build" <<EOF
VARIANT='$VARIANT'
BUILD='$BUILD'
DISPLAY_NAME='$DISPLAY_NAME'
KERNEL='$KVER'
EOF
cat > "$ROOT/etc/os-release" <<EOF
PRETTY_NAME="$DISPLAY_NAME"
NAME="compatlab Tiny Linux"
ID=compatlab-tinylinux
ID_LIKE=debian
VERSION_ID="$BUILD"
VARIANT_ID=$VARIANT
BUILD_ID="$BUILD"
EOF
echo "$VARIANT" > "$ROOT/etc/hostname"
if [ -n "$WINRS" ]; then
    # The WinRS stand-in and what it runs on. Python finds its standard library from its own
    # path (/usr/lib/python3.11, landmark os.pyc; lib-dynload must exist). Modules go in as
    # bytecode only: compiling ~2 MB of source at each boot would take seconds under TCG.
    install -m 0755 "$PYTHON" "$ROOT/usr/bin/python3.11"
    ln -s python3.11 "$ROOT/usr/bin/python3"
    mkdir -p "$ROOT/usr/lib/python3.11/lib-dynload"
    printf '%s\n' "$PYMODS" | "$PYTHON" -I -S -c 'import os, py_compile, sys
stdlib, dest = "/usr/lib/python3.11", sys.argv[1]
for source in sys.stdin.read().split():
    target = os.path.join(dest, os.path.relpath(source, stdlib) + "c")
    os.makedirs(os.path.dirname(target), exist_ok=True)
    py_compile.compile(source, cfile=target, dfile=source, doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)' "$ROOT/usr/lib/python3.11"
    # The responder: its source beside the standard library, compiled like it; the command is a
    # launcher, so nothing is compiled when the service starts.
    install -m 0644 "$WINRS_SRC" "$ROOT/usr/lib/python3.11/compatlab_winrs.py"
    "$PYTHON" -I -S -c 'import py_compile, sys
py_compile.compile(sys.argv[1], cfile=sys.argv[2], dfile="/usr/lib/python3.11/compatlab_winrs.py",
                   doraise=True, invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)' \
        "$WINRS_SRC" "$ROOT/usr/lib/python3.11/__pycache__/compatlab_winrs.cpython-311.pyc"
    cat > "$ROOT/usr/sbin/compatlab-winrs" <<'LAUNCHER'
#!/usr/bin/python3 -IS
"""compatlab-winrs-standin, a stand-in for Windows's WinRM service: /usr/lib/python3.11/compatlab_winrs.py"""
import sys

from compatlab_winrs import main

sys.exit(main())
LAUNCHER
    chmod 0755 "$ROOT/usr/sbin/compatlab-winrs"
    cp -a "$HERE/winrs/rootfs/." "$ROOT/"
    (umask 077; printf '# compatlab-winrs-standin account (written by build.sh; the password is on the host)\n%s' "$WINRS_ACCOUNT" > "$ROOT/etc/compatlab/winrs.account")
    # The guest's Python, with only what was copied, must serve a command, loading nothing from
    # outside the image: else fail here rather than in the guest.
    loaded=$("$ROOT/usr/bin/python3.11" -I -S -B "$ROOT/usr/sbin/compatlab-winrs" --self-test --list-modules) \
        || die "the WinRS stand-in's self-test failed with the image's trimmed Python"
    outside=$(printf '%s\n' "$loaded" | grep -v "^$(readlink -f "$ROOT")/" || true)
    [ -z "$outside" ] || die "the image's Python loaded modules from the host: $outside"
fi
[ -z "$SYSCTL" ] || printf '%s\n' "$SYSCTL" > "$ROOT/etc/sysctl.d/50-$VARIANT.conf"
echo 0 > "$ROOT/var/lib/compatlab/boot-count"
find "$ROOT" -exec touch -h -d "@$SDE" {} +

truncate -s "$DISK_SIZE" "$WORK/root.img"
E2FSPROGS_FAKE_TIME=$SDE mkfs.ext4 -q -F -L "$ROOT_LABEL" -U "$ROOT_UUID" \
    -E "root_owner=0:0,hash_seed=$ROOT_UUID" -d "$ROOT" "$WORK/root.img"
qemu-img convert -f raw -O qcow2 "$WORK/root.img" "$WORK/disk.qcow2"
rm -f "$WORK/root.img"

cp "$VMLINUZ" "$WORK/vmlinuz"
echo "$CMDLINE" > "$WORK/cmdline"

# manifest.json last: a build that died half-way is never taken as cached.
python3 - "$WORK" "$VARIANT" "$DISPLAY_NAME" "$BUILD" "$KVER" "$CMDLINE" "$ROOT_LABEL" "$ROOT_UUID" \
    "$INPUTS_SHA" "$DISK_SIZE" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$(printf '%s\n' "$INPUTS")" <<'EOF'
import hashlib, json, os, sys
work, variant, display, build, kver, cmdline, label, uuid, inputs_sha, size, built, inputs = sys.argv[1:]
def sha(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
manifest = {
    "schema": 1, "recipe": "tiny-linux", "variant": variant, "display_name": display,
    "build": build, "kernel_version": kver, "cmdline": cmdline,
    "root": {"label": label, "uuid": uuid, "fstype": "ext4", "size": size},
    "inputs_sha256": inputs_sha,
    "inputs": {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in inputs.splitlines() if line},
    "outputs": {n: {"sha256": sha(os.path.join(work, n)), "bytes": os.path.getsize(os.path.join(work, n))}
                for n in ("vmlinuz", "initrd.img", "disk.qcow2", "cmdline")},
    "built": built,
}
with open(os.path.join(work, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=2, sort_keys=True)
    f.write("\n")
EOF

for o in "${OUTPUTS[@]}"; do
    chmod 0644 "$WORK/$o"
    mv -f "$WORK/$o" "$OUTDIR/$o"
done
echo "build.sh: built $VARIANT (kernel $KVER) in $OUTDIR in $(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e - s}')s"
