# TLS and DNS endpoints (included by the top Makefile).
#
#   make tls-check    Tests/tls/tls-check.sh: throwaway certificates (openssl), then
#                     tls.c: goxel-refd behind stunnel4 with client certificates required, and
#                     dns.c: dns:/dnstls: names followed through /etc/hosts in a private mount
#                     namespace (unshare --mount; SKIP where that is not allowed)
#
# Both programs are built as a user would: pkg-config against build/stage (make examples).
# Needs stunnel4 and openssl (Debian packages; .ci/run installs them).

TLS_DIR := $(BUILD)/tls
TLS_PC  := PKG_CONFIG_PATH=$(STAGE)/lib/pkgconfig

.PHONY: tls-build tls-check

tls-build: examples
	@mkdir -p $(TLS_DIR)
	@set -e; for p in tls dns; do \
	  $(TLS_PC) $(CC) -std=c11 -Wall -Wextra -Werror -g Tests/tls/$$p.c \
	    $$($(TLS_PC) $(PKG_CONFIG) --cflags --libs goxelpool) -lpthread -o $(TLS_DIR)/$$p; \
	done

tls-check: tls-build
	Tests/tls/tls-check.sh $(STAGE)/bin/goxel-refd $(TLS_DIR)/tls $(TLS_DIR)/dns

test-extra: tls-check
