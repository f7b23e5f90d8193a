#!/bin/sh
# Usage: objects.sh SCRATCH LINKDIR MODULE...
# Prints the object files of the modules the fuzz targets link, for a SwiftPM scratch dir, as the
# build recorded them (output-file-map.json), so stale objects of renamed sources are not picked
# up; C targets: their *.o files. Each is symlinked into LINKDIR under a name without spaces
# (some dependency sources have spaces in their names).
set -e
scratch=$1; link=$2; shift 2
dir=$scratch/debug
rm -rf "$link"; mkdir -p "$link"
for m in "$@"; do
  map=$dir/$m.build/output-file-map.json
  if [ -f "$map" ]; then
    python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print("\n".join(v["object"] for k,v in m.items() if k and "object" in v))' "$map"
  else
    for o in "$dir/$m.build/"*.o; do [ -e "$o" ] && echo "$o"; done
  fi
done | { n=0; while IFS= read -r o; do
  n=$((n + 1)); case $o in /*) ;; *) o=$(pwd)/$o ;; esac
  ln -s "$o" "$link/$n.o"; echo "$link/$n.o"; done; }
