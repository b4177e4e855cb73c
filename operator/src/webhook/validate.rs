//! The validating webhook's decision for a TokenPolicy: what the CRD's CEL rules cannot say.
//! The policy crate's own validation (the same pass that compiles the policy for the sidecar)
//! finds malformed URLs, keys that do not parse or fit the algorithms, bad claim paths and header
//! names; this adds what only holds in a cluster (https key sources, no key files, well-formed
//! `secretRef`s), and warns when the policy's selector overlaps another one's.

use std::collections::BTreeMap;

use kube::ResourceExt as _;
use tokengate_policy::selector::SelectorOperator;
use tokengate_policy::{FieldError, InvalidPolicy, LabelSelector, TokenPolicy, TokenPolicySpec};

/// What the operator's configuration allows beyond the defaults.
#[derive(Clone, Debug, Default)]
pub struct PolicyRules {
    /// Accept plain-http key sources on any host (an identity provider inside the cluster
    /// without TLS); loopback hosts are always accepted.
    pub allow_http_key_sources: bool,
}

/// The answer for one TokenPolicy.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PolicyReview {
    /// Why the policy is refused, field by field; `None` admits it.
    pub refusal: Option<String>,
    /// Shown by kubectl whether or not the policy is admitted.
    pub warnings: Vec<String>,
}

/// Reviews `policy` (being created when `is_new`) against the other TokenPolicies of its
/// namespace.
pub fn review_policy(
    policy: &TokenPolicy,
    is_new: bool,
    others: &[TokenPolicy],
    rules: &PolicyRules,
) -> PolicyReview {
    let mut errors = tokengate_policy::validate(&policy.spec);
    errors.extend(cluster_problems(&policy.spec, rules));
    let refusal = (!errors.is_empty()).then(|| {
        InvalidPolicy {
            policy: policy.name_any(),
            errors,
        }
        .to_string()
    });
    PolicyReview {
        refusal,
        warnings: overlap_warnings(policy, is_new, others),
    }
}

/// What the sidecar would accept standalone but not in a cluster.
fn cluster_problems(spec: &TokenPolicySpec, rules: &PolicyRules) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut error = |field: String, message: String| errors.push(FieldError { field, message });
    let Some(jwt) = &spec.validate_jwt else {
        return errors;
    };
    let base = "spec.validateJwt";
    let urls = jwt
        .openid_configs
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{base}.openidConfigs[{i}].url"), &c.url))
        .chain(
            jwt.jwks_uris
                .iter()
                .enumerate()
                .map(|(i, u)| (format!("{base}.jwksUris[{i}]"), u)),
        );
    for (field, text) in urls {
        // Unparseable URLs are the policy crate's to report.
        let Ok(url) = url::Url::parse(text) else {
            continue;
        };
        if url.scheme() == "http" && !rules.allow_http_key_sources && !is_loopback(&url) {
            error(
                field,
                format!(
                    "{text:?} uses http: keys fetched over plain http can be swapped on the way; \
                     use https (http is accepted for loopback hosts, and everywhere when the \
                     operator runs with --allow-http-key-sources)"
                ),
            );
        }
    }
    for (i, key) in jwt.issuer_signing_keys.iter().enumerate() {
        let field = format!("{base}.issuerSigningKeys[{i}]");
        if key.file.is_some() {
            error(
                format!("{field}.file"),
                "injected sidecars have no key files: put the base64 key in a Secret of this \
                 namespace and name it with secretRef: {name, key}"
                    .to_owned(),
            );
        }
        let Some(reference) = &key.secret_ref else {
            continue;
        };
        if !reference.name.is_empty() && !is_dns_subdomain(&reference.name) {
            error(
                format!("{field}.secretRef.name"),
                format!(
                    "{:?} is not a Secret name: lower-case letters, digits, '-' and '.', starting \
                     and ending with a letter or digit, at most 253 characters",
                    reference.name
                ),
            );
        }
        if !reference.key.is_empty() && !is_data_key(&reference.key) {
            error(
                format!("{field}.secretRef.key"),
                format!(
                    "{:?} is not a Secret key: letters, digits, '-', '_' and '.', at most 253 \
                     characters",
                    reference.key
                ),
            );
        }
    }
    errors
}

fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// A key of a Secret's or ConfigMap's data that is also a safe file name in the bundle.
pub(crate) fn is_data_key(key: &str) -> bool {
    key.len() <= 253 && tokengate_policy::contract::is_valid_key_file_part(key)
}

/// RFC 1123 subdomain, as Kubernetes names Secrets and ConfigMaps.
pub(crate) fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
                && bytes[0] != b'-'
                && bytes[bytes.len() - 1] != b'-'
        })
}

/// One warning per other policy whose selector can select a pod this one selects, naming the
/// policy that applies to such pods: the older one (then the name), as the sidecar decides.
fn overlap_warnings(policy: &TokenPolicy, is_new: bool, others: &[TokenPolicy]) -> Vec<String> {
    let name = policy.name_any();
    let mut others: Vec<&TokenPolicy> = others.iter().filter(|o| o.name_any() != name).collect();
    others.sort_by_key(|o| o.name_any());
    others
        .into_iter()
        .filter(|other| selectors_overlap(&policy.spec.selector, &other.spec.selector))
        .map(|other| {
            let other_name = other.name_any();
            let this_applies = !is_new && applies_before(policy, other);
            let outcome = if this_applies {
                format!("this policy applies to them (the older one), {other_name:?} does not")
            } else {
                format!("{other_name:?} applies to them (the older one), this policy does not")
            };
            format!(
                "selector {} overlaps TokenPolicy {other_name:?} ({}): on pods both select, {outcome}",
                policy.spec.selector, other.spec.selector
            )
        })
        .collect()
}

/// Whether `a` wins over `b`: created earlier, then by name.
fn applies_before(a: &TokenPolicy, b: &TokenPolicy) -> bool {
    let created = |p: &TokenPolicy| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
    match (created(a), created(b)) {
        (Some(x), Some(y)) if x != y => x < y,
        (None, Some(_)) => false,
        (Some(_), None) => true,
        _ => a.name_any() < b.name_any(),
    }
}

/// What one selector requires of one label key.
#[derive(Default)]
struct KeyConstraint {
    /// Each `In` (and `matchLabels` entry): the value must be one of these.
    one_of: Vec<Vec<String>>,
    none_of: Vec<String>,
    exists: bool,
    absent: bool,
}

/// Whether some set of labels satisfies both selectors. Empty selectors select everything.
pub fn selectors_overlap(a: &LabelSelector, b: &LabelSelector) -> bool {
    let mut keys: BTreeMap<&str, KeyConstraint> = BTreeMap::new();
    for selector in [a, b] {
        for (key, value) in &selector.match_labels {
            keys.entry(key)
                .or_default()
                .one_of
                .push(vec![value.clone()]);
        }
        for requirement in &selector.match_expressions {
            let constraint = keys.entry(&requirement.key).or_default();
            match requirement.operator {
                SelectorOperator::In => constraint.one_of.push(requirement.values.clone()),
                SelectorOperator::NotIn => {
                    constraint
                        .none_of
                        .extend(requirement.values.iter().cloned());
                }
                SelectorOperator::Exists => constraint.exists = true,
                SelectorOperator::DoesNotExist => constraint.absent = true,
            }
        }
    }
    keys.values().all(|c| {
        if c.absent {
            // NotIn is satisfied by a missing label; In and Exists are not.
            return c.one_of.is_empty() && !c.exists;
        }
        let Some((first, rest)) = c.one_of.split_first() else {
            // Only NotIn and Exists: some value outside the excluded ones always exists.
            return true;
        };
        first
            .iter()
            .any(|v| rest.iter().all(|set| set.contains(v)) && !c.none_of.contains(v))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn policy(name: &str, created: Option<&str>, spec: Value) -> TokenPolicy {
        let mut metadata = json!({"name": name, "namespace": "shop"});
        if let Some(created) = created {
            metadata["creationTimestamp"] = json!(created);
        }
        serde_json::from_value(json!({
            "apiVersion": "tokengate.dev/v1alpha1", "kind": "TokenPolicy",
            "metadata": metadata, "spec": spec,
        }))
        .expect("policy")
    }

    fn selector(value: Value) -> LabelSelector {
        serde_json::from_value(value).expect("selector")
    }

    fn refusal(spec: Value, rules: &PolicyRules) -> String {
        let review = review_policy(&policy("p", None, spec.clone()), true, &[], rules);
        review
            .refusal
            .unwrap_or_else(|| panic!("not refused: {spec}"))
    }

    #[test]
    fn each_invalid_class_is_refused_with_what_to_change() {
        let selector = json!({"matchLabels": {"app": "a"}});
        let rules = PolicyRules::default();
        let cases = [
            (
                json!({"selector": selector, "validateJwt": {"jwksUris": ["not a url"]}}),
                "spec.validateJwt.jwksUris[0]: \"not a url\" is not a URL",
            ),
            (
                json!({"selector": selector, "validateJwt": {"openidConfigs": [{"url": "http://idp.example/.well-known/openid-configuration"}]}}),
                "spec.validateJwt.openidConfigs[0].url: \"http://idp.example/.well-known/openid-configuration\" uses http",
            ),
            (
                json!({"selector": selector, "validateJwt": {"issuerSigningKeys": [{"id": "k", "pem": "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----"}]}}),
                "spec.validateJwt.issuerSigningKeys[0]",
            ),
            (
                json!({"selector": selector, "validateJwt": {"algorithms": ["HS256"], "jwksUris": ["https://idp.example/keys"]}}),
                "no configured key can verify HS256",
            ),
            (
                json!({"selector": selector, "validateJwt": {"jwksUris": ["https://idp.example/keys"],
                       "requiredClaims": [{"name": "", "values": ["x"]}]}}),
                "spec.validateJwt.requiredClaims[0].name: claim name is empty",
            ),
            (
                json!({"selector": selector, "validateJwt": {"jwksUris": ["https://idp.example/keys"]},
                       "forwarding": {"claimsToHeaders": [{"claim": "sub", "header": "X User"}]}}),
                "spec.forwarding.claimsToHeaders[0].header: \"X User\" is not a valid header name",
            ),
            (
                json!({"selector": selector, "validateJwt": {"issuerSigningKeys": [{"id": "h", "secretRef": {"name": "Bad_Name", "key": "k"}}]}}),
                "spec.validateJwt.issuerSigningKeys[0].secretRef.name: \"Bad_Name\" is not a Secret name",
            ),
            (
                json!({"selector": selector, "validateJwt": {"issuerSigningKeys": [{"id": "h", "secretRef": {"name": "hmac", "key": "../k"}}]}}),
                "spec.validateJwt.issuerSigningKeys[0].secretRef.key: \"../k\" is not a Secret key",
            ),
            (
                json!({"selector": selector, "validateJwt": {"issuerSigningKeys": [{"id": "h", "file": "/keys/h"}]}}),
                "put the base64 key in a Secret",
            ),
        ];
        for (spec, expected) in cases {
            let message = refusal(spec, &rules);
            assert!(
                message.starts_with("TokenPolicy \"p\" is invalid: "),
                "{message}"
            );
            assert!(message.contains(expected), "{expected:?} not in {message}");
        }
    }

    #[test]
    fn http_is_accepted_on_loopback_and_when_allowed() {
        let spec = |url: &str| json!({"selector": {"matchLabels": {"app": "a"}}, "validateJwt": {"jwksUris": [url]}});
        let strict = PolicyRules::default();
        for url in [
            "http://127.0.0.1:9400/keys",
            "http://localhost/keys",
            "https://idp.example/k",
        ] {
            let review = review_policy(&policy("p", None, spec(url)), true, &[], &strict);
            assert_eq!(review.refusal, None, "{url}");
        }
        let lenient = PolicyRules {
            allow_http_key_sources: true,
        };
        let review = review_policy(
            &policy("p", None, spec("http://keycloak.auth.svc/keys")),
            true,
            &[],
            &lenient,
        );
        assert_eq!(review.refusal, None);
    }

    #[test]
    fn overlapping_selectors_warn_and_name_the_policy_that_applies() {
        let spec = |selector: Value| json!({"selector": selector, "validateJwt": {"jwksUris": ["https://idp.example/keys"]}});
        let first = policy(
            "first",
            Some("2026-01-01T00:00:00Z"),
            spec(json!({"matchLabels": {"app": "orders"}})),
        );
        let unrelated = policy(
            "unrelated",
            Some("2026-01-01T00:00:00Z"),
            spec(json!({"matchLabels": {"app": "billing"}})),
        );
        let new = policy(
            "second",
            None,
            spec(
                json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["orders", "shop"]}]}),
            ),
        );
        let review = review_policy(
            &new,
            true,
            &[first.clone(), unrelated.clone()],
            &PolicyRules::default(),
        );
        assert_eq!(review.refusal, None);
        assert_eq!(review.warnings.len(), 1, "{:?}", review.warnings);
        let warning = &review.warnings[0];
        assert!(
            warning.contains("TokenPolicy \"first\" (app=orders)"),
            "{warning}"
        );
        assert!(
            warning.contains("\"first\" applies to them (the older one), this policy does not"),
            "{warning}"
        );
        // Updating the older one: it applies.
        let review = review_policy(
            &first,
            false,
            &[policy(
                "second",
                Some("2026-02-01T00:00:00Z"),
                serde_json::to_value(&new.spec).expect("spec"),
            )],
            &PolicyRules::default(),
        );
        assert!(
            review.warnings[0].contains("this policy applies to them (the older one)"),
            "{:?}",
            review.warnings
        );
    }

    #[test]
    fn selector_overlap_follows_label_semantics() {
        let overlap = |a: Value, b: Value| selectors_overlap(&selector(a), &selector(b));
        assert!(overlap(
            json!({"matchLabels": {"app": "a"}}),
            json!({"matchLabels": {"tier": "web"}})
        ));
        assert!(!overlap(
            json!({"matchLabels": {"app": "a"}}),
            json!({"matchLabels": {"app": "b"}})
        ));
        assert!(!overlap(
            json!({"matchLabels": {"app": "a"}}),
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]})
        ));
        assert!(overlap(
            json!({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})
        ));
        assert!(!overlap(
            json!({"matchExpressions": [{"key": "app", "operator": "Exists"}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "DoesNotExist"}]})
        ));
        assert!(overlap(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["b", "c"]}]})
        ));
        assert!(!overlap(
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}),
            json!({"matchExpressions": [{"key": "app", "operator": "In", "values": ["b"]},
                                        {"key": "app", "operator": "NotIn", "values": ["b"]}]})
        ));
    }
}
