//! Applying policy files, at start and whenever they change.
//!
//! Files are polled by content, which sees in-place edits and kubelet's atomic `..data`
//! symlink swaps alike. A new policy is compiled aside and swapped in whole; an invalid one
//! leaves the last good policy in force. Key files that policies name (`issuerSigningKeys[].file`)
//! are watched with them.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokengate_policy::{CompiledPolicy, KeyDelivery};
use tokio::sync::watch;

use crate::bundle;
use crate::gate::Gate;
use crate::load::{load_pod_labels, load_policy_files_watching, select_policy};
use crate::metrics::Metrics;

/// Where policies come from.
#[derive(Clone, Debug)]
pub enum PolicySource {
    /// `--policy` files: every policy must be valid, or none of the change applies.
    Files(Vec<PathBuf>),
    /// `--bundle DIR`: the operator's rendering; files stand alone.
    Bundle(PathBuf),
}

/// The inputs a policy comes from, and what the last load learned about them.
#[derive(Debug)]
pub struct PolicyInputs {
    pub source: PolicySource,
    pub pod_labels: Option<PathBuf>,
    /// Key files the last load read; a change to one is a change of the policy.
    key_files: Vec<PathBuf>,
    /// Bundle only: the policy in force and the file it came from, kept when that file
    /// later fails to load.
    in_force: Option<(String, CompiledPolicy)>,
    /// Bundle only: the fingerprint of the delivered keys last handed to the key cache.
    delivered: Option<u64>,
}

impl PolicyInputs {
    pub fn new(source: PolicySource, pod_labels: Option<PathBuf>) -> Self {
        Self {
            source,
            pod_labels,
            key_files: Vec::new(),
            in_force: None,
            delivered: None,
        }
    }

    /// Bundle only: hands the public keys the operator delivered to the key cache when they
    /// changed since the last call (kept keys stay where a file is bad: it is logged).
    pub fn deliver_keys(&mut self, gate: &Gate) {
        let PolicySource::Bundle(dir) = &self.source else {
            return;
        };
        let mut hasher = DefaultHasher::new();
        bundle::jwks_fingerprint(dir, &mut hasher);
        let fingerprint = hasher.finish();
        if self.delivered == Some(fingerprint) {
            return;
        }
        self.delivered = Some(fingerprint);
        let load = bundle::load_delivered(dir);
        for failure in &load.failures {
            tracing::error!(
                file = %failure.file,
                error = format!("{:#}", failure.error),
                "delivered key set skipped; its source keeps the keys it has"
            );
        }
        let sources = load.keys.len();
        let taken = gate.keys().deliver(load.keys);
        tracing::info!(sources, taken, "delivered keys read from the bundle");
    }

    /// A digest of every input's contents (read through symlinks); unreadable files count as
    /// their error, so a file appearing or vanishing is a change too.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        let hash_file = |path: &PathBuf, hasher: &mut DefaultHasher| {
            path.hash(hasher);
            match std::fs::read(path) {
                Ok(bytes) => bytes.hash(hasher),
                Err(err) => err.kind().to_string().hash(hasher),
            }
        };
        match &self.source {
            PolicySource::Files(files) => {
                for path in files {
                    hash_file(path, &mut hasher);
                }
            }
            PolicySource::Bundle(dir) => bundle::fingerprint(dir, &mut hasher),
        }
        for path in self.pod_labels.iter().chain(&self.key_files) {
            hash_file(path, &mut hasher);
        }
        hasher.finish()
    }

    /// Compiles the policies and chooses the one for this pod: the chosen policy and the
    /// names of the others that also select it.
    fn load(&mut self, metrics: &Metrics) -> anyhow::Result<(Option<CompiledPolicy>, Vec<String>)> {
        let labels = self.pod_labels.as_deref().map(load_pod_labels).transpose();
        match &self.source {
            PolicySource::Files(files) => {
                let mut key_files = Vec::new();
                let policies = load_policy_files_watching(files, &mut key_files);
                self.key_files = key_files;
                // No operator delivers keys to policy files: the sidecar fetches them itself.
                let policies = policies?
                    .into_iter()
                    .map(|mut policy| {
                        policy.verification.key_delivery = KeyDelivery::Sidecar;
                        policy
                    })
                    .collect();
                Ok(select_policy(policies, labels?.as_ref()))
            }
            PolicySource::Bundle(dir) => {
                let load = bundle::load(dir);
                self.key_files = load.key_files;
                let labels = labels?;
                let mut candidates: Vec<(String, CompiledPolicy)> = load
                    .policies
                    .into_iter()
                    .map(|p| (p.file, p.policy))
                    .collect();
                for failure in load.failures {
                    metrics.policy_reloads.with_label_values(&["error"]).inc();
                    let kept = self
                        .in_force
                        .as_ref()
                        .filter(|(file, _)| *file == failure.file);
                    tracing::error!(
                        file = %failure.file,
                        error = format!("{:#}", failure.error),
                        kept_last_good = kept.is_some(),
                        "bundle file skipped"
                    );
                    if let Some(kept) = kept {
                        candidates.push(kept.clone());
                    }
                }
                let (chosen, conflicts) = select_policy(
                    candidates.iter().map(|(_, p)| p.clone()).collect(),
                    labels.as_ref(),
                );
                self.in_force = chosen
                    .as_ref()
                    .and_then(|chosen| candidates.into_iter().find(|(_, p)| p.name == chosen.name));
                Ok((chosen, conflicts))
            }
        }
    }
}

/// Loads and applies the inputs, counting the attempt. On error the active policy stays.
pub fn reload(inputs: &mut PolicyInputs, gate: &Gate, metrics: &Metrics) -> anyhow::Result<()> {
    match inputs.load(metrics) {
        Ok((chosen, conflicts)) => {
            metrics.policy_reloads.with_label_values(&["success"]).inc();
            apply(gate, metrics, chosen, &conflicts);
            Ok(())
        }
        Err(err) => {
            metrics.policy_reloads.with_label_values(&["error"]).inc();
            Err(err)
        }
    }
}

fn apply(gate: &Gate, metrics: &Metrics, chosen: Option<CompiledPolicy>, conflicts: &[String]) {
    metrics.policy_conflicts.reset();
    if !conflicts.is_empty() {
        let applied = chosen.as_ref().map_or("", |p| p.name.as_str());
        for ignored in conflicts {
            metrics
                .policy_conflicts
                .with_label_values(&[applied, ignored.as_str()])
                .set(1);
        }
        tracing::warn!(
            applied = chosen.as_ref().map(|p| p.name.as_str()),
            ignored = ?conflicts,
            "several policies select this pod; the oldest applies"
        );
    }
    let version = match chosen {
        Some(policy) => {
            let active = gate.apply_policy(policy);
            tracing::info!(policy = %active.policy.name, version = active.version, "policy applied");
            active.version
        }
        None => {
            tracing::warn!("no policy selects this pod; every request is refused with NoPolicy");
            gate.remove_policy()
        }
    };
    metrics
        .policy_generation
        .set(i64::try_from(version).unwrap_or(i64::MAX));
}

impl PolicyInputs {
    /// [`reload`], returning the fingerprint of the inputs it read: taken before reading, so
    /// that a change made during the load is seen by the next poll.
    pub fn reload_tracked(&mut self, gate: &Gate, metrics: &Metrics) -> (u64, anyhow::Result<()>) {
        let before = self.fingerprint();
        let key_files = self.key_files.clone();
        let result = reload(self, gate, metrics);
        // A load that named other key files changes what is watched.
        let seen = if self.key_files == key_files {
            before
        } else {
            self.fingerprint()
        };
        (seen, result)
    }
}

/// Polls the inputs every `interval` until shutdown, reloading on change. `seen` is the
/// fingerprint of what was last loaded.
pub async fn watch_inputs(
    mut inputs: PolicyInputs,
    mut seen: u64,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        inputs.deliver_keys(&gate);
        if inputs.fingerprint() == seen {
            continue;
        }
        // Failed contents are remembered too: one error per change, not one per poll.
        let (fingerprint, result) = inputs.reload_tracked(&gate, &metrics);
        seen = fingerprint;
        if let Err(err) = result {
            tracing::error!(
                error = format!("{err:#}"),
                "policy change refused; the last good policy stays in force"
            );
        }
    }
}
