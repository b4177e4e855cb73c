//! The namespace bundle the operator renders, as kubelet mounts it in the pod:
//!
//! ```text
//! DIR/policies/   ConfigMap tokengate-policies: <policy-name>.yaml, one TokenPolicy each
//! DIR/keys/       Secret tokengate-keys (optional): <secret>.<key>, base64 symmetric keys
//! DIR/jwks/       ConfigMap tokengate-jwks (optional): the public keys the operator fetched,
//!                 one document per key source (`tokengate_keys::delivery`)
//! ```
//!
//! Both use kubelet's atomic-update layout: visible entries are symlinks `name -> ..data/name`,
//! `..data` points at a timestamped directory, and an update renames a new `..data` over the
//! old. Entries starting with `..` are kubelet's own and never read as content.
//!
//! Each file stands alone: one that fails to parse or compile is reported and skipped, and the
//! others still apply.

use std::collections::HashMap;
use std::hash::{Hash as _, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use tokengate_keys::SourceKeys;
use tokengate_policy::{CompiledPolicy, RemoteKeySource, compile, parse_documents};

use crate::load::WatchedKeyFiles;

pub use tokengate_policy::contract::{
    BUNDLE_JWKS_DIR as JWKS_DIR, BUNDLE_KEYS_DIR as KEYS_DIR, BUNDLE_POLICIES_DIR as POLICIES_DIR,
};

/// A policy read from the bundle, with the file it came from.
#[derive(Clone, Debug)]
pub struct BundlePolicy {
    pub file: String,
    pub policy: CompiledPolicy,
}

/// A bundle file that could not be used.
#[derive(Debug)]
pub struct BundleFailure {
    pub file: String,
    pub error: anyhow::Error,
}

/// Everything read from the bundle in one pass.
#[derive(Debug, Default)]
pub struct BundleLoad {
    pub policies: Vec<BundlePolicy>,
    pub failures: Vec<BundleFailure>,
    /// Key files read while compiling (`file:` keys outside the bundle), to be watched.
    pub key_files: Vec<PathBuf>,
}

/// The visible entries of a kubelet-projected directory, by name. A missing directory has
/// none: the bundle (or its optional Secret) may not be mounted yet.
pub fn entries(dir: &Path) -> std::io::Result<Vec<(String, PathBuf)>> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    let mut entries = Vec::new();
    for entry in read {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if name.starts_with("..") {
            continue;
        }
        entries.push((name, entry.path()));
    }
    entries.sort();
    Ok(entries)
}

/// Feeds the names and contents (through symlinks) of the policies and keys directories to
/// `hasher`, so that any edit, swap, addition or removal changes the digest. (The delivered
/// public keys are followed apart: [`jwks_fingerprint`].)
pub fn fingerprint(dir: &Path, hasher: &mut impl Hasher) {
    fingerprint_dirs(dir, &[POLICIES_DIR, KEYS_DIR], hasher);
}

/// [`fingerprint`] of the delivered public keys' directory.
pub fn jwks_fingerprint(dir: &Path, hasher: &mut impl Hasher) {
    fingerprint_dirs(dir, &[JWKS_DIR], hasher);
}

fn fingerprint_dirs(dir: &Path, subs: &[&str], hasher: &mut impl Hasher) {
    for sub in subs {
        let path = dir.join(sub);
        sub.hash(hasher);
        match entries(&path) {
            Ok(entries) => {
                for (name, path) in entries {
                    name.hash(hasher);
                    match std::fs::read(&path) {
                        Ok(bytes) => bytes.hash(hasher),
                        Err(err) => err.kind().to_string().hash(hasher),
                    }
                }
            }
            Err(err) => err.kind().to_string().hash(hasher),
        }
    }
}

/// The public keys the operator delivered, read from the bundle in one pass.
#[derive(Debug, Default)]
pub struct DeliveredLoad {
    pub keys: HashMap<RemoteKeySource, Arc<SourceKeys>>,
    pub failures: Vec<BundleFailure>,
}

/// Reads every delivered key set of the bundle at `dir`. Each file stands alone: one that is
/// not a usable key set is reported, and its source keeps the keys it has.
pub fn load_delivered(dir: &Path) -> DeliveredLoad {
    let mut load = DeliveredLoad::default();
    let jwks_dir = dir.join(JWKS_DIR);
    let files = match entries(&jwks_dir) {
        Ok(files) => files,
        Err(err) => {
            load.failures.push(BundleFailure {
                file: JWKS_DIR.to_owned(),
                error: anyhow::Error::new(err).context(format!("listing {}", jwks_dir.display())),
            });
            return load;
        }
    };
    for (file, path) in files {
        let parsed = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))
            .and_then(|text| tokengate_keys::delivery::parse(&text));
        match parsed {
            Ok((source, keys)) => {
                load.keys.insert(source, Arc::new(keys));
            }
            Err(error) => load.failures.push(BundleFailure { file, error }),
        }
    }
    load
}

/// Reads and compiles every policy of the bundle at `dir`.
pub fn load(dir: &Path) -> BundleLoad {
    let mut load = BundleLoad::default();
    let policies_dir = dir.join(POLICIES_DIR);
    let keys_dir = dir.join(KEYS_DIR);
    let files = match entries(&policies_dir) {
        Ok(files) => files,
        Err(err) => {
            load.failures.push(BundleFailure {
                file: POLICIES_DIR.to_owned(),
                error: anyhow::Error::new(err)
                    .context(format!("listing {}", policies_dir.display())),
            });
            return load;
        }
    };
    for (file, path) in files {
        let resolver = WatchedKeyFiles::new(&policies_dir, Some(&keys_dir));
        let result = compile_file(&path, &resolver);
        load.key_files.extend(
            resolver
                .into_paths()
                .into_iter()
                // The keys directory is watched whole.
                .filter(|p| !p.starts_with(&keys_dir)),
        );
        match result {
            Ok(policies) => load
                .policies
                .extend(policies.into_iter().map(|policy| BundlePolicy {
                    file: file.clone(),
                    policy,
                })),
            Err(error) => load.failures.push(BundleFailure { file, error }),
        }
    }
    load
}

fn compile_file(
    path: &Path,
    resolver: &WatchedKeyFiles<'_>,
) -> anyhow::Result<Vec<CompiledPolicy>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading bundle file {}", path.display()))?;
    let docs = parse_documents(&text).with_context(|| format!("bundle file {}", path.display()))?;
    docs.iter()
        .map(|doc| {
            compile(doc, resolver).with_context(|| format!("bundle file {}", path.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(name: &str, key: &str) -> String {
        format!(
            "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: {name}}}\nspec:\n  selector: {{matchLabels: {{app: a}}}}\n  validateJwt:\n    issuerSigningKeys: [{{id: h, secretRef: {{name: hmac, key: {key}}}}}]\n"
        )
    }

    #[test]
    fn secret_refs_resolve_in_the_keys_directory_and_name_the_secret_when_missing() {
        let dir = tempfile::tempdir().expect("dir");
        let root = dir.path();
        std::fs::create_dir_all(root.join(POLICIES_DIR)).expect("policies");
        std::fs::create_dir_all(root.join(KEYS_DIR)).expect("keys");
        std::fs::write(
            root.join(KEYS_DIR).join("hmac.key"),
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
        )
        .expect("key");
        std::fs::write(
            root.join(POLICIES_DIR).join("good.yaml"),
            policy("good", "key"),
        )
        .expect("good");
        std::fs::write(
            root.join(POLICIES_DIR).join("bad.yaml"),
            policy("bad", "other"),
        )
        .expect("bad");
        std::fs::write(root.join(POLICIES_DIR).join("..hidden"), "not read").expect("hidden");

        let load = load(root);
        assert_eq!(load.policies.len(), 1);
        assert_eq!(load.policies[0].file, "good.yaml");
        let keys = &load.policies[0].policy.verification.static_keys;
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("h"));
        assert_eq!(load.failures.len(), 1);
        let message = format!("{:#}", load.failures[0].error);
        assert!(
            message.contains("cannot read key \"other\" of Secret \"hmac\""),
            "{message}"
        );
        assert!(load.key_files.is_empty(), "{:?}", load.key_files);
    }

    #[test]
    fn secret_names_cannot_leave_the_keys_directory() {
        let dir = tempfile::tempdir().expect("dir");
        let resolver = WatchedKeyFiles::new(dir.path(), Some(dir.path()));
        for (name, key) in [
            ("../etc", "passwd"),
            ("a/b", "k"),
            ("..data", "k"),
            ("s", ""),
        ] {
            let result = tokengate_policy::KeyFiles::read_secret(&resolver, name, key);
            assert!(
                matches!(result, Some(Err(ref e)) if e.kind() == std::io::ErrorKind::InvalidInput),
                "{name}.{key}: {result:?}"
            );
        }
    }

    #[test]
    fn a_missing_bundle_has_no_policies_and_no_failures() {
        let dir = tempfile::tempdir().expect("dir");
        let load = load(&dir.path().join("absent"));
        assert!(load.policies.is_empty());
        assert!(load.failures.is_empty());
    }
}
