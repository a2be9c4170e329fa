#!/bin/sh
# Console Flood 1.0 - a candidate whose service floods the serial console (a reliability
# fault, issue 8; tests/reliability/test_guest_faults.py). Installs the service `flood`,
# active from the next boot. At that boot only, once the guest agent has started, it writes
# as fast as the console takes it to /dev/console (the serial port: the cell's serial log)
# for FLOOD_SECONDS (from /opt/console-flood/seconds, default 25), then says how much it
# wrote. The guest keeps running and answering; the runner must stay bounded in memory
# however much the guest writes. Exit 0.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p /opt/console-flood
cp "$src/floodd" /opt/console-flood/
chmod 755 /opt/console-flood/floodd
# 64 KiB of plain text lines (no panic-like words), written again and again.
i=0
while [ "$i" -lt 1024 ]; do
    printf 'console-flood %04d: the quick brown fox jumps over the lazy dog\n' "$i"
    i=$((i + 1))
done > /opt/console-flood/block
cat > /etc/compatlab/services.d/flood <<'SVC'
#!/bin/sh
exec /opt/console-flood/floodd
SVC
chmod 755 /etc/compatlab/services.d/flood
sync
echo "console-flood 1.0 installed; floods the console at the next boot"
