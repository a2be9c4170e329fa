#!/usr/bin/env bash
# Install the Debian packages compatlab needs, once. Idempotent: asks dpkg first, so a machine
# that has everything spends well under a second here.
set -euo pipefail

PACKAGES=(
  # the hypervisor
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
  qemu-system-x86 qemu-utils ovmf swtpm swtpm-tools
  # to build libvirt-python from PyPI against the system libvirt
  libvirt-dev pkg-config gcc python3-dev python3-venv
  # virt-xml-validate's schema checks
  libxml2-utils
  # the demo golden images: the distribution's own kernel, busybox and guest agent
  linux-image-amd64 busybox-static qemu-guest-agent cpio e2fsprogs kmod
  # the WinRS stand-in in tinylinux-a-winrm runs on Debian's own Python (/usr/bin/python3.11)
  python3-minimal
  # the demo sensor's kernel module is built against the guest kernel
  linux-headers-amd64 make
  # tests/browser opens the HTML report in a headless browser, driven by selenium
  chromium chromium-driver
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "compatlab: missing Debian packages: ${missing[*]}" >&2
  echo "compatlab: run 'make setup' as root (or install them with apt-get)" >&2
  exit 1
fi
echo "compatlab: installing ${#missing[@]} Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
