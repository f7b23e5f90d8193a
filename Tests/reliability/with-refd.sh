#!/usr/bin/env bash
# with-refd.sh REFD [REFD-ARGS...] -- COMMAND [ARGS...]
# Starts goxel-refd on a fresh socket in a temporary directory, runs COMMAND with every "@SOCK@"
# argument replaced by that socket path, stops the daemon and exits with COMMAND's status.
set -u
refd=$1; shift
refd_args=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do refd_args+=("$1"); shift; done
[ "${1:-}" = "--" ] && shift
dir=$(mktemp -d "${TMPDIR:-/tmp}/gxp-rel.XXXXXX")
sock=$dir/refd.sock
. "$(dirname "$0")/../packaging/common.sh"
start_refd "$refd" "$sock" "${refd_args[@]}" || { rm -rf "$dir"; exit 2; }
trap 'stop_refd; rm -rf "$dir"' EXIT
cmd=()
for a in "$@"; do cmd+=("${a//@SOCK@/$sock}"); done
"${cmd[@]}"
