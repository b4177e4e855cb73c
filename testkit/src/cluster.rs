//! A real Kubernetes control plane for tests: etcd, kube-apiserver and kube-controller-manager
//! as local processes on 127.0.0.1, built by `testkit/controlplane/build.sh` (`make controlplane`)
//! and found through `TOKENGATE_CONTROLPLANE_BIN` (else the build script's cache directory).
//!
//! One control plane serves a whole test binary ([`ControlPlane::shared`]); each test makes its
//! own client ([`ControlPlane::client`]) and namespace ([`ControlPlane::namespace`]). Processes
//! are plain `std::process` children, so the control plane outlives the runtime of the test that
//! happened to start it, and a watchdog kills them when the test binary exits however it exits.
//!
//! For the tiers built on it: running a binary as a ServiceAccount
//! ([`ControlPlane::spawn_as_service_account`]), admission webhooks served from the test
//! ([`webhook`]), running a Pod's container as a local process ([`podrunner`]), and kubectl and
//! helm ([`tools`]).

mod kubeconfig;
pub mod node;
pub mod pki;
pub mod podrunner;
pub mod process;
mod serviceaccount;
pub mod tools;
pub mod webhook;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Api;
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};

pub use kubeconfig::{Credentials, client_from_kubeconfig, write_kubeconfig};
pub use pki::{CertificateAuthority, CertifiedKey};
pub use process::{Process, free_port};
pub use serviceaccount::service_account_token;

/// Environment variable naming the directory with `etcd`, `kube-apiserver` and
/// `kube-controller-manager`.
pub const BIN_DIR_ENV: &str = "TOKENGATE_CONTROLPLANE_BIN";

/// Label put on every namespace made by [`ControlPlane::namespace`].
pub const TEST_NAMESPACE_LABEL: &str = "tokengate.dev/test";

const STARTUP_TIMEOUT: Duration = Duration::from_secs(120);

/// The controllers the tests rely on; without the namespace controller deleted namespaces stay
/// Terminating, the root CA publisher feeds the `kube-api-access` volume of every pod, and the
/// EndpointSlice controller shows which container port a Service's (named) target reaches.
const CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "deployment-controller",
    "endpointslice-controller",
    "replicaset-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "root-ca-certificate-publisher-controller",
];

/// Controllers a node needs besides [`CONTROLLERS`]: Endpoints for Services (kube-proxy reads
/// EndpointSlices, `kubectl` and people still read Endpoints) and the node's lifecycle.
const NODE_CONTROLLERS: &[&str] = &["endpoints-controller", "node-lifecycle-controller"];

/// How [`ControlPlane::start_with`] starts a control plane; [`ControlPlane::start`] takes the
/// defaults (127.0.0.1, no node).
#[derive(Clone, Debug)]
pub struct ControlPlaneOptions {
    /// The address kube-apiserver listens on and advertises (the `kubernetes` Service's
    /// endpoint): 127.0.0.1 unless pods must reach it.
    pub address: Ipv4Addr,
    /// Serve a kubelet: kube-apiserver gets kubelet client credentials and keeps the
    /// `kubernetes` Service's endpoints, the controller-manager runs [`NODE_CONTROLLERS`].
    pub node: bool,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        ControlPlaneOptions {
            address: Ipv4Addr::LOCALHOST,
            node: false,
        }
    }
}

/// A running local control plane. Dropping it kills its processes and removes its directory.
pub struct ControlPlane {
    server: String,
    kubeconfig: PathBuf,
    ca: CertificateAuthority,
    startup_time: Duration,
    // Drop order matters: processes (killed in reverse start order) before the directory.
    processes: Mutex<Vec<Process>>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("server", &self.server)
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Ok(processes) = self.processes.get_mut() {
            while let Some(mut process) = processes.pop() {
                process.kill();
            }
        }
    }
}

static SHARED: OnceLock<std::result::Result<ControlPlane, String>> = OnceLock::new();

impl ControlPlane {
    /// The control plane shared by every test of this test binary, started on first use.
    pub async fn shared() -> Result<&'static ControlPlane> {
        tokio::task::spawn_blocking(Self::shared_blocking)
            .await
            .context("control plane start-up task")?
    }

    /// [`ControlPlane::shared`] for synchronous callers.
    pub fn shared_blocking() -> Result<&'static ControlPlane> {
        SHARED
            .get_or_init(|| Self::start().map_err(|e| format!("{e:#}")))
            .as_ref()
            .map_err(|e| anyhow!("the shared control plane failed to start: {e}"))
    }

    /// Starts a control plane of its own (blocking; several seconds).
    pub fn start() -> Result<ControlPlane> {
        Self::start_with(ControlPlaneOptions::default())
    }

    /// Starts a control plane of its own as `options` say (blocking; several seconds).
    pub fn start_with(options: ControlPlaneOptions) -> Result<ControlPlane> {
        on_own_thread("control plane", move || start_control_plane(&options))
    }

    /// `https://ADDRESS:PORT` (127.0.0.1 unless [`ControlPlaneOptions::address`] says).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Kubeconfig of a cluster administrator (client certificate in group system:masters).
    pub fn admin_kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// PEM of the CA that signed the API server's serving certificate.
    pub fn ca_pem(&self) -> &str {
        self.ca.cert_pem()
    }

    /// The cluster CA, e.g. to issue more client certificates.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// The control plane's scratch directory (logs, certificates, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long [`ControlPlane::start`] took until everything was ready.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// A new admin client, bound to the calling test's runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// Creates a uniquely named namespace (`<prefix>-<n>-<random>`) and waits until its
    /// `default` ServiceAccount exists, since pods cannot be created before that.
    pub async fn namespace(&self, client: &kube::Client, prefix: &str) -> Result<String> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{prefix}-{n}-{:04x}", rand::random::<u16>());
        let namespace = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([(TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let service_accounts = Api::<ServiceAccount>::namespaced(client.clone(), &name);
        wait_until(
            Duration::from_secs(30),
            "the default ServiceAccount",
            || async { Ok(service_accounts.get_opt("default").await?.is_some()) },
        )
        .await
        .with_context(|| format!("namespace {name}"))?;
        Ok(name)
    }

    /// The last lines of each process's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        match self.processes.lock() {
            Ok(processes) => describe_logs(&processes, lines),
            Err(_) => "<process list lock poisoned>".to_string(),
        }
    }

    /// Kills one of the control plane's processes (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`) outright, to see how clients behave once it is gone. The
    /// control plane does not recover: do this to one of a test's own ([`ControlPlane::start`]),
    /// never to the shared one.
    pub fn kill(&self, name: &str) -> Result<()> {
        self.with_process(name, |process| {
            process.kill();
            Ok(())
        })
    }

    /// Suspends one of the control plane's processes (see [`Process::suspend`]): a
    /// kube-apiserver that accepts connections and never answers. The same caveat as
    /// [`ControlPlane::kill`].
    pub fn suspend(&self, name: &str) -> Result<()> {
        self.with_process(name, Process::suspend)
    }

    fn with_process(&self, name: &str, act: impl FnOnce(&mut Process) -> Result<()>) -> Result<()> {
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| anyhow!("process list lock poisoned"))?;
        let process = processes
            .iter_mut()
            .find(|p| p.name() == name)
            .ok_or_else(|| anyhow!("the control plane runs no process named {name}"))?;
        act(process)
    }

    /// Fails with the log tail of any process that is no longer running.
    pub fn ensure_running(&self) -> Result<()> {
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| anyhow!("process list lock poisoned"))?;
        for process in processes.iter_mut() {
            process.ensure_running()?;
        }
        Ok(())
    }
}

/// Runs a start-up on a thread of its own: start-up runs a private runtime, which must not nest
/// inside the caller's.
fn on_own_thread<T: Send + 'static>(
    what: &str,
    start: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    std::thread::spawn(start)
        .join()
        .map_err(|_| anyhow!("{what} start-up panicked"))?
}

fn describe_logs(processes: &[Process], lines: usize) -> String {
    processes
        .iter()
        .map(|p| {
            format!(
                "----- {} ({}) last {lines} lines:\n{}",
                p.name(),
                p.log_path().display(),
                p.log_tail(lines)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The directory with the control-plane binaries, or an error saying how to build them: the
/// one [`BIN_DIR_ENV`] names, else the build script's cache directory.
pub fn bin_dir() -> Result<PathBuf> {
    let (dir, origin) = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => (PathBuf::from(dir), BIN_DIR_ENV.to_string()),
        None => (
            default_bin_dir().with_context(|| {
                format!(
                    "{BIN_DIR_ENV} is not set and the build script could not name its cache; \
                     run `make controlplane` and export {BIN_DIR_ENV}"
                )
            })?,
            format!("the build script's cache ({BIN_DIR_ENV} is not set)"),
        ),
    };
    for binary in ["etcd", "kube-apiserver", "kube-controller-manager"] {
        let path = dir.join(binary);
        if !path.is_file() {
            bail!(
                "{} is missing (directory from {origin}). The cluster tests need etcd, \
                 kube-apiserver and kube-controller-manager: run `make controlplane` to build \
                 them (`make test` does so and sets {BIN_DIR_ENV})",
                path.display(),
            );
        }
    }
    Ok(dir)
}

/// Where `testkit/controlplane/build.sh` caches the binaries for its pinned versions.
fn default_bin_dir() -> Result<PathBuf> {
    build_script_dir("--print-bin-dir")
}

/// A cache directory of `testkit/controlplane/build.sh`, as its `flag` (`--print-...-dir`)
/// prints it.
fn build_script_dir(flag: &str) -> Result<PathBuf> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("controlplane/build.sh");
    let output = Command::new("bash")
        .arg(&script)
        .arg(flag)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} {flag} failed: {}",
            script.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let dir = String::from_utf8(output.stdout).context("build script output is not UTF-8")?;
    Ok(PathBuf::from(dir.trim()))
}

struct Files {
    ca: PathBuf,
    kubelet_client_cert: PathBuf,
    kubelet_client_key: PathBuf,
    serving_cert: PathBuf,
    serving_key: PathBuf,
    service_account_key: PathBuf,
    service_account_public_key: PathBuf,
    kubeconfig: PathBuf,
}

fn write_file(path: &Path, contents: &str) -> Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))
}

fn start_control_plane(options: &ControlPlaneOptions) -> Result<ControlPlane> {
    let started = Instant::now();
    let bin = bin_dir()?;
    let dir = tempfile::Builder::new()
        .prefix("tokengate-controlplane-")
        .tempdir()
        .context("creating the control plane directory")?;
    process::remove_at_exit(dir.path())?;
    let root = dir.path();

    let apiserver_port = free_port()?;
    let address = options.address.to_string();
    let server = format!("https://{address}:{apiserver_port}");
    let ca = CertificateAuthority::new("tokengate-test-ca")?;
    let serving = ca.issue_server(
        "kube-apiserver",
        &[
            &address,
            "127.0.0.1",
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "10.0.0.1",
        ],
    )?;
    let admin = ca.issue_client("tokengate-test-admin", &["system:masters"])?;
    let kubelet_client = ca.issue_client("kube-apiserver-kubelet-client", &["system:masters"])?;
    let files = Files {
        ca: root.join("ca.crt"),
        kubelet_client_cert: root.join("kubelet-client.crt"),
        kubelet_client_key: root.join("kubelet-client.key"),
        serving_cert: root.join("apiserver.crt"),
        serving_key: root.join("apiserver.key"),
        service_account_key: root.join("service-account.key"),
        service_account_public_key: root.join("service-account.pub"),
        kubeconfig: root.join("admin.kubeconfig"),
    };
    write_file(&files.ca, ca.cert_pem())?;
    write_file(&files.serving_cert, &serving.cert_pem)?;
    write_file(&files.serving_key, &serving.key_pem)?;
    write_file(&files.kubelet_client_cert, &kubelet_client.cert_pem)?;
    write_file(&files.kubelet_client_key, &kubelet_client.key_pem)?;
    let (service_account_key, service_account_public_key) = pki::generate_key_pair_pem()?;
    write_file(&files.service_account_key, &service_account_key)?;
    write_file(
        &files.service_account_public_key,
        &service_account_public_key,
    )?;
    write_kubeconfig(
        &files.kubeconfig,
        &server,
        ca.cert_pem(),
        "admin",
        &Credentials::ClientCertificate {
            cert_pem: admin.cert_pem,
            key_pem: admin.key_pem,
        },
        None,
    )?;

    let mut control_plane = ControlPlane {
        server,
        kubeconfig: files.kubeconfig.clone(),
        ca,
        startup_time: Duration::ZERO,
        processes: Mutex::new(Vec::new()),
        dir,
    };
    let result = launch(&control_plane, options, &bin, &files, apiserver_port);
    if let Err(e) = result {
        let logs = control_plane.log_tails(40);
        return Err(e.context(format!(
            "control plane start-up failed; logs of every process:\n{logs}\n-----"
        )));
    }
    control_plane.startup_time = started.elapsed();
    eprintln!(
        "control plane ready at {} in {:.1}s (dir {})",
        control_plane.server,
        control_plane.startup_time.as_secs_f64(),
        control_plane.dir.path().display()
    );
    Ok(control_plane)
}

fn launch(
    cp: &ControlPlane,
    options: &ControlPlaneOptions,
    bin: &Path,
    files: &Files,
    apiserver_port: u16,
) -> Result<()> {
    let root = cp.dir.path();
    let logs = root.join("logs");
    let push = |process: Process| -> Result<()> {
        cp.processes
            .lock()
            .map_err(|_| anyhow!("process list lock poisoned"))?
            .push(process);
        Ok(())
    };

    let etcd_port = free_port()?;
    let peer_port = free_port()?;
    let etcd_url = format!("http://127.0.0.1:{etcd_port}");
    let peer_url = format!("http://127.0.0.1:{peer_port}");
    let mut etcd = Command::new(bin.join("etcd"));
    etcd.arg("--name=default")
        .arg(format!("--data-dir={}", root.join("etcd").display()))
        .arg(format!("--listen-client-urls={etcd_url}"))
        .arg(format!("--advertise-client-urls={etcd_url}"))
        .arg(format!("--listen-peer-urls={peer_url}"))
        .arg(format!("--initial-advertise-peer-urls={peer_url}"))
        .arg(format!("--initial-cluster=default={peer_url}"))
        .arg("--unsafe-no-fsync=true")
        .arg("--log-level=warn");
    push(Process::spawn("etcd", etcd, &logs.join("etcd.log"))?)?;
    wait_blocking(
        &|| cp.ensure_running(),
        Duration::from_secs(30),
        "etcd /health",
        || {
            Ok(
                process::http_get_status(&format!("{etcd_url}/health"), Duration::from_secs(2))
                    .map(|status| status == 200)
                    .unwrap_or(false),
            )
        },
    )?;

    let mut apiserver = Command::new(bin.join("kube-apiserver"));
    apiserver
        .arg(format!("--etcd-servers={etcd_url}"))
        .arg(format!("--bind-address={}", options.address))
        .arg(format!("--secure-port={apiserver_port}"))
        .arg(format!("--advertise-address={}", options.address))
        .arg(format!(
            "--cert-dir={}",
            root.join("apiserver-certs").display()
        ))
        .arg(format!("--tls-cert-file={}", files.serving_cert.display()))
        .arg(format!(
            "--tls-private-key-file={}",
            files.serving_key.display()
        ))
        .arg(format!("--client-ca-file={}", files.ca.display()))
        .arg("--authorization-mode=RBAC")
        .arg("--service-cluster-ip-range=10.0.0.0/24")
        .arg(format!("--service-account-issuer={}", cp.server))
        .arg(format!(
            "--service-account-key-file={}",
            files.service_account_public_key.display()
        ))
        .arg(format!(
            "--service-account-signing-key-file={}",
            files.service_account_key.display()
        ))
        .arg("--allow-privileged=true")
        .arg("--enable-priority-and-fairness=false")
        .arg("--profiling=false");
    if options.node {
        // The `kubernetes` Service leads pods to this API server; kubectl logs and exec reach
        // the kubelet at its InternalIP (not through the machine's resolver).
        apiserver
            .arg("--endpoint-reconciler-type=lease")
            .arg(format!(
                "--kubelet-client-certificate={}",
                files.kubelet_client_cert.display()
            ))
            .arg(format!(
                "--kubelet-client-key={}",
                files.kubelet_client_key.display()
            ))
            .arg("--kubelet-preferred-address-types=InternalIP");
    } else {
        apiserver.arg("--endpoint-reconciler-type=none");
    }
    push(Process::spawn(
        "kube-apiserver",
        apiserver,
        &logs.join("kube-apiserver.log"),
    )?)?;

    // Readiness checks go through a real client on a runtime that lives only for start-up.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the start-up runtime")?;
    let client = runtime.block_on(client_from_kubeconfig(&files.kubeconfig))?;
    let readyz = || {
        let client = client.clone();
        async move {
            let request = http::Request::get("/readyz")
                .body(Vec::new())
                .context("building GET /readyz")?;
            Ok(client.request_text(request).await.is_ok())
        }
    };
    wait_with_runtime(cp, &runtime, "kube-apiserver /readyz", readyz)?;
    let namespaces = Api::<Namespace>::all(client.clone());
    wait_with_runtime(cp, &runtime, "namespace default", || async {
        Ok(namespaces.get_opt("default").await.ok().flatten().is_some())
    })?;

    let mut controllers = CONTROLLERS.to_vec();
    if options.node {
        controllers.extend_from_slice(NODE_CONTROLLERS);
    }
    let mut controller_manager = Command::new(bin.join("kube-controller-manager"));
    controller_manager
        .arg(format!("--kubeconfig={}", files.kubeconfig.display()))
        .arg(format!("--controllers={}", controllers.join(",")))
        .arg("--leader-elect=false")
        .arg("--use-service-account-credentials=false")
        .arg(format!(
            "--service-account-private-key-file={}",
            files.service_account_key.display()
        ))
        .arg(format!("--root-ca-file={}", files.ca.display()))
        .arg("--secure-port=0");
    push(Process::spawn(
        "kube-controller-manager",
        controller_manager,
        &logs.join("kube-controller-manager.log"),
    )?)?;
    // The controllers are working once they have filled in the default namespace.
    let service_accounts = Api::<ServiceAccount>::namespaced(client.clone(), "default");
    wait_with_runtime(cp, &runtime, "ServiceAccount default/default", || async {
        Ok(service_accounts
            .get_opt("default")
            .await
            .ok()
            .flatten()
            .is_some())
    })?;
    let config_maps = Api::<ConfigMap>::namespaced(client, "default");
    wait_with_runtime(
        cp,
        &runtime,
        "ConfigMap default/kube-root-ca.crt",
        || async {
            Ok(config_maps
                .get_opt("kube-root-ca.crt")
                .await
                .ok()
                .flatten()
                .is_some())
        },
    )?;
    Ok(())
}

/// Polls `ready` every 100 ms until it returns `Ok(true)`, failing at once if `running` finds a
/// process gone (its log tail says why).
fn wait_blocking(
    running: &dyn Fn() -> Result<()>,
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        running().with_context(|| format!("while waiting for {what}"))?;
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_with_runtime<F, Fut>(
    cp: &ControlPlane,
    runtime: &tokio::runtime::Runtime,
    what: &str,
    mut ready: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    wait_blocking(&|| cp.ensure_running(), STARTUP_TIMEOUT, what, || {
        runtime.block_on(ready())
    })
}

/// Applies a CustomResourceDefinition (server-side, as field manager `tokengate-testkit`) and
/// waits until the API server reports it Established.
pub async fn apply_crd(client: &kube::Client, crd: &CustomResourceDefinition) -> Result<()> {
    let name = crd
        .metadata
        .name
        .clone()
        .ok_or_else(|| anyhow!("the CRD has no name"))?;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    crds.patch(
        &name,
        &PatchParams::apply("tokengate-testkit").force(),
        &Patch::Apply(crd),
    )
    .await
    .with_context(|| format!("applying CRD {name}"))?;
    wait_until(
        Duration::from_secs(60),
        &format!("CRD {name} to be Established"),
        || async {
            let crd = crds.get(&name).await?;
            Ok(crd
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True"))
        },
    )
    .await
}

/// Polls `ready` every 100 ms until it returns `Ok(true)`; an `Err` ends the wait at once.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut ready: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if ready().await? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain HTTP/1.1 GET of `path` on 127.0.0.1:`port` with an optional bearer token: the status
/// code (0 when nothing answered) and the whole response, headers included.
pub async fn http_get(port: u16, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let authorization = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: app\r\n{authorization}Connection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, response)
}
