//! The reconciler: one TokenPolicy at a time, but the bundle is rendered from every policy of
//! the namespace, so any policy's reconcile leaves the whole namespace consistent.
//!
//! Triggers: the TokenPolicy itself, its namespace siblings (a deleted policy leaves its bundle
//! entry to them), referenced Secrets (created late, rotated), Pods (selected counts, conflicts)
//! and Services (bypass detection). Nothing here fails the loop on bad input: a bad policy gets
//! a condition that says what to fix, and the others still render.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, Resource as _, ResourceExt as _};
use serde_json::json;
use tokengate_keys::{KeyCache, Source};
use tokengate_policy::status::condition;
use tokengate_policy::{TokenPolicy, TokenPolicySpec, TokenPolicyStatus};

use crate::metrics::Metrics;
use crate::render::{self, MANAGER};

/// Pace of the reconciler.
#[derive(Clone, Debug)]
pub struct Timing {
    /// How often the state of the key sources in use is looked at; a policy whose sources
    /// changed (fetched, failed, recovered) is reconciled.
    pub key_poll: Duration,
    /// Every policy is reconciled at least this often, whatever happens.
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

pub struct Context {
    pub client: Client,
    pub policies: Store<TokenPolicy>,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub keys: Arc<KeyCache>,
    pub timing: Timing,
    /// Key sources in use per policy (holding them keeps their background refresh alive), and
    /// the state of those sources the policy's status last reported.
    held: Mutex<HashMap<ObjectRef<TokenPolicy>, HeldSources>>,
}

struct HeldSources {
    sources: Vec<Arc<Source>>,
    reported: u64,
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

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Kube(#[from] kube::Error),
    #[error("{0:#}")]
    Other(#[from] anyhow::Error),
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    metrics: Arc<Metrics>,
    keys: Arc<KeyCache>,
    timing: Timing,
    reporter: Reporter,
    on_ready: impl FnOnce() + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let policies_api = Api::<TokenPolicy>::all(client.clone());
    let controller = Controller::new(policies_api.clone(), watcher::Config::default());
    let store = controller.store();

    let siblings = sibling_triggers(policies_api.clone(), store.clone());
    let secrets_store = store.clone();
    let by_secret = move |secret: Secret| -> Vec<ObjectRef<TokenPolicy>> {
        let namespace = secret.namespace();
        let name = secret.name_any();
        secrets_store
            .state()
            .iter()
            .filter(|p| p.namespace() == namespace)
            .filter(|p| render::secret_refs(&p.spec).iter().any(|r| r.name == name))
            .map(|p| ObjectRef::from(p.as_ref()))
            .collect()
    };
    let in_namespace = |store: Store<TokenPolicy>| {
        move |namespace: Option<String>| -> Vec<ObjectRef<TokenPolicy>> {
            store
                .state()
                .iter()
                .filter(|p| p.namespace() == namespace)
                .map(|p| ObjectRef::from(p.as_ref()))
                .collect()
        }
    };
    let pods_in = in_namespace(store.clone());
    let services_in = in_namespace(store.clone());

    let pace = timing.clone();
    let context = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client: client.clone(),
        policies: store.clone(),
        metrics,
        keys,
        timing,
        held: Mutex::new(HashMap::new()),
    });
    let (key_tx, mut key_rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(watch_key_sources(Arc::clone(&context), key_tx));
    let key_changes = futures_util::stream::poll_fn(move |cx| key_rx.poll_recv(cx));
    let ready_store = store.clone();
    tokio::spawn(async move {
        if ready_store.wait_until_ready().await.is_ok() {
            on_ready();
        }
    });

    controller
        .reconcile_on(siblings)
        .reconcile_on(key_changes)
        .watches(
            Api::<Secret>::all(client.clone()),
            watcher::Config::default(),
            by_secret,
        )
        .watches(
            Api::<Pod>::all(client.clone()),
            watcher::Config::default(),
            move |pod: Pod| pods_in(pod.namespace()),
        )
        .watches(
            Api::<Service>::all(client.clone()),
            watcher::Config::default(),
            move |service: Service| services_in(service.namespace()),
        )
        .with_config(
            kube::runtime::controller::Config::default()
                .debounce(pace.debounce)
                .concurrency(pace.concurrency),
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

/// When a policy is created, deleted or its spec changes, the other policies of its namespace
/// are reconciled too: the bundle they share, and conflicts between them, depend on it. Status
/// updates (the same generation) trigger nothing, so reports do not ripple through a namespace.
fn sibling_triggers(
    api: Api<TokenPolicy>,
    store: Store<TokenPolicy>,
) -> impl futures_util::Stream<Item = ObjectRef<TokenPolicy>> + Send + 'static {
    let mut generations: HashMap<String, Option<i64>> = HashMap::new();
    watcher(api, watcher::Config::default())
        .default_backoff()
        .filter_map(move |event| {
            let changed = match event {
                Ok(watcher::Event::Apply(policy)) => {
                    let uid = policy.uid().unwrap_or_default();
                    let generation = policy.metadata.generation;
                    (generations.insert(uid, generation) != Some(generation)).then_some(policy)
                }
                Ok(watcher::Event::Delete(policy)) => {
                    generations.remove(&policy.uid().unwrap_or_default());
                    Some(policy)
                }
                Ok(watcher::Event::InitApply(policy)) => {
                    generations
                        .insert(policy.uid().unwrap_or_default(), policy.metadata.generation);
                    None
                }
                Ok(watcher::Event::Init | watcher::Event::InitDone) => None,
                Err(err) => {
                    tracing::debug!(error = %err, "TokenPolicy watch");
                    None
                }
            };
            let refs: Vec<ObjectRef<TokenPolicy>> = changed
                .map(|policy| {
                    let namespace = policy.namespace();
                    store
                        .state()
                        .iter()
                        .filter(|p| p.namespace() == namespace && p.name_any() != policy.name_any())
                        .map(|p| ObjectRef::from(p.as_ref()))
                        .collect()
                })
                .unwrap_or_default();
            std::future::ready(Some(futures_util::stream::iter(refs)))
        })
        .flatten()
}

fn error_policy(policy: Arc<TokenPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    tracing::warn!(
        policy = %policy.name_any(),
        namespace = policy.namespace().unwrap_or_default(),
        error = %error,
        "reconcile failed; retrying"
    );
    Action::requeue(ctx.timing.error_retry)
}

async fn reconcile(policy: Arc<TokenPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    let namespace = policy.namespace().unwrap_or_default();
    tracing::debug!(policy = %policy.name_any(), %namespace, "reconciling");
    // A reconcile is a handful of API calls; one that hangs (an answer that never comes) must
    // not hold a concurrency slot for ever.
    let result = tokio::time::timeout(ctx.timing.reconcile_timeout, reconcile_inner(&policy, &ctx))
        .await
        .unwrap_or_else(|_| {
            Err(Error::Other(anyhow::anyhow!(
                "timed out after {:?}",
                ctx.timing.reconcile_timeout
            )))
        });
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
    let label = if result.is_ok() { "success" } else { "error" };
    ctx.metrics.reconcile.with_label_values(&[label]).inc();
    result
}

async fn reconcile_inner(policy: &TokenPolicy, ctx: &Context) -> Result<Action, Error> {
    let name = policy.name_any();
    let Some(namespace) = policy.namespace() else {
        return Ok(Action::await_change());
    };
    // The namespace's policies from the API server, not the cache: a policy deleted a moment
    // ago must not be rendered back into the bundle by a sibling's reconcile.
    let live: Vec<TokenPolicy> = Api::<TokenPolicy>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    ctx.metrics
        .policies
        .with_label_values(&[namespace.as_str()])
        .set(i64::try_from(live.len()).unwrap_or(i64::MAX));
    if policy.metadata.deletion_timestamp.is_some() || !live.iter().any(|p| p.name_any() == name) {
        // Its key sources are dropped by `watch_key_sources`, which prunes what the store lost.
        return Ok(Action::await_change());
    }
    let ordered = render::oldest_first(&live);

    // The namespace bundle, from every live policy.
    let secrets_api = Api::<Secret>::namespaced(ctx.client.clone(), &namespace);
    let mut secrets = BTreeMap::new();
    for policy in &ordered {
        for reference in render::secret_refs(&policy.spec) {
            if !secrets.contains_key(&reference.name) {
                let secret = secrets_api.get_opt(&reference.name).await?;
                secrets.insert(reference.name.clone(), secret);
            }
        }
    }
    let bundle = render::bundle(&namespace, &ordered, &secrets)?;
    let apply = PatchParams::apply(MANAGER).force();
    Api::<ConfigMap>::namespaced(ctx.client.clone(), &namespace)
        .patch(
            render::POLICIES_CONFIG_MAP,
            &apply,
            &Patch::Apply(with_type_meta(&bundle.config_map, "v1", "ConfigMap")?),
        )
        .await?;
    secrets_api
        .patch(
            render::KEYS_SECRET,
            &apply,
            &Patch::Apply(with_type_meta(&bundle.secret, "v1", "Secret")?),
        )
        .await?;

    // Private access.
    let network_policies = Api::<NetworkPolicy>::namespaced(ctx.client.clone(), &namespace);
    let network_policy_name = render::network_policy_name(policy);
    match render::network_policy(policy) {
        Some(rendered) => {
            network_policies
                .patch(
                    &network_policy_name,
                    &apply,
                    &Patch::Apply(with_type_meta(
                        &rendered,
                        "networking.k8s.io/v1",
                        "NetworkPolicy",
                    )?),
                )
                .await?;
        }
        None => match network_policies
            .delete(&network_policy_name, &DeleteParams::default())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.is_not_found() => {}
            Err(err) => return Err(err.into()),
        },
    }

    // What the policy selects and what goes around it.
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let services = Api::<Service>::namespaced(ctx.client.clone(), &namespace)
        .list(&ListParams::default())
        .await?
        .items;
    let selected = render::selected_pods(policy, &pods);
    let bypasses = render::bypasses(&selected, &services);
    let conflicts = render::conflicts(&ordered, &pods);

    let generation = policy.metadata.generation;
    let mut conditions = Vec::new();
    let errors = tokengate_policy::validate(&policy.spec);
    let secret_problems = bundle.secret_problems.get(&name);
    conditions.push(if !errors.is_empty() {
        let message = errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ");
        new_condition(condition::READY, false, "InvalidSpec", message, generation)
    } else if let Some(problems) = secret_problems {
        new_condition(
            condition::READY,
            false,
            "SecretNotFound",
            format!(
                "{}; pods keep their last good version of this policy until the key is there",
                problems.join("; ")
            ),
            generation,
        )
    } else {
        new_condition(
            condition::READY,
            true,
            "Rendered",
            format!(
                "rendered into ConfigMap {}; selects {} pod(s)",
                render::POLICIES_CONFIG_MAP,
                selected.len()
            ),
            generation,
        )
    });

    let keys_condition = check_keys(ctx, policy, secret_problems);
    conditions.push(keys_condition);

    conditions.push(match conflicts.get(&name) {
        Some(others) => {
            let mut all: Vec<&str> = others.iter().map(String::as_str).collect();
            all.push(&name);
            let applies = ordered
                .iter()
                .map(|p| p.name_any())
                .find(|n| all.contains(&n.as_str()))
                .unwrap_or_else(|| name.clone());
            new_condition(
                condition::CONFLICT,
                true,
                "SelectorOverlap",
                format!(
                    "pods selected by this policy are also selected by {}; {applies} applies to \
                     them (the oldest)",
                    join(others)
                ),
                generation,
            )
        }
        None => new_condition(
            condition::CONFLICT,
            false,
            "NoOverlap",
            "no other TokenPolicy selects these pods".to_string(),
            generation,
        ),
    });

    let private = render::network_policy(policy).is_some();
    conditions.push(if bypasses.is_empty() {
        new_condition(
            condition::BYPASS,
            false,
            "NoBypass",
            "no Service reaches the application around the sidecar".to_string(),
            generation,
        )
    } else {
        let found = bypasses
            .iter()
            .map(|b| {
                format!(
                    "Service {} port {} sends traffic to application port {} by {}",
                    b.service, b.service_port, b.app_port, b.target
                )
            })
            .collect::<Vec<_>>()
            .join("; ");
        let consequence = if private {
            "the NetworkPolicy blocks that path, so it fails closed"
        } else {
            "that path skips token validation"
        };
        new_condition(
            condition::BYPASS,
            true,
            "ServiceTargetsAppPort",
            format!(
                "{found}: {consequence}. Fix: make the Service target the port by name \
                 (targetPort: <port name>), which the sidecar takes over on injection"
            ),
            generation,
        )
    });

    let status = TokenPolicyStatus {
        observed_generation: generation,
        conditions: Vec::new(),
        mode: Some(mode(&policy.spec).to_string()),
        selector: Some(policy.spec.selector.to_string()),
        selected_pods: Some(i32::try_from(selected.len()).unwrap_or(i32::MAX)),
    };
    update_status(ctx, policy, status, conditions, &bypasses).await?;
    // Key sources are watched by `watch_key_sources`; this is only a safety net.
    Ok(Action::requeue(ctx.timing.resync))
}

fn join(names: &BTreeSet<String>) -> String {
    names.iter().cloned().collect::<Vec<_>>().join(", ")
}

fn mode(spec: &TokenPolicySpec) -> &'static str {
    if spec.validate_azure_ad_token.is_some() {
        "validateAzureAdToken"
    } else {
        "validateJwt"
    }
}

/// Looks at the key sources every policy uses and asks for a reconcile of each policy whose
/// sources changed state (first keys fetched, a fetch failed, a failed source recovered), so
/// `KeysResolved` follows the identity providers without reconciling every policy on a timer.
async fn watch_key_sources(
    ctx: Arc<Context>,
    changed: tokio::sync::mpsc::UnboundedSender<ObjectRef<TokenPolicy>>,
) {
    let mut tick = tokio::time::interval(ctx.timing.key_poll);
    let max_stale = ctx.keys.settings().max_stale;
    loop {
        tick.tick().await;
        prune_key_sources(&ctx);
        let mut stale = Vec::new();
        if let Ok(mut held) = ctx.held.lock() {
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

/// Deleted policies are never reconciled again: drop the key sources of policies no longer in
/// the store, which ends their background refresh.
fn prune_key_sources(ctx: &Context) {
    let live: HashSet<ObjectRef<TokenPolicy>> = ctx
        .policies
        .state()
        .iter()
        .map(|p| ObjectRef::from(p.as_ref()))
        .collect();
    if let Ok(mut held) = ctx.held.lock() {
        held.retain(|policy, _| live.contains(policy));
    }
}

/// `KeysResolved` from the shared key cache (the sidecar's own fetch code: discovery, then
/// `jwks_uri`, with timeouts), and when to look again.
fn check_keys(
    ctx: &Context,
    policy: &TokenPolicy,
    secret_problems: Option<&Vec<String>>,
) -> Condition {
    let generation = policy.metadata.generation;
    let ids = tokengate_policy::remote_key_sources(&policy.spec);
    let sources = ctx.keys.sources(&ids);
    let max_stale = ctx.keys.settings().max_stale;
    // Recorded before the condition is computed: a change in between triggers one more
    // reconcile rather than going unnoticed.
    if let Ok(mut held) = ctx.held.lock() {
        let entry = HeldSources {
            reported: sources_state(&sources, max_stale),
            sources: sources.clone(),
        };
        held.insert(ObjectRef::from(policy), entry);
    }
    let mut failed = Vec::new();
    let mut pending = Vec::new();
    let mut resolved = Vec::new();
    for source in &sources {
        match (source.current(max_stale), source.last_error()) {
            (_, Some(error)) => failed.push(format!("{}: {error}", source.id.url())),
            (Some(keys), None) => resolved.push(format!(
                "{} key(s) from {}",
                keys.keys.len(),
                source.id.url()
            )),
            (None, None) => pending.push(source.id.url().to_string()),
        }
    }
    if let Some(problems) = secret_problems {
        failed.extend(problems.iter().cloned());
    }
    if !failed.is_empty() {
        return new_condition(
            condition::KEYS_RESOLVED,
            false,
            "KeySourceFailed",
            failed.join("; "),
            generation,
        );
    }
    if !pending.is_empty() {
        return new_condition_status(
            condition::KEYS_RESOLVED,
            "Unknown",
            "Fetching",
            format!("fetching {}", pending.join(", ")),
            generation,
        );
    }
    let message = if resolved.is_empty() {
        "keys are given in the policy".to_string()
    } else {
        resolved.join("; ")
    };
    new_condition(
        condition::KEYS_RESOLVED,
        true,
        "KeysFetched",
        message,
        generation,
    )
}

fn new_condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    new_condition_status(
        type_,
        if status { "True" } else { "False" },
        reason,
        message,
        generation,
    )
}

fn new_condition_status(
    type_: &str,
    status: &str,
    reason: &str,
    message: String,
    generation: Option<i64>,
) -> Condition {
    Condition {
        type_: type_.to_string(),
        status: status.to_string(),
        reason: reason.to_string(),
        message,
        observed_generation: generation,
        last_transition_time: Time(Timestamp::now()),
    }
}

/// Whether a condition of this type and status is the good news.
fn is_healthy(condition: &Condition) -> bool {
    match condition.type_.as_str() {
        condition::CONFLICT | condition::BYPASS => condition.status == "False",
        _ => condition.status == "True",
    }
}

async fn update_status(
    ctx: &Context,
    policy: &TokenPolicy,
    mut status: TokenPolicyStatus,
    conditions: Vec<Condition>,
    bypasses: &[render::Bypass],
) -> Result<(), Error> {
    let old = policy.status.clone().unwrap_or_default();
    let mut transitions = Vec::new();
    for mut condition in conditions {
        match old.conditions.iter().find(|c| c.type_ == condition.type_) {
            Some(previous) if previous.status == condition.status => {
                condition.last_transition_time = previous.last_transition_time.clone();
                if previous.reason != condition.reason || previous.message != condition.message {
                    transitions.push(condition.clone());
                }
            }
            Some(_) => transitions.push(condition.clone()),
            // First report: only bad news is worth an event.
            None if !is_healthy(&condition) => transitions.push(condition.clone()),
            None => {}
        }
        status.conditions.push(condition);
    }
    if status == old {
        return Ok(());
    }
    let api =
        Api::<TokenPolicy>::namespaced(ctx.client.clone(), &policy.namespace().unwrap_or_default());
    api.patch_status(
        &policy.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    let reference = policy.object_ref(&());
    for condition in transitions {
        let healthy = is_healthy(&condition);
        let secondary = (condition.type_ == condition::BYPASS && !healthy)
            .then(|| bypasses.first())
            .flatten()
            .map(|b| k8s_openapi::api::core::v1::ObjectReference {
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
    Ok(())
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
fn with_type_meta<T: serde::Serialize>(
    object: &T,
    api_version: &str,
    kind: &str,
) -> anyhow::Result<serde_json::Value> {
    let mut value = serde_json::to_value(object)?;
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".to_string(), json!(api_version));
        map.insert("kind".to_string(), json!(kind));
    }
    Ok(value)
}
