//! Throw-away certificates for the control plane and for test servers (rcgen, ECDSA P-256).

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate with its private key, in PEM and DER.
#[derive(Clone, Debug)]
pub struct CertifiedKey {
    pub cert_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl CertifiedKey {
    /// The private key in the form rustls takes.
    pub fn private_key_der(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// A server configuration serving this certificate ([`crate::https::server_config`]).
    pub fn server_config(&self) -> Result<rustls::ServerConfig> {
        crate::https::server_config(vec![self.cert_der.clone()], self.private_key_der())
    }
}

/// A self-signed certificate authority that issues server and client certificates.
pub struct CertificateAuthority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    pub fn new(common_name: &str) -> Result<Self> {
        let key = KeyPair::generate().context("generating a CA key")?;
        let mut params = CertificateParams::new(Vec::<String>::new())
            .context("building CA certificate parameters")?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params
            .self_signed(&key)
            .context("self-signing the CA certificate")?;
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM): the trust anchor clients need.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// A serving certificate; entries of `sans` that parse as IP addresses become IP SANs.
    pub fn issue_server(&self, common_name: &str, sans: &[&str]) -> Result<CertifiedKey> {
        let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
        let mut params =
            CertificateParams::new(sans).context("building server certificate parameters")?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params)
    }

    /// A client certificate; Kubernetes reads the user from CN and the groups from O.
    pub fn issue_client(&self, common_name: &str, organizations: &[&str]) -> Result<CertifiedKey> {
        let mut params = CertificateParams::new(Vec::<String>::new())
            .context("building client certificate parameters")?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        for organization in organizations {
            params
                .distinguished_name
                .push(DnType::OrganizationName, *organization);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params)
    }

    fn issue(&self, mut params: CertificateParams) -> Result<CertifiedKey> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().context("generating a key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .context("signing a certificate")?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        })
    }
}

/// A fresh key pair as (PKCS#8 private key PEM, public key PEM), e.g. for signing
/// service-account tokens.
pub fn generate_key_pair_pem() -> Result<(String, String)> {
    let key = KeyPair::generate().context("generating a key")?;
    Ok((key.serialize_pem(), key.public_key_pem()))
}
