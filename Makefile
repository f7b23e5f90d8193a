# libgoxelpool: build, install and check the C library libgoxelpool.so.
#
#   make                  release build: build/lib/libgoxelpool.so.X.Y.Z (+ .so.X, .so links),
#                         build/bin/goxel-refd, build/size.txt
#   make demo             build, install into build/stage and run examples-c/demo.c in spawn mode:
#                         the library starts build/stage/bin/goxel-refd itself (no daemon to
#                         start by hand); make demo SOCKET=/path uses a daemon already running
#   make test             swift build --build-tests, swift test, Tests/packaging/run.sh
#   make install          PREFIX=/usr/local (default) DESTDIR= (for packagers): the library, its
#                         header and goxelpool.pc, goxel-refd, the goxelpool tool and its man page
#   make examples         build every examples-c/*.c against build/stage with pkg-config only
#   make size             print the stripped size of the library and check it is under a limit
#   make clean
#   make deps             install the Debian packages of .ci/packages that are missing (as root),
#                         or print the one command that does (run first by all, test and demo;
#                         DEPS=check: never install, DEPS=skip: do not check)
#
# Needs: a Swift 6.3 toolchain; the Debian packages listed in .ci/packages (libjansson-dev,
# pkg-config, a C compiler, ...), which `make deps` installs as root; PyPI packages for the tests
# (.ci/requirements.txt), which `make venv` installs into build/venv.
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
MANDIR     ?= $(PREFIX)/share/man

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

# -enforce-exclusivity=unchecked: Swift's run-time exclusivity checks cost ~1 800 instructions per
# call on the hot path (callgrind, Tests/bench/README.md); the compile-time checks stay.
LIB_FLAGS := -Xswiftc -static-stdlib -Xswiftc -enforce-exclusivity=unchecked \
             -Xlinker --version-script=$(MAP) \
             -Xlinker -soname=$(SONAME)

RELEASE_DIR := $(SCRATCH)/release
STAGE       := $(abspath $(BUILD)/stage)

export MAKE

.NOTPARALLEL:
.DEFAULT_GOAL := all
.PHONY: deps venv all install examples demo test size clean

# First prerequisite of all, test and demo: SwiftPM needs jansson before any recipe could say so.
# The list of Debian packages is .ci/packages (one place; .ci/run uses it too).
DEPS         ?= auto
PACKAGES     ?= .ci/packages
deps:
	@GOXELPOOL_DEPS=$(DEPS) .ci/ensure-deps --list $(PACKAGES)

# Python packages the tests need (PyPI), one place: .ci/requirements.txt, in a virtual
# environment under build/ (rebuilt when the list changes). Tests run $(VENV_PYTHON).
VENV        := $(BUILD)/venv
VENV_PYTHON := $(abspath $(VENV))/bin/python
venv: $(VENV)/.installed
$(VENV)/.installed: .ci/requirements.txt | deps
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r .ci/requirements.txt
	@touch $@

all: deps
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

# Installs the header, the library and its two links, goxelpool.pc, goxel-refd, and the
# goxelpool command-line tool with its man page.
# goxelpool.pc puts -Wl,-rpath,$(LIBDIR) into Libs so that programs built with
# `pkg-config --libs goxelpool` find the library at run time without LD_LIBRARY_PATH.
# The tool is built as any user's program: against the library just installed, with pkg-config
# and nothing else (PKG_CONFIG_SYSROOT_DIR puts DESTDIR before -I and -L; the rpath stays LIBDIR).
TOOL_DIR := Sources/goxelpool-cli
install: all
	install -d $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(LIBDIR) $(DESTDIR)$(PKGCONFIGDIR) $(DESTDIR)$(BINDIR) \
	  $(DESTDIR)$(MANDIR)/man1
	install -m 644 $(HEADER) $(DESTDIR)$(INCLUDEDIR)/goxelpool.h
	install -m 755 $(BUILD)/lib/$(REALNAME) $(DESTDIR)$(LIBDIR)/$(REALNAME)
	ln -sfn $(REALNAME) $(DESTDIR)$(LIBDIR)/$(SONAME)
	ln -sfn $(SONAME) $(DESTDIR)$(LIBDIR)/libgoxelpool.so
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@LIBDIR@|$(LIBDIR)|g' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|g' -e 's|@VERSION@|$(VERSION)|g' \
	    pkgconfig/goxelpool.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/goxelpool.pc
	chmod 644 $(DESTDIR)$(PKGCONFIGDIR)/goxelpool.pc
	install -m 755 $(BUILD)/bin/goxel-refd $(DESTDIR)$(BINDIR)/goxel-refd
	@mkdir -p $(BUILD)/tool
	$(CC) -std=c11 -O2 -Wall -Wextra $(TOOL_DIR)/goxelpool.c \
	  $$(PKG_CONFIG_PATH=$(DESTDIR)$(PKGCONFIGDIR) PKG_CONFIG_SYSROOT_DIR=$(DESTDIR) $(PKG_CONFIG) --cflags --libs goxelpool) \
	  -lpthread -o $(BUILD)/tool/goxelpool
	install -m 755 $(BUILD)/tool/goxelpool $(DESTDIR)$(BINDIR)/goxelpool
	install -m 644 $(TOOL_DIR)/goxelpool.1 $(DESTDIR)$(MANDIR)/man1/goxelpool.1

# Every example, built as a user would: against an installed prefix, with pkg-config and nothing
# else. The prefix is build/stage so that the binaries in build/examples stay runnable. An example
# that needs more than goxelpool names its pkg-config packages on a " * pkg-config: ..." line of
# its opening comment (uv_loop.c: goxelpool libuv); Tests/packaging/run.sh reads the same line.
EXAMPLE_PKGS = $$(sed -n 's/^ \* pkg-config: *//p' $(1) | head -n 1 | grep . || echo goxelpool)
examples:
	rm -rf $(STAGE)
	$(MAKE) --no-print-directory install PREFIX=$(STAGE) DESTDIR= BINDIR=$(STAGE)/bin \
	  LIBDIR=$(STAGE)/lib INCLUDEDIR=$(STAGE)/include PKGCONFIGDIR=$(STAGE)/lib/pkgconfig
	@mkdir -p $(BUILD)/examples
	@set -e; export PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig; \
	for src in examples-c/*.c; do \
	  out=$(BUILD)/examples/$$(basename $$src .c); pkgs=$(call EXAMPLE_PKGS,$$src); \
	  echo "$(CC) -Wall -Wextra -Werror $$src \$$($(PKG_CONFIG) --cflags --libs $$pkgs) -o $$out"; \
	  $(CC) -Wall -Wextra -Werror $$src $$($(PKG_CONFIG) --cflags --libs $$pkgs) -o $$out; \
	done

demo: deps examples
	Tests/packaging/demo.sh $(STAGE) $(BUILD)/examples/demo $(SOCKET)

test: deps all
	$(SWIFT) build --build-tests
	@swift_rc=0; rc=0; $(SWIFT) test || swift_rc=$$?; \
	if [ $$swift_rc -ne 0 ]; then echo "make test: swift test failed (exit $$swift_rc)"; rc=1; fi; \
	$(MAKE) --no-print-directory test-extra || { echo "make test: test-extra failed"; rc=1; }; \
	SWIFT_TEST_RC=$$swift_rc BUILD=$(BUILD) Tests/packaging/run.sh || rc=1; \
	if [ $$rc -ne 0 ]; then echo "make test: FAILED (see the messages above)"; fi; \
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
