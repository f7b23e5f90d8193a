# make soak: DURATION (default 600) seconds of mixed load from a C program linking the installed
# library (pkg-config), against a supervised goxel-refd crashed every RESTART (30) seconds. Prints
# calls, failures by status, RSS over time. The fault-injection suite itself is part of swift test
# (Tests/GoxelPoolIOTests/FaultInjectionTests.swift).
DURATION ?= 600
RESTART  ?= 30
.PHONY: soak
soak: examples
	@mkdir -p $(BUILD)/faults
	PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig; export PKG_CONFIG_PATH; \
	$(CC) -std=c11 -Wall -Wextra -Werror Tests/faults/soak.c $$($(PKG_CONFIG) --cflags --libs goxelpool) -lpthread -o $(BUILD)/faults/soak
	@sock=/tmp/gxp-soak-$$$$.sock; \
	$(STAGE)/bin/goxel-refd --socket $$sock --supervise > $(BUILD)/faults/refd.log 2>&1 & refd=$$!; \
	for i in $$(seq 50); do [ -S $$sock.ctl ] && break; sleep 0.1; done; \
	rc=0; $(BUILD)/faults/soak $$sock $(DURATION) $(RESTART) || rc=$$?; \
	kill $$refd; wait $$refd 2>/dev/null; rm -f $$sock $$sock.ctl; exit $$rc
