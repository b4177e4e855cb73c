//! A real Kubernetes node beside a control plane of its own: containerd (with runc and Debian's
//! CNI plugins), kubelet, kube-scheduler and kube-proxy, all local processes, running pods from
//! images built on this machine (`make images`) and imported into containerd. The kubelet,
//! kube-scheduler and kube-proxy come from `testkit/controlplane/build.sh node` (`make node`),
//! found through `TOKENGATE_NODE_BIN` (else the build script's cache directory).
//!
//! The node's address sits on a bridge the node creates (`testkit/node/node.sh setup`), which
//! is also the pods' gateway; kube-apiserver listens there, so pods reach it through the
//! `kubernetes` Service. The pod range and the service range are routed only between this
//! machine and its pods, with no masquerade: nothing a pod sends leaves the machine.
//!
//! Root only, one node per machine at a time. Everything the node leaves on the machine (pods'
//! processes, mounts, network namespaces, iptables chains, the bridge, cgroups, kernel
//! settings, host paths) is removed on drop, by the harness's watchdog if the test binary dies,
//! and before a node starts (`node.sh cleanup`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::Node as NodeObject;
use kube::Api;

use super::process::{self, Process, free_port};
use super::{ControlPlane, ControlPlaneOptions, write_file};

/// Environment variable naming the directory with `kubelet`, `kube-proxy` and `kube-scheduler`.
pub const NODE_BIN_DIR_ENV: &str = "TOKENGATE_NODE_BIN";

/// The node's name.
pub const NODE_NAME: &str = "tokengate-node";
/// The node's address, on its bridge: kube-apiserver and the kubelet listen here, and it is
/// the pods' gateway.
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 89, 0, 1);
/// The pod range (host-local IPAM on the node's bridge).
pub const POD_CIDR: &str = "10.89.0.0/16";
/// The control plane's service range (`--service-cluster-ip-range`).
pub const SERVICE_CIDR: &str = "10.0.0.0/24";
const BRIDGE: &str = "tgnode0";

const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// A control plane and one node running pods. Dropping it stops the node, cleans the machine
/// and then stops the control plane.
pub struct NodeCluster {
    processes: Mutex<Vec<Process>>,
    script: PathBuf,
    kube_proxy: PathBuf,
    containerd_socket: PathBuf,
    startup_time: Duration,
    // Dropped after the node's processes are gone and the machine is clean.
    control_plane: ControlPlane,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for NodeCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCluster")
            .field("server", &self.control_plane.server())
            .field("dir", &self.dir.path())
            .finish_non_exhaustive()
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        if let Ok(processes) = self.processes.get_mut() {
            while let Some(mut process) = processes.pop() {
                process.kill();
            }
        }
        if let Err(e) = cleanup(&self.script, &self.kube_proxy) {
            eprintln!("node cleanup: {e:#}");
        }
    }
}

/// What the node starts with.
#[derive(Clone, Debug, Default)]
pub struct NodeOptions {
    /// Image archives (`podman save`) imported into containerd before the kubelet starts.
    pub images: Vec<PathBuf>,
    /// The pod sandbox image (containerd's `sandbox_image`), one of `images`.
    pub sandbox_image: String,
}

impl NodeCluster {
    /// Starts a control plane and a node (blocking; seconds, plus the images' import).
    pub fn start(options: &NodeOptions) -> Result<NodeCluster> {
        let options = options.clone();
        super::on_own_thread("node", move || start_node(&options))
    }

    /// The control plane (kube-apiserver on [`NODE_ADDRESS`]).
    pub fn control_plane(&self) -> &ControlPlane {
        &self.control_plane
    }

    /// The node's scratch directory (configuration, logs, containerd's and the kubelet's state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// How long [`NodeCluster::start`] took from the control plane being ready to the node
    /// being Ready (the images' import included).
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// containerd's socket, for `ctr` and `crictl`.
    pub fn containerd_socket(&self) -> &Path {
        &self.containerd_socket
    }

    /// The last lines of every process's log (control plane and node), for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let node = match self.processes.lock() {
            Ok(processes) => super::describe_logs(&processes, lines),
            Err(_) => "<process list lock poisoned>".to_string(),
        };
        format!("{}\n{node}", self.control_plane.log_tails(lines))
    }

    /// Fails with the log tail of any node process that is no longer running.
    pub fn ensure_running(&self) -> Result<()> {
        self.control_plane.ensure_running()?;
        let mut processes = self
            .processes
            .lock()
            .map_err(|_| anyhow!("process list lock poisoned"))?;
        for process in processes.iter_mut() {
            process.ensure_running()?;
        }
        Ok(())
    }

    /// Runs `ctr` against the node's containerd in the `k8s.io` namespace: its output, or an
    /// error with it.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        ctr(&self.containerd_socket, args)
    }
}

fn ctr(socket: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("ctr")
        .arg("--address")
        .arg(socket)
        .args(["--namespace", "k8s.io"])
        .args(args)
        .output()
        .context("running ctr")?;
    if !output.status.success() {
        bail!(
            "ctr {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The directory with kubelet, kube-proxy and kube-scheduler: the one [`NODE_BIN_DIR_ENV`]
/// names, else the build script's cache directory.
pub fn node_bin_dir() -> Result<PathBuf> {
    let dir = match std::env::var_os(NODE_BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => super::build_script_dir("--print-node-bin-dir")?,
    };
    for binary in ["kubelet", "kube-proxy", "kube-scheduler"] {
        if !dir.join(binary).is_file() {
            bail!(
                "{} is missing: run `make node` to build the node's binaries (`make test` does \
                 so and sets {NODE_BIN_DIR_ENV})",
                dir.join(binary).display()
            );
        }
    }
    Ok(dir)
}

fn node_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("node/node.sh")
}

fn run_script(script: &Path, args: &[&str]) -> Result<()> {
    let output = Command::new("bash")
        .arg(script)
        .args(args)
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !output.status.success() {
        bail!(
            "{} {} failed: {}",
            script.display(),
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn cleanup(script: &Path, kube_proxy: &Path) -> Result<()> {
    let kube_proxy = kube_proxy
        .to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", kube_proxy.display()))?;
    run_script(script, &["cleanup", kube_proxy])
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", path.display()))
}

/// Single-quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn start_node(options: &NodeOptions) -> Result<NodeCluster> {
    let bin = node_bin_dir()?;
    let script = node_script();
    let kube_proxy = bin.join("kube-proxy");
    // Whatever a run killed outright left behind, before anything of ours exists.
    cleanup(&script, &kube_proxy).context("cleaning up after an earlier node")?;
    let dir = tempfile::Builder::new()
        .prefix("tokengate-node-")
        .tempdir()
        .context("creating the node directory")?;
    let root = dir.path().to_path_buf();
    // Registered before anything is set up: the cleanup (unmounts first) runs before the
    // directory is removed.
    process::run_at_exit(&format!(
        "bash {} cleanup {}",
        sh_quote(utf8(&script)?),
        sh_quote(utf8(&kube_proxy)?)
    ))?;
    process::remove_at_exit(&root)?;
    run_script(&script, &["setup", utf8(&root)?])?;

    let control_plane = match ControlPlane::start_with(ControlPlaneOptions {
        address: NODE_ADDRESS,
        node: true,
    }) {
        Ok(cp) => cp,
        Err(e) => {
            let _ = cleanup(&script, &kube_proxy);
            return Err(e);
        }
    };
    let started = Instant::now();
    let mut node = NodeCluster {
        processes: Mutex::new(Vec::new()),
        script,
        kube_proxy,
        containerd_socket: root.join("containerd/containerd.sock"),
        startup_time: Duration::ZERO,
        control_plane,
        dir,
    };
    if let Err(e) = launch(&node, &bin, options) {
        let logs = node.log_tails(40);
        return Err(e.context(format!(
            "node start-up failed; logs of every process:\n{logs}\n-----"
        )));
    }
    node.startup_time = started.elapsed();
    eprintln!(
        "node {NODE_NAME} Ready in {:.1}s (dir {})",
        node.startup_time.as_secs_f64(),
        node.dir.path().display()
    );
    Ok(node)
}

fn launch(node: &NodeCluster, bin: &Path, options: &NodeOptions) -> Result<()> {
    let root = node.dir.path();
    let logs = root.join("logs");
    let cp = &node.control_plane;
    let push = |process: Process| -> Result<()> {
        node.processes
            .lock()
            .map_err(|_| anyhow!("process list lock poisoned"))?
            .push(process);
        Ok(())
    };
    let running = || node.ensure_running();

    // containerd: its own root, state and socket; runc from Debian without systemd; the CNI
    // plugins from Debian with our configuration; network namespaces under its state.
    let containerd_dir = root.join("containerd");
    let cni_conf_dir = root.join("cni/net.d");
    std::fs::create_dir_all(&cni_conf_dir).context("creating the CNI configuration directory")?;
    write_file(
        &cni_conf_dir.join("10-tokengate.conflist"),
        &cni_config(&root.join("cni/ipam"))?,
    )?;
    let containerd_config = containerd_dir.join("config.toml");
    std::fs::create_dir_all(&containerd_dir).context("creating containerd's directory")?;
    write_file(
        &containerd_config,
        &containerd_config_text(&containerd_dir, &cni_conf_dir, &options.sandbox_image)?,
    )?;
    let mut containerd = Command::new("containerd");
    containerd.arg("--config").arg(&containerd_config);
    push(Process::spawn(
        "containerd",
        containerd,
        &logs.join("containerd.log"),
    )?)?;
    super::wait_blocking(
        &running,
        Duration::from_secs(30),
        "containerd's socket",
        || Ok(node.containerd_socket.exists() && ctr(&node.containerd_socket, &["version"]).is_ok()),
    )?;
    for archive in &options.images {
        ctr(
            &node.containerd_socket,
            &["images", "import", "--no-unpack", utf8(archive)?],
        )
        .with_context(|| format!("importing {}", archive.display()))?;
    }

    // kubelet: cluster-admin credentials (a test node, no Node authorizer), webhook
    // authentication and authorization of its own API with the cluster CA.
    let kubelet_dir = root.join("kubelet");
    std::fs::create_dir_all(&kubelet_dir).context("creating the kubelet's directory")?;
    let ca_file = root.join("ca.crt");
    write_file(&ca_file, cp.ca_pem())?;
    let kubelet_config = root.join("kubelet.yaml");
    write_file(
        &kubelet_config,
        &kubelet_config_text(&node.containerd_socket, &ca_file, &root.join("pod-logs"))?,
    )?;
    let mut kubelet = Command::new(bin.join("kubelet"));
    kubelet
        .arg(format!("--config={}", kubelet_config.display()))
        .arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
        .arg(format!("--root-dir={}", kubelet_dir.display()))
        .arg(format!("--cert-dir={}", root.join("kubelet-pki").display()))
        .arg(format!("--hostname-override={NODE_NAME}"))
        .arg(format!("--node-ip={NODE_ADDRESS}"))
        .arg("--v=1");
    push(Process::spawn(
        "kubelet",
        kubelet,
        &logs.join("kubelet.log"),
    )?)?;

    let mut scheduler = Command::new(bin.join("kube-scheduler"));
    scheduler
        .arg(format!("--kubeconfig={}", cp.admin_kubeconfig().display()))
        .arg(format!(
            "--authentication-kubeconfig={}",
            cp.admin_kubeconfig().display()
        ))
        .arg(format!(
            "--authorization-kubeconfig={}",
            cp.admin_kubeconfig().display()
        ))
        .arg("--leader-elect=false")
        .arg("--bind-address=127.0.0.1")
        .arg(format!("--secure-port={}", free_port()?));
    push(Process::spawn(
        "kube-scheduler",
        scheduler,
        &logs.join("kube-scheduler.log"),
    )?)?;

    let proxy_config = root.join("kube-proxy.yaml");
    write_file(
        &proxy_config,
        &kube_proxy_config_text(cp.admin_kubeconfig())?,
    )?;
    let mut proxy = Command::new(&node.kube_proxy);
    proxy.arg(format!("--config={}", proxy_config.display()));
    push(Process::spawn(
        "kube-proxy",
        proxy,
        &logs.join("kube-proxy.log"),
    )?)?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the start-up runtime")?;
    let client = runtime.block_on(cp.client())?;
    let nodes = Api::<NodeObject>::all(client);
    super::wait_blocking(&running, READY_TIMEOUT, "the node to be Ready", || {
        let node = runtime.block_on(nodes.get_opt(NODE_NAME)).ok().flatten();
        Ok(node
            .and_then(|n| n.status)
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"))
    })
}

fn cni_config(ipam_dir: &Path) -> Result<String> {
    let config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "tokengate-node",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": true,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": utf8(ipam_dir)?,
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_ADDRESS.to_string()}]],
                    // Only the pod and service ranges: no default route out of the machine.
                    "routes": [{"dst": POD_CIDR}, {"dst": SERVICE_CIDR}]
                }
            },
            {"type": "portmap", "capabilities": {"portMappings": true}},
            {"type": "loopback"}
        ]
    });
    serde_json::to_string_pretty(&config).context("writing the CNI configuration")
}

fn containerd_config_text(dir: &Path, cni_conf_dir: &Path, sandbox_image: &str) -> Result<String> {
    let dir = utf8(dir)?;
    let cni_conf_dir = utf8(cni_conf_dir)?;
    let runc = which("runc")?;
    Ok(format!(
        r#"version = 2
root = "{dir}/root"
state = "{dir}/state"
# Snapshotters and plugins the node does not use, which would only log errors.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]

[grpc]
  address = "{dir}/containerd.sock"

[ttrpc]
  address = "{dir}/containerd.sock.ttrpc"

[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  # A negative oom_score_adj needs CAP_SYS_RESOURCE, which the node may not have.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  BinaryName = "{runc}"

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni_conf_dir}"
"#
    ))
}

fn kubelet_config_text(socket: &Path, ca_file: &Path, pod_logs: &Path) -> Result<String> {
    let socket = utf8(socket)?;
    let ca_file = utf8(ca_file)?;
    let pod_logs = utf8(pod_logs)?;
    let (port, healthz_port) = (free_port()?, free_port()?);
    Ok(format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: "{NODE_ADDRESS}"
port: {port}
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: {healthz_port}
containerRuntimeEndpoint: "unix://{socket}"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: "{ca_file}"
authorization:
  mode: Webhook
# Pods get no resolver of the machine's: nothing they look up can leave it.
resolvConf: ""
podLogsDir: "{pod_logs}"
# ConfigMap volumes (the sidecar's bundle) follow their ConfigMaps within seconds.
syncFrequency: 5s
# A test node on a shared disk: never evict or collect images for space.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "1Mi"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
serializeImagePulls: false
"#
    ))
}

fn kube_proxy_config_text(kubeconfig: &Path) -> Result<String> {
    let kubeconfig = utf8(kubeconfig)?;
    let (metrics, healthz) = (free_port()?, free_port()?);
    Ok(format!(
        r#"apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: "{kubeconfig}"
hostnameOverride: {NODE_NAME}
mode: iptables
clusterCIDR: {POD_CIDR}
metricsBindAddress: "127.0.0.1:{metrics}"
healthzBindAddress: "127.0.0.1:{healthz}"
# NodePorts only on the node's own address, never on loopback (which would need
# route_localnet) or the machine's other interfaces.
nodePortAddresses: ["{NODE_ADDRESS}/32"]
iptables:
  localhostNodePorts: false
  syncPeriod: 30s
  minSyncPeriod: 0s
# Leave the machine's connection tracking limits and timeouts as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
"#
    ))
}

fn which(program: &str) -> Result<String> {
    for dir in ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/bin"] {
        let path = Path::new(dir).join(program);
        if path.is_file() {
            return Ok(path.display().to_string());
        }
    }
    bail!("{program} is not installed (testkit/node/node.sh install installs it)")
}
