# Set-up tests (included by the top Makefile): `make setup-test`, part of `make test`.
# Tests/setup/run.sh checks .ci/ensure-deps and that make all / test / demo run it first.
.PHONY: setup-test
setup-test:
	Tests/setup/run.sh

test-extra: setup-test
