//! The webhook's TLS: its own certificate authority and serving certificate, created and rotated
//! by the operator and shared by every replica through one Secret, or a certificate from files
//! (cert-manager mode). The serving certificate is swapped in without a restart, and the
//! `caBundle` of both webhook configurations is kept current.
//!
//! Rotation never leaves the API server without a trusted path:
//! - the serving certificate is renewed when a third of its lifetime is left, by the same CA, so
//!   the `caBundle` does not change;
//! - a new CA is created when a third of the current one's lifetime is left, and only published
//!   at first (the `caBundle` holds both); it signs serving certificates once it has been
//!   published for a sixth of its lifetime, and the old CA leaves the bundle when it expires.
//!
//! Replicas agree through the Secret's `resourceVersion`: whichever writes first wins, the
//! others see a conflict, read the new state and find nothing left to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail};
use arc_swap::ArcSwapOption;
use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use serde::{Deserialize, Serialize};
use serde_json::json;

use tokengate_policy::contract;

/// Secret keys, as cert-manager and `kubernetes.io/tls` Secrets name them, plus our state.
pub const TLS_CERT_KEY: &str = "tls.crt";
pub const TLS_KEY_KEY: &str = "tls.key";
pub const CA_BUNDLE_KEY: &str = "ca.crt";
/// The rotation state: every trusted CA with its key and times, and the serving certificate's.
pub const STATE_KEY: &str = "rotation.json";

/// Certificates are valid from a little before they are made, for clocks that lag.
const BACKDATE_SECONDS: i64 = 300;

/// How the self-managed certificates are made.
#[derive(Clone, Debug)]
pub struct RotationSettings {
    pub ca_validity: Duration,
    pub cert_validity: Duration,
    /// DNS names and IP addresses the serving certificate must cover.
    pub hosts: Vec<String>,
}

impl RotationSettings {
    /// How often the state is read and rotation considered: often enough that every replica
    /// picks a renewed certificate up long before the old one expires.
    pub fn check_interval(&self) -> Duration {
        (self.cert_validity / 20).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    pub fn check(&self) -> Result<()> {
        if self.cert_validity < Duration::from_secs(3) {
            bail!("--webhook-cert-validity must be at least 3s");
        }
        if self.ca_validity < self.cert_validity * 3 {
            bail!(
                "--webhook-ca-validity ({}) must be at least three times --webhook-cert-validity ({}), \
                 so that a CA outlives the serving certificates it signs",
                humantime::format_duration(self.ca_validity),
                humantime::format_duration(self.cert_validity)
            );
        }
        if self.hosts.is_empty() {
            bail!("the serving certificate needs at least one host name");
        }
        Ok(())
    }
}

/// A certificate authority the webhook configurations trust.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Authority {
    /// Common name, unique per CA (it names the issuer of serving certificates).
    pub name: String,
    pub certificate: String,
    pub key: String,
    /// Unix seconds.
    pub created: i64,
    pub not_after: i64,
}

/// The serving certificate's facts (its PEM lives in `tls.crt` and `tls.key`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServingFacts {
    pub issuer: String,
    pub not_after: i64,
    pub hosts: Vec<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RotationState {
    /// Oldest first.
    pub authorities: Vec<Authority>,
    pub serving: ServingFacts,
}

/// The certificate material the webhook serves and publishes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Material {
    pub cert_pem: String,
    pub key_pem: String,
    /// What the webhook configurations' `caBundle` must hold; `None` leaves it to others.
    pub ca_bundle: Option<String>,
}

/// The whole content of the self-managed Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ManagedTls {
    pub state: RotationState,
    pub material: Material,
}

impl ManagedTls {
    /// Reads the Secret's data; `None` when it is absent or not ours to understand (it is then
    /// replaced by a fresh CA).
    pub fn from_data(data: &BTreeMap<String, ByteString>) -> Option<ManagedTls> {
        let text = |key: &str| {
            data.get(key)
                .and_then(|v| String::from_utf8(v.0.clone()).ok())
        };
        let state: RotationState = serde_json::from_str(&text(STATE_KEY)?).ok()?;
        Some(ManagedTls {
            material: Material {
                cert_pem: text(TLS_CERT_KEY)?,
                key_pem: text(TLS_KEY_KEY)?,
                ca_bundle: Some(ca_bundle(&state.authorities)),
            },
            state,
        })
    }

    pub fn to_data(&self) -> Result<BTreeMap<String, ByteString>> {
        let state = serde_json::to_string(&self.state).context("writing the rotation state")?;
        let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
        Ok([
            (TLS_CERT_KEY.to_owned(), bytes(&self.material.cert_pem)),
            (TLS_KEY_KEY.to_owned(), bytes(&self.material.key_pem)),
            (
                CA_BUNDLE_KEY.to_owned(),
                bytes(&ca_bundle(&self.state.authorities)),
            ),
            (STATE_KEY.to_owned(), bytes(&state)),
        ]
        .into())
    }
}

fn ca_bundle(authorities: &[Authority]) -> String {
    authorities
        .iter()
        .map(|a| a.certificate.trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn seconds(duration: Duration) -> i64 {
    i64::try_from(duration.as_secs()).unwrap_or(i64::MAX)
}

/// The next state at `now` (Unix seconds), with what changed, or `None` when nothing is due.
pub fn rotate(
    current: Option<&ManagedTls>,
    now: i64,
    settings: &RotationSettings,
) -> Result<Option<(ManagedTls, String)>> {
    let ca_validity = seconds(settings.ca_validity);
    let cert_validity = seconds(settings.cert_validity);
    let mut changes: Vec<String> = Vec::new();
    let mut authorities: Vec<Authority> = current
        .map(|c| c.state.authorities.clone())
        .unwrap_or_default();
    let before = authorities.len();
    authorities.retain(|a| a.not_after > now);
    if authorities.len() < before {
        changes.push(format!(
            "{} expired CA(s) left the bundle",
            before - authorities.len()
        ));
    }
    let newest_ending = authorities.last().map(|a| a.not_after - now);
    if newest_ending.is_none_or(|left| left < ca_validity / 3) {
        let authority = new_authority(now, ca_validity)?;
        changes.push(format!("new CA {} published", authority.name));
        authorities.push(authority);
    }
    // The newest CA that every API server has had time to learn, else the oldest there is.
    let publish_delay = ca_validity / 6;
    let signer = authorities
        .iter()
        .rev()
        .find(|a| now - a.created >= publish_delay)
        .or(authorities.first())
        .ok_or_else(|| anyhow!("no certificate authority"))?
        .clone();

    let serving = current.map(|c| &c.state.serving);
    let mut hosts: Vec<String> = serving.map(|s| s.hosts.clone()).unwrap_or_default();
    for host in &settings.hosts {
        if !hosts.contains(host) {
            hosts.push(host.clone());
        }
    }
    let renew = match serving {
        None => Some("no serving certificate".to_owned()),
        Some(s) if s.issuer != signer.name => Some(format!("signed by {} now", signer.name)),
        Some(s) if s.not_after - now < cert_validity / 3 => {
            Some("serving certificate renewed".to_owned())
        }
        Some(s) if s.hosts != hosts => {
            Some(format!("serving certificate for {}", hosts.join(", ")))
        }
        Some(_) => None,
    };
    let (cert_pem, key_pem, serving) = match (renew, current) {
        (None, Some(_)) if changes.is_empty() => return Ok(None),
        (None, Some(current)) => (
            current.material.cert_pem.clone(),
            current.material.key_pem.clone(),
            current.state.serving.clone(),
        ),
        (reason, _) => {
            changes.push(reason.unwrap_or_else(|| "no serving certificate".to_owned()));
            let not_after = (now + cert_validity).min(signer.not_after);
            let (cert, key) = issue_serving(&signer, &hosts, now, not_after)?;
            let facts = ServingFacts {
                issuer: signer.name.clone(),
                not_after,
                hosts,
            };
            (cert, key, facts)
        }
    };
    let state = RotationState {
        authorities,
        serving,
    };
    let material = Material {
        cert_pem,
        key_pem,
        ca_bundle: Some(ca_bundle(&state.authorities)),
    };
    Ok(Some((ManagedTls { state, material }, changes.join("; "))))
}

fn datetime(unix: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(unix).context("certificate time out of range")
}

fn authority_params(name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())
        .context("building CA certificate parameters")?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn new_authority(now: i64, validity: i64) -> Result<Authority> {
    let name = format!("tokengate-webhook-ca-{now}-{:04x}", rand_suffix());
    let key = KeyPair::generate().context("generating a CA key")?;
    let mut params = authority_params(&name)?;
    params.not_before = datetime(now - BACKDATE_SECONDS)?;
    params.not_after = datetime(now + validity)?;
    let cert = params
        .self_signed(&key)
        .context("self-signing the webhook CA")?;
    Ok(Authority {
        name,
        certificate: cert.pem(),
        key: key.serialize_pem(),
        created: now,
        not_after: now + validity,
    })
}

/// Two replicas creating a CA in the same second still make distinct names.
fn rand_suffix() -> u16 {
    rand::random()
}

fn issue_serving(
    authority: &Authority,
    hosts: &[String],
    now: i64,
    not_after: i64,
) -> Result<(String, String)> {
    let ca_key = KeyPair::from_pem(&authority.key).context("reading the CA key")?;
    let issuer = Issuer::new(authority_params(&authority.name)?, ca_key);
    let mut params = CertificateParams::new(hosts.to_vec())
        .context("building serving certificate parameters")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(
        DnType::CommonName,
        hosts
            .first()
            .map(String::as_str)
            .unwrap_or("tokengate-webhook"),
    );
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = datetime(now - BACKDATE_SECONDS)?;
    params.not_after = datetime(not_after)?;
    let key = KeyPair::generate().context("generating a serving key")?;
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the serving certificate")?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Hands rustls whatever certificate is current; swapped atomically, no restart.
#[derive(Debug, Default)]
pub struct CertificateResolver {
    current: ArcSwapOption<CertifiedKey>,
}

impl CertificateResolver {
    /// Parses PEM material into the serving certificate.
    pub fn load(&self, material: &Material, provider: &CryptoProvider) -> Result<()> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(material.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .context("reading the serving certificate PEM")?;
        if chain.is_empty() {
            bail!("the serving certificate PEM holds no certificate");
        }
        let key = PrivateKeyDer::from_pem_slice(material.key_pem.as_bytes())
            .context("reading the serving key PEM")?;
        let certified = CertifiedKey::from_der(chain, key, provider)
            .context("the serving key does not fit its certificate")?;
        self.current.store(Some(Arc::new(certified)));
        Ok(())
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }
}

impl ResolvesServerCert for CertificateResolver {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.load_full()
    }
}

/// The two webhook configurations whose `caBundle` the operator keeps current.
#[derive(Clone)]
pub struct WebhookConfigurations {
    pub client: kube::Client,
    pub mutating: String,
    pub validating: String,
}

impl WebhookConfigurations {
    /// An owner reference to the mutating configuration, so that the operator's TLS Secret
    /// goes with the configurations (`helm uninstall`, `kubectl delete`) instead of outliving
    /// them. None while the configuration does not exist or cannot be read.
    pub async fn owner(&self) -> Option<OwnerReference> {
        let api = Api::<MutatingWebhookConfiguration>::all(self.client.clone());
        match api.get_opt(&self.mutating).await {
            Ok(Some(configuration)) => Some(OwnerReference {
                api_version: "admissionregistration.k8s.io/v1".to_owned(),
                kind: "MutatingWebhookConfiguration".to_owned(),
                name: self.mutating.clone(),
                uid: configuration.metadata.uid?,
                ..OwnerReference::default()
            }),
            Ok(None) => None,
            Err(err) => {
                tracing::debug!(error = %err, "reading the mutating webhook configuration");
                None
            }
        }
    }

    /// Sets `caBundle` on every webhook of both configurations that does not hold `bundle`;
    /// returns how many entries changed.
    pub async fn ensure_ca_bundle(&self, bundle: &str) -> Result<usize> {
        let encoded = base64::engine::general_purpose::STANDARD.encode(bundle.as_bytes());
        let mut changed = ensure_entries(
            &Api::<MutatingWebhookConfiguration>::all(self.client.clone()),
            &self.mutating,
            &encoded,
        )
        .await?;
        changed += ensure_entries(
            &Api::<ValidatingWebhookConfiguration>::all(self.client.clone()),
            &self.validating,
            &encoded,
        )
        .await?;
        Ok(changed)
    }
}

async fn ensure_entries<K>(api: &Api<K>, name: &str, encoded: &str) -> Result<usize>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + Serialize
        + serde::de::DeserializeOwned,
{
    let kind = K::kind(&()).into_owned();
    let Some(configuration) = api
        .get_opt(name)
        .await
        .with_context(|| format!("reading {kind} {name}"))?
    else {
        bail!(
            "{kind} {name} does not exist: install it (operator/deploy/webhooks.yaml or the chart) \
             so the API server calls the webhook"
        );
    };
    let value = serde_json::to_value(&configuration).context("reading the configuration")?;
    let mut ops = Vec::new();
    for (i, webhook) in value["webhooks"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        if webhook["clientConfig"]["caBundle"].as_str() == Some(encoded) {
            continue;
        }
        // The test guards against the list changing between read and write.
        ops.push(
            json!({"op": "test", "path": format!("/webhooks/{i}/name"), "value": webhook["name"]}),
        );
        ops.push(json!({"op": "add", "path": format!("/webhooks/{i}/clientConfig/caBundle"), "value": encoded}));
    }
    if ops.is_empty() {
        return Ok(0);
    }
    let changed = ops.len() / 2;
    let patch: json_patch::Patch =
        serde_json::from_value(serde_json::Value::Array(ops)).context("building the patch")?;
    api.patch(name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
        .with_context(|| format!("setting the caBundle of {kind} {name}"))?;
    Ok(changed)
}

/// What a certificate source reports to the server on every change.
pub trait MaterialSink: Send + Sync + 'static {
    fn serve(&self, material: &Material, not_after: Option<i64>);
}

/// Keeps the self-managed Secret rotated and the sink fed with its content. Never returns.
pub async fn run_managed(
    secrets: Api<Secret>,
    secret_name: String,
    settings: RotationSettings,
    configurations: WebhookConfigurations,
    sink: Arc<dyn MaterialSink>,
) {
    let interval = settings.check_interval();
    let mut published: Option<String> = None;
    let mut last_bundle_check = tokio::time::Instant::now();
    let mut served: Option<Material> = None;
    loop {
        match sync_managed(&secrets, &secret_name, &settings, &configurations).await {
            Ok(Some(tls)) => {
                if served.as_ref() != Some(&tls.material) {
                    sink.serve(&tls.material, Some(tls.state.serving.not_after));
                    served = Some(tls.material.clone());
                }
                publish_bundle(
                    &configurations,
                    tls.material.ca_bundle.as_deref(),
                    &mut published,
                    &mut last_bundle_check,
                )
                .await;
            }
            // Lost a race with another replica: read again at once.
            Ok(None) => continue,
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "webhook certificate"),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Re-checks the configurations' `caBundle` when it changed, and every 30s in case something
/// (a chart upgrade) reset it.
async fn publish_bundle(
    configurations: &WebhookConfigurations,
    bundle: Option<&str>,
    published: &mut Option<String>,
    last_check: &mut tokio::time::Instant,
) {
    let Some(bundle) = bundle else { return };
    let due =
        published.as_deref() != Some(bundle) || last_check.elapsed() >= Duration::from_secs(30);
    if !due {
        return;
    }
    *last_check = tokio::time::Instant::now();
    match configurations.ensure_ca_bundle(bundle).await {
        Ok(changed) => {
            if changed > 0 {
                tracing::info!(entries = changed, "webhook caBundle updated");
            }
            *published = Some(bundle.to_owned());
        }
        Err(err) => tracing::warn!(error = %format!("{err:#}"), "webhook caBundle"),
    }
}

/// One round: read the Secret, rotate if due and write it back. `Ok(None)`: another replica
/// wrote first.
async fn sync_managed(
    secrets: &Api<Secret>,
    name: &str,
    settings: &RotationSettings,
    configurations: &WebhookConfigurations,
) -> Result<Option<ManagedTls>> {
    let secret = secrets
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {name}"))?;
    let current = secret
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(ManagedTls::from_data);
    // The owner is looked up only while the Secret has none (it may be made before the
    // configurations exist).
    let owner = match &secret {
        Some(s)
            if s.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| !o.is_empty()) =>
        {
            None
        }
        _ => configurations.owner().await,
    };
    let now = unix_now()?;
    let Some((next, changes)) = rotate(current.as_ref(), now, settings)? else {
        if let (Some(owner), Some(existing)) = (&owner, &secret) {
            let patch = json!({"metadata": {
                "resourceVersion": existing.metadata.resource_version,
                "ownerReferences": [owner],
            }});
            // A conflict means another replica wrote first; the next round retries.
            if let Err(err) = secrets
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                tracing::debug!(error = %err, "owning the webhook TLS Secret");
            }
        }
        return current
            .map(Some)
            .ok_or_else(|| anyhow!("Secret {name} holds no state and none was made"));
    };
    let data = next.to_data()?;
    let written = match &secret {
        None => {
            let fresh = Secret {
                metadata: ObjectMeta {
                    name: Some(name.to_owned()),
                    labels: Some(
                        [(
                            contract::MANAGED_BY_LABEL.to_owned(),
                            contract::MANAGER.to_owned(),
                        )]
                        .into(),
                    ),
                    owner_references: owner.clone().map(|o| vec![o]),
                    ..ObjectMeta::default()
                },
                data: Some(data),
                type_: Some("kubernetes.io/tls".to_owned()),
                ..Secret::default()
            };
            secrets.create(&PostParams::default(), &fresh).await
        }
        Some(existing) => {
            // The resourceVersion makes this a compare-and-swap between replicas.
            let mut patch = json!({
                "metadata": {"resourceVersion": existing.metadata.resource_version},
                "data": data,
            });
            if let Some(owner) = &owner {
                patch["metadata"]["ownerReferences"] = json!([owner]);
            }
            secrets
                .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    };
    match written {
        Ok(_) => {
            tracing::info!(secret = name, %changes, "webhook certificates rotated");
            Ok(Some(next))
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(None),
        Err(err) => Err(anyhow!(err).context(format!("writing Secret {name}"))),
    }
}

fn unix_now() -> Result<i64> {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("system clock before 1970")?;
    Ok(seconds(since))
}

/// cert-manager mode: `tls.crt` and `tls.key` (and `ca.crt`, if present, for the
/// configurations' `caBundle`) from a directory, re-read every 2s. Never returns.
pub async fn run_files(
    dir: PathBuf,
    configurations: WebhookConfigurations,
    sink: Arc<dyn MaterialSink>,
) {
    let mut served: Option<Material> = None;
    let mut published: Option<String> = None;
    let mut last_bundle_check = tokio::time::Instant::now();
    loop {
        match read_files(&dir) {
            Ok(material) => {
                if served.as_ref() != Some(&material) {
                    sink.serve(&material, None);
                    served = Some(material.clone());
                }
                publish_bundle(
                    &configurations,
                    material.ca_bundle.as_deref(),
                    &mut published,
                    &mut last_bundle_check,
                )
                .await;
            }
            Err(err) => tracing::warn!(error = %format!("{err:#}"), "webhook certificate files"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

fn read_files(dir: &Path) -> Result<Material> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    };
    let ca_path = dir.join(CA_BUNDLE_KEY);
    Ok(Material {
        cert_pem: read(TLS_CERT_KEY)?,
        key_pem: read(TLS_KEY_KEY)?,
        ca_bundle: ca_path.exists().then(|| read(CA_BUNDLE_KEY)).transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RotationSettings {
        RotationSettings {
            ca_validity: Duration::from_secs(600),
            cert_validity: Duration::from_secs(60),
            hosts: vec![
                "tokengate-webhook.tokengate-system.svc".to_owned(),
                "127.0.0.1".to_owned(),
            ],
        }
    }

    const T0: i64 = 1_800_000_000;

    fn step(current: &ManagedTls, now: i64) -> Option<(ManagedTls, String)> {
        rotate(Some(current), now, &settings()).expect("rotate")
    }

    #[test]
    fn a_fresh_state_has_a_ca_and_a_certificate_it_signed() {
        let (tls, changes) = rotate(None, T0, &settings())
            .expect("rotate")
            .expect("created");
        assert_eq!(tls.state.authorities.len(), 1);
        assert_eq!(tls.state.serving.issuer, tls.state.authorities[0].name);
        assert_eq!(tls.state.serving.not_after, T0 + 60);
        assert!(changes.contains("new CA"), "{changes}");
        // Round trip through the Secret's data.
        let read = ManagedTls::from_data(&tls.to_data().expect("data")).expect("parsed");
        assert_eq!(read, tls);
        // rustls takes it.
        let resolver = CertificateResolver::default();
        resolver
            .load(
                &tls.material,
                &rustls::crypto::aws_lc_rs::default_provider(),
            )
            .expect("loads");
        assert!(resolver.is_loaded());
        // Nothing to do until a third of the certificate's lifetime is left.
        assert!(step(&tls, T0 + 39).is_none());
    }

    #[test]
    fn serving_certificates_renew_under_the_same_ca_and_the_bundle_stays() {
        let (tls, _) = rotate(None, T0, &settings())
            .expect("rotate")
            .expect("created");
        let (renewed, changes) = step(&tls, T0 + 41).expect("renewed");
        assert!(changes.contains("serving certificate renewed"), "{changes}");
        assert_ne!(renewed.material.cert_pem, tls.material.cert_pem);
        assert_eq!(renewed.material.ca_bundle, tls.material.ca_bundle);
        assert_eq!(renewed.state.serving.not_after, T0 + 41 + 60);
    }

    /// A whole CA lifetime, stepped every 5s: the serving certificate is always signed by a CA
    /// in the bundle and valid, and a CA signs only after a sixth of its life in the bundle.
    #[test]
    fn ca_rotation_keeps_every_step_trusted() {
        let (mut tls, _) = rotate(None, T0, &settings())
            .expect("rotate")
            .expect("created");
        let mut bundles_seen = std::collections::BTreeSet::new();
        let mut signers_seen = std::collections::BTreeSet::new();
        let mut published_at: BTreeMap<String, i64> = BTreeMap::new();
        published_at.insert(tls.state.authorities[0].name.clone(), T0);
        for now in (T0..T0 + 2_000).step_by(5) {
            if let Some((next, _)) = step(&tls, now) {
                // What a replica that has not yet seen the change still serves must be
                // trusted by the new bundle, and the other way round: no step breaks calls.
                let issuer_in = |state: &RotationState, issuer: &str| {
                    state.authorities.iter().any(|a| a.name == issuer)
                };
                assert!(
                    issuer_in(&next.state, &tls.state.serving.issuer)
                        || tls.state.serving.not_after <= now,
                    "the old certificate's CA left the bundle while it was in use"
                );
                tls = next;
            }
            for authority in &tls.state.authorities {
                published_at.entry(authority.name.clone()).or_insert(now);
            }
            let serving = &tls.state.serving;
            assert!(
                serving.not_after > now,
                "expired certificate served at {now}"
            );
            let signer = tls
                .state
                .authorities
                .iter()
                .find(|a| a.name == serving.issuer)
                .expect("the signer is in the bundle");
            assert!(signer.not_after >= serving.not_after);
            assert!(
                now - published_at[&signer.name] >= 100 || signer == &tls.state.authorities[0],
                "a CA signed before it was published long enough"
            );
            bundles_seen.insert(tls.material.ca_bundle.clone());
            signers_seen.insert(serving.issuer.clone());
        }
        assert!(signers_seen.len() >= 3, "CAs rotated: {signers_seen:?}");
        assert!(bundles_seen.len() >= 5, "bundles: {}", bundles_seen.len());
    }

    #[test]
    fn a_new_host_reissues_the_certificate_for_all_hosts() {
        let (tls, _) = rotate(None, T0, &settings())
            .expect("rotate")
            .expect("created");
        let mut more = settings();
        more.hosts = vec!["10.0.0.9".to_owned()];
        let (next, _) = rotate(Some(&tls), T0 + 1, &more)
            .expect("rotate")
            .expect("reissued");
        assert_eq!(next.state.serving.hosts.len(), 3);
        // The replica with fewer hosts does not take them away again.
        assert!(step(&next, T0 + 2).is_none());
    }

    #[test]
    fn settings_are_checked() {
        let mut bad = settings();
        bad.ca_validity = Duration::from_secs(100);
        assert!(bad.check().is_err());
        assert!(settings().check().is_ok());
        assert_eq!(settings().check_interval(), Duration::from_secs(3));
    }
}
