#!/usr/bin/env bash
# Make sure libvirtd and virtlogd answer on qemu:///system. Where systemd runs, ask it; where no
# init system runs (containers, CI sandboxes), start the daemons ourselves as root.
# Never starts libvirt's 'default' NAT network: guests here get no NIC (network rule).
set -euo pipefail

answers() { timeout 10 virsh -c qemu:///system version >/dev/null 2>&1; }

if answers; then
  exit 0
fi
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then
  systemctl start virtlogd.socket libvirtd.socket libvirtd.service
else
  [ "$(id -u)" -eq 0 ] || { echo "compatlab: libvirtd is not running; start it as root" >&2; exit 1; }
  pgrep -x virtlogd >/dev/null || virtlogd -d
  pgrep -x libvirtd >/dev/null || libvirtd -d
fi
for _ in $(seq 1 50); do
  answers && { echo "compatlab: libvirtd is up"; exit 0; }
  sleep 0.2
done
echo "compatlab: libvirtd did not answer on qemu:///system within 10 s" >&2
exit 1
