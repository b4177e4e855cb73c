//! Reading policy files and choosing the policy that applies to this pod.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokengate_policy::selector::parse_downward_labels;
use tokengate_policy::{CompiledPolicy, KeyFiles, compile, parse_documents};

/// Key files named in a policy resolve against the policy file's directory.
struct RelativeKeyFiles<'a> {
    base: &'a Path,
}

impl KeyFiles for RelativeKeyFiles<'_> {
    fn read(&self, path: &str) -> std::io::Result<String> {
        std::fs::read_to_string(self.base.join(path))
    }
}

/// Every policy in the given files, compiled. Any invalid policy fails the whole load, so a
/// half-applied configuration never takes effect.
pub fn load_policy_files(files: &[PathBuf]) -> anyhow::Result<Vec<CompiledPolicy>> {
    let mut policies = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading policy file {}", file.display()))?;
        let docs = parse_documents(&text).with_context(|| format!("{}", file.display()))?;
        let base = file.parent().unwrap_or_else(|| Path::new("."));
        for doc in &docs {
            let policy = compile(doc, &RelativeKeyFiles { base })
                .with_context(|| format!("{}", file.display()))?;
            policies.push(policy);
        }
    }
    Ok(policies)
}

pub fn load_pod_labels(file: &Path) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("reading pod labels {}", file.display()))?;
    parse_downward_labels(&text)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("pod labels {}", file.display()))
}

/// Which policy applies. With pod labels, the policies whose selector matches; without
/// (standalone), every policy is a candidate. Among several candidates the oldest wins, by
/// creation time and then name, as in a cluster; the others are returned as conflicts.
pub fn select_policy(
    policies: Vec<CompiledPolicy>,
    labels: Option<&BTreeMap<String, String>>,
) -> (Option<CompiledPolicy>, Vec<String>) {
    let mut candidates: Vec<CompiledPolicy> = policies
        .into_iter()
        .filter(|p| labels.is_none_or(|labels| p.selector.matches(labels)))
        .collect();
    candidates.sort_by(|a, b| {
        // Policies without a creation time (hand-written files) sort after stamped ones.
        let key = |p: &CompiledPolicy| {
            (
                p.creation_timestamp.is_none(),
                p.creation_timestamp.clone(),
                p.name.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    let mut iter = candidates.into_iter();
    let chosen = iter.next();
    let conflicts = iter.map(|p| p.name).collect();
    (chosen, conflicts)
}
