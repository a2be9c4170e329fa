"""Checks that read evidence from inside a guest after a boot completed.

The hypervisor's view of a crash is in ``compatlab.lab``; what the guest kept about it (event
log, crash dumps, the time it booted) is read here, over a
:class:`~compatlab.guest.channel.Channel`, and parsed by pure functions.

- :mod:`compatlab.checks.windows`: Kernel-Power 41, EventLog 6008, WER 1001, SCM 7000 / 7026,
  minidumps and ``LastBootUpTime``, in one PowerShell round trip.

A Linux guest's previous-boot panic is read from the serial log, which the lab keeps on the
host, by :func:`compatlab.bugcheck.parse_linux_panic`; it needs no channel and no module here.
"""
