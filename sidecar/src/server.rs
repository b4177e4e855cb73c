//! Wiring: listeners for the proxy and the admin port, policy loading, shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokengate_keys::{KeyCache, KeySettings};
use tokengate_runtime::{AdminState, Readiness, serve_admin};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::app_probe::AppProbes;
use crate::connections::{ConnectionLimits, Connections, TrackedBody, connections_that_fit};
use crate::gate::{Gate, Startup, StartupMode};
use crate::metrics::Metrics;
use crate::proxy::{Peer, Proxy, UpstreamSettings};
use crate::reload::{PolicyInputs, PolicySource, watch_inputs};
use crate::token_cache::TokenCache;

/// Connection limits of the proxy listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Time a client has to send its request headers (slow-client protection).
    pub header_read_timeout: Duration,
    /// Largest request head accepted, in bytes.
    pub max_header_bytes: usize,
    /// Time in-flight requests get to finish after shutdown begins.
    pub drain_timeout: Duration,
    /// Time a new connection has to start its first request (protocol detection included).
    pub first_request_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Client connections held at most (lowered to what the descriptor limit allows).
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 * 1024,
            drain_timeout: Duration::from_secs(25),
            first_request_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

pub struct SidecarConfig {
    /// `--policy` files; empty when the policies come from a bundle.
    pub policy_files: Vec<PathBuf>,
    /// `--bundle DIR`: the operator's rendering of the namespace's policies and keys.
    pub bundle: Option<PathBuf>,
    pub pod_labels: Option<PathBuf>,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    pub upstream: UpstreamSettings,
    pub keys: KeySettings,
    pub limits: Limits,
    pub extra_ca: Option<PathBuf>,
    /// How often policy and label files are checked for changes.
    pub reload_interval: Duration,
    /// Verified tokens kept; 0 disables the cache.
    pub token_cache_entries: usize,
    /// What requests do before the first keys arrive.
    pub startup: StartupMode,
    /// How long requests may wait for keys at startup (`StartupMode::Wait`).
    pub startup_timeout: Duration,
    /// `--require-pod-firewall`: the application port the pod firewall must close; not ready
    /// until it does.
    pub pod_firewall: Option<u16>,
    /// Application probes run on the kubelet's behalf on the admin port.
    pub app_probes: Vec<tokengate_policy::contract::AppProbe>,
}

/// A started sidecar. Dropping it does not stop it; call [`Running::shutdown`].
pub struct Running {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub gate: Arc<Gate>,
    pub metrics: Arc<Metrics>,
    shutdown: watch::Sender<bool>,
    proxy_task: tokio::task::JoinHandle<()>,
    admin_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish within the drain timeout, then returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.proxy_task.await;
        self.admin_task.abort();
    }

    pub fn ready(&self) -> bool {
        is_ready(&self.gate)
    }
}

/// Loads the policy, binds both listeners, starts serving and watching the policy files.
/// Keys are fetched in the background; until they arrive `/ready` says not ready and requests
/// are refused with `KeysUnavailable` (or, with `StartupMode::Wait`, held for a while).
///
/// Invalid `--policy` files fail the start. A bundle never does: a missing directory means
/// `NoPolicy` until it appears, and invalid files are skipped.
pub async fn start(config: SidecarConfig) -> anyhow::Result<Running> {
    let source = match (&config.bundle, config.policy_files.is_empty()) {
        (Some(dir), true) => PolicySource::Bundle(dir.clone()),
        (None, false) => PolicySource::Files(config.policy_files.clone()),
        (Some(_), false) => anyhow::bail!("give policy files or a bundle, not both"),
        (None, true) => anyhow::bail!("give at least one policy file or a bundle"),
    };
    if matches!(source, PolicySource::Bundle(_)) && config.pod_labels.is_none() {
        anyhow::bail!("a bundle needs the pod labels file to choose a policy");
    }
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let keys = KeyCache::new(
        config.keys.clone(),
        Arc::clone(&metrics.keys),
        config.extra_ca.as_deref(),
    )?;
    let gate = Arc::new(Gate::with(
        Arc::clone(&keys),
        TokenCache::new(config.token_cache_entries, &metrics),
        Startup::new(config.startup, config.startup_timeout),
    ));

    let bundle = matches!(source, PolicySource::Bundle(_));
    let mut inputs = PolicyInputs::new(source, config.pod_labels.clone());
    // Delivered keys first: the policy's key sources start with them, and fetch nothing the
    // bundle already brings.
    inputs.deliver_keys(&gate);
    let (seen, loaded) = inputs.reload_tracked(&gate, &metrics);
    match loaded {
        Ok(()) => {}
        Err(err) if bundle => tracing::error!(
            error = format!("{err:#}"),
            "bundle not usable yet; requests are refused with NoPolicy until it is"
        ),
        Err(err) => return Err(err),
    }

    let proxy_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding proxy listener {}", config.listen))?;
    let admin_listener = TcpListener::bind(config.admin)
        .await
        .with_context(|| format!("binding admin listener {}", config.admin))?;
    let proxy_addr = proxy_listener.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    tracing::info!(%proxy_addr, %admin_addr, upstream = %config.upstream.base, "listening");

    let (shutdown, shutdown_rx) = watch::channel(false);
    let proxy = Arc::new(Proxy::new(
        Arc::clone(&gate),
        Arc::clone(&metrics),
        config.upstream,
    ));
    let connections = Connections::new(
        ConnectionLimits {
            first_request_timeout: config.limits.first_request_timeout,
            idle_timeout: config.limits.idle_timeout,
            max_connections: connections_that_fit(config.limits.max_connections),
        },
        Arc::clone(&metrics),
    );
    tracing::info!(
        max_connections = connections.limits().max_connections,
        "connection limit"
    );
    let proxy_task = tokio::spawn(serve_proxy(
        proxy_listener,
        proxy,
        connections,
        shutdown_rx,
        config.limits,
    ));
    tokio::spawn(watch_inputs(
        inputs,
        seen,
        Arc::clone(&gate),
        Arc::clone(&metrics),
        config.reload_interval,
        shutdown.subscribe(),
    ));
    let firewall = config.pod_firewall.map(|port| {
        let watch = Arc::new(FirewallWatch::new(port));
        tokio::spawn(Arc::clone(&watch).run(Arc::clone(&metrics), shutdown.subscribe()));
        watch
    });
    let admin_task = tokio::spawn(serve_admin(
        admin_listener,
        Arc::new(SidecarAdmin {
            gate: Arc::clone(&gate),
            metrics: Arc::clone(&metrics),
            firewall,
            probes: Arc::new(AppProbes::new(config.app_probes)),
        }),
    ));
    Ok(Running {
        proxy_addr,
        admin_addr,
        gate,
        metrics,
        shutdown,
        proxy_task,
        admin_task,
    })
}

async fn serve_proxy(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    connections: Arc<Connections>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(accepted) => accepted,
                    Err(err) => {
                        // Out of file descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %err, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                // Over the limit: closed at once, before it costs more than its descriptor.
                let Some(admission) = connections.admit() else {
                    drop(stream);
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let proxy = Arc::clone(&proxy);
                let activity = Arc::clone(&admission.activity);
                let client = Peer::new(peer);
                let service = service_fn(move |request| {
                    let in_flight = activity.request();
                    let proxy = Arc::clone(&proxy);
                    let client = client.clone();
                    async move {
                        let response = proxy.handle(request, client).await?;
                        Ok::<_, Infallible>(response.map(|body| TrackedBody::new(body, in_flight)))
                    }
                });
                let connection = builder
                    .serve_connection_with_upgrades(TokioIo::new(stream), service)
                    .into_owned();
                let connection = graceful.watch(connection);
                tokio::spawn(async move {
                    tokio::select! {
                        ended = connection => {
                            if let Err(err) = ended {
                                tracing::debug!(error = %err, %peer, "connection ended with an error");
                            }
                        }
                        reason = admission.expired() => {
                            tracing::debug!(%peer, reason, "closing connection");
                        }
                    }
                    drop(admission);
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tracing::info!(drain_timeout = ?limits.drain_timeout, "draining connections");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!("drain timeout reached with connections still open");
        }
    }
}

fn is_ready(gate: &Gate) -> bool {
    gate.is_ready()
}

/// What the sidecar's admin port reports.
struct SidecarAdmin {
    gate: Arc<Gate>,
    metrics: Arc<Metrics>,
    firewall: Option<Arc<FirewallWatch>>,
    probes: Arc<AppProbes>,
}

impl AdminState for SidecarAdmin {
    fn readiness(&self) -> Readiness {
        let readiness = readiness(&self.gate);
        let Some(firewall) = &self.firewall else {
            return readiness;
        };
        if firewall.in_place() {
            return Readiness {
                ready: readiness.ready,
                detail: format!(
                    "{}pod firewall: in place (port {})\n",
                    readiness.detail, firewall.port
                ),
            };
        }
        Readiness {
            ready: false,
            detail: format!(
                "not ready: the pod firewall's rules for port {} are not in force (the {} init \
                 container installs them)\n{}",
                firewall.port,
                tokengate_policy::contract::FIREWALL_CONTAINER,
                readiness.detail
            ),
        }
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }

    fn route(&self, path: &str) -> Option<tokengate_runtime::AdminFuture> {
        if !path.starts_with(tokengate_policy::contract::APP_HEALTH_PREFIX) {
            return None;
        }
        let probe = self.probes.get(path).cloned();
        Some(Box::pin(async move {
            let (status, body) = match probe {
                None => (
                    http::StatusCode::NOT_FOUND,
                    "no such application probe\n".to_owned(),
                ),
                Some(probe) => match crate::app_probe::run(&probe).await {
                    Ok(detail) => (http::StatusCode::OK, format!("{detail}\n")),
                    Err(detail) => {
                        tracing::debug!(container = %probe.container, kind = %probe.kind, %detail, "application probe failed");
                        (http::StatusCode::SERVICE_UNAVAILABLE, format!("{detail}\n"))
                    }
                },
            };
            let mut response =
                http::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
            *response.status_mut() = status;
            response
        }))
    }
}

/// The pod firewall as the sidecar sees it, through its canary rule (the sidecar has no
/// capability to read nf_tables): checked every second until in place, then every ten.
struct FirewallWatch {
    port: u16,
    in_place: std::sync::atomic::AtomicBool,
}

impl FirewallWatch {
    fn new(port: u16) -> Self {
        Self {
            port,
            in_place: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn in_place(&self) -> bool {
        self.in_place.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run(self: Arc<Self>, metrics: Arc<Metrics>, mut shutdown: watch::Receiver<bool>) {
        use crate::firewall::{CanaryState, canary};
        let mut reported: Option<bool> = None;
        loop {
            let state = canary(Duration::from_millis(500)).await;
            let in_place = matches!(state, Ok(CanaryState::InPlace));
            self.in_place
                .store(in_place, std::sync::atomic::Ordering::Relaxed);
            metrics
                .pod_firewall
                .with_label_values(&["in_place"])
                .set(i64::from(in_place));
            metrics
                .pod_firewall
                .with_label_values(&["missing"])
                .set(i64::from(!in_place));
            if reported != Some(in_place) {
                match (&state, in_place) {
                    (_, true) => tracing::info!(
                        port = self.port,
                        "pod firewall in place (port {}): the application accepts connections over loopback only",
                        self.port
                    ),
                    (Err(err), false) => tracing::error!(
                        port = self.port,
                        error = %err,
                        "pod firewall cannot be checked; not ready"
                    ),
                    (Ok(_), false) => tracing::error!(
                        port = self.port,
                        "pod firewall required but its rules are not in force; not ready"
                    ),
                }
                reported = Some(in_place);
            }
            let pause = if in_place {
                Duration::from_secs(10)
            } else {
                Duration::from_secs(1)
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

/// `/ready`: 200 once some key can verify tokens; the body says what each source is doing,
/// so `curl /ready` answers "why is my pod not ready".
fn readiness(gate: &Gate) -> Readiness {
    let active = gate.active();
    let Some(active) = active else {
        return Readiness {
            ready: false,
            detail: "not ready: no policy selects this pod\n".to_owned(),
        };
    };
    let max_stale = gate.keys().settings().max_stale;
    let mut body = format!(
        "policy {} (version {})\n",
        active.policy.name, active.version
    );
    body.push_str(&format!(
        "static keys: {}\n",
        active.policy.verification.static_keys.len()
    ));
    for source in &active.sources {
        match (source.current(max_stale), source.last_error()) {
            (Some(keys), err) => body.push_str(&format!(
                "{}: {} keys, fetched {}s ago{}\n",
                source.id,
                keys.keys.len(),
                keys.fetched_at.elapsed().as_secs(),
                err.map(|e| format!(", last refresh failed: {e}"))
                    .unwrap_or_default()
            )),
            (None, Some(err)) => body.push_str(&format!("{}: no keys: {err}\n", source.id)),
            (None, None) => body.push_str(&format!("{}: not fetched yet\n", source.id)),
        }
    }
    if active.keys_ready(gate.keys()) {
        Readiness {
            ready: true,
            detail: format!("ready\n{body}"),
        }
    } else {
        Readiness {
            ready: false,
            detail: format!("not ready: no usable keys yet\n{body}"),
        }
    }
}
