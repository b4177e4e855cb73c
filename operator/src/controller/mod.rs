//! The reconciler: one TokenPolicy at a time, but the bundle is rendered from every policy of
//! the namespace, so any policy's reconcile leaves the whole namespace consistent.
//!
//! It reads reflector stores ([`index`]), never LISTs; each watch event reconciles only the
//! policies it affects ([`triggers`]); status comes from a pure function of the namespace's
//! facts and a clock ([`conditions`]) and is written by server-side apply. What it wrote last
//! is remembered, so a reconcile that changes nothing sends no request. Nothing here fails the
//! loop on bad input: a bad policy gets a condition that says what to fix, and the others still
//! render.

pub mod conditions;
pub mod index;
pub mod keys;
pub mod triggers;

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash as _, Hasher as _};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{FutureExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource as _, ResourceExt as _};
use serde_json::{Value, json};
use tokengate_keys::KeyCache;
use tokengate_policy::status::condition;
use tokengate_policy::{RemoteKeySource, TokenPolicy, TokenPolicyStatus};
use tokio::task::JoinSet;

use self::conditions::Observed;
use self::index::{Index, NamespaceFacts};
use self::keys::KeySources;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::render::{self, MANAGER};

/// Pace of the reconciler.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How often the state of the key sources in use is looked at; a policy whose sources
    /// changed (fetched, failed, recovered) is reconciled.
    pub key_poll: Duration,
    /// Every policy is reconciled at least this often, whatever happens; what the operator
    /// wrote is also written again at least this often (someone may have edited it).
    pub resync: Duration,
    /// How soon a failed reconcile is retried.
    pub error_retry: Duration,
    /// Triggers for the same policy within this window collapse into one reconcile (a burst of
    /// edits in a namespace renders its bundle once).
    pub debounce: Duration,
    /// Policies reconciled at the same time.
    pub concurrency: u16,
    /// Longest one reconcile may take before it is abandoned and retried.
    pub reconcile_timeout: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            key_poll: Duration::from_secs(1),
            resync: Duration::from_secs(600),
            error_retry: Duration::from_secs(5),
            debounce: Duration::from_millis(200),
            concurrency: 8,
            reconcile_timeout: Duration::from_secs(30),
        }
    }
}

/// A server-side apply the operator made, so the same content is not applied again while it
/// is known to be there.
struct Written {
    fingerprint: u64,
    at: Instant,
    /// [`index::Deletions::count`] of the namespace, read before the apply.
    deletions: u64,
}

impl Written {
    fn new(fingerprint: u64, deletions: u64) -> Self {
        Self {
            fingerprint,
            at: Instant::now(),
            deletions,
        }
    }

    /// Whether `fingerprint` was applied within `resync` and, as far as the watches tell,
    /// nothing the operator wrote in the namespace has been deleted since (a deletion seen at
    /// any point after the count was read makes the operator apply again).
    fn covers(
        written: Option<&Written>,
        fingerprint: u64,
        resync: Duration,
        deletions: u64,
    ) -> bool {
        written.is_some_and(|w| {
            w.fingerprint == fingerprint && w.deletions == deletions && w.at.elapsed() < resync
        })
    }
}

fn fingerprint(values: &[&Value]) -> u64 {
    let mut hasher = std::hash::DefaultHasher::new();
    for value in values {
        value.to_string().hash(&mut hasher);
    }
    hasher.finish()
}

/// Per namespace, the bundle last applied. The async lock also orders bundle writes: a
/// namespace's facts are read under it, so writes land in the order their facts were read.
type BundleSlot = Arc<tokio::sync::Mutex<BundleWritten>>;

/// What was applied of a namespace's bundle, per object: a key refresh changes only the
/// delivered keys, and only their ConfigMap is applied again.
#[derive(Default)]
struct BundleWritten {
    policies: Option<Written>,
    keys: Option<Written>,
    jwks: Option<Written>,
}

/// Referenced Secrets' data, read when the Secret store shows a new resourceVersion.
type SecretEntries = HashMap<(String, String), (String, Secret)>;

/// Per namespace and delivered source, a digest of the key set (its `kid`s and keys) the
/// bundle last carried, so a changed set's delivery time is measured once.
type DeliveredSets = HashMap<(String, RemoteKeySource), u64>;

pub struct Context {
    pub client: Client,
    pub index: Index,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub timing: Timing,
    key_sources: KeySources,
    bundles: Mutex<HashMap<String, BundleSlot>>,
    network_policies: Mutex<HashMap<(String, String), Written>>,
    secrets: Mutex<SecretEntries>,
    delivered: Mutex<DeliveredSets>,
}

impl Context {
    pub fn new(
        client: Client,
        index: Index,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        keys: Arc<KeyCache>,
        timing: Timing,
    ) -> Self {
        Self {
            client,
            index,
            recorder,
            metrics,
            timing,
            key_sources: KeySources::new(keys),
            bundles: Mutex::default(),
            network_policies: Mutex::default(),
            secrets: Mutex::default(),
            delivered: Mutex::default(),
        }
    }

    /// Observes, for each delivered source whose key set changed since the namespace's bundle
    /// last carried it, the time from the fetch that found the set to now (it is applied).
    fn measure_delivery(
        &self,
        namespace: &str,
        keys: &BTreeMap<RemoteKeySource, Arc<tokengate_keys::SourceKeys>>,
    ) {
        let Ok(mut delivered) = self.delivered.lock() else {
            return;
        };
        for (source, held) in keys {
            let mut hasher = std::hash::DefaultHasher::new();
            for key in &held.keys {
                key.kid.hash(&mut hasher);
                key.fingerprint().hash(&mut hasher);
            }
            let set = hasher.finish();
            let previous = delivered.insert((namespace.to_string(), source.clone()), set);
            if previous != Some(set) {
                let took = std::time::SystemTime::now()
                    .duration_since(held.fetched_wall)
                    .unwrap_or_default();
                self.metrics.key_delivery.observe(took.as_secs_f64());
                tracing::info!(
                    %namespace,
                    %source,
                    keys = held.keys.len(),
                    took_ms = took.as_millis(),
                    "key set delivered in the bundle"
                );
            }
        }
    }

    fn bundle_slot(&self, namespace: &str) -> BundleSlot {
        let mut bundles = self
            .bundles
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(bundles.entry(namespace.to_string()).or_default())
    }

    /// Forgets what was written for policies and namespaces the stores no longer have.
    fn prune(&self) {
        let namespaces = self.index.policies.namespaces();
        if let Ok(mut bundles) = self.bundles.lock() {
            bundles.retain(|namespace, slot| {
                // A slot some reconcile still holds stays, so bundle writes stay ordered.
                let keep = namespaces.contains(namespace) || Arc::strong_count(slot) > 1;
                if !keep {
                    // The namespace's last policy is gone, and with it its gauge.
                    let _ = self.metrics.policies.remove_label_values(&[namespace]);
                }
                keep
            });
        }
        if let Ok(mut delivered) = self.delivered.lock() {
            delivered.retain(|(namespace, _), _| namespaces.contains(namespace));
        }
        if let Ok(mut written) = self.network_policies.lock() {
            written.retain(|(namespace, name), _| {
                self.index
                    .policies
                    .in_namespace(namespace)
                    .iter()
                    .any(|p| render::network_policy_name(p) == *name)
            });
        }
    }

    /// The Secrets the policies reference (`None`: it does not exist). A Secret's data is read
    /// from the API server only when the Secret store shows a resourceVersion not read yet.
    async fn referenced_secrets(
        &self,
        namespace: &str,
        policies: &[&TokenPolicy],
    ) -> Result<BTreeMap<String, Option<Secret>>> {
        let mut found = BTreeMap::new();
        for policy in policies {
            for reference in render::secret_refs(&policy.spec) {
                if found.contains_key(&reference.name) {
                    continue;
                }
                let key = (namespace.to_string(), reference.name.clone());
                let secret = match self.index.secret_version(namespace, &reference.name) {
                    None => {
                        if let Ok(mut cache) = self.secrets.lock() {
                            cache.remove(&key);
                        }
                        None
                    }
                    Some(version) => {
                        let cached = self.secrets.lock().ok().and_then(|cache| {
                            cache
                                .get(&key)
                                .filter(|(read, _)| *read == version)
                                .map(|(_, secret)| secret.clone())
                        });
                        match cached {
                            Some(secret) => Some(secret),
                            None => self.read_secret(namespace, &reference.name).await?,
                        }
                    }
                };
                found.insert(reference.name.clone(), secret);
            }
        }
        Ok(found)
    }

    async fn read_secret(&self, namespace: &str, name: &str) -> Result<Option<Secret>> {
        let read = Api::<Secret>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(Error::api(format!("reading Secret {namespace}/{name}")))?;
        let Some(read) = read else {
            return Ok(None);
        };
        // Only what the bundle takes.
        let secret = Secret {
            data: read.data,
            string_data: read.string_data,
            ..Secret::default()
        };
        if let (Ok(mut cache), Some(version)) =
            (self.secrets.lock(), read.metadata.resource_version)
        {
            cache.insert(
                (namespace.to_string(), name.to_string()),
                (version, secret.clone()),
            );
        }
        Ok(Some(secret))
    }
}

/// Runs the controller until `shutdown` resolves and the reconciles under way have finished.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    keys: Arc<KeyCache>,
    timing: Timing,
    reporter: Reporter,
    on_ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = shutdown.boxed().shared();
    let (triggers, mut requests) = tokio::sync::mpsc::unbounded_channel();
    // Dropped on return, which ends every watch and loop below.
    let mut tasks = JoinSet::new();
    let index = Index::start(&client, &triggers, &mut tasks);
    let context = Arc::new(Context::new(
        client.clone(),
        index.clone(),
        Recorder::new(client, reporter),
        metrics,
        keys,
        timing.clone(),
    ));
    let watcher_context = Arc::clone(&context);
    tasks.spawn(async move {
        let ctx = watcher_context;
        ctx.key_sources
            .watch(
                ctx.index.policies.store().clone(),
                ctx.timing.key_poll,
                triggers,
            )
            .await;
    });
    let pruned = Arc::clone(&context);
    tasks.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            pruned.prune();
        }
    });

    // Reconciles read the stores, so none starts before every store has its first list.
    tokio::select! {
        () = index.wait_until_ready() => on_ready(),
        () = shutdown.clone() => return,
    }
    let requests = futures_util::stream::poll_fn(move |cx| requests.poll_recv(cx));
    Controller::for_stream(
        futures_util::stream::pending::<Result<TokenPolicy, watcher::Error>>(),
        index.policies.store().clone(),
    )
    .reconcile_on(requests)
    .with_config(
        kube::runtime::controller::Config::default()
            .debounce(timing.debounce)
            .concurrency(timing.concurrency),
    )
    .graceful_shutdown_on(shutdown)
    .run(reconcile, error_policy, context)
    .for_each(|result| async move {
        if let Err(err) = result {
            tracing::debug!(error = %err, "controller event");
        }
    })
    .await;
}

fn error_policy(policy: Arc<TokenPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .reconcile
        .with_label_values(&[error.metric_label()])
        .inc();
    tracing::warn!(
        policy = %policy.name_any(),
        namespace = policy.namespace().unwrap_or_default(),
        error = %error,
        "reconcile failed; retrying"
    );
    Action::requeue(ctx.timing.error_retry)
}

async fn reconcile(policy: Arc<TokenPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let namespace = policy.namespace().unwrap_or_default();
    tracing::debug!(policy = %policy.name_any(), %namespace, "reconciling");
    // A reconcile is a handful of API calls; one that hangs (an answer that never comes) must
    // not hold a concurrency slot for ever.
    let result = tokio::time::timeout(ctx.timing.reconcile_timeout, reconcile_inner(&policy, &ctx))
        .await
        .unwrap_or(Err(Error::Timeout(ctx.timing.reconcile_timeout)));
    tracing::debug!(
        policy = %policy.name_any(),
        %namespace,
        ok = result.is_ok(),
        elapsed_ms = started.elapsed().as_millis(),
        "reconciled"
    );
    ctx.metrics
        .reconcile_duration
        .observe(started.elapsed().as_secs_f64());
    if result.is_ok() {
        // Failures are counted by `error_policy`, by kind.
        ctx.metrics.reconcile.with_label_values(&["success"]).inc();
    }
    result
}

async fn reconcile_inner(policy: &TokenPolicy, ctx: &Context) -> Result<Action> {
    let name = policy.name_any();
    let Some(namespace) = policy.namespace() else {
        return Ok(Action::await_change());
    };
    let (facts, mut secret_problems) = render_bundle(ctx, &namespace).await?;
    ctx.metrics
        .policies
        .with_label_values(&[namespace.as_str()])
        .set(i64::try_from(facts.policies.len()).unwrap_or(i64::MAX));
    // The stores' version of the policy: absent when it is deleted or being deleted, and then
    // the bundle just rendered no longer has it; its NetworkPolicy goes with it (owner).
    let Some(policy) = facts.policy(&name) else {
        return Ok(Action::await_change());
    };
    apply_network_policy(ctx, policy).await?;

    let observed = Observed::gather(
        policy,
        &facts,
        secret_problems.remove(&name).unwrap_or_default(),
        ctx.key_sources.observe(policy),
    );
    let previous = policy.status.as_ref();
    let status = conditions::status(&observed, previous, Timestamp::now());
    if previous != Some(&status) {
        apply_status(ctx, policy, &status).await?;
        publish_events(ctx, policy, previous, &status, &observed.bypasses).await;
    }
    // Key sources are watched by `KeySources::watch`; this is only a safety net.
    Ok(Action::requeue(ctx.timing.resync))
}

/// Renders and applies the namespace's bundle from its policies as the stores have them, and
/// returns those facts with the Secret problems per policy. Unchanged bundles are not applied.
async fn render_bundle(
    ctx: &Context,
    namespace: &str,
) -> Result<(NamespaceFacts, BTreeMap<String, Vec<String>>)> {
    let slot = ctx.bundle_slot(namespace);
    let mut written = slot.lock().await;
    // Read under the namespace's lock, so a bundle read before a policy's deletion cannot be
    // written after one read after it: a policy deleted a moment ago stays out of the bundle.
    let facts = ctx.index.namespace(namespace);
    if facts.policies.is_empty() {
        // The last policy is going: the garbage collector deletes the bundle it owned.
        *written = BundleWritten::default();
        return Ok((facts, BTreeMap::new()));
    }
    let deletions = ctx.index.deletions.count(namespace);
    let ordered = facts.ordered();
    let secrets = ctx.referenced_secrets(namespace, &ordered).await?;
    let keys = ctx
        .key_sources
        .keys_of(&render::delivered_sources(ordered.iter().copied()));
    let bundle =
        render::bundle(namespace, &ordered, &secrets, &keys).map_err(|source| Error::Render {
            namespace: namespace.to_string(),
            source,
        })?;
    let config_map = with_type_meta(&bundle.config_map, "v1", "ConfigMap")?;
    let secret = with_type_meta(&bundle.secret, "v1", "Secret")?;
    let jwks = with_type_meta(&bundle.jwks, "v1", "ConfigMap")?;
    // The public keys first: a policy that needs them finds them there when it arrives; the
    // key material before the policies that reference it.
    if apply_unless_written::<ConfigMap>(
        ctx,
        namespace,
        render::JWKS_CONFIG_MAP,
        jwks,
        &mut written.jwks,
        deletions,
    )
    .await?
    {
        ctx.measure_delivery(namespace, &keys);
    }
    apply_unless_written::<Secret>(
        ctx,
        namespace,
        render::KEYS_SECRET,
        secret,
        &mut written.keys,
        deletions,
    )
    .await?;
    apply_unless_written::<ConfigMap>(
        ctx,
        namespace,
        render::POLICIES_CONFIG_MAP,
        config_map,
        &mut written.policies,
        deletions,
    )
    .await?;
    Ok((facts, bundle.secret_problems))
}

/// Applies `object` (a `K` named `name` in `namespace`) by server-side apply, unless `written`
/// says the same content was applied within the resync and nothing was deleted since; records
/// what it applied. Returns whether it applied.
async fn apply_unless_written<K>(
    ctx: &Context,
    namespace: &str,
    name: &str,
    object: Value,
    written: &mut Option<Written>,
    deletions: u64,
) -> Result<bool>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let rendered = fingerprint(&[&object]);
    if Written::covers(written.as_ref(), rendered, ctx.timing.resync, deletions) {
        return Ok(false);
    }
    Api::<K>::namespaced(ctx.client.clone(), namespace)
        .patch(
            name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(Error::api(format!(
            "applying {} {namespace}/{name}",
            K::kind(&())
        )))?;
    *written = Some(Written::new(rendered, deletions));
    Ok(true)
}

/// Private access: the policy's NetworkPolicy applied, or deleted when it has none.
async fn apply_network_policy(ctx: &Context, policy: &TokenPolicy) -> Result<()> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = render::network_policy_name(policy);
    let rendered = render::network_policy(policy)
        .map(|np| with_type_meta(&np, "networking.k8s.io/v1", "NetworkPolicy"))
        .transpose()?;
    let wanted = fingerprint(&[rendered.as_ref().unwrap_or(&Value::Null)]);
    let key = (namespace.clone(), name.clone());
    let deletions = ctx.index.deletions.count(&namespace);
    let current = ctx.network_policies.lock().is_ok_and(|written| {
        Written::covers(written.get(&key), wanted, ctx.timing.resync, deletions)
    });
    // None wanted and none there: nothing to delete. (One created a moment ago and not in the
    // store yet is deleted when its watch event reconciles this policy again.)
    let absent = rendered.is_none() && ctx.index.network_policies.get(&namespace, &name).is_none();
    if current || absent {
        return Ok(());
    }
    let api = Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &namespace);
    match rendered {
        Some(rendered) => {
            api.patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(rendered),
            )
            .await
            .map_err(Error::api(format!(
                "applying NetworkPolicy {namespace}/{name}"
            )))?;
        }
        None => match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(err) => {
                return Err(Error::api(format!(
                    "deleting NetworkPolicy {namespace}/{name}"
                ))(err));
            }
        },
    }
    if let Ok(mut written) = ctx.network_policies.lock() {
        written.insert(key, Written::new(wanted, deletions));
    }
    Ok(())
}

/// Status by server-side apply on the status subresource, under the operator's field manager.
async fn apply_status(
    ctx: &Context,
    policy: &TokenPolicy,
    status: &TokenPolicyStatus,
) -> Result<()> {
    let namespace = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let patch = json!({
        "apiVersion": TokenPolicy::api_version(&()),
        "kind": TokenPolicy::kind(&()),
        "status": status,
    });
    Api::<TokenPolicy>::namespaced(ctx.client.clone(), &namespace)
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
        .map_err(Error::api(format!(
            "applying the status of TokenPolicy {namespace}/{name}"
        )))?;
    Ok(())
}

/// One Event per condition that changed (on a first report, per bad news). Best effort.
async fn publish_events(
    ctx: &Context,
    policy: &TokenPolicy,
    previous: Option<&TokenPolicyStatus>,
    status: &TokenPolicyStatus,
    bypasses: &[render::Bypass],
) {
    let reference = policy.object_ref(&());
    for condition in conditions::transitions(previous, status) {
        let healthy = conditions::is_healthy(condition);
        let secondary = (condition.type_ == condition::BYPASS && !healthy)
            .then(|| bypasses.first())
            .flatten()
            .map(|b| ObjectReference {
                api_version: Some("v1".to_string()),
                kind: Some("Service".to_string()),
                name: Some(b.service.clone()),
                namespace: policy.namespace(),
                ..Default::default()
            });
        let event = Event {
            type_: if healthy {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: condition.reason.clone(),
            note: Some(truncate(&condition.message, 1000)),
            action: format!("Reconcile{}", condition.type_),
            secondary,
        };
        if let Err(err) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(error = %err, policy = %policy.name_any(), "publishing an event");
        }
    }
}

fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// Server-side apply needs apiVersion and kind in the body, which k8s-openapi's structs leave
/// to serialization.
fn with_type_meta<T: serde::Serialize>(object: &T, api_version: &str, kind: &str) -> Result<Value> {
    let mut value = serde_json::to_value(object).map_err(|source| Error::Encode {
        what: kind.to_string(),
        source,
    })?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_string(), json!(api_version));
        map.insert("kind".to_string(), json!(kind));
    }
    Ok(value)
}
