# shellcheck shell=bash
# Sourced by the scripts that build Go tools (testkit/controlplane/build.sh for the control
# plane, kubectl and helm; scripts/bench/build-go-tools.sh for the benchmark's peers). The caller
# defines `log` and `die` before calling `require_go`.

# Built tools are cached here, by version, outside the repository (used by the sourcing scripts).
# shellcheck disable=SC2034
cache_root="${TOKENGATE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tokengate}"

# The committed go.mod/go.sum are the source of truth: never let a build edit them, and never
# let the go command fetch another toolchain behind our back.
export GOFLAGS="-mod=readonly -buildvcs=false"
export GOTOOLCHAIN=local
export CGO_ENABLED=0

# Set while a build is in progress, removed on any exit so no partial output is left behind.
tmp_dir=""
cleanup() { if [[ -n "$tmp_dir" ]]; then rm -rf "$tmp_dir"; fi; }
trap cleanup EXIT

require_go() {
    command -v go >/dev/null 2>&1 || die "go is not on PATH; a Go toolchain (go1.26) is needed"
    # Module downloads go over HTTPS; a minimal image may lack the CA bundle.
    if [[ ! -e /etc/ssl/certs/ca-certificates.crt ]] && command -v apt-get >/dev/null 2>&1; then
        log "installing ca-certificates"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates
    fi
}
