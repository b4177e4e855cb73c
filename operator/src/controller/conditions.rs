//! A TokenPolicy's status, computed without I/O: [`Observed::gather`] reads the facts of its
//! namespace, [`status`] turns them into conditions at a given time, keeping each condition's
//! `lastTransitionTime` while its status stays the same.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use tokengate_policy::contract;
use tokengate_policy::status::{condition, condition_status, reason};
use tokengate_policy::{TokenPolicy, TokenPolicySpec, TokenPolicyStatus};

use super::index::NamespaceFacts;
use crate::render::{self, Bypass};

/// The state of one remote key source (discovery document or JWKS) in the key cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeySourceState {
    pub url: String,
    /// Keys in hand (`None`: none yet, or too old to use).
    pub keys: Option<usize>,
    /// Whether the bundle delivers them to the sidecars (`keyDelivery` not `Sidecar`).
    pub delivered: bool,
    /// The last fetch's error, if it failed.
    pub error: Option<String>,
}

/// Other policies select some of this one's pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub others: BTreeSet<String>,
    /// The policy that applies to the shared pods (the oldest).
    pub applies: String,
}

/// Everything a TokenPolicy's status says, gathered from its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub generation: Option<i64>,
    pub mode: &'static str,
    pub selector: String,
    /// Validation errors of the spec.
    pub spec_errors: Vec<String>,
    /// Referenced Secrets (or keys) that do not exist.
    pub secret_problems: Vec<String>,
    pub selected_pods: usize,
    pub conflict: Option<Conflict>,
    pub bypasses: Vec<Bypass>,
    /// The policy renders a NetworkPolicy (privateAccess.networkPolicy).
    pub network_policy: bool,
    pub key_sources: Vec<KeySourceState>,
}

impl Observed {
    /// What the namespace's facts say about `policy`.
    pub fn gather(
        policy: &TokenPolicy,
        facts: &NamespaceFacts,
        secret_problems: Vec<String>,
        key_sources: Vec<KeySourceState>,
    ) -> Self {
        let name = policy.name_any();
        let ordered = facts.ordered();
        let selected = render::selected_pods(policy, &facts.pods);
        let conflict = render::conflicts(&ordered, &facts.pods)
            .remove(&name)
            .map(|others| {
                let applies = ordered
                    .iter()
                    .map(|p| p.name_any())
                    .find(|n| *n == name || others.contains(n))
                    .unwrap_or_else(|| name.clone());
                Conflict { others, applies }
            });
        Observed {
            generation: policy.metadata.generation,
            mode: mode(&policy.spec),
            selector: policy.spec.selector.to_string(),
            spec_errors: tokengate_policy::validate(&policy.spec)
                .iter()
                .map(ToString::to_string)
                .collect(),
            secret_problems,
            selected_pods: selected.len(),
            conflict,
            bypasses: render::bypasses(&selected, &facts.services),
            network_policy: render::network_policy(policy).is_some(),
            key_sources,
        }
    }
}

fn mode(spec: &TokenPolicySpec) -> &'static str {
    if spec.validate_azure_ad_token.is_some() {
        "validateAzureAdToken"
    } else {
        "validateJwt"
    }
}

fn new_condition(type_: &str, status: &str, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: None,
        last_transition_time: Time(Timestamp::UNIX_EPOCH),
    }
}

fn bool_status(value: bool) -> &'static str {
    if value {
        condition_status::TRUE
    } else {
        condition_status::FALSE
    }
}

fn ready(observed: &Observed) -> Condition {
    if !observed.spec_errors.is_empty() {
        return new_condition(
            condition::READY,
            condition_status::FALSE,
            reason::INVALID_SPEC,
            observed.spec_errors.join("; "),
        );
    }
    if !observed.secret_problems.is_empty() {
        return new_condition(
            condition::READY,
            condition_status::FALSE,
            reason::SECRET_NOT_FOUND,
            format!(
                "{}; pods keep their last good version of this policy until the key is there",
                observed.secret_problems.join("; ")
            ),
        );
    }
    new_condition(
        condition::READY,
        condition_status::TRUE,
        reason::RENDERED,
        format!(
            "rendered into ConfigMap {}; selects {} pod(s)",
            render::POLICIES_CONFIG_MAP,
            observed.selected_pods
        ),
    )
}

/// `KeysResolved` from the key cache (the sidecar's own fetch code) and the referenced Secrets.
fn keys_resolved(observed: &Observed) -> Condition {
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    let mut resolved = Vec::new();
    for source in &observed.key_sources {
        match (source.keys, &source.error) {
            (_, Some(error)) => failed.push(format!("{}: {error}", source.url)),
            (Some(keys), None) => {
                // Not the fetch time: the status (and an Event) would change on every refresh.
                let delivered = if source.delivered {
                    format!(", delivered in ConfigMap {}", contract::JWKS_CONFIG_MAP)
                } else {
                    String::new()
                };
                resolved.push(format!("{keys} key(s) from {}{delivered}", source.url));
            }
            (None, None) => pending.push(source.url.clone()),
        }
    }
    failed.extend(observed.secret_problems.iter().cloned());
    if !failed.is_empty() {
        return new_condition(
            condition::KEYS_RESOLVED,
            condition_status::FALSE,
            reason::KEY_SOURCE_FAILED,
            failed.join("; "),
        );
    }
    if !pending.is_empty() {
        return new_condition(
            condition::KEYS_RESOLVED,
            condition_status::UNKNOWN,
            reason::FETCHING,
            format!("fetching {}", pending.join(", ")),
        );
    }
    let message = if resolved.is_empty() {
        "keys are given in the policy".to_string()
    } else {
        resolved.join("; ")
    };
    new_condition(
        condition::KEYS_RESOLVED,
        condition_status::TRUE,
        reason::KEYS_FETCHED,
        message,
    )
}

fn conflict(observed: &Observed) -> Condition {
    match &observed.conflict {
        Some(conflict) => new_condition(
            condition::CONFLICT,
            condition_status::TRUE,
            reason::SELECTOR_OVERLAP,
            format!(
                "pods selected by this policy are also selected by {}; {} applies to them (the \
                 oldest)",
                conflict
                    .others
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                conflict.applies
            ),
        ),
        None => new_condition(
            condition::CONFLICT,
            condition_status::FALSE,
            reason::NO_OVERLAP,
            "no other TokenPolicy selects these pods".to_string(),
        ),
    }
}

fn bypass(observed: &Observed) -> Condition {
    if observed.bypasses.is_empty() {
        return new_condition(
            condition::BYPASS,
            condition_status::FALSE,
            reason::NO_BYPASS,
            "no Service reaches the application around the sidecar".to_string(),
        );
    }
    let found = observed
        .bypasses
        .iter()
        .map(|b| {
            format!(
                "Service {} port {} sends traffic to application port {} by {}: {}",
                b.service,
                b.service_port,
                b.app_port,
                b.target,
                protection(b, observed.network_policy)
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    new_condition(
        condition::BYPASS,
        bool_status(true),
        reason::SERVICE_TARGETS_APP_PORT,
        format!(
            "{found}. Fix: make the Service target the port by name \
             (targetPort: <port name>), which the sidecar takes over on injection"
        ),
    )
}

/// Which protection is in force on one bypassing path: the policy's NetworkPolicy (where the
/// CNI enforces NetworkPolicy), the pod firewall of the pods behind it, both, or none.
fn protection(bypass: &Bypass, network_policy: bool) -> String {
    let firewall = match (bypass.firewalled, bypass.pods) {
        (0, _) => None,
        (f, p) if f == p => Some("the pod firewall refuses it".to_string()),
        (f, p) => Some(format!(
            "the pod firewall refuses it on {f} of {p} pods (the others were created without it)"
        )),
    };
    let all_firewalled = bypass.firewalled == bypass.pods && bypass.pods > 0;
    match (network_policy, firewall) {
        (true, Some(firewall)) => format!(
            "protected by NetworkPolicy and pod firewall: {firewall}, and the NetworkPolicy where \
             the CNI enforces it"
        ),
        (true, None) => "protected by NetworkPolicy: it blocks that path where the CNI enforces \
                         NetworkPolicy, so it fails closed there"
            .to_string(),
        (false, Some(firewall)) if all_firewalled => {
            format!("protected by pod firewall: {firewall}, so it fails closed")
        }
        (false, Some(firewall)) => {
            format!(
                "partly protected by pod firewall: {firewall}; on the others that path skips token validation"
            )
        }
        (false, None) => "no protection in force: that path skips token validation".to_string(),
    }
}

/// The status that `observed` calls for at `now`. A condition whose status is unchanged from
/// `previous` keeps its `lastTransitionTime`; every condition carries the generation observed.
pub fn status(
    observed: &Observed,
    previous: Option<&TokenPolicyStatus>,
    now: Timestamp,
) -> TokenPolicyStatus {
    let conditions = [
        ready(observed),
        keys_resolved(observed),
        conflict(observed),
        bypass(observed),
    ]
    .into_iter()
    .map(|mut condition| {
        condition.observed_generation = observed.generation;
        condition.last_transition_time = previous
            .and_then(|p| p.conditions.iter().find(|c| c.type_ == condition.type_))
            .filter(|before| before.status == condition.status)
            .map_or(Time(now), |before| before.last_transition_time.clone());
        condition
    })
    .collect();
    TokenPolicyStatus {
        observed_generation: observed.generation,
        conditions,
        mode: Some(observed.mode.to_string()),
        selector: Some(observed.selector.clone()),
        selected_pods: Some(i32::try_from(observed.selected_pods).unwrap_or(i32::MAX)),
    }
}

/// Whether a condition of this type and status is the good news.
pub fn is_healthy(condition: &Condition) -> bool {
    match condition.type_.as_str() {
        condition::CONFLICT | condition::BYPASS => condition.status == condition_status::FALSE,
        _ => condition.status == condition_status::TRUE,
    }
}

/// The conditions of `next` worth an Event: a changed status, reason or message; on the first
/// report, only bad news.
pub fn transitions<'a>(
    previous: Option<&TokenPolicyStatus>,
    next: &'a TokenPolicyStatus,
) -> Vec<&'a Condition> {
    next.conditions
        .iter()
        .filter(|condition| {
            match previous.and_then(|p| p.conditions.iter().find(|c| c.type_ == condition.type_)) {
                Some(before) => {
                    before.status != condition.status
                        || before.reason != condition.reason
                        || before.message != condition.message
                }
                None => !is_healthy(condition),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use k8s_openapi::api::core::v1::{Pod, Service};
    use serde_json::json;

    use super::*;

    const T0: &str = "2026-03-01T10:00:00Z";
    const T1: &str = "2026-03-01T10:05:00Z";

    fn at(time: &str) -> Timestamp {
        time.parse().expect("timestamp")
    }

    fn policy(name: &str, created: &str, spec: serde_json::Value) -> TokenPolicy {
        serde_json::from_value(json!({
            "apiVersion": "tokengate.dev/v1alpha1", "kind": "TokenPolicy",
            "metadata": {"name": name, "namespace": "shop", "generation": 3, "creationTimestamp": created},
            "spec": spec,
        }))
        .expect("policy")
    }

    fn orders(name: &str, created: &str) -> TokenPolicy {
        policy(
            name,
            created,
            json!({"selector": {"matchLabels": {"app": "orders"}},
                   "validateJwt": {"openidConfigs": [{"url": "https://idp.example/.well-known/openid-configuration"}]}}),
        )
    }

    fn facts(policies: &[&TokenPolicy], services: serde_json::Value) -> NamespaceFacts {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": "orders-1", "namespace": "shop", "labels": {"app": "orders"}},
            "spec": {"containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]},
        }))
        .expect("pod");
        let services: Vec<Service> = serde_json::from_value(services).expect("services");
        NamespaceFacts {
            policies: policies.iter().map(|p| Arc::new((*p).clone())).collect(),
            pods: vec![pod],
            services,
        }
    }

    fn fetched() -> Vec<KeySourceState> {
        vec![KeySourceState {
            url: "https://idp.example/.well-known/openid-configuration".to_string(),
            keys: Some(2),
            delivered: false,
            error: None,
        }]
    }

    fn find<'a>(status: &'a TokenPolicyStatus, type_: &str) -> &'a Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == type_)
            .expect("condition present")
    }

    fn summary(condition: &Condition) -> (&str, &str) {
        (condition.status.as_str(), condition.reason.as_str())
    }

    #[test]
    fn a_rendered_policy_with_fetched_keys_is_ready_at_the_given_time() {
        let a = orders("a", T0);
        let observed = Observed::gather(&a, &facts(&[&a], json!([])), Vec::new(), fetched());
        let status = status(&observed, None, at(T0));
        assert_eq!(status.observed_generation, Some(3));
        assert_eq!(status.mode.as_deref(), Some("validateJwt"));
        assert_eq!(status.selector.as_deref(), Some("app=orders"));
        assert_eq!(status.selected_pods, Some(1));
        let types: Vec<&str> = status.conditions.iter().map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["Ready", "KeysResolved", "Conflict", "Bypass"]);
        for condition in &status.conditions {
            assert_eq!(condition.observed_generation, Some(3));
            assert_eq!(condition.last_transition_time, Time(at(T0)));
        }
        assert_eq!(summary(find(&status, "Ready")), ("True", reason::RENDERED));
        assert!(find(&status, "Ready").message.contains("selects 1 pod(s)"));
        assert_eq!(
            summary(find(&status, "KeysResolved")),
            ("True", reason::KEYS_FETCHED)
        );
        assert_eq!(
            find(&status, "KeysResolved").message,
            "2 key(s) from https://idp.example/.well-known/openid-configuration"
        );
        assert_eq!(
            summary(find(&status, "Conflict")),
            ("False", reason::NO_OVERLAP)
        );
        assert_eq!(
            summary(find(&status, "Bypass")),
            ("False", reason::NO_BYPASS)
        );
    }

    #[test]
    fn an_invalid_spec_is_not_ready_and_says_why() {
        let bad = policy(
            "bad",
            T0,
            json!({"selector": {"matchLabels": {"app": "orders"}},
                   "validateJwt": {"jwksUris": ["ftp://idp.example/keys"]}}),
        );
        let observed = Observed::gather(&bad, &facts(&[&bad], json!([])), Vec::new(), Vec::new());
        assert!(!observed.spec_errors.is_empty());
        let status = status(&observed, None, at(T0));
        let ready = find(&status, "Ready");
        assert_eq!(summary(ready), ("False", reason::INVALID_SPEC));
        assert_eq!(ready.message, observed.spec_errors.join("; "));
    }

    #[test]
    fn a_missing_secret_fails_ready_and_keys_resolved() {
        let a = orders("a", T0);
        let problem =
            "Secret shop/hmac (referenced as secretRef hmac/key) does not exist".to_string();
        let observed = Observed::gather(
            &a,
            &facts(&[&a], json!([])),
            vec![problem.clone()],
            Vec::new(),
        );
        let status = status(&observed, None, at(T0));
        let ready = find(&status, "Ready");
        assert_eq!(summary(ready), ("False", reason::SECRET_NOT_FOUND));
        assert!(ready.message.starts_with(&problem), "{}", ready.message);
        let keys = find(&status, "KeysResolved");
        assert_eq!(summary(keys), ("False", reason::KEY_SOURCE_FAILED));
        assert_eq!(keys.message, problem);
    }

    #[test]
    fn keys_resolved_follows_the_key_sources() {
        let a = orders("a", T0);
        let with = |sources: Vec<KeySourceState>| {
            let observed = Observed::gather(&a, &facts(&[&a], json!([])), Vec::new(), sources);
            find(&status(&observed, None, at(T0)), "KeysResolved").clone()
        };
        let source = |keys: Option<usize>, error: Option<&str>| KeySourceState {
            url: "https://idp.example/keys".to_string(),
            keys,
            delivered: false,
            error: error.map(str::to_string),
        };
        let pending = with(vec![source(None, None)]);
        assert_eq!(summary(&pending), ("Unknown", reason::FETCHING));
        assert_eq!(pending.message, "fetching https://idp.example/keys");
        // A failure wins over keys still in hand, and names the source.
        let failed = with(vec![source(Some(1), Some("connection refused"))]);
        assert_eq!(summary(&failed), ("False", reason::KEY_SOURCE_FAILED));
        assert_eq!(
            failed.message,
            "https://idp.example/keys: connection refused"
        );
        let inline = with(Vec::new());
        assert_eq!(summary(&inline), ("True", reason::KEYS_FETCHED));
        assert_eq!(inline.message, "keys are given in the policy");
        // Keys in hand say whether the bundle delivers them.
        let delivered = with(vec![KeySourceState {
            delivered: true,
            ..source(Some(2), None)
        }]);
        assert_eq!(summary(&delivered), ("True", reason::KEYS_FETCHED));
        assert_eq!(
            delivered.message,
            "2 key(s) from https://idp.example/keys, delivered in ConfigMap tokengate-jwks"
        );
    }

    #[test]
    fn overlapping_selectors_conflict_and_the_oldest_applies() {
        let older = orders("older", T0);
        let newer = orders("newer", T1);
        let namespace = facts(&[&newer, &older], json!([]));
        for (policy, other) in [(&older, "newer"), (&newer, "older")] {
            let observed = Observed::gather(policy, &namespace, Vec::new(), fetched());
            let status = status(&observed, None, at(T0));
            let conflict = find(&status, "Conflict");
            assert_eq!(summary(conflict), ("True", reason::SELECTOR_OVERLAP));
            assert!(
                conflict
                    .message
                    .contains(&format!("also selected by {other};")),
                "{}",
                conflict.message
            );
            assert!(
                conflict.message.contains("older applies"),
                "{}",
                conflict.message
            );
        }
    }

    #[test]
    fn a_service_targeting_the_app_port_is_a_bypass() {
        let a = orders("a", T0);
        let services = json!([{"metadata": {"name": "direct"},
            "spec": {"selector": {"app": "orders"}, "ports": [{"name": "web", "port": 80, "targetPort": 8080}]}}]);
        let observed = Observed::gather(&a, &facts(&[&a], services), Vec::new(), fetched());
        let bypass = find(&status(&observed, None, at(T0)), "Bypass").clone();
        assert_eq!(summary(&bypass), ("True", reason::SERVICE_TARGETS_APP_PORT));
        assert!(
            bypass.message.contains("Service direct port web"),
            "{}",
            bypass.message
        );
        assert!(
            bypass.message.contains("skips token validation"),
            "{}",
            bypass.message
        );
    }

    #[test]
    fn the_bypass_condition_names_the_protection_in_force() {
        let services = json!([{"metadata": {"name": "direct"},
            "spec": {"selector": {"app": "orders"}, "ports": [{"port": 80, "targetPort": 8080}]}}]);
        let with_firewall = |pod: &mut Pod| {
            if let Some(spec) = pod.spec.as_mut() {
                spec.init_containers = Some(vec![k8s_openapi::api::core::v1::Container {
                    name: tokengate_policy::contract::FIREWALL_CONTAINER.to_string(),
                    ..Default::default()
                }]);
            }
        };
        let message = |network_policy: bool, firewalled: bool| {
            let mut policy = orders("a", T0);
            policy.spec.private_access = Some(tokengate_policy::spec::PrivateAccess {
                network_policy,
                pod_firewall: firewalled,
                open_ports: Vec::new(),
            });
            let mut namespace = facts(&[&policy], services.clone());
            if firewalled {
                namespace.pods.iter_mut().for_each(with_firewall);
            }
            let observed = Observed::gather(&policy, &namespace, Vec::new(), fetched());
            find(&status(&observed, None, at(T0)), "Bypass")
                .message
                .clone()
        };
        let cases = [
            (
                false,
                false,
                "no protection in force: that path skips token validation",
            ),
            (true, false, "protected by NetworkPolicy: "),
            (
                false,
                true,
                "protected by pod firewall: the pod firewall refuses it, so it fails closed",
            ),
            (true, true, "protected by NetworkPolicy and pod firewall"),
        ];
        for (network_policy, firewall, expected) in cases {
            let message = message(network_policy, firewall);
            assert!(message.contains(expected), "{message}");
            assert!(message.contains("Service direct port 80"), "{message}");
        }

        // Some pods without it (created before the policy asked): said, with the count.
        let mut policy = orders("a", T0);
        policy.spec.private_access = Some(tokengate_policy::spec::PrivateAccess {
            pod_firewall: true,
            ..Default::default()
        });
        let mut namespace = facts(&[&policy], services);
        let mut second = namespace.pods[0].clone();
        second.metadata.name = Some("orders-2".to_string());
        with_firewall(&mut second);
        namespace.pods.push(second);
        let observed = Observed::gather(&policy, &namespace, Vec::new(), fetched());
        let message = find(&status(&observed, None, at(T0)), "Bypass")
            .message
            .clone();
        assert!(
            message.contains(
                "partly protected by pod firewall: the pod firewall refuses it on 1 of 2 pods"
            ),
            "{message}"
        );
    }

    #[test]
    fn last_transition_time_moves_only_when_the_status_does() {
        let a = orders("a", T0);
        let namespace = facts(&[&a], json!([]));
        let pending = vec![KeySourceState {
            url: "https://idp.example/.well-known/openid-configuration".to_string(),
            keys: None,
            delivered: false,
            error: None,
        }];
        let first = status(
            &Observed::gather(&a, &namespace, Vec::new(), pending),
            None,
            at(T0),
        );
        // Five minutes later the keys are in: KeysResolved moves, the others keep T0.
        let observed = Observed::gather(&a, &namespace, Vec::new(), fetched());
        let second = status(&observed, Some(&first), at(T1));
        assert_eq!(
            find(&second, "KeysResolved").last_transition_time,
            Time(at(T1))
        );
        for type_ in ["Ready", "Conflict", "Bypass"] {
            assert_eq!(
                find(&second, type_).last_transition_time,
                Time(at(T0)),
                "{type_}"
            );
        }
        // Nothing changed: the same status, so nothing to write.
        assert_eq!(
            status(&observed, Some(&second), at("2026-03-01T11:00:00Z")),
            second
        );
        // A new generation: every condition reports it, transition times stay.
        let mut edited = a.clone();
        edited.metadata.generation = Some(4);
        let third = status(
            &Observed::gather(&edited, &namespace, Vec::new(), fetched()),
            Some(&second),
            at(T1),
        );
        assert_eq!(third.observed_generation, Some(4));
        assert!(
            third
                .conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
        assert_eq!(find(&third, "Ready").last_transition_time, Time(at(T0)));
    }

    #[test]
    fn events_follow_changes_and_first_reports_only_of_bad_news() {
        let a = orders("a", T0);
        let namespace = facts(&[&a], json!([]));
        let first = status(
            &Observed::gather(&a, &namespace, Vec::new(), fetched()),
            None,
            at(T0),
        );
        assert!(transitions(None, &first).is_empty(), "all good news");
        let failing = vec![KeySourceState {
            url: "https://idp.example/keys".to_string(),
            keys: None,
            delivered: false,
            error: Some("HTTP 500".to_string()),
        }];
        let second = status(
            &Observed::gather(&a, &namespace, Vec::new(), failing),
            Some(&first),
            at(T1),
        );
        let changed: Vec<&str> = transitions(Some(&first), &second)
            .iter()
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(changed, ["KeysResolved"]);
        assert!(transitions(Some(&second), &second).is_empty());
        assert!(!is_healthy(find(&second, "KeysResolved")));
    }
}
