#!/usr/bin/env bash
# Tests of the set-up (.ci/ensure-deps, .ci/packages, `make deps`), run by `make test`
# (`make setup-test`). Nothing is really installed or removed: a package that does not exist
# stands for a missing one, and, as root, a fake apt-get on PATH records what would have run.
#
#   Tests/setup/run.sh        prints PASS/FAIL lines and "N passed, N failed"
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
. Tests/packaging/common.sh
ENSURE=$ROOT/.ci/ensure-deps
MAKE=${MAKE:-make}

WORK=$(mktemp -d /tmp/goxelpool-setup.XXXXXX)
chmod 755 "$WORK"
trap 'rm -rf "$WORK"' EXIT
MISSING=goxelpool-test-no-such-package

# A list with one package that is installed on every Debian system and one that does not exist.
printf '# test list\ncoreutils   # always there\n%s   # never there\n' "$MISSING" >"$WORK/missing.list"
printf 'coreutils\n' >"$WORK/present.list"
printf 'coreutils\n%s   true   # PRESENT-IF succeeds\n' "$MISSING" >"$WORK/present-if.list"
chmod 644 "$WORK"/*.list

# A fake apt-get that records its arguments (root cases): the real one is never run here.
mkdir -p "$WORK/bin"
cat >"$WORK/bin/apt-get" <<SH
#!/bin/sh
echo "apt-get \$*" >>"$WORK/apt.log"
exit 0
SH
chmod 755 "$WORK/bin/apt-get"

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1
# What the unprivileged user runs is a copy, in a directory it can read whatever the clone's
# (CI may clone under /root): the script, and for make the Makefile with the header it reads.
TREE=$WORK/tree
mkdir -p "$TREE/.ci" "$TREE/include"
cp .ci/ensure-deps .ci/packages "$TREE/.ci/"
cp Makefile "$TREE/"
cp include/goxelpool.h "$TREE/include/"
chmod -R a+rX "$TREE"
# as_user CMD...: runs CMD as an unprivileged user (nobody) when we are root, else as ourselves.
as_user() {
    if [ $IS_ROOT = 1 ]; then
        setpriv --reuid=65534 --regid=65534 --clear-groups env HOME=/tmp "$@"
    else
        "$@"
    fi
}

# expect_missing_message OUTPUT: the message names the package and gives the one command.
expect_missing_message() {
    printf '%s\n' "$1" | grep -qF "Missing Debian packages: $MISSING" || { echo "no 'Missing Debian packages: $MISSING' line in:"; printf '    %s\n' "$1"; return 1; }
    printf '%s\n' "$1" | grep -qxF "    sudo apt-get install -y $MISSING" || { echo "no 'sudo apt-get install -y $MISSING' line"; return 1; }
    if printf '%s\n' "$1" | grep -q 'apt-get install -y.*coreutils'; then echo "asks to install coreutils, which is installed"; return 1; fi
}

real_list_present() {
    # The project's own list on this machine (after .ci/run or make deps): nothing missing, no
    # output, quick (one dpkg-query; the bound is loose on purpose, the machine is shared).
    local out start end
    start=$(date +%s%N)
    out=$(PATH=$WORK/bin:$PATH "$ENSURE" 2>&1) || { echo "exit $?: $out"; return 1; }
    end=$(date +%s%N)
    [ -z "$out" ] || { echo "printed: $out"; return 1; }
    [ ! -e "$WORK/apt.log" ] || { echo "apt-get ran: $(cat "$WORK/apt.log")"; return 1; }
    echo "took $(((end - start) / 1000000)) ms"
    [ $(((end - start) / 1000000)) -lt 3000 ]
}

present_quiet() {
    local out
    out=$(PATH=$WORK/bin:$PATH "$ENSURE" --list "$WORK/present.list" 2>&1) || { echo "exit $?: $out"; return 1; }
    [ -z "$out" ] || { echo "printed: $out"; return 1; }
    [ ! -e "$WORK/apt.log" ] || { echo "apt-get ran"; return 1; }
}

present_if_counts() {
    local out
    out=$(as_user "$TREE/.ci/ensure-deps" --list "$WORK/present-if.list" 2>&1) || { echo "exit $?: $out"; return 1; }
}

missing_as_user() {
    local out rc=0
    out=$(as_user "$TREE/.ci/ensure-deps" --list "$WORK/missing.list" 2>&1) || rc=$?
    printf '%s\n' "$out"
    [ $rc = 1 ] || { echo "exit status $rc, expected 1"; return 1; }
    expect_missing_message "$out"
}

missing_check_mode_as_root() {
    [ $IS_ROOT = 1 ] || { echo "SKIP: not root"; return 0; }
    local out rc=0
    rm -f "$WORK/apt.log"
    out=$(PATH=$WORK/bin:$PATH GOXELPOOL_DEPS=check "$ENSURE" --list "$WORK/missing.list" 2>&1) || rc=$?
    [ $rc = 1 ] || { echo "exit status $rc, expected 1: $out"; return 1; }
    [ ! -e "$WORK/apt.log" ] || { echo "apt-get ran in check mode: $(cat "$WORK/apt.log")"; return 1; }
    expect_missing_message "$out"
}

missing_as_root_installs() {
    [ $IS_ROOT = 1 ] || { echo "SKIP: not root"; return 0; }
    local out rc=0
    rm -f "$WORK/apt.log"
    out=$(PATH=$WORK/bin:$PATH "$ENSURE" --list "$WORK/missing.list" 2>&1 </dev/null) || rc=$?
    printf '%s\n' "$out"
    echo "apt.log:"; cat "$WORK/apt.log" 2>/dev/null
    # It asks apt-get for exactly the missing package, then checks again: the fake installed
    # nothing, so it must say so and fail.
    grep -qx "apt-get update -q" "$WORK/apt.log" || { echo "no apt-get update"; return 1; }
    grep -qx "apt-get install -y -q --no-install-recommends $MISSING" "$WORK/apt.log" || { echo "no apt-get install of exactly $MISSING"; return 1; }
    [ $rc = 1 ] || { echo "exit status $rc, expected 1"; return 1; }
    printf '%s\n' "$out" | grep -qF "still missing after apt-get install: $MISSING"
}

usage_errors() {
    local rc=0
    "$ENSURE" --mode sometimes >/dev/null 2>&1 || rc=$?
    [ $rc = 2 ] || { echo "--mode sometimes: exit $rc, expected 2"; return 1; }
    rc=0
    "$ENSURE" --list "$WORK/no-such.list" >/dev/null 2>&1 || rc=$?
    [ $rc = 2 ] || { echo "unreadable list: exit $rc, expected 2"; return 1; }
    GOXELPOOL_DEPS=skip "$ENSURE" --list "$WORK/missing.list" || { echo "skip mode failed"; return 1; }
}

# make all / test / demo stop at the check, before swift build: run as an unprivileged user with
# the missing list, and (as root) with the fake apt-get.
make_stops_first() {
    local target=$1 out rc=0
    out=$(as_user env -u MAKEFLAGS -u MAKELEVEL "$MAKE" -C "$TREE" "$target" PACKAGES="$WORK/missing.list" 2>&1 </dev/null) || rc=$?
    [ $rc != 0 ] || { echo "make $target succeeded"; printf '%s\n' "$out" | tail -5; return 1; }
    if printf '%s\n' "$out" | grep -qE '^(swift |install -p|rm -rf|cc )|Compiling'; then echo "make $target went on past the check:"; printf '%s\n' "$out" | head -5; return 1; fi
    expect_missing_message "$out"
}

make_root_installs_first() {
    [ $IS_ROOT = 1 ] || { echo "SKIP: not root"; return 0; }
    local out rc=0
    rm -f "$WORK/apt.log"
    out=$(PATH=$WORK/bin:$PATH env -u MAKEFLAGS -u MAKELEVEL "$MAKE" -C "$ROOT" demo PACKAGES="$WORK/missing.list" 2>&1 </dev/null) || rc=$?
    [ $rc != 0 ] || { echo "make demo succeeded"; return 1; }
    grep -qx "apt-get install -y -q --no-install-recommends $MISSING" "$WORK/apt.log" || { echo "apt-get install not run"; return 1; }
    if printf '%s\n' "$out" | grep -qE '^(swift |install -p|rm -rf|cc )|Compiling'; then echo "make demo went on past the check"; return 1; fi
}

list_format() {
    # Every line of the real list is "NAME [PRESENT-IF] # who needs it".
    local bad
    bad=$(grep -vE '^[[:space:]]*(#.*)?$' .ci/packages | grep -vE '^[a-z0-9][a-z0-9.+-]+([[:space:]].*)?#[[:space:]]*[^[:space:]]')
    [ -z "$bad" ] || { echo "lines without a '# who needs it' comment:"; printf '  %s\n' "$bad"; return 1; }
    grep -qE '^libjansson-dev[[:space:]]' .ci/packages && grep -qE '^pkg-config[[:space:]]' .ci/packages
}

echo "set-up checks ($( [ $IS_ROOT = 1 ] && echo "as root; the unprivileged cases run as nobody" || echo "not root: the root cases are skipped"))"
check setup:list-format list_format
check setup:real-list-present-quiet real_list_present
check setup:present-quiet present_quiet
check setup:present-if present_if_counts
check setup:missing-as-user missing_as_user
check setup:missing-check-mode missing_check_mode_as_root
check setup:missing-as-root-installs missing_as_root_installs
check setup:usage-errors usage_errors
for target in all test demo; do
    check "setup:make-$target-stops-first" make_stops_first "$target"
done
check setup:make-demo-as-root-installs-first make_root_installs_first
finish
