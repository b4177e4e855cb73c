//! Runs one container of a Pod (as stored by the API server) as a local process, the way a
//! kubelet would as far as the container can tell: its ConfigMap, Secret, downward-API,
//! projected and emptyDir volumes appear in local directories laid out like kubelet's atomic
//! writer (a timestamped data directory, a `..data` symlink to it and one symlink per entry, with
//! `..data` swapped atomically on update), mount paths in its command, arguments and environment
//! point at those directories, and the Pod is marked Ready through its status subresource.
//!
//! There is no container image here: the command runs on this machine, with
//! [`PodRunnerOptions::program`] mapping the image's program paths to local binaries. Nor is
//! there a pod network: [`PodRunnerOptions::port`] maps a port of the pod to a free local port,
//! in the container's addresses (`0.0.0.0:15080`, `127.0.0.1:8080`) and for kubelet-style
//! probes ([`RunningPod::probe`]), so several pods can run side by side.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, Probe, Secret, ServiceAccount,
    Volume,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use super::process::{self, Process};

/// What to run and how; build with [`PodRunnerOptions::new`] and the builder methods.
#[derive(Debug)]
pub struct PodRunnerOptions {
    /// Name of the container (regular or init) to run.
    pub container: String,
    /// Stands in for the image's entrypoint when the container has no `command`.
    pub entrypoint: Option<Vec<String>>,
    /// Program replacements: the container's `command[0]` → a local executable.
    pub programs: Vec<(String, PathBuf)>,
    /// Further textual replacements in command, arguments and environment values, applied after
    /// mount paths and ports (e.g. a listen address the test wants elsewhere).
    pub rewrites: Vec<(String, String)>,
    /// Pod ports → local ports (see [`PodRunnerOptions::port`]).
    pub ports: Vec<(u16, u16)>,
    /// Extra environment for the container process (after the pod's own).
    pub env: Vec<(String, String)>,
    /// A stand-in application process, started before the container.
    pub app: Option<Command>,
    /// `http://127.0.0.1:PORT/path` that must answer 2xx before the Pod is marked Ready;
    /// without it, the container's own HTTP readinessProbe (if any) must pass, as kubelet's.
    pub ready_url: Option<String>,
    /// Mark the Pod Running and Ready once started (and `ready_url` answers).
    pub mark_ready: bool,
    /// How often volume contents are re-read from the API server; zero disables it
    /// ([`RunningPod::sync_volumes`] still works).
    pub sync_interval: Duration,
    pub ready_timeout: Duration,
}

impl PodRunnerOptions {
    pub fn new(container: impl Into<String>) -> Self {
        PodRunnerOptions {
            container: container.into(),
            entrypoint: None,
            programs: Vec::new(),
            rewrites: Vec::new(),
            ports: Vec::new(),
            env: Vec::new(),
            app: None,
            ready_url: None,
            mark_ready: true,
            sync_interval: Duration::from_millis(250),
            ready_timeout: Duration::from_secs(30),
        }
    }

    pub fn entrypoint(mut self, argv: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.entrypoint = Some(argv.into_iter().map(Into::into).collect());
        self
    }

    pub fn program(mut self, in_image: impl Into<String>, local: impl Into<PathBuf>) -> Self {
        self.programs.push((in_image.into(), local.into()));
        self
    }

    pub fn rewrite(mut self, from: impl Into<String>, to: impl Into<String>) -> Self {
        self.rewrites.push((from.into(), to.into()));
        self
    }

    /// Maps port `pod_port` of the pod to `local_port` on 127.0.0.1: addresses with that port
    /// in the container's command, arguments and environment (`0.0.0.0:P`, `127.0.0.1:P`,
    /// `localhost:P`, `[::]:P`) become `127.0.0.1:local_port`, and probes that reach `pod_port`
    /// go to `local_port`.
    pub fn port(mut self, pod_port: u16, local_port: u16) -> Self {
        self.ports.push((pod_port, local_port));
        self
    }

    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn app(mut self, command: Command) -> Self {
        self.app = Some(command);
        self
    }

    pub fn ready_url(mut self, url: impl Into<String>) -> Self {
        self.ready_url = Some(url.into());
        self
    }

    pub fn mark_ready(mut self, mark: bool) -> Self {
        self.mark_ready = mark;
        self
    }

    pub fn sync_interval(mut self, interval: Duration) -> Self {
        self.sync_interval = interval;
        self
    }
}

/// A container of a Pod running locally. Dropping it stops the processes and the volume sync
/// and removes the local directories.
pub struct RunningPod {
    namespace: String,
    name: String,
    container_name: String,
    /// The Pod as it was given (its spec: probes, ports).
    pod: Pod,
    ports: Vec<(u16, u16)>,
    mounts: Vec<(String, PathBuf)>,
    projector: Arc<Projector>,
    sync_task: Option<JoinHandle<()>>,
    // Drop order: processes before the directory they run in.
    container: Process,
    app: Option<Process>,
    root: tempfile::TempDir,
}

impl std::fmt::Debug for RunningPod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningPod")
            .field("pod", &format!("{}/{}", self.namespace, self.name))
            .field("container", &self.container_name)
            .field("root", &self.root.path())
            .finish_non_exhaustive()
    }
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        if let Some(task) = self.sync_task.take() {
            task.abort();
        }
    }
}

impl RunningPod {
    /// Projects the container's volumes, starts the stand-in app (if any) and the container,
    /// and (unless disabled) marks the Pod Ready. `pod` must be the object as stored (it needs
    /// its uid).
    pub async fn start(
        client: &kube::Client,
        pod: &Pod,
        mut options: PodRunnerOptions,
    ) -> Result<RunningPod> {
        let namespace = pod.metadata.namespace.clone().ok_or_else(|| {
            anyhow!("the Pod has no namespace; pass it as the API server returned it")
        })?;
        let name = pod
            .metadata
            .name
            .clone()
            .ok_or_else(|| anyhow!("the Pod has no name"))?;
        let uid = pod
            .metadata
            .uid
            .clone()
            .ok_or_else(|| anyhow!("Pod {namespace}/{name} has no uid; pass it as stored"))?;
        let spec = pod
            .spec
            .as_ref()
            .ok_or_else(|| anyhow!("Pod {namespace}/{name} has no spec"))?;
        let container = find_container(pod, &options.container)
            .ok_or_else(|| {
                anyhow!(
                    "Pod {namespace}/{name} has no container {:?}",
                    options.container
                )
            })?
            .clone();

        let root = tempfile::Builder::new()
            .prefix(&format!("tokengate-pod-{name}-"))
            .tempdir()
            .context("creating the pod directory")?;
        process::remove_at_exit(root.path())?;
        let volumes_dir = root.path().join("volumes");

        // Only what this container mounts is projected.
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        for mount in container.volume_mounts.iter().flatten() {
            let volume = spec
                .volumes
                .iter()
                .flatten()
                .find(|v| v.name == mount.name)
                .ok_or_else(|| {
                    anyhow!("volumeMount {:?} names no volume of the Pod", mount.name)
                })?;
            let dir = volumes_dir.join(&volume.name);
            if !volumes
                .iter()
                .any(|v: &ProjectedVolume| v.volume.name == volume.name)
            {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                volumes.push(ProjectedVolume {
                    volume: volume.clone(),
                    dir: dir.clone(),
                    current: None,
                });
            }
            let local = match mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
                Some(sub_path) => dir.join(safe_relative(sub_path)?),
                None => dir,
            };
            mounts.push((mount.mount_path.trim_end_matches('/').to_string(), local));
        }
        // Longest first, so nested mount paths win over their parents.
        mounts.sort_by_key(|(path, _)| std::cmp::Reverse(path.len()));

        let projector = Arc::new(Projector {
            client: client.clone(),
            namespace: namespace.clone(),
            name: name.clone(),
            uid,
            service_account: spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".to_string()),
            volumes: Mutex::new(volumes),
            tokens: Mutex::new(HashMap::new()),
            log: root.path().join("logs").join("runner.log"),
        });
        projector
            .sync()
            .await
            .with_context(|| format!("projecting the volumes of Pod {namespace}/{name}"))?;

        let logs = root.path().join("logs");
        let app = match options.app.take() {
            Some(command) => Some(Process::spawn("app", command, &logs.join("app.log"))?),
            None => None,
        };

        let command = container_command(client, pod, &container, &options, &mounts, root.path())
            .await
            .with_context(|| format!("building the command of container {}", container.name))?;
        let container_process = Process::spawn(
            container.name.clone(),
            command,
            &logs.join(format!("{}.log", container.name)),
        )?;

        let sync_task = (!options.sync_interval.is_zero()).then(|| {
            let projector = projector.clone();
            let interval = options.sync_interval;
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(interval).await;
                    if let Err(e) = projector.sync().await {
                        projector.note(&format!("volume sync failed: {e:#}"));
                    }
                }
            })
        });

        let mut running = RunningPod {
            namespace,
            name,
            container_name: container.name.clone(),
            pod: pod.clone(),
            ports: options.ports.clone(),
            mounts,
            projector,
            sync_task,
            container: container_process,
            app,
            root,
        };
        let ready_url = match options.ready_url.clone() {
            Some(url) => Some(url),
            None => container
                .readiness_probe
                .as_ref()
                .map(|probe| running.http_probe_url(&container, probe))
                .transpose()?
                .flatten(),
        };
        if let Some(url) = ready_url {
            running.wait_ready_url(&url, options.ready_timeout).await?;
        }
        if options.mark_ready {
            running.mark_ready().await?;
        }
        Ok(running)
    }

    async fn wait_ready_url(&mut self, url: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.container.ensure_running()?;
            if let Some(app) = self.app.as_mut() {
                app.ensure_running()?;
            }
            let probe_url = url.to_string();
            let status = tokio::task::spawn_blocking(move || {
                process::http_get_status(&probe_url, Duration::from_secs(1))
            })
            .await
            .context("readiness probe task")?;
            if matches!(status, Ok(code) if (200..300).contains(&code)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{url} not ready after {timeout:?} ({status:?}); last lines of {}:\n{}",
                    self.container_name,
                    self.container.log_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Runs one of a container's probes once, as kubelet would: its port (a number, or a name
    /// resolved among that container's own ports) on the pod's address, through the port map.
    /// httpGet succeeds on 200–399, tcpSocket when the connection opens.
    pub async fn probe(&self, container: &str, kind: ProbeKind) -> Result<ProbeResult> {
        let found = find_container(&self.pod, container)
            .ok_or_else(|| anyhow!("Pod {} has no container {container:?}", self.name))?
            .clone();
        let probe = match kind {
            ProbeKind::Startup => &found.startup_probe,
            ProbeKind::Readiness => &found.readiness_probe,
            ProbeKind::Liveness => &found.liveness_probe,
        }
        .as_ref()
        .ok_or_else(|| anyhow!("container {container} has no {kind:?} probe"))?;
        if let Some(url) = self.http_probe_url(&found, probe)? {
            let target = url.clone();
            let status = tokio::task::spawn_blocking(move || {
                process::http_get_status(&url, Duration::from_secs(1))
            })
            .await
            .context("probe task")?;
            return Ok(match status {
                Ok(code) => ProbeResult {
                    target,
                    success: (200..400).contains(&code),
                    detail: format!("HTTP {code}"),
                },
                Err(err) => ProbeResult {
                    target,
                    success: false,
                    detail: format!("{err:#}"),
                },
            });
        }
        if let Some(action) = &probe.tcp_socket {
            let port = self.local_port(&found, &action.port)?;
            let host = action
                .host
                .clone()
                .unwrap_or_else(|| "127.0.0.1".to_string());
            let target = format!("{host}:{port}");
            let connected = tokio::net::TcpStream::connect(&target).await;
            return Ok(ProbeResult {
                success: connected.is_ok(),
                detail: match connected {
                    Ok(_) => "connected".to_string(),
                    Err(err) => err.to_string(),
                },
                target,
            });
        }
        bail!("container {container}: only httpGet and tcpSocket probes are run here")
    }

    /// `http://HOST:LOCAL_PORT/path` of an httpGet probe; `None` for other kinds of probe.
    fn http_probe_url(&self, container: &Container, probe: &Probe) -> Result<Option<String>> {
        let Some(action) = &probe.http_get else {
            return Ok(None);
        };
        if action.scheme.as_deref().is_some_and(|s| s != "HTTP") {
            bail!(
                "container {}: only HTTP probes are run here",
                container.name
            );
        }
        let port = self.local_port(container, &action.port)?;
        let host = action
            .host
            .clone()
            .unwrap_or_else(|| "127.0.0.1".to_string());
        let path = action.path.clone().unwrap_or_else(|| "/".to_string());
        let path = if path.starts_with('/') {
            path
        } else {
            format!("/{path}")
        };
        Ok(Some(format!("http://{host}:{port}{path}")))
    }

    /// The local port a probe's port reaches: names resolve among the container's own ports
    /// (as kubelet resolves them), then the port map applies.
    fn local_port(&self, container: &Container, port: &IntOrString) -> Result<u16> {
        let number = match port {
            IntOrString::Int(n) => *n,
            IntOrString::String(name) => container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.container_port)
                .ok_or_else(|| {
                    anyhow!(
                        "container {} has no port named {name:?} (kubelet would fail this probe)",
                        container.name
                    )
                })?,
        };
        let number = u16::try_from(number)
            .with_context(|| format!("probe port {number} of {}", container.name))?;
        Ok(self
            .ports
            .iter()
            .find(|(pod_port, _)| *pod_port == number)
            .map_or(number, |(_, local)| *local))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The pod's local directory (volumes, logs, working directory).
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The local directory of volume `name`, if the container mounts it.
    pub fn volume_dir(&self, name: &str) -> Option<PathBuf> {
        let dir = self.root.path().join("volumes").join(name);
        dir.is_dir().then_some(dir)
    }

    /// The local path that a path inside the container maps to, if it lies under a mount.
    pub fn local_path(&self, container_path: &str) -> Option<PathBuf> {
        self.mounts.iter().find_map(|(mount, local)| {
            let rest = container_path.strip_prefix(mount.as_str())?;
            if rest.is_empty() {
                Some(local.clone())
            } else {
                rest.strip_prefix('/').map(|rest| local.join(rest))
            }
        })
    }

    pub fn container(&mut self) -> &mut Process {
        &mut self.container
    }

    pub fn app(&mut self) -> Option<&mut Process> {
        self.app.as_mut()
    }

    /// The container's output so far.
    pub fn logs(&self) -> String {
        self.container.log()
    }

    /// Notes of the volume sync (failures), if any.
    pub fn runner_log(&self) -> String {
        process::read_lossy(&self.projector.log)
    }

    /// Re-reads the volume sources now; `true` if any volume changed.
    pub async fn sync_volumes(&self) -> Result<bool> {
        self.projector.sync().await
    }

    /// Waits until the container's output contains `needle`; fails early if it exits without.
    pub async fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.logs().contains(needle) {
                return Ok(());
            }
            let exited = self.container.try_wait()?;
            if exited.is_some() && !self.logs().contains(needle) {
                bail!(
                    "container {} exited ({exited:?}) without printing {needle:?}; output:\n{}",
                    self.container_name,
                    self.container.log_tail(40)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "container {} did not print {needle:?} within {timeout:?}; output:\n{}\nrunner:\n{}",
                    self.container_name,
                    self.container.log_tail(40),
                    self.runner_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Marks the Pod Running with every container started and ready (status subresource).
    pub async fn mark_ready(&self) -> Result<()> {
        let pods = Api::<Pod>::namespaced(self.projector.client.clone(), &self.namespace);
        let pod = pods
            .get(&self.name)
            .await
            .with_context(|| format!("reading Pod {}/{}", self.namespace, self.name))?;
        let now = rfc3339(SystemTime::now());
        let spec = pod.spec.unwrap_or_default();
        let running = json!({ "running": { "startedAt": now } });
        let container_statuses: Vec<_> = spec
            .containers
            .iter()
            .map(|c| container_status(c, running.clone(), true))
            .collect();
        let init_statuses: Vec<_> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| {
                if c.restart_policy.as_deref() == Some("Always") {
                    container_status(c, running.clone(), true)
                } else {
                    let done = json!({ "terminated": {
                        "exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
                    }});
                    container_status(c, done, false)
                }
            })
            .collect();
        let condition =
            |kind: &str| json!({ "type": kind, "status": "True", "lastTransitionTime": now });
        let patch = json!({ "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "hostIPs": [{ "ip": "127.0.0.1" }],
            "podIP": "127.0.0.1",
            "podIPs": [{ "ip": "127.0.0.1" }],
            "startTime": now,
            "conditions": [
                condition("PodScheduled"),
                condition("Initialized"),
                condition("ContainersReady"),
                condition("Ready"),
            ],
            "containerStatuses": container_statuses,
            "initContainerStatuses": init_statuses,
        }});
        pods.patch_status(&self.name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .with_context(|| format!("marking Pod {}/{} ready", self.namespace, self.name))?;
        Ok(())
    }
}

/// Which of a container's probes to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProbeKind {
    Startup,
    Readiness,
    Liveness,
}

/// The outcome of one probe.
#[derive(Clone, Debug)]
pub struct ProbeResult {
    /// What was probed, e.g. `http://127.0.0.1:41234/healthz`.
    pub target: String,
    pub success: bool,
    /// The HTTP status or the connection's outcome.
    pub detail: String,
}

fn container_status(
    container: &Container,
    state: serde_json::Value,
    ready: bool,
) -> serde_json::Value {
    json!({
        "name": container.name,
        "image": container.image.clone().unwrap_or_default(),
        "imageID": "",
        "ready": ready,
        "started": ready,
        "restartCount": 0,
        "state": state,
    })
}

fn find_container<'a>(pod: &'a Pod, name: &str) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
}

/// The container's command with its environment, mount paths rewritten to local directories.
async fn container_command(
    client: &kube::Client,
    pod: &Pod,
    container: &Container,
    options: &PodRunnerOptions,
    mounts: &[(String, PathBuf)],
    root: &Path,
) -> Result<Command> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    // A path above a mount (`--bundle /etc/tokengate/bundle` with mounts at
    // `/etc/tokengate/bundle/policies` and `.../keys`) names a directory of the container's
    // file system: it maps into a local root where each mount path is a link to its volume.
    let rootfs = root.join("rootfs");
    let mut ancestors: Vec<String> = Vec::new();
    for (mount, local) in mounts {
        let link = rootfs.join(mount.trim_start_matches('/'));
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        if !link.exists() {
            symlink(local, &link).with_context(|| format!("linking {}", link.display()))?;
        }
        for dir in Path::new(mount.as_str()).ancestors().skip(1) {
            if dir == Path::new("/") || dir.as_os_str().is_empty() {
                break;
            }
            let dir = dir.to_string_lossy().into_owned();
            if !ancestors.contains(&dir) && !mounts.iter().any(|(m, _)| *m == dir) {
                ancestors.push(dir);
            }
        }
    }
    ancestors.sort_by_key(|a| std::cmp::Reverse(a.len()));
    let rewrite = |s: &str| -> String {
        let mut out = s.to_string();
        for (mount, local) in mounts {
            out = replace_path(&out, mount, &local.to_string_lossy());
        }
        out = map_ancestor(&out, &ancestors, &rootfs);
        for (pod_port, local_port) in &options.ports {
            out = map_port(&out, *pod_port, *local_port);
        }
        for (from, to) in &options.rewrites {
            out = out.replace(from.as_str(), to);
        }
        out
    };

    let mut env: Vec<(String, String)> = Vec::new();
    for source in container.env_from.iter().flatten() {
        let prefix = source.prefix.clone().unwrap_or_default();
        let data = if let Some(reference) = &source.config_map_ref {
            config_map_data(
                client,
                namespace,
                &reference.name,
                reference.optional.unwrap_or(false),
            )
            .await?
        } else if let Some(reference) = &source.secret_ref {
            secret_data(
                client,
                namespace,
                &reference.name,
                reference.optional.unwrap_or(false),
            )
            .await?
        } else {
            BTreeMap::new()
        };
        for (key, value) in data {
            env.push((
                format!("{prefix}{key}"),
                String::from_utf8_lossy(&value).into_owned(),
            ));
        }
    }
    for var in container.env.iter().flatten() {
        let value = if let Some(value) = &var.value {
            expand(value, &env)
        } else if let Some(from) = &var.value_from {
            if let Some(field) = &from.field_ref {
                field_value(pod, &field.field_path)?
            } else if let Some(key) = &from.config_map_key_ref {
                let data =
                    config_map_data(client, namespace, &key.name, key.optional.unwrap_or(false))
                        .await?;
                match data.get(&key.key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if key.optional.unwrap_or(false) => continue,
                    None => bail!(
                        "env {}: ConfigMap {} has no key {}",
                        var.name,
                        key.name,
                        key.key
                    ),
                }
            } else if let Some(key) = &from.secret_key_ref {
                let data = secret_data(client, namespace, &key.name, key.optional.unwrap_or(false))
                    .await?;
                match data.get(&key.key) {
                    Some(v) => String::from_utf8_lossy(v).into_owned(),
                    None if key.optional.unwrap_or(false) => continue,
                    None => bail!(
                        "env {}: Secret {} has no key {}",
                        var.name,
                        key.name,
                        key.key
                    ),
                }
            } else {
                bail!(
                    "env {}: only fieldRef, configMapKeyRef and secretKeyRef are supported",
                    var.name
                );
            }
        } else {
            String::new()
        };
        env.push((var.name.clone(), value));
    }
    let env: Vec<(String, String)> = env
        .into_iter()
        .map(|(k, v)| (k, rewrite(&v)))
        .chain(options.env.iter().cloned())
        .collect();

    let mut argv: Vec<String> = match (&container.command, &options.entrypoint) {
        (Some(command), _) => command.clone(),
        (None, Some(entrypoint)) => entrypoint.clone(),
        (None, None) => bail!(
            "container {} has no command and no entrypoint was given (images are not run here)",
            container.name
        ),
    };
    argv.extend(container.args.iter().flatten().cloned());
    let argv: Vec<String> = argv.iter().map(|a| rewrite(&expand(a, &env))).collect();
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| anyhow!("container {} has an empty command", container.name))?;
    let program = options
        .programs
        .iter()
        .find(|(in_image, _)| in_image == program)
        .map(|(_, local)| local.clone())
        .unwrap_or_else(|| PathBuf::from(program));

    let mut command = Command::new(program);
    command.args(args);
    command.env("HOSTNAME", pod.metadata.name.as_deref().unwrap_or_default());
    command.envs(env);
    // The image's working directory does not exist here unless it lies under a mount.
    let default_workdir = root.join("workdir");
    std::fs::create_dir_all(&default_workdir)
        .with_context(|| format!("creating {}", default_workdir.display()))?;
    let workdir = container
        .working_dir
        .as_deref()
        .map(|dir| PathBuf::from(rewrite(dir)))
        .filter(|dir| dir.is_dir())
        .unwrap_or(default_workdir);
    command.current_dir(workdir);
    Ok(command)
}

/// Addresses with port `pod_port` on the pod's own addresses become `127.0.0.1:local_port`;
/// `127.0.0.1:80801` stays as it is for port 8080.
fn map_port(s: &str, pod_port: u16, local_port: u16) -> String {
    let mut out = s.to_string();
    for host in ["0.0.0.0", "127.0.0.1", "localhost", "[::]", "[::1]"] {
        let from = format!("{host}:{pod_port}");
        let mut mapped = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(&from) {
            let after = &rest[i + from.len()..];
            let whole = !after.starts_with(|c: char| c.is_ascii_digit())
                && !rest[..i].ends_with(|c: char| c.is_ascii_alphanumeric() || c == '.');
            mapped.push_str(&rest[..i]);
            if whole {
                mapped.push_str(&format!("127.0.0.1:{local_port}"));
            } else {
                mapped.push_str(&from);
            }
            rest = after;
        }
        mapped.push_str(rest);
        out = mapped;
    }
    out
}

/// Replaces `from` (a path) by `to` wherever it appears as a whole path prefix.
/// `s` (or the value of a `--flag=value`) when it is, or lies below, a directory above a mount:
/// the same path under `rootfs`. Anything else is returned unchanged.
fn map_ancestor(s: &str, ancestors: &[String], rootfs: &Path) -> String {
    let (prefix, value) = match s.split_once('=') {
        Some((flag, value)) if flag.starts_with('-') => (format!("{flag}="), value),
        _ => (String::new(), s),
    };
    for ancestor in ancestors {
        if let Some(rest) = value.strip_prefix(ancestor.as_str())
            && (rest.is_empty() || rest.starts_with('/'))
        {
            let mapped = rootfs.join(ancestor.trim_start_matches('/'));
            return format!("{prefix}{}{rest}", mapped.display());
        }
    }
    s.to_string()
}

fn replace_path(s: &str, from: &str, to: &str) -> String {
    if from.is_empty() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        let boundary = after
            .chars()
            .next()
            .is_none_or(|c| !(c.is_alphanumeric() || matches!(c, '.' | '_' | '-')));
        out.push_str(&rest[..i]);
        out.push_str(if boundary { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Kubernetes' `$(VAR)` expansion (`$$` escapes); unknown references stay as written.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(after_dollar) = after.strip_prefix('$') {
            out.push('$');
            rest = after_dollar;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

#[derive(Clone, Debug, PartialEq)]
struct FileData {
    bytes: Vec<u8>,
    mode: u32,
}

type Payload = BTreeMap<String, FileData>;

struct ProjectedVolume {
    volume: Volume,
    dir: PathBuf,
    current: Option<Payload>,
}

struct CachedToken {
    token: String,
    refresh_at: Instant,
}

/// Keeps the local volume directories in step with the API server.
struct Projector {
    client: kube::Client,
    namespace: String,
    name: String,
    uid: String,
    service_account: String,
    volumes: Mutex<Vec<ProjectedVolume>>,
    tokens: Mutex<HashMap<String, CachedToken>>,
    log: PathBuf,
}

const DEFAULT_MODE: i32 = 0o644;

impl Projector {
    fn note(&self, message: &str) {
        use std::io::Write;
        if let Some(parent) = self.log.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
        {
            let _ = writeln!(file, "{} {message}", rfc3339(SystemTime::now()));
        }
    }

    /// Recomputes every volume and rewrites those whose contents changed.
    async fn sync(&self) -> Result<bool> {
        let pod = Api::<Pod>::namespaced(self.client.clone(), &self.namespace)
            .get(&self.name)
            .await
            .with_context(|| format!("reading Pod {}/{}", self.namespace, self.name))?;
        let mut volumes = self.volumes.lock().await;
        let mut changed = false;
        for projected in volumes.iter_mut() {
            let Some(payload) = self
                .payload(&pod, &projected.volume)
                .await
                .with_context(|| format!("volume {}", projected.volume.name))?
            else {
                continue;
            };
            if projected.current.as_ref() != Some(&payload) {
                write_atomically(&projected.dir, &payload)
                    .with_context(|| format!("writing volume {}", projected.volume.name))?;
                projected.current = Some(payload);
                changed = true;
            }
        }
        Ok(changed)
    }

    /// The files of a volume, or `None` for volumes that are plain directories (emptyDir).
    async fn payload(&self, pod: &Pod, volume: &Volume) -> Result<Option<Payload>> {
        let mut files = Payload::new();
        if let Some(source) = &volume.config_map {
            let mode = source.default_mode.unwrap_or(DEFAULT_MODE);
            let optional = source.optional.unwrap_or(false);
            let data =
                config_map_data(&self.client, &self.namespace, &source.name, optional).await?;
            add_keys(
                &mut files,
                &data,
                source.items.as_deref(),
                optional,
                mode,
                &source.name,
            )?;
        } else if let Some(source) = &volume.secret {
            let mode = source.default_mode.unwrap_or(DEFAULT_MODE);
            let optional = source.optional.unwrap_or(false);
            let name = source.secret_name.clone().unwrap_or_default();
            let data = secret_data(&self.client, &self.namespace, &name, optional).await?;
            add_keys(
                &mut files,
                &data,
                source.items.as_deref(),
                optional,
                mode,
                &name,
            )?;
        } else if let Some(source) = &volume.downward_api {
            let mode = source.default_mode.unwrap_or(DEFAULT_MODE);
            add_downward(&mut files, pod, source.items.as_deref(), mode)?;
        } else if let Some(source) = &volume.projected {
            let mode = source.default_mode.unwrap_or(DEFAULT_MODE);
            for projection in source.sources.iter().flatten() {
                if let Some(cm) = &projection.config_map {
                    let optional = cm.optional.unwrap_or(false);
                    let data =
                        config_map_data(&self.client, &self.namespace, &cm.name, optional).await?;
                    add_keys(
                        &mut files,
                        &data,
                        cm.items.as_deref(),
                        optional,
                        mode,
                        &cm.name,
                    )?;
                } else if let Some(secret) = &projection.secret {
                    let optional = secret.optional.unwrap_or(false);
                    let data =
                        secret_data(&self.client, &self.namespace, &secret.name, optional).await?;
                    add_keys(
                        &mut files,
                        &data,
                        secret.items.as_deref(),
                        optional,
                        mode,
                        &secret.name,
                    )?;
                } else if let Some(downward) = &projection.downward_api {
                    add_downward(&mut files, pod, downward.items.as_deref(), mode)?;
                } else if let Some(token) = &projection.service_account_token {
                    let key = format!("{}/{}", volume.name, token.path);
                    let value = self
                        .token(&key, token.audience.as_deref(), token.expiration_seconds)
                        .await?;
                    insert(&mut files, &token.path, value.into_bytes(), mode)?;
                } else {
                    bail!(
                        "only configMap, secret, downwardAPI and serviceAccountToken projections are supported"
                    );
                }
            }
        } else if volume.empty_dir.is_some() {
            return Ok(None);
        } else {
            bail!(
                "unsupported volume type (configMap, secret, downwardAPI, projected and emptyDir are)"
            );
        }
        Ok(Some(files))
    }

    /// A token bound to the Pod, as kubelet requests for projected token volumes; reused until
    /// 80% of its lifetime has passed.
    async fn token(
        &self,
        key: &str,
        audience: Option<&str>,
        expiration: Option<i64>,
    ) -> Result<String> {
        let mut tokens = self.tokens.lock().await;
        if let Some(cached) = tokens.get(key)
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let seconds = expiration.unwrap_or(3600);
        let request = TokenRequest {
            spec: Some(TokenRequestSpec {
                audiences: Some(
                    audience
                        .filter(|a| !a.is_empty())
                        .map(|a| vec![a.to_string()])
                        .unwrap_or_default(),
                ),
                expiration_seconds: Some(seconds),
                bound_object_ref: Some(BoundObjectReference {
                    api_version: Some("v1".to_string()),
                    kind: Some("Pod".to_string()),
                    name: Some(self.name.clone()),
                    uid: Some(self.uid.clone()),
                }),
            }),
            ..Default::default()
        };
        let response = Api::<ServiceAccount>::namespaced(self.client.clone(), &self.namespace)
            .create_token_request(&self.service_account, &PostParams::default(), &request)
            .await
            .with_context(|| {
                format!(
                    "requesting a token for ServiceAccount {}",
                    self.service_account
                )
            })?;
        let token = response
            .status
            .and_then(|s| s.token)
            .ok_or_else(|| anyhow!("TokenRequest returned no token"))?;
        let lifetime = Duration::from_secs(u64::try_from(seconds).unwrap_or(3600));
        tokens.insert(
            key.to_string(),
            CachedToken {
                token: token.clone(),
                refresh_at: Instant::now() + lifetime.mul_f64(0.8),
            },
        );
        Ok(token)
    }
}

async fn config_map_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let Some(config_map) = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .with_context(|| format!("reading ConfigMap {namespace}/{name}"))?
    else {
        if optional {
            return Ok(BTreeMap::new());
        }
        bail!("ConfigMap {namespace}/{name} not found");
    };
    let mut data: BTreeMap<String, Vec<u8>> = config_map
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    data.extend(
        config_map
            .binary_data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0)),
    );
    Ok(data)
}

async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let Some(secret) = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .with_context(|| format!("reading Secret {namespace}/{name}"))?
    else {
        if optional {
            return Ok(BTreeMap::new());
        }
        bail!("Secret {namespace}/{name} not found");
    };
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

fn add_keys(
    files: &mut Payload,
    data: &BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    optional: bool,
    default_mode: i32,
    source: &str,
) -> Result<()> {
    match items {
        None => {
            for (key, value) in data {
                insert(files, key, value.clone(), default_mode)?;
            }
        }
        Some(items) => {
            for item in items {
                match data.get(&item.key) {
                    Some(value) => insert(
                        files,
                        &item.path,
                        value.clone(),
                        item.mode.unwrap_or(default_mode),
                    )?,
                    None if optional => {}
                    None => bail!("{source} has no key {:?}", item.key),
                }
            }
        }
    }
    Ok(())
}

fn add_downward(
    files: &mut Payload,
    pod: &Pod,
    items: Option<&[DownwardAPIVolumeFile]>,
    default_mode: i32,
) -> Result<()> {
    for item in items.unwrap_or_default() {
        let Some(field) = &item.field_ref else {
            bail!("downwardAPI {}: only fieldRef is supported", item.path);
        };
        let value = field_value(pod, &field.field_path)?;
        insert(
            files,
            &item.path,
            value.into_bytes(),
            item.mode.unwrap_or(default_mode),
        )?;
    }
    Ok(())
}

fn insert(files: &mut Payload, path: &str, bytes: Vec<u8>, mode: i32) -> Result<()> {
    safe_relative(path)?;
    let mode = u32::try_from(mode).with_context(|| format!("file mode {mode} of {path}"))? & 0o777;
    files.insert(path.to_string(), FileData { bytes, mode });
    Ok(())
}

/// Rejects absolute paths and `..`, as the API server does for volume item paths.
fn safe_relative(path: &str) -> Result<&Path> {
    let p = Path::new(path);
    if path.is_empty() || !p.components().all(|c| matches!(c, Component::Normal(_))) {
        bail!("{path:?} is not a plain relative path");
    }
    Ok(p)
}

/// The value of a downward-API field path, formatted as kubelet does.
fn field_value(pod: &Pod, field_path: &str) -> Result<String> {
    let meta = &pod.metadata;
    let map_value = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    if let Some(key) = subscript(field_path, "metadata.labels") {
        return Ok(map_value(&meta.labels, key));
    }
    if let Some(key) = subscript(field_path, "metadata.annotations") {
        return Ok(map_value(&meta.annotations, key));
    }
    Ok(match field_path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "metadata.labels" => format_map(meta.labels.as_ref()),
        "metadata.annotations" => format_map(meta.annotations.as_ref()),
        "spec.nodeName" => "127.0.0.1".to_string(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.podIP" | "status.podIPs" | "status.hostIP" | "status.hostIPs" => {
            "127.0.0.1".to_string()
        }
        other => bail!("unsupported downward-API field {other:?}"),
    })
}

/// `metadata.labels['key']` → `key`.
fn subscript<'a>(field_path: &'a str, prefix: &str) -> Option<&'a str> {
    field_path
        .strip_prefix(prefix)?
        .strip_prefix("['")?
        .strip_suffix("']")
}

/// kubelet's format for label and annotation files: sorted `key="value"` lines, values quoted
/// as Go's %q does.
fn format_map(map: Option<&BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", go_quote(v)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn go_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// kubelet's atomic writer: files go into a new timestamped directory, `..data` is switched to
/// it with a rename (atomic), entry symlinks are added or removed, and the old directory goes.
fn write_atomically(dir: &Path, payload: &Payload) -> Result<()> {
    let data_link = dir.join("..data");
    let old = std::fs::read_link(&data_link).ok();

    let (name, data_dir) = create_timestamped_dir(dir)?;
    for (path, file) in payload {
        let target = data_dir.join(safe_relative(path)?);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(&target, &file.bytes)
            .with_context(|| format!("writing {}", target.display()))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode))
            .with_context(|| format!("setting the mode of {}", target.display()))?;
    }

    let tmp_link = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp_link);
    symlink(&name, &tmp_link).with_context(|| format!("linking {}", tmp_link.display()))?;
    std::fs::rename(&tmp_link, &data_link)
        .with_context(|| format!("switching {}", data_link.display()))?;

    let entries: BTreeSet<String> = payload
        .keys()
        .filter_map(|path| path.split('/').next().map(str::to_string))
        .collect();
    for entry in &entries {
        let link = dir.join(entry);
        if link.symlink_metadata().is_err() {
            symlink(format!("..data/{entry}"), &link)
                .with_context(|| format!("linking {}", link.display()))?;
        }
    }
    for existing in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let existing = existing.with_context(|| format!("listing {}", dir.display()))?;
        let file_name = existing.file_name().to_string_lossy().into_owned();
        let is_link = existing
            .file_type()
            .map(|t| t.is_symlink())
            .unwrap_or(false);
        if !file_name.starts_with("..") && is_link && !entries.contains(&file_name) {
            std::fs::remove_file(existing.path())
                .with_context(|| format!("removing {}", existing.path().display()))?;
        }
    }
    if let Some(old) = old
        && old != Path::new(&name)
    {
        let old_dir = dir.join(old);
        std::fs::remove_dir_all(&old_dir)
            .with_context(|| format!("removing {}", old_dir.display()))?;
    }
    Ok(())
}

fn create_timestamped_dir(dir: &Path) -> Result<(String, PathBuf)> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock before 1970")?;
    let (year, month, day, hour, minute, second) = civil(now.as_secs());
    for _ in 0..10 {
        let name = format!(
            "..{year:04}_{month:02}_{day:02}_{hour:02}_{minute:02}_{second:02}.{:09}",
            rand::random::<u32>() % 1_000_000_000
        );
        let path = dir.join(&name);
        match std::fs::create_dir(&path) {
            Ok(()) => {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                    .with_context(|| format!("setting the mode of {}", path.display()))?;
                return Ok((name, path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
    }
    bail!(
        "could not create a fresh data directory in {}",
        dir.display()
    )
}

fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (year, month, day, hour, minute, second) = civil(secs);
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
}

/// UTC calendar fields of a Unix time (Howard Hinnant's days-to-civil algorithm).
fn civil(unix_secs: u64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = i64::try_from(unix_secs).unwrap_or(i64::MAX);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    // All of these are in range by construction.
    let field = |v: i64| u32::try_from(v).unwrap_or(0);
    (
        year,
        field(month),
        field(day),
        field(of_day / 3_600),
        field(of_day % 3_600 / 60),
        field(of_day % 60),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_above_a_mount_map_into_the_local_root() {
        let ancestors = vec![
            "/etc/tokengate/bundle".to_string(),
            "/etc/tokengate".to_string(),
        ];
        let rootfs = Path::new("/r");
        let map = |s: &str| map_ancestor(s, &ancestors, rootfs);
        assert_eq!(map("/etc/tokengate/bundle"), "/r/etc/tokengate/bundle");
        assert_eq!(
            map("--bundle=/etc/tokengate/bundle/x"),
            "--bundle=/r/etc/tokengate/bundle/x"
        );
        assert_eq!(map("/etc/tokengate"), "/r/etc/tokengate");
        assert_eq!(map("/etc/tokengate-other"), "/etc/tokengate-other");
        assert_eq!(map("/var/lib"), "/var/lib");
    }

    #[test]
    fn pod_ports_map_to_local_ports_in_addresses_only() {
        assert_eq!(map_port("0.0.0.0:15080", 15080, 40001), "127.0.0.1:40001");
        assert_eq!(
            map_port("http://127.0.0.1:8080/x", 8080, 40002),
            "http://127.0.0.1:40002/x"
        );
        assert_eq!(
            map_port("--listen=[::]:8080", 8080, 1),
            "--listen=127.0.0.1:1"
        );
        assert_eq!(map_port("127.0.0.1:80801", 8080, 1), "127.0.0.1:80801");
        assert_eq!(map_port("10.127.0.0.1:8080", 8080, 1), "10.127.0.0.1:8080");
        assert_eq!(map_port("example.com:8080", 8080, 1), "example.com:8080");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
        assert_eq!(civil(1_767_225_599), (2025, 12, 31, 23, 59, 59));
    }

    #[test]
    fn paths_are_replaced_only_whole() {
        assert_eq!(replace_path("/etc/cfg/a", "/etc/cfg", "/tmp/x"), "/tmp/x/a");
        assert_eq!(
            replace_path("--dir=/etc/cfg", "/etc/cfg", "/tmp/x"),
            "--dir=/tmp/x"
        );
        assert_eq!(
            replace_path("/etc/cfg2/a", "/etc/cfg", "/tmp/x"),
            "/etc/cfg2/a"
        );
        assert_eq!(
            replace_path("cat /etc/cfg; ls /etc/cfg", "/etc/cfg", "/t"),
            "cat /t; ls /t"
        );
    }

    #[test]
    fn variables_expand_like_kubernetes() {
        let env = vec![("A".to_string(), "1".to_string())];
        assert_eq!(expand("x$(A)y", &env), "x1y");
        assert_eq!(expand("$$(A) $(B) $", &env), "$(A) $(B) $");
    }

    #[test]
    fn label_files_match_kubelet() {
        let labels: BTreeMap<String, String> =
            [("b".into(), "two".into()), ("a".into(), "q\"t".into())].into();
        assert_eq!(format_map(Some(&labels)), "a=\"q\\\"t\"\nb=\"two\"");
    }

    #[test]
    fn atomic_writer_layout_and_swap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |s: &str| FileData {
            bytes: s.as_bytes().to_vec(),
            mode: 0o644,
        };
        let first: Payload = [("a".into(), file("1")), ("sub/b".into(), file("2"))].into();
        write_atomically(dir.path(), &first).expect("first write");
        let data = std::fs::read_link(dir.path().join("..data")).expect("..data link");
        assert!(data.to_string_lossy().starts_with(".."));
        assert_eq!(
            std::fs::read_link(dir.path().join("a")).expect("a link"),
            Path::new("..data/a")
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("sub/b")).expect("b"),
            "2"
        );

        let second: Payload = [("a".into(), file("3"))].into();
        write_atomically(dir.path(), &second).expect("second write");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a")).expect("a"),
            "3"
        );
        assert!(dir.path().join("sub").symlink_metadata().is_err());
        assert!(
            !dir.path().join(&data).exists(),
            "old data directory removed"
        );
    }
}
