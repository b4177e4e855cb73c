#!/usr/bin/env bash
# `make bench`: tokengate against the direct path, nginx as a plain reverse proxy, oauth2-proxy
# and (when it builds) Ory Oathkeeper, all in one run with the same load generators.
#
# Cores: the load generators run on core BENCH_LOAD_CORE (default 0); the upstream and the system
# under test share core BENCH_SERVER_CORE (default 1), as a sidecar shares its pod's CPU with
# the application. Everything listens on 127.0.0.1 only.
#
# For each system and round: start it fresh, check that it lets the valid token through and
# refuses the badly signed one, read its idle RSS, warm up (1 s), drive it at saturation with wrk
# (-t1 -c32), reading its CPU time (utime+stime from /proc/PID/stat) before and after, then at a
# fixed rate with tokengate-load (latency percentiles with coordinated-omission correction),
# read its peak RSS (VmHWM), stop it. Systems alternate within a round, so a neighbour's load on
# the machine spreads over all of them; the table shows each column's median over the rounds,
# the goals the median of each round's ratio.
#
# Then: the raw cost of one RS256 verification (criterion, for the unique-token goal) and a
# profile of the cached path (perf sampling on the CPU clock when the VM has no hardware
# counters).
#
# Environment:
#   BENCH_QUICK=1          one short round (for iterating), no profile
#   BENCH_OUT=DIR          raw output and results (default docs/bench)
#   BENCH_DOC=FILE         the document whose generated section is rewritten (default
#                          docs/benchmarks.md; empty: none)
#   BENCH_PROFILE=0|1      profile the cached path with perf (default 1, 0 with BENCH_QUICK)
#   BENCH_CRITERION=0|1    measure one RS256 verification with criterion (default 1)
#   BENCH_SYSTEMS="..."    subset of: direct nginx tg-rs256 tg-es256 tg-rs256-cold tg-refused
#                          oauth2-proxy oathkeeper
#   BENCH_SIDECAR=FILE     another tokengate-sidecar binary to measure
#   BENCH_SIDECAR_BEFORE=FILE  an earlier tokengate-sidecar binary to profile beside this one
#   BENCH_NICE=N           scheduling niceness of every process started (default -10 as root, so
#                          that builds running beside the benchmark disturb it less; else 0)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
here="$root/scripts/bench"

quick="${BENCH_QUICK:-0}"
if [[ "$quick" == 1 ]]; then
    rounds=1 saturation_seconds=3 rate_seconds=2 profile="${BENCH_PROFILE:-0}"
else
    rounds=3 saturation_seconds=8 rate_seconds=5 profile="${BENCH_PROFILE:-1}"
fi
criterion="${BENCH_CRITERION:-1}"
out="${BENCH_OUT:-docs/bench}"
doc="${BENCH_DOC-docs/benchmarks.md}"
systems="${BENCH_SYSTEMS:-direct nginx tg-rs256 tg-es256 tg-rs256-cold tg-refused oauth2-proxy oathkeeper}"
load_core="${BENCH_LOAD_CORE:-0}"
server_core="${BENCH_SERVER_CORE:-1}"
connections=32
rate=1000
rate_connections=16
warmup_seconds=1
# The unique-token row runs the sidecar with the smallest token cache (32 entries, one shard)
# and rotates through unique_tokens tokens, so that nearly every lookup misses and every miss
# still pays for hashing, an insertion and an eviction; the table reports the hit ratio seen.
# (S3-FIFO keeps a few tokens of any rotation, so a larger cache would hit on up to its size in
# every rotation.) The same tokens, each sent once to a sidecar with the default cache of
# 10,000 entries, give its RSS holding 10,000 verified tokens.
cold_cache_entries=32
unique_tokens=10000
if [[ -n "${BENCH_NICE:-}" ]]; then
    niceness="$BENCH_NICE"
elif [[ "$(id -u)" == 0 ]]; then
    niceness=-10
else
    niceness=0
fi
# Every process started here ends by this many seconds after the start, whatever happens.
budget=1800

log() { printf '[bench] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}

work="$(mktemp -d "${TMPDIR:-/tmp}/tokengate-bench.XXXXXX")"
started=()
cleanup() {
    local pid
    for pid in "${started[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${started[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ----- tools -----------------------------------------------------------------------------------

timeout -k 10 900 bash "$here/install.sh"
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"

log "building tokengate (release)"
timeout -k 10 3600 cargo build --release --locked -q -p tokengate-sidecar --bin tokengate-sidecar \
    -p tokengate-testkit --bin tokengate-idp --bin tokengate-load
if [[ "$criterion" == 1 ]]; then
    log "building the criterion benchmark (release)"
    timeout -k 10 3600 cargo bench --locked -q -p tokengate-sidecar --bench verify --no-run \
        2>"$work/criterion-build.log" || {
        log "the criterion benchmark did not build; its goal is left out: $(tail -3 "$work/criterion-build.log")"
        criterion=0
    }
fi
# BENCH_SIDECAR: another tokengate-sidecar binary to measure (an earlier build, for comparisons).
sidecar_bin="${BENCH_SIDECAR:-$root/target/release/tokengate-sidecar}"
idp_bin="$root/target/release/tokengate-idp"
load_bin="$root/target/release/tokengate-load"

oauth2_proxy_bin=""
oathkeeper_bin=""
oathkeeper_note=""
if command -v go >/dev/null 2>&1; then
    if [[ " $systems " == *" oauth2-proxy "* ]]; then
        oauth2_proxy_bin="$(timeout -k 10 3600 bash "$here/build-go-tools.sh" oauth2-proxy)" ||
            log "oauth2-proxy did not build; its row is left out"
    fi
    if [[ " $systems " == *" oathkeeper "* ]]; then
        oathkeeper_bin="$(timeout -k 10 3600 bash "$here/build-go-tools.sh" oathkeeper 2>"$work/oathkeeper-build.log")" || {
            oathkeeper_note="did not build: $(grep -m1 -v '^\[bench\]' "$work/oathkeeper-build.log" || true)"
            oathkeeper_bin=""
        }
    fi
else
    log "no Go toolchain: oauth2-proxy and Oathkeeper are left out"
fi

# ----- ports, processes, measurements ----------------------------------------------------------

used_ports="$(ss -Htln 2>/dev/null | awk '{print $4}' | sed 's/.*://' | sort -u)"
next_port="${BENCH_PORT_BASE:-27500}"
alloc_port() { # VAR
    while grep -qx "$next_port" <<<"$used_ports"; do next_port=$((next_port + 1)); done
    printf -v "$1" '%s' "$next_port"
    next_port=$((next_port + 1))
}
# Declared here so readers (and shellcheck) see where they come from; alloc_port assigns them.
idp_port="" upstream_port="" proxy_port="" admin_port=""
alloc_port idp_port
alloc_port upstream_port
alloc_port proxy_port
alloc_port admin_port

# start NAME CORE CMD...: runs CMD pinned to CORE, bounded by the budget; sets $pid (the command
# itself) and $wrapper (what to signal).
start() {
    local name="$1" core="$2"
    shift 2
    timeout -k 5 "$budget" nice -n "$niceness" taskset -c "$core" "$@" >"$work/$name.out" 2>"$work/$name.err" &
    wrapper=$!
    started+=("$wrapper")
    pid=""
    local _
    for _ in $(seq 100); do
        # timeout's child, which nice and taskset have become.
        pid="$(pgrep -P "$wrapper" | head -1 || true)"
        [[ -n "$pid" ]] && return 0
        sleep 0.02
    done
    die "$name did not start: $(tail -3 "$work/$name.err")"
}

stop() { # WRAPPER
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

wait_http() { # URL [HEADER]
    local _
    for _ in $(seq 200); do
        if curl -s -o /dev/null -m 1 ${2:+-H "$2"} "$1"; then return 0; fi
        sleep 0.05
    done
    die "$1 did not answer"
}

tree() { # PID: it and its descendants
    local child
    echo "$1"
    for child in $(pgrep -P "$1" || true); do tree "$child"; done
}

cpu_ticks() { # PID...: utime+stime of each process and its descendants, summed
    local total=0 p t
    for p in $(for q in "$@"; do tree "$q"; done); do
        t="$(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$p/stat" 2>/dev/null || echo 0)"
        total=$((total + t))
    done
    echo "$total"
}

mem_kib() { # FIELD PID: VmRSS or VmHWM of a process and its descendants, summed
    local total=0 p v
    for p in $(tree "$2"); do
        v="$(awk -v f="$1:" '$1 == f {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)"
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

clk_tck="$(getconf CLK_TCK)"

# ----- identity provider and tokens ------------------------------------------------------------

tokens="$work/tokens"
log "starting tokengate-idp, minting $unique_tokens RS256 tokens"
start idp "$load_core" "$idp_bin" --listen "127.0.0.1:$idp_port" --write-tokens "$tokens" \
    --unique-tokens "$unique_tokens"
idp_wrapper="$wrapper"
for _ in $(seq 600); do
    [[ -s "$work/idp.out" ]] && break
    sleep 0.1
done
issuer="$(head -1 "$work/idp.out")"
[[ -n "$issuer" ]] || die "tokengate-idp printed no issuer: $(tail -3 "$work/idp.err")"

cat >"$work/policy.yaml" <<EOF
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
metadata: {name: bench}
spec:
  selector: {matchLabels: {app: bench}}
  validateJwt:
    issuerSigningKeys: [{jwk: $(cat "$tokens/rsa.jwk.json")}, {jwk: $(cat "$tokens/p256.jwk.json")}]
    issuers: ["$issuer"]
    audiences: ["api://tokengate-tests"]
    requiredClaims: [{name: roles, match: any, values: [Orders.Read]}]
EOF

# ----- the upstream: nginx answering every request itself ---------------------------------------

nginx_conf() { # NAME BODY: a one-worker nginx whose state lives in the work directory
    mkdir -p "$work/$1"
    cat >"$work/$1/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/$1/nginx.pid;
error_log $work/$1/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path $work/$1/client_body;
    proxy_temp_path $work/$1/proxy;
    fastcgi_temp_path $work/$1/fastcgi;
    uwsgi_temp_path $work/$1/uwsgi;
    scgi_temp_path $work/$1/scgi;
$2
}
EOF
}

nginx_conf upstream "
    server {
        listen 127.0.0.1:$upstream_port;
        location / { default_type text/plain; return 200 \"ok\n\"; }
    }"
start upstream "$server_core" "$nginx_bin" -p "$work/upstream" -e "$work/upstream/error.log" -c "$work/upstream/nginx.conf"
upstream_pid="$pid"
wait_http "http://127.0.0.1:$upstream_port/"

nginx_conf proxy "
    upstream app {
        server 127.0.0.1:$upstream_port;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$proxy_port;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"

# Oathkeeper: the jwt authenticator against the identity provider's JWKS, allow, noop.
mkdir -p "$work/oathkeeper"
cat >"$work/oathkeeper/rules.json" <<EOF
[{"id": "bench", "upstream": {"url": "http://127.0.0.1:$upstream_port", "preserve_host": true},
  "match": {"url": "http://127.0.0.1:$proxy_port/<.*>", "methods": ["GET"]},
  "authenticators": [{"handler": "jwt"}], "authorizer": {"handler": "allow"},
  "mutators": [{"handler": "noop"}]}]
EOF
cat >"$work/oathkeeper/config.yaml" <<EOF
log: {level: warn}
serve:
  proxy: {host: 127.0.0.1, port: $proxy_port}
  api: {host: 127.0.0.1, port: $admin_port}
access_rules: {repositories: ["file://$work/oathkeeper/rules.json"]}
authenticators:
  jwt:
    enabled: true
    config:
      jwks_urls: ["$issuer/keys"]
      trusted_issuers: ["$issuer"]
      target_audience: ["api://tokengate-tests"]
      allowed_algorithms: [RS256]
authorizers: {allow: {enabled: true}}
mutators: {noop: {enabled: true}}
EOF

# ----- one system, one round -------------------------------------------------------------------

# start_system NAME: starts the system under test on $proxy_port; sets $sys_pid and
# $sys_wrapper (empty for the direct path) and $target.
start_system() {
    sys_pid="" sys_wrapper="" target="http://127.0.0.1:$proxy_port/"
    case "$1" in
    direct)
        target="http://127.0.0.1:$upstream_port/"
        return
        ;;
    nginx)
        start "sut-$1" "$server_core" "$nginx_bin" -p "$work/proxy" -e "$work/proxy/error.log" -c "$work/proxy/nginx.conf"
        ;;
    tg-*)
        local cache_args=()
        [[ "$1" == tg-rs256-cold ]] && cache_args=(--token-cache-entries "$cold_cache_entries")
        start "sut-$1" "$server_core" "$sidecar_bin" run --policy "$work/policy.yaml" \
            --listen "127.0.0.1:$proxy_port" --upstream "http://127.0.0.1:$upstream_port" \
            --admin "127.0.0.1:$admin_port" "${cache_args[@]}"
        sys_pid="$pid" sys_wrapper="$wrapper"
        wait_http "http://127.0.0.1:$admin_port/ready"
        return
        ;;
    oauth2-proxy)
        start "sut-$1" "$server_core" "$oauth2_proxy_bin" --http-address="127.0.0.1:$proxy_port" \
            --upstream="http://127.0.0.1:$upstream_port/" --provider=oidc \
            --oidc-issuer-url="$issuer" --client-id=demo --client-secret=demo-secret \
            --oidc-extra-audience=api://tokengate-tests --skip-jwt-bearer-tokens \
            --cookie-secret=0123456789abcdef0123456789abcdef --cookie-secure=false \
            --email-domain='*' --request-logging=false --silence-ping-logging \
            --redirect-url="http://127.0.0.1:$proxy_port/oauth2/callback"
        ;;
    oathkeeper)
        start "sut-$1" "$server_core" "$oathkeeper_bin" serve --config "$work/oathkeeper/config.yaml"
        ;;
    esac
    sys_pid="$pid" sys_wrapper="$wrapper"
    wait_http "$target" "Authorization: Bearer $(cat "$tokens/rs256.jwt")"
}

# check_gate NAME: a gate lets the valid token through and refuses the badly signed one, so that
# no row is fast for the wrong reason.
check_gate() {
    [[ "$1" == direct || "$1" == nginx ]] && return 0
    local good bad
    good="$(curl -s -o /dev/null -w '%{http_code}' -m 5 -H "Authorization: Bearer $(cat "$tokens/rs256.jwt")" "$target" || true)"
    bad="$(curl -s -o /dev/null -w '%{http_code}' -m 5 -H "Authorization: Bearer $(cat "$tokens/rs256-bad-signature.jwt")" "$target" || true)"
    [[ "$good" == 200 ]] || die "$1 answered $good to a valid token"
    [[ "$bad" != 2* && "$bad" != 000 ]] || die "$1 answered $bad to a token with a bad signature"
}

tokens_for() {
    case "$1" in
    tg-es256) echo "$tokens/es256.jwt" ;;
    tg-rs256-cold) echo "$tokens/rs256-unique.txt" ;;
    tg-refused) echo "$tokens/rs256-bad-signature.jwt" ;;
    *) echo "$tokens/rs256.jwt" ;;
    esac
}

status_for() { [[ "$1" == tg-refused ]] && echo 401 || echo 200; }

wrk_run() { # URL TOKENS SECONDS OUTPUT
    local args
    if (($(wc -l <"$2") > 1)); then
        args=(-s "$here/rotate-tokens.lua")
    else
        args=(-H "Authorization: Bearer $(head -1 "$2")")
    fi
    BENCH_TOKENS="$2" timeout -k 5 $(($3 + 30)) nice -n "$niceness" taskset -c "$load_core" \
        wrk -t1 -c"$connections" -d"$3s" --timeout 2s --latency "${args[@]}" "$1" >"$4"
}

token_cache_counts() { # hits misses of the sidecar's token cache
    curl -s -m 2 "http://127.0.0.1:$admin_port/metrics" | awk '
        /^tokengate_token_cache_total\{result="hit"\}/ {h = $2}
        /^tokengate_token_cache_total\{result="miss"\}/ {m = $2}
        END {printf "%d %d\n", h, m}'
}

mkdir -p "$out/raw"
results="$out/results.tsv"
printf 'round\tsystem\trps\trequests\tnon_expected\tproxy_cpu_us\tupstream_cpu_us\tp50_ms\tp99_ms\tp999_ms\tidle_rss_kib\tpeak_rss_kib\tcache_hit_ratio\tidle_anon_kib\n' >"$results"

measure() { # ROUND SYSTEM
    local round="$1" system="$2" raw="$out/raw/$2.round$1"
    local token_file status
    token_file="$(tokens_for "$system")"
    status="$(status_for "$system")"
    start_system "$system"
    check_gate "$system"
    local idle_rss=0 idle_anon=0
    if [[ -n "$sys_pid" ]]; then
        idle_rss="$(mem_kib VmRSS "$sys_pid")"
        idle_anon="$(mem_kib RssAnon "$sys_pid")"
    fi
    # Warm-up with the cached token: connections and pools, not the token cache of the cold row.
    wrk_run "$target" "$tokens/rs256.jwt" "$warmup_seconds" "$work/warmup.txt"
    local cache_before="0 0"
    [[ "$system" == tg-* ]] && cache_before="$(token_cache_counts)"
    local sys_before=0 up_before
    [[ -n "$sys_pid" ]] && sys_before="$(cpu_ticks "$sys_pid")"
    up_before="$(cpu_ticks "$upstream_pid")"
    wrk_run "$target" "$token_file" "$saturation_seconds" "$raw.wrk.txt"
    local sys_after=0 up_after
    [[ -n "$sys_pid" ]] && sys_after="$(cpu_ticks "$sys_pid")"
    up_after="$(cpu_ticks "$upstream_pid")"
    local cache_after="0 0"
    [[ "$system" == tg-* ]] && cache_after="$(token_cache_counts)"
    timeout -k 5 $((rate_seconds + warmup_seconds + 30)) nice -n "$niceness" taskset -c "$load_core" "$load_bin" \
        --rate "$rate" --duration "$rate_seconds" --warmup "$warmup_seconds" \
        --connections "$rate_connections" --tokens "$token_file" --expect-status "$status" \
        "$target" >"$raw.rate.txt" 2>&1 || log "$system: fixed-rate run: $(tail -1 "$raw.rate.txt")"
    local peak_rss=0
    [[ -n "$sys_pid" ]] && peak_rss="$(mem_kib VmHWM "$sys_pid")"
    [[ -n "$sys_wrapper" ]] && stop "$sys_wrapper"

    local requests rps non2xx other
    requests="$(awk '/requests in/ {print $1}' "$raw.wrk.txt")"
    rps="$(awk '/^Requests\/sec/ {print $2}' "$raw.wrk.txt")"
    non2xx="$(awk '/Non-2xx/ {print $NF}' "$raw.wrk.txt")"
    non2xx="${non2xx:-0}"
    # Responses with another status than expected: for the refusing row, the 2xx ones.
    if [[ "$status" == 200 ]]; then other="$non2xx"; else other=$((requests - non2xx)); fi
    local kv
    kv="$(tail -1 "$raw.rate.txt")"
    field() { sed -n "s/.*\b$1=\([^ ]*\).*/\1/p" <<<"$kv"; }
    local proxy_cpu="" upstream_cpu hit_ratio=""
    if [[ -n "$sys_pid" ]]; then
        proxy_cpu="$(awk -v t=$((sys_after - sys_before)) -v n="$requests" -v hz="$clk_tck" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
    fi
    upstream_cpu="$(awk -v t=$((up_after - up_before)) -v n="$requests" -v hz="$clk_tck" 'BEGIN {printf "%.1f", t / hz * 1e6 / n}')"
    if [[ "$system" == tg-* ]]; then
        read -r hb mb <<<"$cache_before"
        read -r ha ma <<<"$cache_after"
        hit_ratio="$(awk -v h=$((ha - hb)) -v m=$((ma - mb)) 'BEGIN {if (h + m > 0) printf "%.3f", h / (h + m)}')"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$round" "$system" "$rps" \
        "$requests" "$other" "$proxy_cpu" "$upstream_cpu" "$(field p50_ms)" "$(field p99_ms)" \
        "$(field p999_ms)" "$idle_rss" "$peak_rss" "$hit_ratio" "$idle_anon" >>"$results"
    log "$system round $round: $rps req/s, ${proxy_cpu:-n/a} µs CPU/request, p99 $(field p99_ms) ms, other status $other"
}

available() {
    case "$1" in
    oauth2-proxy) [[ -n "$oauth2_proxy_bin" ]] ;;
    oathkeeper) [[ -n "$oathkeeper_bin" ]] ;;
    *) true ;;
    esac
}

run_started="$(date -u +%Y-%m-%dT%H:%MZ)"
load_before="$(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq "$rounds"); do
    for system in $systems; do
        available "$system" && measure "$round" "$system"
    done
done

# ----- RSS holding 10,000 verified tokens -----------------------------------------------------

# A sidecar with the default token cache; every unique token once (tokengate-load sends them
# in turn), then its RSS. The cache counts one miss per token it verified and kept.
cached_rss_kib="" cached_anon_kib="" cached_tokens=""
if [[ " $systems " == *" tg-rs256 "* ]]; then
    log "RSS with $unique_tokens tokens in the token cache"
    start_system tg-rs256
    timeout -k 5 120 nice -n "$niceness" taskset -c "$load_core" "$load_bin" \
        --rate 1000 --duration "$((unique_tokens / 1000))" --warmup 0 \
        --connections "$rate_connections" --tokens "$tokens/rs256-unique.txt" \
        "$target" >"$out/raw/cached-tokens.txt" 2>&1 || log "filling the token cache: $(tail -1 "$out/raw/cached-tokens.txt")"
    read -r _ cached_tokens <<<"$(token_cache_counts)"
    cached_rss_kib="$(mem_kib VmRSS "$sys_pid")"
    cached_anon_kib="$(mem_kib RssAnon "$sys_pid")"
    stop "$sys_wrapper"
fi

# ----- one RS256 verification, alone ----------------------------------------------------------

# The unique-token goal compares that row with the cached row plus this raw verification cost.
rs256_verify_us=""
if [[ "$criterion" == 1 ]]; then
    log "criterion: one RS256 verification (cold, 1 required claim)"
    bench_name="verify RS256 cold, 1 required claim"
    if timeout -k 5 900 nice -n "$niceness" taskset -c "$server_core" \
        cargo bench --locked -q -p tokengate-sidecar --bench verify -- --quick "$bench_name" \
        >"$out/raw/criterion-rs256.txt" 2>"$work/criterion.err"; then
        # "time:   [low unit mid unit high unit]": the middle estimate, in µs.
        rs256_verify_us="$(awk '/time:/ {
                v = $4; u = $5
                if (u == "ns") v /= 1000; else if (u == "ms") v *= 1000
                printf "%.1f", v; exit }' "$out/raw/criterion-rs256.txt")"
    else
        log "criterion failed: $(tail -3 "$work/criterion.err")"
    fi
fi

# ----- profile of the cached path --------------------------------------------------------------

# profile LABEL BINARY OUTPUT: perf samples of tokengate-sidecar BINARY under saturation with
# the cached RS256 token.
profile() {
    local label="$1" output="$3"
    local sidecar_bin="$2"
    start_system tg-rs256
    wrk_run "$target" "$tokens/rs256.jwt" 12 "$work/profile.wrk.txt" &
    local wrk_pid=$!
    sleep 2
    if timeout -k 5 30 perf record -q -e "$event" -F 1999 -p "$sys_pid" -o "$work/perf.data" -- sleep 8 2>"$work/perf.err"; then
        {
            echo "# $label: perf record -e $event -F 1999 -p <tokengate-sidecar>, 8 s during"
            echo "# wrk -t1 -c$connections at saturation, cached RS256 token; self time, no call graph."
            echo "# by object:"
            perf report -i "$work/perf.data" --stdio --no-children --sort dso --percent-limit 0.5 2>/dev/null |
                awk '/^ *[0-9.]+%/ {print "#   " $1, $2}'
            echo "# by function (>= 0.3%):"
            perf report -i "$work/perf.data" --stdio --no-children --sort dso,symbol --percent-limit 0.3 2>/dev/null |
                awk '/^ *[0-9.]+%/ {pct = $1; dso = $2; $1 = ""; $2 = ""; $3 = ""; sub(/^ +/, ""); sub(/ +$/, "");
                    printf "%7s  %-18s %s\n", pct, dso, $0}'
        } >"$output"
    else
        log "perf record failed: $(tail -2 "$work/perf.err")"
    fi
    wait "$wrk_pid" || true
    stop "$sys_wrapper"
}

profile_file="" profile_before_file=""
if [[ "$profile" == 1 ]] && command -v perf >/dev/null 2>&1; then
    # This VM has no hardware counters when `perf stat -e instructions` says so; the CPU clock
    # (a timer) samples everywhere.
    if perf stat -e instructions true 2>&1 | grep -q 'not supported\|not counted'; then
        event=cpu-clock
    else
        event=cycles
    fi
    profile_file="$out/profile-cached.txt"
    profile "this build" "$sidecar_bin" "$profile_file"
    [[ -s "$profile_file" ]] || profile_file=""
    if [[ -n "${BENCH_SIDECAR_BEFORE:-}" ]]; then
        profile_before_file="$out/profile-cached-before.txt"
        profile "earlier build" "$BENCH_SIDECAR_BEFORE" "$profile_before_file"
        [[ -s "$profile_before_file" ]] || profile_before_file=""
    fi
fi

stop "$idp_wrapper"

# ----- the table -------------------------------------------------------------------------------

label() {
    case "$1" in
    direct) echo "direct to the upstream" ;;
    nginx) echo "nginx $("$nginx_bin" -v 2>&1 | sed 's/.*nginx\///'), plain reverse proxy" ;;
    tg-rs256) echo "tokengate, cached RS256 token" ;;
    tg-es256) echo "tokengate, cached ES256 token" ;;
    tg-rs256-cold) echo "tokengate, unique RS256 token per request" ;;
    tg-refused) echo "tokengate, refusing (RS256, bad signature → 401)" ;;
    oauth2-proxy) echo "oauth2-proxy $(bash "$here/build-go-tools.sh" --print-bin oauth2-proxy | sed 's|.*/\(v[^/]*\)/bin/.*|\1|'), bearer JWT" ;;
    oathkeeper) echo "Ory Oathkeeper $(bash "$here/build-go-tools.sh" --print-bin oathkeeper | sed 's|.*/\(v[^/]*\)/bin/.*|\1|'), jwt authenticator" ;;
    esac
}

median() { # SYSTEM COLUMN: median over the rounds (empty when none)
    awk -F'\t' -v s="$1" -v c="$2" 'NR > 1 && $2 == s && $c != "" {print $c}' "$results" |
        sort -g | awk '{v[NR] = $1} END {if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'
}

# The goals, each as the median over the rounds of that round's figure.
goals() {
    awk -F'\t' -v verify_us="$rs256_verify_us" -v cached_rss="$cached_rss_kib" '
        NR > 1 { rounds[$1] = 1; v[$1, $2, "rps"] = $3; v[$1, $2, "cpu"] = $6; v[$1, $2, "p50"] = $8
                 v[$1, $2, "p99"] = $9; v[$1, $2, "idle"] = $11; v[$1, $2, "peak"] = $12 }
        function has(r, s, k) { return ((r, s, k) in v) && v[r, s, k] != "" && v[r, s, k] + 0 > 0 }
        function med(   n, i, j, t) {
            n = 0; for (i in vals) sorted[++n] = vals[i]
            for (i = 2; i <= n; i++) for (j = i; j > 1 && sorted[j - 1] > sorted[j]; j--) {
                t = sorted[j]; sorted[j] = sorted[j - 1]; sorted[j - 1] = t }
            if (n == 0) return ""
            return n % 2 ? sorted[(n + 1) / 2] : (sorted[n / 2] + sorted[n / 2 + 1]) / 2
        }
        # kind: ratio a/b, diff a-b, value a; sense: le or ge the target.
        function goal(text, kind, a, ka, b, kb, target, sense, fmt,   r, x, m) {
            delete vals; delete sorted
            for (r in rounds) {
                if (!has(r, a, ka)) continue
                if (kind != "value" && kind != "cold" && !has(r, b, kb)) continue
                if (kind == "ratio") x = v[r, a, ka] / v[r, b, kb]
                else if (kind == "diff") x = v[r, a, ka] - v[r, b, kb]
                else if (kind == "value") x = v[r, a, ka] / 1024
                else if (kind == "cold") {
                    if (verify_us == "" || !has(r, b, kb)) continue
                    x = v[r, a, ka] / (verify_us + v[r, b, kb])
                }
                vals[r] = x
            }
            m = med()
            if (m == "") { printf "| %s | %s | not measured | |\n", text, target; return }
            printf "| %s | %s | " fmt " | %s |\n", text, target, m, \
                ((sense == "le" ? m <= target + 0 : m >= target + 0) ? "yes" : "**no**")
        }
        END {
            goal("cached RS256: CPU per request ÷ nginx'"'"'s", "ratio", "tg-rs256", "cpu", "nginx", "cpu", "1.2", "le", "%.2f")
            goal("cached ES256: CPU per request ÷ nginx'"'"'s", "ratio", "tg-es256", "cpu", "nginx", "cpu", "1.2", "le", "%.2f")
            goal("cached RS256: req/s ÷ nginx'"'"'s", "ratio", "tg-rs256", "rps", "nginx", "rps", "0.85", "ge", "%.2f")
            goal("cached RS256: p50 over direct at 1,000 req/s (ms)", "diff", "tg-rs256", "p50", "direct", "p50", "0.1", "le", "%.3f")
            goal("cached RS256: p99 over direct at 1,000 req/s (ms)", "diff", "tg-rs256", "p99", "direct", "p99", "0.3", "le", "%.3f")
            goal("unique RS256: CPU per request ÷ (criterion RS256 verification " verify_us " µs + cached CPU per request)", "cold", "tg-rs256-cold", "cpu", "tg-rs256", "cpu", "1.3", "le", "%.2f")
            goal("oauth2-proxy'"'"'s CPU per request ÷ cached RS256'"'"'s (req/s per CPU)", "ratio", "oauth2-proxy", "cpu", "tg-rs256", "cpu", "10", "ge", "%.1f")
            goal("cached RS256: p99 ÷ oauth2-proxy'"'"'s", "ratio", "tg-rs256", "p99", "oauth2-proxy", "p99", "0.2", "le", "%.2f")
            goal("cached RS256: peak RSS ÷ oauth2-proxy'"'"'s", "ratio", "tg-rs256", "peak", "oauth2-proxy", "peak", "0.333", "le", "%.2f")
            goal("idle RSS (MiB)", "value", "tg-rs256", "idle", "", "", "8", "le", "%.1f")
            if (cached_rss != "") {
                m = cached_rss / 1024
                printf "| RSS with 10,000 cached tokens (MiB) | 25 | %.1f | %s |\n", m, (m <= 25 ? "yes" : "**no**")
            } else printf "| RSS with 10,000 cached tokens (MiB) | 25 | not measured | |\n"
        }' "$results"
}

top_frames() { # PROFILE: the function lines of a profile, top 15
    awk '/^# by function/ {on = 1; next} on && !/^#/' "$1" | head -15
}

mib() { awk -v k="$1" 'BEGIN {if (k > 0) printf "%.1f", k / 1024; else printf "–"}'; }

table="$out/table.md"
{
    echo "Generated by \`make bench\` on $run_started: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), Linux $(uname -r), load average before the run $load_before."
    echo "Load generators on core $load_core; upstream and system under test on core $server_core (\`taskset\`), all at niceness $niceness."
    echo "Upstream: nginx answering \`200 ok\` itself. Saturation: \`wrk -t1 -c$connections -d${saturation_seconds}s\`; fixed rate: \`tokengate-load --rate $rate --connections $rate_connections\` for ${rate_seconds} s after ${warmup_seconds} s of warm-up (latency from the scheduled send time)."
    echo "CPU per request: utime + stime of the proxy's processes (\`/proc/PID/stat\`) over the saturation run ÷ requests. RSS: \`VmRSS\` once ready (idle; in brackets \`RssAnon\`, the part not mapped from files) and \`VmHWM\` after both runs (peak)."
    echo "Median of $rounds round(s); other processes were running on the same cores, so compare rows of one run, not runs."
    echo
    echo "| system | req/s | CPU µs/req (proxy) | CPU µs/req (upstream) | p50 ms | p99 ms | p99.9 ms | RSS idle MiB (anonymous) | RSS peak MiB |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for system in $systems; do
        if ! available "$system"; then
            [[ "$system" == oathkeeper && -n "$oathkeeper_note" ]] && echo "| $(label "$system") | ${oathkeeper_note//|/\\|} | | | | | | | |"
            continue
        fi
        rps="$(median "$system" 3)"
        proxy_cpu="$(median "$system" 6)"
        echo "| $(label "$system") | $(printf '%.0f' "${rps:-0}") | ${proxy_cpu:-–} | $(median "$system" 7) | $(median "$system" 8) | $(median "$system" 9) | $(median "$system" 10) | $(mib "$(median "$system" 11)")$(anon="$(median "$system" 14)"; [[ -n "$anon" && "$anon" != 0 ]] && echo " ($(mib "$anon"))") | $(mib "$(median "$system" 12)") |"
    done
    echo
    if grep -q tg-rs256-cold "$results"; then
        echo "Unique-token row: $unique_tokens RS256 tokens in rotation through a token cache of $cold_cache_entries entries (\`--token-cache-entries\`); hit ratio $(median tg-rs256-cold 13)."
    fi
    if [[ -n "$cached_rss_kib" ]]; then
        echo "With the default token cache after each of the $unique_tokens unique tokens once ($cached_tokens verified and kept): RSS $(awk -v k="$cached_rss_kib" 'BEGIN {printf "%.1f", k / 1024}') MiB, of which anonymous $(awk -v k="$cached_anon_kib" 'BEGIN {printf "%.1f", k / 1024}') MiB. RSS counts the pages of the executable a process has mapped; every sidecar on a node maps the same file, so the anonymous part is what one more sidecar costs."
    fi
    bad="$(awk -F'\t' 'NR > 1 && $5 > 0 {print $2 " round " $1 ": " $5}' "$results")"
    [[ -n "$bad" ]] && echo "Responses with an unexpected status: $bad."
    echo
    echo "| goal | target | measured | met |"
    echo "|---|---|---|---|"
    goals
    echo
    echo "Raw output: \`$out/raw/\` (wrk, tokengate-load and criterion per system and round), \`$results\`."
} >"$table"
if [[ -n "$profile_file" ]]; then
    {
        echo
        echo "Profile of the cached path, self time by function (\`$profile_file\`; event \`$event\`):"
        echo
        if [[ -n "$profile_before_file" ]]; then
            echo "Before (\`$profile_before_file\`):"
            echo
            echo '```'
            top_frames "$profile_before_file"
            echo '```'
            echo
            echo "After:"
            echo
        fi
        echo '```'
        top_frames "$profile_file"
        echo '```'
    } >>"$table"
fi

if [[ -n "$doc" ]]; then
    begin='<!-- make bench: begin -->'
    end='<!-- make bench: end -->'
    if grep -qF "$begin" "$doc" && grep -qF "$end" "$doc"; then
        awk -v b="$begin" -v e="$end" -v t="$table" '
            $0 == b {print; while ((getline line < t) > 0) print line; skip = 1; next}
            $0 == e {skip = 0}
            !skip {print}' "$doc" >"$work/doc.md"
        cp "$work/doc.md" "$doc"
        log "updated $doc"
    else
        log "$doc has no '$begin' / '$end' markers; the table is in $table"
    fi
fi
cat "$table"
