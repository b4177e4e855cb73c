//! Kubernetes label selectors, with the API server's matching rules.
//!
//! Our own type rather than k8s-openapi's so the sidecar builds without Kubernetes types; the
//! JSON shape is identical.

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A standard Kubernetes label selector. All requirements are ANDed.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    /// Labels the pod must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,

    /// Set-based requirements.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    pub key: String,
    pub operator: SelectorOperator,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

#[derive(Serialize, Deserialize, JsonSchema, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// Whether a pod with these labels is selected. An empty selector selects every pod, as in
    /// Kubernetes; policies refuse empty selectors at validation.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(key, value)| labels.get(key) == Some(value))
            && self.match_expressions.iter().all(|req| {
                let value = labels.get(&req.key);
                match req.operator {
                    SelectorOperator::In => value.is_some_and(|v| req.values.contains(v)),
                    SelectorOperator::NotIn => value.is_none_or(|v| !req.values.contains(v)),
                    SelectorOperator::Exists => value.is_some(),
                    SelectorOperator::DoesNotExist => value.is_none(),
                }
            })
    }

    /// Problems the API server would also refuse, phrased for a person.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for (i, req) in self.match_expressions.iter().enumerate() {
            let needs_values =
                matches!(req.operator, SelectorOperator::In | SelectorOperator::NotIn);
            if needs_values && req.values.is_empty() {
                problems.push(format!(
                    "matchExpressions[{i}]: operator {:?} needs at least one value",
                    req.operator
                ));
            }
            if !needs_values && !req.values.is_empty() {
                problems.push(format!(
                    "matchExpressions[{i}]: operator {:?} takes no values",
                    req.operator
                ));
            }
        }
        problems
    }
}

/// The kubectl form: `app=orders,tier in (web,api)`.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = self
            .match_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        for req in &self.match_expressions {
            parts.push(match req.operator {
                SelectorOperator::In => format!("{} in ({})", req.key, req.values.join(",")),
                SelectorOperator::NotIn => format!("{} notin ({})", req.key, req.values.join(",")),
                SelectorOperator::Exists => req.key.clone(),
                SelectorOperator::DoesNotExist => format!("!{}", req.key),
            });
        }
        f.write_str(&parts.join(","))
    }
}

/// Reads the downward-API `labels` file: one `key="value"` per line, values quoted and
/// escaped as Go's `%q`.
pub fn parse_downward_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let (key, quoted) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected key=\"value\"", n + 1))?;
        let value =
            unquote(quoted).ok_or_else(|| format!("line {}: value is not quoted", n + 1))?;
        labels.insert(key.to_owned(), value);
    }
    Ok(labels)
}

fn unquote(quoted: &str) -> Option<String> {
    let inner = quoted.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            'n' => out.push('\n'),
            't' => out.push('\t'),
            other => out.push(other),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions_are_anded() {
        let selector: LabelSelector = serde_json::from_value(serde_json::json!({
            "matchLabels": {"app": "orders"},
            "matchExpressions": [
                {"key": "tier", "operator": "In", "values": ["api", "web"]},
                {"key": "canary", "operator": "DoesNotExist"},
            ]
        }))
        .expect("selector parses");
        assert!(selector.matches(&labels(&[("app", "orders"), ("tier", "api")])));
        assert!(!selector.matches(&labels(&[("app", "orders"), ("tier", "db")])));
        assert!(!selector.matches(&labels(&[("app", "orders")])));
        assert!(!selector.matches(&labels(&[
            ("app", "orders"),
            ("tier", "api"),
            ("canary", "1")
        ])));
        assert_eq!(selector.to_string(), "app=orders,tier in (api,web),!canary");
    }

    #[test]
    fn not_in_matches_absent_label() {
        let selector = LabelSelector {
            match_expressions: vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: SelectorOperator::NotIn,
                values: vec!["prod".into()],
            }],
            ..Default::default()
        };
        assert!(selector.matches(&labels(&[])));
        assert!(!selector.matches(&labels(&[("env", "prod")])));
    }

    #[test]
    fn downward_api_labels_file() {
        let parsed = parse_downward_labels("app=\"orders\"\npod-template-hash=\"5d\\\"x\"\n")
            .expect("labels parse");
        assert_eq!(parsed["app"], "orders");
        assert_eq!(parsed["pod-template-hash"], "5d\"x");
        assert!(parse_downward_labels("app=orders").is_err());
    }
}
