#!/usr/bin/env bash
# Installs what `make bench` needs from Debian (nginx, wrk, perf, taskset), with one
# `apt-get update` when anything is missing. Go (for oauth2-proxy and Oathkeeper) is expected on
# the machine; without it those rows are left out.
set -euo pipefail

log() { printf '[bench] %s\n' "$*" >&2; }

missing=()
command -v nginx >/dev/null 2>&1 || [[ -x /usr/sbin/nginx ]] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v perf >/dev/null 2>&1 || missing+=(linux-perf)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
command -v curl >/dev/null 2>&1 || missing+=(curl)

if ((${#missing[@]} == 0)); then
    exit 0
fi
command -v apt-get >/dev/null 2>&1 || {
    log "missing ${missing[*]} and no apt-get to install them"
    exit 1
}
log "installing ${missing[*]}"
sudo=""
[[ "$(id -u)" == 0 ]] || sudo="sudo"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The package's own service is not wanted; the benchmark runs its own nginx instances.
if command -v systemctl >/dev/null 2>&1 && [[ -d /run/systemd/system ]]; then
    $sudo systemctl disable --now nginx >/dev/null 2>&1 || true
fi
