#!/usr/bin/env bash
# The host side of the node tier (testkit/src/cluster/node.rs): what a real node needs from the
# machine, and putting the machine back as it was.
#
#   node.sh install           Debian packages the node runs on (containerd, runc, CNI plugins,
#                             conntrack, iptables) and builds its images with (podman)
#   node.sh setup DIR         the node's bridge and its address, forwarding on that bridge only
#   node.sh cleanup KUBE_PROXY stops what the node left running and removes what it wrote: the
#                             pods' processes, containerd's shims, mounts under its DIR, network
#                             namespaces, iptables chains (KUBE_PROXY --cleanup,
#                             and the kubelet's own), the bridge, the kubepods cgroups, the host
#                             paths the tools write whatever their configuration says
#
# Addresses: the bridge carries the node's address (the API server listens there too) and is
# the pods' gateway; the pod range and the service range are routed only between the host and
# the pods, with no masquerade, so nothing a pod sends can leave this machine.
#
# Cleanup is idempotent and runs at the end of the tests, from the test harness's watchdog if
# the test binary dies, and before a node starts (leftovers of a run that was killed outright).
# What it needs to know survives the test's directory in STATE: the node's DIR and which of the
# HOST_PATHS existed before the first node started.
set -uo pipefail

BRIDGE=tgnode0
NODE_CIDR=10.89.0.1/16
STATE=/run/tokengate-node

log() { printf '[node] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Paths containerd and the kubelet write whatever their configuration says. Each is removed at
# cleanup unless it existed before the first setup (recorded in STATE/host-paths-before).
HOST_PATHS=(/var/lib/kubelet /run/containerd /var/lib/cni /var/log/pods /var/log/containers
    /etc/cni/net.d /opt/cni /var/lib/containerd /run/netns /var/run/netns)

# Kernel settings the kubelet and kube-proxy change on start (the kubelet's "kernel tunables",
# kube-proxy's conntrack timeouts); recorded before the first node starts, restored at cleanup.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
    kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.conf.all.route_localnet
    net.netfilter.nf_conntrack_max net.netfilter.nf_conntrack_tcp_timeout_established
    net.netfilter.nf_conntrack_tcp_timeout_close_wait)

install() {
    local missing=() tool package
    for pair in containerd:containerd runc:runc conntrack:conntrack iptables:iptables \
        podman:podman ip:iproute2; do
        tool="${pair%%:*}" package="${pair#*:}"
        command -v "$tool" >/dev/null 2>&1 || missing+=("$package")
    done
    [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
    if ((${#missing[@]})); then
        command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get to install them"
        log "installing ${missing[*]} from Debian"
        apt-get update -qq || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null ||
            die "apt-get install ${missing[*]} failed"
    fi
}

setup() {
    local dir="$1"
    [[ "$(id -u)" == 0 ]] || die "the node tier runs as root (it starts a kubelet)"
    mkdir -p "$dir" "$STATE"
    if [[ ! -f "$STATE/host-paths-before" ]]; then
        local path
        for path in "${HOST_PATHS[@]}"; do
            if [[ -e "$path" || -L "$path" ]]; then echo "$path"; fi
        done >"$STATE/host-paths-before"
    fi
    if [[ ! -f "$STATE/sysctls-before" ]]; then
        local key value
        for key in "${SYSCTLS[@]}"; do
            if value="$(sysctl -n "$key" 2>/dev/null)"; then echo "$key=$value"; fi
        done >"$STATE/sysctls-before"
    fi
    echo "$dir" >"$STATE/dir"
    ip link add "$BRIDGE" type bridge || die "creating bridge $BRIDGE"
    ip addr add "$NODE_CIDR" dev "$BRIDGE" || die "addressing bridge $BRIDGE"
    ip link set "$BRIDGE" up || die "bringing up bridge $BRIDGE"
    # Forwarding for packets that arrive on the bridge only (a pod calling a ClusterIP that
    # kube-proxy translates to another pod): the machine's other interfaces keep their setting,
    # and the setting leaves with the bridge.
    sysctl -qw "net.ipv4.conf.$BRIDGE.forwarding=1" || die "enabling forwarding on $BRIDGE"
}

# Kills every process in the kubepods cgroups (the pods' containers) and containerd's shims for
# this DIR's containerd, then removes those cgroups, deepest first.
stop_pods() {
    local dir="$1" controller procs pid
    for controller in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [[ -d "$controller" ]] || continue
        while IFS= read -r procs; do
            while IFS= read -r pid; do
                [[ -n "$pid" ]] && kill -9 "$pid" 2>/dev/null
            done <"$procs"
        done < <(find "$controller" -name cgroup.procs 2>/dev/null)
    done
    pkill -9 -f "containerd-shim.*$dir/" 2>/dev/null
    sleep 0.5
    for controller in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
        [[ -d "$controller" ]] || continue
        find "$controller" -depth -type d -exec rmdir {} + 2>/dev/null
    done
}

unmount_under() {
    local root="$1" mountpoint
    # Deepest first; lazily, so a mount still busy for a moment does not stop the rest.
    while IFS= read -r mountpoint; do
        umount -l "$mountpoint" 2>/dev/null
    done < <(awk -v r="$root/" 'index($2, r) == 1 { print $2 }' /proc/self/mounts | sort -r)
}

remove_iptables_chains() {
    local kube_proxy="$1" cmd table chain
    if [[ -x "$kube_proxy" ]]; then
        "$kube_proxy" --cleanup >/dev/null 2>&1
    fi
    # The kubelet's own chains, which kube-proxy --cleanup leaves.
    for cmd in iptables ip6tables; do
        command -v "$cmd" >/dev/null 2>&1 || continue
        for table in filter nat mangle; do
            while IFS= read -r chain; do
                # Rules that jump to the chain first, then the chain.
                "$cmd" -t "$table" -S 2>/dev/null | grep -E -- "-j $chain( |$)" |
                    sed 's/^-A /-D /' | while IFS= read -r rule; do
                    # shellcheck disable=SC2086 # a rule is a list of arguments
                    "$cmd" -t "$table" $rule 2>/dev/null
                done
                "$cmd" -t "$table" -F "$chain" 2>/dev/null
                "$cmd" -t "$table" -X "$chain" 2>/dev/null
            done < <("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && $2 ~ /^KUBE-/ { print $2 }')
        done
    done
}

cleanup() {
    local kube_proxy="${1:-}" dir=""
    [[ -f "$STATE/dir" ]] && dir="$(cat "$STATE/dir")"
    if [[ -n "$dir" ]]; then
        stop_pods "$dir"
        unmount_under "$dir"
    fi
    remove_iptables_chains "$kube_proxy"
    if ip link show "$BRIDGE" >/dev/null 2>&1; then
        ip link delete "$BRIDGE" 2>/dev/null || log "could not delete bridge $BRIDGE"
    fi
    # Connection tracking entries of the pod range (kube-proxy would keep stale NAT otherwise).
    command -v conntrack >/dev/null 2>&1 && conntrack -D -s 10.89.0.0/16 >/dev/null 2>&1
    local path
    for path in "${HOST_PATHS[@]}"; do
        if [[ -f "$STATE/host-paths-before" ]] && grep -qxF "$path" "$STATE/host-paths-before"; then
            continue
        fi
        if [[ -e "$path" || -L "$path" ]]; then
            unmount_under "$path"
            rm -rf -- "$path" 2>/dev/null
        fi
    done
    if [[ -f "$STATE/sysctls-before" ]]; then
        local setting
        while IFS= read -r setting; do
            [[ "$(sysctl -n "${setting%%=*}" 2>/dev/null)" == "${setting#*=}" ]] ||
                sysctl -qw "$setting" 2>/dev/null || log "could not restore $setting"
        done <"$STATE/sysctls-before"
    fi
    rm -rf -- "$STATE"
    return 0
}

case "${1:-}" in
install) install ;;
setup) setup "${2:?setup DIR}" ;;
cleanup) cleanup "${2:-}" ;;
*) die "usage: node.sh install | setup DIR | cleanup [KUBE_PROXY]" ;;
esac
