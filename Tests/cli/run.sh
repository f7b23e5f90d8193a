#!/usr/bin/env bash
# Tests of the goxelpool command-line tool against goxel-refd, run by `make cli-test` (part of
# `make test`) after `make examples` has installed everything into build/stage:
#
#   Tests/cli/run.sh STAGE        (STAGE: an install prefix with bin/goxelpool, bin/goxel-refd)
#
# Every command, the options, the exit statuses (0, 1, 2, 10 + status), usage errors, the
# install and the man page. `watch` on a terminal is Tests/cli/test_watch.py (a pseudo-terminal).
# Prints PASS/FAIL lines and "N passed, N failed".
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. Tests/packaging/common.sh
STAGE=${1:?usage: Tests/cli/run.sh STAGE}
GP=$STAGE/bin/goxelpool
MAKE=${MAKE:-make}

WORK=$(mktemp -d "/tmp/goxelpool-cli-$$.XXXXXX")
trap stop_refd_and_remove_work EXIT
trap 'exit 130' INT TERM
SOCK=$WORK/refd.sock
NOWHERE=$WORK/nothing-listens-here.sock
HEADER_VERSION=$(sed -n 's/^#define GOXELPOOL_VERSION_STRING "\(.*\)"$/\1/p' include/goxelpool.h)

# run EXPECTED_STATUS ARGS...: runs the tool, keeps stdout in $STDOUT and stderr in $STDERR, and
# fails (printing both) unless it exits with EXPECTED_STATUS.
run() {
    local expected=$1 rc=0
    shift
    "$GP" "$@" >"$WORK/out" 2>"$WORK/err" </dev/null || rc=$?
    STDOUT=$(cat "$WORK/out")
    STDERR=$(cat "$WORK/err")
    if [ "$rc" != "$expected" ]; then
        echo "goxelpool $*: exit $rc, expected $expected"
        echo "stdout: $STDOUT"
        echo "stderr: $STDERR"
        return 1
    fi
}
json_field() { python3 -c 'import json, sys; v = json.loads(sys.stdin.read()); exec("print(" + sys.argv[1] + ")")' "$1"; }

start_refd "$STAGE/bin/goxel-refd" "$SOCK" --supervise --restart-delay-ms 100 >"$WORK/refd-start.log" 2>&1 ||
    { cat "$WORK/refd-start.log"; fail cli:refd-start; finish; exit 1; }

version() {
    run 0 --version || return 1
    [ "$STDOUT" = "goxelpool $HEADER_VERSION (libgoxelpool $HEADER_VERSION)" ] || { echo "got: $STDOUT"; return 1; }
    grep -q "^\.TH GOXELPOOL 1 .*\"libgoxelpool $HEADER_VERSION\"" Sources/goxelpool-cli/goxelpool.1 ||
        { echo "the man page's .TH does not say libgoxelpool $HEADER_VERSION"; return 1; }
}

help_text() {
    run 0 --help || return 1
    local word
    for word in "call METHOD" stats health metrics watch --socket --endpoint --config --timeout --set "Exit status"; do
        printf '%s\n' "$STDOUT" | grep -qF -- "$word" || { echo "--help does not mention $word"; return 1; }
    done
    run 0 -h
}

# Each bad command line: exit 2, a message, the hint, and nothing on stdout (nothing was sent).
usage_errors() {
    local bad=0 args
    while IFS= read -r args; do
        eval "set -- $args"
        if ! run 2 -s "$SOCK" "$@"; then bad=1; continue; fi
        if [ -n "$STDOUT" ] || ! printf '%s\n' "$STDERR" | grep -qF "Try 'goxelpool --help'"; then
            echo "goxelpool $args: stdout '$STDOUT', stderr '$STDERR'"
            bad=1
        fi
    done <<'CASES'

bogus
--frob stats
stats --frob
-t
call
call ping '[]' extra
call ''
stats extra
watch extra
call echo 3
call echo '{bad'
call echo '"text"'
-t abc call ping
-t -5 call ping
-i 10 watch
-n 0 watch
--set novalue stats
--set =1 stats
--set a..b=1 stats
--set .a=1 stats
CASES
    [ $bad = 0 ] && echo "21 bad command lines: exit 2"
    return $bad
}

call_ok() {
    run 0 -s "$SOCK" call version || return 1
    [ "$(printf '%s' "$STDOUT" | json_field 'v["version"]')" = 0.18.6 ] || { echo "version: $STDOUT"; return 1; }
    run 0 -s "$SOCK" call echo '{"a":[1,2],"b":"c"}' --compact || return 1
    [ "$STDOUT" = '{"a":[1,2],"b":"c"}' ] || { echo "echo: $STDOUT"; return 1; }
    run 0 -s "$SOCK" call goxel.create_project '["cli",8,8,8]' || return 1
    run 0 -s "$SOCK" call goxel.add_voxel '[1,2,3,255,0,0,255,0]' || return 1
    run 0 -s "$SOCK" call goxel.get_voxel '{"x":1,"y":2,"z":3}' --compact || return 1
    [ "$(printf '%s' "$STDOUT" | json_field 'v["exists"]')" = True ] || { echo "get_voxel: $STDOUT"; return 1; }
}

call_rpc_error() {
    run 17 -s "$SOCK" call no.such.method || return 1
    [ -z "$STDOUT" ] || { echo "stdout: $STDOUT"; return 1; }
    printf '%s\n' "$STDERR" | grep -qF '"code":-32601' && printf '%s\n' "$STDERR" | grep -qF 'Method not found'
}

call_connect_error() {
    run 14 -s "$NOWHERE" -t 1000 call ping || return 1
    printf '%s\n' "$STDERR" | grep -qF "ECONNECT" || { echo "stderr: $STDERR"; return 1; }
}

call_timeout() {
    # The reference daemon's control socket speaks JSON-RPC too: the tool slows the daemon down.
    run 0 -s "$SOCK.ctl" call refd.set_faults '{"latency_ms": 600}' || return 1
    local rc=0
    run 12 -s "$SOCK" -t 150 call ping || rc=1
    printf '%s\n' "$STDERR" | grep -qF "ETIMEDOUT" || { echo "stderr: $STDERR"; rc=1; }
    run 0 -s "$SOCK.ctl" call refd.set_faults '{"latency_ms": 0}' || rc=1
    return $rc
}

bad_configuration() {
    run 11 -s "$SOCK" --set pool.max_connections=-1 stats || return 1
    printf '%s\n' "$STDERR" | grep -qF "pool.max_connections" || { echo "stderr: $STDERR"; return 1; }
    run 11 -s "$SOCK" --set no_such_key=1 call ping || return 1
    printf '%s\n' "$STDERR" | grep -qF "no_such_key" || { echo "stderr: $STDERR"; return 1; }
    run 2 -s "$SOCK" --set pool=3 --set pool.max_connections=2 stats
}

config_file() {
    printf '{"socket_path": "%s", "pool": {"max_connections": 3}, "timeout_ms": 2000}\n' "$SOCK" >"$WORK/config.json"
    run 0 -c "$WORK/config.json" stats --compact || return 1
    [ "$(printf '%s' "$STDOUT" | json_field 'v["endpoints"][0]["max_connections"]')" = 3 ] || { echo "stats: $STDOUT"; return 1; }
    # Options change the file's configuration: --set over the file, --endpoint instead of its socket.
    run 0 -c "$WORK/config.json" --set pool.max_connections=5 stats --compact || return 1
    [ "$(printf '%s' "$STDOUT" | json_field 'v["endpoints"][0]["max_connections"]')" = 5 ] || { echo "stats: $STDOUT"; return 1; }
    run 14 -c "$WORK/config.json" -e "unix:$NOWHERE" -t 500 call ping || return 1
    run 1 -c "$WORK/no-such-file.json" stats || return 1
    printf '[1, 2]\n' >"$WORK/array.json"
    run 1 -c "$WORK/array.json" stats || return 1
    printf '{"socket_path": \n' >"$WORK/broken.json"
    run 1 -c "$WORK/broken.json" stats || return 1
    printf '%s\n' "$STDERR" | grep -qF "broken.json" || { echo "stderr: $STDERR"; return 1; }
}

endpoints_and_env() {
    # Two daemons: the reference daemon's main and control sockets both serve ping.
    run 0 -e "unix:$SOCK" -e "unix:$SOCK.ctl" health --compact || return 1
    [ "$(printf '%s' "$STDOUT" | json_field 'sorted(e["endpoint"] for e in v["endpoints"]) == ["unix:'"$SOCK"'", "unix:'"$SOCK"'.ctl"]')" = True ] ||
        { echo "health: $STDOUT"; return 1; }
    run 0 -s "$SOCK" --set log_level=debug --set 'idempotent_methods=["goxel.render_scene"]' call ping || return 1
    local rc=0
    GOXELPOOL_SOCKET=$SOCK "$GP" call ping >/dev/null 2>&1 </dev/null || rc=$?
    [ $rc = 0 ] || { echo "GOXELPOOL_SOCKET: exit $rc"; return 1; }
    # --socket wins over the environment.
    rc=0
    GOXELPOOL_SOCKET=$NOWHERE "$GP" -s "$SOCK" call ping >/dev/null 2>&1 </dev/null || rc=$?
    [ $rc = 0 ] || { echo "--socket over GOXELPOOL_SOCKET: exit $rc"; return 1; }
}

snapshots() {
    run 0 -s "$SOCK" stats --compact || return 1
    # One connection (pool.min_connections 1 for one-shot commands) and the probe's one request.
    [ "$(printf '%s' "$STDOUT" | json_field 'v["total_requests_served"], v["connections_created"]')" = "1 1" ] ||
        { echo "stats: $STDOUT"; return 1; }
    run 0 -s "$SOCK" health || return 1
    [ "$(printf '%s' "$STDOUT" | json_field 'v["state"], len(v["connections"]), v["connections"][0]["tier"]')" = "ready 1 healthy" ] ||
        { echo "health: $STDOUT"; return 1; }
    run 0 -s "$SOCK" metrics || return 1
    printf '%s\n' "$STDOUT" | grep -qxF "goxelpool_requests_total{endpoint=\"unix:$SOCK\"} 1" || { echo "metrics: $STDOUT" | head -20; return 1; }
    printf '%s\n' "$STDOUT" | grep -qxF "# TYPE goxelpool_request_duration_seconds histogram" || return 1
    # A daemon that is not there: the figures say so, and so does the exit status.
    run 14 -s "$NOWHERE" -t 500 stats --compact || return 1
    [ "$(printf '%s' "$STDOUT" | json_field 'v["connection_failures"] > 0, v["total_requests_served"]')" = "True 0" ] ||
        { echo "stats: $STDOUT"; return 1; }
}

watch_plain() {
    # Not a terminal: plain blocks, no escape sequences, stops after --frames.
    run 0 -s "$SOCK" -i 200 -n 3 watch || return 1
    [ "$(printf '%s\n' "$STDOUT" | grep -c '^goxelpool watch  unix:')" = 3 ] || { echo "$STDOUT"; return 1; }
    if printf '%s' "$STDOUT" | grep -q $'\033'; then echo "escape sequences in plain output"; return 1; fi
    printf '%s\n' "$STDOUT" | grep -q '^pool ready' || { echo "$STDOUT"; return 1; }
    # The warm connections' rows, not their connection_added events: those may come before
    # watch registers its listener (client_new opens them), and are then not shown. The events
    # pane is checked in test_watch.py, with events that come later.
    printf '%s\n' "$STDOUT" | grep -Eq '^ +[0-9]+  [^ ]+ +healthy ' || { echo "no healthy connection row: $STDOUT"; return 1; }
}

# make install builds the tool without -Werror (a newer compiler must not break an install);
# here every warning is an error, with more warnings than the install asks for.
strict_build() {
    PKG_CONFIG_PATH=$STAGE/lib/pkgconfig ${CC:-cc} -std=c11 -O2 -Wall -Wextra -Werror -Wshadow -Wconversion \
        -Wno-sign-conversion -Wstrict-prototypes -Wmissing-prototypes Sources/goxelpool-cli/goxelpool.c \
        $(PKG_CONFIG_PATH=$STAGE/lib/pkgconfig pkg-config --cflags --libs goxelpool) -lpthread -o "$WORK/goxelpool-strict"
}

installed() {
    local prefix=$WORK/prefix rc=0
    "$MAKE" --no-print-directory -C "$ROOT" install PREFIX="$prefix" DESTDIR= BINDIR="$prefix/bin" LIBDIR="$prefix/lib" \
        INCLUDEDIR="$prefix/include" PKGCONFIGDIR="$prefix/lib/pkgconfig" MANDIR="$prefix/share/man" >"$WORK/install.log" 2>&1 ||
        { cat "$WORK/install.log"; return 1; }
    [ -f "$prefix/share/man/man1/goxelpool.1" ] || { echo "no man page installed"; return 1; }
    # Runs from its prefix without LD_LIBRARY_PATH (the rpath pkg-config gave it).
    env -u LD_LIBRARY_PATH "$prefix/bin/goxelpool" -s "$SOCK" call ping --compact >"$WORK/ping.out" 2>&1 || rc=$?
    [ $rc = 0 ] && grep -qF '"pong":true' "$WORK/ping.out" || { echo "installed tool: exit $rc: $(cat "$WORK/ping.out")"; return 1; }
    # The man page renders without a warning.
    LC_ALL=C.UTF-8 MANWIDTH=80 man -l "$prefix/share/man/man1/goxelpool.1" >"$WORK/man.txt" 2>"$WORK/man.err" || { cat "$WORK/man.err"; return 1; }
    [ ! -s "$WORK/man.err" ] || { cat "$WORK/man.err"; return 1; }
    grep -q "EXIT STATUS" "$WORK/man.txt" || return 1
    if command -v groff >/dev/null; then
        LC_ALL=C.UTF-8 groff -man -ww -Tutf8 -z "$prefix/share/man/man1/goxelpool.1" 2>"$WORK/groff.err"
        [ ! -s "$WORK/groff.err" ] || { cat "$WORK/groff.err"; return 1; }
    fi
}

echo "goxelpool tool checks: $GP against goxel-refd on $SOCK"
check cli:version version
check cli:help help_text
check cli:usage-errors usage_errors
check cli:call call_ok
check cli:call-rpc-error call_rpc_error
check cli:call-connect-error call_connect_error
check cli:call-timeout call_timeout
check cli:bad-configuration bad_configuration
check cli:config-file config_file
check cli:endpoints-and-env endpoints_and_env
check cli:stats-health-metrics snapshots
check cli:watch-plain watch_plain
check cli:install-and-man-page installed
check cli:strict-build strict_build
finish
