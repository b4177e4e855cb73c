//! What the node tier and the demo share: the images, kubectl and helm against the node's
//! control plane, HTTP from this machine to ClusterIPs and pod IPs, and the manifests of the
//! test images (the identity provider, the echo application) as Deployments and Services.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;
use tokengate_testkit::cluster::ControlPlane;
use tokengate_testkit::cluster::node::{NodeCluster, NodeOptions};
use tokengate_testkit::cluster::tools::Tool;
use tokengate_testkit::cluster::wait_until;

/// Environment variable naming the directory with the image archives of `make images`.
pub const IMAGES_DIR_ENV: &str = "TOKENGATE_IMAGES_DIR";

pub const TIMEOUT: Duration = Duration::from_secs(120);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// The version images are tagged with: the chart's appVersion (the workspace version).
pub fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

pub fn test_image(name: &str) -> String {
    format!("localhost/tokengate/{name}:{}", version())
}

pub fn images_dir() -> PathBuf {
    std::env::var_os(IMAGES_DIR_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("target/images"))
}

pub fn image_archives() -> Vec<PathBuf> {
    let dir = images_dir();
    let archives: Vec<PathBuf> = [
        "tokengate-operator",
        "tokengate-sidecar",
        "tokengate-idp",
        "tokengate-echo",
        "tokengate-pause",
    ]
    .iter()
    .map(|name| dir.join(format!("{name}.tar")))
    .collect();
    for archive in &archives {
        assert!(
            archive.is_file(),
            "{} is missing: run `make node-test` or `make images` (or set {IMAGES_DIR_ENV})",
            archive.display()
        );
    }
    archives
}

/// kubectl and helm against the node's control plane, and a scratch directory for manifests.
pub struct Tools {
    pub kubectl: Tool,
    pub helm: Tool,
    /// Manifests and files the test writes.
    pub scratch: tempfile::TempDir,
    /// helm's and kubectl's home (cache, config), apart from the user's.
    _home: tempfile::TempDir,
}

impl Tools {
    /// kubectl and helm as the cluster's administrator.
    pub fn new(cp: &ControlPlane) -> anyhow::Result<Self> {
        let home = tempfile::tempdir()?;
        Ok(Self {
            kubectl: Tool::kubectl(cp.admin_kubeconfig(), home.path())?,
            helm: Tool::helm(cp.admin_kubeconfig(), home.path())?,
            scratch: tempfile::tempdir()?,
            _home: home,
        })
    }
}

impl Tools {
    pub fn apply(&self, name: &str, yaml: &str) -> String {
        let path = self.scratch.path().join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).expect("write manifest");
        let path = path.to_str().expect("UTF-8 path");
        self.kubectl
            .run(["apply", "-f", path])
            .unwrap_or_else(|e| panic!("kubectl apply {name}: {e:#}"))
            .stdout
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl
            .run(args)
            .unwrap_or_else(|e| panic!("kubectl {}: {e:#}", args.join(" ")))
            .stdout
    }

    pub fn rollout(&self, namespace: &str, deployment: &str) {
        self.kubectl(&[
            "rollout",
            "status",
            &format!("deployment/{deployment}"),
            "-n",
            namespace,
            "--timeout=180s",
        ]);
    }

    /// A client-credentials token from the identity provider's pod, for `scope`.
    pub fn token(&self, namespace: &str, issuer: &str, scope: &str) -> String {
        self.token_from(namespace, "deploy/idp", issuer, scope, &[])
    }

    /// A client-credentials token from the provider running in `target` (`deploy/NAME`), with
    /// further arguments of `tokengate-idp token`.
    pub fn token_from(
        &self,
        namespace: &str,
        target: &str,
        issuer: &str,
        scope: &str,
        extra: &[&str],
    ) -> String {
        let mut args = vec![
            "exec",
            "-n",
            namespace,
            target,
            "--",
            "/usr/local/bin/entrypoint",
            "token",
            "--issuer",
            issuer,
            "--scope",
            scope,
        ];
        args.extend(extra);
        self.kubectl(&args).trim().to_owned()
    }

    /// One request from the client pod (`tokengate-echo request`): status and whole response.
    pub fn request_from_client_pod(
        &self,
        namespace: &str,
        url: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        let authorization = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec![
            "exec",
            "-n",
            namespace,
            "client",
            "--",
            "/usr/local/bin/entrypoint",
            "request",
            url,
        ];
        if let Some(header) = &authorization {
            args.extend(["-H", header]);
        }
        let output = self.kubectl(&args);
        (status_of(&output), output)
    }
}

impl Tools {
    /// One request with `tokengate-echo request` from container `container` of pod `pod`:
    /// status and whole response, or what the client printed when no response came (a refused
    /// or reset connection).
    pub fn try_request_from(
        &self,
        namespace: &str,
        pod: &str,
        container: &str,
        url: &str,
        token: Option<&str>,
    ) -> std::result::Result<(u16, String), String> {
        let authorization = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec![
            "exec",
            "-n",
            namespace,
            pod,
            "-c",
            container,
            "--",
            "/usr/local/bin/entrypoint",
            "request",
            "--timeout",
            "5",
            url,
        ];
        if let Some(header) = &authorization {
            args.extend(["-H", header]);
        }
        match self.kubectl.run_unchecked(&args) {
            Ok(output) => Ok((status_of(&output.stdout), output.stdout)),
            Err(err) => Err(format!("{err:#}")),
        }
    }
}

pub fn status_of(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// One HTTP/1.1 request from this machine to `addr` (a ClusterIP or pod IP with its port):
/// status and whole response, (0, "") when nothing answered.
pub async fn http(addr: &str, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let connect = tokio::net::TcpStream::connect(addr);
    let Ok(Ok(mut stream)) = tokio::time::timeout(Duration::from_secs(5), connect).await else {
        return (0, String::new());
    };
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let read = stream.read_to_string(&mut response);
    if !matches!(
        tokio::time::timeout(Duration::from_secs(10), read).await,
        Ok(Ok(_))
    ) {
        return (0, response);
    }
    (status_of(&response), response)
}

pub async fn http_bearer(addr: &str, path: &str, token: Option<&str>) -> (u16, String) {
    match token {
        Some(token) => {
            let value = format!("Bearer {token}");
            http(addr, path, &[("Authorization", &value)]).await
        }
        None => http(addr, path, &[]).await,
    }
}

/// [`http_bearer`] every 300 ms until the status is `want` or [`TIMEOUT`] passes: the last
/// status and response (for changes that take a moment to reach the sidecar or kube-proxy).
pub async fn until_status(addr: &str, path: &str, token: Option<&str>, want: u16) -> (u16, String) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let last = http_bearer(addr, path, token).await;
        if last.0 == want || Instant::now() >= deadline {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

pub fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    response.split("\r\n\r\n").next()?.lines().find_map(|line| {
        let (n, v) = line.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

pub async fn cluster_ip(services: &Api<Service>, name: &str) -> String {
    services
        .get(name)
        .await
        .ok()
        .and_then(|s| s.spec)
        .and_then(|s| s.cluster_ip)
        .unwrap_or_else(|| panic!("Service {name} has a ClusterIP"))
}

/// The one pod of `app`, once it is Ready.
pub async fn ready_pod(pods: &Api<Pod>, app: &str) -> Pod {
    let params = ListParams::default().labels(&format!("app={app}"));
    let found = std::sync::Mutex::new(None);
    wait_until(TIMEOUT, &format!("a Ready pod of {app}"), || async {
        let list = pods.list(&params).await?;
        let ready: Vec<Pod> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none() && is_ready(p))
            .collect();
        let done = ready.len() == 1;
        if let Ok(mut found) = found.lock() {
            *found = ready.into_iter().next();
        }
        Ok(done)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    found.into_inner().ok().flatten().expect("pod")
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("the pod has an IP")
}

/// A one-replica Deployment `name` of a test image listening on 8080 (port `http`) with `args`
/// after `--listen`; `container_extra` (probes, mounts) are YAML lines at the container's
/// indentation, `pod_extra` (volumes) at the pod spec's.
pub fn deployment_yaml(
    namespace: &str,
    name: &str,
    container: &str,
    image: &str,
    args: &[&str],
    container_extra: &str,
    pod_extra: &str,
) -> String {
    let args: Vec<String> = ["--listen", "0.0.0.0:8080"]
        .iter()
        .chain(args)
        .map(|a| format!("\"{a}\""))
        .collect();
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: {namespace}
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      containers:
        - name: {container}
          image: {image}
          imagePullPolicy: Never
          args: [{args}]
          ports:
            - {{name: http, containerPort: 8080}}
{container_extra}{pod_extra}",
        args = args.join(", "),
    )
}

/// The identity provider, advertising `public_url` (its Service) rather than its pod address.
pub fn idp_yaml(namespace: &str, public_url: &str) -> String {
    deployment_yaml(
        namespace,
        "idp",
        "idp",
        &test_image("tokengate-idp"),
        &["--public-url", public_url],
        "          readinessProbe:
            tcpSocket: {port: http}
            periodSeconds: 1
",
        "",
    )
}

pub fn config_map_yaml(namespace: &str, name: &str, key: &str, text: &str) -> String {
    let indented: String = text.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  namespace: {namespace}
data:
  {key}: |
{indented}"
    )
}

/// A Service `name` on `port`, to the pods' port `http`.
pub fn service_yaml(namespace: &str, name: &str, port: u16) -> String {
    service_to(namespace, name, name, ("http", port), "http")
}

/// A Service `name` selecting the pods of `app`, port `(port name, number)` to `target` (a port
/// name or number).
pub fn service_to(
    namespace: &str,
    name: &str,
    app: &str,
    (port_name, port): (&str, u16),
    target: &str,
) -> String {
    format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {namespace}
spec:
  selector: {{app: {app}}}
  ports:
    - {{name: {port_name}, port: {port}, targetPort: {target}}}
"
    )
}

/// The application: the echo server, its port named so the Service and the probes follow the
/// sidecar's rewrite.
pub fn app_yaml(namespace: &str, name: &str) -> String {
    deployment_yaml(
        namespace,
        name,
        "app",
        &test_image("tokengate-echo"),
        &[],
        "          readinessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 1
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 5
",
        "",
    )
}

/// Scrapes `/metrics` of `ip:port` from this machine.
pub async fn scrape(ip: &str, port: u16) -> String {
    let (status, response) = http(&format!("{ip}:{port}"), "/metrics", &[]).await;
    assert_eq!(status, 200, "metrics of {ip}:{port}: {response}");
    response
}

/// Starts a control plane and a node with the images imported (blocking work on its own
/// thread; several seconds).
pub async fn start_node() -> anyhow::Result<NodeCluster> {
    let archives = image_archives();
    tokio::task::spawn_blocking(move || {
        NodeCluster::start(&NodeOptions {
            images: archives,
            sandbox_image: test_image("tokengate-pause"),
        })
    })
    .await?
}
