#!/usr/bin/env bash
# `make kind-demo`: the kind suite's setup (cluster, images, chart, identity provider, protected
# application), then a walkthrough to try by hand. The cluster stays up; see README.md.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# On failure: what the cluster looked like, and how to remove it. The cluster is never deleted
# here, so a failed setup can be inspected.
on_exit() {
    local rc=$?
    if ((rc != 0)); then
        dump_diagnostics
        log "FAILED (exit status $rc); the cluster is left as it is."
        log "delete it with: kind delete cluster --name $CLUSTER_NAME"
    fi
    exit "$rc"
}

walkthrough() {
    local kc="kubectl --context $KUBE_CONTEXT"
    local client="$kc exec -n $APP_NAMESPACE client -- curl -sS -i"
    # \$ below: printed for the reader's shell, not expanded here.
    cat <<EOF

tokengate is running in kind cluster "$CLUSTER_NAME" (kubectl context $KUBE_CONTEXT):
the operator in namespace $RELEASE_NAMESPACE, a test identity provider at $ISSUER,
and the echo application "orders" in namespace $APP_NAMESPACE, protected by TokenPolicy "orders".
Requests go from the pod "client" (curl) to the Service $APP_URL.

1. A token (client-credentials grant, audience $AUDIENCE), from the identity provider's pod:

   TOKEN="\$($kc exec -n $IDP_NAMESPACE deploy/idp -- $TEST_IMAGE_BINARY token --issuer $ISSUER)"

2. Through the Service, without and with the token:

   # 401: no token
   $client $APP_URL/orders
   # 200: the echo shows the headers it got, x-user-id: $TOKEN_SUBJECT among them (the token not)
   $client -H "Authorization: Bearer \$TOKEN" $APP_URL/orders
   # 403: /admin/* needs role $ADMIN_ROLE
   $client -H "Authorization: Bearer \$TOKEN" $APP_URL/admin/users
   # 200: /healthz needs no token
   $client $APP_URL/healthz

   A token for another audience is refused (401), with the reason in WWW-Authenticate:

   OTHER="\$($kc exec -n $IDP_NAMESPACE deploy/idp -- $TEST_IMAGE_BINARY token --issuer $ISSUER --scope $OTHER_AUDIENCE/.default)"
   $client -H "Authorization: Bearer \$OTHER" $APP_URL/orders

3. The TokenPolicy, its status and what the operator made of it:

   $kc get tokenpolicies -n $APP_NAMESPACE
   $kc describe tokenpolicy orders -n $APP_NAMESPACE
   $kc get networkpolicy $NETWORK_POLICY -n $APP_NAMESPACE -o yaml
   $kc get pods -n $APP_NAMESPACE -l app=orders -o jsonpath='{.items[0].spec.initContainers[*].name}'

   Edit it (e.g. remove the /admin/* rule) and the running sidecar follows, without a restart:

   $kc edit tokenpolicy orders -n $APP_NAMESPACE

4. Metrics of the sidecar (admin port $SIDECAR_ADMIN_PORT) and of the operator:

   $kc port-forward -n $APP_NAMESPACE deploy/orders $SIDECAR_ADMIN_PORT:$SIDECAR_ADMIN_PORT &
   curl -s http://127.0.0.1:$SIDECAR_ADMIN_PORT/metrics | grep '^tokengate_requests_total'

   $kc port-forward -n $RELEASE_NAMESPACE svc/$RELEASE-operator-metrics 8080:8080 &
   curl -s http://127.0.0.1:8080/metrics | grep '^tokengate_'

   (stop the port-forwards with: kill %1 %2)

5. The application's own port is closed to clients (privateAccess.networkPolicy): this times
   out, while the Service still answers.

   POD_IP="\$($kc get pods -n $APP_NAMESPACE -l app=orders -o jsonpath='{.items[0].status.podIP}')"
   $kc exec -n $APP_NAMESPACE client -- curl -sS --max-time 5 "http://\$POD_IP:$APP_PORT/"

6. When done:

   kind delete cluster --name $CLUSTER_NAME

EOF
}

main() {
    require
    trap on_exit EXIT
    run_step create_cluster
    run_step load_images
    run_step install_chart
    run_step deploy_idp
    run_step deploy_app
    run_step wait_app_ready
    walkthrough
}

main "$@"
