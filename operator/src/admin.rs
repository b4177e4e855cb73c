//! The admin server: `/live`, `/ready` (watches started and, with leader election, this
//! replica's role decided) and `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context as _;
use tokengate_runtime::{AdminState, Readiness, serve_admin};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// What `/ready` reports.
#[derive(Default)]
pub struct Health {
    ready: AtomicBool,
    leader: AtomicBool,
    /// The admission webhook is enabled but has no serving certificate yet.
    webhook_waiting: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.store(leader, Ordering::Relaxed);
    }

    /// Whether the webhook (when enabled) has a certificate to serve with.
    pub fn set_webhook_certificate(&self, loaded: bool) {
        self.webhook_waiting.store(!loaded, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

/// What the operator's admin port reports.
struct OperatorAdmin {
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl AdminState for OperatorAdmin {
    fn readiness(&self) -> Readiness {
        if !self.health.is_ready() {
            return Readiness {
                ready: false,
                detail: "not ready: starting watches\n".to_owned(),
            };
        }
        if self.health.webhook_waiting.load(Ordering::Relaxed) {
            return Readiness {
                ready: false,
                detail: "not ready: the admission webhook has no serving certificate yet\n"
                    .to_owned(),
            };
        }
        let role = if self.health.is_leader() {
            "leader"
        } else {
            "standby"
        };
        Readiness {
            ready: true,
            detail: format!("ready ({role})\n"),
        }
    }

    fn metrics(&self) -> String {
        self.metrics.render()
    }
}

/// Binds the admin address and serves it in the background; returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the admin address {addr}"))?;
    let bound = listener.local_addr().context("admin address")?;
    tokio::spawn(serve_admin(
        listener,
        Arc::new(OperatorAdmin { health, metrics }),
    ));
    Ok(bound)
}
