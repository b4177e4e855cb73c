//! The admission webhooks, served by every replica (the standby too, so they run before and
//! apart from leader election):
//! - `POST /inject`: Pod CREATE, injects the sidecar ([`inject`]);
//! - `POST /validate`: TokenPolicy CREATE/UPDATE, refuses what CEL cannot ([`validate`]).
//!
//! The decisions are pure functions; [`server`] is the HTTP layer and [`tls`] the certificates.
//! `operator/deploy/webhooks.yaml` registers both with the API server.

pub mod inject;
pub mod server;
pub mod tls;
pub mod validate;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::core::v1::{ResourceRequirements, Secret};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::Api;
use tokengate_policy::contract;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::admin::Health;
use crate::metrics::Metrics;
use inject::{InjectSettings, SidecarSettings};
use tls::{CertificateResolver, Material, MaterialSink, RotationSettings, WebhookConfigurations};
use validate::PolicyRules;

/// Path of the mutating webhook (Pod CREATE).
pub const INJECT_PATH: &str = "/inject";
/// Path of the validating webhook (TokenPolicy CREATE/UPDATE).
pub const VALIDATE_PATH: &str = "/validate";

const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The webhooks' flags (each also settable through its environment variable, for the chart).
#[derive(Clone, Debug, clap::Args)]
pub struct WebhookArgs {
    /// Serve the admission webhooks.
    #[arg(long = "webhook", default_value_t = true, action = clap::ArgAction::Set, env = "TOKENGATE_WEBHOOK")]
    pub enabled: bool,

    /// Address of the webhooks' HTTPS server.
    #[arg(
        long = "webhook-listen",
        default_value = "0.0.0.0:9443",
        env = "TOKENGATE_WEBHOOK_LISTEN"
    )]
    pub listen: SocketAddr,

    /// Serve `tls.crt` and `tls.key` from this directory (re-read when they change; `ca.crt`, if
    /// present, goes into the webhook configurations), e.g. a cert-manager Secret's mount.
    /// Without it the operator makes and rotates its own CA and certificate.
    #[arg(long = "webhook-cert-dir", env = "TOKENGATE_WEBHOOK_CERT_DIR")]
    pub cert_dir: Option<PathBuf>,

    /// Secret (in the operator's namespace) that holds the operator's own CA and serving
    /// certificate, shared by every replica.
    #[arg(
        long = "webhook-secret",
        default_value = "tokengate-webhook-tls",
        env = "TOKENGATE_WEBHOOK_SECRET"
    )]
    pub secret: String,

    /// Service in front of the webhook; the certificate covers its DNS names.
    #[arg(
        long = "webhook-service",
        default_value = "tokengate-webhook",
        env = "TOKENGATE_WEBHOOK_SERVICE"
    )]
    pub service: String,

    /// Further DNS names or IP addresses the certificate covers (repeatable, comma-separated).
    #[arg(
        long = "webhook-host",
        value_delimiter = ',',
        env = "TOKENGATE_WEBHOOK_HOSTS"
    )]
    pub hosts: Vec<String>,

    /// Lifetime of the operator's own CA; a successor is published when a third is left.
    #[arg(long = "webhook-ca-validity", default_value = "365d", value_parser = humantime::parse_duration, env = "TOKENGATE_WEBHOOK_CA_VALIDITY")]
    pub ca_validity: Duration,

    /// Lifetime of the serving certificate; renewed when a third is left.
    #[arg(long = "webhook-cert-validity", default_value = "30d", value_parser = humantime::parse_duration, env = "TOKENGATE_WEBHOOK_CERT_VALIDITY")]
    pub cert_validity: Duration,

    /// MutatingWebhookConfiguration whose `caBundle` the operator keeps current.
    #[arg(
        long = "mutating-webhook-configuration",
        default_value = "tokengate-injector",
        env = "TOKENGATE_MUTATING_WEBHOOK_CONFIGURATION"
    )]
    pub mutating_configuration: String,

    /// ValidatingWebhookConfiguration whose `caBundle` the operator keeps current.
    #[arg(
        long = "validating-webhook-configuration",
        default_value = "tokengate-policy-validator",
        env = "TOKENGATE_VALIDATING_WEBHOOK_CONFIGURATION"
    )]
    pub validating_configuration: String,

    /// Admit TokenPolicies whose key sources use plain http on any host (loopback hosts are
    /// always admitted).
    #[arg(long, env = "TOKENGATE_ALLOW_HTTP_KEY_SOURCES")]
    pub allow_http_key_sources: bool,

    /// Image of the injected sidecar (its entrypoint is `tokengate-sidecar`).
    #[arg(long, default_value = concat!("ghcr.io/tokengate/tokengate-sidecar:", env!("CARGO_PKG_VERSION")), env = "TOKENGATE_SIDECAR_IMAGE")]
    pub sidecar_image: String,

    /// imagePullPolicy of the sidecar (Kubernetes' default when unset).
    #[arg(long, value_parser = ["Always", "IfNotPresent", "Never"], env = "TOKENGATE_SIDECAR_IMAGE_PULL_POLICY")]
    pub sidecar_image_pull_policy: Option<String>,

    /// Version recorded on injected pods (annotation `tokengate.dev/sidecar-version`).
    #[arg(long, default_value = VERSION, env = "TOKENGATE_SIDECAR_VERSION")]
    pub sidecar_version: String,

    #[arg(long, default_value = "50m", env = "TOKENGATE_SIDECAR_CPU_REQUEST")]
    pub sidecar_cpu_request: String,

    /// No CPU limit unless set: throttling an auth proxy adds latency to every request.
    #[arg(long, env = "TOKENGATE_SIDECAR_CPU_LIMIT")]
    pub sidecar_cpu_limit: Option<String>,

    #[arg(long, default_value = "32Mi", env = "TOKENGATE_SIDECAR_MEMORY_REQUEST")]
    pub sidecar_memory_request: String,

    /// Empty for no memory limit.
    #[arg(long, default_value = "128Mi", env = "TOKENGATE_SIDECAR_MEMORY_LIMIT")]
    pub sidecar_memory_limit: Option<String>,

    /// User and group id the sidecar runs as (never root).
    #[arg(long, default_value_t = 65532, value_parser = clap::value_parser!(i64).range(1..), env = "TOKENGATE_SIDECAR_RUN_AS_USER")]
    pub sidecar_run_as_user: i64,

    /// Log format of injected sidecars; the sidecar's default (text) when unset.
    #[arg(long, value_parser = ["text", "json"], env = "TOKENGATE_SIDECAR_LOG_FORMAT")]
    pub sidecar_log_format: Option<String>,

    /// `--upstream-timeout` of injected sidecars (the application's response headers).
    #[arg(long, value_parser = humantime::parse_duration, env = "TOKENGATE_SIDECAR_UPSTREAM_TIMEOUT")]
    pub sidecar_upstream_timeout: Option<Duration>,

    /// `--idle-timeout` of injected sidecars (idle client connections).
    #[arg(long, value_parser = humantime::parse_duration, env = "TOKENGATE_SIDECAR_IDLE_TIMEOUT")]
    pub sidecar_idle_timeout: Option<Duration>,

    /// `--header-read-timeout` of injected sidecars (a client's request headers).
    #[arg(long, value_parser = humantime::parse_duration, env = "TOKENGATE_SIDECAR_HEADER_READ_TIMEOUT")]
    pub sidecar_header_read_timeout: Option<Duration>,

    /// `--drain-timeout` of injected sidecars (in-flight requests after SIGTERM); keep it
    /// below the pods' terminationGracePeriodSeconds.
    #[arg(long, value_parser = humantime::parse_duration, env = "TOKENGATE_SIDECAR_DRAIN_TIMEOUT")]
    pub sidecar_drain_timeout: Option<Duration>,

    /// ConfigMap, in each application's namespace, with a PEM bundle the sidecars trust for
    /// https key sources besides the system roots (an identity provider with a private CA; one
    /// name in every namespace, as trust-manager distributes it). Pods wait for it to exist.
    #[arg(long, env = "TOKENGATE_SIDECAR_TRUST_BUNDLE_CONFIGMAP")]
    pub sidecar_trust_bundle_configmap: Option<String>,

    /// Key of the bundle in `--sidecar-trust-bundle-configmap`.
    #[arg(
        long,
        default_value = "ca.crt",
        env = "TOKENGATE_SIDECAR_TRUST_BUNDLE_KEY"
    )]
    pub sidecar_trust_bundle_key: String,
}

impl WebhookArgs {
    /// The injection settings these flags describe.
    pub fn inject_settings(&self, operator_namespace: &str) -> Result<InjectSettings> {
        let mut requests = std::collections::BTreeMap::new();
        let mut limits = std::collections::BTreeMap::new();
        let mut quantity = |flag: &str, value: &Option<String>, resource: &str, limit: bool| {
            // An empty value leaves the resource out (e.g. no memory limit).
            let Some(value) = value.as_ref().filter(|v| !v.is_empty()) else {
                return Ok(());
            };
            if !is_quantity(value) {
                bail!("{flag} {value:?} is not a Kubernetes quantity (like 50m, 0.5, 64Mi)");
            }
            let target = if limit { &mut limits } else { &mut requests };
            target.insert(resource.to_owned(), Quantity(value.clone()));
            Ok(())
        };
        quantity(
            "--sidecar-cpu-request",
            &Some(self.sidecar_cpu_request.clone()),
            "cpu",
            false,
        )?;
        quantity(
            "--sidecar-memory-request",
            &Some(self.sidecar_memory_request.clone()),
            "memory",
            false,
        )?;
        quantity("--sidecar-cpu-limit", &self.sidecar_cpu_limit, "cpu", true)?;
        quantity(
            "--sidecar-memory-limit",
            &self.sidecar_memory_limit,
            "memory",
            true,
        )?;
        if self.sidecar_image.trim().is_empty() {
            bail!("--sidecar-image must not be empty");
        }
        let trust_bundle = self.trust_bundle()?;
        Ok(InjectSettings {
            sidecar: SidecarSettings {
                image: self.sidecar_image.clone(),
                image_pull_policy: self.sidecar_image_pull_policy.clone(),
                version: self.sidecar_version.clone(),
                resources: ResourceRequirements {
                    requests: Some(requests),
                    limits: (!limits.is_empty()).then_some(limits),
                    claims: None,
                },
                run_as_user: self.sidecar_run_as_user,
                tuning: contract::SidecarTuning {
                    log_format: self.sidecar_log_format.clone(),
                    upstream_timeout: self.sidecar_upstream_timeout,
                    idle_timeout: self.sidecar_idle_timeout,
                    header_read_timeout: self.sidecar_header_read_timeout,
                    drain_timeout: self.sidecar_drain_timeout,
                    trust_bundle,
                },
            },
            excluded_namespaces: vec!["kube-system".to_owned(), operator_namespace.to_owned()],
        })
    }

    /// `--sidecar-trust-bundle-*`, checked: an empty name means none.
    fn trust_bundle(&self) -> Result<Option<contract::TrustBundle>> {
        let Some(name) = self
            .sidecar_trust_bundle_configmap
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty())
        else {
            return Ok(None);
        };
        if !validate::is_dns_subdomain(name) {
            bail!(
                "--sidecar-trust-bundle-configmap {name:?} is not a ConfigMap name (lowercase letters, digits, '-' and '.')"
            );
        }
        let key = self.sidecar_trust_bundle_key.trim();
        if !validate::is_data_key(key) {
            bail!(
                "--sidecar-trust-bundle-key {key:?} is not a ConfigMap key (letters, digits, '-', '_' and '.')"
            );
        }
        Ok(Some(contract::TrustBundle {
            config_map: name.to_owned(),
            key: key.to_owned(),
        }))
    }

    /// The operator's own certificates: the Service's DNS names plus `--webhook-host`.
    pub fn rotation_settings(&self, operator_namespace: &str) -> RotationSettings {
        let service = &self.service;
        let mut hosts = vec![
            format!("{service}.{operator_namespace}.svc"),
            format!("{service}.{operator_namespace}.svc.cluster.local"),
            format!("{service}.{operator_namespace}"),
        ];
        hosts.extend(
            self.hosts
                .iter()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty()),
        );
        RotationSettings {
            ca_validity: self.ca_validity,
            cert_validity: self.cert_validity,
            hosts,
        }
    }
}

/// A Kubernetes resource quantity: a decimal number with an optional SI, binary-SI or
/// exponent suffix.
fn is_quantity(text: &str) -> bool {
    let text = text.strip_prefix(['+', '-']).unwrap_or(text);
    let digits_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(digits_end);
    let number_ok = !number.is_empty()
        && number != "."
        && number.matches('.').count() <= 1
        && number.chars().any(|c| c.is_ascii_digit());
    let suffix_ok = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix
        .strip_prefix(['e', 'E'])
        .map(|exp| exp.strip_prefix(['+', '-']).unwrap_or(exp))
        .is_some_and(|exp| !exp.is_empty() && exp.chars().all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

/// The running webhook server; dropping it stops serving.
pub struct WebhookServer {
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl WebhookServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Feeds new certificates to the TLS resolver, `/ready` and the expiry metric.
struct ServingSink {
    resolver: Arc<CertificateResolver>,
    provider: Arc<rustls::crypto::CryptoProvider>,
    health: Arc<Health>,
    metrics: Arc<Metrics>,
}

impl MaterialSink for ServingSink {
    fn serve(&self, material: &Material, not_after: Option<i64>) {
        match self.resolver.load(material, &self.provider) {
            Ok(()) => {
                self.health.set_webhook_certificate(true);
                if let Some(not_after) = not_after {
                    self.metrics.webhook_certificate_expiry.set(not_after);
                }
                tracing::info!("webhook serving certificate loaded");
            }
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "webhook serving certificate rejected");
            }
        }
    }
}

/// Binds the webhook port and starts serving and the certificate upkeep in the background.
/// `None` when the webhooks are disabled.
pub async fn start(
    client: kube::Client,
    args: &WebhookArgs,
    operator_namespace: &str,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> Result<Option<WebhookServer>> {
    if !args.enabled {
        return Ok(None);
    }
    let inject = args.inject_settings(operator_namespace)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = Arc::new(CertificateResolver::default());
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::clone(&resolver) as Arc<dyn rustls::server::ResolvesServerCert>);
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the webhook address {}", args.listen))?;
    let addr = listener.local_addr().context("webhook address")?;

    health.set_webhook_certificate(false);
    let sink: Arc<dyn MaterialSink> = Arc::new(ServingSink {
        resolver,
        provider,
        health,
        metrics: Arc::clone(&metrics),
    });
    let configurations = WebhookConfigurations {
        client: client.clone(),
        mutating: args.mutating_configuration.clone(),
        validating: args.validating_configuration.clone(),
    };
    let certificates = match &args.cert_dir {
        Some(dir) => tokio::spawn(tls::run_files(dir.clone(), configurations, sink)),
        None => {
            let settings = args.rotation_settings(operator_namespace);
            settings.check()?;
            let secrets = Api::<Secret>::namespaced(client.clone(), operator_namespace);
            tokio::spawn(tls::run_managed(
                secrets,
                args.secret.clone(),
                settings,
                configurations,
                sink,
            ))
        }
    };
    let webhooks = Arc::new(server::Webhooks {
        inject,
        policy_rules: PolicyRules {
            allow_http_key_sources: args.allow_http_key_sources,
        },
        client,
        metrics,
    });
    let serving = tokio::spawn(server::serve(
        listener,
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        webhooks,
    ));
    Ok(Some(WebhookServer {
        addr,
        tasks: vec![certificates, serving],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        webhook: WebhookArgs,
    }

    /// The shipped configurations call the paths served here, carry the names the flags
    /// default to, and those names are the ones the RBAC rules allow patching.
    #[test]
    fn deploy_manifests_agree_with_the_server_and_the_rbac() {
        use k8s_openapi::api::admissionregistration::v1::{
            MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
        };
        let defaults = Flags::try_parse_from(["tokengate-operator"])
            .expect("defaults")
            .webhook;
        let documents: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(include_str!("../../deploy/webhooks.yaml"))
                .expect("webhooks.yaml parses");
        let [mutating, validating] = documents.as_slice() else {
            panic!("webhooks.yaml holds the two configurations");
        };
        let mutating: MutatingWebhookConfiguration =
            serde_json::from_value(mutating.clone()).expect("a MutatingWebhookConfiguration");
        let validating: ValidatingWebhookConfiguration =
            serde_json::from_value(validating.clone()).expect("a ValidatingWebhookConfiguration");
        assert_eq!(
            mutating.metadata.name.as_deref(),
            Some(defaults.mutating_configuration.as_str())
        );
        assert_eq!(
            validating.metadata.name.as_deref(),
            Some(defaults.validating_configuration.as_str())
        );
        let mutating_hooks = mutating.webhooks.expect("webhooks");
        assert_eq!(mutating_hooks.len(), 2);
        for hook in &mutating_hooks {
            let service = hook.client_config.service.as_ref().expect("service");
            assert_eq!(service.path.as_deref(), Some(INJECT_PATH));
            assert_eq!(service.name, defaults.service);
            assert_eq!(hook.failure_policy.as_deref(), Some("Fail"));
        }
        for hook in validating.webhooks.expect("webhooks") {
            let service = hook.client_config.service.as_ref().expect("service");
            assert_eq!(service.path.as_deref(), Some(VALIDATE_PATH));
        }
        let rbac = include_str!("../../deploy/rbac.yaml");
        assert!(rbac.contains(&format!(
            "resourceNames: [{}]",
            defaults.mutating_configuration
        )));
        assert!(rbac.contains(&format!(
            "resourceNames: [{}]",
            defaults.validating_configuration
        )));
    }

    #[test]
    fn quantities_are_checked() {
        for good in ["50m", "0.5", "1", "64Mi", "1Gi", "2e3", "1.5G", "100u"] {
            assert!(is_quantity(good), "{good}");
        }
        for bad in ["", "m", "fifty", "64MB", "1..5", "1e", "-"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn flags_become_injection_settings() {
        let flags = Flags::try_parse_from([
            "tokengate-operator",
            "--sidecar-image=registry.example/sidecar:9",
            "--sidecar-cpu-limit=1",
            "--sidecar-memory-limit=256Mi",
            "--sidecar-log-format=json",
            "--sidecar-upstream-timeout=30s",
            "--sidecar-drain-timeout=20s",
            "--sidecar-trust-bundle-configmap=corp-ca",
        ])
        .expect("flags parse");
        let settings = flags
            .webhook
            .inject_settings("tokengate-system")
            .expect("settings");
        assert_eq!(settings.sidecar.image, "registry.example/sidecar:9");
        assert_eq!(settings.sidecar.version, VERSION);
        let limits = settings.sidecar.resources.limits.expect("limits");
        assert_eq!(limits["cpu"].0, "1");
        assert_eq!(limits["memory"].0, "256Mi");
        assert_eq!(
            contract::sidecar_run_args(8080, &settings.sidecar.tuning)
                [contract::sidecar_run_args(8080, &contract::SidecarTuning::default()).len()..],
            [
                "--log-format=json",
                "--upstream-timeout=30000ms",
                "--drain-timeout=20000ms",
                "--extra-ca-file=/var/run/tokengate/trust/ca.crt"
            ]
        );
        assert_eq!(
            settings.sidecar.tuning.trust_bundle.map(|b| b.config_map),
            Some("corp-ca".to_owned())
        );
        assert_eq!(
            settings.excluded_namespaces,
            ["kube-system", "tokengate-system"]
        );
        let bad = Flags::try_parse_from(["tokengate-operator", "--sidecar-cpu-request=lots"])
            .expect("flags parse");
        let err = bad
            .webhook
            .inject_settings("tokengate-system")
            .expect_err("refused");
        assert!(err.to_string().contains("--sidecar-cpu-request"), "{err}");
        for (flag, args) in [
            (
                "--sidecar-trust-bundle-configmap",
                [
                    "--sidecar-trust-bundle-configmap=Corp_CA",
                    "--sidecar-log-format=json",
                ],
            ),
            (
                "--sidecar-trust-bundle-key",
                [
                    "--sidecar-trust-bundle-configmap=corp-ca",
                    "--sidecar-trust-bundle-key=../ca.crt",
                ],
            ),
        ] {
            let flags = Flags::try_parse_from(std::iter::once("tokengate-operator").chain(args))
                .expect("flags parse");
            let err = flags
                .webhook
                .inject_settings("tokengate-system")
                .expect_err("refused");
            assert!(err.to_string().contains(flag), "{err}");
        }
        // Empty (the chart's default) is none.
        let flags =
            Flags::try_parse_from(["tokengate-operator", "--sidecar-trust-bundle-configmap="])
                .expect("flags parse");
        let settings = flags.webhook.inject_settings("ns").expect("settings");
        assert_eq!(settings.sidecar.tuning.trust_bundle, None);
    }
}
