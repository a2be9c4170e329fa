#!/usr/bin/env bash
# Build the demo payloads:  payloads/build.sh [OUTDIR]   (default: payloads/build/, git-ignored)
# Copies every payload folder to OUTDIR/<name>/ (without its src/), and builds the
# kernel modules of those that have a src/Kbuild against the headers of the kernel the
# tiny-linux images boot (KVER, default: the newest kernel in /boot that has headers),
# so OUTDIR/<name>/ is exactly what the lab packs into an ISO. The .ko files are build
# output, never committed. Idempotent: a payload whose inputs (files + kernel version)
# did not change is left alone; FORCE=1 rebuilds. Symbolic links are followed everywhere
# (hash, copy, module build): a payload shares another's files, e.g. its driver source,
# through a relative link such as src -> ../acme-sensor-7.11.1/src.
# Needs (Debian): linux-headers-amd64 (matching linux-image-amd64), gcc, make, ovmf (for
# the test-signing key; SIGN_KEY/SIGN_CERT/SIGN_PIN choose another).
set -euo pipefail
die() { echo "payloads/build.sh: $*" >&2; exit 1; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
OUTDIR=${1:-$HERE/build}
if [ -z "${KVER:-}" ]; then
    KVER=$(for k in /boot/vmlinuz-*; do v=${k#/boot/vmlinuz-}; [ -e "/lib/modules/$v/build/Makefile" ] && echo "$v"; done | sort -V | tail -n 1)
fi
[ -n "$KVER" ] || die "no kernel headers for any kernel in /boot (apt-get install linux-headers-amd64)"
KBUILD=/lib/modules/$KVER/build
# Module signing key (see below); SIGN_KEY= (empty) builds unsigned modules.
SIGN_KEY=${SIGN_KEY-/usr/share/ovmf/PkKek-1-snakeoil.key}
SIGN_CERT=${SIGN_CERT:-/usr/share/ovmf/PkKek-1-snakeoil.pem}
SIGN_PIN=${SIGN_PIN:-snakeoil}
if [ -n "$SIGN_KEY" ] && [ ! -r "$SIGN_KEY" ]; then
    echo "payloads/build.sh: $SIGN_KEY not found (apt-get install ovmf); modules stay unsigned" >&2
    SIGN_KEY=
fi
mkdir -p "$OUTDIR"

for dir in "$HERE"/*/; do
    name=$(basename "$dir")
    [ -f "$dir/install.sh" ] || continue
    inputs=$( (cd "$dir" && find -L . -type f | LC_ALL=C sort | xargs sha256sum; echo "kver=$KVER sign=$SIGN_KEY") | sha256sum | cut -d' ' -f1)
    stamp=$OUTDIR/.$name.inputs
    if [ -z "${FORCE:-}" ] && [ -d "$OUTDIR/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$inputs" ]; then
        echo "payloads/build.sh: $name is up to date"
        continue
    fi
    work=$(mktemp -d "$OUTDIR/.build.XXXXXX")
    mkdir "$work/out"
    (cd "$dir" && tar --dereference --exclude=./src -cf - .) | (cd "$work/out" && tar -xf -)
    if [ -f "$dir/src/Kbuild" ]; then
        cp -rL "$dir/src" "$work/src"
        make -s -C "$KBUILD" M="$work/src" modules > "$work/make.log" 2>&1 \
            || { cat "$work/make.log" >&2; rm -rf "$work"; die "$name: module build failed"; }
        for ko in "$work/src/"*.ko; do
            # Secure Boot puts the kernel in lockdown, which loads only signed modules. The
            # demo test-signs with the key Debian's ovmf package ships for this purpose: its
            # certificate is in the db of OVMF_VARS_4M.snakeoil.fd, and Debian's kernel
            # trusts db certificates (the platform keyring) for module signatures - the
            # Linux counterpart of Windows test signing.
            if [ -n "$SIGN_KEY" ]; then
                KBUILD_SIGN_PIN=$SIGN_PIN "$KBUILD/scripts/sign-file" sha256 "$SIGN_KEY" "$SIGN_CERT" "$ko" \
                    || { rm -rf "$work"; die "$name: signing $(basename "$ko") failed"; }
            fi
            cp "$ko" "$work/out/"
        done
    fi
    rm -rf "${OUTDIR:?}/$name"
    mv "$work/out" "$OUTDIR/$name"
    rm -rf "$work"
    echo "$inputs" > "$stamp"
    echo "payloads/build.sh: built $name$( [ -f "$dir/src/Kbuild" ] && echo " (modules for $KVER)")"
done
