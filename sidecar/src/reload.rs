//! Applying policy files, at start and whenever they change.
//!
//! Files are polled by content, which sees in-place edits and kubelet's atomic `..data`
//! symlink swaps alike. A new policy is compiled aside and swapped in whole; an invalid one
//! leaves the last good policy in force.

use std::hash::{DefaultHasher, Hash as _, Hasher as _};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokengate_policy::CompiledPolicy;
use tokio::sync::watch;

use crate::gate::{ActivePolicy, Gate};
use crate::load::{load_pod_labels, load_policy_files, select_policy};
use crate::metrics::Metrics;

/// The files a policy comes from.
#[derive(Clone, Debug)]
pub struct PolicyInputs {
    pub policy_files: Vec<PathBuf>,
    pub pod_labels: Option<PathBuf>,
}

impl PolicyInputs {
    /// A digest of every input's contents (read through symlinks); unreadable files count as
    /// their error, so a file appearing or vanishing is a change too.
    pub fn fingerprint(&self) -> u64 {
        let mut hasher = DefaultHasher::new();
        for path in self.policy_files.iter().chain(self.pod_labels.iter()) {
            path.hash(&mut hasher);
            match std::fs::read(path) {
                Ok(bytes) => bytes.hash(&mut hasher),
                Err(err) => err.kind().to_string().hash(&mut hasher),
            }
        }
        hasher.finish()
    }

    /// Compiles every policy and chooses the one for this pod.
    pub fn load(&self) -> anyhow::Result<(Option<CompiledPolicy>, Vec<String>)> {
        let policies = load_policy_files(&self.policy_files)?;
        let labels = self
            .pod_labels
            .as_deref()
            .map(load_pod_labels)
            .transpose()?;
        Ok(select_policy(policies, labels.as_ref()))
    }
}

/// Loads and applies the inputs, counting the attempt. On error the active policy stays.
pub fn reload(inputs: &PolicyInputs, gate: &Gate, metrics: &Metrics) -> anyhow::Result<()> {
    match inputs.load() {
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
    if !conflicts.is_empty() {
        tracing::warn!(
            applied = chosen.as_ref().map(|p| p.name.as_str()),
            ignored = ?conflicts,
            "several policies select this pod; the oldest applies"
        );
    }
    let version = gate.versions.fetch_add(1, Ordering::Relaxed) + 1;
    metrics
        .policy_generation
        .set(i64::try_from(version).unwrap_or(i64::MAX));
    match chosen {
        Some(policy) => {
            tracing::info!(policy = %policy.name, version, "policy applied");
            let sources = gate.keys.sources(&policy.verification.remote_sources);
            gate.active.store(Some(Arc::new(ActivePolicy {
                policy,
                sources,
                version,
            })));
        }
        None => {
            tracing::warn!("no policy selects this pod; every request is refused with NoPolicy");
            gate.active.store(None);
        }
    }
}

/// Polls the inputs every `interval` until shutdown, reloading on change.
pub async fn watch_inputs(
    inputs: PolicyInputs,
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut seen = inputs.fingerprint();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = shutdown.changed() => return,
        }
        let current = inputs.fingerprint();
        if current == seen {
            continue;
        }
        // Remember failed contents too: one error per change, not one per poll.
        seen = current;
        if let Err(err) = reload(&inputs, &gate, &metrics) {
            tracing::error!(
                error = format!("{err:#}"),
                "policy change refused; the last good policy stays in force"
            );
        }
    }
}
