# shellcheck shell=bash
# Shared settings and functions of the kind suite, sourced by test.sh (`make kind-test`) and
# demo.sh (`make kind-demo`); not meant to be run on its own.
#
# The suite runs what users run: the images `make images` builds, loaded into a kind cluster,
# the chart installed with helm, and an application in a namespace opted in to injection,
# protected by a TokenPolicy whose keys come from a test identity provider running as a pod.
#
# Environment:
#   CLUSTER_NAME   kind cluster name (default tokengate; kubectl context kind-$CLUSTER_NAME)
#   SKIP_BUILD=1   use the archives already in target/images instead of running `make images`
#   KEEP_CLUSTER=1 (test.sh) leave the cluster running when the suite ends
#   KIND_EXPERIMENTAL_PROVIDER  docker or podman, as for kind itself; detected when unset
#   CURL_IMAGE     image of the client pod (default below; it needs curl and sleep)

# The settings are used by the scripts that source this file, not by this file alone.
# shellcheck disable=SC2034

# ----- settings --------------------------------------------------------------------------------

# The kind release cluster.yaml's node image belongs to.
KIND_VERSION="v0.33.0"
CLUSTER_NAME="${CLUSTER_NAME:-tokengate}"
KUBE_CONTEXT="kind-$CLUSTER_NAME"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
KIND_DIR="$REPO/tests/kind"
CHART_DIR="$REPO/charts/tokengate"
# `make images` (images/build.sh) saves one docker-archive per image here.
IMAGES_DIR="$REPO/target/images"
ARCHIVES=(tokengate-operator tokengate-sidecar tokengate-idp tokengate-echo)

# The chart: release, namespace, and the Helm values the suite sets (all in values.yaml).
RELEASE="tokengate"
RELEASE_NAMESPACE="tokengate-system"
# Label of the operator pods (the chart's selector labels).
OPERATOR_SELECTOR="app.kubernetes.io/name=tokengate,app.kubernetes.io/instance=$RELEASE,app.kubernetes.io/component=operator"

# The test identity provider: a pod behind the Service `idp`, advertising the Service's name as
# its issuer (--public-url), so tokens, discovery and keys all name the in-cluster address.
IDP_NAMESPACE="tokengate-idp"
ISSUER="http://idp.$IDP_NAMESPACE.svc.cluster.local"
# The test images hold their binary at this path (images/testkit.Containerfile). They have no
# shell, but exec of the binary itself works: `kubectl exec deploy/idp -- BINARY token ...`.
TEST_IMAGE_BINARY="/usr/local/bin/entrypoint"
# Audience of the provider's tokens by default (tokengate_testkit::idp::DEFAULT_AUDIENCE); the
# token subcommand asks for scope AUDIENCE/.default.
AUDIENCE="api://tokengate-tests"
# An audience the TokenPolicy does not accept.
OTHER_AUDIENCE="api://another-api"
# The client the provider registers when started without --client: tokens carry sub=demo.
TOKEN_SUBJECT="demo"

# The provider's Microsoft Entra personality, over https with a certificate from a CA made for
# the run (openssl, into ENTRA_DIR): a tenant, an API registered with it, and the authority (its
# Service) that the Entra-mode TokenPolicy names as authenticationEndpoint.
ENTRA_HOST="entra.$IDP_NAMESPACE.svc.cluster.local"
ENTRA_AUTHORITY="https://$ENTRA_HOST"
ENTRA_TENANT="8d2f6c1e-4b7a-4c3d-9e5f-1a2b3c4d5e6f"
ENTRA_API="6e74172b-be56-4843-9ff4-e66a39bb12e3"
# The one client application registered with it, the only one the policy admits.
ENTRA_CLIENT="11111111-2222-4333-8444-555555555555"
ENTRA_CLIENT_SECRET="storefront-secret"
ENTRA_DIR="$REPO/target/kind/entra"
# The chart's sidecar.trustBundle.configMap: this ConfigMap (key ca.crt) holds the CA, in the
# application's namespace for the sidecars and in the provider's for its token subcommand.
TRUST_BUNDLE="corp-ca"

# The application: the echo server in a namespace opted in to injection.
APP_NAMESPACE="demo"
APP_PORT=8080
APP_URL="http://orders.$APP_NAMESPACE.svc.cluster.local"
# The role the per-route rule on /admin/* requires; the provider's tokens never carry it.
ADMIN_ROLE="Orders.Admin"

# The injected sidecar (tokengate_policy::contract): a native sidecar (an init container with
# restartPolicy Always), its proxy port (takes over the application port's name) and its admin
# port (/live, /ready, /metrics).
SIDECAR_CONTAINER="tokengate-sidecar"
SIDECAR_PROXY_PORT=15080
SIDECAR_ADMIN_PORT=15081
# The NetworkPolicy the operator renders for a TokenPolicy with privateAccess.networkPolicy.
NETWORK_POLICY="tokengate-orders"

# The client pod runs curl (the test images have none). kind nodes pull it from Docker Hub, so
# the machine running the suite needs internet access; pinned for repeatable runs.
CURL_IMAGE="${CURL_IMAGE:-curlimages/curl:8.11.1}"

# Seconds to wait for rollouts, conditions, restarts and policy changes.
TIMEOUT=180

# ----- output ----------------------------------------------------------------------------------

log() { printf '[kind] %s\n' "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
# Prints "==> NAME" and runs the step NAME (a function) with the remaining arguments.
run_step() {
    printf '\n==> %s\n' "$1" >&2
    "$@"
}
# Tokens are long and are credentials: never print one whole.
redact() {
    sed -E 's/eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*/<token>/g' <<<"$*"
}

# ----- versions --------------------------------------------------------------------------------

# The chart's appVersion: the chart's default image tag, and the tag `make images` gives.
chart_app_version() {
    sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}[[:space:]]*$/\1/p' \
        "$CHART_DIR/Chart.yaml" | head -n1
}

# The workspace version in Cargo.toml, which images/build.sh tags the images with.
workspace_version() {
    sed -n '/^\[workspace\.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' "$REPO/Cargo.toml" | head -n1
}

VERSION="$(chart_app_version)"
[[ -n "$VERSION" ]] || die "no appVersion in $CHART_DIR/Chart.yaml"
# The product images under the chart's default repositories, so the chart needs no image values.
OPERATOR_IMAGE="ghcr.io/tokengate/tokengate-operator:$VERSION"
SIDECAR_IMAGE="ghcr.io/tokengate/tokengate-sidecar:$VERSION"
# The test images, never pulled (imagePullPolicy: Never).
IDP_IMAGE="localhost/tokengate/tokengate-idp:$VERSION"
ECHO_IMAGE="localhost/tokengate/tokengate-echo:$VERSION"

# ----- tools -----------------------------------------------------------------------------------

# kubectl against the suite's cluster only, whatever the current context is.
k() { kubectl --context "$KUBE_CONTEXT" "$@"; }

# The container engine kind runs its nodes with: KIND_EXPERIMENTAL_PROVIDER when set, else
# docker when its daemon answers, else podman. Exported back to kind so both agree.
ENGINE=""
detect_engine() {
    case "${KIND_EXPERIMENTAL_PROVIDER:-}" in
    docker | podman)
        ENGINE="$KIND_EXPERIMENTAL_PROVIDER"
        command -v "$ENGINE" >/dev/null 2>&1 ||
            die "KIND_EXPERIMENTAL_PROVIDER=$ENGINE, but $ENGINE is not installed"
        ;;
    "")
        if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
            ENGINE="docker"
        elif command -v podman >/dev/null 2>&1; then
            ENGINE="podman"
        else
            die "neither docker nor podman is available: install one (https://docs.docker.com/engine/install/ or https://podman.io/docs/installation)"
        fi
        ;;
    *) die "KIND_EXPERIMENTAL_PROVIDER=$KIND_EXPERIMENTAL_PROVIDER: the suite supports docker and podman" ;;
    esac
    export KIND_EXPERIMENTAL_PROVIDER="$ENGINE"
    log "container engine: $ENGINE"
}

# Checks every tool the suite needs and names all missing ones at once, with where to get them.
require() {
    local missing=()
    command -v kind >/dev/null 2>&1 ||
        missing+=("kind $KIND_VERSION: https://kind.sigs.k8s.io/docs/user/quick-start/#installation (or: go install sigs.k8s.io/kind@$KIND_VERSION)")
    command -v kubectl >/dev/null 2>&1 ||
        missing+=("kubectl: https://kubernetes.io/docs/tasks/tools/")
    command -v helm >/dev/null 2>&1 ||
        missing+=("helm 3: https://helm.sh/docs/intro/install/")
    command -v openssl >/dev/null 2>&1 ||
        missing+=("openssl, which makes the https provider's certificates (Debian: apt-get install openssl)")
    if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
        # `make images` builds with cargo and podman (images/build.sh), whatever engine runs kind.
        command -v make >/dev/null 2>&1 || missing+=("make (GNU make)")
        command -v cargo >/dev/null 2>&1 || missing+=("cargo: https://rustup.rs")
        command -v podman >/dev/null 2>&1 ||
            missing+=("podman, which \`make images\` builds with: https://podman.io/docs/installation (or set SKIP_BUILD=1 with the archives in target/images)")
    fi
    if ((${#missing[@]})); then
        local tool
        for tool in "${missing[@]}"; do
            log "missing: $tool"
        done
        die "install the missing tools and run again"
    fi
    detect_engine
    local have
    have="$(kind version 2>/dev/null | awk '{ print $2 }')"
    if [[ "$have" != "$KIND_VERSION" ]]; then
        log "warning: kind ${have:-of unknown version} found; the suite and its node image (cluster.yaml) are for kind $KIND_VERSION"
    fi
}

# ----- waiting ---------------------------------------------------------------------------------

# wait_for SECONDS WHAT CMD...: runs CMD every 2 seconds until it succeeds; dies after SECONDS.
wait_for() {
    local seconds="$1" what="$2"
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        ((SECONDS < deadline)) || die "timed out after ${seconds}s waiting for $what"
        sleep 2
    done
}

# ----- cluster ---------------------------------------------------------------------------------

# The kind cluster of cluster.yaml; an existing cluster of the same name is reused as it is.
create_cluster() {
    local clusters
    clusters="$(kind get clusters 2>/dev/null || true)"
    if grep -qxF "$CLUSTER_NAME" <<<"$clusters"; then
        log "kind cluster $CLUSTER_NAME exists; reusing it"
    else
        kind create cluster --name "$CLUSTER_NAME" --config "$KIND_DIR/cluster.yaml" --wait 120s
    fi
    k cluster-info >/dev/null || die "kubectl cannot reach the cluster (context $KUBE_CONTEXT)"
    k wait --for=condition=Ready nodes --all --timeout="${TIMEOUT}s"
    k get nodes -o wide
}

# The images of `make images` (unless SKIP_BUILD=1), loaded into every node's containerd.
load_images() {
    local built
    built="$(workspace_version)"
    if [[ -n "$built" && "$built" != "$VERSION" ]]; then
        die "images are tagged with the workspace version $built (Cargo.toml), the chart expects appVersion $VERSION (Chart.yaml): make them agree"
    fi
    if [[ "${SKIP_BUILD:-0}" == 1 ]]; then
        log "SKIP_BUILD=1: using the archives in $IMAGES_DIR as they are"
    else
        make -C "$REPO" images
    fi
    local name archive
    for name in "${ARCHIVES[@]}"; do
        archive="$IMAGES_DIR/$name.tar"
        [[ -s "$archive" ]] || die "$archive is missing: run \`make images\` (or unset SKIP_BUILD)"
        log "loading $archive"
        kind load image-archive "$archive" --name "$CLUSTER_NAME"
    done
    # Every image under the exact name the chart and the manifests use, on every node.
    local node image nodes
    mapfile -t nodes < <(kind get nodes --name "$CLUSTER_NAME")
    ((${#nodes[@]})) || die "kind lists no nodes of cluster $CLUSTER_NAME"
    for node in "${nodes[@]}"; do
        for image in "$OPERATOR_IMAGE" "$SIDECAR_IMAGE" "$IDP_IMAGE" "$ECHO_IMAGE"; do
            "$ENGINE" exec "$node" crictl inspecti "$image" >/dev/null 2>&1 ||
                die "$image is not on node $node after loading: are the archives from this version's \`make images\`?"
        done
    done
    log "images on ${#nodes[@]} node(s): $OPERATOR_IMAGE $SIDECAR_IMAGE $IDP_IMAGE $ECHO_IMAGE"
}

# ----- chart -----------------------------------------------------------------------------------

# The chart as a platform team installs it: images from the chart's defaults (loaded on the
# nodes, so IfNotPresent never pulls), two operator replicas, the webhook (on by default).
# Plain-http key sources are allowed because the generic test identity provider serves http;
# the sidecars trust the CA of the https one (its Entra personality) through the trust bundle.
install_chart() {
    helm upgrade --install "$RELEASE" "$CHART_DIR" \
        --kube-context "$KUBE_CONTEXT" \
        --namespace "$RELEASE_NAMESPACE" --create-namespace \
        --set operator.replicas=2 \
        --set webhook.allowHttpKeySources=true \
        --set sidecar.trustBundle.configMap="$TRUST_BUNDLE" \
        --wait --timeout 5m
    local ready
    ready="$(k get pods -n "$RELEASE_NAMESPACE" -l "$OPERATOR_SELECTOR" \
        -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' |
        grep -c '^True$' || true)"
    [[ "$ready" == 2 ]] || die "expected 2 Ready operator pods, found ${ready:-0}"
    k get pods -n "$RELEASE_NAMESPACE" -o wide
}

# ----- identity provider -----------------------------------------------------------------------

# The test identity provider (tokengate-idp): OIDC discovery, keys and a client-credentials
# token endpoint, reachable in the cluster at $ISSUER.
deploy_idp() {
    k apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $IDP_NAMESPACE
---
apiVersion: v1
kind: Service
metadata:
  name: idp
  namespace: $IDP_NAMESPACE
spec:
  selector: {app: idp}
  ports:
    - {name: http, port: 80, targetPort: http}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: idp
  namespace: $IDP_NAMESPACE
spec:
  replicas: 1
  selector:
    matchLabels: {app: idp}
  template:
    metadata:
      labels: {app: idp}
    spec:
      containers:
        - name: idp
          image: $IDP_IMAGE
          imagePullPolicy: Never
          # --public-url: the base URL clients reach the provider at (the Service), so the
          # issuer and the discovery document's URLs are the in-cluster address.
          args: ["--listen", "0.0.0.0:8080", "--public-url", "$ISSUER"]
          ports:
            - {name: http, containerPort: 8080}
          readinessProbe:
            httpGet: {path: /.well-known/openid-configuration, port: http}
            periodSeconds: 2
EOF
    k rollout status deployment/idp -n "$IDP_NAMESPACE" --timeout="${TIMEOUT}s"
    deploy_entra
}

# A CA for the run and a serving certificate for $ENTRA_HOST signed by it, in $ENTRA_DIR
# (ca.crt, tls.crt, tls.key).
make_entra_certificates() {
    local dir="$ENTRA_DIR"
    mkdir -p "$dir"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
        -subj "/CN=tokengate kind suite CA" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$ENTRA_HOST" \
        -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
    printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' \
        "$ENTRA_HOST" >"$dir/tls.ext"
    openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 2 -extfile "$dir/tls.ext" -out "$dir/tls.crt" 2>/dev/null
}

# trust_bundle NAMESPACE: the trust bundle ConfigMap, with the run's CA, in NAMESPACE.
trust_bundle() {
    k create configmap "$TRUST_BUNDLE" -n "$1" --from-file=ca.crt="$ENTRA_DIR/ca.crt" \
        --dry-run=client -o yaml | k apply -f -
}

# The provider's Entra personality at $ENTRA_AUTHORITY, serving https with a certificate of a
# CA made here; the CA goes into the trust bundle of the provider's namespace (and, in
# deploy_app, of the application's). node.rs: "Its Entra personality over https".
deploy_entra() {
    make_entra_certificates
    k create secret tls entra-tls -n "$IDP_NAMESPACE" \
        --cert "$ENTRA_DIR/tls.crt" --key "$ENTRA_DIR/tls.key" \
        --dry-run=client -o yaml | k apply -f -
    trust_bundle "$IDP_NAMESPACE"
    k apply -f - <<EOF
apiVersion: v1
kind: Service
metadata:
  name: entra
  namespace: $IDP_NAMESPACE
spec:
  selector: {app: entra}
  ports:
    - {name: https, port: 443, targetPort: https}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: entra
  namespace: $IDP_NAMESPACE
spec:
  replicas: 1
  selector:
    matchLabels: {app: entra}
  template:
    metadata:
      labels: {app: entra}
    spec:
      containers:
        - name: idp
          image: $IDP_IMAGE
          imagePullPolicy: Never
          args: ["--listen", "0.0.0.0:8443", "--public-url", "$ENTRA_AUTHORITY",
            "--entra-tenant", "$ENTRA_TENANT", "--entra-api", "$ENTRA_API",
            "--client", "$ENTRA_CLIENT:$ENTRA_CLIENT_SECRET",
            "--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key"]
          ports:
            - {name: https, containerPort: 8443}
          readinessProbe:
            tcpSocket: {port: https}
            periodSeconds: 2
          volumeMounts:
            - {name: tls, mountPath: /tls, readOnly: true}
            - {name: ca, mountPath: /ca, readOnly: true}
      volumes:
        - {name: tls, secret: {secretName: entra-tls}}
        - {name: ca, configMap: {name: $TRUST_BUNDLE}}
EOF
    k rollout status deployment/entra -n "$IDP_NAMESPACE" --timeout="${TIMEOUT}s"
}

# An Entra access token (v2.0) for the API, from the https provider's pod.
get_entra_token() {
    local token
    token="$(k exec -n "$IDP_NAMESPACE" deploy/entra -- "$TEST_IMAGE_BINARY" token \
        --issuer "$ENTRA_AUTHORITY/$ENTRA_TENANT/v2.0" --scope "$ENTRA_API/.default" \
        --ca-file /ca/ca.crt --client-id "$ENTRA_CLIENT" --client-secret "$ENTRA_CLIENT_SECRET")" ||
        die "no token from the Entra provider"
    token="${token//[[:space:]]/}"
    [[ "$token" == *.*.* ]] || die "the Entra provider printed no JWT: $token"
    printf '%s\n' "$token"
}

# get_token [SCOPE]: a client-credentials token from the provider's pod, for SCOPE
# (<resource>/.default; default the TokenPolicy's audience). Prints the token.
get_token() {
    local scope="${1:-$AUDIENCE/.default}" token
    token="$(k exec -n "$IDP_NAMESPACE" deploy/idp -- \
        "$TEST_IMAGE_BINARY" token --issuer "$ISSUER" --scope "$scope")" ||
        die "no token for scope $scope from the identity provider"
    token="${token//[[:space:]]/}"
    [[ "$token" == *.*.* ]] || die "the identity provider printed no JWT for scope $scope: $token"
    printf '%s\n' "$token"
}

# ----- application -----------------------------------------------------------------------------

# orders_policy_yaml VALIDATION CLAIM HEADER [RULES]: the application's TokenPolicy with the
# validator VALIDATION (YAML at the spec's indentation), claim CLAIM passed on as HEADER (the
# token itself withheld), /healthz open, further RULES (YAML), and the application's own port
# closed to everything but the sidecar by a NetworkPolicy.
orders_policy_yaml() {
    cat <<EOF
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
metadata:
  name: orders
  namespace: $APP_NAMESPACE
spec:
  selector:
    matchLabels: {app: orders}
$1
  forwarding:
    forwardToken: false
    claimsToHeaders:
      - {claim: $2, header: $3}
  rules:
    - {paths: ["/healthz"], authentication: Disabled}
${4:-}
  privateAccess:
    networkPolicy: true
EOF
}

# Tokens of the test provider for its default audience, the subject as X-User-Id, /admin/* only
# with role $ADMIN_ROLE (403 otherwise).
policy_yaml() {
    orders_policy_yaml "  validateJwt:
    openidConfigs:
      - url: \"$ISSUER/.well-known/openid-configuration\"
    audiences: [\"$AUDIENCE\"]
    issuers: [\"$ISSUER\"]" sub X-User-Id "    - paths: [\"/admin/*\"]
      requiredClaims:
        - {name: roles, values: [\"$ADMIN_ROLE\"]}"
}

# Entra mode (validate-azure-ad-token) against the https provider: v2.0 tokens of the tenant for
# the API from the one client application, passed on as X-Client-App.
entra_policy_yaml() {
    orders_policy_yaml "  validateAzureAdToken:
    tenantId: \"$ENTRA_TENANT\"
    authenticationEndpoint: \"$ENTRA_AUTHORITY\"
    backendApplicationIds: [\"$ENTRA_API\"]
    clientApplicationIds: [\"$ENTRA_CLIENT\"]" azp X-Client-App
}

# The application in a namespace opted in to injection: its TokenPolicy first (so the sidecar
# finds its bundle), its Service, the client pod, then the Deployment.
deploy_app() {
    k apply -f - <<EOF
apiVersion: v1
kind: Namespace
metadata:
  name: $APP_NAMESPACE
  labels:
    tokengate.dev/injection: enabled
EOF
    # The trust bundle the chart names: injected pods wait for it.
    trust_bundle "$APP_NAMESPACE"
    policy_yaml | k apply -f -
    k wait tokenpolicy/orders -n "$APP_NAMESPACE" --for=condition=Ready --timeout="${TIMEOUT}s"
    # The operator fetched the provider's discovery document and keys.
    k wait tokenpolicy/orders -n "$APP_NAMESPACE" --for=condition=KeysResolved --timeout="${TIMEOUT}s"
    k apply -f - <<EOF
apiVersion: v1
kind: Service
metadata:
  name: orders
  namespace: $APP_NAMESPACE
spec:
  selector: {app: orders}
  ports:
    # By name: once injected, the name "http" is the sidecar's proxy port.
    - {name: http, port: 80, targetPort: http}
---
# The client: curl in a pod that stays up, opted out of injection. Requests run in it with
# kubectl exec (faster and steadier than a pod per request with kubectl run --rm -i).
apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: $APP_NAMESPACE
  labels:
    app: client
    tokengate.dev/inject: "false"
spec:
  terminationGracePeriodSeconds: 1
  containers:
    - name: client
      image: $CURL_IMAGE
      imagePullPolicy: IfNotPresent
      command: ["sleep", "86400"]
EOF
    echo_deployment_yaml orders | k apply -f -
}

# A one-replica Deployment NAME of the echo application (label app=NAME, port "http") in the
# application namespace. The echo answers every request with 200. The webhook rewrites probes
# that name the protected port to its number (or, with the pod firewall, sends them through
# the sidecar), so the kubelet keeps probing the application itself.
echo_deployment_yaml() {
    local name="$1"
    cat <<EOF
apiVersion: apps/v1
kind: Deployment
metadata:
  name: $name
  namespace: $APP_NAMESPACE
spec:
  replicas: 1
  selector:
    matchLabels: {app: $name}
  template:
    metadata:
      labels: {app: $name}
    spec:
      containers:
        - name: app
          image: $ECHO_IMAGE
          imagePullPolicy: Never
          args: ["--listen", "0.0.0.0:$APP_PORT"]
          ports:
            - {name: http, containerPort: $APP_PORT}
          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 2
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 5
EOF
}

# The application's pods, not being deleted, one name a line.
app_pods() {
    k get pods -n "$APP_NAMESPACE" -l app=orders -o go-template \
        --template '{{range .items}}{{if not .metadata.deletionTimestamp}}{{.metadata.name}}{{"\n"}}{{end}}{{end}}'
}

one_app_pod() { [[ "$(app_pods | grep -c . || true)" == 1 ]]; }

# The one pod of the application (after wait_app_ready).
app_pod() {
    local pods
    pods="$(app_pods)"
    [[ -n "$pods" && "$pods" != *$'\n'* ]] || die "expected one pod of app=orders, found: ${pods:-none}"
    printf '%s\n' "$pods"
}

# pod_field POD JSONPATH [NAMESPACE]
pod_field() {
    k get pod "$1" -n "${3:-$APP_NAMESPACE}" -o jsonpath="$2"
}

# Restarts of the sidecar of POD (a native sidecar: among the init container statuses).
sidecar_restarts() {
    local count
    count="$(pod_field "$1" "{.status.initContainerStatuses[?(@.name==\"$SIDECAR_CONTAINER\")].restartCount}")"
    printf '%s\n' "${count:-0}"
}

# Restarts of every container of POD, summed.
all_restarts() {
    pod_field "$1" '{.status.initContainerStatuses[*].restartCount} {.status.containerStatuses[*].restartCount}' |
        awk '{ for (i = 1; i <= NF; i++) sum += $i } END { print sum + 0 }'
}

# The application rolled out (one Ready pod) and the client pod Ready.
wait_app_ready() {
    k rollout status deployment/orders -n "$APP_NAMESPACE" --timeout="${TIMEOUT}s"
    wait_for "$TIMEOUT" "one pod of app=orders (old ones gone)" one_app_pod
    k wait "pod/$(app_pod)" -n "$APP_NAMESPACE" --for=condition=Ready --timeout="${TIMEOUT}s"
    k wait pod/client -n "$APP_NAMESPACE" --for=condition=Ready --timeout="${TIMEOUT}s"
    k get pods -n "$APP_NAMESPACE" -o wide
}

# ----- requests --------------------------------------------------------------------------------

# in_client CMD...: runs CMD in the client pod.
in_client() {
    k exec -n "$APP_NAMESPACE" client -- "$@"
}

# request URL [TOKEN]: one GET from the client pod; prints status line, headers and body.
request() {
    local url="$1" token="${2:-}"
    if [[ -n "$token" ]]; then
        in_client curl -sS -i --max-time 10 -H "Authorization: Bearer $token" "$url"
    else
        in_client curl -sS -i --max-time 10 "$url"
    fi
}

# The status code of a response (the first HTTP status line), empty when there is none.
# (Carriage returns stripped by expansion: no pipe whose writer an early awk exit could kill.)
status_of() {
    awk '/^HTTP\/[0-9.]+ [0-9][0-9][0-9]/ { print $2; exit }' <<<"${1//$'\r'/}"
}

# header_of RESPONSE NAME: the value of header NAME (any case) of a response.
header_of() {
    local want
    want="$(tr '[:upper:]' '[:lower:]' <<<"$2")"
    awk -v want="$want" '
        !head && /^HTTP\// { head = 1; next }
        head && /^$/ { exit }
        head {
            i = index($0, ":")
            if (i && tolower(substr($0, 1, i - 1)) == want) {
                v = substr($0, i + 1); sub(/^[ \t]+/, "", v); print v; exit
            }
        }' <<<"${1//$'\r'/}"
}

# The body of a response (after the headers).
body_of() {
    awk 'body { print; next } /^HTTP\// { head = 1; next } head && /^$/ { body = 1 }' <<<"${1//$'\r'/}"
}

# The last response expect_status or eventually_status saw, and its status.
LAST_RESPONSE=""
LAST_STATUS=""

# try_status WANT CMD...: runs CMD (a request), records its response; succeeds when its status
# is WANT.
try_status() {
    local want="$1"
    shift
    LAST_RESPONSE="$("$@" 2>&1)" || true
    LAST_STATUS="$(status_of "$LAST_RESPONSE")"
    [[ "$LAST_STATUS" == "$want" ]]
}

status_failure() {
    local want="$1"
    shift
    log "FAILED: $(redact "$*")"
    log "  expected status $want, got ${LAST_STATUS:-no HTTP response}:"
    redact "$LAST_RESPONSE" | sed 's/^/    /' >&2
    die "unexpected response"
}

# expect_status WANT CMD...: CMD's response must have status WANT; prints what it got.
expect_status() {
    local want="$1"
    shift
    try_status "$want" "$@" || status_failure "$want" "$@"
    log "ok: $want from $(redact "$*")"
}

# eventually_status WANT CMD...: like expect_status, retrying for up to $TIMEOUT seconds (for
# changes that take a moment to reach the sidecar, or a Service to have its endpoint again).
eventually_status() {
    local want="$1"
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until try_status "$want" "$@"; do
        ((SECONDS < deadline)) || status_failure "$want" "$@"
        sleep 2
    done
    log "ok: $want from $(redact "$*")"
}

# ----- diagnostics -----------------------------------------------------------------------------

# What the cluster looks like, for a failed run. Never fails itself.
dump_diagnostics() {
    log "----- diagnostics"
    {
        k get nodes -o wide
        k get pods -A -o wide
        k get tokenpolicies -A -o wide
        k describe tokenpolicy -n "$APP_NAMESPACE"
        k get networkpolicies -A
        k get events -n "$APP_NAMESPACE" --sort-by=.lastTimestamp | tail -n 30
        k logs -n "$RELEASE_NAMESPACE" -l "$OPERATOR_SELECTOR" --prefix --tail=40
        k logs -n "$APP_NAMESPACE" -l app=orders -c "$SIDECAR_CONTAINER" --prefix --tail=40
        k logs -n "$IDP_NAMESPACE" deploy/idp --tail=20
        k logs -n "$IDP_NAMESPACE" deploy/entra --tail=20
    } >&2 || true
}
