# Helpers shared by Tests/packaging/run.sh, Tests/packaging/demo.sh and the other shell test
# scripts (sourced, not run).

# Counting checks: pass NAME, fail NAME [WHY], check NAME FUNCTION [ARGS...]; the scripts end
# with "N passed, N failed".
PASSED=0
FAILED=0
FAILED_NAMES=()
OUT=

pass() { echo "PASS $1"; PASSED=$((PASSED + 1)); }
fail() {
    echo "FAIL $1${2:+: $2}"
    FAILED=$((FAILED + 1))
    FAILED_NAMES+=("$1")
}
# check NAME FUNCTION [ARGS...]: runs FUNCTION, PASS if it returns 0; on failure its output is
# shown indented. Its output is kept in $OUT either way.
check() {
    local name=$1
    shift
    if OUT=$("$@" 2>&1); then
        pass "$name"
    else
        fail "$name"
        [ -n "$OUT" ] && printf '%s\n' "$OUT" | sed 's/^/    /'
    fi
    return 0
}
# finish: names the failed checks, prints "N passed, N failed"; non-zero status if any failed.
finish() {
    if [ "$FAILED" -gt 0 ]; then
        echo "failed: ${FAILED_NAMES[*]}"
    fi
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
}

# start_refd BINARY SOCKET [ARGS...]: starts goxel-refd in its own process group and waits (10 s
# at most) for its "goxel-refd listening on SOCKET" line. Sets REFD_PID and REFD_LOG.
start_refd() {
    local bin=$1 sock=$2 i
    shift 2
    REFD_LOG=$(mktemp "${TMPDIR:-/tmp}/goxel-refd.XXXXXX")
    # setsid: the daemon and, under --supervise, its child share a process group that
    # stop_refd can signal as a whole.
    setsid "$bin" --socket "$sock" "$@" >"$REFD_LOG" 2>&1 </dev/null &
    REFD_PID=$!
    for i in $(seq 1 100); do
        if grep -qF "goxel-refd listening on $sock" "$REFD_LOG"; then
            return 0
        fi
        if ! kill -0 "$REFD_PID" 2>/dev/null; then
            echo "goxel-refd exited before it was ready; its output:"
            sed 's/^/  refd| /' "$REFD_LOG"
            wait "$REFD_PID" 2>/dev/null || true
            REFD_PID=
            return 1
        fi
        sleep 0.1
    done
    echo "goxel-refd did not print 'goxel-refd listening on $sock' within 10 s; its output:"
    sed 's/^/  refd| /' "$REFD_LOG"
    stop_refd
    return 1
}

# stop_refd_and_remove_work: the test scripts' exit trap: stop_refd, then remove $REFD_LOG and the
# scripts' temporary directory $WORK.
stop_refd_and_remove_work() {
    stop_refd
    [ -n "${REFD_LOG:-}" ] && rm -f "$REFD_LOG"
    rm -rf "${WORK:?}"
}

# stop_refd: stops the goxel-refd started by start_refd (its process group), if any.
stop_refd() {
    local i
    [ -n "${REFD_PID:-}" ] || return 0
    kill -TERM -- "-$REFD_PID" 2>/dev/null || kill -TERM "$REFD_PID" 2>/dev/null || true
    for i in $(seq 1 50); do
        kill -0 "$REFD_PID" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$REFD_PID" 2>/dev/null || kill -KILL "$REFD_PID" 2>/dev/null || true
    wait "$REFD_PID" 2>/dev/null || true
    REFD_PID=
}
