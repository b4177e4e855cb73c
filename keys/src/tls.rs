//! TLS for key fetches: the system roots plus an optional extra CA bundle, with the aws-lc-rs
//! provider (the same crypto backend as jsonwebtoken's).

use std::sync::Arc;

use anyhow::{Context as _, bail};
use hyper_util::client::legacy::connect::HttpConnector;

/// An https (and http) connector trusting the system roots plus the PEM bundle `extra_ca`, the
/// one key fetches use.
pub fn https_connector(
    extra_ca: Option<&std::path::Path>,
) -> anyhow::Result<hyper_rustls::HttpsConnector<HttpConnector>> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        // A malformed system certificate must not take the sidecar down.
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let pem =
            std::fs::read(path).with_context(|| format!("reading CA bundle {}", path.display()))?;
        let certs = pem_certificates(&pem);
        if certs.is_empty() {
            bail!("CA bundle {} holds no PEM certificates", path.display());
        }
        for cert in certs {
            roots
                .add(cert)
                .with_context(|| format!("CA bundle {}: invalid certificate", path.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_or_http()
        .enable_http1()
        .build())
}

pub(crate) fn pem_certificates(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}
