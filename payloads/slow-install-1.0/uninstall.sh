#!/bin/sh
# Slow Install 1.0 installed nothing: nothing to remove.
echo "slow-install removed"
