#!/usr/bin/env bash
# make demo: runs examples-c/demo.c.
#   demo.sh STAGE_PREFIX DEMO_BINARY [SOCKET]
# Without SOCKET: spawn mode, the library itself starts STAGE_PREFIX/bin/goxel-refd on a socket
# of its own, restarts it when it crashes and stops it at the end (no daemon to start by hand);
# the demo runs with --control (slow-daemon and crash steps).
# With SOCKET: runs the demo against the daemon already listening there, without those steps.
set -euo pipefail
stage=$1 demo=$2 socket=${3:-}

if [ -n "$socket" ]; then
    echo "demo: using the daemon at $socket (the slow-daemon and crash steps need goxel-refd"
    echo "      under the demo's control, so they are skipped)"
    exec "$demo" "$socket"
fi

echo "demo: spawn mode: the library starts $stage/bin/goxel-refd itself"
exec "$demo" --spawn "$stage/bin/goxel-refd" --control
