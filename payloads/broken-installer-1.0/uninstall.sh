#!/bin/sh
# Remove what Broken Installer left behind.
rm -rf /opt/broken-installer
sync
echo "broken-installer removed"
