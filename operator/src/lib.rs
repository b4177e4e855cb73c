//! The tokengate operator: renders the TokenPolicies of each namespace into the bundle its
//! sidecars read (ConfigMap `tokengate-policies`, Secret `tokengate-keys`), a NetworkPolicy per
//! policy with private access, and reports status (Ready, KeysResolved, Conflict, Bypass); and
//! the admission webhooks that inject the sidecar and validate TokenPolicies.

pub mod admin;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod reference;
pub mod render;
pub mod webhook;
