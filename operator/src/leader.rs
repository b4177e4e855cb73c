//! Leader election through a `coordination.k8s.io/v1` Lease, so two replicas are safe: only the
//! holder reconciles; the other waits, and takes over when the holder stops renewing.
//!
//! Every write carries the Lease's `resourceVersion`, so two candidates racing for an expired
//! lease cannot both win: the API server refuses the second write with a conflict.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::{ObjectMeta, PostParams};

#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    /// This replica's identity (the pod name in a cluster).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How often the holder renews, and candidates retry.
    pub retry_period: Duration,
}

pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
}

impl LeaderElector {
    pub fn new(client: kube::Client, settings: LeaseSettings) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) -> Result<()> {
        let mut waiting_logged = false;
        loop {
            match self.attempt().await {
                Ok(true) => {
                    tracing::info!(
                        lease = %self.settings.name,
                        identity = %self.settings.identity,
                        "became leader"
                    );
                    return Ok(());
                }
                Ok(false) if !waiting_logged => {
                    tracing::info!(lease = %self.settings.name, "another replica leads; standing by");
                    waiting_logged = true;
                }
                Ok(false) => {}
                Err(err) => tracing::warn!(error = %format!("{err:#}"), "leader election"),
            }
            tokio::time::sleep(self.settings.retry_period).await;
        }
    }

    /// Renews the lease until renewal has failed for a whole lease duration (another replica
    /// may then hold it), and returns that as an error: the caller must stop reconciling.
    pub async fn hold(&self) -> Result<()> {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.settings.retry_period).await;
            match self.attempt().await {
                Ok(true) => last_renewal = tokio::time::Instant::now(),
                Ok(false) => bail!("lost the lease {} to another replica", self.settings.name),
                Err(err) => tracing::warn!(error = %format!("{err:#}"), "renewing the lease"),
            }
            if last_renewal.elapsed() >= self.settings.lease_duration {
                bail!(
                    "could not renew the lease {} for {:?}",
                    self.settings.name,
                    self.settings.lease_duration
                );
            }
        }
    }

    /// Gives the lease up (on shutdown), so a standby replica takes over at once. Best effort,
    /// within `limit`: an API server that does not answer must not hold up the exit (the lease
    /// then expires by itself).
    pub async fn release(&self, limit: Duration) {
        if tokio::time::timeout(limit, self.try_release())
            .await
            .is_err()
        {
            tracing::warn!(
                lease = %self.settings.name,
                "the API server did not answer within {limit:?}; leaving the lease to expire"
            );
        }
    }

    async fn try_release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.settings.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.settings.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        if let Err(err) = self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            tracing::warn!(error = %err, "releasing the lease");
        }
    }

    /// [`Self::try_acquire_or_renew`] within one retry period: a request the API server never
    /// answers must not keep a leader believing in a lease that has expired meanwhile.
    async fn attempt(&self) -> Result<bool> {
        let limit = self.settings.retry_period;
        tokio::time::timeout(limit, self.try_acquire_or_renew())
            .await
            .unwrap_or_else(|_| bail!("no answer from the API server within {limit:?}"))
    }

    /// `true` when this replica holds the lease after the call.
    async fn try_acquire_or_renew(&self) -> Result<bool> {
        let now = Timestamp::now();
        let duration_seconds = i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(15);
        let existing = self
            .api
            .get_opt(&self.settings.name)
            .await
            .with_context(|| format!("reading Lease {}", self.settings.name))?;
        let Some(mut lease) = existing else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.settings.name.clone()),
                    namespace: Some(self.settings.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.settings.identity.clone()),
                    lease_duration_seconds: Some(duration_seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.is_already_exists() => Ok(false),
                Err(err) => Err(err).context("creating the Lease"),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let mine = spec.holder_identity.as_deref() == Some(self.settings.identity.as_str());
        if !mine {
            let held = spec
                .holder_identity
                .as_deref()
                .is_some_and(|h| !h.is_empty());
            let valid_for = SignedDuration::from_secs(i64::from(
                spec.lease_duration_seconds.unwrap_or(duration_seconds),
            ));
            let expired = spec
                .renew_time
                .as_ref()
                .is_none_or(|renewed| renewed.0 + valid_for < now);
            if held && !expired {
                return Ok(false);
            }
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            spec.holder_identity = Some(self.settings.identity.clone());
        }
        spec.renew_time = Some(MicroTime(now));
        spec.lease_duration_seconds = Some(duration_seconds);
        match self
            .api
            .replace(&self.settings.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(err) => Err(err).context("updating the Lease"),
        }
    }
}
