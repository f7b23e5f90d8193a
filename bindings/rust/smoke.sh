#!/usr/bin/env bash
# bindings/rust/smoke.sh PREFIX: the Rust FFI check run by `make rust-test`.
#
# PREFIX is an install of libgoxelpool (make examples installs into build/stage): its
# lib/pkgconfig/goxelpool.pc is what build.rs asks pkg-config about, its bin/goxel-refd serves the
# smoke program. Builds offline (no crates), runs the unit tests (no daemon needed), then
# goxelpool-smoke against a goxel-refd on a temporary socket. CARGO_TARGET_DIR defaults to
# build/rust. Exits non-zero on any failure.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PREFIX=$(cd "${1:?usage: smoke.sh PREFIX}" && pwd)
CARGO=${CARGO:-cargo}
export PKG_CONFIG_PATH=$PREFIX/lib/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/build/rust}
MANIFEST=$ROOT/bindings/rust/Cargo.toml

WORK=$(mktemp -d "${TMPDIR:-/tmp}/gxrust.XXXXXX")
REFD_PID=
cleanup() {
    if [ -n "$REFD_PID" ]; then
        kill -TERM "$REFD_PID" 2>/dev/null || true
        wait "$REFD_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "rust-test: pkg-config --libs --cflags goxelpool: $(pkg-config --libs --cflags goxelpool)"
"$CARGO" build --offline --manifest-path "$MANIFEST"
"$CARGO" test --offline --manifest-path "$MANIFEST"

SOCK=$WORK/refd.sock
"$PREFIX/bin/goxel-refd" --socket "$SOCK" >"$WORK/refd.log" 2>&1 </dev/null &
REFD_PID=$!
for _ in $(seq 1 100); do
    grep -qF "goxel-refd listening on $SOCK" "$WORK/refd.log" && break
    if ! kill -0 "$REFD_PID" 2>/dev/null; then
        echo "rust-test: goxel-refd exited:"; cat "$WORK/refd.log"; REFD_PID=; exit 1
    fi
    sleep 0.1
done
grep -qF "goxel-refd listening on $SOCK" "$WORK/refd.log" || { echo "rust-test: goxel-refd did not start"; exit 1; }

"$CARGO_TARGET_DIR/debug/goxelpool-smoke" "$SOCK"
