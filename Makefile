# libgoxelpool: build, install and check the C library libgoxelpool.so.
#
#   make                  release build: build/lib/libgoxelpool.so.X.Y.Z (+ .so.X, .so links),
#                         build/bin/goxel-refd, build/size.txt
#   make demo             build, install into build/stage and run examples-c/demo.c in spawn mode:
#                         the library starts build/stage/bin/goxel-refd itself (no daemon to
#                         start by hand); make demo SOCKET=/path uses a daemon already running
#   make test             swift build --build-tests, swift test, Tests/packaging/run.sh
#   make install          PREFIX=/usr/local (default) DESTDIR= (for packagers)
#   make examples         build every examples-c/*.c against build/stage with pkg-config only
#   make size             print the stripped size of the library and check it is under a limit
#   make clean
#
# Needs: a Swift 6.3 toolchain, libjansson-dev, pkg-config, a C compiler (cc).
#
# The linker flags (version script, SONAME, static Swift runtime) are passed here and not in
# Package.swift, where they would leak into the test executables.

SWIFT      ?= swift
CC         ?= cc
PKG_CONFIG ?= pkg-config
SCRATCH    ?= .build
BUILD      ?= build

PREFIX     ?= /usr/local
DESTDIR    ?=
BINDIR     ?= $(PREFIX)/bin
LIBDIR     ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig

# Largest accepted size of the stripped library. The Swift runtime linked in statically is ~6 MB;
# importing Foundation would make it ~58 MB, which this limit catches.
MAX_STRIPPED_BYTES ?= 16777216

HEADER := include/goxelpool.h
MAP    := $(abspath pkgconfig/goxelpool.map)

# The version comes from the header's macros so that it cannot drift.
header_macro = $(shell sed -n 's/^\#define[[:space:]]\{1,\}GOXELPOOL_VERSION_$(1)[[:space:]]\{1,\}"\{0,1\}\([0-9.]\{1,\}\)"\{0,1\}[[:space:]]*$$/\1/p' $(HEADER))
MAJOR   := $(call header_macro,MAJOR)
MINOR   := $(call header_macro,MINOR)
PATCH   := $(call header_macro,PATCH)
VERSION := $(MAJOR).$(MINOR).$(PATCH)
HEADER_VERSION_STRING := $(call header_macro,STRING)
ifeq ($(strip $(MAJOR)),)
$(error cannot read GOXELPOOL_VERSION_MAJOR from $(HEADER))
endif
ifeq ($(strip $(MINOR)),)
$(error cannot read GOXELPOOL_VERSION_MINOR from $(HEADER))
endif
ifeq ($(strip $(PATCH)),)
$(error cannot read GOXELPOOL_VERSION_PATCH from $(HEADER))
endif

SONAME   := libgoxelpool.so.$(MAJOR)
REALNAME := libgoxelpool.so.$(VERSION)

LIB_FLAGS := -Xswiftc -static-stdlib \
             -Xlinker --version-script=$(MAP) \
             -Xlinker -soname=$(SONAME)

RELEASE_DIR := $(SCRATCH)/release
STAGE       := $(abspath $(BUILD)/stage)

export MAKE

.NOTPARALLEL:
.PHONY: all install examples demo test size clean

all:
	@if [ "$(HEADER_VERSION_STRING)" != "$(VERSION)" ]; then \
	  echo "error: GOXELPOOL_VERSION_STRING \"$(HEADER_VERSION_STRING)\" != MAJOR.MINOR.PATCH $(VERSION) in $(HEADER)" >&2; \
	  exit 1; fi
	@# SwiftPM does not know the version script: relink when it changed.
	@if [ -e $(RELEASE_DIR)/libgoxelpool.so ] && [ pkgconfig/goxelpool.map -nt $(RELEASE_DIR)/libgoxelpool.so ]; then \
	  rm -f $(RELEASE_DIR)/libgoxelpool.so; fi
	$(SWIFT) build --scratch-path $(SCRATCH) -c release --product goxelpool $(LIB_FLAGS)
	$(SWIFT) build --scratch-path $(SCRATCH) -c release --product goxel-refd --static-swift-stdlib
	@mkdir -p $(BUILD)/lib $(BUILD)/bin $(BUILD)/size
	install -p -m 755 $(RELEASE_DIR)/libgoxelpool.so $(BUILD)/lib/$(REALNAME)
	ln -sfn $(REALNAME) $(BUILD)/lib/$(SONAME)
	ln -sfn $(SONAME) $(BUILD)/lib/libgoxelpool.so
	install -p -m 755 $(RELEASE_DIR)/goxel-refd $(BUILD)/bin/goxel-refd
	@strip -o $(BUILD)/size/$(REALNAME).stripped $(BUILD)/lib/$(REALNAME)
	@s=$$(stat -c %s $(BUILD)/size/$(REALNAME).stripped); u=$$(stat -c %s $(BUILD)/lib/$(REALNAME)); \
	  printf '%s stripped: %s bytes (%s MiB); unstripped: %s bytes\n' $(REALNAME) $$s \
	    $$(awk "BEGIN{printf \"%.1f\", $$s/1048576}") $$u > $(BUILD)/size.txt; \
	  cat $(BUILD)/size.txt

size: all
	@s=$$(stat -c %s $(BUILD)/size/$(REALNAME).stripped); \
	if [ $$s -gt $(MAX_STRIPPED_BYTES) ]; then \
	  echo "size: FAIL: stripped library is $$s bytes, limit $(MAX_STRIPPED_BYTES) (Foundation linked in?)"; exit 1; \
	else echo "size: ok: stripped library is $$s bytes, limit $(MAX_STRIPPED_BYTES)"; fi

# Installs the header, the library and its two links, goxelpool.pc and goxel-refd.
# goxelpool.pc puts -Wl,-rpath,$(LIBDIR) into Libs so that programs built with
# `pkg-config --libs goxelpool` find the library at run time without LD_LIBRARY_PATH.
install: all
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(BINDIR)
	install -m 644 $(HEADER) $(DESTDIR)$(INCLUDEDIR)/goxelpool.h
	install -m 755 $(BUILD)/lib/$(REALNAME) $(DESTDIR)$(LIBDIR)/$(REALNAME)
	ln -sfn $(REALNAME) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sfn $(SONAME) $(DESTDIR)$(LIBDIR)/libgoxelpool.so
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    pkgconfig/goxelpool.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/goxelpool.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/goxelpool.pc
	install -m 755 $(BUILD)/bin/goxel-refd $(DESTDIR)$(BINDIR)/goxel-refd

# Every example, built as a user would: against an installed prefix, with pkg-config and nothing
# else. The prefix is build/stage so that the binaries in build/examples stay runnable.
examples:
	rm -rf $(STAGE)
	$(MAKE) --no-print-directory install PREFIX=$(STAGE) DESTDIR= BINDIR=$(STAGE)/bin \
	  LIBDIR=$(STAGE)/lib INCLUDEDIR=$(STAGE)/include PKGCONFIGDIR=$(STAGE)/lib/pkgconfig
	@mkdir -p $(BUILD)/examples
	@set -e; export PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig; \
	for src in examples-c/*.c; do \
	  out=$(BUILD)/examples/$$(basename $$src .c); \
	  echo "$(CC) -Wall -Wextra -Werror $$src \$$($(PKG_CONFIG) --cflags --libs goxelpool) -o $$out"; \
	  $(CC) -Wall -Wextra -Werror $$src $$($(PKG_CONFIG) --cflags --libs goxelpool) -o $$out; \
	done

demo: examples
	Tests/packaging/demo.sh $(STAGE) $(BUILD)/examples/demo $(SOCKET)

test: all
	$(SWIFT) build --build-tests
	@rc=0; $(SWIFT) test || rc=$$?; \
	if [ $$rc -ne 0 ]; then echo "make test: swift test failed (exit $$rc)"; fi; \
	$(MAKE) --no-print-directory test-extra || { echo "make test: test-extra failed"; rc=1; }; \
	SWIFT_TEST_RC=$$rc BUILD=$(BUILD) Tests/packaging/run.sh || rc=1; \
	exit $$rc

clean:
	rm -rf $(BUILD)
	$(SWIFT) package --scratch-path $(SCRATCH) clean

# Benchmarks (make bench) and the reliability suite (make asan, valgrind, tsan, fuzz, soak) live in
# Tests/*/*.mk (Tests/bench, Tests/reliability); each adds its targets and, where CI should run something, a prerequisite of
# `test-extra`, which `make test` runs between swift test and the packaging checks.
.PHONY: test-extra
test-extra:
	@:
-include Tests/*/*.mk bindings/*/*.mk
