//! The operator against a real kube-apiserver and kube-controller-manager (the local control
//! plane of the tests crate), running as its ServiceAccount with exactly the RBAC the Helm chart
//! grants (`operator/deploy/rbac.yaml`, rendered from `charts/tokengate`).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client, ResourceExt as _};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokengate_policy::TokenPolicy;
use tokengate_testkit::cluster::tools::Tool;
use tokengate_testkit::cluster::{
    ControlPlane, Process, apply_crd, free_port, http_get, wait_until,
};
use tokengate_testkit::idp::IdentityProvider;

const OPERATOR: &str = env!("CARGO_BIN_EXE_tokengate-operator");
const SYSTEM_NAMESPACE: &str = "tokengate-system";
const TIMEOUT: Duration = Duration::from_secs(60);

struct Operator {
    admin: u16,
    // Lives as long as the test binary; the harness's watchdog kills it at exit.
    process: Process,
}

static OPERATOR_STARTED: OnceLock<Result<Operator, String>> = OnceLock::new();

fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object matches its type")
}

async fn apply<T>(api: &Api<T>, name: &str, object: &T) -> Result<(), String>
where
    T: Clone + DeserializeOwned + serde::Serialize + std::fmt::Debug + kube::Resource,
{
    api.patch(
        name,
        &PatchParams::apply("tokengate-testkit").force(),
        &Patch::Apply(object),
    )
    .await
    .map(|_| ())
    .map_err(|e| format!("apply {name}: {e}"))
}

/// Installs the CRD and the operator's RBAC, and starts one operator for the whole test binary.
async fn install(cp: &'static ControlPlane, client: &Client) -> Result<Operator, String> {
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(include_str!("../../crds/tokengate.dev_tokenpolicies.yaml"))
            .map_err(|e| format!("CRD file: {e}"))?;
    apply_crd(client, &crd)
        .await
        .map_err(|e| format!("{e:#}"))?;

    let namespace: Namespace = from_json(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": SYSTEM_NAMESPACE}}),
    );
    apply(&Api::all(client.clone()), SYSTEM_NAMESPACE, &namespace).await?;
    // The chart's ServiceAccount and RBAC, rendered for release `tokengate` in tokengate-system.
    let documents: Vec<Value> = serde_saphyr::from_multiple(include_str!("../deploy/rbac.yaml"))
        .map_err(|e| format!("rbac.yaml: {e}"))?;
    for value in documents {
        let name = value["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match value["kind"].as_str() {
            Some("ServiceAccount") => {
                apply::<ServiceAccount>(
                    &Api::namespaced(client.clone(), SYSTEM_NAMESPACE),
                    &name,
                    &from_json(value),
                )
                .await?;
            }
            Some("ClusterRole") => {
                apply::<ClusterRole>(&Api::all(client.clone()), &name, &from_json(value)).await?;
            }
            Some("ClusterRoleBinding") => {
                let binding: ClusterRoleBinding = from_json(value);
                apply(&Api::all(client.clone()), &name, &binding).await?;
            }
            Some("Role") => {
                apply::<Role>(
                    &Api::namespaced(client.clone(), SYSTEM_NAMESPACE),
                    &name,
                    &from_json(value),
                )
                .await?
            }
            Some("RoleBinding") => {
                apply::<RoleBinding>(
                    &Api::namespaced(client.clone(), SYSTEM_NAMESPACE),
                    &name,
                    &from_json(value),
                )
                .await?;
            }
            other => return Err(format!("unexpected kind {other:?} in rbac.yaml")),
        }
    }

    let (process, admin) = spawn_operator(cp, client, "operator-a").await?;
    Ok(Operator { admin, process })
}

async fn spawn_operator(
    cp: &ControlPlane,
    client: &Client,
    identity: &str,
) -> Result<(Process, u16), String> {
    spawn_operator_on_lease(cp, client, identity, "tokengate-operator").await
}

async fn spawn_operator_on_lease(
    cp: &ControlPlane,
    client: &Client,
    identity: &str,
    lease: &str,
) -> Result<(Process, u16), String> {
    let admin = free_port().map_err(|e| format!("{e:#}"))?;
    let webhook = free_port().map_err(|e| format!("{e:#}"))?;
    let mut command = Command::new(OPERATOR);
    command
        .arg(format!("--admin=127.0.0.1:{admin}"))
        .arg(format!("--lease-name={lease}"))
        .arg(format!("--lease-namespace={SYSTEM_NAMESPACE}"))
        .arg(format!("--identity={identity}"))
        .arg("--lease-duration=4s")
        .arg("--key-recheck=3s")
        .arg("--key-fetch-timeout=2s")
        .args(webhooks::flags(webhook))
        .env("TOKENGATE_LOG", "info,tokengate_operator=debug");
    let process = cp
        .spawn_as_service_account(client, SYSTEM_NAMESPACE, "tokengate-operator", command)
        .await
        .map_err(|e| format!("{e:#}"))?;
    Ok((process, admin))
}

async fn setup(prefix: &str) -> (Client, String, u16) {
    let cp = ControlPlane::shared().await.expect("control plane");
    let client = cp.client().await.expect("admin client");
    let started = tokio::task::spawn_blocking(move || {
        OPERATOR_STARTED.get_or_init(|| {
            // Installation runs once, on a runtime of its own, so no test's runtime owns it.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            runtime.block_on(async {
                let client = cp.client().await.map_err(|e| format!("{e:#}"))?;
                install(cp, &client).await
            })
        })
    })
    .await
    .expect("join");
    let operator = started.as_ref().expect("operator installed and started");
    let namespace = cp.namespace(&client, prefix).await.expect("namespace");
    (client, namespace, operator.admin)
}

fn policy(namespace: &str, name: &str, spec: Value) -> TokenPolicy {
    from_json(json!({
        "apiVersion": "tokengate.dev/v1alpha1",
        "kind": "TokenPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }))
}

fn jwks_spec(app: &str, jwks: &str) -> Value {
    json!({
        "selector": {"matchLabels": {"app": app}},
        "validateJwt": {"jwksUris": [jwks], "audiences": ["api://orders"]},
    })
}

/// Creates the TokenPolicy `name` with `spec` and returns the API server's refusal.
async fn refusal(
    policies: &Api<TokenPolicy>,
    namespace: &str,
    name: &str,
    spec: Value,
) -> Box<kube::core::Status> {
    match policies
        .create(&PostParams::default(), &policy(namespace, name, spec))
        .await
    {
        Err(kube::Error::Api(status)) => status,
        other => panic!("{name} must be refused, got {other:?}"),
    }
}

fn condition(policy: &TokenPolicy, type_: &str) -> Option<(String, String, String)> {
    policy
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the policy's condition has `status`, and returns its reason and message.
async fn wait_condition(
    api: &Api<TokenPolicy>,
    name: &str,
    type_: &str,
    status: &str,
) -> (String, String) {
    let last = std::sync::Mutex::new(None);
    let outcome = wait_until(TIMEOUT, &format!("{name} {type_}={status}"), || async {
        let policy = api.get(name).await?;
        let found = condition(&policy, type_);
        let done = found.as_ref().is_some_and(|(s, _, _)| s == status);
        if let Ok(mut last) = last.lock() {
            *last = found;
        }
        Ok(done)
    })
    .await;
    let last = last.into_inner().ok().flatten();
    match (outcome, last) {
        (Ok(()), Some((_, reason, message))) => (reason, message),
        (result, last) => panic!("{result:?}; last seen {type_}: {last:?}"),
    }
}

async fn config_map_data(client: &Client, namespace: &str) -> Option<BTreeMap<String, String>> {
    Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt("tokengate-policies")
        .await
        .expect("get ConfigMap")
        .map(|cm| cm.data.unwrap_or_default())
}

fn example(path: &str, namespace: &str) -> TokenPolicy {
    let file = format!("{}/../examples/{path}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(file).expect("example");
    let mut policy: TokenPolicy =
        serde_saphyr::from_str(&text).expect("example parses as a TokenPolicy");
    policy.metadata.namespace = Some(namespace.to_string());
    policy
}

/// A plain HTTP GET on the operator's admin port.
async fn admin_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: operator\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response
}

#[tokio::test]
async fn examples_render_into_the_bundle_and_follow_edits_and_deletion() {
    let (client, namespace, admin) = setup("bundle").await;
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    let started = Instant::now();
    let orders = example("orders-api.yaml", &namespace);
    let quickstart = example("quickstart.yaml", &namespace);
    policies
        .create(&PostParams::default(), &orders)
        .await
        .expect("create orders-api");
    policies
        .create(&PostParams::default(), &quickstart)
        .await
        .expect("create quickstart");

    wait_until(TIMEOUT, "both policies in the bundle", || async {
        Ok(config_map_data(&client, &namespace).await.is_some_and(|d| {
            d.contains_key("orders-api.yaml") && d.contains_key("quickstart.yaml")
        }))
    })
    .await
    .expect("bundle rendered");
    let to_bundle = started.elapsed();
    wait_condition(&policies, "orders-api", "Ready", "True").await;
    wait_condition(&policies, "quickstart", "Ready", "True").await;
    let to_ready = started.elapsed();
    eprintln!("apply -> bundle {to_bundle:?}, apply -> Ready {to_ready:?}");

    let data = config_map_data(&client, &namespace).await.expect("bundle");
    let documents =
        tokengate_policy::parse_documents(&data["orders-api.yaml"]).expect("sidecar reads it");
    assert_eq!(documents[0].spec, orders.spec);
    let stored = policies.get("orders-api").await.expect("get");
    let status = stored.status.clone().expect("status");
    assert_eq!(status.observed_generation, stored.metadata.generation);
    assert_eq!(status.mode.as_deref(), Some("validateJwt"));
    assert_eq!(status.selector.as_deref(), Some("app=orders"));
    // The example's identity provider does not exist here: the condition names the URL.
    let (reason, message) = wait_condition(&policies, "orders-api", "KeysResolved", "False").await;
    assert_eq!(reason, "KeySourceFailed");
    assert!(
        message.contains("https://login.example.com/.well-known/openid-configuration"),
        "{message}"
    );
    // Entra mode: the same bundle, the discovery document derived from the tenant.
    let entra = example("entra-orders-api.yaml", &namespace);
    policies
        .create(&PostParams::default(), &entra)
        .await
        .expect("create entra-orders-api");
    wait_condition(&policies, "entra-orders-api", "Ready", "True").await;
    let stored = policies.get("entra-orders-api").await.expect("get");
    assert_eq!(
        stored.status.and_then(|s| s.mode).as_deref(),
        Some("validateAzureAdToken")
    );
    let (_, message) = wait_condition(&policies, "entra-orders-api", "KeysResolved", "False").await;
    assert!(
        message.contains(
            "https://login.microsoftonline.com/8d2f6c1e-4b7a-4c3d-9e5f-1a2b3c4d5e6f/v2.0/.well-known/openid-configuration"
        ),
        "{message}"
    );
    policies
        .delete("entra-orders-api", &DeleteParams::default())
        .await
        .expect("delete entra-orders-api");

    // Private access: the example's NetworkPolicy.
    let network_policy = Api::<NetworkPolicy>::namespaced(client.clone(), &namespace)
        .get("tokengate-orders-api")
        .await
        .expect("NetworkPolicy rendered");
    let ports: Vec<Value> = network_policy.spec.expect("spec").ingress.expect("ingress")[0]
        .ports
        .clone()
        .expect("ports")
        .iter()
        .map(|p| serde_json::to_value(&p.port).expect("port"))
        .collect();
    assert_eq!(ports, [json!(15080), json!(15081), json!(9090)]);

    // What the operator wrote, deleted by hand, is put back.
    Api::<NetworkPolicy>::namespaced(client.clone(), &namespace)
        .delete("tokengate-orders-api", &DeleteParams::default())
        .await
        .expect("delete the NetworkPolicy");
    Api::<ConfigMap>::namespaced(client.clone(), &namespace)
        .delete("tokengate-policies", &DeleteParams::default())
        .await
        .expect("delete the bundle");
    wait_until(TIMEOUT, "the NetworkPolicy and the bundle back", || async {
        let network_policy = Api::<NetworkPolicy>::namespaced(client.clone(), &namespace)
            .get_opt("tokengate-orders-api")
            .await?;
        let bundle = config_map_data(&client, &namespace).await;
        Ok(network_policy.is_some() && bundle.is_some_and(|d| d.contains_key("orders-api.yaml")))
    })
    .await
    .expect("restored");

    // Edit: the bundle and observedGeneration follow.
    policies
        .patch(
            "orders-api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"validateJwt": {"audiences": ["api://orders-v2"]}}})),
        )
        .await
        .expect("edit");
    wait_until(TIMEOUT, "the edit in the bundle", || async {
        Ok(config_map_data(&client, &namespace)
            .await
            .is_some_and(|d| d["orders-api.yaml"].contains("api://orders-v2")))
    })
    .await
    .expect("bundle updated");
    wait_until(TIMEOUT, "observedGeneration to follow the edit", || async {
        let policy = policies.get("orders-api").await?;
        Ok(policy.status.and_then(|s| s.observed_generation) == policy.metadata.generation)
    })
    .await
    .expect("observedGeneration current");

    // Delete one: its entry goes, the other stays. Delete the last: the garbage collector
    // removes the bundle (every policy owns it).
    policies
        .delete("orders-api", &DeleteParams::default())
        .await
        .expect("delete");
    wait_until(TIMEOUT, "orders-api to leave the bundle", || async {
        Ok(config_map_data(&client, &namespace).await.is_some_and(|d| {
            !d.contains_key("orders-api.yaml") && d.contains_key("quickstart.yaml")
        }))
    })
    .await
    .expect("entry removed");
    wait_until(TIMEOUT, "the NetworkPolicy to be collected", || async {
        Ok(Api::<NetworkPolicy>::namespaced(client.clone(), &namespace)
            .get_opt("tokengate-orders-api")
            .await?
            .is_none())
    })
    .await
    .expect("NetworkPolicy collected");
    policies
        .delete("quickstart", &DeleteParams::default())
        .await
        .expect("delete");
    wait_until(TIMEOUT, "the bundle to be collected", || async {
        let config_map = config_map_data(&client, &namespace).await.is_none();
        let secret = Api::<Secret>::namespaced(client.clone(), &namespace)
            .get_opt("tokengate-keys")
            .await?
            .is_none();
        Ok(config_map && secret)
    })
    .await
    .expect("bundle garbage-collected");

    let metrics = admin_get(admin, "/metrics").await;
    assert!(
        metrics.contains("tokengate_reconcile_total{result=\"success\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("tokengate_reconcile_duration_seconds_bucket"));
    assert!(admin_get(admin, "/ready").await.contains("ready (leader)"));
    // Everything above ran with exactly the RBAC of operator/deploy/rbac.yaml.
    let log = operator_log();
    assert!(!log.to_lowercase().contains("forbidden"), "{log}");
}

fn operator_log() -> String {
    OPERATOR_STARTED
        .get()
        .and_then(|started| started.as_ref().ok())
        .map(|operator| operator.process.log())
        .unwrap_or_default()
}

#[tokio::test]
async fn cel_rules_reject_each_invalid_shape_with_its_message() {
    let (client, namespace, _) = setup("cel").await;
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    let jwks = ["https://idp.example/keys"];
    let selector = json!({"matchLabels": {"app": "a"}});
    let cases = [
        (
            "both-validators",
            json!({"selector": selector, "validateJwt": {"jwksUris": jwks},
                   "validateAzureAdToken": {"tenantId": "contoso"}}),
            "set exactly one of validateJwt and validateAzureAdToken",
        ),
        (
            "no-validator",
            json!({"selector": selector}),
            "set exactly one of validateJwt and validateAzureAdToken",
        ),
        (
            "empty-selector",
            json!({"selector": {}, "validateJwt": {"jwksUris": jwks}}),
            "selector must not be empty",
        ),
        (
            "no-key-source",
            json!({"selector": selector, "validateJwt": {"audiences": ["x"]}}),
            "validateJwt needs at least one key source",
        ),
        (
            "redirect-code",
            json!({"selector": selector, "validateJwt": {"jwksUris": jwks},
                   "failedValidation": {"httpCode": 302}}),
            "between 400 and 599",
        ),
        (
            "two-key-forms",
            json!({"selector": selector, "validateJwt": {"issuerSigningKeys": [
                {"id": "k", "value": "c2VjcmV0", "pem": "-----BEGIN PUBLIC KEY-----"}]}}),
            "exactly one of jwk, pem, modulus (with exponent), value, file or secretRef",
        ),
        (
            "half-an-rsa-key",
            json!({"selector": selector, "validateJwt": {"issuerSigningKeys": [
                {"id": "k", "modulus": "AQAB"}]}}),
            "needs both",
        ),
    ];
    for (name, spec, expected) in cases {
        let status = refusal(&policies, &namespace, name, spec).await;
        assert!(status.is_invalid(), "{name}: {status:?}");
        assert!(
            status.message.contains(expected),
            "{name}: {}",
            status.message
        );
    }
    policies
        .create(
            &PostParams::default(),
            &policy(&namespace, "valid", jwks_spec("a", jwks[0])),
        )
        .await
        .expect("a valid policy is accepted");
}

#[tokio::test]
async fn referenced_secrets_created_late_and_rotated_reach_the_bundle() {
    let (client, namespace, _) = setup("secrets").await;
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let spec = json!({
        "selector": {"matchLabels": {"app": "billing"}},
        "validateJwt": {"issuerSigningKeys": [
            {"id": "b1", "secretRef": {"name": "billing-jwt", "key": "secret"}}]},
    });
    policies
        .create(&PostParams::default(), &policy(&namespace, "billing", spec))
        .await
        .expect("create");
    policies
        .create(
            &PostParams::default(),
            &policy(
                &namespace,
                "other",
                jwks_spec("other", "https://idp.example/keys"),
            ),
        )
        .await
        .expect("create other");

    let (reason, message) = wait_condition(&policies, "billing", "Ready", "False").await;
    assert_eq!(reason, "SecretNotFound");
    assert!(
        message.contains(&format!("Secret {namespace}/billing-jwt")),
        "{message}"
    );
    // The other policy of the namespace still renders.
    wait_condition(&policies, "other", "Ready", "True").await;
    let data = config_map_data(&client, &namespace).await.expect("bundle");
    assert!(data.contains_key("other.yaml") && data.contains_key("billing.yaml"));

    const FIRST: &str = "Zmlyc3Qta2V5LW1hdGVyaWFsLTEyMzQ1Njc4OTA=";
    const ROTATED: &str = "cm90YXRlZC1rZXktbWF0ZXJpYWwtMDk4NzY1NDMyMQ==";
    let secret: Secret = from_json(json!({
        "metadata": {"name": "billing-jwt"}, "stringData": {"secret": FIRST},
    }));
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .expect("secret");
    wait_condition(&policies, "billing", "Ready", "True").await;
    let bundled = || async {
        secrets
            .get("tokengate-keys")
            .await
            .ok()
            .and_then(|s| s.data)
            .and_then(|d| {
                d.get("billing-jwt.secret")
                    .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            })
    };
    wait_until(TIMEOUT, "the key in tokengate-keys", || async {
        Ok(bundled().await.as_deref() == Some(FIRST))
    })
    .await
    .expect("key bundled");

    secrets
        .patch(
            "billing-jwt",
            &PatchParams::default(),
            &Patch::Merge(json!({"stringData": {"secret": ROTATED}})),
        )
        .await
        .expect("rotate");
    wait_until(TIMEOUT, "the rotated key in tokengate-keys", || async {
        Ok(bundled().await.as_deref() == Some(ROTATED))
    })
    .await
    .expect("rotation followed");

    secrets
        .delete("billing-jwt", &DeleteParams::default())
        .await
        .expect("delete secret");
    let (reason, _) = wait_condition(&policies, "billing", "Ready", "False").await;
    assert_eq!(reason, "SecretNotFound");
}

#[tokio::test]
async fn conflicts_bypasses_and_events_are_reported() {
    let (client, namespace, _) = setup("overlap").await;
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    let pod: Pod = from_json(json!({
        "metadata": {"name": "orders-1", "labels": {"app": "orders"}},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/orders:1",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    }));
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &pod)
        .await
        .expect("pod");
    let keys = "https://idp.example/keys";
    policies
        .create(
            &PostParams::default(),
            &policy(&namespace, "first", jwks_spec("orders", keys)),
        )
        .await
        .expect("first");
    wait_condition(&policies, "first", "Ready", "True").await;
    let mut second_spec = jwks_spec("orders", keys);
    second_spec["selector"] = json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["orders", "shop"]}]});
    policies
        .create(
            &PostParams::default(),
            &policy(&namespace, "second", second_spec),
        )
        .await
        .expect("second");
    let (_, message) = wait_condition(&policies, "first", "Conflict", "True").await;
    assert!(
        message.contains("second") && message.contains("first applies"),
        "{message}"
    );
    let (_, message) = wait_condition(&policies, "second", "Conflict", "True").await;
    assert!(
        message.contains("first") && message.contains("first applies"),
        "{message}"
    );
    let stored = policies.get("first").await.expect("get");
    assert_eq!(stored.status.and_then(|s| s.selected_pods), Some(1));

    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    let service: Service = from_json(json!({
        "metadata": {"name": "orders-direct"},
        "spec": {"selector": {"app": "orders"},
                 "ports": [{"name": "web", "port": 80, "targetPort": 8080}]},
    }));
    services
        .create(&PostParams::default(), &service)
        .await
        .expect("service");
    let (reason, message) = wait_condition(&policies, "first", "Bypass", "True").await;
    assert_eq!(reason, "ServiceTargetsAppPort");
    assert!(
        message.contains("Service orders-direct") && message.contains("by name"),
        "{message}"
    );
    let events = Api::<Event>::namespaced(client.clone(), &namespace);
    wait_until(TIMEOUT, "a Bypass event naming the Service", || async {
        Ok(events
            .list(&ListParams::default())
            .await?
            .items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("ServiceTargetsAppPort")
                    && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("first")
                    && e.note
                        .as_deref()
                        .is_some_and(|n| n.contains("orders-direct"))
            }))
    })
    .await
    .expect("event published");

    // Deleting the newer policy ends the conflict for the older one.
    policies
        .delete("second", &DeleteParams::default())
        .await
        .expect("delete second");
    wait_condition(&policies, "first", "Conflict", "False").await;
    // A Service that no longer reaches the protected port ends the bypass.
    services
        .patch(
            "orders-direct",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"ports": [{"name": "web", "port": 80, "targetPort": 9999}]}}),
            ),
        )
        .await
        .expect("retarget");
    wait_condition(&policies, "first", "Bypass", "False").await;
}

#[tokio::test]
async fn keys_resolved_names_the_failing_source_and_recovers() {
    let (client, namespace, _) = setup("keys").await;
    let idp = IdentityProvider::start().await.expect("identity provider");
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    let dead = format!("http://127.0.0.1:{}/keys", free_port().expect("port"));
    let spec = json!({
        "selector": {"matchLabels": {"app": "api"}},
        "validateJwt": {"openidConfigs": [{"url": idp.discovery_url()}], "jwksUris": [dead]},
    });
    policies
        .create(&PostParams::default(), &policy(&namespace, "api", spec))
        .await
        .expect("create");
    let (reason, message) = wait_condition(&policies, "api", "KeysResolved", "False").await;
    assert_eq!(reason, "KeySourceFailed");
    assert!(message.contains(&dead), "{message}");
    assert!(
        !message.contains(&idp.discovery_url()),
        "the good source is not blamed: {message}"
    );

    policies
        .patch(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"validateJwt": {"jwksUris": null}}})),
        )
        .await
        .expect("drop the dead source");
    let (reason, message) = wait_condition(&policies, "api", "KeysResolved", "True").await;
    assert_eq!(reason, "KeysFetched");
    assert!(message.contains(&idp.discovery_url()), "{message}");

    // The provider goes away: the periodic re-check reports it.
    idp.set_available(false);
    let (_, message) = wait_condition(&policies, "api", "KeysResolved", "False").await;
    assert!(message.contains(&idp.discovery_url()), "{message}");
}

#[tokio::test]
async fn a_second_replica_stands_by_while_the_first_holds_the_lease() {
    let (client, namespace, _) = setup("leader").await;
    let cp = ControlPlane::shared().await.expect("control plane");
    let leases = Api::<Lease>::namespaced(client.clone(), SYSTEM_NAMESPACE);
    let holder = || async {
        leases
            .get_opt("tokengate-operator")
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
    };
    wait_until(TIMEOUT, "the first replica to hold the lease", || async {
        Ok(holder().await.as_deref() == Some("operator-a"))
    })
    .await
    .expect("leader elected");

    let (mut standby, admin) = spawn_operator(cp, &client, "operator-b")
        .await
        .expect("second replica");
    wait_until(TIMEOUT, "the second replica to report ready", || async {
        Ok(admin_get(admin, "/ready").await.contains("ready (standby)"))
    })
    .await
    .expect("standby ready");
    // Longer than a lease duration: the holder renews, the standby never takes over.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(holder().await.as_deref(), Some("operator-a"), "one leader");
    assert!(standby.is_running());
    assert!(admin_get(admin, "/ready").await.contains("ready (standby)"));

    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    policies
        .create(
            &PostParams::default(),
            &policy(
                &namespace,
                "led",
                jwks_spec("led", "https://idp.example/keys"),
            ),
        )
        .await
        .expect("create");
    wait_condition(&policies, "led", "Ready", "True").await;
    standby.kill();
}

#[tokio::test]
async fn a_standby_takes_over_when_the_leader_dies() {
    let (client, namespace, _) = setup("takeover").await;
    let cp = ControlPlane::shared().await.expect("control plane");
    // A lease of their own, so the shared operator is not disturbed.
    let lease = format!("takeover-{namespace}");
    let (mut first, first_admin) = spawn_operator_on_lease(cp, &client, "first", &lease)
        .await
        .expect("first replica");
    wait_until(TIMEOUT, "the first replica to lead", || async {
        Ok(admin_get(first_admin, "/ready")
            .await
            .contains("ready (leader)"))
    })
    .await
    .expect("first leads");
    let (mut second, second_admin) = spawn_operator_on_lease(cp, &client, "second", &lease)
        .await
        .expect("second replica");
    wait_until(TIMEOUT, "the second replica to stand by", || async {
        Ok(admin_get(second_admin, "/ready")
            .await
            .contains("ready (standby)"))
    })
    .await
    .expect("second stands by");

    // Killed outright: no release, so the lease must expire (4 s) before the standby leads.
    let killed = Instant::now();
    first.kill();
    wait_until(TIMEOUT, "the standby to take over", || async {
        Ok(admin_get(second_admin, "/ready")
            .await
            .contains("ready (leader)"))
    })
    .await
    .expect("takeover");
    let takeover = killed.elapsed();
    assert!(
        takeover >= Duration::from_secs(2),
        "not before the lease expired: {takeover:?}"
    );
    let holder = Api::<Lease>::namespaced(client.clone(), SYSTEM_NAMESPACE)
        .get(&lease)
        .await
        .expect("lease")
        .spec
        .and_then(|s| s.holder_identity);
    assert_eq!(holder.as_deref(), Some("second"));
    eprintln!("standby took over {takeover:?} after the leader was killed");
    second.kill();
}

/// The API server's own request counter (`apiserver_request_total`), summed by
/// `VERB resource[/subresource]`: every client's requests, the operator's among them.
async fn apiserver_requests(client: &Client) -> BTreeMap<String, f64> {
    let request = http::Request::get("/metrics")
        .body(Vec::new())
        .expect("GET /metrics");
    let text = client
        .request_text(request)
        .await
        .expect("the API server's /metrics");
    let mut sums = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split("\",")
                .find_map(|pair| pair.strip_prefix(&format!("{name}=\"")))
                .map(|v| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let subresource = label("subresource");
        let resource = if subresource.is_empty() {
            label("resource")
        } else {
            format!("{}/{subresource}", label("resource"))
        };
        let key = format!("{} {resource}", label("verb"));
        *sums.entry(key).or_default() += value.trim().parse::<f64>().unwrap_or(0.0);
    }
    sums
}

fn shared_operator_admin() -> u16 {
    OPERATOR_STARTED
        .get()
        .and_then(|s| s.as_ref().ok())
        .map(|o| o.admin)
        .expect("admin")
}

/// Reconciles the shared operator has counted so far, whatever their result.
async fn reconcile_count() -> f64 {
    admin_get(shared_operator_admin(), "/metrics")
        .await
        .lines()
        .filter(|l| l.starts_with("tokengate_reconcile_total{"))
        .filter_map(|l| {
            l.rsplit_once(' ')
                .and_then(|(_, n)| n.trim().parse::<f64>().ok())
        })
        .sum()
}

/// What changed between two readings of [`apiserver_requests`], largest first.
fn request_delta(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
) -> Vec<(String, f64)> {
    let mut delta: Vec<(String, f64)> = after
        .iter()
        .map(|(key, value)| (key.clone(), value - before.get(key).copied().unwrap_or(0.0)))
        .filter(|(_, value)| *value > 0.0)
        .collect();
    delta.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    delta
}

/// Reconcile time and operator RSS with 1,000 TokenPolicies across 100 namespaces. A
/// measurement, run by hand:
/// `cargo test -p tokengate-operator --test cluster -- --ignored --nocapture scale`
#[tokio::test]
#[ignore = "a measurement, run by hand"]
async fn scale_1000_policies_across_100_namespaces() {
    use futures_util::StreamExt as _;
    let (client, _, _) = setup("scale").await;
    let cp = ControlPlane::shared().await.expect("control plane");
    let idp = IdentityProvider::start().await.expect("identity provider");
    let rss = || {
        let pid = OPERATOR_STARTED
            .get()
            .and_then(|s| s.as_ref().ok())
            .map(|o| o.process.pid())
            .expect("operator pid");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .map(|l| l.trim_start_matches("VmRSS:").trim().to_string())
            })
            .unwrap_or_default()
    };
    eprintln!("operator RSS before: {}", rss());
    let mut namespaces = Vec::new();
    for _ in 0..100 {
        namespaces.push(cp.namespace(&client, "scale").await.expect("namespace"));
    }
    let requests_before = apiserver_requests(&client).await;
    let reconciles_before = reconcile_count().await;
    let started = Instant::now();
    let jobs = namespaces
        .iter()
        .flat_map(|namespace| (0..10).map(move |i| (namespace.clone(), format!("policy-{i}"))));
    let discovery = idp.discovery_url();
    futures_util::stream::iter(jobs)
        .map(|(namespace, name)| {
            let client = client.clone();
            let spec = json!({
                "selector": {"matchLabels": {"app": name}},
                "validateJwt": {"openidConfigs": [{"url": discovery}], "audiences": ["api://scale"]},
            });
            async move {
                Api::<TokenPolicy>::namespaced(client, &namespace)
                    .create(&PostParams::default(), &policy(&namespace, &name, spec))
                    .await
                    .expect("create");
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;
    let created = started.elapsed();
    let all = Api::<TokenPolicy>::all(client.clone());
    let mut polls = 0_u32;
    // Polled every 2 s: listing 1,000 objects is not free for the API server either.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let mut states: BTreeMap<String, usize> = BTreeMap::new();
        polls += 1;
        for p in all
            .list(&ListParams::default())
            .await
            .expect("list")
            .items
            .iter()
            .filter(|p| p.namespace().is_some_and(|n| n.starts_with("scale-")))
        {
            let state = |t: &str| {
                condition(p, t).map_or("none".to_string(), |(s, r, _)| format!("{s}/{r}"))
            };
            *states
                .entry(format!(
                    "Ready={} KeysResolved={}",
                    state("Ready"),
                    state("KeysResolved")
                ))
                .or_default() += 1;
        }
        let ready = states
            .get("Ready=True/Rendered KeysResolved=True/KeysFetched")
            .copied()
            .unwrap_or(0);
        if ready == 1000 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {ready} of 1,000 Ready after 600 s"
        );
        eprintln!(
            "{:?}: {states:?}, operator RSS {}",
            started.elapsed(),
            rss()
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let ready = started.elapsed();
    let requests_ready = apiserver_requests(&client).await;
    let reconciles_ready = reconcile_count().await;
    let fetches = idp.jwks_fetches();
    eprintln!(
        "1,000 TokenPolicies in 100 namespaces: created in {created:?}, all Ready and \
         KeysResolved {ready:?} after the first create; operator RSS {}; JWKS fetches {fetches}",
        rss()
    );
    // Settled: what the operator still does once everything is Ready.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let requests_settled = apiserver_requests(&client).await;
    let reconciles_settled = reconcile_count().await;
    // The test's own requests: the creates and the status polls (one LIST each).
    let own = 1000.0 + f64::from(polls);
    for (label, requests, reconciles) in [
        ("at all Ready", &requests_ready, reconciles_ready),
        ("10 s later", &requests_settled, reconciles_settled),
    ] {
        let delta = request_delta(&requests_before, requests);
        let total: f64 = delta.iter().map(|(_, n)| n).sum();
        eprintln!(
            "API server requests {label}: {total} in all, {} without the test's own {own}: \
             {:.2} per policy; {} reconciles ({:.2} per policy)",
            total - own,
            (total - own) / 1000.0,
            reconciles - reconciles_before,
            (reconciles - reconciles_before) / 1000.0,
        );
        for (key, n) in delta.iter().take(20) {
            eprintln!("  {n:>8} {key}");
        }
    }
    // One more policy with the operator warm: time to the bundle and to Ready.
    let namespace = &namespaces[0];
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), namespace);
    let spec = json!({
        "selector": {"matchLabels": {"app": "late"}},
        "validateJwt": {"openidConfigs": [{"url": discovery}]},
    });
    let applied = Instant::now();
    policies
        .create(&PostParams::default(), &policy(namespace, "late", spec))
        .await
        .expect("create");
    wait_until(TIMEOUT, "the late policy in the bundle", || async {
        Ok(config_map_data(&client, namespace)
            .await
            .is_some_and(|d| d.contains_key("late.yaml")))
    })
    .await
    .expect("bundle");
    let to_bundle = applied.elapsed();
    wait_condition(&policies, "late", "Ready", "True").await;
    eprintln!(
        "warm operator: apply -> bundle {to_bundle:?}, apply -> Ready {:?}",
        applied.elapsed()
    );
    let metrics = admin_get(shared_operator_admin(), "/metrics").await;
    for line in metrics.lines().filter(|l| {
        l.starts_with("tokengate_reconcile_total")
            || l.starts_with("tokengate_reconcile_duration_seconds_sum")
            || l.starts_with("tokengate_reconcile_duration_seconds_count")
    }) {
        eprintln!("{line}");
    }
}

/// Runs the injected sidecar container of `pod` as the webhook wrote it, the contract's ports
/// mapped to free local ports and the application's 8080 to `app_port`, once the pod is Ready
/// (by the sidecar's own readinessProbe); returns it with its proxy and admin ports.
async fn run_sidecar(
    client: &Client,
    pod: &Pod,
    app_port: u16,
    sync_interval: Option<Duration>,
) -> (tokengate_testkit::cluster::podrunner::RunningPod, u16, u16) {
    use tokengate_policy::contract;
    use tokengate_testkit::cluster::podrunner::{PodRunnerOptions, RunningPod};
    let mut attempt = 0;
    loop {
        attempt += 1;
        let listen = free_port().expect("port");
        let admin = free_port().expect("port");
        let mut options = PodRunnerOptions::new(contract::SIDECAR_CONTAINER)
            .entrypoint([webhooks::sidecar_binary().display().to_string()])
            .port(contract::SIDECAR_PROXY_PORT, listen)
            .port(contract::SIDECAR_ADMIN_PORT, admin)
            .port(8080, app_port);
        if let Some(interval) = sync_interval {
            options = options.sync_interval(interval);
        }
        match RunningPod::start(client, pod, options).await {
            Ok(running) => return (running, listen, admin),
            // A free port is free when asked, not when bound: another process (or another
            // pod's outgoing connection) may take it in between. Other ports, then.
            Err(err) if attempt < 3 && format!("{err:#}").contains("Address already in use") => {
                eprintln!("{}: ports taken in between, again: {err:#}", pod.name_any());
            }
            Err(err) => panic!("run the injected sidecar container: {err:#}"),
        }
    }
}

/// The whole path: a Deployment in an opted-in namespace, its Pod created by the
/// controller-manager and injected by the webhook over TLS, the operator's bundle projected into
/// it the way kubelet would, and the injected sidecar container run exactly as the webhook wrote
/// it (the contract's ports mapped to free local ports), following edits of the policy and of
/// the pod's labels live.
#[tokio::test]
async fn a_pod_sidecar_enforces_the_rendered_bundle_and_follows_it() {
    use k8s_openapi::api::apps::v1::Deployment;
    use tokengate_policy::contract;
    use tokengate_testkit::cluster::podrunner::ProbeKind;
    use tokengate_testkit::echo::EchoServer;
    let (client, namespace, _webhook) = webhooks::setup("e2e").await;
    let idp = IdentityProvider::start().await.expect("identity provider");
    idp.register_client("shop-client", "s3cret");
    let app = EchoServer::start().await.expect("echo application");
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    let spec = json!({
        "selector": {"matchLabels": {"app": "shop"}},
        "validateJwt": {"openidConfigs": [{"url": idp.discovery_url()}],
                        "audiences": ["api://shop"]},
        "forwarding": {"claimsToHeaders": [{"claim": "sub", "header": "X-User"}]},
    });
    policies
        .create(&PostParams::default(), &policy(&namespace, "shop", spec))
        .await
        .expect("create policy");
    wait_condition(&policies, "shop", "Ready", "True").await;

    // As a user writes it: nothing about tokengate but the namespace's label.
    let deployment: Deployment = from_json(json!({
        "metadata": {"name": "shop"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "shop"}},
            "template": {
                "metadata": {"labels": {"app": "shop"}},
                "spec": {"containers": [{
                    "name": "shop",
                    "image": "example.invalid/shop:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
                    "livenessProbe": {"tcpSocket": {"port": "http"}},
                }]},
            },
        },
    }));
    Api::<Deployment>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create Deployment");
    let pod = webhooks::wait_for_pod(&client, &namespace, "app=shop").await;
    webhooks::assert_injected(&pod, "shop", 8080);

    // The sidecar's own readinessProbe (keys resolved) decides when the pod is Ready.
    let (running, listen, _) = run_sidecar(&client, &pod, app.port(), None).await;

    let token =
        webhooks::client_credentials_token(&idp, "shop-client", "s3cret", "api://shop").await;
    let (status, _) = http_get(listen, "/orders", None).await;
    assert_eq!(status, 401, "no token");
    let (status, response) = http_get(listen, "/orders", Some(&token)).await;
    assert_eq!(status, 200, "{response}");
    assert!(
        response.contains("shop-client"),
        "the claim header reaches the app: {response}"
    );

    // kubelet-style probes: the sidecar's on its admin port, the application's (rewritten from
    // the name the sidecar took over to the number) straight to the application.
    for kind in [
        ProbeKind::Startup,
        ProbeKind::Readiness,
        ProbeKind::Liveness,
    ] {
        let result = running
            .probe(contract::SIDECAR_CONTAINER, kind)
            .await
            .expect("probe");
        assert!(result.success, "sidecar {kind:?}: {result:?}");
    }
    let before = app.requests();
    let result = running
        .probe("shop", ProbeKind::Readiness)
        .await
        .expect("probe");
    assert!(result.success, "{result:?}");
    assert_eq!(
        app.requests(),
        before + 1,
        "the probe reached the application"
    );
    assert_eq!(app.last_request().expect("request").path, "/healthz");
    let result = running
        .probe("shop", ProbeKind::Liveness)
        .await
        .expect("probe");
    assert!(result.success, "{result:?}");

    // Edits of the TokenPolicy reach the running sidecar through the bundle, no restart.
    let mut delays = Vec::new();
    for (audience, refused) in [
        ("api://elsewhere", true),
        ("api://shop", false),
        ("api://elsewhere", true),
    ] {
        let edited = Instant::now();
        policies
            .patch(
                "shop",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"validateJwt": {"audiences": [audience]}}})),
            )
            .await
            .expect("edit policy");
        wait_until(TIMEOUT, "the edit to be enforced", || async {
            let (status, response) = http_get(listen, "/orders", Some(&token)).await;
            Ok(if refused {
                status == 401 && response.contains("TokenAudienceNotAllowed")
            } else {
                status == 200
            })
        })
        .await
        .expect("edit enforced");
        delays.push(edited.elapsed());
    }
    eprintln!("TokenPolicy edit -> enforced by the running sidecar: {delays:?}");

    // The pod leaves the policy's selector: nothing protects it, so nothing passes.
    Api::<Pod>::namespaced(client.clone(), &namespace)
        .patch(
            &pod.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "other"}}})),
        )
        .await
        .expect("relabel pod");
    wait_until(TIMEOUT, "NoPolicy after relabelling", || async {
        let (_, response) = http_get(listen, "/orders", Some(&token)).await;
        Ok(response.contains("NoPolicy"))
    })
    .await
    .expect("relabel enforced");
}

/// Keys distributed by the operator (`keyDelivery`): one Deployment of injected pods (50, or
/// `TOKENGATE_FLEET_PODS`), run by the pod runner, and 10 policies sharing one key source. The
/// identity provider counts JWKS fetches by client (`User-Agent`) and refuses the sidecars'
/// while the mode is `Operator`: the pods start ready from the bundle alone, follow a key
/// rotation through it, refuse an unknown `kid`, and fetch nothing, while the operator fetches
/// about once per refresh (`--key-recheck=3s`). Then `OperatorWithFallback` (a fetch per pod at
/// most, for the unknown `kid`, within the cooldown) and `Sidecar` (every pod fetches).
#[tokio::test]
async fn keys_reach_a_fleet_of_pods_through_the_bundle_without_their_fetches() {
    use futures_util::StreamExt as _;
    use k8s_openapi::api::apps::v1::Deployment;
    use tokengate_policy::{Algorithm, contract};
    use tokengate_testkit::cluster::podrunner::RunningPod;
    use tokengate_testkit::echo::EchoServer;
    use tokengate_testkit::idp::{DEFAULT_AUDIENCE, KeyFamily};
    use tokengate_testkit::metrics::value;

    const REFRESH: Duration = Duration::from_secs(3);
    const SIDECAR: &str = "tokengate-sidecar";
    const OPERATOR: &str = "tokengate-operator";
    let pods: usize = std::env::var("TOKENGATE_FLEET_PODS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(50);
    let (client, namespace, _webhook) = webhooks::setup("fleet").await;
    let idp = IdentityProvider::start().await.expect("identity provider");
    idp.refuse_clients(&[SIDECAR]);
    let app = EchoServer::start().await.expect("echo application");
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    let spec = |app: &str, mode: &str| {
        json!({
            "selector": {"matchLabels": {"app": app}},
            "keyDelivery": mode,
            "validateJwt": {"openidConfigs": [{"url": idp.discovery_url()}],
                            "audiences": [DEFAULT_AUDIENCE]},
        })
    };
    for i in 0..10 {
        let (name, app) = if i == 0 {
            ("fleet".to_string(), "fleet".to_string())
        } else {
            (format!("other-{i}"), format!("other-{i}"))
        };
        policies
            .create(
                &PostParams::default(),
                &policy(&namespace, &name, spec(&app, "Operator")),
            )
            .await
            .expect("create policy");
    }
    let (_, message) = wait_condition(&policies, "fleet", "KeysResolved", "True").await;
    assert!(
        message.contains("delivered in ConfigMap tokengate-jwks"),
        "{message}"
    );
    let source = tokengate_policy::RemoteKeySource::Discovery(idp.discovery_url());
    let file = contract::jwks_file_name(&source);
    let jwks_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    wait_until(TIMEOUT, "the keys in ConfigMap tokengate-jwks", || async {
        let map = jwks_maps.get_opt(contract::JWKS_CONFIG_MAP).await?;
        let data = map.and_then(|m| m.data).unwrap_or_default();
        Ok(data.len() == 1 && data.contains_key(&file))
    })
    .await
    .expect("delivered keys");

    let deployment: Deployment = from_json(json!({
        "metadata": {"name": "fleet"},
        "spec": {
            "replicas": pods,
            "selector": {"matchLabels": {"app": "fleet"}},
            "template": {
                "metadata": {"labels": {"app": "fleet"}},
                "spec": {"containers": [{
                    "name": "fleet", "image": "example.invalid/fleet:1",
                    "ports": [{"name": "http", "containerPort": 8080}],
                }]},
            },
        },
    }));
    Api::<Deployment>::namespaced(client.clone(), &namespace)
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create Deployment");
    let pod_api = Api::<Pod>::namespaced(client.clone(), &namespace);
    let created = std::sync::Mutex::new(Vec::new());
    wait_until(TIMEOUT, &format!("{pods} pods"), || async {
        let list = pod_api
            .list(&ListParams::default().labels("app=fleet"))
            .await?;
        let done = list.items.len() == pods;
        if let Ok(mut created) = created.lock() {
            *created = list.items;
        }
        Ok(done)
    })
    .await
    .expect("the Deployment's pods");
    let created = created.into_inner().expect("pods");

    // Each sidecar started with the provider refusing it: ready from the bundle alone.
    let started = Instant::now();
    let running: Vec<(RunningPod, u16, u16)> = futures_util::stream::iter(created)
        .map(|pod| {
            let client = client.clone();
            let app_port = app.port();
            // kubelet's own sync is slower still (about a minute by default).
            async move { run_sidecar(&client, &pod, app_port, Some(Duration::from_secs(3))).await }
        })
        .buffer_unordered(8)
        .collect()
        .await;
    eprintln!(
        "{pods} pods ready from the bundle alone (the provider refusing the sidecars) in {:?}",
        started.elapsed()
    );
    let every_pod = |token: String, expected: &'static str| {
        let ports: Vec<u16> = running.iter().map(|(_, listen, _)| *listen).collect();
        async move {
            let mut outcomes = BTreeMap::new();
            for port in ports {
                let (status, response) = http_get(port, "/orders", Some(&token)).await;
                let outcome = if status == 200 {
                    "200".to_string()
                } else {
                    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                    let reason: Value = serde_json::from_str(body).unwrap_or_default();
                    format!("{status} {}", reason["reason"].as_str().unwrap_or(""))
                };
                *outcomes.entry(outcome).or_insert(0) += 1;
            }
            (
                outcomes.len() == 1 && outcomes.contains_key(expected),
                outcomes,
            )
        }
    };
    let sidecar_fetches = || async {
        let mut per_pod = Vec::new();
        for (_, _, admin) in &running {
            let metrics = admin_get(*admin, "/metrics").await;
            per_pod.push(value(&metrics, "tokengate_jwks_fetch_total", &[]));
        }
        per_pod
    };

    // Operator mode over two refresh intervals and one rotation.
    let operator_admin = OPERATOR_STARTED
        .get()
        .and_then(|started| started.as_ref().ok())
        .map(|operator| operator.admin)
        .expect("the shared operator");
    let delivery = || async {
        let metrics = admin_get(operator_admin, "/metrics").await;
        (
            value(&metrics, "tokengate_key_delivery_seconds_count", &[]),
            value(&metrics, "tokengate_key_delivery_seconds_sum", &[]),
        )
    };
    let delivered_before = delivery().await;
    idp.reset_counters();
    let run = Instant::now();
    let before = idp.token(Algorithm::RS256);
    let (all, outcomes) = every_pod(before.clone(), "200").await;
    assert!(all, "{outcomes:?}");
    tokio::time::sleep(REFRESH).await;
    let rotated_at = Instant::now();
    idp.rotate(KeyFamily::Rsa);
    let rotated = idp.token(Algorithm::RS256);
    // A pod that accepted the new key keeps accepting it: each round asks only the others.
    let pending = std::sync::Mutex::new(
        running
            .iter()
            .map(|(running, listen, _)| (running.name().to_string(), *listen))
            .collect::<BTreeMap<String, u16>>(),
    );
    let last = std::sync::Mutex::new(BTreeMap::new());
    let outcome = wait_until(TIMEOUT, "every pod to accept the rotated key", || async {
        let ports: Vec<(String, u16)> = pending
            .lock()
            .map(|p| p.iter().map(|(n, l)| (n.clone(), *l)).collect())
            .unwrap_or_default();
        for (name, port) in ports {
            let (status, response) = http_get(port, "/orders", Some(&rotated)).await;
            if status == 200 {
                if let Ok(mut pending) = pending.lock() {
                    pending.remove(&name);
                }
            } else if let Ok(mut last) = last.lock() {
                let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
                last.insert(name, format!("{status} {body}"));
            }
        }
        Ok(pending.lock().map(|p| p.is_empty()).unwrap_or(false))
    })
    .await;
    if let Err(err) = outcome {
        let pending = pending.into_inner().unwrap_or_default();
        let last = last.into_inner().unwrap_or_default();
        let bundle = jwks_maps.get_opt(contract::JWKS_CONFIG_MAP).await;
        let first = running
            .iter()
            .find(|(running, _, _)| pending.contains_key(running.name()))
            .map(|(running, _, _)| {
                let logs = running.logs();
                let tail = logs.len().saturating_sub(3000);
                format!(
                    "{}\n{}",
                    running.runner_log(),
                    logs.get(tail..).unwrap_or_default()
                )
            });
        panic!(
            "{err:#}: {} pods never accepted it; their last answers: {:?}; ConfigMap now: \
             {bundle:?}; the first one's volume sync and sidecar logs: {}",
            pending.len(),
            pending
                .keys()
                .map(|name| (name, last.get(name)))
                .collect::<Vec<_>>(),
            first.unwrap_or_default()
        );
    }
    let rotation = rotated_at.elapsed();
    let delivered_after = delivery().await;
    let deliveries = delivered_after.0 - delivered_before.0;
    assert!(deliveries >= 1.0, "the rotation's delivery is measured");
    eprintln!(
        "the operator's fetch of the rotated key set -> ConfigMap tokengate-jwks: {:.0} ms on \
         average over {deliveries} deliveries (tokengate_key_delivery_seconds)",
        (delivered_after.1 - delivered_before.1) / deliveries * 1000.0
    );
    let (all, outcomes) = every_pod(before.clone(), "200").await;
    assert!(
        all,
        "the key published before the rotation still verifies: {outcomes:?}"
    );
    let unknown = idp.add_unpublished_key(KeyFamily::Rsa);
    let forged = idp.sign_with_kid(&unknown, Algorithm::RS256, &idp.claims());
    let (all, outcomes) = every_pod(forged.clone(), "401 TokenSignatureKeyNotFound").await;
    assert!(all, "{outcomes:?}");
    let refusals = value(
        &admin_get(running[0].2, "/metrics").await,
        "tokengate_requests_total",
        &[("reason", "TokenSignatureKeyNotFound")],
    );
    assert!(refusals >= 1.0, "the refusal is counted");
    let elapsed = run.elapsed().max(REFRESH * 2);
    if elapsed > run.elapsed() {
        tokio::time::sleep(elapsed - run.elapsed()).await;
    }
    let elapsed = run.elapsed();
    let by_client = idp.jwks_fetches_by_client();
    let operator = idp.jwks_fetches_by(OPERATOR);
    let intervals = elapsed.as_secs_f64() / REFRESH.as_secs_f64();
    eprintln!(
        "Operator mode, {pods} pods, {elapsed:?} ({intervals:.1} refresh intervals of {REFRESH:?}): \
         JWKS fetches by client {by_client:?}; rotation -> every pod accepting the new key in \
         {rotation:?}"
    );
    assert_eq!(idp.jwks_fetches_by(SIDECAR), 0, "{by_client:?}");
    assert_eq!(sidecar_fetches().await.iter().sum::<f64>(), 0.0);
    assert!(
        operator >= 1 && (operator as f64) <= intervals.ceil() + 1.0,
        "about one operator fetch per refresh interval: {by_client:?}"
    );

    // OperatorWithFallback: the sidecars may reach the provider now; each fetches at most once
    // for an unknown kid within the cooldown (30s by default), however often it is asked.
    idp.refuse_clients(&[]);
    let switch = |mode: &'static str| {
        let policies = policies.clone();
        let spec = spec("fleet", mode);
        async move {
            policies
                .patch(
                    "fleet",
                    &PatchParams::default(),
                    &Patch::Merge(json!({"spec": spec})),
                )
                .await
                .expect("switch keyDelivery");
        }
    };
    let generations = || async {
        let mut lowest = f64::MAX;
        for (_, _, admin) in &running {
            let metrics = admin_get(*admin, "/metrics").await;
            lowest = lowest.min(value(&metrics, "tokengate_policy_generation", &[]));
        }
        lowest
    };
    let generation = generations().await;
    idp.reset_counters();
    let fetches_before = sidecar_fetches().await;
    switch("OperatorWithFallback").await;
    wait_until(
        TIMEOUT,
        "every pod to apply OperatorWithFallback",
        || async { Ok(generations().await > generation) },
    )
    .await
    .expect("mode applied");
    let (all, outcomes) = every_pod(rotated.clone(), "200").await;
    assert!(all, "{outcomes:?}");
    let at_switch = idp.jwks_fetches_by(SIDECAR);
    for _ in 0..2 {
        let (all, outcomes) = every_pod(forged.clone(), "401 TokenSignatureKeyNotFound").await;
        assert!(all, "{outcomes:?}");
    }
    let per_pod: Vec<f64> = sidecar_fetches()
        .await
        .iter()
        .zip(&fetches_before)
        .map(|(after, before)| after - before)
        .collect();
    let fallback = idp.jwks_fetches_by(SIDECAR);
    eprintln!(
        "OperatorWithFallback, {pods} pods: JWKS fetches by the sidecars at the switch {at_switch}, \
         after two rounds of an unknown kid {fallback}"
    );
    assert_eq!(
        at_switch, 0,
        "the bundle's keys serve the new mode's sources"
    );
    assert!(
        per_pod.iter().all(|fetches| *fetches <= 1.0),
        "at most one fetch per pod per cooldown: {per_pod:?}"
    );
    assert!(fallback <= pods as u64);

    // Sidecar mode: every pod fetches its keys itself.
    let generation = generations().await;
    idp.reset_counters();
    switch("Sidecar").await;
    wait_until(TIMEOUT, "every pod to apply Sidecar", || async {
        Ok(generations().await > generation)
    })
    .await
    .expect("mode applied");
    wait_until(TIMEOUT, "every pod's own fetch", || async {
        Ok(idp.jwks_fetches_by(SIDECAR) >= pods as u64)
    })
    .await
    .expect("own fetches");
    eprintln!(
        "Sidecar mode, {pods} pods: JWKS fetches by the sidecars on applying it {}",
        idp.jwks_fetches_by(SIDECAR)
    );
}

// =================================================================================================
// Admission webhooks
// =================================================================================================

/// The admission webhooks against the real API server, which calls them over TLS. Every operator
/// replica of this test binary serves them, with certificates short-lived enough that every test
/// here runs across rotations; the configurations of `operator/deploy/webhooks.yaml` call
/// `webhook-a`, a standby replica on the shared lease.
mod webhooks {
    use std::path::PathBuf;
    use std::sync::Arc;

    use http_body_util::BodyExt as _;
    use k8s_openapi::api::admissionregistration::v1::{
        MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
    };
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    use tokengate_policy::contract;
    use tokio::sync::{Mutex, RwLock, RwLockReadGuard};

    use super::*;

    const CA_VALIDITY: &str = "60s";
    const CERT_VALIDITY: &str = "20s";
    const TLS_SECRET: &str = "tokengate-webhook-tls";
    const MUTATING: &str = "tokengate-injector";
    const VALIDATING: &str = "tokengate-policy-validator";

    /// The webhook flags of every replica: a port of its own, a certificate that covers
    /// 127.0.0.1 (the API server calls by URL here), and short lifetimes.
    pub fn flags(port: u16) -> Vec<String> {
        vec![
            format!("--webhook-listen=127.0.0.1:{port}"),
            "--webhook-host=127.0.0.1".to_string(),
            format!("--webhook-ca-validity={CA_VALIDITY}"),
            format!("--webhook-cert-validity={CERT_VALIDITY}"),
            "--sidecar-image=example.invalid/tokengate-sidecar:test".to_string(),
        ]
    }

    /// The replica the webhook configurations call.
    pub struct Replica {
        port: u16,
        admin: std::sync::atomic::AtomicU16,
        process: Mutex<Option<Process>>,
    }

    static REPLICA: OnceLock<Result<Replica, String>> = OnceLock::new();
    /// Tests that need the webhook served hold it shared; the test that stops it, alone.
    static IN_USE: RwLock<()> = RwLock::const_new(());

    /// Held by a test while it relies on the webhook being served.
    pub struct Served {
        _guard: RwLockReadGuard<'static, ()>,
        replica: &'static Replica,
    }

    async fn spawn_replica(
        cp: &ControlPlane,
        client: &Client,
        identity: &str,
        port: u16,
    ) -> Result<(Process, u16), String> {
        let admin = free_port().map_err(|e| format!("{e:#}"))?;
        let mut command = Command::new(OPERATOR);
        command
            .arg(format!("--admin=127.0.0.1:{admin}"))
            .arg("--lease-name=tokengate-operator")
            .arg(format!("--lease-namespace={SYSTEM_NAMESPACE}"))
            .arg(format!("--identity={identity}"))
            .arg("--lease-duration=4s")
            .args(flags(port))
            .env("TOKENGATE_LOG", "info,tokengate_operator=debug");
        let process = cp
            .spawn_as_service_account(client, SYSTEM_NAMESPACE, "tokengate-operator", command)
            .await
            .map_err(|e| format!("{e:#}"))?;
        Ok((process, admin))
    }

    /// The shipped configurations, calling `https://127.0.0.1:{port}` instead of the Service.
    async fn register(client: &Client, port: u16) -> Result<(), String> {
        let parsed: Vec<Value> =
            serde_saphyr::from_multiple(include_str!("../deploy/webhooks.yaml"))
                .map_err(|e| format!("webhooks.yaml: {e}"))?;
        let documents =
            tokengate_testkit::cluster::webhook::configurations_at_local_port(parsed, port)
                .map_err(|e| format!("{e:#}"))?;
        let [mutating, validating] = documents.as_slice() else {
            return Err("webhooks.yaml holds two configurations".to_string());
        };
        let mutating: MutatingWebhookConfiguration = from_json(mutating.clone());
        apply(&Api::all(client.clone()), MUTATING, &mutating).await?;
        let validating: ValidatingWebhookConfiguration = from_json(validating.clone());
        apply(&Api::all(client.clone()), VALIDATING, &validating).await
    }

    async fn replica() -> &'static Replica {
        let cp = ControlPlane::shared().await.expect("control plane");
        let started = tokio::task::spawn_blocking(move || {
            REPLICA.get_or_init(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                runtime.block_on(async {
                    let client = cp.client().await.map_err(|e| format!("{e:#}"))?;
                    let port = free_port().map_err(|e| format!("{e:#}"))?;
                    let (process, admin) = spawn_replica(cp, &client, "webhook-a", port).await?;
                    register(&client, port).await?;
                    Ok(Replica {
                        port,
                        admin: admin.into(),
                        process: Mutex::new(Some(process)),
                    })
                })
            })
        })
        .await
        .expect("join");
        started.as_ref().expect("webhook replica started")
    }

    /// The operator, the webhook replica and a namespace labelled
    /// `tokengate.dev/injection=enabled`, once the API server injects pods there.
    pub async fn setup(prefix: &str) -> (Client, String, Served) {
        let (client, namespace, _) = super::setup(prefix).await;
        let replica = replica().await;
        let guard = IN_USE.read().await;
        opt_in(&client, &namespace).await;
        wait_until_injecting(&client, &namespace).await;
        (
            client,
            namespace,
            Served {
                _guard: guard,
                replica,
            },
        )
    }

    async fn opt_in(client: &Client, namespace: &str) {
        Api::<Namespace>::all(client.clone())
            .patch(
                namespace,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"labels": {
                    contract::NAMESPACE_INJECTION_LABEL: contract::INJECTION_ENABLED}}})),
            )
            .await
            .expect("label the namespace");
    }

    /// A pod as users write them: one container, its port named `http`.
    fn app_pod(name: &str, labels: Value) -> Pod {
        from_json(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{
                "name": "app", "image": "example.invalid/app:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}},
            }]},
        }))
    }

    fn dry_run() -> PostParams {
        PostParams {
            dry_run: true,
            field_manager: None,
        }
    }

    fn has_sidecar(pod: &Pod) -> bool {
        sidecars(pod) == 1
    }

    fn sidecars(pod: &Pod) -> usize {
        pod.spec
            .iter()
            .flat_map(|s| s.init_containers.iter().flatten())
            .filter(|c| c.name == contract::SIDECAR_CONTAINER)
            .count()
    }

    /// The API server picks configurations and their caBundle up asynchronously.
    async fn wait_until_injecting(client: &Client, namespace: &str) {
        let pods = Api::<Pod>::namespaced(client.clone(), namespace);
        let last = std::sync::Mutex::new(String::new());
        let outcome = wait_until(TIMEOUT, "the API server to call the webhook", || async {
            let result = pods
                .create(&dry_run(), &app_pod("probe", json!({"app": "probe"})))
                .await;
            let done = matches!(&result, Ok(pod) if has_sidecar(pod));
            if let Ok(mut last) = last.lock() {
                *last = format!("{result:?}");
            }
            Ok(done)
        })
        .await;
        if let Err(err) = outcome {
            panic!(
                "{err:#}; last answer: {}",
                last.lock().map(|l| l.clone()).unwrap_or_default()
            );
        }
    }

    pub fn sidecar_binary() -> PathBuf {
        let sidecar = std::path::Path::new(OPERATOR).with_file_name("tokengate-sidecar");
        assert!(
            sidecar.is_file(),
            "{} is missing: build it with `cargo build -p tokengate-sidecar` (cargo test \
             --workspace does)",
            sidecar.display()
        );
        sidecar
    }

    /// Waits until a pod matching `selector` exists, and returns it as stored.
    pub async fn wait_for_pod(client: &Client, namespace: &str, selector: &str) -> Pod {
        let pods = Api::<Pod>::namespaced(client.clone(), namespace);
        let found = std::sync::Mutex::new(None);
        wait_until(TIMEOUT, &format!("a pod {selector}"), || async {
            let list = pods.list(&ListParams::default().labels(selector)).await?;
            let first = list.items.into_iter().next();
            let done = first.is_some();
            if let Ok(mut found) = found.lock() {
                *found = first;
            }
            Ok(done)
        })
        .await
        .expect("pod created");
        found.into_inner().ok().flatten().expect("the pod found")
    }

    /// The pod carries the sidecar as the webhook shapes it, around `container`'s port `http`.
    pub fn assert_injected(pod: &Pod, container: &str, port: u16) {
        let spec = pod.spec.as_ref().expect("spec");
        let sidecar = spec
            .init_containers
            .iter()
            .flatten()
            .find(|c| c.name == contract::SIDECAR_CONTAINER)
            .expect("the sidecar is an init container");
        assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
        assert_eq!(
            sidecar.args.as_deref(),
            Some(contract::sidecar_run_args(port, &contract::SidecarTuning::default()).as_slice())
        );
        let proxy = &sidecar.ports.as_deref().expect("sidecar ports")[0];
        assert_eq!(proxy.name.as_deref(), Some("http"), "the name moved");
        assert_eq!(
            proxy.container_port,
            i32::from(contract::SIDECAR_PROXY_PORT)
        );
        let app = spec
            .containers
            .iter()
            .find(|c| c.name == container)
            .expect("app container");
        let app_port = &app.ports.as_deref().expect("app ports")[0];
        assert_eq!(app_port.container_port, i32::from(port));
        assert_eq!(
            app_port.name.as_deref(),
            Some(contract::app_port_name(port).as_str())
        );
        let readiness = app.readiness_probe.as_ref().expect("readinessProbe");
        assert_eq!(
            readiness.http_get.as_ref().expect("httpGet").port,
            IntOrString::Int(i32::from(port)),
            "the probe names the number now"
        );
        let annotations = pod.metadata.annotations.as_ref().expect("annotations");
        assert_eq!(
            annotations[contract::SIDECAR_VERSION_ANNOTATION],
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(
            annotations[contract::UPSTREAM_PORT_ANNOTATION],
            port.to_string()
        );
    }

    /// A client-credentials token from the identity provider's token endpoint.
    pub async fn client_credentials_token(
        idp: &IdentityProvider,
        client_id: &str,
        secret: &str,
        audience: &str,
    ) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let url = idp.token_url();
        let rest = url.strip_prefix("http://").expect("http token URL");
        let (authority, path) = rest.split_at(rest.find('/').expect("path"));
        let form = format!(
            "grant_type=client_credentials&client_id={client_id}&client_secret={secret}&scope={}",
            format!("{audience}/.default")
                .replace(':', "%3A")
                .replace('/', "%2F")
        );
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .expect("token endpoint");
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: \
             application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{form}",
            form.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("send token request");
        let mut response = String::new();
        stream
            .read_to_string(&mut response)
            .await
            .expect("token response");
        let body = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .expect("a body");
        let json: Value = serde_json::from_str(body).expect("token JSON");
        json["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("no access_token: {response}"))
            .to_string()
    }

    fn api_message(result: Result<Pod, kube::Error>) -> String {
        match result {
            Err(kube::Error::Api(status)) => status.message,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn opt_in_opt_out_exclusions_and_idempotence() {
        let (client, namespace, _served) = setup("inject").await;
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace);

        let injected = pods
            .create(&dry_run(), &app_pod("web-1", json!({"app": "web"})))
            .await
            .expect("admitted");
        assert_injected(&injected, "app", 8080);
        let opted_out = pods
            .create(
                &dry_run(),
                &app_pod(
                    "web-2",
                    json!({"app": "web", contract::POD_INJECT_LABEL: "false"}),
                ),
            )
            .await
            .expect("admitted");
        assert_eq!(sidecars(&opted_out), 0, "opted out");

        // Idempotent: an injected pod sent again (a copy of one, or a second webhook) keeps
        // exactly one sidecar and is otherwise unchanged.
        let mut again = injected.clone();
        again.metadata = kube::api::ObjectMeta {
            name: Some("web-3".to_string()),
            labels: injected.metadata.labels.clone(),
            annotations: injected.metadata.annotations.clone(),
            ..Default::default()
        };
        let twice = pods.create(&dry_run(), &again).await.expect("admitted");
        assert_eq!(sidecars(&twice), 1);
        assert_eq!(
            serde_json::to_value(&twice.spec).expect("spec"),
            serde_json::to_value(&injected.spec).expect("spec")
        );

        // An opted-in pod that cannot be protected is refused, saying what to change.
        let portless: Pod = from_json(json!({
            "metadata": {"name": "batch"},
            "spec": {"containers": [{"name": "job", "image": "example.invalid/job:1"}]},
        }));
        let message = api_message(pods.create(&dry_run(), &portless).await);
        assert!(
            message.contains("tokengate cannot protect this pod")
                && message.contains("declare the application's containerPort")
                && message.contains("tokengate.dev/inject=false"),
            "{message}"
        );

        // A namespace that is not opted in: only pods that ask for it.
        let cp = ControlPlane::shared().await.expect("control plane");
        let plain = cp.namespace(&client, "plain").await.expect("namespace");
        let plain_pods = Api::<Pod>::namespaced(client.clone(), &plain);
        let untouched = plain_pods
            .create(&dry_run(), &app_pod("web", json!({"app": "web"})))
            .await
            .expect("admitted");
        assert_eq!(sidecars(&untouched), 0);
        let asked = plain_pods
            .create(
                &dry_run(),
                &app_pod("asked", json!({contract::POD_INJECT_LABEL: "true"})),
            )
            .await
            .expect("admitted");
        assert_injected(&asked, "app", 8080);

        // Never kube-system or the operator's namespace, whatever the pod asks for.
        for excluded in ["kube-system", SYSTEM_NAMESPACE] {
            let pod = Api::<Pod>::namespaced(client.clone(), excluded)
                .create(
                    &dry_run(),
                    &app_pod("asked", json!({contract::POD_INJECT_LABEL: "true"})),
                )
                .await
                .expect("admitted");
            assert_eq!(sidecars(&pod), 0, "{excluded}");
        }
    }

    /// A Service that targets the protected port by name reaches the sidecar (the EndpointSlice
    /// controller resolves the name on the sidecar init container); one that targets the number
    /// reaches the application, and the operator reports it as a bypass.
    #[tokio::test]
    async fn services_by_name_reach_the_sidecar_and_by_number_are_reported() {
        let (client, namespace, _served) = setup("endpoints").await;
        // The EndpointSlice controller skips pods on nodes it does not know.
        let node: k8s_openapi::api::core::v1::Node =
            from_json(json!({"metadata": {"name": "tokengate-test-node"}}));
        apply(&Api::all(client.clone()), "tokengate-test-node", &node)
            .await
            .expect("node");
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
        let mut pod = app_pod("web-1", json!({"app": "web"}));
        if let Some(spec) = pod.spec.as_mut() {
            spec.node_name = Some("tokengate-test-node".to_string());
        }
        let pod = pods
            .create(&PostParams::default(), &pod)
            .await
            .expect("created");
        assert_injected(&pod, "app", 8080);
        // As kubelet would report it once running: an address (not loopback, which
        // EndpointSlices refuse; nothing connects to it here) and Ready.
        let now = "2026-01-01T00:00:00Z";
        pods.patch_status(
            "web-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {
                "phase": "Running", "podIP": "10.244.0.10", "podIPs": [{"ip": "10.244.0.10"}],
                "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": now}],
            }})),
        )
        .await
        .expect("mark Ready");
        let services = Api::<Service>::namespaced(client.clone(), &namespace);
        for (name, target) in [("by-name", json!("http")), ("by-number", json!(8080))] {
            let service: Service = from_json(json!({
                "metadata": {"name": name},
                "spec": {"selector": {"app": "web"},
                         "ports": [{"name": "web", "port": 80, "targetPort": target}]},
            }));
            services
                .create(&PostParams::default(), &service)
                .await
                .expect("service");
        }
        let slices = Api::<EndpointSlice>::namespaced(client.clone(), &namespace);
        for (service, expected) in [
            ("by-name", i32::from(contract::SIDECAR_PROXY_PORT)),
            ("by-number", 8080),
        ] {
            let seen = std::sync::Mutex::new(Vec::new());
            let outcome = wait_until(
                TIMEOUT,
                &format!("the EndpointSlice of {service}"),
                || async {
                    let selector = format!("kubernetes.io/service-name={service}");
                    let list = slices
                        .list(&ListParams::default().labels(&selector))
                        .await?;
                    let found = list.items.iter().any(|slice| {
                        slice.endpoints.as_ref().is_some_and(|e| !e.is_empty())
                            && slice
                                .ports
                                .iter()
                                .flatten()
                                .any(|p| p.port == Some(expected))
                    });
                    if let Ok(mut seen) = seen.lock() {
                        *seen = list.items;
                    }
                    Ok(found)
                },
            )
            .await;
            if let Err(err) = outcome {
                let cp = ControlPlane::shared().await.expect("control plane");
                panic!(
                    "{err:#}; EndpointSlices: {:?}\n{}",
                    seen.lock().map(|s| s.clone()),
                    cp.log_tails(30)
                );
            }
        }

        let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
        policies
            .create(
                &PostParams::default(),
                &policy(
                    &namespace,
                    "web",
                    jwks_spec("web", "https://idp.example/keys"),
                ),
            )
            .await
            .expect("policy");
        let (_, message) = wait_condition(&policies, "web", "Bypass", "True").await;
        assert!(
            message.contains("Service by-number") && !message.contains("Service by-name"),
            "{message}"
        );
    }

    /// Creates a TokenPolicy through the raw API, for the `Warning` headers of the answer.
    async fn create_with_warnings(
        client: &Client,
        namespace: &str,
        policy: &TokenPolicy,
    ) -> (u16, Vec<String>) {
        let request = http::Request::post(format!(
            "/apis/tokengate.dev/v1alpha1/namespaces/{namespace}/tokenpolicies"
        ))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(kube::client::Body::from(
            serde_json::to_vec(policy).expect("policy JSON"),
        ))
        .expect("request");
        let response = client.send(request).await.expect("the API server answers");
        let status = response.status().as_u16();
        // `Warning: 299 - "text"`, one header per warning.
        let warnings = response
            .headers()
            .get_all("warning")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| {
                v.split_once('"')
                    .map(|(_, rest)| rest.trim_end_matches('"').replace("\\\"", "\""))
                    .unwrap_or_else(|| v.to_string())
            })
            .collect();
        let _ = response.into_body().collect().await;
        (status, warnings)
    }

    #[tokio::test]
    async fn invalid_token_policies_are_refused_and_overlaps_warned() {
        let (client, namespace, _served) = setup("validate").await;
        let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
        let selector = json!({"matchLabels": {"app": "a"}});
        let http_keys = json!({"selector": selector,
            "validateJwt": {"jwksUris": ["http://idp.example/keys"]}});
        // The validating webhook fails open (Ignore): wait until the API server calls it.
        wait_until(
            TIMEOUT,
            "the API server to call the validating webhook",
            || async {
                let dry = PostParams {
                    dry_run: true,
                    field_manager: None,
                };
                Ok(policies
                    .create(&dry, &policy(&namespace, "probe", http_keys.clone()))
                    .await
                    .is_err())
            },
        )
        .await
        .expect("validating webhook called");

        let cases = [
            (
                "http-keys",
                http_keys.clone(),
                "spec.validateJwt.jwksUris[0]: \"http://idp.example/keys\" uses http",
            ),
            (
                "not-a-url",
                json!({"selector": selector, "validateJwt": {"openidConfigs": [{"url": "idp.example/.well-known/openid-configuration"}]}}),
                "spec.validateJwt.openidConfigs[0].url: \"idp.example/.well-known/openid-configuration\" is not a URL",
            ),
            (
                "bad-pem",
                json!({"selector": selector, "validateJwt": {"issuerSigningKeys": [
                    {"id": "k", "pem": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"}]}}),
                "spec.validateJwt.issuerSigningKeys[0]",
            ),
            (
                "unfit-algorithm",
                json!({"selector": selector, "validateJwt": {"jwksUris": ["https://idp.example/keys"], "algorithms": ["HS256"]}}),
                "no configured key can verify HS256",
            ),
            (
                "bad-claim",
                json!({"selector": selector, "validateJwt": {"jwksUris": ["https://idp.example/keys"],
                       "requiredClaims": [{"name": "", "values": ["x"]}]}}),
                "spec.validateJwt.requiredClaims[0].name: claim name is empty",
            ),
            (
                "bad-header",
                json!({"selector": selector, "validateJwt": {"jwksUris": ["https://idp.example/keys"]},
                       "forwarding": {"claimsToHeaders": [{"claim": "sub", "header": "X User"}]}}),
                "spec.forwarding.claimsToHeaders[0].header: \"X User\" is not a valid header name",
            ),
            (
                "bad-secret-ref",
                json!({"selector": selector, "validateJwt": {"issuerSigningKeys": [
                    {"id": "h", "secretRef": {"name": "Billing_JWT", "key": "key"}}]}}),
                "spec.validateJwt.issuerSigningKeys[0].secretRef.name: \"Billing_JWT\" is not a Secret name",
            ),
            (
                "key-file",
                json!({"selector": selector, "validateJwt": {"issuerSigningKeys": [
                    {"id": "h", "file": "/keys/h"}]}}),
                "issuerSigningKeys[0].file: injected sidecars have no key files",
            ),
        ];
        for (name, spec, expected) in cases {
            let status = refusal(&policies, &namespace, name, spec).await;
            assert!(
                status
                    .message
                    .contains(&format!("TokenPolicy {name:?} is invalid"))
                    && status.message.contains(expected),
                "{name}: {}",
                status.message
            );
        }

        // Overlapping selectors are admitted with a warning naming the policy that applies.
        let keys = "https://idp.example/keys";
        let (status, warnings) = create_with_warnings(
            &client,
            &namespace,
            &policy(&namespace, "first", jwks_spec("orders", keys)),
        )
        .await;
        assert_eq!(status, 201);
        assert!(warnings.is_empty(), "{warnings:?}");
        let mut second = jwks_spec("orders", keys);
        second["selector"] = json!({"matchExpressions": [
            {"key": "app", "operator": "In", "values": ["orders", "shop"]}]});
        let (status, warnings) =
            create_with_warnings(&client, &namespace, &policy(&namespace, "second", second)).await;
        assert_eq!(status, 201);
        assert!(
            warnings.iter().any(
                |w| w.contains("overlaps TokenPolicy \"first\" (app=orders)")
                    && w.contains(
                        "\"first\" applies to them (the older one), this policy does not"
                    )
            ),
            "{warnings:?}"
        );

        // The same through kubectl, as users apply policies: the refusal's message and the
        // overlap warning are what kubectl prints.
        let cp = ControlPlane::shared().await.expect("control plane");
        let dir = tempfile::tempdir().expect("kubectl home");
        let kubectl =
            Tool::kubectl(cp.admin_kubeconfig(), dir.path()).unwrap_or_else(|e| panic!("{e:#}"));
        let manifest = |name: &str, jwks: &str| {
            let path = dir.path().join(format!("{name}.yaml"));
            std::fs::write(
                &path,
                format!(
                    "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata:\n  \
                     name: {name}\n  namespace: {namespace}\nspec:\n  selector:\n    \
                     matchLabels:\n      app: orders\n  validateJwt:\n    jwksUris:\n      \
                     - {jwks}\n"
                ),
            )
            .expect("manifest");
            path.display().to_string()
        };
        let refused = kubectl
            .run_unchecked([
                "apply",
                "-f",
                &manifest("plain-http", "http://idp.example/keys"),
            ])
            .expect_err("kubectl apply of a plain-http key source fails");
        let refused = format!("{refused:#}");
        assert!(
            refused.contains("spec.validateJwt.jwksUris[0]: \"http://idp.example/keys\" uses http"),
            "{refused}"
        );
        let applied = kubectl
            .run_unchecked(["apply", "-f", &manifest("third", keys)])
            .unwrap_or_else(|e| panic!("{e:#}"));
        let warning = applied
            .stderr
            .lines()
            .find(|l| l.starts_with("Warning: ") && l.contains("overlaps TokenPolicy \"first\""));
        assert!(
            warning.is_some_and(|w| w.contains("\"first\" applies to them (the older one)")),
            "kubectl printed: {}",
            applied.stderr
        );
        assert!(
            applied
                .stdout
                .contains("tokenpolicy.tokengate.dev/third created"),
            "{}",
            applied.stdout
        );
    }

    /// A TLS handshake with `127.0.0.1:port`, trusting only `bundle` (PEM): what a new
    /// connection of the API server would see.
    async fn handshake(port: u16, bundle: &[u8]) -> Result<(), String> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(bundle) {
            roots
                .add(cert.map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|e| e.to_string())?;
        let name =
            rustls::pki_types::ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
        connector
            .connect(name, stream)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    /// The caBundle the API server currently trusts for the mutating webhook.
    async fn configured_bundle(client: &Client) -> Vec<u8> {
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get(MUTATING)
            .await
            .expect("configuration")
            .webhooks
            .into_iter()
            .flatten()
            .next()
            .and_then(|w| w.client_config.ca_bundle)
            .map(|b| b.0)
            .unwrap_or_default()
    }

    /// Serving certificates are renewed every ~13 s and the CA every ~40 s (the test flags);
    /// for 75 s pods keep being created and every one is injected, and a fresh TLS client that
    /// trusts only the configuration's current caBundle always connects.
    #[tokio::test]
    async fn certificates_rotate_while_the_api_server_keeps_calling() {
        let (client, namespace, served) = setup("rotation").await;
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
        let secrets = Api::<Secret>::namespaced(client.clone(), SYSTEM_NAMESPACE);
        let deadline = Instant::now() + Duration::from_secs(75);
        let mut admitted = 0;
        let mut failures = Vec::new();
        let mut handshakes = 0;
        let mut serving = std::collections::BTreeSet::new();
        let mut issuers = std::collections::BTreeSet::new();
        let mut bundles = std::collections::BTreeSet::new();
        let mut round = 0u32;
        while Instant::now() < deadline {
            round += 1;
            match pods
                .create(
                    &dry_run(),
                    &app_pod(&format!("p{round}"), json!({"app": "r"})),
                )
                .await
            {
                Ok(pod) if has_sidecar(&pod) => admitted += 1,
                other => failures.push(format!("{other:?}")),
            }
            if round.is_multiple_of(5) {
                let bundle = configured_bundle(&client).await;
                match handshake(served.replica.port, &bundle).await {
                    Ok(()) => handshakes += 1,
                    Err(err) => failures.push(format!("handshake: {err}")),
                }
                bundles.insert(bundle);
                let secret = secrets.get(TLS_SECRET).await.expect("TLS Secret");
                let data = secret.data.unwrap_or_default();
                serving.insert(data.get("tls.crt").map(|v| v.0.clone()));
                let state: Value = data
                    .get("rotation.json")
                    .and_then(|v| serde_json::from_slice(&v.0).ok())
                    .unwrap_or_default();
                issuers.insert(state["serving"]["issuer"].as_str().map(str::to_string));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!(
            "{admitted} admissions and {handshakes} handshakes across {} serving certificates, \
             {} signing CAs and {} caBundles",
            serving.len(),
            issuers.len(),
            bundles.len()
        );
        assert!(
            failures.is_empty(),
            "{} failures: {failures:?}",
            failures.len()
        );
        assert!(
            serving.len() >= 4,
            "serving certificates seen: {}",
            serving.len()
        );
        assert!(issuers.len() >= 2, "signing CAs seen: {issuers:?}");
        let admin = served
            .replica
            .admin
            .load(std::sync::atomic::Ordering::Relaxed);
        let metrics = admin_get(admin, "/metrics").await;
        assert!(
            metrics.contains("tokengate_admission_total{result=\"injected\",webhook=\"inject\"}"),
            "{metrics}"
        );
        assert!(metrics.contains("tokengate_admission_duration_seconds_bucket"));
    }

    /// `failurePolicy: Fail`: with no replica answering, pods of an opted-in namespace are
    /// refused instead of running without their sidecar; pods that opted out are not sent.
    #[tokio::test]
    async fn pods_are_refused_while_no_replica_serves_the_webhook() {
        let (client, namespace, served) = setup("down").await;
        let replica = served.replica;
        drop(served);
        let _alone = IN_USE.write().await;
        let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
        if let Some(mut process) = replica.process.lock().await.take() {
            process.kill();
        }
        let message = api_message(
            pods.create(&dry_run(), &app_pod("web", json!({"app": "web"})))
                .await,
        );
        assert!(
            message.contains("failed calling webhook")
                && message.contains("namespace.inject.tokengate.dev"),
            "{message}"
        );
        let opted_out = pods
            .create(
                &dry_run(),
                &app_pod("out", json!({contract::POD_INJECT_LABEL: "false"})),
            )
            .await
            .expect("an opted-out pod is not sent to the webhook");
        assert_eq!(sidecars(&opted_out), 0);

        // The validating webhook fails open: a policy it would refuse is admitted while no
        // replica answers, and the operator reports it. The bundle carries it as written:
        // sidecars skip a file that does not compile and keep their last good version of it,
        // so a bad edit never unprotects a pod (the sidecar's bundle tests cover that side).
        let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
        policies
            .create(
                &PostParams::default(),
                &policy(
                    &namespace,
                    "unfit",
                    json!({"selector": {"matchLabels": {"app": "web"}},
                           "validateJwt": {"jwksUris": ["https://127.0.0.1:9/keys"],
                                           "algorithms": ["HS256"]}}),
                ),
            )
            .await
            .expect("admitted while the validating webhook is down");
        let (reason, message) = wait_condition(&policies, "unfit", "Ready", "False").await;
        assert_eq!(reason, "InvalidSpec", "{message}");
        assert!(
            message.contains("no configured key can verify HS256"),
            "{message}"
        );
        let bundle = config_map_data(&client, &namespace)
            .await
            .unwrap_or_default();
        assert!(
            bundle.contains_key(&contract::policy_file_name("unfit")),
            "{:?}",
            bundle.keys()
        );

        // Back: the same address, the same Secret's certificate.
        let cp = ControlPlane::shared().await.expect("control plane");
        let (process, admin) = spawn_replica(cp, &client, "webhook-a", replica.port)
            .await
            .expect("replica restarted");
        replica
            .admin
            .store(admin, std::sync::atomic::Ordering::Relaxed);
        *replica.process.lock().await = Some(process);
        wait_until_injecting(&client, &namespace).await;
    }

    /// Bucket counts of a Prometheus histogram (summed over the series whose labels contain every
    /// one of `labels`), by upper bound.
    fn buckets(text: &str, metric: &str, labels: &[&str]) -> BTreeMap<String, f64> {
        let mut found = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&format!("{metric}_bucket{{")) else {
                continue;
            };
            if !labels.iter().all(|l| rest.contains(l)) {
                continue;
            }
            let Some((series, value)) = rest.rsplit_once(' ') else {
                continue;
            };
            let Some(le) = series
                .split("le=\"")
                .nth(1)
                .and_then(|v| v.split('"').next())
            else {
                continue;
            };
            let value: f64 = value.parse().unwrap_or(0.0);
            *found.entry(le.to_string()).or_insert(0.0) += value;
        }
        found
    }

    /// A quantile from the growth of a histogram between two snapshots, interpolating linearly
    /// inside the bucket it falls in (the estimate Prometheus' `histogram_quantile` makes).
    fn quantile(
        before: &BTreeMap<String, f64>,
        after: &BTreeMap<String, f64>,
        q: f64,
    ) -> Option<f64> {
        let mut bounds: Vec<(f64, f64)> = after
            .iter()
            .map(|(le, count)| {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap_or(f64::INFINITY)
                };
                (bound, count - before.get(le).copied().unwrap_or(0.0))
            })
            .collect();
        bounds.sort_by(|a, b| a.0.total_cmp(&b.0));
        let total = bounds.last()?.1;
        if total <= 0.0 {
            return None;
        }
        let rank = q * total;
        let mut previous = (0.0, 0.0);
        for (bound, count) in bounds {
            if count >= rank {
                if bound.is_infinite() {
                    return Some(previous.0);
                }
                let share = (rank - previous.1) / (count - previous.1).max(f64::MIN_POSITIVE);
                return Some(previous.0 + (bound - previous.0) * share);
            }
            previous = (bound, count);
        }
        None
    }

    fn percentile(sorted: &[Duration], q: f64) -> Duration {
        tokengate_testkit::metrics::nearest_rank(sorted, q).expect("latencies were measured")
    }

    async fn create_pods(
        client: &Client,
        namespace: &str,
        n: usize,
        labels: Value,
    ) -> (Vec<Duration>, usize) {
        use futures_util::StreamExt as _;
        let pods = Api::<Pod>::namespaced(client.clone(), namespace);
        let results: Vec<(Duration, bool)> = futures_util::stream::iter(0..n)
            .map(|i| {
                let pods = pods.clone();
                let pod = app_pod(&format!("pod-{i}"), labels.clone());
                async move {
                    let started = Instant::now();
                    let created = pods
                        .create(&PostParams::default(), &pod)
                        .await
                        .expect("pod created");
                    (started.elapsed(), has_sidecar(&created))
                }
            })
            .buffer_unordered(4)
            .collect()
            .await;
        let injected = results.iter().filter(|(_, injected)| *injected).count();
        let mut latencies: Vec<Duration> = results.into_iter().map(|(d, _)| d).collect();
        latencies.sort();
        (latencies, injected)
    }

    /// Admission latency over 1,000 pod creations, in the webhook and at the API server, and
    /// the creation time a client sees with and without injection. A measurement, run by hand:
    /// `cargo test -p tokengate-operator --test cluster -- --ignored --nocapture latency`
    #[tokio::test]
    #[ignore = "a measurement, run by hand"]
    async fn admission_latency_over_1000_pod_creations() {
        let (client, namespace, served) = setup("latency").await;
        let cp = ControlPlane::shared().await.expect("control plane");
        let plain = cp.namespace(&client, "baseline").await.expect("namespace");
        let admin = served
            .replica
            .admin
            .load(std::sync::atomic::Ordering::Relaxed);
        let apiserver_metrics = || async {
            let request = http::Request::get("/metrics")
                .body(Vec::new())
                .expect("request");
            client
                .request_text(request)
                .await
                .expect("API server metrics")
        };
        const WEBHOOK: &str = "tokengate_admission_duration_seconds";
        const APISERVER: &str = "apiserver_admission_webhook_admission_duration_seconds";
        let apiserver_labels = [
            "name=\"namespace.inject.tokengate.dev\"",
            "operation=\"CREATE\"",
            "type=\"admit\"",
        ];
        let webhook_labels = ["webhook=\"inject\""];
        let webhook_before = buckets(
            &admin_get(admin, "/metrics").await,
            WEBHOOK,
            &webhook_labels,
        );
        let apiserver_before = buckets(&apiserver_metrics().await, APISERVER, &apiserver_labels);

        let (baseline, _) = create_pods(&client, &plain, 1000, json!({"app": "baseline"})).await;
        let (latencies, injected) =
            create_pods(&client, &namespace, 1000, json!({"app": "latency"})).await;
        assert_eq!(injected, 1000, "every pod injected");

        let webhook_after = buckets(
            &admin_get(admin, "/metrics").await,
            WEBHOOK,
            &webhook_labels,
        );
        let apiserver_after = buckets(&apiserver_metrics().await, APISERVER, &apiserver_labels);
        let ms = |seconds: Option<f64>| {
            seconds.map_or("n/a".to_string(), |s| format!("{:.3} ms", s * 1000.0))
        };
        eprintln!(
            "1,000 pod creations (4 at a time): in the webhook p50 {} p99 {}; at the API server \
             (apiserver_admission_webhook_admission_duration_seconds) p50 {} p99 {}",
            ms(quantile(&webhook_before, &webhook_after, 0.5)),
            ms(quantile(&webhook_before, &webhook_after, 0.99)),
            ms(quantile(&apiserver_before, &apiserver_after, 0.5)),
            ms(quantile(&apiserver_before, &apiserver_after, 0.99)),
        );
        eprintln!(
            "pod create as the client sees it: injected p50 {:?} p99 {:?}; not opted in p50 {:?} p99 {:?}",
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            percentile(&baseline, 0.5),
            percentile(&baseline, 0.99),
        );
        eprintln!("webhook buckets: {webhook_before:?} -> {webhook_after:?}");
        eprintln!("API server buckets: {apiserver_before:?} -> {apiserver_after:?}");
        for namespace in [&namespace, &plain] {
            let _ = Api::<Namespace>::all(client.clone())
                .delete(namespace, &DeleteParams::default())
                .await;
        }
    }
}

/// SIGTERM ends the operator within a bounded time even when the API server has gone away: it
/// neither waits for reconciles that cannot finish nor for a lease release nobody answers. On a
/// control plane of the test's own, whose kube-apiserver `go_away` removes.
async fn sigterm_ends_the_operator_without_the_api_server(
    go_away: impl FnOnce(&ControlPlane) -> anyhow::Result<()>,
) {
    let cp = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .expect("join")
        .expect("a control plane of this test's own");
    let client = cp.client().await.expect("admin client");
    let crd: CustomResourceDefinition =
        serde_saphyr::from_str(include_str!("../../crds/tokengate.dev_tokenpolicies.yaml"))
            .expect("CRD file");
    apply_crd(&client, &crd).await.expect("CRD");
    let namespace = cp.namespace(&client, "sigterm").await.expect("namespace");

    let admin = free_port().expect("port");
    let mut command = Command::new(OPERATOR);
    command
        .arg(format!("--admin=127.0.0.1:{admin}"))
        .arg("--lease-namespace=default")
        .arg("--identity=terminated")
        .arg("--lease-duration=4s")
        .env("KUBECONFIG", cp.admin_kubeconfig())
        .env("TOKENGATE_LOG", "info,tokengate_operator=debug");
    let mut operator = Process::spawn(
        "tokengate-operator",
        command,
        &cp.dir().join("logs/tokengate-operator.log"),
    )
    .expect("operator");
    wait_until(TIMEOUT, "the operator to lead", || async {
        Ok(admin_get(admin, "/ready").await.contains("ready (leader)"))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", operator.log_tail(40)));
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    policies
        .create(
            &PostParams::default(),
            &policy(
                &namespace,
                "busy",
                jwks_spec("busy", "https://idp.example/keys"),
            ),
        )
        .await
        .expect("create");
    wait_condition(&policies, "busy", "Ready", "True").await;

    go_away(&cp).expect("take kube-apiserver away");
    // Long enough for lease renewals and watches to be under way against nothing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(operator.is_running(), "{}", operator.log_tail(40));
    operator.terminate().expect("SIGTERM");
    let sent = Instant::now();
    let (status, operator) = tokio::task::spawn_blocking(move || {
        let status = operator.wait_timeout(Duration::from_secs(10));
        (status, operator)
    })
    .await
    .expect("join");
    let status = status.unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "operator exited ({status}) {:?} after SIGTERM",
        sent.elapsed()
    );
    assert!(status.success(), "{status}\n{}", operator.log_tail(40));
}

#[tokio::test]
async fn sigterm_ends_the_operator_when_the_api_server_is_killed() {
    sigterm_ends_the_operator_without_the_api_server(|cp| cp.kill("kube-apiserver")).await;
}

/// The harder case: connections are accepted and never answered (a server cut off by the
/// network, or frozen), so no request fails by itself.
#[tokio::test]
async fn sigterm_ends_the_operator_when_the_api_server_does_not_answer() {
    sigterm_ends_the_operator_without_the_api_server(|cp| cp.suspend("kube-apiserver")).await;
}
