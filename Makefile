SHELL := /bin/bash
CARGO ?= cargo

.PHONY: test lint fmt build controlplane kubectl helm demo

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

# kubectl and helm, for the tier that applies what users apply with the tools users use (same
# build script and cache; kubectl is the control plane's release).
KUBECTL_BIN := $(shell bash testkit/controlplane/build.sh --print-kubectl-bin-dir)
HELM_BIN := $(shell bash testkit/controlplane/build.sh --print-helm-bin-dir)

kubectl:
	bash testkit/controlplane/build.sh kubectl

helm:
	bash testkit/controlplane/build.sh helm

test: lint controlplane kubectl helm
	TOKENGATE_CONTROLPLANE_BIN=$(CONTROLPLANE_BIN) TOKENGATE_KUBECTL_BIN=$(KUBECTL_BIN) \
		TOKENGATE_HELM_BIN=$(HELM_BIN) $(CARGO) test --workspace

demo:
	scripts/demo.sh
