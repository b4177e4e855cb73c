//! `make demo`: tokengate as a platform team runs it, on this machine, with no cluster at hand.
//! A control plane and a node (kubelet, containerd, kube-proxy; the node tier's) start here;
//! the chart is installed from the images; the test identity provider runs as a pod; an example
//! TokenPolicy is applied; a Deployment in an opted-in namespace gets the sidecar injected, and
//! the kubelet runs it. Then a walkthrough: every command is printed and run as a user would
//! type it (curl for the token and the requests, kubectl for the rest), with what it printed.
//! It stays up until interrupted, with the KUBECONFIG to use; `--exit-after-walkthrough` ends
//! it after the walkthrough (the node tier runs it so and checks the output).
//!
//! Needs root, the images (`target/images`) and the Go-built binaries; `scripts/demo.sh` makes
//! sure of all three and says why when the machine cannot run a node.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::Api;
use tokengate_testkit::cluster::node::{NodeCluster, NodeOptions};
use tokengate_testkit::cluster::tools::{KUBECTL_BIN_ENV, Tool};
use tokengate_tests::support::{
    Tools, app_yaml, cluster_ip, idp_yaml, image_archives, pod_ip, ready_pod, repo, service_yaml,
    test_image, until_status,
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
    path: String,
    /// Shell variables set earlier in the walkthrough (`TOKEN`).
    vars: Vec<(String, String)>,
}

impl Shell {
    fn new(kubeconfig: &Path, kubectl_dir: &Path) -> Self {
        let path = format!(
            "{}:{}",
            kubectl_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        Self {
            kubeconfig: kubeconfig.to_owned(),
            path,
            vars: Vec::new(),
        }
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

async fn walkthrough(node: &NodeCluster, stay: bool) -> Result<()> {
    let cp = node.control_plane();
    let client = cp.client().await?;
    let scratch = tempfile::tempdir()?;
    let tools = Tools {
        kubectl: Tool::kubectl(cp.admin_kubeconfig(), scratch.path())?,
        helm: Tool::helm(cp.admin_kubeconfig(), scratch.path())?,
        scratch: tempfile::tempdir()?,
    };
    let mut sh = Shell::new(cp.admin_kubeconfig(), &kubectl_dir()?);

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
    sh.show(&format!(
        "kubectl create namespace {NAMESPACE} && kubectl label namespace {NAMESPACE} \
         tokengate.dev/injection=enabled"
    ))?;
    let example = std::fs::read_to_string(repo().join("examples/quickstart.yaml"))
        .context("examples/quickstart.yaml")?
        .replace("http://127.0.0.1:9400", &idp);
    let policy_file = scratch.path().join("quickstart.yaml");
    std::fs::write(&policy_file, example)?;
    sh.show(&format!(
        "kubectl apply -n {NAMESPACE} -f {}",
        policy_file.display()
    ))?;
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
    sh.show(&format!(
        "kubectl get pods -n {NAMESPACE} -o custom-columns='POD:.metadata.name,INIT:.spec.initContainers[*].name,CONTAINERS:.spec.containers[*].name,READY:.status.conditions[?(@.type==\"Ready\")].status'"
    ))?;
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
        "curl -s http://{}:15081/metrics | grep '^tokengate_requests_total'",
        pod_ip(&pod)
    ))?;

    progress(7, "the cluster is yours");
    let kubectl = kubectl_dir()?;
    println!(
        "\n  export KUBECONFIG={}\n  export PATH={}:$PATH\n  kubectl get pods -A\n  TOKEN=$({})\n  curl -s -H \"Authorization: Bearer $TOKEN\" {app}/orders",
        cp.admin_kubeconfig().display(),
        kubectl.display(),
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
    for arg in std::env::args().skip(1) {
        match arg.as_str() {
            "--exit-after-walkthrough" => stay = false,
            "-h" | "--help" => {
                println!(
                    "tokengate-demo [--exit-after-walkthrough]: tokengate on a local control plane \
                     and node (root); run it through `make demo`"
                );
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?}; see --help");
                return ExitCode::from(64);
            }
        }
    }
    progress(
        1,
        "a control plane and a node: etcd, kube-apiserver, kube-controller-manager, \
         kube-scheduler, containerd, kubelet, kube-proxy",
    );
    let started = Instant::now();
    let archives = image_archives();
    let node = tokio::task::spawn_blocking(move || {
        NodeCluster::start(&NodeOptions {
            images: archives,
            sandbox_image: test_image("tokengate-pause"),
        })
    })
    .await;
    let node = match node {
        Ok(Ok(node)) => node,
        Ok(Err(err)) => {
            eprintln!("the node did not start: {err:#}");
            return ExitCode::FAILURE;
        }
        Err(err) => {
            eprintln!("the node did not start: {err}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "      control plane in {:.1}s, node Ready {:.1}s later (images imported into containerd)",
        node.control_plane().startup_time().as_secs_f64(),
        node.startup_time().as_secs_f64()
    );
    done(started);
    let result = tokio::time::timeout(Duration::from_secs(24 * 3600), walkthrough(&node, stay))
        .await
        .unwrap_or_else(|_| Ok(()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!(
                "\nthe demo failed: {err:#}\n----- logs:\n{}",
                node.log_tails(30)
            );
            ExitCode::FAILURE
        }
    }
}
