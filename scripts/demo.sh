#!/usr/bin/env bash
# `make demo`: tokengate as users run it, on this machine with no cluster at hand. A local
# control plane and node (the test tier's: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet and kube-proxy from their Go modules, containerd and runc from Debian)
# start here, the chart is installed from the images, and a walkthrough runs (tests/demo.rs).
#   KIND=1 make demo     the same on a kind cluster instead (needs Docker and kind)
#   make demo ARGS=--exit-after-walkthrough     end after the walkthrough
# A node needs root; without it (or where the node cannot start) the same story runs on the
# control plane alone, the pod runner running the injected sidecar, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m%s\033[0m\n' "$*"; }

if [[ "${KIND:-}" == 1 ]]; then
  exec bash tests/kind/demo.sh
fi
node=1
if [[ "$(id -u)" != 0 ]]; then
  say "A node (kubelet, containerd) needs root; sudo make demo runs one. Without it: the control"
  say "plane alone, the operator as a process, and the pod runner running the injected sidecar."
  node=""
fi

build=testkit/controlplane/build.sh
tools=(controlplane kubectl)
[[ -n "$node" ]] && tools+=(helm node)
cold=""
for tool in "${tools[@]}"; do
  case "$tool" in
    controlplane) flag=--print-bin-dir ;;
    *) flag="--print-$tool-bin-dir" ;;
  esac
  [[ -d "$(bash "$build" "$flag")" ]] || cold=1
done
if [[ -n "$cold" ]]; then
  if [[ -n "$node" ]]; then
    say "First run: building the control plane, kubelet, kube-proxy, kubectl and helm from their Go"
    say "modules, and installing containerd and runc from Debian."
  else
    say "First run: building the control plane and kubectl from their Go modules."
  fi
  say "About 15 minutes on 2 cores, once; later runs start in under a minute."
fi
say "[0/7] tools, binaries${node:+ and images}"
[[ -n "$node" ]] && bash testkit/node/node.sh install
for tool in "${tools[@]}"; do
  bash "$build" "$tool"
done
cargo build --quiet --workspace --bins
[[ -n "$node" ]] && IMAGE_BINARIES=target/debug bash images/build.sh >/dev/null

TOKENGATE_CONTROLPLANE_BIN="$(bash "$build" --print-bin-dir)"
TOKENGATE_KUBECTL_BIN="$(bash "$build" --print-kubectl-bin-dir)"
TOKENGATE_HELM_BIN="$(bash "$build" --print-helm-bin-dir)"
TOKENGATE_NODE_BIN="$(bash "$build" --print-node-bin-dir)"
export TOKENGATE_CONTROLPLANE_BIN TOKENGATE_KUBECTL_BIN TOKENGATE_HELM_BIN TOKENGATE_NODE_BIN
args=()
[[ -z "$node" ]] && args+=(--no-node)
exec target/debug/tokengate-demo "${args[@]}" "$@"
