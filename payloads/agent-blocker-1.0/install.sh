#!/bin/sh
# AppGuard 1.0 ("agent-blocker") - a hardening update that breaks the management agent.
# Installs an application-control driver (appguard.ko, boot hook 30-appguard) and its
# service `appguard`, both active from the next boot. Its deny list names qemu-ga: the
# driver kills it at exec, and the service kills any instance still running every second
# (one started before the driver loaded). The guest boots fully - the serial console shows
# `compatlab-guest: services started`, then `agent failed to start` - but the QEMU guest
# agent never answers. Nothing is enforced during this install, so the installer's own
# agent session is not cut off. Exit 0 on success; 10 no driver in the payload.
set -eu
src=$(cd "$(dirname "$0")" && pwd)
[ -f "$src/appguard.ko" ] || { echo "appguard: appguard.ko missing from the payload (run payloads/build.sh)" >&2; exit 10; }
mkdir -p /opt/appguard
cp "$src/appguard.ko" "$src/appguardd" /opt/appguard/
chmod 755 /opt/appguard/appguardd
echo "qemu-ga" > /opt/appguard/deny.list
cat > /etc/compatlab/boot.d/30-appguard <<'HOOK'
#!/bin/sh
# AppGuard application-control driver.
deny=$(tr "\n" , < /opt/appguard/deny.list)
exec insmod /opt/appguard/appguard.ko deny="${deny%,}"
HOOK
chmod 755 /etc/compatlab/boot.d/30-appguard
cat > /etc/compatlab/services.d/appguard <<'SVC'
#!/bin/sh
exec /opt/appguard/appguardd
SVC
chmod 755 /etc/compatlab/services.d/appguard
sync
echo "appguard 1.0 installed; enforcing from the next boot"
