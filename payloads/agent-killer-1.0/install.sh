#!/bin/sh
# Agent Killer 1.0 - a candidate that kills the QEMU guest agent once (a reliability fault,
# issue 8; tests/reliability/test_guest_faults.py). Installs the service `agentkill`, active
# from the next boot. At that boot only, it waits for qemu-ga to start, lets the boot complete
# (the agent answers), then kills qemu-ga with SIGKILL a few seconds later and says so on the
# console. Nothing restarts qemu-ga (the tiny-linux images have no supervisor): the agent is
# dead until the guest boots again. Later boots leave it alone (/var/lib/agent-killer/done),
# unlike agent-blocker-1.0, which kills it at every boot. Nothing is killed during this
# install. Exit 0.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
mkdir -p /opt/agent-killer
cp "$src/agentkilld" /opt/agent-killer/
chmod 755 /opt/agent-killer/agentkilld
cat > /etc/compatlab/services.d/agentkill <<'SVC'
#!/bin/sh
exec /opt/agent-killer/agentkilld
SVC
chmod 755 /etc/compatlab/services.d/agentkill
sync
echo "agent-killer 1.0 installed; kills the guest agent once, at the next boot"
