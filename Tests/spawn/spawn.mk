# Managed daemons seen from a host program (included by the top Makefile). Built as a user
# would, against build/stage with pkg-config.
#
#   make spawn-check      (in make test) spawn_host.c: its own SIGCHLD handler reaping with
#                         waitpid(-1), its own children, SIGCHLD ignored, a host killed with
#                         SIGKILL, while clients with managed goxel-refd daemons run; then the
#                         same and examples-c/managed.c built with AddressSanitizer + LeakSanitizer
#   make spawn-valgrind   examples-c/managed.c under valgrind memcheck (0 errors, 0 definitely
#                         lost); under valgrind the reaper is a thread (see daemon_spawn.h)

SPAWN_DIR  := $(BUILD)/spawn
VALGRIND   ?= valgrind
SPAWN_PC   := PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig
SPAWN_LIBS  = $$($(SPAWN_PC) $(PKG_CONFIG) --cflags --libs goxelpool) -lpthread
SPAWN_ASAN := -fsanitize=address -fno-omit-frame-pointer
SPAWN_ASAN_ENV := ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:halt_on_error=1 \
                  LSAN_OPTIONS=suppressions=$(abspath Tests/reliability/lsan.supp):print_suppressions=0

.PHONY: spawn-build spawn-check spawn-valgrind
spawn-build: examples
	@mkdir -p $(SPAWN_DIR)
	$(CC) -std=c11 -Wall -Wextra -Werror -g Tests/spawn/spawn_host.c $(SPAWN_LIBS) -o $(SPAWN_DIR)/spawn_host
	$(CC) -std=c11 -Wall -Wextra -Werror -g $(SPAWN_ASAN) Tests/spawn/spawn_host.c $(SPAWN_LIBS) -o $(SPAWN_DIR)/spawn_host-asan
	$(CC) -Wall -Wextra -Werror -g $(SPAWN_ASAN) examples-c/managed.c $(SPAWN_LIBS) -o $(SPAWN_DIR)/managed-asan

spawn-check: spawn-build
	$(SPAWN_DIR)/spawn_host $(STAGE)/bin/goxel-refd
	@echo "spawn-check: the same with AddressSanitizer"
	@$(SPAWN_ASAN_ENV) $(SPAWN_DIR)/spawn_host-asan $(STAGE)/bin/goxel-refd > $(SPAWN_DIR)/spawn_host-asan.log 2>&1 \
	  || { cat $(SPAWN_DIR)/spawn_host-asan.log; exit 1; }; tail -n 1 $(SPAWN_DIR)/spawn_host-asan.log
	@$(SPAWN_ASAN_ENV) $(SPAWN_DIR)/managed-asan $(STAGE)/bin/goxel-refd > $(SPAWN_DIR)/managed-asan.log 2>&1 \
	  || { cat $(SPAWN_DIR)/managed-asan.log; exit 1; }; tail -n 1 $(SPAWN_DIR)/managed-asan.log

spawn-valgrind: examples
	@command -v $(VALGRIND) >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)"; exit 1; }
	@mkdir -p $(SPAWN_DIR)
	$(VALGRIND) --tool=memcheck --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
	  --show-leak-kinds=definite --quiet --log-file=$(SPAWN_DIR)/managed-vg.log \
	  $(BUILD)/examples/managed $(STAGE)/bin/goxel-refd > $(SPAWN_DIR)/managed-vg.out 2>&1 \
	  || { cat $(SPAWN_DIR)/managed-vg.log; exit 1; }
	@tail -n 1 $(SPAWN_DIR)/managed-vg.out; echo "spawn-valgrind: 0 errors, 0 definitely lost"

test-extra: spawn-check
