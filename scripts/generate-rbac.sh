#!/usr/bin/env bash
# Writes operator/deploy/rbac.yaml: the Helm chart's ServiceAccount and RBAC rendered for release
# `tokengate` in namespace tokengate-system. The chart is the single source; the operator's
# cluster tests run with this file, and a chart test keeps it equal to the chart.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
helm="${TOKENGATE_HELM_BIN:-$(bash "$root/testkit/controlplane/build.sh" --print-helm-bin-dir)}/helm"
[[ -x "$helm" ]] || { echo "helm is missing: run \`make helm\`" >&2; exit 1; }
{
    echo "# Generated from charts/tokengate by scripts/generate-rbac.sh; do not edit."
    echo "# The ServiceAccount and RBAC the chart grants the operator (release tokengate in"
    echo "# tokengate-system); the operator's cluster tests run with exactly these rules."
    "$helm" template tokengate "$root/charts/tokengate" --namespace tokengate-system --kube-version v1.36.3 \
        --show-only templates/serviceaccount.yaml --show-only templates/rbac.yaml
} >"$root/operator/deploy/rbac.yaml.tmp"
mv "$root/operator/deploy/rbac.yaml.tmp" "$root/operator/deploy/rbac.yaml"
