# Benchmarks: make bench (about 13 minutes), make bench BENCH_QUICK=1 (about 30 s), make bench-smoke.
# Two programs: Tests/bench/bench.c (the pool against a raw client) and Tests/bench/session_bench.c
# (sessions against plain calls, and the restore time of a durable session).
#
#   make bench                       the full run: tables + one JSON line per row on stdout
#   make bench BENCH_QUICK=1         a short run (1 round, T = 1 and 8, 20 000 calls for memory)
#   make bench SOCKET=/path          against a daemon that is already running (it must accept a
#                                    few thousand connections: the real daemon's 256-connection
#                                    lifetime limit is too few for the full run; 2 ms rows need
#                                    goxel-refd's control socket PATH.ctl)
#   make bench BENCH_ARGS="--rounds 5 --duration 3"
#   make bench-smoke                 BENCH_QUICK run; checks that it runs and prints valid JSON lines
#                                    (no performance threshold: this machine is shared and noisy)
#
# The program is built exactly like a user's: against the installed prefix build/stage (the
# `examples` target installs it there) with pkg-config and nothing else.

BENCH_DIR  := $(BUILD)/bench
BENCH_BIN  := $(BENCH_DIR)/bench
SESSION_BENCH_BIN := $(BENCH_DIR)/session_bench
BENCH_ARGS ?=
BENCH_QUICK ?=

.PHONY: bench bench-build bench-smoke session-bench-smoke

bench-build: examples
	@mkdir -p $(BENCH_DIR)
	PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(CC) -std=c11 -O2 -Wall -Wextra -Werror Tests/bench/bench.c \
	  $$(PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(PKG_CONFIG) --cflags --libs goxelpool) -lpthread -lm -o $(BENCH_BIN)
	PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(CC) -std=c11 -O2 -Wall -Wextra -Werror Tests/bench/session_bench.c \
	  $$(PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(PKG_CONFIG) --cflags --libs goxelpool) -lpthread -o $(SESSION_BENCH_BIN)

bench: bench-build
	BENCH_QUICK=$(BENCH_QUICK) SOCKET=$(SOCKET) $(BENCH_BIN) --refd $(STAGE)/bin/goxel-refd $(BENCH_ARGS)
ifeq ($(SOCKET)$(BENCH_ARGS),)
	@# One caller again, with this process and its daemon on CPU 0 only (a microsecond per call is
	@# below what the two CPUs' cross-CPU wake-ups let timing see; Tests/bench/README.md).
	BENCH_QUICK=$(BENCH_QUICK) $(BENCH_BIN) --refd $(STAGE)/bin/goxel-refd --only pool10 --threads 1 --one-cpu
endif
	@# Sessions: a session and a durable session's journal against plain calls; restore time.
	BENCH_QUICK=$(BENCH_QUICK) $(SESSION_BENCH_BIN) --refd $(STAGE)/bin/goxel-refd
	@# acquire + release inside the library (state machine and lock, no I/O): a Swift program,
	@# since the C API has no bare acquire.
	$(SWIFT) build --scratch-path $(SCRATCH) -c release --product goxelpool-corebench
	$(SCRATCH)/release/goxelpool-corebench $(if $(BENCH_QUICK),200000,2000000)

bench-smoke: bench-build session-bench-smoke
	@out=$$(mktemp /tmp/goxelpool-bench-smoke.XXXXXX); \
	if ! BENCH_QUICK=1 SOCKET= $(BENCH_BIN) --refd $(STAGE)/bin/goxel-refd > $$out; then \
	  echo "bench-smoke: FAIL: the benchmark exited with an error"; cat $$out; rm -f $$out; exit 1; fi; \
	if python3 -c 'import json, sys; rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]; kinds = {r["bench"] for r in rows}; need = {"throughput", "scaling", "health", "health_idle", "async", "acquire", "batch", "memory", "size", "endpoints", "tls", "pool10"}; sys.exit(0 if need <= kinds and all(r.get("errors", 0) == 0 for r in rows) else "missing rows or errors: %s" % sorted(need - kinds))' $$out; then \
	  echo "bench-smoke: ok: $$(grep -c '^{' $$out) JSON rows"; rm -f $$out; \
	else echo "bench-smoke: FAIL: invalid or missing JSON rows"; cat $$out; rm -f $$out; exit 1; fi

# The sessions benchmark in its quick form is part of `make test`: its restore row checks that a
# durable session with 10 000 journaled calls comes back whole after kill -9 (no threshold on time).
session-bench-smoke: bench-build
	@out=$$(mktemp /tmp/goxelpool-bench-smoke.XXXXXX); \
	if ! BENCH_QUICK=1 $(SESSION_BENCH_BIN) --refd $(STAGE)/bin/goxel-refd > $$out 2>/dev/null; then \
	  echo "bench-smoke: FAIL: the sessions benchmark exited with an error"; cat $$out; rm -f $$out; exit 1; fi; \
	if python3 -c 'import json, sys; rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]; kinds = {r["bench"] for r in rows}; sys.exit(0 if {"session_cost", "session_restore"} <= kinds and all(r.get("errors", 0) == 0 for r in rows) else "missing session rows")' $$out; then \
	  echo "bench-smoke: ok: sessions, $$(grep -c '^{' $$out) JSON rows"; rm -f $$out; \
	else echo "bench-smoke: FAIL: invalid or missing session rows"; cat $$out; rm -f $$out; exit 1; fi

test-extra: session-bench-smoke

# Instructions per call (callgrind): the library against the raw client, exact and repeatable on
# a noisy machine. Not in make bench's timing rows; about 2 minutes. The -add modes measure what a
# session and a durable session's journal add to a call that changes the document.
CALLCOST_BIN   := $(BENCH_DIR)/callcost
CALLCOST_N     ?= 2000
CALLCOST_MODES ?= raw pool plain-add session-add durable-add
.PHONY: bench-instructions
bench-instructions: bench-build
	PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(CC) -std=c11 -O2 -Wall -Wextra -Werror Tests/bench/callcost.c \
	  $$(PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(PKG_CONFIG) --cflags --libs goxelpool) -o $(CALLCOST_BIN)
	@dir=$$(mktemp -d /tmp/goxelpool-callcost.XXXXXX); mkdir $$dir/checkpoints; \
	$(STAGE)/bin/goxel-refd --socket $$dir/refd.sock > /dev/null 2>&1 & refd=$$!; \
	for i in $$(seq 100); do [ -S $$dir/refd.sock ] && break; sleep 0.05; done; \
	for mode in $(CALLCOST_MODES); do \
	  for n in $(CALLCOST_N) $$(( 2 * $(CALLCOST_N) )); do \
	    valgrind --tool=callgrind --callgrind-out-file=$$dir/$$mode.$$n.out $(CALLCOST_BIN) $$mode $$dir/refd.sock $$n $$dir/checkpoints \
	      2> $$dir/$$mode.$$n.log || { cat $$dir/$$mode.$$n.log; kill $$refd; rm -rf $$dir; exit 1; }; \
	  done; \
	  a=$$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' $$dir/$$mode.$(CALLCOST_N).log); \
	  b=$$(sed -n 's/.*Collected : \([0-9]*\).*/\1/p' $$dir/$$mode.$$(( 2 * $(CALLCOST_N) )).log); \
	  echo "$$mode: $$(( (b - a) / $(CALLCOST_N) )) instructions per call (client process, callgrind)"; \
	  printf '{"bench":"instructions","mode":"%s","per_call":%d}\n' $$mode $$(( (b - a) / $(CALLCOST_N) )); \
	done; \
	kill $$refd; rm -rf $$dir

# Two builds of the library in the same cycles (Tests/bench/ab.c): the library at git revision
# AB_BASE (default HEAD) against the working tree's, 32 threads on a pool of 10 unless AB_ARGS says
# otherwise, e.g. make bench-ab AB_BASE=504ddef AB_ARGS="--one-cpu --cycles 80". A change worth a
# few per cent is below what two `make bench` runs can tell apart on this machine; here both
# run against the same daemon, turn by turn, in two runs (each build loaded first once). Each copy
# gets a soname of its own (patchelf), so that dlopen loads both. The base is built once per
# revision, in a worktree under build/ab (a few minutes); Tests/bench/README.md says more.
AB_BASE   ?= HEAD
AB_ARGS   ?=
AB_DIR    := $(abspath $(BUILD))/ab
.PHONY: bench-ab
bench-ab: examples
	@command -v patchelf > /dev/null || { echo "bench-ab needs patchelf (apt-get install -y patchelf)"; exit 1; }
	@mkdir -p $(AB_DIR)
	$(CC) -std=c11 -O2 -Wall -Wextra -Werror Tests/bench/ab.c -I include $$($(PKG_CONFIG) --cflags --libs jansson) \
	  -ldl -lpthread -lm -o $(AB_DIR)/ab
	rev=$$(git rev-parse --verify '$(AB_BASE)^{commit}') || exit 1; \
	if [ "$$(cat $(AB_DIR)/base.rev 2>/dev/null)" != "$$rev" ]; then \
	  rm -rf $(AB_DIR)/base $(AB_DIR)/base.rev; git worktree prune; \
	  git worktree add --detach -f $(AB_DIR)/base $$rev > /dev/null && \
	  $(MAKE) -C $(AB_DIR)/base --no-print-directory SCRATCH=$(AB_DIR)/base-build BUILD=$(AB_DIR)/base-out \
	    all > $(AB_DIR)/base-build.log 2>&1 || \
	    { echo "bench-ab: building $(AB_BASE) failed, see $(AB_DIR)/base-build.log"; exit 1; }; \
	  echo $$rev > $(AB_DIR)/base.rev; \
	fi
	cp $(AB_DIR)/base-out/lib/libgoxelpool.so.1 $(AB_DIR)/libgoxelpool_base.so
	cp $(STAGE)/lib/libgoxelpool.so.1 $(AB_DIR)/libgoxelpool_head.so
	patchelf --set-soname libgoxelpool_base.so $(AB_DIR)/libgoxelpool_base.so
	patchelf --set-soname libgoxelpool_head.so $(AB_DIR)/libgoxelpool_head.so
	@echo "A = $(AB_BASE) ($$(cat $(AB_DIR)/base.rev)), B = the working tree"
	$(AB_DIR)/ab --refd $(STAGE)/bin/goxel-refd $(AB_ARGS) $(AB_DIR)/libgoxelpool_base.so $(AB_DIR)/libgoxelpool_head.so
