//! `make demo`: tokengate as a platform team runs it, on this machine, with no cluster at hand.
//! A control plane and a node (kubelet, containerd, kube-proxy; the node tier's) start here;
//! the chart is installed from the images; the test identity provider runs as a pod; an example
//! TokenPolicy is applied; a Deployment in an opted-in namespace gets the sidecar injected, and
//! the kubelet runs it. Then a walkthrough: every command is printed and run as a user would
//! type it (curl for the token and the requests, kubectl for the rest), with what it printed.
//! It stays up until interrupted, with the KUBECONFIG to use; `--exit-after-walkthrough` ends
//! it after the walkthrough (the node tier runs it so and checks the output).
//!
//! A node needs root and the images (`target/images`); where it cannot start (`--no-node`, which
//! `scripts/demo.sh` passes when not root, saying why), the same story runs on the control plane
//! alone: the operator and its webhooks as local processes, and the injected sidecar of the
//! Deployment's pod run by the pod runner (`tokengate_testkit::cluster::podrunner`) from the pod
//! the API server stored, with the identity provider and the application on 127.0.0.1.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use kube::api::ListParams;
use serde_json::{Value, json};
use tokengate_policy::contract;
use tokengate_testkit::cluster::node::NodeCluster;
use tokengate_testkit::cluster::podrunner::{PodRunnerOptions, RunningPod};
use tokengate_testkit::cluster::tools::KUBECTL_BIN_ENV;
use tokengate_testkit::cluster::webhook::{configurations_at_local_port, dry_run_create};
use tokengate_testkit::cluster::{ControlPlane, Process, free_port, wait_until};
use tokengate_testkit::echo::EchoServer;
use tokengate_testkit::idp::IdentityProvider;
use tokengate_tests::support::{
    Tools, app_yaml, cluster_ip, idp_yaml, pod_ip, ready_pod, repo, service_yaml, start_node,
    until_status,
};

/// The walkthrough's steps, for the progress lines.
const STEPS: usize = 7;
/// The namespace of the application.
const NAMESPACE: &str = "shop";

fn progress(step: usize, what: &str) {
    println!("\n[{step}/{STEPS}] {what}");
}

fn done(started: Instant) {
    println!("      done in {:.1}s", started.elapsed().as_secs_f64());
}

/// Runs commands as a user types them: through `sh -c`, with `kubectl` on the PATH and the
/// demo cluster's KUBECONFIG, printing the command and what it printed.
struct Shell {
    kubeconfig: PathBuf,
    /// The directory of the kubectl put first on the PATH.
    kubectl_dir: PathBuf,
    path: String,
    /// Shell variables set earlier in the walkthrough (`TOKEN`).
    vars: Vec<(String, String)>,
}

impl Shell {
    fn new(kubeconfig: &Path) -> Result<Self> {
        let kubectl_dir = kubectl_dir()?;
        let path = format!(
            "{}:{}",
            kubectl_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Ok(Self {
            kubeconfig: kubeconfig.to_owned(),
            kubectl_dir,
            path,
            vars: Vec::new(),
        })
    }

    /// Prints `$ NAME=$(command)` and runs it, keeping what it printed as `$NAME` for the
    /// commands that follow.
    fn set(&mut self, name: &str, command: &str) -> Result<String> {
        println!("\n$ {name}=$({command})");
        let value = self.quiet(command)?.trim().to_owned();
        self.vars.push((name.to_owned(), value.clone()));
        Ok(value)
    }

    /// Prints `$ command`, runs it, prints its output; returns the output.
    fn show(&self, command: &str) -> Result<String> {
        println!("\n$ {command}");
        let output = self.quiet(command)?;
        print!("{output}");
        if !output.ends_with('\n') {
            println!();
        }
        Ok(output)
    }

    /// Runs `command` without printing it; its stdout and stderr.
    fn quiet(&self, command: &str) -> Result<String> {
        let output = Command::new("sh")
            .arg("-c")
            .arg(command)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("PATH", &self.path)
            .envs(self.vars.iter().map(|(k, v)| (k, v)))
            .output()
            .with_context(|| format!("running {command}"))?;
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        Ok(text)
    }
}

/// The directory of the kubectl the tests use.
fn kubectl_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(KUBECTL_BIN_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let output = Command::new("bash")
        .arg(repo().join("testkit/controlplane/build.sh"))
        .arg("--print-kubectl-bin-dir")
        .output()
        .context("asking the build script where kubectl is")?;
    Ok(PathBuf::from(
        String::from_utf8_lossy(&output.stdout).trim(),
    ))
}

/// The README's token request: the client-credentials grant with curl.
fn token_command(idp: &str, scope: &str) -> String {
    format!(
        "curl -s -d grant_type=client_credentials -d client_id=demo -d client_secret=demo-secret \
         -d scope={scope} {idp}/token | sed 's/.*\"access_token\":\"\\([^\"]*\\)\".*/\\1/'"
    )
}

/// Where the walkthrough runs: the commands' environment and the addresses it talks to.
struct Scene {
    sh: Shell,
    /// The identity provider's base URL (its token endpoint is `/token`).
    idp: String,
    /// The application's base URL, as clients reach it (through the sidecar).
    app: String,
    /// `host:port` of `app`.
    app_addr: String,
    /// The sidecar's metrics URL.
    metrics: String,
    /// What must live as long as the scene: directories, processes, the pod runner.
    _keep: Vec<Box<dyn std::any::Any>>,
}

/// `kubectl apply` of examples/quickstart.yaml in the demo namespace (created and opted in
/// first), its issuer pointed at `idp`.
fn apply_example(sh: &Shell, scratch: &Path, idp: &str) -> Result<()> {
    sh.show(&format!(
        "kubectl create namespace {NAMESPACE} && kubectl label namespace {NAMESPACE} \
         {}={}",
        contract::NAMESPACE_INJECTION_LABEL,
        contract::INJECTION_ENABLED
    ))?;
    let example = std::fs::read_to_string(repo().join("examples/quickstart.yaml"))
        .context("examples/quickstart.yaml")?
        .replace("http://127.0.0.1:9400", idp);
    let file = scratch.join("quickstart.yaml");
    std::fs::write(&file, example)?;
    let applied = sh.show(&format!(
        "kubectl apply -n {NAMESPACE} -f {}",
        file.display()
    ))?;
    if !applied.contains("created") {
        bail!("kubectl apply failed: {applied}");
    }
    Ok(())
}

/// The pods of the demo Deployment, as `kubectl get` shows them.
fn show_pods(sh: &Shell) -> Result<()> {
    sh.show(&format!(
        "kubectl get pods -n {NAMESPACE} -o custom-columns='POD:.metadata.name,INIT:.spec.initContainers[*].name,CONTAINERS:.spec.containers[*].name,READY:.status.conditions[?(@.type==\"Ready\")].status'"
    ))?;
    Ok(())
}

/// Steps 2 to 5 on the node: the chart from the images, the identity provider and the
/// application as pods, reached through their Services' ClusterIPs.
async fn on_the_node(node: &NodeCluster) -> Result<Scene> {
    let cp = node.control_plane();
    let client = cp.client().await?;
    let tools = Tools::new(cp)?;
    let sh = Shell::new(cp.admin_kubeconfig())?;

    progress(
        2,
        "helm install tokengate charts/tokengate (the operator, the webhooks, from the images)",
    );
    let started = Instant::now();
    let chart = repo().join("charts/tokengate");
    tools
        .helm
        .run([
            "install",
            "tokengate",
            chart.to_str().context("UTF-8 path")?,
            "--namespace",
            "tokengate-system",
            "--create-namespace",
            // The demo identity provider serves plain http.
            "--set",
            "webhook.allowHttpKeySources=true",
            "--wait",
            "--timeout",
            "3m",
        ])
        .context("helm install")?;
    done(started);
    sh.show("kubectl get pods -n tokengate-system")?;

    progress(3, "the identity provider, as a pod behind a Service");
    let started = Instant::now();
    tools.kubectl(&["create", "namespace", "idp"]);
    tools.apply("idp-service", &service_yaml("idp", "idp", 80));
    let idp = format!(
        "http://{}",
        cluster_ip(&Api::<Service>::namespaced(client.clone(), "idp"), "idp").await
    );
    tools.apply("idp", &idp_yaml("idp", &idp));
    tools.rollout("idp", "idp");
    done(started);
    println!("      issuer {idp} (OIDC discovery, JWKS, a client-credentials token endpoint)");

    progress(
        4,
        "kubectl apply -f examples/quickstart.yaml, its issuer set to the provider's Service",
    );
    let started = Instant::now();
    apply_example(&sh, tools.scratch.path(), &idp)?;
    done(started);

    progress(
        5,
        "a Deployment in the opted-in namespace: the webhook injects the sidecar, the kubelet runs it",
    );
    let started = Instant::now();
    tools.apply("demo-service", &service_yaml(NAMESPACE, "demo", 80));
    tools.apply("demo", &app_yaml(NAMESPACE, "demo"));
    tools.rollout(NAMESPACE, "demo");
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let pod = ready_pod(&pods, "demo").await;
    done(started);
    show_pods(&sh)?;
    let app = format!(
        "http://{}",
        cluster_ip(
            &Api::<Service>::namespaced(client.clone(), NAMESPACE),
            "demo"
        )
        .await
    );
    let app_addr = format!("{}:80", app.trim_start_matches("http://"));
    // kube-proxy takes a moment to program a new Service.
    let (status, response) = until_status(&app_addr, "/healthz", None, 200).await;
    if status != 200 {
        bail!("the application's Service does not answer: {status} {response}");
    }
    Ok(Scene {
        sh,
        idp,
        app,
        app_addr,
        metrics: format!("http://{}:15081/metrics", pod_ip(&pod)),
        _keep: vec![Box::new(tools)],
    })
}

/// A binary built beside this one (`cargo build --workspace --bins`).
fn sibling(name: &str) -> Result<PathBuf> {
    let path = std::env::current_exe()?.with_file_name(name);
    if !path.is_file() {
        bail!(
            "{} is missing: cargo build --workspace --bins",
            path.display()
        );
    }
    Ok(path)
}

/// Steps 2 to 5 without a node: the operator and its webhooks as processes (with the chart's
/// RBAC), the identity provider and the application on 127.0.0.1, and the Deployment's pod,
/// injected by the webhook, run by the pod runner.
async fn on_the_control_plane(cp: &ControlPlane) -> Result<Scene> {
    let client = cp.client().await?;
    let scratch = tempfile::tempdir()?;
    let sh = Shell::new(cp.admin_kubeconfig())?;
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();

    progress(
        2,
        "the operator and its webhooks as local processes, with the CRD and the chart's RBAC",
    );
    let started = Instant::now();
    sh.show(&format!(
        "kubectl create namespace tokengate-system && kubectl apply --server-side -f {} -f {}",
        repo()
            .join("crds/tokengate.dev_tokenpolicies.yaml")
            .display(),
        repo().join("operator/deploy/rbac.yaml").display()
    ))?;
    let admin = free_port()?;
    let webhook = free_port()?;
    let mut command = Command::new(sibling("tokengate-operator")?);
    command
        .arg(format!("--admin=127.0.0.1:{admin}"))
        .arg(format!("--webhook-listen=127.0.0.1:{webhook}"))
        .arg("--webhook-host=127.0.0.1")
        .arg("--allow-http-key-sources");
    let operator: Process = cp
        .spawn_as_service_account(&client, "tokengate-system", "tokengate-operator", command)
        .await?;
    keep.push(Box::new(operator));
    // The chart's webhook configurations, calling the local process instead of its Service.
    let text = std::fs::read_to_string(repo().join("operator/deploy/webhooks.yaml"))?;
    let documents: Vec<Value> = serde_saphyr::from_multiple(&text).context("webhooks.yaml")?;
    let configurations = configurations_at_local_port(documents, webhook)?;
    let file = scratch.path().join("webhooks.json");
    std::fs::write(
        &file,
        json!({"apiVersion": "v1", "kind": "List", "items": configurations}).to_string(),
    )?;
    sh.quiet(&format!("kubectl apply -f {}", file.display()))?;
    done(started);

    progress(3, "the identity provider, on 127.0.0.1");
    let provider = IdentityProvider::start().await?;
    provider.register_client("demo", "demo-secret");
    let idp = provider.base_url().to_owned();
    keep.push(Box::new(provider));
    println!("      issuer {idp} (OIDC discovery, JWKS, a client-credentials token endpoint)");

    progress(
        4,
        "kubectl apply -f examples/quickstart.yaml, its issuer set to the provider",
    );
    let started = Instant::now();
    apply_example(&sh, scratch.path(), &idp)?;
    done(started);

    progress(
        5,
        "a Deployment in the opted-in namespace: the webhook injects the sidecar, the pod runner runs it",
    );
    let started = Instant::now();
    let echo = EchoServer::start().await?;
    let deployment = scratch.path().join("demo.yaml");
    std::fs::write(
        &deployment,
        app_yaml(NAMESPACE, "demo")
            .replace("imagePullPolicy: Never", "imagePullPolicy: IfNotPresent"),
    )?;
    // The webhook configuration and its CA reach the API server a moment after they are
    // applied; until then pods are created without the sidecar.
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "labels": {"app": "probe"}},
        "spec": {"containers": [{"name": "app", "image": "probe",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))?;
    wait_until(Duration::from_secs(60), "the webhook to inject", || async {
        let created = dry_run_create(&pods, &probe).await;
        Ok(created.is_ok_and(|pod| {
            pod.spec
                .iter()
                .flat_map(|s| s.init_containers.iter().flatten())
                .any(|c| c.name == contract::SIDECAR_CONTAINER)
        }))
    })
    .await?;
    sh.quiet(&format!("kubectl apply -f {}", deployment.display()))?;
    let found = std::sync::Mutex::new(None);
    wait_until(Duration::from_secs(60), "the Deployment's pod", || async {
        let list = pods.list(&ListParams::default().labels("app=demo")).await?;
        let first = list.items.into_iter().next();
        let done = first.is_some();
        if let Ok(mut found) = found.lock() {
            *found = first;
        }
        Ok(done)
    })
    .await?;
    let pod = found
        .into_inner()
        .ok()
        .flatten()
        .context("the Deployment's pod")?;
    let listen = free_port()?;
    let sidecar_admin = free_port()?;
    let options = PodRunnerOptions::new(contract::SIDECAR_CONTAINER)
        .entrypoint([sibling("tokengate-sidecar")?.display().to_string()])
        .port(contract::SIDECAR_PROXY_PORT, listen)
        .port(contract::SIDECAR_ADMIN_PORT, sidecar_admin)
        .port(8080, echo.port());
    let running = RunningPod::start(&client, &pod, options).await?;
    keep.push(Box::new(running));
    keep.push(Box::new(echo));
    done(started);
    show_pods(&sh)?;
    println!(
        "      the sidecar on 127.0.0.1:{listen} (the pod's 15080), admin 127.0.0.1:{sidecar_admin}"
    );
    keep.push(Box::new(scratch));
    Ok(Scene {
        sh,
        idp,
        app: format!("http://127.0.0.1:{listen}"),
        app_addr: format!("127.0.0.1:{listen}"),
        metrics: format!("http://127.0.0.1:{sidecar_admin}/metrics"),
        _keep: keep,
    })
}

/// Steps 6 and 7, wherever the cluster runs.
async fn walkthrough(mut scene: Scene, stay: bool) -> Result<()> {
    let (idp, app, app_addr) = (scene.idp.clone(), scene.app.clone(), scene.app_addr.clone());
    let sh = &mut scene.sh;
    progress(
        6,
        "the walkthrough: a token, requests, the policy, a live edit, metrics",
    );
    println!("\nA token, with the client-credentials grant, as the README shows:");
    let token = sh.set("TOKEN", &token_command(&idp, "api://demo/.default"))?;
    if token.split('.').count() != 3 {
        bail!("the token endpoint did not give a token: {token}");
    }
    println!("(a JWT of {} characters)", token.len());

    println!("\nNo token: refused, and the response says why.");
    sh.show(&format!("curl -si {app}/orders"))?;
    println!("\nThe token: the application answers, and sees the caller as a header (X-User-Id).");
    sh.show(&format!(
        "curl -si -H \"Authorization: Bearer $TOKEN\" {app}/orders | grep -o '^HTTP/1.1 [0-9]*\\|\"x-user-id\":\\[[^]]*\\]'"
    ))?;
    println!("\nA token for another API (scope api://elsewhere/.default): refused.");
    sh.set("OTHER", &token_command(&idp, "api://elsewhere/.default"))?;
    sh.show(&format!(
        "curl -si -H \"Authorization: Bearer $OTHER\" {app}/orders"
    ))?;

    println!("\nThe policy, as kubectl shows it:");
    sh.show(&format!("kubectl get tp -n {NAMESPACE}"))?;
    sh.show(&format!("kubectl describe tp quickstart -n {NAMESPACE}"))?;

    println!("\nAn edit takes effect in the running pod, no restart: open /public/* too.");
    let edited = Instant::now();
    sh.show(&format!(
        "kubectl patch tp quickstart -n {NAMESPACE} --type merge -p '{{\"spec\":{{\"rules\":[{{\"paths\":[\"/healthz\",\"/public/*\"],\"authentication\":\"Disabled\"}}]}}}}'"
    ))?;
    let (status, _) = until_status(&app_addr, "/public/catalog", None, 200).await;
    if status != 200 {
        bail!("the edit did not take effect: /public/catalog answers {status}");
    }
    println!(
        "(policy edit enforced by the running sidecar after {:.1}s)",
        edited.elapsed().as_secs_f64()
    );
    sh.show(&format!(
        "curl -s -o /dev/null -w '%{{http_code}}\\n' {app}/public/catalog"
    ))?;

    println!("\nThe sidecar's metrics, on its admin port:");
    sh.show(&format!(
        "curl -s {} | grep '^tokengate_requests_total'",
        scene.metrics
    ))?;

    progress(7, "the cluster is yours");
    println!(
        "\n  export KUBECONFIG={}\n  export PATH={}:$PATH\n  kubectl get pods -A\n  TOKEN=$({})\n  curl -s -H \"Authorization: Bearer $TOKEN\" {app}/orders",
        sh.kubeconfig.display(),
        sh.kubectl_dir.display(),
        token_command(&idp, "api://demo/.default"),
    );
    if stay {
        println!("\nUp until interrupted (Ctrl-C stops and removes everything).");
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        println!("\nstopping");
    }
    Ok(())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    let mut stay = true;
    let mut node = true;
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--exit-after-walkthrough" => stay = false,
            "--no-node" => node = false,
            "-h" | "--help" => {
                println!(
                    "tokengate-demo [--exit-after-walkthrough] [--no-node]: tokengate on a local \
                     control plane and node (root; --no-node: the control plane and the pod \
                     runner); run it through `make demo`"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}; see --help");
                return ExitCode::from(64);
            }
        }
    }
    let result = if node {
        with_node(stay).await
    } else {
        without_node(stay).await
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("\nthe demo failed: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn with_node(stay: bool) -> Result<()> {
    progress(
        1,
        "a control plane and a node: etcd, kube-apiserver, kube-controller-manager, \
         kube-scheduler, containerd, kubelet, kube-proxy",
    );
    let started = Instant::now();
    let node = match start_node().await {
        Ok(node) => node,
        Err(err) => {
            println!(
                "\nThe node did not start ({err:#}).\nThe same story without it: the control plane, \
                 and the pod runner for the pod."
            );
            return without_node(stay).await;
        }
    };
    println!(
        "      control plane in {:.1}s, node Ready {:.1}s later (images imported into containerd)",
        node.control_plane().startup_time().as_secs_f64(),
        node.startup_time().as_secs_f64()
    );
    done(started);
    let result = match on_the_node(&node).await {
        Ok(scene) => walkthrough(scene, stay).await,
        Err(err) => Err(err),
    };
    result.map_err(|err| anyhow::anyhow!("{err:#}\n----- logs:\n{}", node.log_tails(30)))
}

async fn without_node(stay: bool) -> Result<()> {
    progress(
        1,
        "a control plane: etcd, kube-apiserver, kube-controller-manager (no node: the pod \
         runner runs the injected sidecar)",
    );
    let started = Instant::now();
    let cp = tokio::task::spawn_blocking(ControlPlane::start)
        .await
        .context("the control plane's start-up task")?
        .context("the control plane did not start")?;
    done(started);
    let result = match on_the_control_plane(&cp).await {
        Ok(scene) => walkthrough(scene, stay).await,
        Err(err) => Err(err),
    };
    result.map_err(|err| anyhow::anyhow!("{err:#}\n----- logs:\n{}", cp.log_tails(30)))
}
