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
    /// Whether the bundle delivers them (`keyDelivery` not `Sidecar`).
    delivered: bool,
    /// The fetches of those sources the bundle last carried.
    fetched: u64,
}

/// Key sources in use, per policy.
pub struct KeySources {
    cache: Arc<KeyCache>,
    held: Mutex<HashMap<ObjectRef<TokenPolicy>, HeldSources>>,
}

/// A fingerprint of what `KeysResolved` depends on: which sources have keys, and their errors.
fn sources_state(sources: &[Arc<Source>], max_stale: Duration) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for source in sources {
        std::hash::Hash::hash(&source.current(max_stale).is_some(), &mut hasher);
        std::hash::Hash::hash(&source.last_error(), &mut hasher);
    }
    std::hash::Hasher::finish(&hasher)
}

/// A fingerprint of what the delivered keys depend on: the fetch each source's keys came
/// from. Every successful fetch changes it, so the bundle carries each refresh (a sidecar
/// judges staleness by the delivered keys' fetch time).
fn fetches_state(sources: &[Arc<Source>], max_stale: Duration) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for source in sources {
        let fetched = source.current(max_stale).map(|keys| keys.fetched_wall);
        std::hash::Hash::hash(&fetched, &mut hasher);
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
                delivered: policy.spec.key_delivery.through_bundle(),
                fetched: fetches_state(&sources, max_stale),
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

    /// After every fetch, and every `interval`: drops the sources of policies gone from
    /// `policies` (ending their background refresh) and asks for a reconcile of each policy
    /// whose sources changed state, and of one policy per namespace whose delivered keys were
    /// fetched again (the bundle is the namespace's: one reconcile renders it for all).
    /// Returns when `changed` is closed.
    pub async fn watch(
        &self,
        policies: Store<TokenPolicy>,
        interval: Duration,
        changed: UnboundedSender<ObjectRef<TokenPolicy>>,
    ) {
        let mut tick = tokio::time::interval(interval);
        // A completed fetch is looked at at once (a rotated key set goes out without waiting
        // for the tick); the tick catches keys going stale and prunes.
        let mut fetches = self.cache.fetch_events();
        let max_stale = self.cache.settings().max_stale;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                changed = fetches.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            let live: HashSet<ObjectRef<TokenPolicy>> = policies
                .state()
                .iter()
                .map(|p| ObjectRef::from(p.as_ref()))
                .collect();
            let mut stale = Vec::new();
            let mut refetched = HashSet::new();
            if let Ok(mut held) = self.held.lock() {
                held.retain(|policy, _| live.contains(policy));
                for (policy, entry) in held.iter_mut() {
                    let state = sources_state(&entry.sources, max_stale);
                    let fetched = fetches_state(&entry.sources, max_stale);
                    let refetch = entry.delivered && fetched != entry.fetched;
                    // Asked once; the reconcile records what it reports.
                    entry.fetched = fetched;
                    if state != entry.reported {
                        entry.reported = state;
                        stale.push(policy.clone());
                        refetched.insert(policy.namespace.clone());
                    } else if refetch && refetched.insert(policy.namespace.clone()) {
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
