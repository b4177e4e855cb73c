//! Kubeconfig files for the local API server, and kube clients built from them.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

/// How a kubeconfig user authenticates.
#[derive(Clone, Debug)]
pub enum Credentials {
    ClientCertificate { cert_pem: String, key_pem: String },
    Token(String),
}

/// Writes a single-context kubeconfig (JSON, which every YAML reader accepts) readable only by
/// its owner, since it holds credentials.
pub fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca_pem: &str,
    user: &str,
    credentials: &Credentials,
    namespace: Option<&str>,
) -> Result<()> {
    let user_entry = match credentials {
        Credentials::ClientCertificate { cert_pem, key_pem } => json!({
            "client-certificate-data": STANDARD.encode(cert_pem),
            "client-key-data": STANDARD.encode(key_pem),
        }),
        Credentials::Token(token) => json!({ "token": token }),
    };
    let mut context = json!({ "cluster": "tokengate", "user": user });
    if let Some(namespace) = namespace {
        context["namespace"] = json!(namespace);
    }
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{
            "name": "tokengate",
            "cluster": {
                "server": server,
                "certificate-authority-data": STANDARD.encode(ca_pem),
            },
        }],
        "users": [{ "name": user, "user": user_entry }],
        "contexts": [{ "name": "tokengate", "context": context }],
        "current-context": "tokengate",
    });
    let text = serde_json::to_string_pretty(&config).context("serializing a kubeconfig")?;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating kubeconfig {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing kubeconfig {}", path.display()))
}

/// A client for the kubeconfig at `path`.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading kubeconfig {}", path.display()))?;
    kube::Client::try_from(config)
        .with_context(|| format!("building a client from {}", path.display()))
}
