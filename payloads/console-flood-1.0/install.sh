#!/bin/sh
# Console Flood 1.0 - a candidate that floods the serial console (a reliability fault, issue 8;
# tests/reliability/test_guest_faults.py).  install.sh [AT_BOOT_BYTES [NOW_BYTES]]
#   AT_BOOT_BYTES (default 1 MiB): installs the service `flood`, active from the next boot; at
#     that boot only, once the guest agent has started, it writes that many bytes of plain text
#     lines to /dev/console (the serial port: the cell's serial log) as fast as the console
#     takes them, then says so. 0: no service.
#   NOW_BYTES (default 0): writes that many bytes to the console during this install, before
#     it returns (an installer that floods the console).
# The guest keeps running and answering; the lab must keep the whole console and stay bounded
# in memory however much the guest writes. Exit 0.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
at_boot=${1:-1048576}
now=${2:-0}
mkdir -p /opt/console-flood
cp "$src/floodd" /opt/console-flood/
chmod 755 /opt/console-flood/floodd
# 64 KiB of plain text lines (no panic-like words), written again and again.
i=0
while [ "$i" -lt 1024 ]; do
    printf 'console-flood %04d: the quick brown fox jumps over the lazy dog\n' "$i"
    i=$((i + 1))
done > /opt/console-flood/block
if [ "$at_boot" -gt 0 ]; then
    echo "$at_boot" > /opt/console-flood/bytes
    cat > /etc/compatlab/services.d/flood <<'SVC'
#!/bin/sh
exec /opt/console-flood/floodd
SVC
    chmod 755 /etc/compatlab/services.d/flood
fi
sync
if [ "$now" -gt 0 ]; then
    /opt/console-flood/floodd --now "$now"
fi
echo "console-flood 1.0 installed; floods the console with $at_boot bytes at the next boot"
