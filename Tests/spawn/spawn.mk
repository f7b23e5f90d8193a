# Managed daemons seen from a host program (included by the top Makefile): spawn_host.c installs
# its own SIGCHLD handler, forks its own children, ignores SIGCHLD, dies with SIGKILL, while a
# client with managed goxel-refd daemons runs. Built as a user would, against build/stage.
#
#   make spawn-check      (in make test)

SPAWN_DIR := $(BUILD)/spawn

.PHONY: spawn-check
spawn-check: examples
	@mkdir -p $(SPAWN_DIR)
	PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(CC) -std=c11 -Wall -Wextra -Werror -g Tests/spawn/spawn_host.c \
	  $$(PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig $(PKG_CONFIG) --cflags --libs goxelpool) -lpthread -o $(SPAWN_DIR)/spawn_host
	$(SPAWN_DIR)/spawn_host $(STAGE)/bin/goxel-refd

test-extra: spawn-check
