//! tokengate's sidecar: a reverse proxy that validates the bearer token of every request with
//! the semantics of Azure API Management's `validate-jwt` before the request reaches the
//! application beside it.

pub mod active;
pub mod app_probe;
pub mod authenticate;
pub mod boundary;
pub mod bundle;
pub mod check;
pub mod cli;
pub mod connections;
pub mod extract;
pub mod firewall;
pub mod gate;
pub mod load;
pub mod metrics;
pub mod proxy;
pub mod reject;
pub mod reload;
pub mod server;
#[cfg(test)]
mod testing;
pub mod token;
pub mod token_cache;
pub mod trace;
pub mod verify;

pub use reject::{RejectReason, Rejection};
pub use server::{Running, SidecarConfig, start};
