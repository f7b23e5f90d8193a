# Rust FFI check (included by the top Makefile): `make rust-test`.
# Builds bindings/rust against the staging install of `make examples` (pkg-config only, offline,
# no crates), runs its unit tests and the smoke program against goxel-refd.
# Without cargo it prints SKIP and succeeds.
CARGO ?= cargo

.PHONY: rust-test
rust-test: examples
	@if ! command -v $(CARGO) >/dev/null 2>&1; then \
	  echo "rust-test: SKIP (cargo not found)"; exit 0; fi; \
	CARGO=$(CARGO) CARGO_TARGET_DIR=$(abspath $(BUILD))/rust bindings/rust/smoke.sh $(STAGE)

test-extra: rust-test
