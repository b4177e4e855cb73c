//! TLS for the test servers: one rustls server configuration (HTTP/1.1 and HTTP/2, the aws-lc-rs
//! provider), from a certificate in memory or from PEM files. Clients use the key fetches'
//! connector, [`tokengate_keys::https_connector`].

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, Result, bail};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A server configuration serving `chain` with `key`, for HTTP/1.1 and HTTP/2.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate and key do not make a TLS identity")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// [`server_config`] for the certificate chain in `cert_file` and the key in `key_file` (PEM).
pub fn server_config_from_files(cert_file: &Path, key_file: &Path) -> Result<rustls::ServerConfig> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading certificates from {}", cert_file.display()))?;
    if chain.is_empty() {
        bail!("{} holds no PEM certificate", cert_file.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("reading a private key from {}", key_file.display()))?;
    server_config(chain, key)
}
