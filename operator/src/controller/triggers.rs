//! Which TokenPolicies an event affects, from the object before and after it and what the
//! stores hold for its namespace. Only those are reconciled: a Pod or Service event in a busy
//! namespace reconciles the policies whose selection or bypass check it changes, not every
//! policy of the namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::ObjectRef;
use tokengate_policy::{LabelSelector, TokenPolicy};

use crate::render;

type Refs = Vec<ObjectRef<TokenPolicy>>;

fn labels(pod: &Pod) -> Option<BTreeMap<String, String>> {
    render::is_live(pod).then(|| pod.metadata.labels.clone().unwrap_or_default())
}

fn is_deleting(policy: &TokenPolicy) -> bool {
    policy.metadata.deletion_timestamp.is_some()
}

/// References to `policies` (not being deleted) that select one of `pod_labels`, by name.
fn selecting<'a>(
    policies: &'a [Arc<TokenPolicy>],
    pod_labels: &'a [BTreeMap<String, String>],
) -> impl Iterator<Item = &'a TokenPolicy> {
    policies
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| !is_deleting(p))
        .filter(|p| pod_labels.iter().any(|l| p.spec.selector.matches(l)))
}

fn unique(refs: impl IntoIterator<Item = ObjectRef<TokenPolicy>>) -> Refs {
    let mut seen = BTreeSet::new();
    refs.into_iter()
        .filter(|r| seen.insert((r.namespace.clone(), r.name.clone())))
        .collect()
}

/// What a policy selects; nothing while it is being deleted.
fn selects(policy: Option<&TokenPolicy>) -> Option<&LabelSelector> {
    policy.filter(|p| !is_deleting(p)).map(|p| &p.spec.selector)
}

/// A TokenPolicy changed (`old`/`new`; `None`: absent). `siblings`: the namespace's policies
/// after the change (the changed one among them unless deleted); `pods`: the namespace's pods.
///
/// - The policy itself, when it is new, its spec changed (generation) or its deletion began.
///   Status updates (same generation) trigger nothing, so reports do not ripple.
/// - When what it selects may have changed (created, deleted, selector edited): the siblings
///   that select a pod it selected before or selects now, whose `Conflict` may change.
/// - When it is deleted: the oldest remaining sibling, which renders the bundle without it.
pub fn for_policy(
    old: Option<&TokenPolicy>,
    new: Option<&TokenPolicy>,
    siblings: &[Arc<TokenPolicy>],
    pods: &[Arc<Pod>],
) -> Refs {
    let Some(changed) = new.or(old) else {
        return Vec::new();
    };
    let name = changed.metadata.name.clone().unwrap_or_default();
    let mut refs = Vec::new();
    if let Some(new) = new {
        let spec_or_deletion_changed = old.is_none_or(|old| {
            old.metadata.generation != new.metadata.generation
                || is_deleting(old) != is_deleting(new)
        });
        if spec_or_deletion_changed {
            refs.push(ObjectRef::from(new));
        }
    }
    let (before, after) = (selects(old), selects(new));
    if before != after {
        let touched: Vec<BTreeMap<String, String>> = pods
            .iter()
            .filter_map(|pod| labels(pod))
            .filter(|l| before.is_some_and(|s| s.matches(l)) || after.is_some_and(|s| s.matches(l)))
            .collect();
        refs.extend(
            selecting(siblings, &touched)
                .filter(|p| p.metadata.name.as_deref() != Some(name.as_str()))
                .map(ObjectRef::from),
        );
    }
    if new.is_none() {
        let remaining = siblings
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| !is_deleting(p) && p.metadata.name.as_deref() != Some(name.as_str()));
        if let Some(oldest) = render::oldest_first(remaining).first() {
            refs.push(ObjectRef::from(*oldest));
        }
    }
    unique(refs)
}

/// A Pod changed: the policies that select it before or after (its count, conflicts and
/// bypasses). Nothing when what the policies read of it is unchanged.
pub fn for_pod(old: Option<&Pod>, new: Option<&Pod>, policies: &[Arc<TokenPolicy>]) -> Refs {
    if old == new {
        return Vec::new();
    }
    let touched: Vec<BTreeMap<String, String>> = [old, new]
        .into_iter()
        .flatten()
        .filter_map(labels)
        .collect();
    unique(selecting(policies, &touched).map(ObjectRef::from))
}

/// A Service changed: the policies that select a pod the Service selects before or after
/// (their `Bypass`). Nothing when its selector and ports are unchanged.
pub fn for_service(
    old: Option<&Service>,
    new: Option<&Service>,
    policies: &[Arc<TokenPolicy>],
    pods: &[Arc<Pod>],
) -> Refs {
    if old == new {
        return Vec::new();
    }
    let selectors: Vec<&BTreeMap<String, String>> = [old, new]
        .into_iter()
        .flatten()
        .filter_map(|s| s.spec.as_ref()?.selector.as_ref())
        .filter(|s| !s.is_empty())
        .collect();
    let touched: Vec<BTreeMap<String, String>> = pods
        .iter()
        .filter_map(|pod| labels(pod))
        .filter(|l| {
            selectors
                .iter()
                .any(|s| s.iter().all(|(k, v)| l.get(k) == Some(v)))
        })
        .collect();
    unique(selecting(policies, &touched).map(ObjectRef::from))
}

/// A Secret was created, changed or deleted: the policies whose `secretRef`s name it.
pub fn for_secret(
    old: Option<&PartialObjectMeta<Secret>>,
    new: Option<&PartialObjectMeta<Secret>>,
    policies: &[Arc<TokenPolicy>],
) -> Refs {
    let version =
        |s: Option<&PartialObjectMeta<Secret>>| s.map(|s| s.metadata.resource_version.clone());
    if old.is_some() && new.is_some() && version(old) == version(new) {
        return Vec::new();
    }
    let Some(name) = new.or(old).and_then(|s| s.metadata.name.clone()) else {
        return Vec::new();
    };
    unique(
        policies
            .iter()
            .map(AsRef::as_ref)
            .filter(|p| !is_deleting(p))
            .filter(|p| render::secret_refs(&p.spec).iter().any(|r| r.name == name))
            .map(ObjectRef::from),
    )
}

/// The namespace's bundle (ConfigMap or Secret) was deleted by someone: the oldest policy
/// renders it again. None when no policy is left (the garbage collector's deletion).
pub fn for_bundle_deleted(policies: &[Arc<TokenPolicy>]) -> Refs {
    let remaining = policies
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| !is_deleting(p));
    render::oldest_first(remaining)
        .first()
        .map(|oldest| ObjectRef::from(*oldest))
        .into_iter()
        .collect()
}

/// A NetworkPolicy of the operator's changed or was deleted: the policy it belongs to, which
/// applies it again or deletes it, as its spec says.
pub fn for_network_policy(name: &str, policies: &[Arc<TokenPolicy>]) -> Refs {
    policies
        .iter()
        .map(AsRef::as_ref)
        .filter(|p| !is_deleting(p) && render::network_policy_name(p) == name)
        .map(ObjectRef::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(
        name: &str,
        created: &str,
        generation: i64,
        app: serde_json::Value,
    ) -> Arc<TokenPolicy> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "tokengate.dev/v1alpha1", "kind": "TokenPolicy",
                "metadata": {"name": name, "namespace": "shop", "generation": generation,
                             "creationTimestamp": created},
                "spec": {
                    "selector": {"matchExpressions": [{"key": "app", "operator": "In", "values": app}]},
                    "validateJwt": {"jwksUris": ["https://idp.example/keys"],
                        "issuerSigningKeys": [{"id": "h", "secretRef": {"name": format!("{name}-key"), "key": "k"}}]},
                },
            }))
            .expect("policy"),
        )
    }

    fn pod(name: &str, app: &str, port: i32) -> Arc<Pod> {
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": "shop", "labels": {"app": app}},
                "spec": {"containers": [{"name": "app", "ports": [{"containerPort": port}]}]},
            }))
            .expect("pod"),
        )
    }

    fn service(selector: &str, target: i32) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "svc", "namespace": "shop"},
            "spec": {"selector": {"app": selector}, "ports": [{"port": 80, "targetPort": target}]},
        }))
        .expect("service")
    }

    fn secret(name: &str, version: &str) -> PartialObjectMeta<Secret> {
        let mut secret = PartialObjectMeta::<Secret>::default();
        secret.metadata.name = Some(name.to_string());
        secret.metadata.namespace = Some("shop".to_string());
        secret.metadata.resource_version = Some(version.to_string());
        secret
    }

    fn names(refs: Refs) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    }

    /// Ten policies for ten apps and a policy for `orders` and `cart` both.
    fn namespace() -> (Vec<Arc<TokenPolicy>>, Vec<Arc<Pod>>) {
        let mut policies: Vec<Arc<TokenPolicy>> = (0..10)
            .map(|i| {
                policy(
                    &format!("p{i}"),
                    "2026-01-02T00:00:00Z",
                    1,
                    json!([format!("app{i}")]),
                )
            })
            .collect();
        policies.push(policy(
            "shared",
            "2026-01-01T00:00:00Z",
            1,
            json!(["orders", "cart"]),
        ));
        policies.push(policy(
            "orders",
            "2026-01-03T00:00:00Z",
            1,
            json!(["orders"]),
        ));
        let pods = vec![
            pod("o1", "orders", 8080),
            pod("c1", "cart", 8080),
            pod("a1", "app1", 8080),
        ];
        (policies, pods)
    }

    #[test]
    fn a_pod_event_reconciles_only_the_policies_that_select_it() {
        let (policies, _) = namespace();
        let before = pod("o1", "orders", 8080);
        assert_eq!(
            names(for_pod(None, Some(&before), &policies)),
            ["orders", "shared"]
        );
        // Relabelled: the policies it leaves and the one it joins.
        let after = pod("o1", "app3", 8080);
        assert_eq!(
            names(for_pod(Some(&before), Some(&after), &policies)),
            ["orders", "p3", "shared"]
        );
        // A new port changes bypasses: the policies selecting it.
        let ported = pod("o1", "orders", 9090);
        assert_eq!(
            names(for_pod(Some(&before), Some(&ported), &policies)),
            ["orders", "shared"]
        );
        // Unchanged facts (a status update once projected): nothing.
        assert!(for_pod(Some(&before), Some(&before.clone()), &policies).is_empty());
        // Deleted, or selected by nobody.
        assert_eq!(
            names(for_pod(Some(&before), None, &policies)),
            ["orders", "shared"]
        );
        assert!(for_pod(None, Some(&pod("x", "nobody", 1)), &policies).is_empty());
    }

    #[test]
    fn a_service_event_reconciles_the_policies_of_the_pods_it_selects() {
        let (policies, pods) = namespace();
        let svc = service("cart", 8080);
        assert_eq!(
            names(for_service(None, Some(&svc), &policies, &pods)),
            ["shared"]
        );
        let moved = service("orders", 8080);
        assert_eq!(
            names(for_service(Some(&svc), Some(&moved), &policies, &pods)),
            ["orders", "shared"]
        );
        assert!(for_service(Some(&svc), Some(&svc.clone()), &policies, &pods).is_empty());
        // A Service selecting no pod affects no policy.
        assert!(for_service(None, Some(&service("nobody", 80)), &policies, &pods).is_empty());
    }

    #[test]
    fn a_policy_event_reconciles_itself_and_the_siblings_it_overlaps() {
        let (mut policies, pods) = namespace();
        let orders = Arc::clone(&policies[11]);
        // Created: itself, and `shared`, which selects the same pod.
        assert_eq!(
            names(for_policy(None, Some(&orders), &policies, &pods)),
            ["orders", "shared"]
        );
        // A status update: nothing.
        assert!(for_policy(Some(&orders), Some(&orders.clone()), &policies, &pods).is_empty());
        // A spec edit that keeps the selector: itself only.
        let mut edited = orders.as_ref().clone();
        edited.metadata.generation = Some(2);
        assert_eq!(
            names(for_policy(Some(&orders), Some(&edited), &policies, &pods)),
            ["orders"]
        );
        // Deleted: the overlapping sibling and the oldest one (the bundle); here the same.
        policies.remove(11);
        assert_eq!(
            names(for_policy(Some(&orders), None, &policies, &pods)),
            ["shared"]
        );
        // Deleting a policy that overlaps nobody: only the oldest sibling re-renders the bundle.
        let p5 = policies.remove(5);
        assert_eq!(
            names(for_policy(Some(&p5), None, &policies, &pods)),
            ["shared"]
        );
        // The last policy of a namespace: nobody (the bundle goes with its last owner).
        assert!(for_policy(Some(&p5), None, &[], &pods).is_empty());
    }

    #[test]
    fn the_operators_own_objects_deleted_by_someone_are_put_back_by_one_policy() {
        let (policies, _) = namespace();
        assert_eq!(names(for_bundle_deleted(&policies)), ["shared"]);
        assert!(for_bundle_deleted(&[]).is_empty());
        assert_eq!(names(for_network_policy("tokengate-p7", &policies)), ["p7"]);
        assert!(for_network_policy("tokengate-gone", &policies).is_empty());
    }

    #[test]
    fn a_secret_event_reconciles_the_policies_that_reference_it() {
        let (policies, _) = namespace();
        let key = secret("p4-key", "1");
        assert_eq!(names(for_secret(None, Some(&key), &policies)), ["p4"]);
        assert_eq!(
            names(for_secret(
                Some(&key),
                Some(&secret("p4-key", "2")),
                &policies
            )),
            ["p4"]
        );
        assert_eq!(names(for_secret(Some(&key), None, &policies)), ["p4"]);
        assert!(for_secret(Some(&key), Some(&key.clone()), &policies).is_empty());
        assert!(for_secret(None, Some(&secret("unrelated", "1")), &policies).is_empty());
    }
}
