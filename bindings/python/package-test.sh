#!/usr/bin/env bash
# The Python package as users get it (make python-package; part of make test):
#
#   bindings/python/package-test.sh STAGE DIST
#
# STAGE: an install prefix of the library (make examples' build/stage); DIST: where `make wheel`
# put goxelpool-*.whl. In fresh virtual environments, against a goxel-refd:
#   1. pip install ./bindings/python, then the smoke test (tests/smoke_installed.py) with the
#      library named by GOXELPOOL_LIBRARY, then with nothing but PKG_CONFIG_PATH (found through
#      pkg-config), then the whole unittest suite against the installed package;
#   2. pip install DIST/goxelpool-*.whl, then the smoke test with an empty environment (no
#      GOXELPOOL_LIBRARY, LD_LIBRARY_PATH or PKG_CONFIG_PATH) and, as root, the system's libjansson
#      covered by /dev/null in a private mount namespace: library and jansson come from the wheel.
# Prints PASS/FAIL lines and ends with "N passed, N failed".
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
STAGE=$(cd "$1" && pwd)
DIST=$(cd "$2" && pwd)
PY=${PYTHON:-python3}
. Tests/packaging/common.sh

PASSED=0
FAILED=0
WORK=$(mktemp -d /tmp/goxelpool-pypkg.XXXXXX)
cleanup() { stop_refd; [ -n "${REFD_LOG:-}" ] && rm -f "$REFD_LOG"; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

smoke() { # smoke PREFIX COMMAND...: runs a smoke test, counts its PASS/FAIL lines (prefixed)
    local prefix=$1 out rc line failed_before=$FAILED
    shift
    out=$("$@" 2>&1)
    rc=$?
    while IFS= read -r line; do
        case "$line" in
            "PASS "*) PASSED=$((PASSED + 1)); echo "PASS $prefix${line#PASS }" ;;
            "FAIL "*) FAILED=$((FAILED + 1)); echo "FAIL $prefix${line#FAIL }" ;;
            *) echo "    $line" ;;
        esac
    done <<<"$out"
    # A run that died (an import error, a traceback) fails even if no check said FAIL.
    if [ "$rc" -ne 0 ] && [ "$FAILED" -eq "$failed_before" ]; then
        FAILED=$((FAILED + 1))
        echo "FAIL ${prefix}smoke exited with $rc"
    fi
}
step() { # step NAME COMMAND...: PASS when the command exits 0, else FAIL with its output
    local name=$1 out
    shift
    if out=$("$@" 2>&1); then echo "PASS $name"; PASSED=$((PASSED + 1));
    else echo "FAIL $name"; printf '%s\n' "$out" | tail -n 30 | sed 's/^/    /'; FAILED=$((FAILED + 1)); fi
}

SOCK=$WORK/refd.sock
if ! start_refd "$STAGE/bin/goxel-refd" "$SOCK" >"$WORK/refd-start.log" 2>&1; then
    cat "$WORK/refd-start.log"
    echo "0 passed, 1 failed"
    exit 1
fi
SMOKE=$ROOT/bindings/python/tests/smoke_installed.py

# 1. From the source tree.
step "pip-install-source" sh -c "$PY -m venv '$WORK/src' && '$WORK/src/bin/pip' install -q '$ROOT/bindings/python'"
if [ -x "$WORK/src/bin/python" ]; then
    cd "$WORK"
    smoke source:GOXELPOOL_LIBRARY: env -u LD_LIBRARY_PATH -u PKG_CONFIG_PATH \
        GOXELPOOL_LIBRARY="$STAGE/lib/libgoxelpool.so.1" "$WORK/src/bin/python" "$SMOKE" "$SOCK" "$STAGE/lib"
    smoke source:pkg-config: env -u LD_LIBRARY_PATH -u GOXELPOOL_LIBRARY \
        PKG_CONFIG_PATH="$STAGE/lib/pkgconfig" "$WORK/src/bin/python" "$SMOKE" "$SOCK" "$STAGE/lib"
    cd "$ROOT"
    step "source:unittest-suite-on-the-installed-package" env GOXELPOOL_TEST_INSTALLED=1 PYTHONDONTWRITEBYTECODE=1 \
        GOXELPOOL_LIBRARY="$STAGE/lib/libgoxelpool.so.1" GOXEL_REFD="$STAGE/bin/goxel-refd" \
        "$WORK/src/bin/python" -m unittest discover -s bindings/python/tests -t bindings/python/tests
fi

# 2. The wheel.
WHEELS=("$DIST"/goxelpool-*.whl)
step "wheel-built" test -f "${WHEELS[0]}"
step "pip-install-wheel" sh -c "$PY -m venv '$WORK/whl' && '$WORK/whl/bin/pip' install -q '${WHEELS[0]}'"
if [ -x "$WORK/whl/bin/python" ]; then
    SITE=$("$WORK/whl/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["platlib"])')
    RUN=(env -i PATH=/usr/bin:/bin HOME="$WORK" "$WORK/whl/bin/python" "$SMOKE" "$SOCK" "$SITE/goxelpool" "$SITE/goxelpool.libs")
    SYSTEM_JANSSON=$(readlink -f "$(ldconfig -p | awk '/libjansson\.so\.4 .*x86-64/ { print $NF; exit }')" 2>/dev/null)
    if [ "$(id -u)" = 0 ] && [ -f "$SYSTEM_JANSSON" ] &&
        unshare -m sh -c 'mount --bind /dev/null "$1"' sh "$SYSTEM_JANSSON" 2>/dev/null; then
        echo "    the system's $SYSTEM_JANSSON is covered by /dev/null for this step"
        cd "$WORK"
        smoke wheel: unshare -m sh -c 'mount --bind /dev/null "$1" && shift && exec "$@"' sh "$SYSTEM_JANSSON" "${RUN[@]}"
        cd "$ROOT"
    else
        echo "    (not root or no unshare: the system's libjansson stays visible; /proc/self/maps decides)"
        cd "$WORK"
        smoke wheel: "${RUN[@]}"
        cd "$ROOT"
    fi
fi

echo "python package: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
