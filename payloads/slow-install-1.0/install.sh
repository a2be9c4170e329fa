#!/bin/sh
# Slow Install 1.0 - a harmless candidate whose installer takes a while and says so on the
# serial console (a reliability fixture, issue 8; tests/reliability/test_runner_signals.py):
# the runner can be interrupted while it is known to be in the install phase. Installs
# nothing; the cell passes. Exit 0.
echo "slow-install: installing (10 s)" > /dev/console
sleep 10
echo "slow-install: installed" > /dev/console
echo "slow-install 1.0 installed"
