//! Client connections of the proxy port: a limit with shedding, a deadline for the first
//! request (protocol detection included), an idle timeout, and short timeouts under pressure.
//!
//! hyper-util's auto builder has no timer while it detects the protocol, and HTTP/2 has no
//! idle timeout at all, so a connection that sends nothing, or only the HTTP/2 preface, would
//! hold its descriptor for ever. Here every connection is watched from its accept on.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// Timeout that idle and new connections get while the proxy is under pressure.
pub const PRESSURE_TIMEOUT: Duration = Duration::from_secs(1);

/// Descriptors kept aside for the admin port, key fetches, policy files and the like.
const RESERVED_DESCRIPTORS: u64 = 128;

#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Time a new connection has to start its first request, protocol detection included.
    pub first_request_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    /// Client connections held at most; new ones beyond are closed at once. From 80% of it
    /// on, idle and new connections get [`PRESSURE_TIMEOUT`], until the count is below 80%.
    pub max_connections: usize,
}

pub struct Connections {
    limits: ConnectionLimits,
    pressure_at: usize,
    open: AtomicUsize,
    pressure: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

impl Connections {
    pub fn new(limits: ConnectionLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        let max = limits.max_connections.max(1);
        Arc::new(Self {
            pressure_at: (max * 4 / 5).max(1),
            limits: ConnectionLimits {
                max_connections: max,
                ..limits
            },
            open: AtomicUsize::new(0),
            pressure: watch::channel(false).0,
            metrics,
        })
    }

    pub fn limits(&self) -> &ConnectionLimits {
        &self.limits
    }

    /// Admits an accepted connection, or sheds it (`None`: the caller closes it) when the
    /// limit is reached.
    pub fn admit(self: &Arc<Self>) -> Option<Admission> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        if open > self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::AcqRel);
            self.metrics
                .connections_closed
                .with_label_values(&["shed"])
                .inc();
            return None;
        }
        self.opened_or_closed(open);
        Some(Admission {
            connections: Arc::clone(self),
            activity: Arc::new(Activity::new()),
        })
    }

    fn opened_or_closed(&self, open: usize) {
        self.metrics
            .connections
            .set(i64::try_from(open).unwrap_or(i64::MAX));
        let under = open >= self.pressure_at;
        self.pressure.send_if_modified(|pressure| {
            let changed = *pressure != under;
            *pressure = under;
            changed
        });
    }
}

/// One admitted connection; dropping it releases its place.
pub struct Admission {
    connections: Arc<Connections>,
    pub activity: Arc<Activity>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        let open = self.connections.open.fetch_sub(1, Ordering::AcqRel) - 1;
        self.connections.opened_or_closed(open);
    }
}

impl Admission {
    /// Resolves when the connection has outlived its deadline, with the reason (a metric
    /// label). Never while a request is in flight.
    ///
    /// Requests do not wake this: while they come and go a deadline only moves later, so
    /// sleeping until the earliest the deadline can be and then looking again is never late,
    /// and a request costs two atomic updates rather than two wake-ups of its connection.
    pub async fn expired(&self) -> &'static str {
        let limits = &self.connections.limits;
        let mut pressure = self.connections.pressure.subscribe();
        loop {
            let under_pressure = *pressure.borrow_and_update();
            let limit = |timeout: Duration| {
                if under_pressure {
                    timeout.min(PRESSURE_TIMEOUT)
                } else {
                    timeout
                }
            };
            let (first_request_timeout, idle_timeout) = (
                limit(limits.first_request_timeout),
                limit(limits.idle_timeout),
            );
            let now = Instant::now();
            let activity = &self.activity;
            let later = |timeout: Duration| now.checked_add(timeout).unwrap_or(now);
            let wake = if activity.in_flight.load(Ordering::Acquire) > 0 {
                // Checked again later; requests in flight are never cut. The idle deadline
                // of a request still in flight is at least this far away.
                later(idle_timeout)
            } else {
                let started = activity.started.load(Ordering::Acquire) > 0;
                let (since, timeout, reason) = if started {
                    (activity.last_finished(), idle_timeout, "idle_timeout")
                } else {
                    (
                        activity.accepted,
                        first_request_timeout,
                        "first_request_timeout",
                    )
                };
                let deadline = since.checked_add(timeout).unwrap_or(later(timeout));
                if deadline <= now {
                    self.connections
                        .metrics
                        .connections_closed
                        .with_label_values(&[reason])
                        .inc();
                    return reason;
                }
                if started {
                    deadline
                } else {
                    // A first request may yet start and end at once: its idle deadline would
                    // come before this one when the idle timeout is the shorter.
                    deadline.min(later(idle_timeout))
                }
            };
            tokio::select! {
                () = tokio::time::sleep_until(wake.into()) => {}
                changed = pressure.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(wake.into()).await;
                    }
                }
            }
        }
    }
}

/// What a connection is doing: requests started and in flight, and when the last one ended.
pub struct Activity {
    accepted: Instant,
    started: AtomicU64,
    in_flight: AtomicUsize,
    /// Milliseconds from `accepted` to the end of the last request.
    last_finished_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Self {
            accepted: Instant::now(),
            started: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            last_finished_ms: AtomicU64::new(0),
        }
    }

    /// Marks a request in flight until the returned guard is dropped (with the response body).
    pub fn request(self: &Arc<Self>) -> InFlight {
        self.started.fetch_add(1, Ordering::AcqRel);
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(self))
    }

    fn last_finished(&self) -> Instant {
        self.accepted + Duration::from_millis(self.last_finished_ms.load(Ordering::Acquire))
    }
}

pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let elapsed = u64::try_from(self.0.accepted.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.last_finished_ms.fetch_max(elapsed, Ordering::AcqRel);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
pub struct TrackedBody<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> TrackedBody<B> {
    pub fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Raises the soft descriptor limit to the hard one and returns how many client connections
/// fit: each may need a second descriptor for its upstream connection, and some are kept aside.
pub fn connections_that_fit(wanted: usize) -> usize {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    let below_hard = match (limit.current, limit.maximum) {
        (Some(current), Some(maximum)) => current < maximum,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below_hard {
        limit.current = limit.maximum;
        if let Err(err) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %err, "cannot raise the descriptor limit");
        }
        limit = getrlimit(Resource::Nofile);
    }
    match limit.current {
        Some(descriptors) => {
            let fit = descriptors.saturating_sub(RESERVED_DESCRIPTORS) / 2;
            wanted
                .min(usize::try_from(fit).unwrap_or(usize::MAX))
                .max(1)
        }
        None => wanted,
    }
}
