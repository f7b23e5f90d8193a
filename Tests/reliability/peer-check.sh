#!/usr/bin/env bash
# peer-check.sh REFD PEER_BINARY: the SO_PEERCRED check against a squatter.
#
# Runs goxel-refd as a second user (gxptest, created with `useradd -M -r` if missing) on a socket
# in a sticky world-writable directory, as a squatter on /tmp/goxel-daemon.sock would, then runs
# PEER_BINARY (Tests/reliability/peer.c) against it: EPEER, a peer_rejected alert. Afterwards it
# asks the squatter over its control socket how many connections it accepted and how many requests
# it received: the library must have sent nothing (requests 0). refd's socket is mode 0660 owned
# by gxptest, and we run as root, so only the check itself can have stopped us. Needs root: prints
# "SKIP" and exits 0 otherwise. Ends with "N passed, N failed".
set -u
refd=$(readlink -f "$1"); peer=$(readlink -f "$2")
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" != 0 ]; then
    echo "SKIP peer-check: needs root (creates user gxptest, runs goxel-refd as that user)"
    exit 0
fi
if ! id gxptest >/dev/null 2>&1; then
    useradd -M -r -s /usr/sbin/nologin gxptest || { echo "SKIP peer-check: useradd gxptest failed"; exit 0; }
fi
if command -v runuser >/dev/null 2>&1; then as_user=(runuser -u gxptest --)
elif command -v setpriv >/dev/null 2>&1; then as_user=(setpriv --reuid=gxptest --regid=gxptest --clear-groups --)
else echo "SKIP peer-check: neither runuser nor setpriv"; exit 0; fi
dir=$(mktemp -d "${TMPDIR:-/tmp}/gxp-peer.XXXXXX")
chmod 1777 "$dir"
sock=$dir/squat.sock
# The binary must be readable and executable by gxptest: copy it next to the socket.
install -m 755 "$refd" "$dir/goxel-refd"
passed=0; failed=0
ok() { echo "PASS $*"; passed=$((passed + 1)); }
ko() { echo "FAIL $*"; failed=$((failed + 1)); }
log=$dir/refd.log
touch "$log"; chmod 666 "$log"
setsid "${as_user[@]}" "$dir/goxel-refd" --socket "$sock" >"$log" 2>&1 </dev/null &
pid=$!
cleanup() { kill -TERM -- "-$pid" 2>/dev/null; sleep 0.2; kill -KILL -- "-$pid" 2>/dev/null; wait "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
for _ in $(seq 1 100); do grep -qF "listening on $sock" "$log" && break; sleep 0.1; done
owner=$(stat -c %U "$sock" 2>/dev/null)
if [ "$owner" = gxptest ]; then ok "squatter socket $sock owned by gxptest (mode $(stat -c %a "$sock"))"
else ko "goxel-refd as gxptest did not start: $(cat "$log")"; echo "$passed passed, $failed failed"; exit 1; fi
# refd.stats over the fault-free control socket (its connections are not counted).
refd_stats() {
    python3 - "$sock.ctl" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])
s.sendall(b'{"jsonrpc":"2.0","method":"refd.stats","id":1}\n')
buf = b""
while not buf.endswith(b"\n"): buf += s.recv(65536)
r = json.loads(buf)["result"]; print(r["accepted"], r["requests"])
PY
}
read -r accepted requests < <(refd_stats)
"$peer" "$sock" | sed 's/^/  /'
rc=${PIPESTATUS[0]}
[ "$rc" = 0 ] && ok "library checks (EPEER, peer_rejected alert)" || ko "library checks (see above)"
read -r accepted2 requests2 < <(refd_stats)
if [ "$requests2" = "$requests" ]; then ok "the squatter received no request (requests $requests -> $requests2; connections accepted $accepted -> $accepted2)"
else ko "the squatter received $((requests2 - requests)) requests"; fi
# Control: the same socket with verify_peer false is reachable, so the check is what refused it.
"$peer" "$sock" --no-verify | grep -F "verify_peer false" | sed 's/^/  /'
read -r accepted3 requests3 < <(refd_stats)
[ "$requests3" -gt "$requests2" ] && ok "control: with verify_peer false requests reach the squatter ($requests2 -> $requests3)" \
    || ko "control: verify_peer false sent nothing ($requests2 -> $requests3)"
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
