//! Every name, port, label, annotation and path that the operator (and its webhook) and the
//! sidecar must agree on, in one place. The operator writes what this module says; the sidecar
//! reads it; tests on both sides import it instead of spelling the values again.

use std::time::Duration;

/// Field manager of every server-side apply the operator makes, and the value of the
/// `app.kubernetes.io/managed-by` label on what it renders.
pub const MANAGER: &str = "tokengate-operator";
/// Label on everything the operator renders.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";

/// ConfigMap with a namespace's compiled policies, one [`policy_file_name`] each.
pub const POLICIES_CONFIG_MAP: &str = "tokengate-policies";
/// Secret with the symmetric key material the policies of a namespace reference, one
/// [`key_file_name`] each. Key material never goes into a ConfigMap.
pub const KEYS_SECRET: &str = "tokengate-keys";

/// ConfigMap with the public keys the operator fetched for a namespace's policies, one
/// [`jwks_file_name`] per key source (see `tokengate_keys::delivery` for the document). Public
/// keys only: symmetric keys stay in [`KEYS_SECRET`].
pub const JWKS_CONFIG_MAP: &str = "tokengate-jwks";

/// Name of the injected sidecar container.
pub const SIDECAR_CONTAINER: &str = "tokengate-sidecar";
/// Port the sidecar serves the application's traffic on (the port a NetworkPolicy admits).
pub const SIDECAR_PROXY_PORT: u16 = 15080;
/// Port of the sidecar's admin server (`/live`, `/ready`, `/metrics`).
pub const SIDECAR_ADMIN_PORT: u16 = 15081;

/// Namespace label that opts every pod of the namespace in, with the value
/// [`INJECTION_ENABLED`].
pub const NAMESPACE_INJECTION_LABEL: &str = "tokengate.dev/injection";
/// Value of [`NAMESPACE_INJECTION_LABEL`] that enables injection.
pub const INJECTION_ENABLED: &str = "enabled";
/// Pod label: `true` opts a pod in, `false` opts it out (over the namespace's label).
pub const POD_INJECT_LABEL: &str = "tokengate.dev/inject";
/// Pod annotation naming the protected port (a containerPort's number or name). The sidecar
/// protects one port per pod.
pub const PORTS_ANNOTATION: &str = "tokengate.dev/ports";
/// Annotation the webhook puts on every pod it injects: the sidecar's version, so that checks
/// can find pods still running an old one.
pub const SIDECAR_VERSION_ANNOTATION: &str = "tokengate.dev/sidecar-version";
/// Annotation the webhook puts on every pod it injects: the number of the application port the
/// sidecar forwards to (the protected port, whatever [`PORTS_ANNOTATION`] called it).
pub const UPSTREAM_PORT_ANNOTATION: &str = "tokengate.dev/upstream-port";

/// Name of the sidecar's proxy port when the protected port had no name to take over.
pub const SIDECAR_PROXY_PORT_NAME: &str = "tokengate-proxy";
/// Name of the sidecar's admin port.
pub const SIDECAR_ADMIN_PORT_NAME: &str = "tokengate-admin";
/// Path of the sidecar's liveness endpoint on [`SIDECAR_ADMIN_PORT`].
pub const SIDECAR_LIVE_PATH: &str = "/live";
/// Path of the sidecar's readiness endpoint on [`SIDECAR_ADMIN_PORT`] (200 once its keys can
/// verify tokens).
pub const SIDECAR_READY_PATH: &str = "/ready";

/// Name of the init container that installs the pod firewall (`privateAccess.podFirewall`):
/// the sidecar's image run as `firewall --port <app port>`, with `NET_ADMIN` and nothing else,
/// before the native sidecar starts.
pub const FIREWALL_CONTAINER: &str = "tokengate-firewall";
/// Annotation the webhook puts on pods it gives the pod firewall: the port the firewall closes
/// to everything but loopback. Informational; the init container is what counts.
pub const POD_FIREWALL_ANNOTATION: &str = "tokengate.dev/pod-firewall";
/// Environment variable through which the webhook hands the sidecar the application's probes
/// it took over ([`AppProbe`] list as JSON), when the pod firewall keeps the kubelet off the
/// application's port.
pub const APP_PROBES_ENV: &str = "TOKENGATE_APP_PROBES";
/// Prefix of the sidecar's admin paths that run an application probe:
/// `/app-health/<container>/<liveness|readiness|startup>` ([`app_probe_path`]).
pub const APP_HEALTH_PREFIX: &str = "/app-health/";

/// The arguments of the firewall init container (after the program name).
pub fn firewall_args(app_port: u16) -> Vec<String> {
    vec![
        "firewall".to_owned(),
        "--port".to_owned(),
        app_port.to_string(),
    ]
}

/// The sidecar's flag that makes `/ready` wait for the pod firewall's rules on `app_port`.
pub fn require_pod_firewall_arg(app_port: u16) -> String {
    format!("--require-pod-firewall={app_port}")
}

/// An application probe the kubelet sends to the sidecar's admin port instead (the pod
/// firewall refuses the kubelet on the application's port); the sidecar runs it against the
/// application on loopback and answers 200 or 503.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AppProbe {
    pub container: String,
    /// `liveness`, `readiness` or `startup`.
    pub kind: String,
    /// The probe's `timeoutSeconds` (the kubelet's default 1 when unset).
    pub timeout_seconds: u32,
    pub action: AppProbeAction,
}

/// What an [`AppProbe`] checks, on 127.0.0.1.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum AppProbeAction {
    /// An HTTP GET (plain http): success is a status from 200 to 399.
    HttpGet {
        port: u16,
        path: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        headers: Vec<(String, String)>,
    },
    /// A TCP connection.
    TcpSocket { port: u16 },
}

/// The admin path of an application probe.
pub fn app_probe_path(container: &str, kind: &str) -> String {
    format!("{APP_HEALTH_PREFIX}{container}/{kind}")
}

/// The new name of the application's protected port once the sidecar has taken its name over:
/// Services that target the old name reach the sidecar, and nothing reaches the application by
/// name any more. Valid as a port name (at most 15 characters).
pub fn app_port_name(port: u16) -> String {
    format!("app-{port}")
}

/// The bundle as the sidecar sees it: the directory given to `run --bundle`. Below it,
/// [`BUNDLE_POLICIES_DIR`] holds [`POLICIES_CONFIG_MAP`] and [`BUNDLE_KEYS_DIR`] holds
/// [`KEYS_SECRET`].
pub const BUNDLE_DIR: &str = "/var/run/tokengate/bundle";
/// Subdirectory of the bundle holding the ConfigMap [`POLICIES_CONFIG_MAP`].
pub const BUNDLE_POLICIES_DIR: &str = "policies";
/// Subdirectory of the bundle holding the Secret [`KEYS_SECRET`].
pub const BUNDLE_KEYS_DIR: &str = "keys";
/// Subdirectory of the bundle holding the ConfigMap [`JWKS_CONFIG_MAP`].
pub const BUNDLE_JWKS_DIR: &str = "jwks";
/// Directory of the downward-API volume with the pod's labels.
pub const POD_INFO_DIR: &str = "/var/run/tokengate/pod";
/// File (below [`POD_INFO_DIR`]) holding the pod's labels, one `key="value"` a line.
pub const POD_LABELS_FILE: &str = "labels";
/// Directory of the ConfigMap volume with the [`TrustBundle`], when one is configured.
pub const TRUST_BUNDLE_DIR: &str = "/var/run/tokengate/trust";

/// The bundle file name of a policy.
pub fn policy_file_name(policy: &str) -> String {
    format!("{policy}.yaml")
}

/// The bundle file name of a `secretRef`'s key material: `<secret>.<key>`.
pub fn key_file_name(secret: &str, key: &str) -> String {
    format!("{secret}.{key}")
}

/// The bundle file name of a key source's delivered keys: its kind and a digest of its URL
/// (`discovery-<16 hex>.json`, `jwks-<16 hex>.json`), a valid ConfigMap key whatever the URL.
/// The digest (64-bit FNV-1a) only needs to keep the sources of one namespace apart; the file
/// names its source inside, and readers go by that.
pub fn jwks_file_name(source: &crate::RemoteKeySource) -> String {
    let (kind, url) = match source {
        crate::RemoteKeySource::Discovery(url) => ("discovery", url),
        crate::RemoteKeySource::Jwks(url) => ("jwks", url),
    };
    let digest = url.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("{kind}-{digest:016x}.json")
}

/// Whether `part` may be a Secret name or key in [`key_file_name`]: a Kubernetes name
/// (`[-._a-zA-Z0-9]`), so that it can never become a path outside the keys directory.
pub fn is_valid_key_file_part(part: &str) -> bool {
    !part.is_empty()
        && !part.starts_with("..")
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b))
}

/// What the operator's configuration (the chart's `sidecar.*` values) sets on every injected
/// sidecar beyond the contract's paths and ports. Unset, the sidecar's own default applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SidecarTuning {
    /// `--log-format`: `text` or `json`.
    pub log_format: Option<String>,
    /// `--upstream-timeout`: time allowed for the application's response headers.
    pub upstream_timeout: Option<Duration>,
    /// `--idle-timeout`: time a client connection may stay open with no request in flight.
    pub idle_timeout: Option<Duration>,
    /// `--header-read-timeout`: time a client has to send its request headers.
    pub header_read_timeout: Option<Duration>,
    /// `--drain-timeout`: time in-flight requests get to finish after SIGTERM.
    pub drain_timeout: Option<Duration>,
    /// `--extra-ca-file`: certificates trusted for https key sources besides the system roots.
    pub trust_bundle: Option<TrustBundle>,
}

/// A ConfigMap in the application's namespace whose PEM bundle the sidecar trusts for https key
/// sources besides the system roots: an identity provider with a private CA. The webhook
/// mounts key `key` at [`TRUST_BUNDLE_DIR`]; a ConfigMap of one name in every namespace (what
/// trust-manager, or `kube-root-ca.crt`, provides) serves every pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustBundle {
    pub config_map: String,
    pub key: String,
}

impl TrustBundle {
    /// The bundle's path in the sidecar.
    pub fn file(&self) -> String {
        format!("{TRUST_BUNDLE_DIR}/{}", self.key)
    }
}

impl SidecarTuning {
    /// The flags for what is set, durations in milliseconds.
    pub fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(format) = &self.log_format {
            args.push(format!("--log-format={format}"));
        }
        for (flag, value) in [
            ("--upstream-timeout", self.upstream_timeout),
            ("--idle-timeout", self.idle_timeout),
            ("--header-read-timeout", self.header_read_timeout),
            ("--drain-timeout", self.drain_timeout),
        ] {
            if let Some(value) = value {
                args.push(format!("{flag}={}ms", value.as_millis()));
            }
        }
        if let Some(bundle) = &self.trust_bundle {
            args.push(format!("--extra-ca-file={}", bundle.file()));
        }
        args
    }
}

/// The sidecar's command-line arguments (after the program name) for an injected pod whose
/// application listens on `app_port`: the bundle and labels at the paths above, the proxy and
/// admin ports above on every address, the application on loopback, then `tuning`.
pub fn sidecar_run_args(app_port: u16, tuning: &SidecarTuning) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        "--bundle".to_owned(),
        BUNDLE_DIR.to_owned(),
        "--pod-labels".to_owned(),
        format!("{POD_INFO_DIR}/{POD_LABELS_FILE}"),
        "--listen".to_owned(),
        format!("0.0.0.0:{SIDECAR_PROXY_PORT}"),
        "--upstream".to_owned(),
        format!("http://127.0.0.1:{app_port}"),
        "--admin".to_owned(),
        format!("0.0.0.0:{SIDECAR_ADMIN_PORT}"),
    ];
    args.extend(tuning.args());
    args
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_file_parts_cannot_leave_the_directory() {
        assert!(is_valid_key_file_part("hmac"));
        assert!(is_valid_key_file_part("tls.key"));
        for bad in ["", "..", "../x", "a/b", "a\\b", "a b", "ä"] {
            assert!(!is_valid_key_file_part(bad), "{bad:?}");
        }
    }

    #[test]
    fn jwks_file_names_are_config_map_keys_apart_per_source() {
        use crate::RemoteKeySource::{Discovery, Jwks};
        let url = "https://login.example/t/v2.0/.well-known/openid-configuration?x=1&y=ä";
        let discovery = jwks_file_name(&Discovery(url.to_owned()));
        let jwks = jwks_file_name(&Jwks(url.to_owned()));
        assert_ne!(discovery, jwks);
        assert_ne!(discovery, jwks_file_name(&Discovery(format!("{url}2"))));
        // Stable across builds and processes: the operator and sidecars of other versions agree.
        assert_eq!(
            jwks_file_name(&Jwks("https://idp.example/keys".to_owned())),
            "jwks-3fbe10a6e4e05716.json"
        );
        for name in [discovery, jwks] {
            assert!(name.len() <= 253 && is_valid_key_file_part(&name), "{name}");
        }
    }

    #[test]
    fn renamed_app_ports_are_valid_port_names() {
        for port in [1, 80, 8080, u16::MAX] {
            let name = app_port_name(port);
            assert!(name.len() <= 15, "{name}");
            assert!(
                name.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            );
        }
        assert!(SIDECAR_PROXY_PORT_NAME.len() <= 15 && SIDECAR_ADMIN_PORT_NAME.len() <= 15);
    }

    #[test]
    fn run_args_name_the_contract_paths_and_ports() {
        let args = sidecar_run_args(8080, &SidecarTuning::default());
        let joined = args.join(" ");
        assert!(joined.starts_with("run --bundle /var/run/tokengate/bundle "));
        assert!(joined.contains("--pod-labels /var/run/tokengate/pod/labels"));
        assert!(joined.contains("--listen 0.0.0.0:15080"));
        assert!(joined.contains("--upstream http://127.0.0.1:8080"));
        assert!(joined.contains("--admin 0.0.0.0:15081"));
        assert!(!joined.contains("timeout") && !joined.contains("log-format"));
        assert!(!joined.contains("extra-ca"));
        let tuned = SidecarTuning {
            log_format: Some("json".to_owned()),
            upstream_timeout: Some(Duration::from_millis(1500)),
            drain_timeout: Some(Duration::from_secs(20)),
            trust_bundle: Some(TrustBundle {
                config_map: "corp-ca".to_owned(),
                key: "bundle.pem".to_owned(),
            }),
            ..SidecarTuning::default()
        };
        let args = sidecar_run_args(8080, &tuned);
        assert_eq!(
            &args[args.len() - 4..],
            [
                "--log-format=json",
                "--upstream-timeout=1500ms",
                "--drain-timeout=20000ms",
                "--extra-ca-file=/var/run/tokengate/trust/bundle.pem"
            ]
        );
    }
}
