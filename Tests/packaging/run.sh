#!/usr/bin/env bash
# Packaging checks for libgoxelpool, run by `make test` after the release build (`make`).
#
#   Tests/packaging/run.sh            (from anywhere; BUILD=build by default)
#
# Checks the built library's ABI (exported symbols == the header's functions, SONAME, version,
# dependencies, size), that it runs without the Swift toolchain, `make install` (PREFIX and
# DESTDIR), the C examples built with pkg-config only and run against goxel-refd, and the Python
# ctypes FFI. Each check prints "PASS name" or "FAIL name"; the last line is
# "N passed, N failed"; the exit status is non-zero when any check failed.
#
# SWIFT_TEST_RC, when set (by make test), is the exit status of `swift test`, counted as the
# check "swift-test".
set -uo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
BUILD=${BUILD:-build}
MAKE=${MAKE:-make}
CC=${CC:-cc}
HEADER=include/goxelpool.h
MAX_STRIPPED_BYTES=${MAX_STRIPPED_BYTES:-16777216}
. Tests/packaging/common.sh

WORK=$(mktemp -d /tmp/goxelpool-packaging.XXXXXX)
trap stop_refd_and_remove_work EXIT
trap 'exit 130' INT TERM

header_macro() {
    sed -n "s/^#define[[:space:]]\{1,\}GOXELPOOL_VERSION_$1[[:space:]]\{1,\}\"\{0,1\}\([0-9.]\{1,\}\)\"\{0,1\}[[:space:]]*\$/\1/p" "$HEADER"
}
MAJOR=$(header_macro MAJOR)
VERSION=$(header_macro MAJOR).$(header_macro MINOR).$(header_macro PATCH)
VERSION_STRING=$(header_macro STRING)
SONAME=libgoxelpool.so.$MAJOR
LIB=$BUILD/lib/libgoxelpool.so.$VERSION

echo "packaging checks: libgoxelpool $VERSION ($LIB)"

# ---- 0. swift test (run by make test) -------------------------------------------------------
if [ -n "${SWIFT_TEST_RC:-}" ]; then
    if [ "$SWIFT_TEST_RC" = 0 ]; then pass swift-test; else fail swift-test "exit $SWIFT_TEST_RC"; fi
fi

# ---- 1. ABI ---------------------------------------------------------------------------------
# The functions the header declares: "goxelpool_name(" outside comments, except callback typedefs
# such as "typedef void (*goxelpool_call_cb)(...)".
header_functions() {
    python3 - "$HEADER" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
text = re.sub(r"//[^\n]*", " ", text)
names = set()
for m in re.finditer(r"(?<![\w])(goxelpool_[a-z0-9_]+)\s*\(", text):
    if not re.search(r"\(\s*\*\s*$", text[:m.start()]):  # not a typedef'd callback (*name)(
        names.add(m.group(1))
if not names:
    sys.exit("no goxelpool_ function found in " + sys.argv[1])
print("\n".join(sorted(names)))
PY
}
# Defined symbols of global or weak binding (upper-case nm types), as "TYPE NAME".
exported_symbols() {
    nm -D --defined-only "$LIB" | awk 'NF >= 3 && $2 ~ /^[A-Z]$/ { sub(/@.*/, "", $3); print $2, $3 }' | sort -k2
}

have_lib() {
    if [ ! -f "$LIB" ]; then
        echo "$LIB is missing: run make first"
        return 1
    fi
}

abi_no_extra_exports() {
    have_lib || return 1
    local expected extra
    expected=$(header_functions) || { echo "$expected"; return 1; }
    extra=$(exported_symbols | awk -v want="$expected" '
        BEGIN { n = split(want, w, "\n"); for (i = 1; i <= n; i++) ok[w[i]] = 1 }
        !(($2 in ok) && ($1 == "T" || $1 == "W" || $1 == "i")) { print "  exported but not a function of the header: " $1 " " $2 }')
    if [ -n "$extra" ]; then
        echo "$extra"
        return 1
    fi
    echo "exports: $(exported_symbols | awk '{print $2}' | tr '\n' ' ')"
}

abi_all_functions_exported() {
    have_lib || return 1
    local missing
    header_functions >/dev/null || return 1
    missing=$(comm -23 <(header_functions | sort) <(exported_symbols | awk '$1 == "T" || $1 == "W" || $1 == "i" { print $2 }' | sort))
    if [ -n "$missing" ]; then
        echo "declared in $HEADER but not exported by $LIB:"
        printf '%s\n' "$missing" | sed 's/^/  /'
        return 1
    fi
}

abi_soname() {
    have_lib || return 1
    local soname
    soname=$(readelf -d "$LIB" | sed -n 's/.*(SONAME).*\[\(.*\)\].*/\1/p')
    echo "SONAME: ${soname:-none}"
    [ "$soname" = "$SONAME" ]
}

lib_files() {
    have_lib || return 1
    [ "$(readlink "$BUILD/lib/$SONAME")" = "libgoxelpool.so.$VERSION" ] || { echo "$BUILD/lib/$SONAME does not point to libgoxelpool.so.$VERSION"; return 1; }
    [ "$(readlink "$BUILD/lib/libgoxelpool.so")" = "$SONAME" ] || { echo "$BUILD/lib/libgoxelpool.so does not point to $SONAME"; return 1; }
    [ -x "$BUILD/bin/goxel-refd" ] || { echo "$BUILD/bin/goxel-refd is missing"; return 1; }
}

# A tiny program that prints goxelpool_version(), linked against the build tree.
cat > "$WORK/version.c" <<'C'
#include <goxelpool.h>
#include <stdio.h>
#include <string.h>
int main(void) {
    printf("%s\n", goxelpool_version());
    if (strcmp(goxelpool_version(), GOXELPOOL_VERSION_STRING) != 0) {
        fprintf(stderr, "goxelpool_version() \"%s\" != GOXELPOOL_VERSION_STRING \"%s\"\n",
                goxelpool_version(), GOXELPOOL_VERSION_STRING);
        return 1;
    }
    return 0;
}
C
# A program that dlopen()s the library and calls an exported function: checks that the library
# (and the Swift runtime linked into it) loads and runs, whatever the header's functions are.
cat > "$WORK/dlopen_probe.c" <<'C'
#include <dlfcn.h>
#include <stdio.h>
int main(int argc, char **argv) {
    (void)argc;
    void *lib = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!lib) { fprintf(stderr, "dlopen: %s\n", dlerror()); return 1; }
    const char *(*version)(void) = (const char *(*)(void))dlsym(lib, "goxelpool_version");
    void *(*stats)(void *) = (void *(*)(void *))dlsym(lib, "goxelpool_stats");
    if (version) printf("goxelpool_version() = %s\n", version());
    else if (stats) printf("goxelpool_stats(NULL) = %p\n", stats(NULL));
    else { fprintf(stderr, "neither goxelpool_version nor goxelpool_stats is exported\n"); return 1; }
    return 0;
}
C

abi_version() {
    have_lib || return 1
    [ "$VERSION_STRING" = "$VERSION" ] || { echo "GOXELPOOL_VERSION_STRING $VERSION_STRING != MAJOR.MINOR.PATCH $VERSION"; return 1; }
    local libdir
    libdir=$(cd "$BUILD/lib" && pwd)
    $CC -Wall -Wextra -Werror -I include $(pkg-config --cflags jansson) "$WORK/version.c" \
        -L "$libdir" -Wl,-rpath,"$libdir" -lgoxelpool -o "$WORK/version" || return 1
    run_app "$WORK/version"
}

ALLOWED_NEEDED='^(libjansson\.so\.4|libssl\.so\.3|libcrypto\.so\.3|libstdc\+\+\.so\.6|libm\.so\.6|libc\.so\.6|libgcc_s\.so\.1|ld-linux[-.a-z0-9_]*\.so\.[0-9]+|libdl\.so\.2|libpthread\.so\.0|librt\.so\.1|libutil\.so\.1)$'
abi_needed() {
    have_lib || return 1
    local needed bad
    needed=$(readelf -d "$LIB" | sed -n 's/.*(NEEDED).*\[\(.*\)\].*/\1/p')
    echo "NEEDED: $(echo $needed)"
    bad=$(printf '%s\n' "$needed" | grep -Ev "$ALLOWED_NEEDED")
    if [ -n "$bad" ] || printf '%s\n' "$needed" | grep -Eqi 'swift|foundation|dispatch|BlocksRuntime'; then
        echo "unexpected dependencies: $(echo $bad)"
        return 1
    fi
}

size_check() {
    have_lib || return 1
    strip -o "$WORK/stripped.so" "$LIB" || return 1
    local s
    s=$(stat -c %s "$WORK/stripped.so")
    echo "stripped size $s bytes (limit $MAX_STRIPPED_BYTES)"
    [ "$s" -le "$MAX_STRIPPED_BYTES" ]
}

# ---- 2. runs without the Swift toolchain ----------------------------------------------------
SWIFT_RT=
if command -v swift >/dev/null 2>&1; then
    SWIFT_RT=$(dirname "$(dirname "$(readlink -f "$(command -v swift)")")")/lib/swift/linux
fi
# Where possible (root, unshare), programs run in a private mount namespace with the toolchain's
# runtime directory covered by an empty tmpfs: proof that nothing loads from it.
HIDE=0
if [ -n "$SWIFT_RT" ] && [ -d "$SWIFT_RT" ] &&
    unshare -m sh -c 'mount -t tmpfs none "$1" && ! ls "$1"/libswiftCore.so' sh "$SWIFT_RT" >/dev/null 2>&1; then
    HIDE=1
fi
# run_app PROGRAM [ARGS...]: runs without LD_LIBRARY_PATH and, if possible, with the toolchain's
# runtime hidden.
run_app() {
    if [ "$HIDE" = 1 ]; then
        env -u LD_LIBRARY_PATH unshare -m sh -c 'mount -t tmpfs none "$1" && shift && exec "$@"' sh "$SWIFT_RT" "$@"
    else
        env -u LD_LIBRARY_PATH "$@"
    fi
}
# ldd_clean FILE: nothing FILE needs resolves into the toolchain or is missing.
ldd_clean() {
    local out
    out=$(env -u LD_LIBRARY_PATH ldd "$1") || { echo "ldd $1 failed: $out"; return 1; }
    if printf '%s\n' "$out" | grep -Eq 'libswift|libFoundation|libdispatch|not found' ||
        { [ -n "$SWIFT_RT" ] && printf '%s\n' "$out" | grep -qF "$(dirname "$(dirname "$SWIFT_RT")")"; }; then
        echo "ldd $1:"
        printf '%s\n' "$out" | sed 's/^/  /'
        return 1
    fi
}

no_toolchain_load() {
    have_lib || return 1
    ldd_clean "$LIB" || return 1
    $CC -Wall -Wextra -Werror "$WORK/dlopen_probe.c" -o "$WORK/dlopen_probe" -ldl || return 1
    if [ "$HIDE" = 1 ]; then echo "toolchain runtime $SWIFT_RT hidden (mount namespace)"; else echo "ldd shows nothing from the toolchain (could not hide $SWIFT_RT)"; fi
    run_app "$WORK/dlopen_probe" "$(cd "$BUILD/lib" && pwd)/libgoxelpool.so.$VERSION"
}

no_toolchain_program() {
    [ -x "$WORK/version" ] || { echo "the version program did not build (see abi-version)"; return 1; }
    ldd_clean "$WORK/version" || return 1
    run_app "$WORK/version"
}

check abi-no-extra-exports abi_no_extra_exports
check abi-all-functions-exported abi_all_functions_exported
check abi-soname abi_soname
check lib-files lib_files
check abi-version abi_version
check abi-needed abi_needed
check size size_check
check no-toolchain-load no_toolchain_load
check no-toolchain-program no_toolchain_program

# ---- 3. make install, pkg-config, the examples ----------------------------------------------
PREFIX_DIR=$WORK/prefix
install_prefix() {
    $MAKE --no-print-directory -C "$ROOT" install PREFIX="$PREFIX_DIR" DESTDIR= \
        BINDIR="$PREFIX_DIR/bin" LIBDIR="$PREFIX_DIR/lib" INCLUDEDIR="$PREFIX_DIR/include" \
        PKGCONFIGDIR="$PREFIX_DIR/lib/pkgconfig" >"$WORK/install.log" 2>&1 || { cat "$WORK/install.log"; return 1; }
    local f
    for f in include/goxelpool.h lib/libgoxelpool.so.$VERSION lib/pkgconfig/goxelpool.pc bin/goxel-refd; do
        [ -f "$PREFIX_DIR/$f" ] || { echo "missing $PREFIX_DIR/$f"; return 1; }
    done
    [ "$(readlink "$PREFIX_DIR/lib/$SONAME")" = "libgoxelpool.so.$VERSION" ] || { echo "bad link lib/$SONAME"; return 1; }
    [ "$(readlink "$PREFIX_DIR/lib/libgoxelpool.so")" = "$SONAME" ] || { echo "bad link lib/libgoxelpool.so"; return 1; }
    cmp -s "$HEADER" "$PREFIX_DIR/include/goxelpool.h" || { echo "installed header differs"; return 1; }
}

pkg_config_check() {
    export PKG_CONFIG_PATH=$PREFIX_DIR/lib/pkgconfig
    local v libs cflags
    v=$(pkg-config --modversion goxelpool) || return 1
    libs=$(pkg-config --libs goxelpool) || return 1
    cflags=$(pkg-config --cflags goxelpool) || return 1
    echo "version $v; cflags: $cflags; libs: $libs"
    [ "$v" = "$VERSION" ] || { echo "Version $v != $VERSION"; return 1; }
    case " $libs " in *" -Wl,-rpath,$PREFIX_DIR/lib "*) ;; *) echo "no -Wl,-rpath,$PREFIX_DIR/lib"; return 1 ;; esac
    case " $libs " in *" -ljansson "*) ;; *) echo "no -ljansson (Requires: jansson)"; return 1 ;; esac
    case " $cflags " in *" -I$PREFIX_DIR/include "*) ;; *) echo "no -I$PREFIX_DIR/include"; return 1 ;; esac
}

install_destdir() {
    local dest=$WORK/destdir
    $MAKE --no-print-directory -C "$ROOT" install DESTDIR="$dest" PREFIX=/opt/goxelpool \
        BINDIR=/opt/goxelpool/bin LIBDIR=/opt/goxelpool/lib INCLUDEDIR=/opt/goxelpool/include \
        PKGCONFIGDIR=/opt/goxelpool/lib/pkgconfig >"$WORK/install-destdir.log" 2>&1 || { cat "$WORK/install-destdir.log"; return 1; }
    local f
    for f in include/goxelpool.h lib/libgoxelpool.so.$VERSION lib/$SONAME lib/libgoxelpool.so lib/pkgconfig/goxelpool.pc bin/goxel-refd; do
        [ -e "$dest/opt/goxelpool/$f" ] || { echo "missing $dest/opt/goxelpool/$f"; return 1; }
    done
    grep -qx 'prefix=/opt/goxelpool' "$dest/opt/goxelpool/lib/pkgconfig/goxelpool.pc" || { echo "goxelpool.pc does not say prefix=/opt/goxelpool"; return 1; }
    grep -q "$dest" "$dest/opt/goxelpool/lib/pkgconfig/goxelpool.pc" && { echo "DESTDIR leaked into goxelpool.pc"; return 1; }
    return 0
}

check install-prefix install_prefix
check install-destdir install_destdir
check pkg-config pkg_config_check
export PKG_CONFIG_PATH=$PREFIX_DIR/lib/pkgconfig

EXAMPLES=()
for src in examples-c/*.c; do
    EXAMPLES+=("$(basename "$src" .c)")
done
mkdir -p "$WORK/examples"
# The pkg-config packages an example needs: its " * pkg-config: ..." line, else goxelpool (as in
# the Makefile's examples target).
example_pkgs() {
    local pkgs
    pkgs=$(sed -n 's/^ \* pkg-config: *//p' "examples-c/$1.c" | head -n 1)
    echo "${pkgs:-goxelpool}"
}
compile_example() {
    $CC -Wall -Wextra -Werror -c "examples-c/$1.c" $(pkg-config --cflags $(example_pkgs "$1")) -o "$WORK/examples/$1.o"
}
build_example() {
    # Exactly what examples-c/README.md tells users to type.
    $CC -Wall -Wextra -Werror "examples-c/$1.c" $(pkg-config --cflags --libs $(example_pkgs "$1")) -lpthread -o "$WORK/examples/$1"
}
for ex in "${EXAMPLES[@]}"; do
    check "compile:$ex" compile_example "$ex"
    check "build:$ex" build_example "$ex"
done

# ---- 4. run the examples and the ctypes test against goxel-refd -----------------------------
SOCK=$WORK/refd.sock
REFD_OK=0
refd_start() {
    [ -x "$PREFIX_DIR/bin/goxel-refd" ] || { echo "no installed goxel-refd"; return 1; }
    start_refd "$PREFIX_DIR/bin/goxel-refd" "$SOCK" --supervise --restart-delay-ms 100
}
# Not in a $(...) subshell: REFD_PID must stay set for stop_refd.
if refd_start >"$WORK/refd-start.log" 2>&1; then
    pass refd-start
    REFD_OK=1
else
    fail refd-start
    sed 's/^/    /' "$WORK/refd-start.log"
fi

run_example() {
    local ex=$1
    shift
    [ "$REFD_OK" = 1 ] || { echo "goxel-refd is not running"; return 1; }
    run_standalone "$ex" "$SOCK" "$@"
}

# run_standalone EXAMPLE [ARGS...]: no daemon given (managed daemons: the program starts its own).
run_standalone() {
    local ex=$1
    shift
    [ -x "$WORK/examples/$ex" ] || { echo "not built (see build:$ex)"; return 1; }
    ldd_clean "$WORK/examples/$ex" || return 1
    timeout 120 bash -c "$(declare -f run_app); HIDE=$HIDE SWIFT_RT='$SWIFT_RT' run_app \"\$@\"" sh \
        "$WORK/examples/$ex" "$@"
}

ctypes_test() {
    [ "$REFD_OK" = 1 ] || { echo "goxel-refd is not running"; return 1; }
    timeout 120 bash -c "$(declare -f run_app); HIDE=$HIDE SWIFT_RT='$SWIFT_RT' run_app \"\$@\"" sh \
        python3 Tests/packaging/test_ctypes.py "$(cd "$BUILD/lib" && pwd)/libgoxelpool.so.$VERSION" "$SOCK" "$HEADER"
}

# The ctypes checks print their own PASS/FAIL lines; they are counted here.
ctypes_out=$(ctypes_test 2>&1)
ctypes_rc=$?
ctypes_fails=0
while IFS= read -r line; do
    case "$line" in
        "PASS "*) pass "${line#PASS }" ;;
        "FAIL "*) fail "${line#FAIL }"; ctypes_fails=$((ctypes_fails + 1)) ;;
        *) [ -n "$line" ] && echo "    $line" ;;
    esac
done <<<"$ctypes_out"
if [ $ctypes_rc -ne 0 ] && [ $ctypes_fails -eq 0 ]; then
    fail ctypes "exit $ctypes_rc"
fi

# demo.c runs last: with --control it slows the daemon down and crashes it. managed.c and the
# spawn-mode demo (what make demo runs) start their own goxel-refd (the installed one).
for ex in "${EXAMPLES[@]}"; do
    case "$ex" in
        demo) ;;
        managed) check "run:managed" run_standalone managed "$PREFIX_DIR/bin/goxel-refd" ;;
        *) check "run:$ex" run_example "$ex" ;;
    esac
done
for ex in "${EXAMPLES[@]}"; do
    if [ "$ex" = demo ]; then
        check "run:demo" run_example demo --control
        check "run:demo-spawn" run_standalone demo --spawn "$PREFIX_DIR/bin/goxel-refd" --control
    fi
done

if [ "$REFD_OK" = 1 ] && ! kill -0 "$REFD_PID" 2>/dev/null; then
    fail refd-alive "goxel-refd --supervise exited during the checks; its output:"
    sed 's/^/    refd| /' "$REFD_LOG"
fi

finish
