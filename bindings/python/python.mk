# Python bindings tests (included by the top Makefile): `make python-test`.
# Runs bindings/python/tests (stdlib unittest) against the staging install of `make examples`:
# its libgoxelpool.so.1 (GOXELPOOL_LIBRARY) and goxel-refd (GOXEL_REFD).
PYTHON ?= python3

.PHONY: python-test
python-test: examples
	@if ! command -v $(PYTHON) >/dev/null 2>&1; then \
	  echo "python-test: SKIP ($(PYTHON) not found)"; exit 0; fi; \
	GOXELPOOL_LIBRARY=$(STAGE)/lib/libgoxelpool.so.1 GOXEL_REFD=$(STAGE)/bin/goxel-refd \
	PYTHONPATH=$(abspath bindings/python) PYTHONDONTWRITEBYTECODE=1 \
	  $(PYTHON) -m unittest discover -s bindings/python/tests -t bindings/python/tests -v

test-extra: python-test
