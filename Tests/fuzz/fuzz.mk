# libFuzzer targets for the response reader/parser and the configuration parser (Tests/fuzz).
#
#   make fuzz          builds the library modules with ASan + libFuzzer coverage in a private
#                      scratch (.build-fuzz), then fuzzes each target for FUZZ_SECONDS (default 60)
#                      starting from Tests/fuzz/corpus/<target>; prints executions and findings.
#                      New interesting inputs go to build/fuzz/new-corpus/<target> (not the
#                      committed corpus); crashes to build/fuzz/artifacts/<target>/.
#                      `make fuzz-merge` minimizes them into the committed corpus.
#   make fuzz-replay   (part of `make test` via test-extra) replays the committed corpus once
#                      against the debug modules `swift build --build-tests` already built
#                      (no rebuild of the library; the target itself is built with
#                      -sanitize=fuzzer,address). Takes a few seconds plus ~20 s of linking.
#
# The targets are compiled straight from Tests/fuzz/*.swift with swiftc against the modules of a
# SwiftPM scratch; no Package.swift change is needed. decodeAnswer is internal, hence
# @testable import (debug builds are built with -enable-testing).

FUZZ_SECONDS  ?= 60
FUZZ_TARGETS  := response config
FUZZ_SCRATCH  ?= .build-fuzz
FUZZ_OUT      := $(BUILD)/fuzz
FUZZ_MODULES  := GoxelPoolIO GoxelPoolCore CDaemonSpawn DequeModule ContainersPreview InternalCollectionsUtilities \
                 Histogram Numerics RealModule ComplexModule _NumericsShims
SWIFTC        ?= swiftc

# $(1): scratch dir, $(2): extra swiftc flags, $(3): output dir
define fuzz_link
	@mkdir -p $(3)
	@set -e; objs=$$(Tests/fuzz/objects.sh $(1) $(3)/objs $(FUZZ_MODULES)); \
	shims=$$(find $(1)/checkouts -type d -path '*/_NumericsShims/include' | head -1); \
	for t in $(FUZZ_TARGETS); do \
	  echo "swiftc -sanitize=fuzzer,address $(2) Tests/fuzz/fuzz_$$t.swift -> $(3)/fuzz_$$t"; \
	  $(SWIFTC) -parse-as-library -g -sanitize=fuzzer,address $(2) -module-name fuzz_$$t \
	    -I $(1)/debug/Modules -I Sources/CJansson -I Sources/CLinux -I Sources/COpenSSL -I $(1)/debug/CDaemonSpawn.build -I $$shims Tests/fuzz/fuzz_$$t.swift $$objs \
	    -ljansson -lssl -lcrypto \
	    -o $(3)/fuzz_$$t; \
	done
endef

.PHONY: fuzz fuzz-build fuzz-replay fuzz-merge
fuzz-build:
	@# SwiftPM sometimes keeps a stale description ("unknown build description"): drop it, retry once.
	$(SWIFT) build --scratch-path $(FUZZ_SCRATCH) --target GoxelPoolIO --sanitize address -Xswiftc -sanitize=fuzzer \
	  || { rm -f $(FUZZ_SCRATCH)/debug.yaml $(FUZZ_SCRATCH)/build.db; \
	       $(SWIFT) build --scratch-path $(FUZZ_SCRATCH) --target GoxelPoolIO --sanitize address -Xswiftc -sanitize=fuzzer; }
	$(call fuzz_link,$(FUZZ_SCRATCH),,$(FUZZ_OUT)/instrumented)

fuzz: fuzz-build
	@set -e; mkdir -p $(FUZZ_OUT)/logs; found=0; \
	for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_OUT)/new-corpus/$$t $(FUZZ_OUT)/artifacts/$$t; \
	  echo "== fuzz_$$t for $(FUZZ_SECONDS) s"; \
	  rc=0; ASAN_OPTIONS=detect_leaks=1 $(FUZZ_OUT)/instrumented/fuzz_$$t -max_total_time=$(FUZZ_SECONDS) \
	    -max_len=4096 -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
	    -artifact_prefix=$(FUZZ_OUT)/artifacts/$$t/ \
	    $(FUZZ_OUT)/new-corpus/$$t Tests/fuzz/corpus/$$t > $(FUZZ_OUT)/logs/$$t.log 2>&1 || rc=$$?; \
	  execs=$$(sed -n 's/^stat::number_of_executed_units: *//p' $(FUZZ_OUT)/logs/$$t.log | tail -1); \
	  cov=$$(grep -o 'cov: [0-9]*' $(FUZZ_OUT)/logs/$$t.log | tail -1); \
	  arts=$$(ls $(FUZZ_OUT)/artifacts/$$t | wc -l); \
	  echo "fuzz_$$t: executions=$${execs:-?} $$cov findings=$$arts (exit $$rc; log $(FUZZ_OUT)/logs/$$t.log)"; \
	  if [ $$rc -ne 0 ] || [ $$arts -ne 0 ]; then found=1; grep -m5 -E 'ERROR|Fatal|precondition|SUMMARY' $(FUZZ_OUT)/logs/$$t.log || true; fi; \
	done; \
	if [ $$found -ne 0 ]; then echo "make fuzz: findings (see $(FUZZ_OUT)/artifacts)"; exit 1; fi

# Minimizes the committed corpus together with what `make fuzz` found (review, then commit).
fuzz-merge: fuzz-build
	@set -e; for t in $(FUZZ_TARGETS); do \
	  mkdir -p $(FUZZ_OUT)/merged/$$t; rm -f $(FUZZ_OUT)/merged/$$t/*; \
	  $(FUZZ_OUT)/instrumented/fuzz_$$t -merge=1 -max_len=4096 $(FUZZ_OUT)/merged/$$t Tests/fuzz/corpus/$$t $(FUZZ_OUT)/new-corpus/$$t; \
	  rm -f Tests/fuzz/corpus/$$t/*; cp $(FUZZ_OUT)/merged/$$t/* Tests/fuzz/corpus/$$t/; \
	done; du -sh Tests/fuzz/corpus

# CI: every committed input once (each must pass), against the modules make test built.
fuzz-replay:
	$(call fuzz_link,$(SCRATCH),,$(FUZZ_OUT)/replay)
	@set -e; for t in $(FUZZ_TARGETS); do \
	  n=$$(ls Tests/fuzz/corpus/$$t | wc -l); \
	  $(FUZZ_OUT)/replay/fuzz_$$t -runs=0 Tests/fuzz/corpus/$$t > $(FUZZ_OUT)/replay/$$t.log 2>&1 \
	    || { cat $(FUZZ_OUT)/replay/$$t.log; echo "fuzz-replay: fuzz_$$t FAILED"; exit 1; }; \
	  echo "fuzz-replay: fuzz_$$t: $$n corpus inputs ok"; \
	done

test-extra: fuzz-replay
