SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint fmt build controlplane demo

build:
	$(CARGO) build --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

test: lint
	$(CARGO) test --workspace

demo:
	scripts/demo.sh
