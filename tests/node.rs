//! tokengate as users run it: from its images, on a real node. A control plane and a node
//! (containerd, kubelet, kube-scheduler, kube-proxy; `tokengate_testkit::cluster::node`) start
//! on this machine, the images are imported into containerd, the chart is installed with helm
//! (the operator's image, two replicas, the webhook, a trust bundle), and the identity provider
//! (plain http, and its Entra personality over https with a private CA) and the application run
//! as pods. Requests reach the application through its ClusterIP Service, from the host and
//! from a client pod, and the injected sidecar decides.
//!
//! Needs root, the image archives in `target/images` (`TOKENGATE_IMAGES_DIR`; `make test` and
//! `make node-test` build them from the test build's binaries, `make images` from release
//! ones), `make node` (`TOKENGATE_NODE_BIN`) and `make controlplane kubectl helm`. Part of
//! `make test`; `make node-test` runs it alone.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::Api;
use kube::api::ListParams;
use serde_json::Value;
use tokengate_policy::contract;
use tokengate_testkit::cluster::node::NodeCluster;
use tokengate_testkit::cluster::pki::CertificateAuthority;
use tokengate_testkit::cluster::wait_until;
use tokengate_testkit::{dashboard, metrics};
use tokengate_tests::support::*;

fn sidecar_status(pod: &Pod) -> Option<k8s_openapi::api::core::v1::ContainerStatus> {
    let status = pod.status.as_ref()?;
    // A native sidecar (restartable init container) or, on old clusters, a plain container.
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == contract::SIDECAR_CONTAINER)
        .cloned()
}

/// The identity provider's Microsoft Entra personality, serving https with the certificate in
/// Secret `entra-tls` (issued for its Service's address) and `--public-url` as the authority.
/// The CA it chains to is mounted too, for `token --ca-file` from inside the pod.
fn entra_idp_yaml(namespace: &str, authority: &str) -> String {
    let client = format!("{ENTRA_CLIENT}:{ENTRA_CLIENT_SECRET}");
    deployment_yaml(
        namespace,
        "entra",
        "idp",
        &test_image("tokengate-idp"),
        &[
            "--public-url",
            authority,
            "--entra-tenant",
            ENTRA_TENANT,
            "--entra-api",
            ENTRA_API,
            "--client",
            &client,
            "--tls-cert",
            "/tls/tls.crt",
            "--tls-key",
            "/tls/tls.key",
        ],
        "          readinessProbe:
            tcpSocket: {port: http}
            periodSeconds: 1
          volumeMounts:
            - {name: tls, mountPath: /tls, readOnly: true}
            - {name: ca, mountPath: /ca, readOnly: true}
",
        &format!(
            "      volumes:
        - {{name: tls, secret: {{secretName: entra-tls}}}}
        - {{name: ca, configMap: {{name: {TRUST_BUNDLE}}}}}
"
        ),
    )
}

/// The Entra tenant and the API registered with it.
const ENTRA_TENANT: &str = "8d2f6c1e-4b7a-4c3d-9e5f-1a2b3c4d5e6f";
const ENTRA_API: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
/// The one client application registered with it, the only one the policy admits.
const ENTRA_CLIENT: &str = "11111111-2222-4333-8444-555555555555";
const ENTRA_CLIENT_SECRET: &str = "storefront-secret";
/// The ConfigMap of the chart's `sidecar.trustBundle.configMap`, in every namespace involved.
const TRUST_BUNDLE: &str = "corp-ca";

/// The `orders` TokenPolicy: `validation` (the validator's YAML, at the spec's indentation),
/// claim `claim` passed on as `header` (the token withheld), /healthz open, `rules` (further
/// rules' YAML) and private access.
fn orders_policy_yaml(
    namespace: &str,
    validation: &str,
    (claim, header): (&str, &str),
    rules: &str,
) -> String {
    format!(
        "apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
metadata:
  name: orders
  namespace: {namespace}
spec:
  selector:
    matchLabels: {{app: orders}}
{validation}  forwarding:
    forwardToken: false
    claimsToHeaders:
      - {{claim: {claim}, header: {header}}}
  rules:
    - {{paths: [\"/healthz\"], authentication: Disabled}}
{rules}  privateAccess:
    networkPolicy: true
"
    )
}

/// Tokens of the generic provider at `issuer` for its default audience; /admin/* needs
/// `admin_role`.
fn orders_jwt_policy_yaml(namespace: &str, issuer: &str, admin_role: &str) -> String {
    orders_policy_yaml(
        namespace,
        &format!(
            "  validateJwt:
    openidConfigs:
      - url: {issuer}/.well-known/openid-configuration
    audiences: [{audience}]
    issuers: [{issuer}]
",
            audience = tokengate_testkit::idp::DEFAULT_AUDIENCE,
        ),
        ("sub", "X-User-Id"),
        &format!(
            "    - paths: [\"/admin/*\"]
      requiredClaims:
        - {{name: roles, values: [{admin_role}]}}
"
        ),
    )
}

/// Entra mode (validate-azure-ad-token) against the https `authority`.
fn orders_entra_policy_yaml(namespace: &str, authority: &str) -> String {
    orders_policy_yaml(
        namespace,
        &format!(
            "  validateAzureAdToken:
    tenantId: {ENTRA_TENANT}
    authenticationEndpoint: {authority}
    backendApplicationIds: [{ENTRA_API}]
    clientApplicationIds: [{ENTRA_CLIENT}]
"
        ),
        ("azp", "X-Client-App"),
        "",
    )
}

fn client_pod_yaml(namespace: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: client
  namespace: {namespace}
  labels: {{{inject}: \"false\"}}
spec:
  containers:
    - name: client
      image: {image}
      imagePullPolicy: Never
      args: [\"--listen\", \"0.0.0.0:8080\"]
",
        inject = contract::POD_INJECT_LABEL,
        image = test_image("tokengate-echo"),
    )
}

fn restart_count(pod: &Pod) -> i32 {
    sidecar_status(pod).map_or(0, |s| s.restart_count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root, the images and `make node`: run by `make test` and `make node-test`"]
async fn tokengate_from_its_images_on_a_real_node() {
    let node = start_node().await.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "control plane started in {:.1}s; node Ready {:.1}s later",
        node.control_plane().startup_time().as_secs_f64(),
        node.startup_time().as_secs_f64()
    );
    let result = scenario(&node).await;
    if let Err(e) = result {
        panic!("{e:#}\n----- logs:\n{}", node.log_tails(40));
    }
    drop(node);
}

async fn scenario(node: &NodeCluster) -> Result<()> {
    let cp = node.control_plane();
    let client = cp.client().await?;
    let tools = Tools::new(cp)?;

    // The chart, as a platform team installs it: images from the chart's defaults (present on
    // the node, so IfNotPresent never pulls), two operator replicas, the webhook. Plain-http
    // key sources are allowed because the generic test identity provider serves http; the
    // sidecars trust the private CA of the https one (its Entra personality) through the
    // trust bundle ConfigMap.
    let installed = Instant::now();
    tools
        .helm
        .run([
            "install",
            "tokengate",
            repo().join("charts/tokengate").to_str().expect("UTF-8"),
            "--namespace",
            "tokengate-system",
            "--create-namespace",
            "--set",
            &format!(
                "operator.replicas=2,webhook.allowHttpKeySources=true,sidecar.trustBundle.configMap={TRUST_BUNDLE}"
            ),
            "--wait",
            "--timeout",
            "3m",
        ])
        .context("helm install")?;
    eprintln!(
        "helm install --wait: {:.1}s",
        installed.elapsed().as_secs_f64()
    );
    let operators = Api::<Pod>::namespaced(client.clone(), "tokengate-system")
        .list(&ListParams::default().labels("app.kubernetes.io/component=operator"))
        .await?;
    let ready_operators: Vec<&Pod> = operators.items.iter().filter(|p| is_ready(p)).collect();
    if ready_operators.len() != 2 {
        bail!(
            "expected 2 Ready operator pods, found {}",
            ready_operators.len()
        );
    }

    // The identity provider: a pod behind a Service, advertising the Service's address.
    tools.kubectl(&["create", "namespace", "idp"]);
    tools.apply("idp-service", &service_yaml("idp", "idp", 80));
    let idp_services = Api::<Service>::namespaced(client.clone(), "idp");
    let issuer = format!("http://{}", cluster_ip(&idp_services, "idp").await);
    tools.apply("idp", &idp_yaml("idp", &issuer));

    // Its Entra personality over https, with a certificate for its Service's address from a
    // private CA; the CA goes into the trust bundle ConfigMap of each namespace involved.
    tools.apply("entra-service", &service_yaml("idp", "entra", 443));
    let entra_ip = cluster_ip(&idp_services, "entra").await;
    let authority = format!("https://{entra_ip}");
    let ca = CertificateAuthority::new("tokengate node test CA")?;
    let served = ca.issue_server("entra", &[&entra_ip])?;
    let cert_file = tools.scratch.path().join("entra.crt");
    let key_file = tools.scratch.path().join("entra.key");
    std::fs::write(&cert_file, &served.cert_pem)?;
    std::fs::write(&key_file, &served.key_pem)?;
    tools.kubectl(&[
        "create",
        "secret",
        "tls",
        "entra-tls",
        "-n",
        "idp",
        "--cert",
        cert_file.to_str().context("UTF-8 path")?,
        "--key",
        key_file.to_str().context("UTF-8 path")?,
    ]);
    tools.apply(
        "idp-trust",
        &config_map_yaml("idp", TRUST_BUNDLE, "ca.crt", ca.cert_pem()),
    );
    tools.apply("entra", &entra_idp_yaml("idp", &authority));
    tools.rollout("idp", "idp");

    // The application, in a namespace opted in to injection, with its TokenPolicies.
    let ns = "shop";
    tools.kubectl(&["create", "namespace", ns]);
    tools.kubectl(&[
        "label",
        "namespace",
        ns,
        &format!(
            "{}={}",
            contract::NAMESPACE_INJECTION_LABEL,
            contract::INJECTION_ENABLED
        ),
    ]);
    tools.apply(
        "orders-policy",
        &orders_jwt_policy_yaml(ns, &issuer, "Orders.Admin"),
    );
    tools.apply(
        "shop-trust",
        &config_map_yaml(ns, TRUST_BUNDLE, "ca.crt", ca.cert_pem()),
    );
    tools.apply("orders-service", &service_yaml(ns, "orders", 80));
    tools.apply("client", &client_pod_yaml(ns));
    let applied = Instant::now();
    tools.apply("orders", &app_yaml(ns, "orders"));
    tools.rollout(ns, "orders");
    eprintln!(
        "Deployment applied -> injected pod Ready: {:.1}s",
        applied.elapsed().as_secs_f64()
    );

    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let pod = ready_pod(&pods, "orders").await;
    let sidecar = sidecar_status(&pod).ok_or_else(|| anyhow!("the pod was not injected"))?;
    if !sidecar.image.contains("tokengate-sidecar") {
        bail!("the sidecar runs {}", sidecar.image);
    }
    // The kubelet probes the application on its number (the name moved to the sidecar).
    let app = pod
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == "app"))
        .ok_or_else(|| anyhow!("no app container"))?;
    let probe_port = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .map(|h| h.port.clone());
    if probe_port != Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(8080)) {
        bail!("the readiness probe was not rewritten to 8080: {probe_port:?}");
    }

    // From the host, through the ClusterIP Service.
    let services = Api::<Service>::namespaced(client.clone(), ns);
    let orders = format!("{}:80", cluster_ip(&services, "orders").await);
    let audience = tokengate_testkit::idp::DEFAULT_AUDIENCE;
    let token = tools.token("idp", &issuer, &format!("{audience}/.default"));
    // The pod is Ready; kube-proxy programs the Service's rules a moment later.
    let (status, response) = until_status(&orders, "/healthz", None, 200).await;
    ensure_status(
        status,
        200,
        "the open route, once the Service answers",
        &response,
    )?;
    let (status, response) = http_bearer(&orders, "/orders", None).await;
    ensure_status(status, 401, "no token", &response)?;
    let (status, response) = http_bearer(&orders, "/orders", Some(&token)).await;
    ensure_status(status, 200, "a client-credentials token", &response)?;
    if !response.to_ascii_lowercase().contains("x-user-id") {
        bail!("the application did not get the claim header: {response}");
    }
    if response.contains(&token) {
        bail!("the token reached the application although forwardToken is false: {response}");
    }
    let other = tools.token("idp", &issuer, "api://another-api/.default");
    let (status, response) = http_bearer(&orders, "/orders", Some(&other)).await;
    ensure_status(status, 401, "a token for another audience", &response)?;
    let challenge = header(&response, "www-authenticate").unwrap_or_default();
    if !challenge.contains("audience") {
        bail!("no reason in the challenge: {response}");
    }
    let (status, response) = http_bearer(&orders, "/admin/users", Some(&token)).await;
    ensure_status(status, 403, "a route that needs a role", &response)?;

    // From a client pod, through the same Service.
    let url = format!("http://{orders}/orders");
    let (status, response) = tools.request_from_client_pod(ns, &url, None);
    ensure_status(status, 401, "no token, from a pod", &response)?;
    let (status, response) = tools.request_from_client_pod(ns, &url, Some(&token));
    ensure_status(status, 200, "a token, from a pod", &response)?;

    // A TokenPolicy edit reaches the running sidecar: no restart, no new pod.
    let uid = pod.metadata.uid.clone();
    tools.kubectl(&[
        "patch",
        "tokenpolicy",
        "orders",
        "-n",
        ns,
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/rules/1"}]"#,
    ]);
    let last = until_status(&orders, "/admin/users", Some(&token), 200).await;
    ensure_status(last.0, 200, "the route once its rule is removed", &last.1)?;
    let same = ready_pod(&pods, "orders").await;
    if same.metadata.uid != uid || restart_count(&same) != 0 {
        bail!("the policy edit restarted or replaced the pod");
    }

    // Metrics, scraped from the pods as Prometheus does.
    let selectors = dashboard::selectors(&dashboard::path())?;
    let pod = ready_pod(&pods, "orders").await;
    let exposition = scrape(&pod_ip(&pod), contract::SIDECAR_ADMIN_PORT).await;
    // Every sidecar panel but the conflicts one: its series exists only while two policies
    // select the pod, which this scenario never has.
    let unanswered: Vec<String> =
        dashboard::unanswered(&selectors, dashboard::Component::Sidecar, &exposition)
            .into_iter()
            .filter(|u| !u.contains("tokengate_policy_conflicts"))
            .collect();
    for decision in ["allow", "deny"] {
        let requests = metrics::value(
            &exposition,
            "tokengate_requests_total",
            &[("decision", decision)],
        );
        if requests < 1.0 {
            bail!("the sidecar counted no {decision} decision: {exposition}");
        }
    }
    if !unanswered.is_empty() {
        bail!("sidecar metrics the dashboard needs are missing: {unanswered:#?}");
    }
    // Both replicas serve the webhooks, one reconciles: together they answer every panel.
    let mut exposition = String::new();
    for operator in &ready_operators {
        let admin_port = operator_admin_port(operator)?;
        exposition.push_str(&scrape(&pod_ip(operator), admin_port).await);
    }
    let unanswered = dashboard::unanswered(&selectors, dashboard::Component::Operator, &exposition);
    if !unanswered.is_empty() {
        bail!("operator metrics the dashboard needs are missing: {unanswered:#?}");
    }

    // The private-access NetworkPolicy exists as the policy asked (this node cannot enforce
    // NetworkPolicy; the kind suite checks enforcement).
    let policies = Api::<NetworkPolicy>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?;
    let private = policies
        .items
        .iter()
        .find(|p| {
            p.spec
                .as_ref()
                .and_then(|s| s.pod_selector.as_ref())
                .and_then(|s| s.match_labels.as_ref())
                .is_some_and(|l| l.get("app").map(String::as_str) == Some("orders"))
        })
        .ok_or_else(|| anyhow!("no NetworkPolicy selects app=orders"))?;
    let ports: Vec<Value> = private
        .spec
        .as_ref()
        .and_then(|s| s.ingress.as_ref())
        .into_iter()
        .flatten()
        .flat_map(|rule| rule.ports.iter().flatten())
        .map(|p| serde_json::to_value(&p.port).unwrap_or_default())
        .collect();
    if !ports.contains(&Value::from(contract::SIDECAR_PROXY_PORT))
        || ports.contains(&Value::from(8080))
    {
        bail!("the NetworkPolicy admits {ports:?}");
    }

    // The sidecar killed: the kubelet restarts it and it enforces the same policy again.
    let container_id = sidecar_status(&pod)
        .and_then(|s| s.container_id)
        .and_then(|id| id.strip_prefix("containerd://").map(str::to_owned))
        .ok_or_else(|| anyhow!("the sidecar has no containerd id"))?;
    node.ctr(&["tasks", "kill", "--signal", "SIGKILL", &container_id])?;
    wait_until(TIMEOUT, "the sidecar to be restarted and Ready", || async {
        let pod = pods
            .get(pod.metadata.name.as_deref().unwrap_or_default())
            .await?;
        Ok(restart_count(&pod) >= 1 && is_ready(&pod))
    })
    .await?;
    // The Service's endpoints follow the pod's readiness a moment later.
    let last = until_status(&orders, "/orders", None, 401).await;
    ensure_status(last.0, 401, "no token, after the restart", &last.1)?;
    let (status, response) = http_bearer(&orders, "/orders", Some(&token)).await;
    ensure_status(status, 200, "a token, after the restart", &response)?;

    // Entra mode: the policy switched to validate-azure-ad-token against the https authority.
    // The sidecar discovers the tenant's keys over https, trusting the CA through the trust
    // bundle the webhook mounted; tokens of the generic provider no longer pass.
    tools.rollout("idp", "entra");
    let entra_token = tools.token_from(
        "idp",
        "deploy/entra",
        &format!("{authority}/{ENTRA_TENANT}/v2.0"),
        &format!("{ENTRA_API}/.default"),
        &[
            "--ca-file",
            "/ca/ca.crt",
            "--client-id",
            ENTRA_CLIENT,
            "--client-secret",
            ENTRA_CLIENT_SECRET,
        ],
    );
    tools.apply(
        "orders-entra-policy",
        &orders_entra_policy_yaml(ns, &authority),
    );
    let last = until_status(&orders, "/orders", Some(&entra_token), 200).await;
    ensure_status(last.0, 200, "an Entra token, in Entra mode", &last.1)?;
    if !last.1.to_ascii_lowercase().contains("x-client-app") || !last.1.contains(ENTRA_CLIENT) {
        bail!(
            "the application did not get the Entra claim header: {}",
            last.1
        );
    }
    let (status, response) = http_bearer(&orders, "/orders", Some(&token)).await;
    ensure_status(
        status,
        401,
        "the generic provider's token, in Entra mode",
        &response,
    )?;
    let (status, response) = tools.request_from_client_pod(ns, &url, Some(&entra_token));
    ensure_status(status, 200, "an Entra token, from a pod", &response)?;

    pod_firewall(&client, &tools, ns, &issuer, &token).await
}

/// `privateAccess.podFirewall`: the application's port closed to everything but the pod itself,
/// by the pod's own nftables rules, whatever the CNI. The `orders` pod (NetworkPolicy only,
/// which this node does not enforce) is the control: straight to its pod IP the application
/// answers. The `vault` pod, of a policy with the pod firewall, refuses the same connection,
/// the bypass Service too, while the sidecar, the probes and the application's own outbound
/// calls work; and its rules stay when the pod loses its labels and the policy is deleted.
async fn pod_firewall(
    client: &kube::Client,
    tools: &Tools,
    ns: &str,
    issuer: &str,
    token: &str,
) -> Result<()> {
    let pods = Api::<Pod>::namespaced(client.clone(), ns);
    let services = Api::<Service>::namespaced(client.clone(), ns);

    // Without the pod firewall: the application's port answers anyone who connects.
    let orders = ready_pod(&pods, "orders").await;
    if has_init_container(&orders, contract::FIREWALL_CONTAINER) {
        bail!("the orders pod has the pod firewall although its policy does not ask for it");
    }
    let direct = format!("http://{}:8080/orders", pod_ip(&orders));
    let (status, response) = tools
        .try_request_from(ns, "client", "client", &direct, None)
        .map_err(|e| {
            anyhow!("without the pod firewall the application's port did not answer: {e}")
        })?;
    ensure_status(
        status,
        200,
        "straight to the application's port, no token, without the pod firewall",
        &response,
    )?;
    eprintln!("pod firewall off: {direct} from a client pod answered {status}, around the sidecar");

    // With it: the policy first, then the application, a Service to the sidecar (by name) and
    // one to the application's port by number (the bypass).
    // kubectl prints the webhook's warning: the firewall reaches pods created from now on.
    let manifest = tools.scratch.path().join("vault-policy.yaml");
    std::fs::write(&manifest, vault_policy_yaml(ns, issuer))?;
    let applied =
        tools
            .kubectl
            .run_unchecked(["apply", "-f", manifest.to_str().context("UTF-8 path")?])?;
    if !applied
        .stderr
        .contains("podFirewall applies to pods created from now on")
    {
        bail!("no warning about running pods: {}", applied.stderr);
    }
    tools.apply("vault-service", &service_yaml(ns, "vault", 80));
    tools.apply(
        "vault-direct-service",
        &bypass_service_yaml(ns, "vault-direct", "vault"),
    );
    let applied = Instant::now();
    tools.apply("vault", &app_yaml(ns, "vault"));
    tools.rollout(ns, "vault");
    let ready_after = applied.elapsed();
    let vault = ready_pod(&pods, "vault").await;
    let vault_name = vault.metadata.name.clone().context("pod name")?;
    if !has_init_container(&vault, contract::FIREWALL_CONTAINER) {
        bail!("the vault pod was not given the pod firewall");
    }
    let (started, finished) = init_container_times(&vault, contract::FIREWALL_CONTAINER)
        .ok_or_else(|| anyhow!("the firewall init container has not run to completion"))?;
    let rules = tools.kubectl(&[
        "logs",
        "-n",
        ns,
        &vault_name,
        "-c",
        contract::FIREWALL_CONTAINER,
    ]);
    eprintln!(
        "pod firewall: Deployment applied -> pod Ready {:.1}s; init container {} ran {started} -> \
         {finished}; it printed:\n{rules}",
        ready_after.as_secs_f64(),
        contract::FIREWALL_CONTAINER,
    );
    if !rules.contains("iifname != \"lo\" tcp dport 8080 reject with tcp reset") {
        bail!("the firewall printed other rules: {rules}");
    }
    // Probes on the protected port go through the sidecar, and pass: the pod is Ready.
    let app = vault
        .spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == "app"))
        .ok_or_else(|| anyhow!("no app container"))?;
    let probe_path = app
        .readiness_probe
        .as_ref()
        .and_then(|p| p.http_get.as_ref())
        .and_then(|h| h.path.clone());
    if probe_path.as_deref() != Some("/app-health/app/readiness") {
        bail!("the readiness probe does not go through the sidecar: {probe_path:?}");
    }
    let vault_ip = pod_ip(&vault);
    let (status, ready) = http(
        &format!("{vault_ip}:{}", contract::SIDECAR_ADMIN_PORT),
        contract::SIDECAR_READY_PATH,
        &[],
    )
    .await;
    ensure_status(status, 200, "the sidecar's /ready", &ready)?;
    if !ready.contains("pod firewall: in place (port 8080)") {
        bail!("/ready does not report the pod firewall: {ready}");
    }
    let exposition = scrape(&vault_ip, contract::SIDECAR_ADMIN_PORT).await;
    if metrics::value(
        &exposition,
        "tokengate_pod_firewall",
        &[("state", "in_place")],
    ) != 1.0
    {
        bail!("tokengate_pod_firewall does not say in_place: {exposition}");
    }
    let sidecar_log = tools.kubectl(&[
        "logs",
        "-n",
        ns,
        &vault_name,
        "-c",
        contract::SIDECAR_CONTAINER,
    ]);
    let line = sidecar_log
        .lines()
        .find(|l| l.contains("pod firewall in place"))
        .ok_or_else(|| anyhow!("the sidecar did not log the pod firewall: {sidecar_log}"))?;
    eprintln!("sidecar: {line}");

    // Through the Service and the sidecar's port, tokens are enforced as before.
    let vault_service = format!("{}:80", cluster_ip(&services, "vault").await);
    let (status, response) = until_status(&vault_service, "/healthz", None, 200).await;
    ensure_status(status, 200, "the open route of vault", &response)?;
    let url = format!("http://{vault_service}/vault");
    let (status, response) = tools.request_from_client_pod(ns, &url, None);
    ensure_status(status, 401, "vault, no token, from a pod", &response)?;
    let (status, response) = tools.request_from_client_pod(ns, &url, Some(token));
    ensure_status(status, 200, "vault, a token, from a pod", &response)?;
    let sidecar_port = format!("http://{vault_ip}:{}/vault", contract::SIDECAR_PROXY_PORT);
    let (status, response) = tools.request_from_client_pod(ns, &sidecar_port, Some(token));
    ensure_status(status, 200, "vault's sidecar port, a token", &response)?;
    let (status, response) = tools.request_from_client_pod(ns, &sidecar_port, None);
    ensure_status(status, 401, "vault's sidecar port, no token", &response)?;

    // Straight to the application's port: refused, from a pod and from the node.
    let direct = format!("http://{vault_ip}:8080/vault");
    match tools.try_request_from(ns, "client", "client", &direct, None) {
        Ok((status, response)) => {
            bail!("with the pod firewall {direct} still answered {status}: {response}")
        }
        Err(err) if err.contains("refused") || err.contains("reset") => {
            eprintln!("pod firewall on: {direct} from a client pod: connection refused");
        }
        Err(err) => bail!("{direct} failed, but not as refused: {err}"),
    }
    let (status, response) = http(&format!("{vault_ip}:8080"), "/vault", &[]).await;
    if status != 0 {
        bail!("the node reached the application around the sidecar: {response}");
    }
    // The Service that targets the port by number (the bypass) reaches nothing.
    let bypass = format!(
        "http://{}:80/vault",
        cluster_ip(&services, "vault-direct").await
    );
    if let Ok((status, response)) = tools.try_request_from(ns, "client", "client", &bypass, None) {
        bail!("the bypass Service still reaches the application ({status}): {response}");
    }
    // The operator says so.
    let mut message = String::new();
    wait_until(TIMEOUT, "the Bypass condition of vault", || {
        let found = tools.kubectl(&[
            "get",
            "tokenpolicy",
            "vault",
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Bypass\")].message}",
        ]);
        let done = found.contains("vault-direct") && found.contains("protected by pod firewall");
        message = found;
        async move { Ok(done) }
    })
    .await
    .with_context(|| format!("last Bypass message: {message}"))?;
    eprintln!("Bypass: {message}");

    // The application's own outbound calls still work (here: the identity provider).
    let outbound = format!("{issuer}/.well-known/openid-configuration");
    let (status, response) = tools
        .try_request_from(ns, &vault_name, "app", &outbound, None)
        .map_err(|e| anyhow!("the application's outbound call failed: {e}"))?;
    ensure_status(
        status,
        200,
        "the application's own outbound call",
        &response,
    )?;

    // The liveness probe, through the sidecar too, never failed the application.
    let now = pods.get(&vault_name).await?;
    let app_restarts = now
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == "app"))
        .map(|c| c.restart_count);
    if app_restarts != Some(0) || !is_ready(&now) {
        bail!("the vault application restarted ({app_restarts:?}) or is not Ready");
    }

    // The rules are the pod's: the pod relabelled out of the policy's (and its ReplicaSet's)
    // selector and the policy deleted, the application's port stays closed.
    tools.kubectl(&[
        "label",
        "pod",
        "-n",
        ns,
        &vault_name,
        "app=retired",
        "--overwrite",
    ]);
    tools.kubectl(&["delete", "tokenpolicy", "vault", "-n", ns, "--wait=true"]);
    tokio::time::sleep(Duration::from_secs(3)).await;
    match tools.try_request_from(ns, "client", "client", &direct, None) {
        Ok((status, response)) => {
            bail!("after the labels and the policy went, {direct} answered {status}: {response}")
        }
        Err(err) if err.contains("refused") || err.contains("reset") => {
            eprintln!("labels and policy removed: {direct} still refused while the pod lives")
        }
        Err(err) => bail!("{direct} failed, but not as refused: {err}"),
    }
    let live = pods.get(&vault_name).await?;
    if live.metadata.deletion_timestamp.is_some() || pod_ip(&live) != vault_ip {
        bail!("the relabelled pod is not the same live pod");
    }
    Ok(())
}

fn has_init_container(pod: &Pod, name: &str) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.name == name))
}

/// When the init container `name` started and finished, as the kubelet reports them.
fn init_container_times(pod: &Pod, name: &str) -> Option<(String, String)> {
    let status = pod
        .status
        .as_ref()?
        .init_container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == name)?;
    let terminated = status.state.as_ref()?.terminated.as_ref()?;
    if terminated.exit_code != 0 {
        return None;
    }
    Some((
        terminated.started_at.as_ref()?.0.to_string(),
        terminated.finished_at.as_ref()?.0.to_string(),
    ))
}

/// A TokenPolicy for `app=vault` with the pod firewall (and no NetworkPolicy).
fn vault_policy_yaml(namespace: &str, issuer: &str) -> String {
    format!(
        "apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
metadata:
  name: vault
  namespace: {namespace}
spec:
  selector:
    matchLabels: {{app: vault}}
  validateJwt:
    openidConfigs:
      - url: {issuer}/.well-known/openid-configuration
    audiences: [{audience}]
    issuers: [{issuer}]
  rules:
    - {{paths: [\"/healthz\"], authentication: Disabled}}
  privateAccess:
    podFirewall: true
",
        audience = tokengate_testkit::idp::DEFAULT_AUDIENCE,
    )
}

/// A Service `name` to the pods of `app` that targets the application's port by number: the
/// path around the sidecar that the operator reports as `Bypass`.
fn bypass_service_yaml(namespace: &str, name: &str, app: &str) -> String {
    service_to(namespace, name, app, ("direct", 80), "8080")
}

fn ensure_status(got: u16, want: u16, what: &str, response: &str) -> Result<()> {
    if got != want {
        bail!("{what}: expected {want}, got {got}: {response}");
    }
    Ok(())
}

fn operator_admin_port(pod: &Pod) -> Result<u16> {
    let port = pod
        .spec
        .as_ref()
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .find(|p| p.name.as_deref() == Some("metrics") || p.name.as_deref() == Some("admin"))
        .ok_or_else(|| anyhow!("the operator pod names no metrics port"))?;
    u16::try_from(port.container_port).context("port")
}
