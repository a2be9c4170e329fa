#!/bin/sh
# Broken Installer 1.0 - demo candidate whose installer fails (verdict: install_failed).
# It copies part of its files, then a prerequisite check fails and it exits 67
# (Windows' MSI 1603 "fatal error during installation", modulo 256), leaving the partial
# install for uninstall.sh to clean up.
mkdir -p /opt/broken-installer
echo 1.0 > /opt/broken-installer/VERSION
echo "broken-installer: copied files to /opt/broken-installer"
if [ ! -f /etc/acme/license.key ]; then
    echo "broken-installer: prerequisite check failed: /etc/acme/license.key not found" >&2
    exit 67
fi
echo "broken-installer 1.0 installed"
