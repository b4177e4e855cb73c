//! The key sources each policy uses, held in the shared key cache (holding them keeps their
//! background refresh alive), and a watcher that reconciles a policy when the state of its
//! sources changes, so `KeysResolved` follows the identity providers without reconciling every
//! policy on a timer. What they hold is also what the bundle delivers to sidecars.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::reflector::{ObjectRef, Store};
use tokengate_keys::{KeyCache, Source, SourceKeys};
use tokengate_policy::{KeyDelivery, RemoteKeySource, TokenPolicy};
use tokio::sync::mpsc::UnboundedSender;

use super::conditions::KeySourceState;

struct HeldSources {
    sources: Vec<Arc<Source>>,
    /// The state of those sources the policy's status last reported.
    reported: u64,
}

/// Key sources in use, per policy.
pub struct KeySources {
    cache: Arc<KeyCache>,
    held: Mutex<HashMap<ObjectRef<TokenPolicy>, HeldSources>>,
}

/// A fingerprint of what `KeysResolved` and the delivered keys depend on: which sources have
/// keys and from which fetch, and their errors. Every successful fetch changes it, so the
/// bundle carries each refresh (a sidecar goes by the delivered keys' fetch time).
fn sources_state(sources: &[Arc<Source>], max_stale: Duration) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for source in sources {
        let fetched = source.current(max_stale).map(|keys| keys.fetched_wall);
        std::hash::Hash::hash(&fetched, &mut hasher);
        std::hash::Hash::hash(&source.last_error(), &mut hasher);
    }
    std::hash::Hasher::finish(&hasher)
}

impl KeySources {
    pub fn new(cache: Arc<KeyCache>) -> Self {
        Self {
            cache,
            held: Mutex::new(HashMap::new()),
        }
    }

    /// The state of `policy`'s remote key sources, which from now on are held for it.
    pub fn observe(&self, policy: &TokenPolicy) -> Vec<KeySourceState> {
        let ids = tokengate_policy::remote_key_sources(&policy.spec);
        let sources = self.cache.sources(&ids);
        let max_stale = self.cache.settings().max_stale;
        // Recorded before the states are read: a change in between triggers one more
        // reconcile rather than going unnoticed.
        if let Ok(mut held) = self.held.lock() {
            let entry = HeldSources {
                reported: sources_state(&sources, max_stale),
                sources: sources.clone(),
            };
            held.insert(ObjectRef::from(policy), entry);
        }
        let delivered = policy.spec.key_delivery.through_bundle();
        sources
            .iter()
            .map(|source| KeySourceState {
                url: source.id.url().to_string(),
                keys: source.current(max_stale).map(|k| k.keys.len()),
                delivered,
                error: source.last_error(),
            })
            .collect()
    }

    /// The keys in hand (not older than the maximum stale age) for `sources`, among those some
    /// policy holds; a source not fetched yet is left out.
    pub fn keys_of(
        &self,
        sources: &std::collections::BTreeSet<RemoteKeySource>,
    ) -> BTreeMap<RemoteKeySource, Arc<SourceKeys>> {
        let ids: Vec<RemoteKeySource> = sources.iter().cloned().collect();
        let max_stale = self.cache.settings().max_stale;
        // The operator fetches every source itself.
        self.cache
            .existing(&ids, KeyDelivery::Sidecar)
            .into_iter()
            .filter_map(|source| Some((source.id.clone(), source.current(max_stale)?)))
            .collect()
    }

    /// Every `interval`: drops the sources of policies gone from `policies` (ending their
    /// background refresh) and asks for a reconcile of each policy whose sources changed state.
    /// Returns when `changed` is closed.
    pub async fn watch(
        &self,
        policies: Store<TokenPolicy>,
        interval: Duration,
        changed: UnboundedSender<ObjectRef<TokenPolicy>>,
    ) {
        let mut tick = tokio::time::interval(interval);
        let max_stale = self.cache.settings().max_stale;
        loop {
            tick.tick().await;
            let live: HashSet<ObjectRef<TokenPolicy>> = policies
                .state()
                .iter()
                .map(|p| ObjectRef::from(p.as_ref()))
                .collect();
            let mut stale = Vec::new();
            if let Ok(mut held) = self.held.lock() {
                held.retain(|policy, _| live.contains(policy));
                for (policy, entry) in held.iter_mut() {
                    let state = sources_state(&entry.sources, max_stale);
                    if state != entry.reported {
                        // Asked once; the reconcile records what it reports.
                        entry.reported = state;
                        stale.push(policy.clone());
                    }
                }
            }
            for policy in stale {
                if changed.send(policy).is_err() {
                    return;
                }
            }
        }
    }
}
