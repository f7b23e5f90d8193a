# Reliability checks (included by the top Makefile). See Tests/reliability/README.md.
#
#   make boundary     the table-driven bad-input test (boundary.c) against a goxel-refd
#   make asan         examples, boundary.c and the multi-threaded stress.c built with
#                     -fsanitize=address (the library itself is the normal release build)
#   make asan-ci      the ASan pass CI runs (make test -> test-extra): shorter stress
#   make valgrind     memcheck on the examples and boundary.c: 0 errors, 0 definitely lost
#   make tsan         swift test under ThreadSanitizer (scratch .build-tsan)
#   make peer-check   SO_PEERCRED against a goxel-refd run by another user (needs root; else SKIP)
#   make stress       stress.c without sanitizers (STRESS_SECONDS, STRESS_THREADS)

REL_DIR        := $(BUILD)/reliability
REL_SRC        := Tests/reliability
REL_REFD       := $(BUILD)/bin/goxel-refd
REL_WITH_REFD  := $(REL_SRC)/with-refd.sh
REL_PC         := PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig
REL_CFLAGS     := -std=c11 -Wall -Wextra -Werror -g
REL_ASAN       := -fsanitize=address -fno-omit-frame-pointer
REL_ASAN_ENV   := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1:detect_stack_use_after_return=0 \
                  LSAN_OPTIONS=suppressions=$(abspath $(REL_SRC)/lsan.supp):print_suppressions=0
# A daemon with some of every fault, for the stress runs.
REL_FAULTS     := --latency-jitter-ms 2 --error-rate 0.02 --drop-rate 0.003 --reset-rate 0.003 \
                  --garbage-rate 0.003 --wrong-id-rate 0.003 --truncate-rate 0.003 --seed 42
STRESS_SECONDS ?= 6
STRESS_THREADS ?= 12
VALGRIND       ?= valgrind
REL_VALGRIND   := $(VALGRIND) --tool=memcheck --error-exitcode=99 --leak-check=full \
                  --errors-for-leak-kinds=definite --show-leak-kinds=definite \
                  --suppressions=$(abspath $(REL_SRC)/valgrind.supp) --quiet
REL_EXAMPLES   := basic pool_threads async_batch epoll_loop

.PHONY: reliability-build boundary asan asan-ci asan-run valgrind tsan peer-check stress

# The C test programs, built as a user would: pkg-config against build/stage (make examples).
REL_DEPS ?= examples
reliability-build: $(REL_DEPS)
	@mkdir -p $(REL_DIR)
	@set -e; for p in boundary stress peer; do \
	  $(REL_PC) $(CC) $(REL_CFLAGS) $(REL_SRC)/$$p.c $$($(REL_PC) $(PKG_CONFIG) --cflags --libs goxelpool) -lpthread -o $(REL_DIR)/$$p; \
	  $(REL_PC) $(CC) $(REL_CFLAGS) $(REL_ASAN) $(REL_SRC)/$$p.c $$($(REL_PC) $(PKG_CONFIG) --cflags --libs goxelpool) -lpthread -o $(REL_DIR)/$$p-asan; \
	done; \
	for p in $(REL_EXAMPLES); do \
	  $(REL_PC) $(CC) -Wall -Wextra -Werror -g $(REL_ASAN) examples-c/$$p.c $$($(REL_PC) $(PKG_CONFIG) --cflags --libs goxelpool) -lpthread -o $(REL_DIR)/$$p-asan; \
	done

boundary: reliability-build
	$(REL_WITH_REFD) $(REL_REFD) -- $(REL_DIR)/boundary @SOCK@

stress: reliability-build
	$(REL_WITH_REFD) $(REL_REFD) $(REL_FAULTS) -- $(REL_DIR)/stress @SOCK@ $(STRESS_SECONDS) $(STRESS_THREADS)

# ASan + LeakSanitizer on the C side: the programs are instrumented, the library is the release
# build (its Swift code is not instrumented; its mallocs and frees, jansson's included, go through
# ASan's allocator, so leaks of json_t the library hands out or forgets, double frees and
# use-after-free on memory the C side touches are caught).
asan-run:
	@set -e; for p in $(REL_EXAMPLES); do \
	  echo "asan: $$p"; \
	  $(REL_ASAN_ENV) $(REL_WITH_REFD) $(REL_REFD) -- $(REL_DIR)/$$p-asan @SOCK@ > $(REL_DIR)/$$p-asan.log 2>&1 \
	    || { cat $(REL_DIR)/$$p-asan.log; exit 1; }; \
	done
	@echo "asan: boundary"
	@$(REL_ASAN_ENV) $(REL_WITH_REFD) $(REL_REFD) -- $(REL_DIR)/boundary-asan @SOCK@ > $(REL_DIR)/boundary-asan.log 2>&1 \
	  || { grep -v '^PASS' $(REL_DIR)/boundary-asan.log; exit 1; }; tail -n 1 $(REL_DIR)/boundary-asan.log
	@echo "asan: stress $(STRESS_SECONDS) s, $(STRESS_THREADS)+6 threads, faults on"
	@$(REL_ASAN_ENV) $(REL_WITH_REFD) $(REL_REFD) $(REL_FAULTS) -- $(REL_DIR)/stress-asan @SOCK@ $(STRESS_SECONDS) $(STRESS_THREADS) \
	  > $(REL_DIR)/stress-asan.log 2>&1 || { cat $(REL_DIR)/stress-asan.log; exit 1; }; grep '^#\|passed' $(REL_DIR)/stress-asan.log
	@echo "asan: 0 errors, 0 leaks"

asan: reliability-build
	@$(MAKE) --no-print-directory asan-run STRESS_SECONDS=$(STRESS_SECONDS)

asan-ci: reliability-build
	@$(MAKE) --no-print-directory asan-run STRESS_SECONDS=3 STRESS_THREADS=8

# memcheck: the examples and boundary.c (slow under valgrind: ~1-2 min).
valgrind: reliability-build
	@command -v $(VALGRIND) >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)"; exit 1; }
	@set -e; for p in $(REL_EXAMPLES); do \
	  echo "valgrind: $$p"; \
	  $(REL_WITH_REFD) $(REL_REFD) -- $(REL_VALGRIND) --log-file=$(REL_DIR)/$$p-vg.log $(BUILD)/examples/$$p @SOCK@ >/dev/null 2>&1 \
	    || { cat $(REL_DIR)/$$p-vg.log; exit 1; }; \
	done
	@echo "valgrind: boundary"
	@$(REL_WITH_REFD) $(REL_REFD) -- $(REL_VALGRIND) --log-file=$(REL_DIR)/boundary-vg.log $(REL_DIR)/boundary @SOCK@ \
	  > $(REL_DIR)/boundary-vg.out 2>&1 || { grep -v '^PASS' $(REL_DIR)/boundary-vg.out; cat $(REL_DIR)/boundary-vg.log; exit 1; }
	@tail -n 1 $(REL_DIR)/boundary-vg.out
	@echo "valgrind: 0 errors, 0 definitely lost"

# ThreadSanitizer on the Swift tests (the library's locks are pthread mutexes, which TSan sees).
TSAN_FILTER ?=
tsan:
	@# One swift test invocation (a separate build then --skip-build trips SwiftPM's "unknown
	@# build description"); TSAN_FILTER is a regular expression, quoted for the shell.
	@# Managed daemons are started with a raw clone(), which ThreadSanitizer's runtime cannot follow.
	@# A second run on the same scratch path fails at once with "unknown build description" unless
	@# SwiftPM's saved build descriptions go first (it writes them anew; the build stays incremental).
	rm -f .build-tsan/*/debug/description.json .build-tsan/*/debug/plugin-tools-description.json
	TSAN_OPTIONS=halt_on_error=0:second_deadlock_stack=1 \
	  $(SWIFT) test --sanitize=thread --scratch-path .build-tsan $(if $(TSAN_FILTER),--filter '$(TSAN_FILTER)') \
	  --skip 'ManagedDaemonTests|ManagedSessionTests'

peer-check: reliability-build
	$(REL_SRC)/peer-check.sh $(REL_REFD) $(REL_DIR)/peer

test-extra: boundary asan-ci peer-check
