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
use tokengate_testkit::cluster::{ControlPlane, Process, apply_crd, free_port, wait_until};
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
        let namespaced = || Api::namespaced(client.clone(), SYSTEM_NAMESPACE);
        match value["kind"].as_str() {
            Some("ServiceAccount") => {
                apply::<ServiceAccount>(&namespaced(), &name, &from_json(value)).await?;
            }
            Some("ClusterRole") => {
                apply::<ClusterRole>(&Api::all(client.clone()), &name, &from_json(value)).await?;
            }
            Some("ClusterRoleBinding") => {
                let binding: ClusterRoleBinding = from_json(value);
                apply(&Api::all(client.clone()), &name, &binding).await?;
            }
            Some("Role") => apply::<Role>(&namespaced(), &name, &from_json(value)).await?,
            Some("RoleBinding") => {
                apply::<RoleBinding>(&namespaced(), &name, &from_json(value)).await?;
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
    let mut command = Command::new(OPERATOR);
    command
        .arg(format!("--admin=127.0.0.1:{admin}"))
        .arg(format!("--lease-name={lease}"))
        .arg(format!("--lease-namespace={SYSTEM_NAMESPACE}"))
        .arg(format!("--identity={identity}"))
        .arg("--lease-duration=4s")
        .arg("--key-recheck=3s")
        .arg("--key-fetch-timeout=2s")
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
        match policies
            .create(&PostParams::default(), &policy(&namespace, name, spec))
            .await
        {
            Err(kube::Error::Api(status)) => {
                assert!(status.is_invalid(), "{name}: {status:?}");
                assert!(
                    status.message.contains(expected),
                    "{name}: {}",
                    status.message
                );
            }
            other => panic!("{name} must be rejected, got {other:?}"),
        }
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

/// A plain HTTP/1.1 GET with an optional bearer token; the status code and the whole response.
async fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: app\r\n{authorization}Connection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, response)
}

/// The whole path without the webhook: the operator renders the bundle, the pod runner projects
/// it into a pod the way kubelet would, and the real sidecar binary enforces it with
/// `--bundle`, following edits of the policy and of the pod's labels live.
#[tokio::test]
async fn a_pod_sidecar_enforces_the_rendered_bundle_and_follows_it() {
    use tokengate_testkit::cluster::podrunner::{PodRunnerOptions, RunningPod};
    use tokengate_testkit::echo::EchoServer;
    let (client, namespace, _) = setup("e2e").await;
    let sidecar = std::path::Path::new(OPERATOR).with_file_name("tokengate-sidecar");
    assert!(
        sidecar.is_file(),
        "{} is missing: build it with `cargo build -p tokengate-sidecar` (cargo test \
         --workspace does)",
        sidecar.display()
    );
    let idp = IdentityProvider::start().await.expect("identity provider");
    let app = EchoServer::start().await.expect("echo application");
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), &namespace);
    let spec = json!({
        "selector": {"matchLabels": {"app": "shop"}},
        "validateJwt": {"openidConfigs": [{"url": idp.discovery_url()}],
                        "audiences": [tokengate_testkit::idp::DEFAULT_AUDIENCE]},
        "forwarding": {"claimsToHeaders": [{"claim": "sub", "header": "X-User"}]},
    });
    policies
        .create(&PostParams::default(), &policy(&namespace, "shop", spec))
        .await
        .expect("create policy");
    wait_condition(&policies, "shop", "Ready", "True").await;

    let listen = free_port().expect("port");
    let admin = free_port().expect("port");
    // The pod as the webhook will shape it: bundle and labels mounted, sidecar in front.
    let pod: Pod = from_json(json!({
        "metadata": {"name": "shop-1", "labels": {"app": "shop"}},
        "spec": {
            "containers": [{
                "name": "tokengate-sidecar",
                "image": "example.invalid/tokengate-sidecar:dev",
                "command": ["/tokengate-sidecar", "run",
                    "--bundle", "/etc/tokengate/bundle", "--pod-labels", "/etc/tokengate/pod/labels",
                    "--listen", format!("127.0.0.1:{listen}"), "--upstream", app.url(),
                    "--admin", format!("127.0.0.1:{admin}"), "--reload-interval", "200ms"],
                "volumeMounts": [
                    {"name": "policies", "mountPath": "/etc/tokengate/bundle/policies"},
                    {"name": "keys", "mountPath": "/etc/tokengate/bundle/keys"},
                    {"name": "pod", "mountPath": "/etc/tokengate/pod"},
                ],
            }],
            "volumes": [
                {"name": "policies", "configMap": {"name": "tokengate-policies", "optional": true}},
                {"name": "keys", "secret": {"secretName": "tokengate-keys", "optional": true}},
                {"name": "pod", "downwardAPI": {"items": [
                    {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}},
            ],
        },
    }));
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create pod");
    let options = PodRunnerOptions::new("tokengate-sidecar")
        .program("/tokengate-sidecar", &sidecar)
        .ready_url(format!("http://127.0.0.1:{admin}/ready"));
    let _running = RunningPod::start(&client, &pod, options)
        .await
        .expect("run the sidecar container");

    let token = idp.token(jsonwebtoken::Algorithm::RS256);
    let (status, _) = http_get(listen, "/orders", None).await;
    assert_eq!(status, 401, "no token");
    let (status, response) = http_get(listen, "/orders", Some(&token)).await;
    assert_eq!(status, 200, "{response}");
    assert!(
        response.contains("test-subject"),
        "the claim header reaches the app: {response}"
    );

    // An edit of the TokenPolicy reaches the running sidecar through the bundle.
    policies
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"validateJwt": {"audiences": ["api://elsewhere"]}}})),
        )
        .await
        .expect("edit policy");
    wait_until(TIMEOUT, "the edited policy to refuse the token", || async {
        let (status, response) = http_get(listen, "/orders", Some(&token)).await;
        Ok(status == 401 && response.contains("TokenAudienceNotAllowed"))
    })
    .await
    .expect("edit enforced");

    // The pod leaves the policy's selector: nothing protects it, so nothing passes.
    pods.patch(
        "shop-1",
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
