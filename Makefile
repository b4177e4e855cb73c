SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint fmt-check build controlplane kubectl helm node images node-test node-tier test-tools test-build test-suites shellcheck kind-test kind-demo \
	demo demo-local bench fuzz-short fuzz-long fuzz-tools fuzz-build fuzz-run

build:
	$(CARGO) build --workspace --all-targets

lint: fmt-check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt-check:
	$(CARGO) fmt --all -- --check

# etcd, kube-apiserver and kube-controller-manager for the cluster tests, built from their Go
# modules and cached outside the repository keyed by version; seconds when cached.
CONTROLPLANE_BIN := $(shell bash testkit/controlplane/build.sh --print-bin-dir)

controlplane:
	bash testkit/controlplane/build.sh controlplane

# kubectl and helm, for the tests that apply what users apply with the tools users use (same
# build script and cache; kubectl is the control plane's release).
KUBECTL_BIN := $(shell bash testkit/controlplane/build.sh --print-kubectl-bin-dir)
HELM_BIN := $(shell bash testkit/controlplane/build.sh --print-helm-bin-dir)

kubectl:
	bash testkit/controlplane/build.sh kubectl

helm:
	bash testkit/controlplane/build.sh helm

# A real node for the node tier (tests/node.rs): kubelet, kube-proxy and kube-scheduler from the
# same module and cache as the control plane; containerd, runc, the CNI plugins and podman from
# Debian (testkit/node/node.sh install).
NODE_BIN := $(shell bash testkit/controlplane/build.sh --print-node-bin-dir)

node:
	bash testkit/controlplane/build.sh node
	bash testkit/node/node.sh install

# The operator, sidecar and test images (images/build.sh): static release binaries FROM scratch,
# built with podman, saved to target/images/*.tar for containerd and kind.
images:
	bash images/build.sh

# Every shell script of the repository through bash -n and shellcheck (installed from Debian
# when missing); the kind suite, which cannot run here, is checked this way.
shellcheck:
	bash scripts/shellcheck.sh

# `make test` lints and builds in one compilation: clippy-driver, which lints and then compiles
# like rustc, compiles the workspace's own crates (RUSTC_WORKSPACE_WRAPPER, as `cargo clippy`
# sets it, with the same -D warnings), so the lints of `make lint` fail the test build instead of
# costing a second pass over the whole dependency graph.
CLIPPY_BUILD := RUSTC_WORKSPACE_WRAPPER="$$(rustc --print sysroot)/bin/clippy-driver" \
	CLIPPY_ARGS=-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__
TEST_ENV := TOKENGATE_CONTROLPLANE_BIN=$(CONTROLPLANE_BIN) TOKENGATE_KUBECTL_BIN=$(KUBECTL_BIN) \
	TOKENGATE_HELM_BIN=$(HELM_BIN) TOKENGATE_NODE_BIN=$(NODE_BIN) $(CLIPPY_BUILD)

# One step after another: the Go-built tools and Debian packages, the Rust builds (the
# workspace's tests, then the fuzz targets), the suites, the fuzzing smoke run, the node tier.
# (Running the tools and the Rust builds side by side gained nothing on two cores: both keep
# the CPU busy.)
test: fmt-check shellcheck test-tools test-build
	$(MAKE) test-suites
	$(MAKE) fuzz-run
	$(MAKE) node-tier

# The suites but the node tier. (They mostly wait on control planes, leases and timeouts, but
# the fuzzing smoke run beside them made the operator's cluster tests time out.)
test-suites:
	$(TEST_ENV) $(CARGO) test --workspace --all-targets
	$(TEST_ENV) $(CARGO) test --workspace --doc

# One after another: the Go builds share one module's build cache.
test-tools:
	bash testkit/node/node.sh install
	bash testkit/controlplane/build.sh controlplane
	bash testkit/controlplane/build.sh kubectl
	bash testkit/controlplane/build.sh helm
	bash testkit/controlplane/build.sh node

test-build: fuzz-tools
	$(TEST_ENV) $(CARGO) test --workspace --all-targets --no-run
	$(MAKE) fuzz-build

# The node tier (tests/node.rs; root): tokengate from its images on a real node. The images are
# built from the binaries of the test build (target/debug; images/build.sh, IMAGE_BINARIES), the
# same Containerfiles as `make images`.
node-test: controlplane kubectl helm node
	$(TEST_ENV) $(CARGO) build --workspace --bins
	$(MAKE) node-tier

# --workspace, as the test build: the same features for every dependency, so nothing rebuilds.
node-tier:
	IMAGE_BINARIES=target/debug bash images/build.sh
	$(TEST_ENV) $(CARGO) test --workspace --test node --test demo -- --ignored --nocapture

# The same steps as the node tier on a kind cluster (tests/kind/; needs kind, a container engine,
# kubectl and helm). kind-demo leaves the cluster running with a walkthrough.
kind-test:
	bash tests/kind/test.sh

kind-demo:
	bash tests/kind/demo.sh

# The cluster demo (root; else the sidecar alone, saying why): scripts/demo.sh, tests/demo.rs.
demo:
	scripts/demo.sh $(ARGS)

# The sidecar alone on 127.0.0.1, no cluster.
demo-local:
	scripts/demo-local.sh

# tokengate beside nginx, oauth2-proxy and Oathkeeper under the same load (scripts/bench/run.sh);
# rewrites the table in docs/benchmarks.md. BENCH_QUICK=1: one short round. Not part of `test`.
bench:
	bash scripts/bench/run.sh

# Fuzzing (fuzz/, outside the workspace): JWT verification, key documents, TokenPolicy YAML,
# path normalisation and rule matching. `fuzz-short` runs each target briefly as part of
# `make test`; `fuzz-long` is the campaign (FUZZ_SECONDS per target). New inputs go to
# fuzz/corpus/<target> (not committed); fuzz/seeds/<target> are the committed seeds.
FUZZ_TARGETS := jwt key_documents policy_yaml paths routes
FUZZ_SECONDS ?= 12
# The short run is a smoke test of every target, so it builds unoptimised (it compiles much
# faster than a release build); the campaign builds optimised for executions per second.
FUZZ_BUILD ?= --dev
CARGO_FUZZ_VERSION := 0.13.2

fuzz-tools:
	@$(CARGO) +nightly --version >/dev/null 2>&1 || { echo "fuzzing needs the nightly toolchain: rustup toolchain install nightly"; exit 1; }
	@$(CARGO) fuzz --version 2>/dev/null | grep -q "$(CARGO_FUZZ_VERSION)" || $(CARGO) install --locked cargo-fuzz --version $(CARGO_FUZZ_VERSION)

fuzz-build: fuzz-tools
	cd fuzz && $(CARGO) +nightly fuzz build $(FUZZ_BUILD) -s none

fuzz-short: fuzz-build
	$(MAKE) fuzz-run

fuzz-run:
	cd fuzz && for target in $(FUZZ_TARGETS); do \
		mkdir -p corpus/$$target && \
		$(CARGO) +nightly fuzz run $(FUZZ_BUILD) -s none $$target corpus/$$target seeds/$$target -- \
			-max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=1 || exit 1; \
	done

fuzz-long:
	$(MAKE) fuzz-short FUZZ_BUILD=--release FUZZ_SECONDS=$(or $(FUZZ_LONG_SECONDS),150)
