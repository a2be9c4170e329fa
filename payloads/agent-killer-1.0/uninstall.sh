#!/bin/sh
# Remove Agent Killer (only reachable where the agent answers, e.g. at a later boot).
set -u
svc stop agentkill > /dev/null 2>&1
rm -f /etc/compatlab/services.d/agentkill
rm -rf /opt/agent-killer /var/lib/agent-killer
sync
echo "agent-killer removed"
