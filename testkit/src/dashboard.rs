//! The chart's Grafana dashboard checked against what tokengate exposes: every metric a panel
//! queries must be one a running sidecar or operator serves on `/metrics`, with the label
//! values the query matches on, so a renamed metric or label value fails a test instead of
//! leaving an empty panel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// The dashboard the chart ships.
pub fn path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/tokengate/dashboards/tokengate.json")
}

/// Which process serves a queried metric. Sidecar panels filter on the protected pods'
/// namespace (a label Prometheus adds from the PodMonitor's target); operator panels do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Component {
    Sidecar,
    Operator,
}

/// One metric selector of a panel query: `name{label="value", ...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub panel: String,
    pub name: String,
    /// Equality matchers (`label="value"`); regex matchers are dashboard variables.
    pub equal: BTreeMap<String, String>,
    pub component: Component,
}

/// Every `tokengate_*` selector of every panel of the dashboard at `path`.
pub fn selectors(path: &Path) -> Result<Vec<Selector>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))?;
    let mut found = Vec::new();
    for panel in json["panels"].as_array().into_iter().flatten() {
        let title = panel["title"].as_str().unwrap_or("?").to_owned();
        for target in panel["targets"].as_array().into_iter().flatten() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            found.extend(parse_expr(&title, expr).with_context(|| format!("panel {title}"))?);
        }
    }
    if found.is_empty() {
        bail!("{}: no tokengate metric queried", path.display());
    }
    Ok(found)
}

fn parse_expr(panel: &str, expr: &str) -> Result<Vec<Selector>> {
    let mut found = Vec::new();
    let mut rest = expr;
    while let Some(start) = rest.find("tokengate_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let name = tail[..end].to_owned();
        let mut after = &tail[end..];
        let mut equal = BTreeMap::new();
        let mut namespaced = false;
        if let Some(inner) = after.strip_prefix('{') {
            let close = inner
                .find('}')
                .with_context(|| format!("unclosed selector of {name} in {expr}"))?;
            for matcher in inner[..close].split(',').filter(|m| !m.trim().is_empty()) {
                let (label, value, regex) = if let Some((l, v)) = matcher.split_once("=~") {
                    (l, v, true)
                } else if let Some((l, v)) = matcher.split_once('=') {
                    (l, v, false)
                } else {
                    bail!("matcher {matcher:?} of {name}");
                };
                let label = label.trim();
                if label == "namespace" {
                    namespaced = true;
                } else if !regex {
                    equal.insert(label.to_owned(), value.trim().trim_matches('"').to_owned());
                }
            }
            after = &inner[close + 1..];
        }
        found.push(Selector {
            panel: panel.to_owned(),
            name,
            equal,
            component: if namespaced {
                Component::Sidecar
            } else {
                Component::Operator
            },
        });
        rest = after;
    }
    Ok(found)
}

/// The selectors of `component` that `exposition` cannot answer, each with why.
pub fn unanswered(selectors: &[Selector], component: Component, exposition: &str) -> Vec<String> {
    let mut samples: BTreeMap<String, Vec<BTreeSet<(String, String)>>> = BTreeMap::new();
    for sample in crate::metrics::samples(exposition) {
        samples.entry(sample.name).or_default().push(sample.labels);
    }
    selectors
        .iter()
        .filter(|s| s.component == component)
        .filter_map(|s| {
            let Some(series) = samples.get(&s.name) else {
                return Some(format!("{}: {} is not exposed", s.panel, s.name));
            };
            let matched = series.iter().any(|labels| {
                s.equal
                    .iter()
                    .all(|(k, v)| labels.contains(&(k.clone(), v.clone())))
            });
            (!matched).then(|| format!("{}: no {} sample has {:?}", s.panel, s.name, s.equal))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_name_their_component_and_equality_matchers() {
        let found = parse_expr(
            "p",
            r#"sum(rate(tokengate_token_cache_total{namespace=~"$namespace",result="hit"}[5m])) / sum(rate(tokengate_reconcile_total[1m]))"#,
        )
        .expect("parse");
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].name, "tokengate_token_cache_total");
        assert_eq!(found[0].component, Component::Sidecar);
        assert_eq!(
            found[0].equal.get("result").map(String::as_str),
            Some("hit")
        );
        assert_eq!(found[1].name, "tokengate_reconcile_total");
        assert_eq!(found[1].component, Component::Operator);
        assert!(found[1].equal.is_empty());
    }

    #[test]
    fn an_exposition_without_the_label_value_leaves_the_selector_unanswered() {
        let selectors =
            parse_expr("p", r#"rate(tokengate_jwks_fetch_total{result="ok"}[5m])"#).expect("parse");
        let exposition =
            "# HELP x\ntokengate_jwks_fetch_total{result=\"success\",source=\"a\"} 1\n";
        let missing = unanswered(&selectors, Component::Operator, exposition);
        assert_eq!(missing.len(), 1, "{missing:?}");
        let exposition = "tokengate_jwks_fetch_total{result=\"ok\",source=\"a\"} 1\n";
        assert!(unanswered(&selectors, Component::Operator, exposition).is_empty());
        assert_eq!(unanswered(&selectors, Component::Operator, "").len(), 1);
    }

    #[test]
    fn the_charts_dashboard_queries_only_tokengate_metrics_it_can_name() {
        let found = selectors(&path()).expect("dashboard");
        assert!(found.iter().any(|s| s.component == Component::Sidecar));
        assert!(found.iter().any(|s| s.component == Component::Operator));
    }
}
