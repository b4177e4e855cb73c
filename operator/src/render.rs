//! What the operator writes, computed without I/O from what it read: the namespace bundle
//! (ConfigMap `tokengate-policies`, Secret `tokengate-keys`), NetworkPolicies for private access,
//! and the analyses behind status (selected pods, conflicts, Services that bypass the sidecar).
//!
//! The bundle is the contract with the sidecar's `--bundle DIR`: the ConfigMap holds one
//! `<policy>.yaml` per TokenPolicy (the TokenPolicy document, readable by `--policy` too), and the
//! Secret holds the symmetric key material of every `secretRef` as `<secret>.<key>`. ConfigMap
//! `tokengate-jwks` holds the public keys the operator fetched for the policies that have them
//! delivered (`keyDelivery` other than `Sidecar`), one document per key source.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use anyhow::{Context, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{
    LabelSelector as KubeLabelSelector, LabelSelectorRequirement, ObjectMeta, OwnerReference,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource as _, ResourceExt as _};
use tokengate_keys::SourceKeys;
use tokengate_policy::contract;
use tokengate_policy::document::{API_VERSION, DocumentMeta, KIND};
use tokengate_policy::selector::SelectorOperator;
use tokengate_policy::spec::SecretKeyRef;
use tokengate_policy::{
    LabelSelector, RemoteKeySource, TokenPolicy, TokenPolicyDocument, TokenPolicySpec,
};

pub use tokengate_policy::contract::{
    JWKS_CONFIG_MAP, KEYS_SECRET, MANAGED_BY_LABEL, MANAGER, POLICIES_CONFIG_MAP, PORTS_ANNOTATION,
    SIDECAR_CONTAINER,
};
/// [`contract::SIDECAR_PROXY_PORT`] as Kubernetes types ports.
pub const SIDECAR_PROXY_PORT: i32 = contract::SIDECAR_PROXY_PORT as i32;
/// [`contract::SIDECAR_ADMIN_PORT`] as Kubernetes types ports.
pub const SIDECAR_ADMIN_PORT: i32 = contract::SIDECAR_ADMIN_PORT as i32;

/// The bundle file name of a `secretRef`'s key material.
pub fn key_file_name(reference: &SecretKeyRef) -> String {
    contract::key_file_name(&reference.name, &reference.key)
}

/// Every `secretRef` of a spec.
pub fn secret_refs(spec: &TokenPolicySpec) -> Vec<&SecretKeyRef> {
    spec.validate_jwt
        .iter()
        .flat_map(|jwt| &jwt.issuer_signing_keys)
        .filter_map(|key| key.secret_ref.as_ref())
        .collect()
}

/// Policies in the order conflicts are resolved in: oldest first, then by name.
pub fn oldest_first<'a>(
    policies: impl IntoIterator<Item = &'a TokenPolicy>,
) -> Vec<&'a TokenPolicy> {
    let mut ordered: Vec<&TokenPolicy> = policies.into_iter().collect();
    ordered.sort_by(|a, b| {
        let created = |p: &TokenPolicy| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
        created(a)
            .cmp(&created(b))
            .then_with(|| a.name_any().cmp(&b.name_any()))
    });
    ordered
}

/// The TokenPolicy as the sidecar reads it: apiVersion, kind, the metadata it uses, and spec.
pub fn policy_document(policy: &TokenPolicy) -> Result<String> {
    let document = TokenPolicyDocument {
        api_version: API_VERSION.to_string(),
        kind: KIND.to_string(),
        metadata: DocumentMeta {
            name: policy.name_any(),
            namespace: policy.namespace(),
            generation: policy.metadata.generation,
            creation_timestamp: policy
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string()),
            labels: BTreeMap::new(),
        },
        spec: policy.spec.clone(),
    };
    serde_saphyr::to_string(&document)
        .with_context(|| format!("writing TokenPolicy {} as YAML", policy.name_any()))
}

/// A reference from something the operator renders to the TokenPolicy it came from.
pub fn owner_reference(policy: &TokenPolicy, controller: bool) -> Option<OwnerReference> {
    Some(OwnerReference {
        api_version: TokenPolicy::api_version(&()).into_owned(),
        kind: TokenPolicy::kind(&()).into_owned(),
        name: policy.metadata.name.clone()?,
        uid: policy.metadata.uid.clone()?,
        controller: controller.then_some(true),
        block_owner_deletion: None,
    })
}

fn managed_labels() -> BTreeMap<String, String> {
    [(MANAGED_BY_LABEL.to_string(), MANAGER.to_string())].into()
}

/// The key sources whose keys the operator delivers for these policies (those whose
/// `keyDelivery` is not `Sidecar`), each once.
pub fn delivered_sources<'a>(
    policies: impl IntoIterator<Item = &'a TokenPolicy>,
) -> BTreeSet<RemoteKeySource> {
    policies
        .into_iter()
        .filter(|policy| policy.spec.key_delivery.through_bundle())
        .flat_map(|policy| tokengate_policy::remote_key_sources(&policy.spec))
        .collect()
}

/// A namespace's bundle and what went wrong while assembling it, per policy.
#[derive(Debug)]
pub struct Bundle {
    pub config_map: ConfigMap,
    pub secret: Secret,
    /// The delivered public keys ([`JWKS_CONFIG_MAP`]).
    pub jwks: ConfigMap,
    /// Policy name -> problems with its referenced Secrets (missing Secret or key).
    pub secret_problems: BTreeMap<String, Vec<String>>,
}

/// Renders the bundle of one namespace from all its TokenPolicies, the Secrets they reference
/// (`None`: the Secret does not exist) and the keys in hand for the sources delivered to them
/// (a source without keys yet is left out; each source stands alone). Every policy owns the
/// bundle, so it outlives any one of them and the garbage collector deletes it with the last.
pub fn bundle(
    namespace: &str,
    policies: &[&TokenPolicy],
    secrets: &BTreeMap<String, Option<Secret>>,
    keys: &BTreeMap<RemoteKeySource, Arc<SourceKeys>>,
) -> Result<Bundle> {
    let mut policy_files = BTreeMap::new();
    let mut key_files = BTreeMap::new();
    let mut secret_problems: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for policy in policies {
        let name = policy.name_any();
        policy_files.insert(contract::policy_file_name(&name), policy_document(policy)?);
        for reference in secret_refs(&policy.spec) {
            let problem = match secrets.get(&reference.name) {
                None | Some(None) => Some(format!(
                    "Secret {namespace}/{} (referenced as secretRef {}/{}) does not exist",
                    reference.name, reference.name, reference.key
                )),
                Some(Some(secret)) => match secret_value(secret, &reference.key) {
                    Some(value) => {
                        key_files.insert(key_file_name(reference), ByteString(value));
                        None
                    }
                    None => Some(format!(
                        "Secret {namespace}/{} has no key {:?}",
                        reference.name, reference.key
                    )),
                },
            };
            if let Some(problem) = problem {
                secret_problems
                    .entry(name.clone())
                    .or_default()
                    .push(problem);
            }
        }
    }
    let mut jwks_files = BTreeMap::new();
    for source in delivered_sources(policies.iter().copied()) {
        if let Some(held) = keys.get(&source) {
            jwks_files.insert(
                contract::jwks_file_name(&source),
                tokengate_keys::delivery::render(&source, held)?,
            );
        }
    }
    let owners: Vec<OwnerReference> = policies
        .iter()
        .filter_map(|p| owner_reference(p, false))
        .collect();
    let metadata = |name: &str| ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(managed_labels()),
        owner_references: Some(owners.clone()),
        ..ObjectMeta::default()
    };
    Ok(Bundle {
        config_map: ConfigMap {
            metadata: metadata(POLICIES_CONFIG_MAP),
            data: Some(policy_files),
            ..ConfigMap::default()
        },
        secret: Secret {
            metadata: metadata(KEYS_SECRET),
            data: Some(key_files),
            type_: Some("Opaque".to_string()),
            ..Secret::default()
        },
        jwks: ConfigMap {
            metadata: metadata(JWKS_CONFIG_MAP),
            data: Some(jwks_files),
            ..ConfigMap::default()
        },
        secret_problems,
    })
}

fn secret_value(secret: &Secret, key: &str) -> Option<Vec<u8>> {
    if let Some(value) = secret.data.as_ref().and_then(|d| d.get(key)) {
        return Some(value.0.clone());
    }
    secret
        .string_data
        .as_ref()
        .and_then(|d| d.get(key))
        .map(|s| s.as_bytes().to_vec())
}

/// Our selector in the API's type.
pub fn kube_selector(selector: &LabelSelector) -> KubeLabelSelector {
    let expressions: Vec<LabelSelectorRequirement> = selector
        .match_expressions
        .iter()
        .map(|r| LabelSelectorRequirement {
            key: r.key.clone(),
            operator: match r.operator {
                SelectorOperator::In => "In",
                SelectorOperator::NotIn => "NotIn",
                SelectorOperator::Exists => "Exists",
                SelectorOperator::DoesNotExist => "DoesNotExist",
            }
            .to_string(),
            values: (!r.values.is_empty()).then(|| r.values.clone()),
        })
        .collect();
    KubeLabelSelector {
        match_labels: (!selector.match_labels.is_empty()).then(|| selector.match_labels.clone()),
        match_expressions: (!expressions.is_empty()).then_some(expressions),
    }
}

/// Name of the NetworkPolicy rendered for a TokenPolicy with private access.
pub fn network_policy_name(policy: &TokenPolicy) -> String {
    format!("tokengate-{}", policy.name_any())
}

/// The NetworkPolicy that makes the sidecar the only door of the selected pods: ingress only on
/// the sidecar's ports and the ports the policy leaves open. `None` without private access.
pub fn network_policy(policy: &TokenPolicy) -> Option<NetworkPolicy> {
    let private = policy.spec.private_access.as_ref()?;
    if !private.network_policy {
        return None;
    }
    let tcp = |port: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".to_string()),
        end_port: None,
    };
    let mut ports = vec![tcp(SIDECAR_PROXY_PORT), tcp(SIDECAR_ADMIN_PORT)];
    ports.extend(private.open_ports.iter().map(|p| tcp(i32::from(*p))));
    Some(NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(network_policy_name(policy)),
            namespace: policy.namespace(),
            labels: Some(managed_labels()),
            owner_references: owner_reference(policy, true).map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(kube_selector(&policy.spec.selector)),
            policy_types: Some(vec!["Ingress".to_string()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: None,
                ports: Some(ports),
            }]),
            egress: None,
        }),
    })
}

fn labels(pod: &Pod) -> BTreeMap<String, String> {
    pod.metadata.labels.clone().unwrap_or_default()
}

/// A pod that counts: not being deleted, not finished.
pub fn is_live(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && !matches!(
            pod.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// Live pods the policy's selector picks.
pub fn selected_pods<'a>(policy: &TokenPolicy, pods: &'a [Pod]) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|pod| is_live(pod) && policy.spec.selector.matches(&labels(pod)))
        .collect()
}

/// For each policy, the other policies that select at least one of the same pods.
pub fn conflicts(policies: &[&TokenPolicy], pods: &[Pod]) -> BTreeMap<String, BTreeSet<String>> {
    let mut found: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for pod in pods.iter().filter(|pod| is_live(pod)) {
        let labels = labels(pod);
        let matching: Vec<String> = policies
            .iter()
            .filter(|p| p.spec.selector.matches(&labels))
            .map(|p| p.name_any())
            .collect();
        if matching.len() < 2 {
            continue;
        }
        for name in &matching {
            let others = matching.iter().filter(|other| *other != name).cloned();
            found.entry(name.clone()).or_default().extend(others);
        }
    }
    found
}

/// A Service port that reaches a protected application port directly, around the sidecar.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bypass {
    pub service: String,
    /// The Service port's name, or its number.
    pub service_port: String,
    /// The application port traffic goes to.
    pub app_port: i32,
    /// How the Service names its target (a number, or a name still on the app container).
    pub target: String,
    /// The policy's pods the Service sends there.
    pub pods: usize,
    /// Those of them with the pod firewall (its init container), which refuses the path.
    pub firewalled: usize,
}

/// Whether the pod was given the pod firewall at creation (its init container): the rules are
/// the pod's for its whole life, whatever happens to its labels or policies later.
pub fn has_pod_firewall(pod: &Pod) -> bool {
    pod.spec
        .iter()
        .flat_map(|s| s.init_containers.iter().flatten())
        .any(|c| c.name == contract::FIREWALL_CONTAINER)
}

/// The ports of a pod the sidecar protects: on an injected pod the port the webhook recorded
/// (names have moved to the sidecar by then), else the `tokengate.dev/ports` annotation
/// (numbers or names), else the first TCP containerPort of the first application container.
fn protected_ports(pod: &Pod) -> BTreeSet<i32> {
    let injected = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(contract::UPSTREAM_PORT_ANNOTATION))
        .and_then(|port| port.parse::<i32>().ok());
    if let Some(port) = injected {
        return [port].into();
    }
    let containers: Vec<_> = pod
        .spec
        .iter()
        .flat_map(|s| &s.containers)
        .filter(|c| c.name != SIDECAR_CONTAINER)
        .collect();
    let all_ports = || {
        containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
    };
    let annotation = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(PORTS_ANNOTATION));
    match annotation {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|item| !item.is_empty())
            .filter_map(|item| {
                item.parse::<i32>().ok().or_else(|| {
                    all_ports()
                        .find(|p| p.name.as_deref() == Some(item))
                        .map(|p| p.container_port)
                })
            })
            .collect(),
        None => containers
            .first()
            .and_then(|c| {
                c.ports
                    .iter()
                    .flatten()
                    .find(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            })
            .map(|p| p.container_port)
            .into_iter()
            .collect(),
    }
}

/// Services that select some of the policy's pods and target a protected port in a way that
/// reaches the application instead of the sidecar: by number, or by a name that is still the
/// application container's (the port name moves to the sidecar on injection).
pub fn bypasses(selected: &[&Pod], services: &[Service]) -> Vec<Bypass> {
    let mut found: BTreeMap<(String, String, i32, String), (usize, usize)> = BTreeMap::new();
    for service in services {
        let Some(spec) = &service.spec else { continue };
        let Some(selector) = spec.selector.as_ref().filter(|s| !s.is_empty()) else {
            continue;
        };
        for pod in selected {
            let labels = labels(pod);
            if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                continue;
            }
            let protected = protected_ports(pod);
            for port in spec.ports.iter().flatten() {
                if port.protocol.as_deref().unwrap_or("TCP") != "TCP" {
                    continue;
                }
                let (app_port, target) = match &port.target_port {
                    None => (port.port, format!("port {} (no targetPort)", port.port)),
                    Some(IntOrString::Int(n)) => (*n, format!("targetPort {n}")),
                    Some(IntOrString::String(name)) => {
                        let on_app = pod
                            .spec
                            .iter()
                            .flat_map(|s| &s.containers)
                            .filter(|c| c.name != SIDECAR_CONTAINER)
                            .flat_map(|c| c.ports.iter().flatten())
                            .find(|p| p.name.as_deref() == Some(name.as_str()));
                        match on_app {
                            Some(p) => (p.container_port, format!("targetPort {name:?}")),
                            None => continue,
                        }
                    }
                };
                if protected.contains(&app_port) {
                    let key = (
                        service.name_any(),
                        port.name.clone().unwrap_or_else(|| port.port.to_string()),
                        app_port,
                        target,
                    );
                    let counts = found.entry(key).or_default();
                    counts.0 += 1;
                    counts.1 += usize::from(has_pod_firewall(pod));
                }
            }
        }
    }
    found
        .into_iter()
        .map(
            |((service, service_port, app_port, target), (pods, firewalled))| Bypass {
                service,
                service_port,
                app_port,
                target,
                pods,
                firewalled,
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(name: &str, created: &str, spec: serde_json::Value) -> TokenPolicy {
        serde_json::from_value(json!({
            "apiVersion": "tokengate.dev/v1alpha1",
            "kind": "TokenPolicy",
            "metadata": {
                "name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                "creationTimestamp": created, "generation": 2,
            },
            "spec": spec,
        }))
        .expect("policy")
    }

    fn orders(name: &str, created: &str) -> TokenPolicy {
        policy(
            name,
            created,
            json!({
                "selector": {"matchLabels": {"app": "orders"}},
                "validateJwt": {
                    "jwksUris": ["https://idp.example/keys"],
                    "issuerSigningKeys": [{"id": "h", "secretRef": {"name": "hmac", "key": "key"}}],
                },
                "privateAccess": {"networkPolicy": true, "openPorts": [9090]},
            }),
        )
    }

    fn pod(name: &str, labels: serde_json::Value, ports: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {"containers": [{"name": "app", "image": "app", "ports": ports}]},
        }))
        .expect("pod")
    }

    fn service(name: &str, target: serde_json::Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"selector": {"app": "orders"}, "ports": [{"name": "http", "port": 80, "targetPort": target}]},
        }))
        .expect("service")
    }

    #[test]
    fn bundle_holds_each_policy_and_the_referenced_key_material() {
        let a = orders("a", "2026-01-01T00:00:00Z");
        let secret: Secret = serde_json::from_value(json!({
            "metadata": {"name": "hmac"}, "data": {"key": "c2VjcmV0LWtleS1tYXRlcmlhbA=="},
        }))
        .expect("secret");
        let secrets = [("hmac".to_string(), Some(secret))].into();
        let bundle = bundle("shop", &[&a], &secrets, &BTreeMap::new()).expect("bundle");
        let data = bundle.config_map.data.expect("data");
        let text = &data["a.yaml"];
        let docs = tokengate_policy::parse_documents(text).expect("the sidecar reads it");
        assert_eq!(docs[0].metadata.name, "a");
        assert_eq!(docs[0].metadata.generation, Some(2));
        assert_eq!(docs[0].spec, a.spec);
        let keys = bundle.secret.data.expect("keys");
        assert_eq!(keys["hmac.key"].0, b"secret-key-material");
        assert!(bundle.secret_problems.is_empty());
        let owners = bundle.config_map.metadata.owner_references.expect("owners");
        assert_eq!(owners[0].uid, "uid-a");
    }

    #[test]
    fn a_missing_secret_is_named_and_the_others_still_render() {
        let a = orders("a", "2026-01-01T00:00:00Z");
        let b = policy(
            "b",
            "2026-01-02T00:00:00Z",
            json!({"selector": {"matchLabels": {"app": "b"}}, "validateJwt": {"jwksUris": ["https://idp.example/keys"]}}),
        );
        let bundle = bundle("shop", &[&a, &b], &BTreeMap::new(), &BTreeMap::new()).expect("bundle");
        let data = bundle.config_map.data.expect("data");
        assert!(data.contains_key("a.yaml") && data.contains_key("b.yaml"));
        let problems = &bundle.secret_problems["a"];
        assert!(problems[0].contains("Secret shop/hmac"), "{problems:?}");
        assert!(!bundle.secret_problems.contains_key("b"));
    }

    #[test]
    fn delivered_keys_go_in_their_config_map_once_per_source_and_never_for_sidecar_mode() {
        let keys_url = "https://idp.example/keys";
        let spec = |app: &str, url: &str, mode: Option<&str>| {
            let mut spec = json!({"selector": {"matchLabels": {"app": app}},
                                  "validateJwt": {"jwksUris": [url]}});
            if let Some(mode) = mode {
                spec["keyDelivery"] = json!(mode);
            }
            spec
        };
        let a = policy("a", "2026-01-01T00:00:00Z", spec("a", keys_url, None));
        let b = policy(
            "b",
            "2026-01-02T00:00:00Z",
            spec("b", keys_url, Some("Operator")),
        );
        let own = "https://own.example/keys";
        let c = policy("c", "2026-01-03T00:00:00Z", spec("c", own, Some("Sidecar")));
        let pending = "https://pending.example/keys";
        let d = policy("d", "2026-01-04T00:00:00Z", spec("d", pending, None));
        // Two EC P-256 public keys.
        let points = [
            (
                "3kAZOgw_T5OIe7nUJXeKef6XBnWigcAwtBwPsJbUQNo",
                "lxPCzf_33pvH1RMoXvEU1xedHRAUmxGn2fsjO7cmFqc",
            ),
            (
                "gljSRZk3nuRlqOzsr7ySx8VAPR3p-0D2JMCyLhhX0Ps",
                "2WAP06X1wBmm3GXCSQaJo8WYvszSsdLNYE-nEemnYAE",
            ),
        ];
        let jwk = |byte: u8| {
            let (x, y) = points[usize::from(byte - 1)];
            json!({"kty": "EC", "crv": "P-256", "kid": format!("k{byte}"), "x": x, "y": y})
        };
        let held = |url: &str, byte: u8| {
            let keys = SourceKeys::from_jwks(
                json!({"keys": [jwk(byte)]}),
                url,
                None,
                std::time::SystemTime::now(),
            )
            .expect("keys");
            (RemoteKeySource::Jwks(url.to_string()), Arc::new(keys))
        };
        // The operator holds keys for the shared source and the Sidecar-mode one; none yet for
        // the pending source.
        let keys: BTreeMap<_, _> = [held(keys_url, 1), held(own, 2)].into();
        assert_eq!(
            delivered_sources([&a, &b, &c, &d]),
            [keys_url, pending]
                .map(|url| RemoteKeySource::Jwks(url.to_string()))
                .into()
        );
        let bundle = bundle("shop", &[&a, &b, &c, &d], &BTreeMap::new(), &keys).expect("bundle");
        assert_eq!(bundle.jwks.metadata.name.as_deref(), Some(JWKS_CONFIG_MAP));
        let data = bundle.jwks.data.expect("data");
        let shared = RemoteKeySource::Jwks(keys_url.to_string());
        assert_eq!(data.len(), 1, "{:?}", data.keys());
        let (source, delivered) =
            tokengate_keys::delivery::parse(&data[&contract::jwks_file_name(&shared)])
                .expect("the sidecar reads it");
        assert_eq!(source, shared);
        assert_eq!(delivered.keys[0].kid.as_deref(), Some("k1"));
        let owners = bundle.jwks.metadata.owner_references.expect("owners");
        assert_eq!(owners.len(), 4, "every policy owns it");
    }

    #[test]
    fn network_policy_admits_only_the_sidecar_and_open_ports() {
        let np = network_policy(&orders("a", "2026-01-01T00:00:00Z")).expect("rendered");
        assert_eq!(np.metadata.name.as_deref(), Some("tokengate-a"));
        let spec = np.spec.expect("spec");
        let ports: Vec<_> = spec.ingress.expect("ingress")[0]
            .ports
            .clone()
            .expect("ports")
            .into_iter()
            .map(|p| p.port)
            .collect();
        assert_eq!(
            ports,
            [SIDECAR_PROXY_PORT, SIDECAR_ADMIN_PORT, 9090].map(|p| Some(IntOrString::Int(p)))
        );
        assert_eq!(
            spec.pod_selector
                .expect("selector")
                .match_labels
                .expect("labels")["app"],
            "orders"
        );
        let plain = policy(
            "p",
            "2026-01-01T00:00:00Z",
            json!({"selector": {"matchLabels": {"app": "p"}}, "validateJwt": {"jwksUris": ["https://i/k"]}}),
        );
        assert!(network_policy(&plain).is_none());
    }

    #[test]
    fn conflicts_are_reported_on_both_sides_and_oldest_comes_first() {
        let newer = orders("newer", "2026-02-01T00:00:00Z");
        let older = orders("older", "2026-01-01T00:00:00Z");
        let ordered = oldest_first([&newer, &older]);
        assert_eq!(ordered[0].name_any(), "older");
        let pods = [pod("p1", json!({"app": "orders"}), json!([]))];
        let found = conflicts(&ordered, &pods);
        assert_eq!(found["older"], ["newer".to_string()].into());
        assert_eq!(found["newer"], ["older".to_string()].into());
        assert!(conflicts(&ordered, &[pod("p2", json!({"app": "x"}), json!([]))]).is_empty());
    }

    #[test]
    fn services_targeting_the_app_port_by_number_bypass_the_sidecar() {
        let pods = [pod(
            "p1",
            json!({"app": "orders"}),
            json!([{"name": "http", "containerPort": 8080}, {"name": "metrics", "containerPort": 9090}]),
        )];
        let selected: Vec<&Pod> = pods.iter().collect();
        let by_number = service("by-number", json!(8080));
        let by_name = service("by-name", json!("http"));
        let other_port = service("metrics", json!(9090));
        let found = bypasses(&selected, &[by_number, other_port]);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].service, "by-number");
        assert_eq!(found[0].app_port, 8080);
        // Before injection the name is still the app's: that path bypasses the sidecar too.
        assert_eq!(bypasses(&selected, std::slice::from_ref(&by_name)).len(), 1);
        // After injection the name belongs to the sidecar container.
        let injected: Pod = serde_json::from_value(json!({
            "metadata": {"name": "p2", "labels": {"app": "orders"}},
            "spec": {"containers": [
                {"name": "app", "image": "app", "ports": [{"containerPort": 8080}]},
                {"name": SIDECAR_CONTAINER, "image": "s", "ports": [{"name": "http", "containerPort": SIDECAR_PROXY_PORT}]},
            ]},
        }))
        .expect("pod");
        assert!(bypasses(&[&injected], &[by_name]).is_empty());
    }
}
