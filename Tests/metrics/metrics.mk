# Prometheus metrics tests (included by the top Makefile): `make metrics-test`, part of
# `make test`. goxelpool_metrics_text against a goxel-refd, parsed by prometheus_client's official
# parser (build/venv, from .ci/requirements.txt), and linted by `promtool check metrics`.
#
# promtool comes from Debian's prometheus package, fetched with `apt-get download` and unpacked
# into build/promtool (19 MB, about 2 s), not installed: installing the package would also set up
# a Prometheus server. If it cannot be fetched, the lint is skipped with a message and the parser
# checks still run.
PROMTOOL_DIR := $(BUILD)/promtool

.PHONY: metrics-test promtool
metrics-test: examples venv promtool
	PATH=$(abspath $(PROMTOOL_DIR))/usr/bin:$$PATH \
	GOXELPOOL_LIBRARY=$(STAGE)/lib/libgoxelpool.so.1 GOXEL_REFD=$(STAGE)/bin/goxel-refd PYTHONDONTWRITEBYTECODE=1 \
	  $(VENV_PYTHON) -m unittest discover -s Tests/metrics -t Tests/metrics -v

promtool:
	@[ -x $(PROMTOOL_DIR)/usr/bin/promtool ] || { \
	  rm -rf $(PROMTOOL_DIR) && mkdir -p $(PROMTOOL_DIR) && cd $(PROMTOOL_DIR) && \
	  apt-get download prometheus > download.log 2>&1 && dpkg -x prometheus_*.deb . && rm -f prometheus_*.deb && \
	  echo "promtool: $$(./usr/bin/promtool --version 2>&1 | head -n 1)"; } || \
	  echo "promtool: could not fetch Debian's prometheus package ($$(tail -n 1 $(PROMTOOL_DIR)/download.log 2>/dev/null)): the lint is skipped"

test-extra: metrics-test
