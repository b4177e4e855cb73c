//! Process plumbing shared by tokengate's binaries (the sidecar and the operator): logging,
//! stop signals, the admin HTTP server (`/live`, `/ready`, `/metrics`) and exit codes.

pub mod admin;
pub mod exit;
pub mod logging;
pub mod metrics;
pub mod signals;

pub use admin::{AdminFuture, AdminState, Readiness, serve_admin};
pub use logging::{LogFormat, init_logging};
pub use signals::wait_for_signal;
