//! Remote key sets: one cache per process, shared by every connection.
//!
//! Each source (discovery document or JWKS URL) is fetched before the sidecar reports ready,
//! refreshed in the background, refetched when a token names an unknown `kid` (at most once
//! per cooldown), and kept up to a maximum age when a refresh fails. Sources are independent:
//! one failing URL never holds back another. A `kid` still unknown after a refetch is
//! remembered per source for the cooldown (the negative cache), so repeats of it are refused
//! at once, without waiting on or triggering fetches.
//!
//! Keys may also be delivered: the operator fetches every source once for the cluster and
//! puts what it fetched in the namespace bundle ([`crate::delivery`]); [`KeyCache::deliver`]
//! hands those keys to the sources. A source's [`KeyDelivery`] says whether it also fetches
//! itself: always (`Sidecar`), never (`Operator`), or only while the bundle has no fresh keys
//! for it and on an unknown `kid` (`OperatorWithFallback`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use tokengate_policy::keys::KeyFingerprint;
use tokengate_policy::{KeyDelivery, KeySelection, RemoteKeySource, VerificationKey};

use crate::metrics::KeyMetrics;
use crate::tls::https_connector;

/// Timings of the key cache.
#[derive(Clone, Debug)]
pub struct KeySettings {
    /// How often a healthy source is refetched (APIM refreshes hourly).
    pub refresh_interval: Duration,
    /// How soon a failed fetch is retried.
    pub retry_interval: Duration,
    /// Least time between two fetches caused by unknown `kid`s.
    pub miss_cooldown: Duration,
    /// Timeout of one fetch (discovery and JWKS together).
    pub fetch_timeout: Duration,
    /// How long keys stay in use when every refresh fails.
    pub max_stale: Duration,
    /// `User-Agent` of every fetch, naming the component (identity providers and tests tell
    /// the operator's fetches from the sidecars' by it).
    pub user_agent: String,
}

impl Default for KeySettings {
    fn default() -> Self {
        Self {
            refresh_interval: Duration::from_secs(3600),
            retry_interval: Duration::from_secs(5),
            miss_cooldown: Duration::from_secs(30),
            fetch_timeout: Duration::from_secs(10),
            max_stale: Duration::from_secs(24 * 3600),
            user_agent: user_agent("tokengate"),
        }
    }
}

/// `<component>/<version>`, the `User-Agent` of a component's fetches.
pub fn user_agent(component: &str) -> String {
    format!("{component}/{}", env!("CARGO_PKG_VERSION"))
}

/// Largest discovery or JWKS document accepted.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;

/// Most unknown `kid`s remembered per source; a flood of distinct ones clears the memory
/// rather than growing it.
const MAX_UNKNOWN_KIDS: usize = 4096;

/// The keys of one source at one moment.
#[derive(Debug)]
pub struct SourceKeys {
    pub keys: Vec<VerificationKey>,
    /// The discovery document's `issuer`, for policies that accept it.
    pub issuer: Option<String>,
    /// When they were fetched (by this process or, delivered, by the operator).
    pub fetched_at: Instant,
    /// The same moment on the wall clock, which the bundle carries between processes.
    pub fetched_wall: SystemTime,
    /// Where the key set came from: the source's URL, or a discovery document's `jwks_uri`.
    pub jwks_uri: String,
    /// The key set as fetched, keys this process cannot use included.
    pub jwks: serde_json::Value,
}

impl SourceKeys {
    /// Keys fetched now from no document, for tests and benchmarks.
    pub fn of(keys: Vec<VerificationKey>, issuer: Option<String>) -> Self {
        Self {
            keys,
            issuer,
            fetched_at: Instant::now(),
            fetched_wall: SystemTime::now(),
            jwks_uri: String::new(),
            jwks: serde_json::Value::Null,
        }
    }

    /// The usable keys of a JWKS document from `jwks_uri`, fetched at `fetched_wall`; those this
    /// process cannot use are skipped (and logged), and a set with none is an error.
    pub fn from_jwks(
        jwks: serde_json::Value,
        jwks_uri: &str,
        issuer: Option<String>,
        fetched_wall: SystemTime,
    ) -> anyhow::Result<Self> {
        let entries = jwks
            .get("keys")
            .and_then(serde_json::Value::as_array)
            .ok_or_else(|| anyhow!("{jwks_uri} is not a JWKS document (no keys array)"))?;
        let mut keys = Vec::with_capacity(entries.len());
        for entry in entries {
            match VerificationKey::from_jwk_value(entry) {
                Ok(key) => keys.push(key),
                Err(err) => {
                    let kid = entry.get("kid").and_then(serde_json::Value::as_str);
                    tracing::debug!(source = %jwks_uri, kid, error = %err, "skipping key");
                }
            }
        }
        if keys.is_empty() {
            bail!("{jwks_uri} holds no usable signing keys");
        }
        // The same moment on this process's monotonic clock; a wall time in the future (a
        // clock ahead of ours) counts as now.
        let age = SystemTime::now()
            .duration_since(fetched_wall)
            .unwrap_or_default();
        let fetched_at = Instant::now()
            .checked_sub(age)
            .ok_or_else(|| anyhow!("fetched {age:?} ago, before this machine started"))?;
        Ok(Self {
            keys,
            issuer,
            fetched_at,
            fetched_wall,
            jwks_uri: jwks_uri.to_owned(),
            jwks,
        })
    }
}

/// One remote source and its state.
pub struct Source {
    pub id: RemoteKeySource,
    /// Who fetches it; fixed for the source's life (a policy that changes it gets new sources).
    pub delivery: KeyDelivery,
    keys: ArcSwapOption<SourceKeys>,
    /// When the freshest keys delivered in the bundle were fetched, if any were.
    delivered_at: Mutex<Option<Instant>>,
    last_error: Mutex<Option<String>>,
    last_miss_fetch: Mutex<Option<Instant>>,
    /// Single flight: concurrent refetches wait for the one in progress.
    fetching: tokio::sync::Mutex<()>,
    /// `kid`s still unknown after a refetch, with when they were found so.
    unknown_kids: Mutex<HashMap<String, Instant>>,
}

impl Source {
    fn new(id: RemoteKeySource, delivery: KeyDelivery) -> Self {
        let waiting = (!delivery.sidecar_fetches()).then(|| {
            "no keys for it in the operator's bundle yet (keyDelivery: Operator)".to_owned()
        });
        Self {
            id,
            delivery,
            keys: ArcSwapOption::empty(),
            delivered_at: Mutex::new(None),
            last_error: Mutex::new(waiting),
            last_miss_fetch: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
            unknown_kids: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `kid` was found missing from this source less than `cooldown` ago.
    fn is_known_unknown(&self, kid: &str, cooldown: Duration) -> bool {
        self.unknown_kids
            .lock()
            .ok()
            .and_then(|kids| kids.get(kid).map(|at| at.elapsed() < cooldown))
            .unwrap_or(false)
    }

    fn remember_unknown(&self, kid: &str, cooldown: Duration) {
        let Ok(mut kids) = self.unknown_kids.lock() else {
            return;
        };
        if kids.len() >= MAX_UNKNOWN_KIDS {
            kids.retain(|_, at| at.elapsed() < cooldown);
            if kids.len() >= MAX_UNKNOWN_KIDS {
                kids.clear();
            }
        }
        kids.insert(kid.to_owned(), Instant::now());
    }

    /// Whether the source's current keys (however old) hold `kid`.
    fn holds_kid(&self, kid: &str) -> bool {
        self.keys
            .load()
            .as_ref()
            .is_some_and(|keys| keys.keys.iter().any(|key| key.kid.as_deref() == Some(kid)))
    }

    /// The keys, unless the last good fetch is older than `max_stale`.
    pub fn current(&self, max_stale: Duration) -> Option<Arc<SourceKeys>> {
        self.keys
            .load_full()
            .filter(|keys| keys.fetched_at.elapsed() <= max_stale)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// How much longer the keys last delivered in the bundle stay fresh (within `max_stale`);
    /// `None` when none were delivered or they are older.
    fn delivered_fresh_for(&self, max_stale: Duration) -> Option<Duration> {
        let at = (*self.delivered_at.lock().ok()?)?;
        max_stale
            .checked_sub(at.elapsed())
            .filter(|left| !left.is_zero())
    }

    /// Takes keys delivered in the bundle, unless the keys held were fetched later (a
    /// sidecar's own refetch for an unknown `kid` can be newer than the operator's last fetch).
    /// Returns whether they replaced the keys held.
    fn offer(&self, delivered: &Arc<SourceKeys>) -> bool {
        if let Ok(mut at) = self.delivered_at.lock() {
            *at = Some(at.map_or(delivered.fetched_at, |at| at.max(delivered.fetched_at)));
        }
        let newer = self
            .keys
            .load()
            .as_ref()
            .is_none_or(|held| held.fetched_wall <= delivered.fetched_wall);
        if newer {
            self.keys.store(Some(Arc::clone(delivered)));
            if let Ok(mut err) = self.last_error.lock() {
                *err = None;
            }
        }
        newer
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

pub struct KeyCache {
    sources: Mutex<HashMap<(RemoteKeySource, KeyDelivery), Weak<Source>>>,
    /// The keys the bundle delivered last, per source.
    delivered: Mutex<HashMap<RemoteKeySource, Arc<SourceKeys>>>,
    client: HttpsClient,
    settings: KeySettings,
    metrics: Arc<KeyMetrics>,
    /// Counts completed fetches, so that callers can wait for keys to arrive.
    fetches: tokio::sync::watch::Sender<u64>,
}

impl KeyCache {
    /// `extra_ca`: a PEM bundle trusted besides the system roots, for private identity
    /// providers.
    pub fn new(
        settings: KeySettings,
        metrics: Arc<KeyMetrics>,
        extra_ca: Option<&std::path::Path>,
    ) -> anyhow::Result<Arc<Self>> {
        let client = Client::builder(TokioExecutor::new()).build(https_connector(extra_ca)?);
        Ok(Arc::new(Self {
            sources: Mutex::new(HashMap::new()),
            delivered: Mutex::new(HashMap::new()),
            client,
            settings,
            metrics,
            fetches: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// Changes whenever a fetch completes, successfully or not.
    pub fn fetch_events(&self) -> tokio::sync::watch::Receiver<u64> {
        self.fetches.subscribe()
    }

    pub fn settings(&self) -> &KeySettings {
        &self.settings
    }

    /// The shared state of each source, fetched by this process (`Sidecar` delivery).
    pub fn sources(self: &Arc<Self>, ids: &[RemoteKeySource]) -> Vec<Arc<Source>> {
        self.sources_for(ids, KeyDelivery::Sidecar)
    }

    /// The shared state of each source under `delivery`, starting a refresher for sources seen
    /// for the first time (none for `Operator`, whose keys only the bundle brings). A new
    /// source starts with the keys the bundle delivered for it, if any. A source lives as long
    /// as some policy holds it.
    pub fn sources_for(
        self: &Arc<Self>,
        ids: &[RemoteKeySource],
        delivery: KeyDelivery,
    ) -> Vec<Arc<Source>> {
        let Ok(mut map) = self.sources.lock() else {
            return Vec::new();
        };
        map.retain(|_, weak| weak.strong_count() > 0);
        ids.iter()
            .map(|id| {
                let key = (id.clone(), delivery);
                if let Some(existing) = map.get(&key).and_then(Weak::upgrade) {
                    return existing;
                }
                let source = Arc::new(Source::new(id.clone(), delivery));
                // Every series of the source exists from the start, at 0: a sidecar whose keys
                // all come from the bundle shows that it made no fetch, not nothing.
                let label = id.url();
                for result in ["success", "error"] {
                    self.metrics.jwks_fetch.with_label_values(&[label, result]);
                }
                if delivery.through_bundle() {
                    self.metrics.delivered.with_label_values(&[label]);
                }
                if delivery.through_bundle()
                    && let Some(delivered) = self.delivered_keys(id)
                {
                    self.take_delivered(&source, &delivered);
                }
                map.insert(key, Arc::downgrade(&source));
                if delivery.sidecar_fetches() {
                    tokio::spawn(Arc::clone(self).refresh_loop(Arc::downgrade(&source)));
                }
                source
            })
            .collect()
    }

    /// The sources of `ids` this process already holds for `delivery`, without creating any
    /// (so without starting fetches).
    pub fn existing(&self, ids: &[RemoteKeySource], delivery: KeyDelivery) -> Vec<Arc<Source>> {
        let Ok(map) = self.sources.lock() else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| map.get(&(id.clone(), delivery)).and_then(Weak::upgrade))
            .collect()
    }

    fn delivered_keys(&self, id: &RemoteKeySource) -> Option<Arc<SourceKeys>> {
        self.delivered.lock().ok()?.get(id).cloned()
    }

    /// Takes the keys of a new bundle: from now on they are what each source delivered through
    /// the bundle starts with, and every such source held now gets them (unless it holds newer
    /// ones). Sources absent from `delivered` keep their keys, up to the maximum stale age.
    /// Returns how many sources took new keys.
    pub fn deliver(&self, delivered: HashMap<RemoteKeySource, Arc<SourceKeys>>) -> usize {
        let live: Vec<Arc<Source>> = match self.sources.lock() {
            Ok(map) => map
                .iter()
                .filter(|((_, delivery), _)| delivery.through_bundle())
                .filter_map(|(_, weak)| weak.upgrade())
                .collect(),
            Err(_) => return 0,
        };
        let taken = live
            .iter()
            .filter(|source| {
                delivered
                    .get(&source.id)
                    .is_some_and(|keys| self.take_delivered(source, keys))
            })
            .count();
        if let Ok(mut held) = self.delivered.lock() {
            *held = delivered;
        }
        if taken > 0 {
            // Wakes whoever waits for keys, as a fetch does.
            self.fetches
                .send_modify(|count| *count = count.wrapping_add(1));
        }
        taken
    }

    fn take_delivered(&self, source: &Source, keys: &Arc<SourceKeys>) -> bool {
        if !source.offer(keys) {
            return false;
        }
        let label = source.id.url();
        self.metrics.delivered.with_label_values(&[label]).inc();
        self.record_keys(label, keys);
        tracing::debug!(source = %source.id, keys = keys.keys.len(), "took keys from the bundle");
        true
    }

    fn record_keys(&self, label: &str, keys: &SourceKeys) {
        self.metrics
            .keys
            .with_label_values(&[label])
            .set(i64::try_from(keys.keys.len()).unwrap_or(i64::MAX));
        if let Ok(at) = keys.fetched_wall.duration_since(UNIX_EPOCH) {
            self.metrics
                .fetched
                .with_label_values(&[label])
                .set(at.as_secs_f64());
        }
    }

    async fn refresh_loop(self: Arc<Self>, source: Weak<Source>) {
        loop {
            let Some(strong) = source.upgrade() else {
                return;
            };
            let delivered = (strong.delivery == KeyDelivery::OperatorWithFallback)
                .then(|| strong.delivered_fresh_for(self.settings.max_stale))
                .flatten();
            let wait = match delivered {
                // The bundle keeps the source fresh: looked at again when its keys would
                // be too old, or after the refresh interval, whichever comes first.
                Some(fresh_for) => fresh_for.min(self.settings.refresh_interval),
                None if self.fetch(&strong).await => self.settings.refresh_interval,
                None => self.settings.retry_interval,
            };
            drop(strong);
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether every source found `kid` missing within the cooldown: the token can be refused
    /// without a fetch.
    pub fn is_known_unknown(&self, sources: &[Arc<Source>], kid: &str) -> bool {
        let cooldown = self.settings.miss_cooldown;
        !sources.is_empty()
            && sources
                .iter()
                .all(|source| source.is_known_unknown(kid, cooldown))
    }

    /// Refetches sources after a token named a `kid` none of them holds, at most once per
    /// cooldown per source, so a flood of made-up `kid`s cannot amplify into fetches. Sources
    /// that found this `kid` missing within the cooldown are not asked again; a source that
    /// still lacks it afterwards remembers that.
    pub async fn refetch_for_unknown_kid(
        &self,
        sources: &[Arc<Source>],
        kid: Option<&str>,
    ) -> bool {
        let cooldown = self.settings.miss_cooldown;
        let mut refreshed = false;
        for source in sources {
            if !source.delivery.sidecar_fetches()
                || kid.is_some_and(|kid| source.is_known_unknown(kid, cooldown))
            {
                continue;
            }
            let due = {
                let Ok(mut last) = source.last_miss_fetch.lock() else {
                    continue;
                };
                let due = last.is_none_or(|t| t.elapsed() >= self.settings.miss_cooldown);
                if due {
                    *last = Some(Instant::now());
                }
                due
            };
            if due {
                refreshed |= self.fetch(source).await;
            }
            // Remembered only once a refetch has answered: while one is in flight, the kid
            // may be about to arrive.
            if let Some(kid) = kid
                && !source.holds_kid(kid)
                && source.fetching.try_lock().is_ok()
            {
                source.remember_unknown(kid, cooldown);
            }
        }
        refreshed
    }

    /// Fetches every source now, for one-shot use such as `check`.
    pub async fn fetch_all(&self, sources: &[Arc<Source>]) {
        for source in sources {
            self.fetch(source).await;
        }
    }

    /// Fetches one source now; `true` when it yielded keys.
    async fn fetch(&self, source: &Source) -> bool {
        let _single_flight = source.fetching.lock().await;
        let label = source.id.url();
        let result = tokio::time::timeout(self.settings.fetch_timeout, self.fetch_keys(&source.id))
            .await
            .unwrap_or_else(|_| Err(anyhow!("timed out after {:?}", self.settings.fetch_timeout)));
        let _notify = NotifyOnDrop(&self.fetches);
        match result {
            Ok(keys) => {
                self.metrics
                    .jwks_fetch
                    .with_label_values(&[label, "success"])
                    .inc();
                self.record_keys(label, &keys);
                tracing::debug!(source = %source.id, keys = keys.keys.len(), "fetched keys");
                source.keys.store(Some(Arc::new(keys)));
                if let Ok(mut err) = source.last_error.lock() {
                    *err = None;
                }
                true
            }
            Err(err) => {
                self.metrics
                    .jwks_fetch
                    .with_label_values(&[label, "error"])
                    .inc();
                let message = format!("{err:#}");
                tracing::warn!(source = %source.id, error = %message, "fetching keys failed");
                if let Ok(mut last) = source.last_error.lock() {
                    *last = Some(message);
                }
                false
            }
        }
    }

    async fn fetch_keys(&self, id: &RemoteKeySource) -> anyhow::Result<SourceKeys> {
        let (jwks_uri, issuer) = match id {
            RemoteKeySource::Jwks(url) => (url.clone(), None),
            RemoteKeySource::Discovery(url) => {
                let doc = self.get_json(url).await.context("discovery document")?;
                let jwks_uri = doc
                    .get("jwks_uri")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| anyhow!("discovery document {url} has no jwks_uri"))?;
                let parsed = url::Url::parse(jwks_uri)
                    .with_context(|| format!("jwks_uri {jwks_uri:?} is not a URL"))?;
                if !matches!(parsed.scheme(), "https" | "http") {
                    bail!("jwks_uri {jwks_uri:?} is not http or https");
                }
                let issuer = doc
                    .get("issuer")
                    .and_then(serde_json::Value::as_str)
                    .map(str::to_owned);
                (jwks_uri.to_owned(), issuer)
            }
        };
        let jwks = self.get_json(&jwks_uri).await.context("key set")?;
        SourceKeys::from_jwks(jwks, &jwks_uri, issuer, SystemTime::now())
    }

    async fn get_json(&self, url: &str) -> anyhow::Result<serde_json::Value> {
        let uri: http::Uri = url
            .parse()
            .with_context(|| format!("{url:?} is not a URI"))?;
        let request = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, &self.settings.user_agent)
            .body(Empty::new())
            .context("building request")?;
        let response = self
            .client
            .request(request)
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        if !status.is_success() {
            bail!("GET {url}: HTTP {status}");
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|err| anyhow!("GET {url}: reading body: {err}"))?
            .to_bytes();
        serde_json::from_slice(&body).with_context(|| format!("GET {url}: not JSON"))
    }
}

/// Announces a completed fetch once the new keys are stored.
struct NotifyOnDrop<'a>(&'a tokio::sync::watch::Sender<u64>);

impl Drop for NotifyOnDrop<'_> {
    fn drop(&mut self) {
        self.0.send_modify(|count| *count = count.wrapping_add(1));
    }
}

/// The keys one policy can use right now: its own plus its sources'.
pub struct KeyView<'a> {
    pub static_keys: &'a [VerificationKey],
    pub remote: Vec<Arc<SourceKeys>>,
}

/// Most signature checks one token can cause. Each is a public-key operation that a client
/// without any credential can make the sidecar run, so a forged token must not cost one per key.
pub const MAX_KEYS_TRIED: usize = 4;

/// The keys a token's signature is checked against.
#[derive(Debug)]
pub enum KeyChoice<'a> {
    /// These keys, in key-set order: distinct, at most [`MAX_KEYS_TRIED`]. `fitting` counts the
    /// keys that could have been tried.
    Try {
        keys: Vec<&'a VerificationKey>,
        fitting: usize,
    },
    /// No key fits the token's `kid` and algorithm.
    NotFound,
    /// The token's `kid` names no key and several fit its algorithm, while the policy only
    /// checks the key a token chooses ([`KeySelection::ByKid`]).
    KidRequired { fitting: usize },
}

impl KeyView<'_> {
    /// The keys that may verify a token with this `kid` and algorithm: with a `kid`, the keys of
    /// that id, or failing those the keys given without an id; without a `kid`, the keys that
    /// fit the algorithm. When the token's `kid` names no key and several fit, `selection`
    /// decides: [`KeySelection::ByKid`] refuses to guess, [`KeySelection::TryAll`] tries the
    /// first [`MAX_KEYS_TRIED`].
    pub fn select(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        selection: KeySelection,
    ) -> KeyChoice<'_> {
        let fitting = || self.all().filter(move |key| key.fits(alg));
        if let Some(kid) = kid {
            let named = || fitting().filter(move |key| key.kid.as_deref() == Some(kid));
            let keys = first_distinct(named(), MAX_KEYS_TRIED);
            if !keys.is_empty() {
                let fitting = named().count();
                return KeyChoice::Try { keys, fitting };
            }
        }
        // The token names no key we hold: a key given without an id may still be the one.
        let unnamed = || fitting().filter(move |key| kid.is_none() || key.kid.is_none());
        let most = match selection {
            KeySelection::ByKid => 2,
            KeySelection::TryAll => MAX_KEYS_TRIED,
        };
        let keys = first_distinct(unnamed(), most);
        match (keys.len(), selection) {
            (0, _) => KeyChoice::NotFound,
            (1, _) | (_, KeySelection::TryAll) => KeyChoice::Try {
                keys,
                fitting: unnamed().count(),
            },
            (_, KeySelection::ByKid) => KeyChoice::KidRequired {
                fitting: unnamed().count(),
            },
        }
    }

    /// Whether the key with this fingerprint is still one [`select`](Self::select) would try.
    pub fn still_selects(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        selection: KeySelection,
        fingerprint: &KeyFingerprint,
    ) -> bool {
        match self.select(kid, alg, selection) {
            KeyChoice::Try { keys, .. } => keys.iter().any(|key| key.fingerprint() == fingerprint),
            KeyChoice::NotFound | KeyChoice::KidRequired { .. } => false,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.all().next().is_none()
    }

    fn all(&self) -> impl Iterator<Item = &VerificationKey> {
        self.static_keys
            .iter()
            .chain(self.remote.iter().flat_map(|source| source.keys.iter()))
    }

    pub fn discovery_issuers(&self) -> impl Iterator<Item = &str> {
        self.remote
            .iter()
            .filter_map(|source| source.issuer.as_deref())
    }
}

/// Up to `most` keys, skipping repeats of the same key material (one key published by two
/// sources is one key).
fn first_distinct<'a>(
    keys: impl Iterator<Item = &'a VerificationKey>,
    most: usize,
) -> Vec<&'a VerificationKey> {
    let mut out: Vec<&VerificationKey> = Vec::new();
    for key in keys {
        if out.len() == most {
            break;
        }
        if !out
            .iter()
            .any(|seen| seen.fingerprint() == key.fingerprint())
        {
            out.push(key);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    /// An HMAC key: key material made in-process, no key generation needed to select keys.
    fn key(kid: Option<&str>, byte: u8) -> VerificationKey {
        let secret = base64::engine::general_purpose::STANDARD.encode([byte; 32]);
        VerificationKey::from_symmetric_base64(kid.map(str::to_owned), &secret).expect("key")
    }

    fn tried(choice: &KeyChoice<'_>) -> Vec<Option<String>> {
        match choice {
            KeyChoice::Try { keys, .. } => keys.iter().map(|key| key.kid.clone()).collect(),
            other => panic!("expected keys to try, got {other:?}"),
        }
    }

    fn view(keys: &[VerificationKey]) -> KeyView<'_> {
        KeyView {
            static_keys: keys,
            remote: Vec::new(),
        }
    }

    #[test]
    fn a_kid_picks_its_keys_and_nothing_else() {
        let keys = [key(Some("a"), 1), key(Some("b"), 2), key(None, 3)];
        let view = view(&keys);
        for selection in [KeySelection::ByKid, KeySelection::TryAll] {
            let choice = view.select(Some("b"), Algorithm::HS256, selection);
            assert_eq!(tried(&choice), [Some("b".to_owned())]);
            // A kid no key has falls back on the one key without an id.
            let choice = view.select(Some("zzz"), Algorithm::HS256, selection);
            assert_eq!(tried(&choice), [None]);
            // No key fits the algorithm.
            assert!(matches!(
                view.select(Some("a"), Algorithm::RS256, selection),
                KeyChoice::NotFound
            ));
        }
    }

    #[test]
    fn without_a_kid_one_fitting_key_is_tried_several_are_refused_unless_try_all() {
        let one = [key(Some("a"), 1)];
        assert_eq!(
            tried(&view(&one).select(None, Algorithm::HS256, KeySelection::ByKid)),
            [Some("a".to_owned())]
        );
        let eight: Vec<VerificationKey> = (0..8u8)
            .map(|i| key(Some(&format!("k{i}")), i + 1))
            .collect();
        let view = view(&eight);
        assert!(matches!(
            view.select(None, Algorithm::HS256, KeySelection::ByKid),
            KeyChoice::KidRequired { fitting: 8 }
        ));
        match view.select(None, Algorithm::HS256, KeySelection::TryAll) {
            KeyChoice::Try { keys, fitting } => {
                assert_eq!(keys.len(), MAX_KEYS_TRIED);
                assert_eq!(fitting, 8);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unnamed_keys_answer_unknown_kids_within_the_same_bound() {
        let keys: Vec<VerificationKey> = (0..6u8).map(|i| key(None, i + 1)).collect();
        let view = view(&keys);
        assert!(matches!(
            view.select(Some("made-up"), Algorithm::HS256, KeySelection::ByKid),
            KeyChoice::KidRequired { fitting: 6 }
        ));
        assert_eq!(
            tried(&view.select(Some("made-up"), Algorithm::HS256, KeySelection::TryAll)).len(),
            MAX_KEYS_TRIED
        );
    }

    #[test]
    fn the_same_key_twice_is_one_key() {
        let source = Arc::new(SourceKeys::of(vec![key(Some("a"), 1)], None));
        let keys = [key(Some("a"), 1)];
        let view = KeyView {
            static_keys: &keys,
            remote: vec![Arc::clone(&source), source],
        };
        assert_eq!(
            tried(&view.select(None, Algorithm::HS256, KeySelection::ByKid)),
            [Some("a".to_owned())]
        );
        assert_eq!(
            tried(&view.select(Some("a"), Algorithm::HS256, KeySelection::ByKid)).len(),
            1
        );
    }

    #[test]
    fn still_selects_follows_the_key_set() {
        let keys = [key(Some("a"), 1), key(Some("b"), 2)];
        let fingerprint = *keys[0].fingerprint();
        let both = view(&keys);
        assert!(both.still_selects(
            Some("a"),
            Algorithm::HS256,
            KeySelection::ByKid,
            &fingerprint
        ));
        assert!(!both.still_selects(
            Some("b"),
            Algorithm::HS256,
            KeySelection::ByKid,
            &fingerprint
        ));
        let rotated = [key(Some("a"), 9)];
        assert!(!view(&rotated).still_selects(
            Some("a"),
            Algorithm::HS256,
            KeySelection::ByKid,
            &fingerprint
        ));
    }
}
