//! In-process test bench: the real sidecar on 127.0.0.1:0 between a client, the test identity
//! provider and the echo upstream, all over real HTTP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokengate_keys::KeySettings;
use tokengate_sidecar::gate::StartupMode;
use tokengate_sidecar::proxy::{UpstreamProtocol, UpstreamSettings};
use tokengate_sidecar::server::Limits;
use tokengate_sidecar::{Running, SidecarConfig};
use tokengate_testkit::echo::{EchoRecord, EchoServer};
use tokengate_testkit::idp::IdentityProvider;

pub struct Bench {
    pub idp: IdentityProvider,
    pub echo: EchoServer,
    pub sidecar: Running,
    pub dir: tempfile::TempDir,
    pub client: Client<HttpConnector, Full<Bytes>>,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }

    /// The `reason` of a refusal body.
    pub fn reason(&self) -> String {
        self.json()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// What the echo upstream saw, for permitted requests.
    pub fn echoed(&self) -> EchoRecord {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "expected an echo record, got HTTP {} {:?}: {err}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn www_authenticate(&self) -> Option<&str> {
        self.headers
            .get(http::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
    }
}

/// A TokenPolicy manifest around `spec` (YAML, indented two spaces under `spec:`).
pub fn manifest(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata:\n  name: {name}\n  namespace: tests\nspec:\n  selector:\n    matchLabels: {{app: bench}}\n{spec}"
    )
}

impl Bench {
    /// Starts the identity provider, the echo server and the sidecar with the policy that
    /// `spec` builds from the provider's addresses, and waits until the sidecar is ready.
    pub async fn start(spec: impl FnOnce(&IdentityProvider) -> String) -> Bench {
        Self::start_with(spec, |_| {}).await
    }

    pub async fn start_with(
        spec: impl FnOnce(&IdentityProvider) -> String,
        adjust: impl FnOnce(&mut SidecarConfig),
    ) -> Bench {
        let idp = IdentityProvider::start()
            .await
            .expect("identity provider starts");
        Self::start_against(idp, spec, adjust).await
    }

    /// Like [`start_with`](Self::start_with), against a provider the test started (the Entra
    /// personality, for one).
    pub async fn start_against(
        idp: IdentityProvider,
        spec: impl FnOnce(&IdentityProvider) -> String,
        adjust: impl FnOnce(&mut SidecarConfig),
    ) -> Bench {
        let echo = EchoServer::start().await.expect("echo server starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let policy = dir.path().join("policy.yaml");
        std::fs::write(&policy, manifest("bench", &spec(&idp))).expect("policy written");
        let mut config = config(vec![policy], &echo);
        adjust(&mut config);
        let bench = Bench::with_config(idp, echo, dir, config).await;
        bench.wait_ready().await;
        bench
    }

    /// Starts the sidecar with `config` beside a running provider and echo server, without
    /// waiting for it to become ready.
    pub async fn with_config(
        idp: IdentityProvider,
        echo: EchoServer,
        dir: tempfile::TempDir,
        config: SidecarConfig,
    ) -> Bench {
        let sidecar = tokengate_sidecar::start(config)
            .await
            .expect("sidecar starts");
        Bench {
            idp,
            echo,
            sidecar,
            dir,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    pub async fn wait_ready(&self) {
        for _ in 0..200 {
            if self.sidecar.ready() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("sidecar not ready after 5s");
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.proxy_addr)
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.sidecar.admin_addr)
    }

    /// `GET path` with `Authorization: Bearer token`.
    pub async fn get_with_token(&self, path: &str, token: &str) -> Reply {
        self.send(
            Request::get(self.url(path))
                .header("authorization", format!("Bearer {token}"))
                .body(Full::default())
                .expect("request"),
        )
        .await
    }

    /// `GET path` with these headers.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = Request::get(self.url(path));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.send(request.body(Full::default()).expect("request"))
            .await
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let response = tokio::time::timeout(Duration::from_secs(30), self.client.request(request))
            .await
            .expect("sidecar answers within 30s")
            .expect("request reaches the sidecar");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("response body")
            .to_bytes();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub async fn admin_get(&self, path: &str) -> Reply {
        self.send(
            Request::get(self.admin_url(path))
                .body(Full::default())
                .expect("request"),
        )
        .await
    }

    /// The value of one sample of the sidecar's metrics, 0 when absent.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metric_value(&self.sidecar.metrics.render(), name, labels)
    }
}

pub fn config(policy_files: Vec<PathBuf>, echo: &EchoServer) -> SidecarConfig {
    SidecarConfig {
        policy_files,
        bundle: None,
        pod_labels: None,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        admin: SocketAddr::from(([127, 0, 0, 1], 0)),
        upstream: UpstreamSettings {
            base: echo.url().parse().expect("echo url"),
            protocol: UpstreamProtocol::Auto,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(30),
        },
        keys: KeySettings {
            retry_interval: Duration::from_millis(200),
            miss_cooldown: Duration::from_secs(1),
            fetch_timeout: Duration::from_secs(2),
            user_agent: tokengate_keys::user_agent("tokengate-sidecar"),
            ..KeySettings::default()
        },
        limits: Limits::default(),
        extra_ca: None,
        reload_interval: Duration::from_millis(100),
        token_cache_entries: tokengate_sidecar::token_cache::DEFAULT_ENTRIES,
        startup: StartupMode::FailClosed,
        startup_timeout: Duration::from_secs(10),
        pod_firewall: None,
        app_probes: Vec::new(),
    }
}

/// Retries `check` every 20ms for up to 5s.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} did not happen within 5s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads a sample from Prometheus text format.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    tokengate_testkit::metrics::value(text, name, labels)
}

/// A directory as kubelet projects a ConfigMap, Secret or downward-API volume: each file lives
/// in a timestamped directory, `..data` points at the current one, and the visible names are
/// symlinks through `..data`. [`publish`](Self::publish) swaps in a new version atomically.
pub struct Projected {
    pub dir: PathBuf,
    version: u64,
    visible: Vec<String>,
}

impl Projected {
    /// The directory is created by the first [`publish`](Self::publish).
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            version: 0,
            visible: Vec::new(),
        }
    }

    /// Replaces the whole contents with `files` (name, text), as kubelet does on an update.
    pub fn publish(&mut self, files: &[(&str, &str)]) {
        std::fs::create_dir_all(&self.dir).expect("projected dir");
        self.version += 1;
        let stamp = format!("..2026_11_28_12_00_00.{:06}", self.version);
        let data = self.dir.join(&stamp);
        std::fs::create_dir(&data).expect("timestamped dir");
        for (name, text) in files {
            std::fs::write(data.join(name), text).expect("projected file");
        }
        let tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&stamp, &tmp).expect("..data_tmp");
        let previous = std::fs::read_link(self.dir.join("..data")).ok();
        std::fs::rename(&tmp, self.dir.join("..data")).expect("..data swap");
        let names: Vec<String> = files.iter().map(|(name, _)| (*name).to_owned()).collect();
        for name in &names {
            if !self.visible.contains(name) {
                std::os::unix::fs::symlink(format!("..data/{name}"), self.dir.join(name))
                    .expect("visible link");
            }
        }
        for name in &self.visible {
            if !names.contains(name) {
                std::fs::remove_file(self.dir.join(name)).expect("stale link removed");
            }
        }
        self.visible = names;
        if let Some(previous) = previous {
            let _ = std::fs::remove_dir_all(self.dir.join(previous));
        }
    }
}
