//! The sidecar's integration tests, one binary: the real sidecar on 127.0.0.1 between real
//! clients, the test identity provider and a recording upstream. Select a suite with its module
//! name, e.g. `cargo test -p tokengate-sidecar --test it -- reload::`.

mod support;

mod attacks;
mod boundary;
mod bundle;
mod cli;
mod connections;
mod delivery;
mod entra;
mod firewall;
mod raw;
mod reload;
mod resilience;
mod secrets;
mod startup;
mod streaming;
mod token_cache;
mod validation;
