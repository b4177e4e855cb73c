#!/usr/bin/env bash
# `make demo`: tokengate as users run it, on this machine with no cluster at hand. A local
# control plane and node (the test tier's: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and kube-proxy from their Go modules, containerd and runc from Debian)
# start here, the chart is installed from the images, and a walkthrough runs (tests/demo.rs).
#   KIND=1 make demo     the same on a kind cluster instead (needs Docker and kind)
#   make demo ARGS=--exit-after-walkthrough     end after the walkthrough
# A node needs root; without it, the sidecar alone (scripts/demo-local.sh), saying why.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m%s\033[0m\n' "$*"; }

if [[ "${KIND:-}" == 1 ]]; then
  exec bash tests/kind/demo.sh
fi
if [[ "$(id -u)" != 0 ]]; then
  say "The cluster demo runs a kubelet and containerd on this machine, which needs root (sudo make demo)."
  say "Meanwhile, the sidecar alone, without a cluster:"
  exec bash scripts/demo-local.sh
fi

build=testkit/controlplane/build.sh
cold=""
for kind in bin kubectl-bin helm-bin node-bin; do
  [[ -d "$(bash "$build" "--print-$kind-dir")" ]] || cold=1
done
if [[ -n "$cold" ]]; then
  say "First run: building the control plane, the node's binaries, kubectl and helm from their Go"
  say "modules, and installing containerd and runc from Debian. About 15 minutes on 2 cores, once;"
  say "later runs start in under a minute."
fi
say "[0/7] tools, binaries and images"
bash testkit/node/node.sh install
for tool in controlplane kubectl helm node; do
  bash "$build" "$tool"
done
cargo build --quiet --workspace --bins
IMAGE_BINARIES=target/debug bash images/build.sh >/dev/null

TOKENGATE_CONTROLPLANE_BIN="$(bash "$build" --print-bin-dir)"
TOKENGATE_KUBECTL_BIN="$(bash "$build" --print-kubectl-bin-dir)"
TOKENGATE_HELM_BIN="$(bash "$build" --print-helm-bin-dir)"
TOKENGATE_NODE_BIN="$(bash "$build" --print-node-bin-dir)"
export TOKENGATE_CONTROLPLANE_BIN TOKENGATE_KUBECTL_BIN TOKENGATE_HELM_BIN TOKENGATE_NODE_BIN
exec target/debug/tokengate-demo "$@"
