#!/usr/bin/env bash
# make demo: runs examples-c/demo.c against a goxel-refd.
#   demo.sh STAGE_PREFIX DEMO_BINARY [SOCKET]
# Without SOCKET: starts STAGE_PREFIX/bin/goxel-refd --supervise on a temporary socket, runs the
# demo with --control (slow-daemon and crash steps), and always stops the daemon.
# With SOCKET: runs the demo against the daemon already listening there, without those steps.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/common.sh"
stage=$1 demo=$2 socket=${3:-}

if [ -n "$socket" ]; then
    echo "demo: using the daemon at $socket (the slow-daemon and crash steps need goxel-refd"
    echo "      started by make demo itself, so they are skipped)"
    exec "$demo" "$socket"
fi

tmp=$(mktemp -d /tmp/goxelpool-demo.XXXXXX)
cleanup() {
    stop_refd
    [ -n "${REFD_LOG:-}" ] && rm -f "$REFD_LOG"
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! start_refd "$stage/bin/goxel-refd" "$tmp/refd.sock" --supervise; then
    echo "demo: could not start goxel-refd" >&2
    exit 1
fi
echo "demo: goxel-refd --supervise (pid $REFD_PID) listening on $tmp/refd.sock"
rc=0
"$demo" "$tmp/refd.sock" --control || rc=$?
if [ $rc -ne 0 ]; then
    echo "demo: failed (exit $rc); goxel-refd's output:"
    sed 's/^/  refd| /' "$REFD_LOG"
fi
exit $rc
