//! Serving a process's explicit Prometheus registry.

use prometheus::{Encoder as _, Registry, TextEncoder};

/// `registry` in the text exposition format.
pub fn encode_text(registry: &Registry) -> String {
    let mut buffer = Vec::new();
    if let Err(err) = TextEncoder::new().encode(&registry.gather(), &mut buffer) {
        tracing::warn!(error = %err, "encoding metrics failed");
    }
    String::from_utf8(buffer).unwrap_or_default()
}
