//! `tokengate-operator`: command line and process wiring.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use kube::runtime::events::Reporter;
use tokengate_keys::{KeyCache, KeySettings};

use crate::admin::{self, Health};
use crate::controller::{self, Timing};
use crate::leader::{LeaderElector, LeaseSettings};
use crate::metrics::Metrics;

/// Reconciles TokenPolicy resources into the bundles tokengate sidecars enforce. Runs in a
/// cluster (service-account credentials) or from KUBECONFIG.
#[derive(Debug, clap::Parser)]
#[command(name = "tokengate-operator", version)]
pub struct Cli {
    /// Address of the admin server (`/live`, `/ready`, `/metrics`).
    #[arg(long, default_value = "0.0.0.0:8080", env = "TOKENGATE_ADMIN")]
    pub admin: SocketAddr,

    /// Elect a leader through a Lease, so several replicas can run; only the leader reconciles.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "TOKENGATE_LEADER_ELECT")]
    pub leader_elect: bool,

    /// Namespace of the Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "tokengate-system")]
    pub lease_namespace: String,

    /// Name of the Lease.
    #[arg(long, default_value = "tokengate-operator")]
    pub lease_name: String,

    /// This replica's identity in the Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,

    /// How long a Lease stays valid without renewal.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,

    /// How often each key source in use is fetched again, to keep `KeysResolved` current and
    /// to deliver fresh keys to the sidecars in ConfigMap `tokengate-jwks` (a failed source is
    /// retried every 10s).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub key_recheck: Duration,

    /// Timeout of one key-source check (discovery and JWKS together).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub key_fetch_timeout: Duration,

    /// PEM bundle trusted besides the system roots when checking key sources.
    #[arg(long)]
    pub extra_ca_file: Option<PathBuf>,

    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "TOKENGATE_LOG_FORMAT")]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub webhook: crate::webhook::WebhookArgs,
}

use tokengate_runtime::wait_for_signal;
pub use tokengate_runtime::{LogFormat, init_logging};

/// Runs until SIGTERM/SIGINT (exit 0) or until leadership is lost (error: the process exits
/// and its restart stands by as a candidate again).
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(Metrics::new().context("registering metrics")?);
    let health = Arc::new(Health::default());
    let admin_addr = admin::serve(cli.admin, Arc::clone(&health), Arc::clone(&metrics)).await?;
    tracing::info!(admin = %admin_addr, "admin server listening");
    // Every replica serves the webhooks, the standby too: start them before the election.
    let webhook = crate::webhook::start(
        client.clone(),
        &cli.webhook,
        &cli.lease_namespace,
        Arc::clone(&metrics),
        Arc::clone(&health),
    )
    .await?;
    if let Some(webhook) = &webhook {
        tracing::info!(webhook = %webhook.addr(), "admission webhooks listening");
    }

    let identity = cli.identity.clone().unwrap_or_else(default_identity);
    let elector = cli.leader_elect.then(|| {
        LeaderElector::new(
            client.clone(),
            LeaseSettings {
                namespace: cli.lease_namespace.clone(),
                name: cli.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: cli.lease_duration,
                retry_period: (cli.lease_duration / 5).max(Duration::from_millis(500)),
            },
        )
    });
    let shutdown = wait_for_signal();
    tokio::pin!(shutdown);

    if let Some(elector) = &elector {
        // A standby replica is healthy: ready, not leading.
        health.set_ready(true);
        tokio::select! {
            acquired = elector.acquire() => acquired?,
            () = &mut shutdown => return Ok(()),
        }
    }
    health.set_leader(true);

    let keys = KeyCache::new(
        KeySettings {
            refresh_interval: cli.key_recheck,
            retry_interval: Duration::from_secs(10),
            fetch_timeout: cli.key_fetch_timeout,
            user_agent: tokengate_keys::user_agent("tokengate-operator"),
            ..KeySettings::default()
        },
        Arc::clone(&metrics.keys),
        cli.extra_ca_file.as_deref(),
    )?;
    let timing = Timing::default();
    let reporter = Reporter {
        controller: "tokengate-operator".to_string(),
        instance: Some(identity),
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let ready = Arc::clone(&health);
    let controller = controller::run(
        client,
        metrics,
        keys,
        timing,
        reporter,
        move || ready.set_ready(true),
        async move {
            let _ = stop_rx.await;
        },
    );
    // Boxed, so that dropping it on the way out ends its watches and reconciles.
    let mut controller = Box::pin(controller);
    let hold = async {
        match &elector {
            Some(elector) => elector.hold().await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(hold);
    let outcome = tokio::select! {
        () = &mut controller => Ok(()),
        lost = &mut hold => lost,
        () = &mut shutdown => {
            tracing::info!("shutting down");
            let _ = stop_tx.send(());
            // Reconciles under way get a moment to finish; with the API server gone they
            // would wait for their own timeout, so they are abandoned (a later leader redoes
            // them).
            if tokio::time::timeout(SHUTDOWN_GRACE, &mut controller).await.is_err() {
                tracing::warn!("reconciles still running after {SHUTDOWN_GRACE:?}; abandoning them");
            }
            Ok(())
        }
    };
    // Ends the watches and reconciles (if still running) before the lease is given up.
    drop(controller);
    if let Some(elector) = &elector {
        elector.release(LEASE_RELEASE_LIMIT).await;
    }
    tracing::info!("stopped");
    outcome
}

/// How long reconciles under way may take to finish after SIGTERM.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How long giving up the lease may take on the way out.
const LEASE_RELEASE_LIMIT: Duration = Duration::from_secs(2);

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "tokengate-operator".to_string());
    format!("{host}-{}", std::process::id())
}
