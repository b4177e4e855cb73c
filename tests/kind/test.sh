#!/usr/bin/env bash
# `make kind-test`: tokengate end to end on a kind cluster, as users run it. The steps are those
# of the node tier (tests/node.rs, tokengate_from_its_images_on_a_real_node, run by
# `make node-test` against a real kubelet, containerd and kube-proxy); each function below names the part of that
# test it mirrors. One step only this suite has: NetworkPolicy enforcement, which needs a CNI
# that enforces it (kindnet here).
#
# Needs kind v0.33, docker or podman, kubectl and helm (and podman and cargo for `make images`,
# unless SKIP_BUILD=1). The cluster is deleted at the end unless KEEP_CLUSTER=1; see README.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# The token of the provider's default client for the policy's audience (set by the requests
# step, used by the later ones).
TOKEN=""

# On exit: what the cluster looked like when a step failed, then the cluster deleted unless
# KEEP_CLUSTER=1. Note that a cluster of the same name that existed before is deleted too.
on_exit() {
    local rc=$?
    if ((rc != 0)); then
        dump_diagnostics
        log "FAILED (exit status $rc)"
    fi
    if [[ "${KEEP_CLUSTER:-0}" == 1 ]]; then
        log "KEEP_CLUSTER=1: cluster $CLUSTER_NAME left running (kubectl context $KUBE_CONTEXT);"
        log "delete it with: kind delete cluster --name $CLUSTER_NAME"
    else
        log "deleting cluster $CLUSTER_NAME (KEEP_CLUSTER=1 keeps it)"
        kind delete cluster --name "$CLUSTER_NAME" || true
    fi
    exit "$rc"
}

# node.rs: the Deployment rolled out and its pod injected ("the pod was not injected", the
# sidecar's image, the readiness probe rewritten to the application's port number).
injected_pod_ready() {
    wait_app_ready
    local pod
    pod="$(app_pod)"
    local init
    init="$(pod_field "$pod" '{.spec.initContainers[*].name}')"
    [[ " $init " == *" $SIDECAR_CONTAINER "* ]] ||
        die "pod $pod was not injected: its init containers are ${init:-none}"
    local sidecar="{.spec.initContainers[?(@.name==\"$SIDECAR_CONTAINER\")]"
    local image restart_policy ready
    image="$(pod_field "$pod" "$sidecar.image}")"
    [[ "$image" == "$SIDECAR_IMAGE" ]] || die "the sidecar runs $image, expected $SIDECAR_IMAGE"
    # A native sidecar: an init container the kubelet keeps running.
    restart_policy="$(pod_field "$pod" "$sidecar.restartPolicy}")"
    [[ "$restart_policy" == Always ]] ||
        die "the sidecar's restartPolicy is ${restart_policy:-unset}, expected Always (a native sidecar)"
    ready="$(pod_field "$pod" "{.status.initContainerStatuses[?(@.name==\"$SIDECAR_CONTAINER\")].ready}")"
    [[ "$ready" == true ]] || die "the sidecar of $pod is not Ready"
    # The kubelet probes the application on its number (the name moved to the sidecar).
    local probe_port
    probe_port="$(pod_field "$pod" '{.spec.containers[?(@.name=="app")].readinessProbe.httpGet.port}')"
    [[ "$probe_port" == "$APP_PORT" ]] ||
        die "the readiness probe was not rewritten to $APP_PORT: ${probe_port:-none}"
    log "ok: $pod runs $SIDECAR_CONTAINER ($image); the probe targets $APP_PORT"
    # The policy's status: it selects the pod, and the Service reaches it through the sidecar.
    wait_for "$TIMEOUT" "TokenPolicy orders to select 1 pod" policy_field_is '{.status.selectedPods}' 1
    wait_for "$TIMEOUT" "TokenPolicy orders to report Bypass=False" \
        policy_field_is '{.status.conditions[?(@.type=="Bypass")].status}' False
    k get tokenpolicy orders -n "$APP_NAMESPACE"
}

# policy_field_is JSONPATH VALUE: the field of TokenPolicy orders has VALUE.
policy_field_is() {
    [[ "$(k get tokenpolicy orders -n "$APP_NAMESPACE" -o jsonpath="$1")" == "$2" ]]
}

# node.rs: "From the host, through the ClusterIP Service" and "From a client pod, through the
# same Service": no token 401; a token 200 with the claim header and without the token; a token
# for another audience 401 with the reason in WWW-Authenticate; a route that needs a role 403.
# (A kind cluster's Services are reached from pods; the client pod stands in for both.)
requests_through_the_service() {
    # /healthz needs no token (authentication: Disabled); retried until the Service has its
    # endpoint programmed.
    eventually_status 200 request "$APP_URL/healthz"
    expect_status 401 request "$APP_URL/orders"

    TOKEN="$(get_token)"
    expect_status 200 request "$APP_URL/orders" "$TOKEN"
    local body
    body="$(body_of "$LAST_RESPONSE")"
    # The echo answers with what it received: the sub claim as X-User-Id...
    grep -qF "\"x-user-id\":[\"$TOKEN_SUBJECT\"]" <<<"$body" ||
        die "the application did not get the claim header X-User-Id: $(redact "$body")"
    # ...and not the token (forwardToken: false).
    if grep -qF "$TOKEN" <<<"$LAST_RESPONSE"; then
        die "the token reached the application although forwardToken is false"
    fi
    log "ok: the application got X-User-Id: $TOKEN_SUBJECT and no token"

    local other challenge
    other="$(get_token "$OTHER_AUDIENCE/.default")"
    expect_status 401 request "$APP_URL/orders" "$other"
    challenge="$(header_of "$LAST_RESPONSE" WWW-Authenticate)"
    [[ "${challenge,,}" == *audience* ]] ||
        die "no reason in the challenge: WWW-Authenticate: ${challenge:-absent}"
    log "ok: WWW-Authenticate: $challenge"

    # /admin/* requires role $ADMIN_ROLE, which the provider's tokens do not carry.
    expect_status 403 request "$APP_URL/admin/users" "$TOKEN"
}

# node.rs: "A TokenPolicy edit reaches the running sidecar: no restart, no new pod". The rule on
# /admin/* removed, the same token gets 200 there, from the same pod, with no restart.
policy_edit_reaches_the_running_sidecar() {
    local pod uid restarts
    pod="$(app_pod)"
    uid="$(pod_field "$pod" '{.metadata.uid}')"
    restarts="$(all_restarts "$pod")"
    k patch tokenpolicy orders -n "$APP_NAMESPACE" --type=json \
        -p '[{"op": "remove", "path": "/spec/rules/1"}]'
    eventually_status 200 request "$APP_URL/admin/users" "$TOKEN"
    [[ "$(app_pod)" == "$pod" ]] || die "the policy edit replaced pod $pod"
    [[ "$(pod_field "$pod" '{.metadata.uid}')" == "$uid" ]] || die "the policy edit recreated pod $pod"
    local now
    now="$(all_restarts "$pod")"
    [[ "$now" == "$restarts" ]] ||
        die "the policy edit restarted containers of $pod ($restarts restarts before, $now after)"
    # Still enforcing.
    expect_status 401 request "$APP_URL/orders"
    log "ok: the edit took effect in $pod without a restart ($now restarts)"
}

# node.rs: "Metrics, scraped from the pods as Prometheus does": the sidecar's admin port and
# every operator replica's admin port; then the operator's metrics Service.
metrics_scraped_from_the_pods() {
    local pod ip
    pod="$(app_pod)"
    ip="$(pod_field "$pod" '{.status.podIP}')"
    expect_status 200 request "http://$ip:$SIDECAR_ADMIN_PORT/metrics"
    local decision
    for decision in allow deny; do
        grep -Eq "^tokengate_requests_total\{.*decision=\"$decision\"" <<<"$LAST_RESPONSE" ||
            die "the sidecar's metrics have no tokengate_requests_total with decision=\"$decision\""
    done
    log "ok: sidecar metrics count allowed and denied requests"

    local operators operator port combined=""
    mapfile -t operators < <(k get pods -n "$RELEASE_NAMESPACE" -l "$OPERATOR_SELECTOR" \
        -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
    ((${#operators[@]} == 2)) || die "expected 2 operator pods, found ${#operators[@]}"
    for operator in "${operators[@]}"; do
        ip="$(pod_field "$operator" '{.status.podIP}' "$RELEASE_NAMESPACE")"
        port="$(pod_field "$operator" '{.spec.containers[?(@.name=="operator")].ports[?(@.name=="admin")].containerPort}' "$RELEASE_NAMESPACE")"
        [[ -n "$port" ]] || die "operator pod $operator names no admin port"
        expect_status 200 request "http://$ip:$port/metrics"
        grep -q '^tokengate_webhook_certificate_expiry_timestamp_seconds ' <<<"$LAST_RESPONSE" ||
            die "operator $operator serves no tokengate_webhook_certificate_expiry_timestamp_seconds"
        combined+="$LAST_RESPONSE"$'\n'
    done
    # The leader reconciled the policy; some replica answered the pod's admission.
    local metric
    for metric in tokengate_reconcile_total tokengate_admission_total; do
        grep -q "^$metric{" <<<"$combined" || die "no operator replica serves $metric"
    done
    log "ok: operator metrics from ${#operators[@]} replicas"

    local service
    service="$(k get services -n "$RELEASE_NAMESPACE" \
        -l "app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=operator-metrics" \
        -o jsonpath='{.items[0].metadata.name}:{.items[0].spec.ports[0].port}')"
    [[ "$service" == ?*:?* ]] || die "the chart rendered no operator metrics Service"
    expect_status 200 request "http://${service%%:*}.$RELEASE_NAMESPACE.svc.cluster.local:${service##*:}/metrics"
}

# sidecar_restarted POD BEFORE: the sidecar of POD has restarted more than BEFORE times.
sidecar_restarted() {
    local now
    now="$(sidecar_restarts "$1")" || return 1
    [[ "$now" =~ ^[0-9]+$ ]] && ((now > $2))
}

# node.rs: "The sidecar killed: the kubelet restarts it and it enforces the same policy again".
# The node tier kills the task with ctr; here crictl on the kind node (a container of the
# engine that runs kind) stops it at once (--timeout 0: SIGKILL, no grace period).
sidecar_killed_and_restarted() {
    local pod node before id
    pod="$(app_pod)"
    node="$(pod_field "$pod" '{.spec.nodeName}')"
    before="$(sidecar_restarts "$pod")"
    id="$(pod_field "$pod" "{.status.initContainerStatuses[?(@.name==\"$SIDECAR_CONTAINER\")].containerID}")"
    id="${id#containerd://}"
    [[ -n "$id" && -n "$node" ]] || die "no container id or node for the sidecar of $pod"
    log "killing container $id ($SIDECAR_CONTAINER of $pod) on node $node"
    "$ENGINE" exec "$node" crictl stop --timeout 0 "$id" >/dev/null
    wait_for "$TIMEOUT" "the sidecar of $pod to be restarted" sidecar_restarted "$pod" "$before"
    k wait "pod/$pod" -n "$APP_NAMESPACE" --for=condition=Ready --timeout="${TIMEOUT}s"
    [[ "$(app_pod)" == "$pod" ]] || die "pod $pod was replaced instead of its sidecar restarted"
    log "ok: the sidecar of $pod restarted ($before -> $(sidecar_restarts "$pod") restarts)"
    # Retried: the pod was briefly not Ready, so the Service briefly had no endpoint.
    eventually_status 401 request "$APP_URL/orders"
    expect_status 200 request "$APP_URL/orders" "$TOKEN"
}

# Only in this suite (the node tier checks that the NetworkPolicy exists and admits the right
# ports; its node cannot enforce NetworkPolicy). privateAccess.networkPolicy: the application's
# own port is closed to clients, the sidecar's ports and the Service still work.
network_policy_enforced() {
    k get networkpolicy "$NETWORK_POLICY" -n "$APP_NAMESPACE" -o wide
    # Control: this client reaches pod IPs directly where no policy applies (the provider).
    local idp_ip
    idp_ip="$(k get pods -n "$IDP_NAMESPACE" -l app=idp -o jsonpath='{.items[0].status.podIP}')"
    expect_status 200 request "http://$idp_ip:8080/.well-known/openid-configuration"

    local pod ip out
    pod="$(app_pod)"
    ip="$(pod_field "$pod" '{.status.podIP}')"
    # The application's port, around the sidecar: dropped or refused, so curl fails.
    if out="$(in_client curl -sS -i --max-time 5 "http://$ip:$APP_PORT/orders" 2>&1)"; then
        die "the application answered on $ip:$APP_PORT around the sidecar: $(redact "$out")"
    fi
    log "ok: $ip:$APP_PORT is closed to the client: $(tail -n 2 <<<"$out" | tr '\n' ' ')"
    # The sidecar's port on the same pod is open, and judges.
    expect_status 401 request "http://$ip:$SIDECAR_PROXY_PORT/orders"
    # The Service still works.
    expect_status 200 request "$APP_URL/orders" "$TOKEN"
}

# node.rs: "Entra mode": the policy switched to validate-azure-ad-token against the https
# provider. The sidecar fetches the tenant's keys over https, trusting the run's CA through the
# trust bundle the webhook mounted; an Entra token gets 200 with the calling application as
# X-Client-App, the generic provider's token 401.
entra_mode_over_https() {
    local entra_token
    entra_token="$(get_entra_token)"
    entra_policy_yaml | k apply -f -
    eventually_status 200 request "$APP_URL/orders" "$entra_token"
    grep -qF "\"x-client-app\":[\"$ENTRA_CLIENT\"]" <<<"$(body_of "$LAST_RESPONSE")" ||
        die "the application did not get X-Client-App: $(redact "$LAST_RESPONSE")"
    expect_status 401 request "$APP_URL/orders" "$TOKEN"
    log "ok: Entra mode over https with the trust bundle"
}

# node.rs: pod_firewall. privateAccess.podFirewall: the vault application's own port is closed
# by its pod's nftables rules (the tokengate-firewall init container), whatever the CNI; the
# sidecar's ports, the probes and its outbound calls still work; the Service that targets the
# port by number reaches nothing; the rules stay when the pod loses its labels and the policy
# is deleted. (The "without it" control is network_policy_enforced's: the provider's pod IP.)
pod_firewall() {
    k apply -f - <<EOF
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
metadata:
  name: vault
  namespace: $APP_NAMESPACE
spec:
  selector:
    matchLabels: {app: vault}
  validateJwt:
    openidConfigs:
      - url: "$ISSUER/.well-known/openid-configuration"
    audiences: ["$AUDIENCE"]
    issuers: ["$ISSUER"]
  rules:
    - {paths: ["/healthz"], authentication: Disabled}
  privateAccess:
    podFirewall: true
---
apiVersion: v1
kind: Service
metadata:
  name: vault
  namespace: $APP_NAMESPACE
spec:
  selector: {app: vault}
  ports:
    - {name: http, port: 80, targetPort: http}
---
apiVersion: v1
kind: Service
metadata:
  name: vault-direct
  namespace: $APP_NAMESPACE
spec:
  selector: {app: vault}
  ports:
    - {name: direct, port: 80, targetPort: $APP_PORT}
EOF
    echo_deployment_yaml vault | k apply -f -
    k rollout status deployment/vault -n "$APP_NAMESPACE" --timeout="${TIMEOUT}s"
    local pod ip out vault_url="http://vault.$APP_NAMESPACE.svc.cluster.local"
    pod="$(k get pods -n "$APP_NAMESPACE" -l app=vault -o jsonpath='{.items[0].metadata.name}')"
    ip="$(pod_field "$pod" '{.status.podIP}')"
    k logs -n "$APP_NAMESPACE" "$pod" -c tokengate-firewall
    [[ "$(pod_field "$pod" '{.spec.containers[0].readinessProbe.httpGet.path}')" == /app-health/app/readiness ]] ||
        die "the readiness probe of $pod does not go through the sidecar"
    eventually_status 200 request "$vault_url/healthz"
    expect_status 401 request "$vault_url/vault"
    expect_status 200 request "$vault_url/vault" "$TOKEN"
    expect_status 200 request "http://$ip:$SIDECAR_PROXY_PORT/vault" "$TOKEN"
    if out="$(in_client curl -sS -i --max-time 5 "http://$ip:$APP_PORT/vault" 2>&1)"; then
        die "the application answered on $ip:$APP_PORT around the sidecar: $(redact "$out")"
    fi
    if out="$(in_client curl -sS -i --max-time 5 "http://vault-direct.$APP_NAMESPACE.svc.cluster.local/vault" 2>&1)"; then
        die "the bypass Service reached the application: $(redact "$out")"
    fi
    k exec -n "$APP_NAMESPACE" "$pod" -c app -- "$TEST_IMAGE_BINARY" request "$ISSUER/.well-known/openid-configuration" |
        head -n 1 | grep -q ' 200' || die "the application's own outbound call failed"
    wait_for "$TIMEOUT" "the Bypass condition of vault to name the pod firewall" bypass_names_pod_firewall
    k label pod "$pod" -n "$APP_NAMESPACE" app=retired --overwrite
    k delete tokenpolicy vault -n "$APP_NAMESPACE" --wait=true
    sleep 3
    if out="$(in_client curl -sS -i --max-time 5 "http://$ip:$APP_PORT/vault" 2>&1)"; then
        die "after the labels and the policy went, $ip:$APP_PORT answered: $(redact "$out")"
    fi
    log "ok: the pod firewall closes $ip:$APP_PORT, and keeps it closed while the pod lives"
}

bypass_names_pod_firewall() {
    k get tokenpolicy vault -n "$APP_NAMESPACE" \
        -o jsonpath='{.status.conditions[?(@.type=="Bypass")].message}' | grep -q 'protected by pod firewall'
}

main() {
    require
    trap on_exit EXIT
    # node.rs: NodeCluster::start, a node with the image archives imported.
    run_step create_cluster
    run_step load_images
    # node.rs: "The chart, as a platform team installs it".
    run_step install_chart
    # node.rs: "The identity provider: a pod behind a Service, advertising the Service's address".
    run_step deploy_idp
    # node.rs: "The application, in a namespace opted in to injection, with its TokenPolicies".
    run_step deploy_app
    run_step injected_pod_ready
    run_step requests_through_the_service
    run_step policy_edit_reaches_the_running_sidecar
    run_step metrics_scraped_from_the_pods
    run_step sidecar_killed_and_restarted
    run_step network_policy_enforced
    run_step entra_mode_over_https
    run_step pod_firewall
    log "all steps passed"
}

main "$@"
