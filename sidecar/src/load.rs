//! Reading policy files and choosing the policy that applies to this pod.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tokengate_policy::contract;
use tokengate_policy::selector::parse_downward_labels;
use tokengate_policy::{CompiledPolicy, KeyFiles, compile, parse_documents};

/// Resolves key material for compilation and remembers every key file it was asked for, so the
/// files can be watched: `issuerSigningKeys[].file` relative to the policy file's directory,
/// and, in a bundle, `secretRef` in the mounted Secret.
pub struct WatchedKeyFiles<'a> {
    base: &'a Path,
    secrets: Option<&'a Path>,
    read: RefCell<Vec<PathBuf>>,
}

impl<'a> WatchedKeyFiles<'a> {
    /// `base`: where relative `file:` paths start; `secrets`: the directory holding the
    /// Secret's keys, when Secrets are mounted.
    pub fn new(base: &'a Path, secrets: Option<&'a Path>) -> Self {
        Self {
            base,
            secrets,
            read: RefCell::new(Vec::new()),
        }
    }

    /// Every key file asked for so far, readable or not.
    pub fn into_paths(self) -> Vec<PathBuf> {
        self.read.into_inner()
    }

    fn read_path(&self, path: PathBuf) -> std::io::Result<String> {
        let text = std::fs::read_to_string(&path);
        self.read.borrow_mut().push(path);
        text
    }
}

impl KeyFiles for WatchedKeyFiles<'_> {
    fn read(&self, path: &str) -> std::io::Result<String> {
        self.read_path(self.base.join(path))
    }

    fn read_secret(&self, name: &str, key: &str) -> Option<std::io::Result<String>> {
        let dir = self.secrets?;
        if !contract::is_valid_key_file_part(name) || !contract::is_valid_key_file_part(key) {
            return Some(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a valid Secret name and key",
            )));
        }
        Some(self.read_path(dir.join(contract::key_file_name(name, key))))
    }
}

/// Every policy in the given files, compiled. Any invalid policy fails the whole load, so a
/// half-applied configuration never takes effect.
pub fn load_policy_files(files: &[PathBuf]) -> anyhow::Result<Vec<CompiledPolicy>> {
    let mut key_files = Vec::new();
    load_policy_files_watching(files, &mut key_files)
}

/// [`load_policy_files`], adding the key files the policies name to `key_files` (also when
/// the load fails, so that fixing a key file is noticed).
pub fn load_policy_files_watching(
    files: &[PathBuf],
    key_files: &mut Vec<PathBuf>,
) -> anyhow::Result<Vec<CompiledPolicy>> {
    let mut policies = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading policy file {}", file.display()))?;
        let docs = parse_documents(&text).with_context(|| format!("{}", file.display()))?;
        let base = file.parent().unwrap_or_else(|| Path::new("."));
        for doc in &docs {
            let resolver = WatchedKeyFiles::new(base, None);
            let compiled = compile(doc, &resolver);
            key_files.extend(resolver.into_paths());
            policies.push(compiled.with_context(|| format!("{}", file.display()))?);
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
