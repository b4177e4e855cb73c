#!/usr/bin/env bash
# The sidecar alone, without a cluster: an identity provider, an application and the sidecar in
# front of it, on 127.0.0.1, with the quick-start policy from examples/. Nothing to install
# beyond Rust. `make demo` runs it where the cluster demo cannot run (not root).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --quiet -p tokengate-sidecar -p tokengate-testkit --bins
bin=target/debug
log=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT

"$bin/tokengate-idp" --listen 127.0.0.1:9400 >"$log/idp.log" 2>&1 & pids+=($!)
"$bin/tokengate-echo" --listen 127.0.0.1:9401 >"$log/app.log" 2>&1 & pids+=($!)
"$bin/tokengate-sidecar" run --policy examples/quickstart.yaml \
  --listen 127.0.0.1:9402 --upstream http://127.0.0.1:9401 --admin 127.0.0.1:9403 \
  >"$log/sidecar.log" 2>&1 & pids+=($!)

for _ in $(seq 1 100); do
  curl -fs http://127.0.0.1:9403/ready >/dev/null 2>&1 && break
  sleep 0.1
done

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step "curl -s http://127.0.0.1:9403/ready"
curl -s http://127.0.0.1:9403/ready

step "curl -si http://127.0.0.1:9402/orders        # no token"
curl -si http://127.0.0.1:9402/orders; echo

token=$("$bin/tokengate-idp" token --issuer http://127.0.0.1:9400 --scope api://demo/.default)
step "TOKEN=\$(tokengate-idp token --issuer http://127.0.0.1:9400 --scope api://demo/.default)"

step "curl -s -H \"Authorization: Bearer \$TOKEN\" http://127.0.0.1:9402/orders   # the app sees X-User-Id"
curl -s -H "Authorization: Bearer $token" http://127.0.0.1:9402/orders \
  | grep -o '"method":"[A-Z]*"\|"path":"[^"]*"\|"x-user-id":\[[^]]*\]\|"x-forwarded-for":\[[^]]*\]'

step "curl -s http://127.0.0.1:9402/healthz        # authentication Disabled on this route"
curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:9402/healthz

wrong=$("$bin/tokengate-idp" token --issuer http://127.0.0.1:9400 --scope api://elsewhere/.default)
step "tokengate-sidecar check --policy examples/quickstart.yaml --token \$WRONG_AUDIENCE_TOKEN"
"$bin/tokengate-sidecar" check --policy examples/quickstart.yaml --token "$wrong" || true

step "curl -s http://127.0.0.1:9403/metrics | grep tokengate_requests_total"
curl -s http://127.0.0.1:9403/metrics | grep '^tokengate_requests_total'
