SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint fmt build controlplane helm demo

build:
	$(CARGO) build --workspace --all-targets

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# etcd, kube-apiserver and kube-controller-manager for the cluster tests, built from their Go
# modules and cached outside the repository keyed by version; seconds when cached.
CONTROLPLANE_BIN := $(shell bash testkit/controlplane/build.sh --print-bin-dir)

controlplane:
	bash testkit/controlplane/build.sh controlplane

# helm, for the chart tier (same build script and cache).
helm:
	bash testkit/controlplane/build.sh helm

test: lint controlplane
	TOKENGATE_CONTROLPLANE_BIN=$(CONTROLPLANE_BIN) $(CARGO) test --workspace

demo:
	scripts/demo.sh
