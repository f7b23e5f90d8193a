# Prometheus metrics tests (included by the top Makefile): `make metrics-test`, part of
# `make test`. goxelpool_metrics_text against a goxel-refd, parsed by prometheus_client's official
# parser (build/venv, from .ci/requirements.txt), and linted by `promtool check metrics`.
#
# promtool comes from Debian's prometheus package: fetched with `apt-get download` (19 MB, about
# 2 s; as root after an `apt-get update` if the package lists do not have it yet) and only its
# promtool binary taken out into build/promtool, not installed (installing the
# package would also set up a Prometheus server). If it cannot be fetched, the lint is skipped
# with a message and the parser checks still run.
PROMTOOL_DIR := $(BUILD)/promtool

.PHONY: metrics-test promtool
metrics-test: examples venv promtool
	PATH=$(abspath $(PROMTOOL_DIR)):$$PATH \
	GOXELPOOL_LIBRARY=$(STAGE)/lib/libgoxelpool.so.1 GOXEL_REFD=$(STAGE)/bin/goxel-refd PYTHONDONTWRITEBYTECODE=1 \
	  $(VENV_PYTHON) -m unittest discover -s Tests/metrics -t Tests/metrics -v

promtool:
	@[ -x $(PROMTOOL_DIR)/promtool ] || ( \
	  rm -rf $(PROMTOOL_DIR) && mkdir -p $(PROMTOOL_DIR) && cd $(PROMTOOL_DIR) && \
	  { apt-get download prometheus > download.log 2>&1 || \
	    { [ "$$(id -u)" = 0 ] && apt-get update -q >> download.log 2>&1 && apt-get download prometheus >> download.log 2>&1; }; } && \
	  dpkg --fsys-tarfile prometheus_*.deb | tar -xO ./usr/bin/promtool > promtool && chmod 755 promtool && \
	  rm -f prometheus_*.deb && echo "promtool: $$(./promtool --version 2>&1 | head -n 1)" ) || \
	  { rm -f $(PROMTOOL_DIR)/promtool; \
	    echo "promtool: could not fetch Debian's prometheus package ($$(tail -n 1 $(PROMTOOL_DIR)/download.log 2>/dev/null)): the lint is skipped"; }

test-extra: metrics-test
