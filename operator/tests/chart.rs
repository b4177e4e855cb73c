//! What users apply, applied with the tools users use. helm lints and renders the chart under
//! every option set; the real kubectl applies the CRD, every file under `examples/` and every
//! object the chart renders to a real kube-apiserver (server-side apply and `--dry-run=server`)
//! and any warning it prints fails the test; kubectl's YAML 1.1 reading of what we generate must
//! equal ours. Then `helm install` into the local control plane, the operator running as the
//! chart's Deployment configures it, as the chart's ServiceAccount with the chart's RBAC; an RSA
//! TokenPolicy written as a person writes it; a Deployment's pod injected with the chart's
//! sidecar settings and its sidecar enforcing the policy; `helm upgrade` and `helm uninstall`
//! without orphans.
//!
//! kubectl and helm come from `make kubectl helm` (`TOKENGATE_KUBECTL_BIN`, `TOKENGATE_HELM_BIN`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::PostParams;
use kube::{Api, Client};
use serde_json::{Value, json};
use tokengate_policy::{TokenPolicy, contract};
use tokengate_testkit::cluster::tools::{Tool, drop_context_namespaces, whole_numbers_as_integers};
use tokengate_testkit::cluster::{ControlPlane, free_port, http_get, wait_until};
use tokengate_testkit::dashboard;
use tokengate_testkit::idp::{IdentityProvider, KeyFamily};

const OPERATOR: &str = env!("CARGO_BIN_EXE_tokengate-operator");
const TIMEOUT: Duration = Duration::from_secs(60);
const RELEASE_LABEL: &str = "app.kubernetes.io/instance";
/// The Kubernetes release `helm template` renders for (without a cluster helm assumes an old
/// one); the test control plane's.
const KUBE_VERSION: &str = "v1.36.3";

/// The option sets every rendering test covers: name and helm arguments.
const OPTION_SETS: &[(&str, &[&str])] = &[
    ("default", &[]),
    ("every-option", &["--values", "ci/all-features-values.yaml"]),
    (
        "minimal",
        &[
            "--set",
            "webhook.enabled=false,metrics.service=false,operator.replicas=1,operator.leaderElect=false",
        ],
    ),
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the operator crate sits in the workspace")
        .to_owned()
}

fn chart() -> PathBuf {
    repo().join("charts/tokengate")
}

/// kubectl and helm for the shared control plane, with a home of their own.
struct Tools {
    kubectl: Tool,
    helm: Tool,
    dir: PathBuf,
}

static CLUSTER_TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();

async fn cluster() -> (&'static ControlPlane, Client, &'static Tools) {
    let cp = ControlPlane::shared().await.expect("control plane");
    let client = cp.client().await.expect("admin client");
    let tools = CLUSTER_TOOLS
        .get_or_init(|| {
            let dir = cp.dir().join("tools");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let kubeconfig = cp.admin_kubeconfig();
            Ok(Tools {
                kubectl: Tool::kubectl(kubeconfig, &dir).map_err(|e| format!("{e:#}"))?,
                helm: Tool::helm(kubeconfig, &dir).map_err(|e| format!("{e:#}"))?,
                dir,
            })
        })
        .as_ref()
        .expect("kubectl and helm");
    (cp, client, tools)
}

/// `helm template` of the chart as release `release` in `namespace`, CRDs included.
fn render(helm: &Tool, release: &str, namespace: &str, args: &[&str]) -> String {
    render_with(helm, release, namespace, args, true)
}

fn render_with(
    helm: &Tool,
    release: &str,
    namespace: &str,
    args: &[&str],
    include_crds: bool,
) -> String {
    let chart = chart();
    let mut command = vec![
        "template",
        release,
        chart.to_str().expect("UTF-8 path"),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
    ];
    if include_crds {
        command.push("--include-crds");
    }
    let values = option_args(&chart, args);
    command.extend(values.iter().map(String::as_str));
    helm.run(&command).expect("helm template").stdout
}

/// An option set's helm arguments, its values files (`ci/...`) resolved in the chart.
fn option_args(chart: &Path, args: &[&str]) -> Vec<String> {
    args.iter()
        .map(|a| {
            if a.starts_with("ci/") {
                chart.join(a).display().to_string()
            } else {
                (*a).to_owned()
            }
        })
        .collect()
}

/// The documents of a YAML stream as JSON values (empty documents skipped), numbers normalised.
fn documents(text: &str) -> Vec<Value> {
    let documents: Vec<Value> = serde_saphyr::from_multiple(text).expect("YAML documents");
    documents
        .into_iter()
        .filter(|v| !v.is_null())
        .map(whole_numbers_as_integers)
        .collect()
}

fn kind_and_name(object: &Value) -> String {
    format!(
        "{}/{}",
        object["kind"].as_str().unwrap_or("?"),
        object["metadata"]["name"].as_str().unwrap_or("?")
    )
}

#[test]
fn chart_lints_and_renders_under_every_option_set() {
    let home = tempfile::tempdir().expect("temp dir");
    let helm = Tool::helm(&home.path().join("no-kubeconfig"), home.path()).expect("helm");
    let chart = chart();
    let mut figures = Vec::new();
    for (name, args) in OPTION_SETS {
        let mut lint = vec!["lint", "--strict", chart.to_str().expect("UTF-8 path")];
        let with_paths = option_args(&chart, args);
        lint.extend(with_paths.iter().map(String::as_str));
        let linted = helm.run(&lint).expect("helm lint");
        assert!(
            !linted.stdout.contains("[WARNING]") && !linted.stdout.contains("[ERROR]"),
            "{name}: {}",
            linted.stdout
        );

        let objects = documents(&render(&helm, "tokengate", "tokengate-system", args));
        let kinds: BTreeMap<String, usize> =
            objects.iter().fold(BTreeMap::new(), |mut kinds, object| {
                *kinds
                    .entry(object["kind"].as_str().unwrap_or("?").to_owned())
                    .or_default() += 1;
                kinds
            });
        figures.push(format!("{name}: {} objects {kinds:?}", objects.len()));
        let names: BTreeSet<String> = objects.iter().map(kind_and_name).collect();
        assert_eq!(names.len(), objects.len(), "{name}: duplicate objects");
        for object in &objects {
            let labels = &object["metadata"]["labels"];
            if object["kind"] != "CustomResourceDefinition" {
                assert_eq!(
                    labels[RELEASE_LABEL],
                    "tokengate",
                    "{}",
                    kind_and_name(object)
                );
            }
        }
        let expect = |kind: &str, present: bool| {
            assert_eq!(
                kinds.contains_key(kind),
                present,
                "{name}: {kind} {kinds:?}"
            );
        };
        expect("CustomResourceDefinition", true);
        expect("Deployment", true);
        expect("ClusterRole", true);
        expect("ServiceAccount", true);
        match *name {
            "default" => {
                expect("MutatingWebhookConfiguration", true);
                expect("ValidatingWebhookConfiguration", true);
                expect("PodDisruptionBudget", true);
                expect("Lease", true);
                expect("ServiceMonitor", false);
                expect("Certificate", false);
                assert_eq!(kinds.get("Service"), Some(&2), "webhook and metrics");
            }
            "every-option" => {
                for kind in [
                    "ServiceMonitor",
                    "PodMonitor",
                    "Certificate",
                    "Issuer",
                    "ConfigMap",
                ] {
                    expect(kind, true);
                }
            }
            _ => {
                expect("MutatingWebhookConfiguration", false);
                expect("PodDisruptionBudget", false);
                expect("Service", false);
                expect("Lease", false);
                expect("Role", false);
            }
        }
        if *name == "default" {
            for object in objects
                .iter()
                .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
            {
                for rule in object["rules"].as_array().into_iter().flatten() {
                    figures.push(format!(
                        "  {} {}: {} {}",
                        object["kind"].as_str().unwrap_or("?"),
                        rule["resources"],
                        rule["verbs"],
                        rule.get("resourceNames")
                            .map(Value::to_string)
                            .unwrap_or_default()
                    ));
                }
            }
        }
    }
    eprintln!("rendered objects per option set:\n{}", figures.join("\n"));
}

/// `operator/deploy/rbac.yaml` is the chart's ServiceAccount and RBAC, rendered for release
/// `tokengate` in `tokengate-system`; the operator's cluster tests run with it.
#[test]
fn deploy_rbac_is_what_the_chart_grants() {
    let home = tempfile::tempdir().expect("temp dir");
    let helm = Tool::helm(&home.path().join("no-kubeconfig"), home.path()).expect("helm");
    let chart = chart();
    let rendered = helm
        .run([
            "template",
            "tokengate",
            chart.to_str().expect("UTF-8 path"),
            "--namespace",
            "tokengate-system",
            "--kube-version",
            KUBE_VERSION,
            "--show-only",
            "templates/serviceaccount.yaml",
            "--show-only",
            "templates/rbac.yaml",
        ])
        .expect("helm template")
        .stdout;
    let committed = std::fs::read_to_string(repo().join("operator/deploy/rbac.yaml"))
        .expect("operator/deploy/rbac.yaml");
    let body = committed
        .split_once("\n---\n")
        .map(|(_, body)| format!("---\n{body}"))
        .unwrap_or_default();
    assert!(
        body == rendered,
        "operator/deploy/rbac.yaml is stale: run `scripts/generate-rbac.sh`"
    );
}

/// Namespaces named by the documents of `text`, created if missing.
async fn ensure_namespaces(kubectl: &Tool, text: &str) {
    let names: BTreeSet<String> = documents(text)
        .iter()
        .filter_map(|d| d["metadata"]["namespace"].as_str().map(str::to_owned))
        .collect();
    for name in names {
        let manifest = serde_json::to_string(&json!({
            "apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        }))
        .expect("json");
        apply_text(kubectl, &manifest, &["--server-side"]).await;
    }
}

/// `kubectl apply -f -` of `text` with `flags`; fails on any warning.
async fn apply_text(kubectl: &Tool, text: &str, flags: &[&str]) -> String {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write manifest");
    apply_file(kubectl, file.path(), flags)
}

fn apply_file(kubectl: &Tool, path: &Path, flags: &[&str]) -> String {
    let mut args = vec!["apply", "--field-manager=tokengate-tests"];
    args.extend_from_slice(flags);
    if flags.contains(&"--server-side") {
        args.push("--force-conflicts");
    }
    let path = path.to_str().expect("UTF-8 path");
    args.extend(["-f", path]);
    kubectl
        .run(&args)
        .unwrap_or_else(|e| panic!("{e:#}"))
        .stdout
}

async fn install_foreign_crds(kubectl: &Tool) {
    for file in ["monitoring.coreos.com.yaml", "cert-manager.io.yaml"] {
        apply_file(
            kubectl,
            &repo().join("testkit/crds").join(file),
            &["--server-side"],
        );
    }
    kubectl
        .run([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/podmonitors.monitoring.coreos.com",
            "crd/issuers.cert-manager.io",
            "crd/certificates.cert-manager.io",
            "crd/tokenpolicies.tokengate.dev",
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[tokio::test]
async fn kubectl_applies_the_crd_examples_and_every_rendered_object_without_warnings() {
    let (_, _, tools) = cluster().await;
    let kubectl = &tools.kubectl;
    let crd_file = repo().join("crds/tokengate.dev_tokenpolicies.yaml");
    apply_file(kubectl, &crd_file, &["--dry-run=server", "--server-side"]);
    apply_file(kubectl, &crd_file, &["--server-side"]);
    install_foreign_crds(kubectl).await;

    // What kubectl reads from the generated CRD is the CRD we generate.
    let read = kubectl
        .objects_as_read(&crd_file)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let generated = whole_numbers_as_integers(
        serde_json::to_value(tokengate_operator::crd::crd().expect("crd")).expect("json"),
    );
    assert_eq!(read.len(), 1);
    assert_eq!(
        read[0]["spec"], generated["spec"],
        "a YAML 1.1 reader sees another CRD"
    );

    let mut examples: Vec<PathBuf> = std::fs::read_dir(repo().join("examples"))
        .expect("examples/")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    examples.sort();
    assert!(!examples.is_empty());
    for example in &examples {
        let text = std::fs::read_to_string(example).expect("example");
        ensure_namespaces(kubectl, &text).await;
        // kubectl (YAML 1.1) and the policy crate (YAML 1.2) read the same objects.
        let ours = documents(&text);
        let mut theirs = kubectl
            .objects_as_read(example)
            .unwrap_or_else(|e| panic!("{e:#}"));
        drop_context_namespaces(&mut theirs, &ours);
        assert_eq!(
            theirs,
            ours,
            "{} reads differently under YAML 1.1",
            example.display()
        );
        // Client-side apply first, while the objects are new (kubectl warns when it meets an
        // object that server-side apply created), then server-side apply.
        apply_file(kubectl, example, &["--dry-run=server"]);
        apply_file(kubectl, example, &["--dry-run=server", "--server-side"]);
        apply_file(kubectl, example, &["--server-side"]);
    }

    for (name, args) in OPTION_SETS {
        let namespace = format!("render-{name}");
        let rendered = render(&tools.helm, "tokengate", &namespace, args);
        ensure_namespaces(kubectl, &rendered).await;
        let file = tools.dir.join(format!("{name}.yaml"));
        std::fs::write(&file, &rendered).expect("write rendered chart");
        // Everything the chart renders is read by kubectl as helm and we read it.
        assert_eq!(
            kubectl
                .objects_as_read(&file)
                .unwrap_or_else(|e| panic!("{e:#}")),
            documents(&rendered),
            "{name}"
        );
        apply_file(kubectl, &file, &["--dry-run=server", "--server-side"]);
        // Client-side apply too, without the CRD server-side apply has already created.
        let without_crds = render_with(&tools.helm, "tokengate", &namespace, args, false);
        std::fs::write(&file, &without_crds).expect("write rendered chart");
        apply_file(kubectl, &file, &["--dry-run=server"]);
    }
}

/// An RSA key as a person writes it: block YAML, plain scalars, the key's modulus and exponent
/// as they come out of a JWKS.
fn rsa_policy_yaml(namespace: &str, idp: &IdentityProvider) -> String {
    let rsa = idp.current_key(KeyFamily::Rsa);
    format!(
        "apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
metadata:
  name: orders
  namespace: {namespace}
spec:
  selector:
    matchLabels:
      app: orders
  validateJwt:
    issuerSigningKeys:
      - id: {kid}
        modulus: {n}
        exponent: {e}
    audiences:
      - {audience}
    issuers:
      - {issuer}
",
        kid = rsa.kid,
        n = rsa.rsa_n.expect("RSA modulus"),
        e = rsa.rsa_e.expect("RSA exponent"),
        audience = tokengate_testkit::idp::DEFAULT_AUDIENCE,
        issuer = idp.issuer(),
    )
}

#[tokio::test]
async fn an_rsa_key_written_as_n_and_e_in_yaml_is_refused_with_the_field_kubectl_saw() {
    let (cp, client, tools) = cluster().await;
    apply_file(
        &tools.kubectl,
        &repo().join("crds/tokengate.dev_tokenpolicies.yaml"),
        &["--server-side"],
    );
    let namespace = cp.namespace(&client, "yaml11").await.expect("namespace");
    let idp = IdentityProvider::start().await.expect("identity provider");
    let text = rsa_policy_yaml(&namespace, &idp)
        .replace("modulus:", "n:")
        .replace("exponent:", "e:");
    let file = tools.dir.join("n-and-e.yaml");
    std::fs::write(&file, text).expect("write");
    let refused = tools
        .kubectl
        .run([
            "apply",
            "--dry-run=server",
            "-f",
            file.to_str().expect("UTF-8"),
        ])
        .expect_err("YAML 1.1 reads n as false");
    let message = format!("{refused:#}");
    assert!(message.contains("unknown field"), "{message}");
}

async fn wait_ready(client: &Client, namespace: &str, name: &str) {
    let policies = Api::<TokenPolicy>::namespaced(client.clone(), namespace);
    let last = std::sync::Mutex::new(String::new());
    let outcome = wait_until(TIMEOUT, &format!("{name} Ready"), || async {
        let policy = policies.get(name).await?;
        let ready = policy.status.as_ref().and_then(|s| {
            s.conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| (c.status.clone(), c.message.clone()))
        });
        if let Ok(mut last) = last.lock() {
            *last = format!("{ready:?}");
        }
        Ok(ready.is_some_and(|(status, _)| status == "True"))
    })
    .await;
    assert!(
        outcome.is_ok(),
        "{outcome:?}; last Ready: {:?}",
        last.lock().map(|l| l.clone())
    );
}

/// Names (kind/name) of the objects carrying the release's label, namespaced and cluster-wide.
fn release_objects(kubectl: &Tool, namespace: &str, release: &str) -> Vec<String> {
    let selector = format!("{RELEASE_LABEL}={release}");
    let mut found = Vec::new();
    for (scope, kinds) in [
        (
            Some(namespace),
            "deployments,replicasets,services,configmaps,secrets,serviceaccounts,roles,\
             rolebindings,poddisruptionbudgets,leases",
        ),
        (
            None,
            "clusterroles,clusterrolebindings,mutatingwebhookconfigurations,\
             validatingwebhookconfigurations",
        ),
    ] {
        let mut args = vec!["get", kinds, "-l", &selector, "-o", "name"];
        if let Some(namespace) = scope {
            args.extend(["-n", namespace]);
        }
        let out = kubectl.run(&args).unwrap_or_else(|e| panic!("{e:#}"));
        found.extend(out.stdout.lines().map(str::to_owned));
    }
    found.sort();
    found
}

#[tokio::test]
async fn helm_installs_runs_upgrades_and_uninstalls_without_orphans() {
    use tokengate_testkit::cluster::podrunner::{PodRunnerOptions, RunningPod};
    use tokengate_testkit::echo::EchoServer;
    let (cp, client, tools) = cluster().await;
    let (helm, kubectl) = (&tools.helm, &tools.kubectl);
    let (release, namespace) = ("tg", "tokengate-chart");
    let chart = chart();
    let chart = chart.to_str().expect("UTF-8 path");
    helm.run([
        "install",
        release,
        chart,
        "--namespace",
        namespace,
        "--create-namespace",
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    let installed = release_objects(kubectl, namespace, release);
    eprintln!("installed: {installed:?}");
    for expected in [
        "deployment.apps/tg-tokengate-operator",
        "serviceaccount/tg-tokengate-operator",
        "lease.coordination.k8s.io/tg-tokengate-operator",
        "poddisruptionbudget.policy/tg-tokengate-operator",
        "clusterrole.rbac.authorization.k8s.io/tg-tokengate-operator",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/tg-tokengate-injector",
    ] {
        assert!(
            installed.iter().any(|o| o == expected),
            "{expected} in {installed:?}"
        );
    }

    // The operator as the chart configures it: the installed Deployment's arguments and
    // environment, run as the chart's ServiceAccount with nothing but what the chart grants.
    // Its ports move to free local ones, its certificate also names 127.0.0.1, and the chart's
    // webhook configurations are pointed there (this tier has no Service routing).
    let deployment = Api::<Deployment>::namespaced(client.clone(), namespace)
        .get("tg-tokengate-operator")
        .await
        .expect("the operator Deployment");
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .expect("the operator container");
    let (admin, webhook_port) = (free_port().expect("port"), free_port().expect("port"));
    let mut command = Command::new(OPERATOR);
    for arg in container.args.unwrap_or_default() {
        if !arg.starts_with("--admin=") {
            command.arg(arg);
        }
    }
    command
        .arg(format!("--admin=127.0.0.1:{admin}"))
        .arg("--lease-duration=4s");
    let mut sidecar_image = None;
    for var in container.env.unwrap_or_default() {
        let value = match (var.name.as_str(), var.value) {
            ("POD_NAME", None) => "chart-operator".to_owned(),
            ("POD_NAMESPACE", None) => namespace.to_owned(),
            ("TOKENGATE_WEBHOOK_LISTEN", Some(_)) => format!("127.0.0.1:{webhook_port}"),
            (_, Some(value)) => value,
            (name, None) => panic!("{name}: an environment variable the test cannot resolve"),
        };
        if var.name == "TOKENGATE_SIDECAR_IMAGE" {
            sidecar_image = Some(value.clone());
        }
        command.env(&var.name, value);
    }
    command
        .env("TOKENGATE_WEBHOOK_HOSTS", "127.0.0.1")
        .env("TOKENGATE_LOG", "info,tokengate_operator=debug");
    let mut operator = cp
        .spawn_as_service_account(&client, namespace, "tg-tokengate-operator", command)
        .await
        .expect("operator as the chart's ServiceAccount");
    set_client_configs(
        kubectl,
        |path| json!({"url": format!("https://127.0.0.1:{webhook_port}{path}")}),
    );

    // An RSA TokenPolicy written as a person writes it, applied with kubectl; a Deployment in a
    // namespace opted in with kubectl; its Pod injected by the operator with the chart's sidecar
    // settings, and the injected sidecar enforcing the policy.
    let app_namespace = cp.namespace(&client, "chart-app").await.expect("namespace");
    let idp = IdentityProvider::start().await.expect("identity provider");
    let policy = rsa_policy_yaml(&app_namespace, &idp);
    apply_text(kubectl, &policy, &[]).await;
    wait_ready(&client, &app_namespace, "orders").await;
    kubectl
        .run([
            "label",
            "namespace",
            &app_namespace,
            &format!(
                "{}={}",
                contract::NAMESPACE_INJECTION_LABEL,
                contract::INJECTION_ENABLED
            ),
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let pods = Api::<Pod>::namespaced(client.clone(), &app_namespace);
    let probe: Pod = serde_json::from_value(json!({
        "metadata": {"name": "probe", "labels": {"app": "probe"}},
        "spec": {"containers": [{"name": "app", "image": "example.invalid/app:1",
                                 "ports": [{"name": "http", "containerPort": 8080}]}]},
    }))
    .expect("pod");
    let dry_run = PostParams {
        dry_run: true,
        field_manager: None,
    };
    let last = std::sync::Mutex::new(String::new());
    let injecting = wait_until(TIMEOUT, "the API server to call the operator", || async {
        let result = pods.create(&dry_run, &probe).await;
        let done = matches!(&result, Ok(pod) if sidecar_of(pod).is_some());
        if let Ok(mut last) = last.lock() {
            *last = format!("{result:?}");
        }
        Ok(done)
    })
    .await;
    assert!(
        injecting.is_ok(),
        "{injecting:?}; last answer: {:?}; operator: {}",
        last.lock().map(|l| l.clone()),
        operator.log_tail(40)
    );
    let deployment = format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: orders
  namespace: {app_namespace}
spec:
  replicas: 1
  selector:
    matchLabels:
      app: orders
  template:
    metadata:
      labels:
        app: orders
    spec:
      containers:
        - name: orders
          image: example.invalid/orders:1
          ports:
            - name: http
              containerPort: 8080
"
    );
    apply_text(kubectl, &deployment, &[]).await;
    let found = std::sync::Mutex::new(None);
    wait_until(TIMEOUT, "the Deployment's pod", || async {
        let list = pods
            .list(&kube::api::ListParams::default().labels("app=orders"))
            .await?;
        let first = list.items.into_iter().next();
        let done = first.is_some();
        if let Ok(mut found) = found.lock() {
            *found = first;
        }
        Ok(done)
    })
    .await
    .expect("the controller-manager creates the pod");
    let pod = found.into_inner().ok().flatten().expect("pod");
    let sidecar = sidecar_of(&pod).expect("the pod carries the sidecar");
    assert_eq!(sidecar.image, sidecar_image, "the chart's sidecar image");
    let requests = sidecar
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .expect("requests");
    assert_eq!(requests["cpu"].0, "50m", "the chart's sidecar resources");
    let sidecar_binary = Path::new(OPERATOR).with_file_name("tokengate-sidecar");
    assert!(
        sidecar_binary.is_file(),
        "{} is missing: build it with `cargo build -p tokengate-sidecar`",
        sidecar_binary.display()
    );
    let app = EchoServer::start().await.expect("echo application");
    let (listen, sidecar_admin) = (free_port().expect("port"), free_port().expect("port"));
    let options = PodRunnerOptions::new(contract::SIDECAR_CONTAINER)
        .entrypoint([sidecar_binary.display().to_string()])
        .port(contract::SIDECAR_PROXY_PORT, listen)
        .port(contract::SIDECAR_ADMIN_PORT, sidecar_admin)
        .port(8080, app.port());
    let running = RunningPod::start(&client, &pod, options)
        .await
        .expect("run the injected sidecar container");
    let token = idp.token(jsonwebtoken::Algorithm::RS256);
    assert_eq!(http_get(listen, "/orders", None).await.0, 401, "no token");
    let (status, response) = http_get(listen, "/orders", Some(&token)).await;
    assert_eq!(status, 200, "{response}");
    // Having reconciled and admitted, the operator serves every metric the operator panels of
    // the chart's dashboard query.
    let (status, exposition) = http_get(admin, "/metrics", None).await;
    assert_eq!(status, 200, "{exposition}");
    let selectors = dashboard::selectors(&dashboard::path()).expect("the chart's dashboard");
    let unanswered = dashboard::unanswered(&selectors, dashboard::Component::Operator, &exposition);
    assert!(unanswered.is_empty(), "{unanswered:#?}\n{exposition}");
    drop(running);
    let bundle = Api::<ConfigMap>::namespaced(client.clone(), &app_namespace)
        .get("tokengate-policies")
        .await
        .expect("bundle");
    assert!(
        bundle
            .data
            .unwrap_or_default()
            .get("orders.yaml")
            .is_some_and(|p| p.contains("modulus")),
        "the bundle carries the key as modulus/exponent"
    );

    // The webhook configurations back as the chart wrote them, before helm compares them.
    set_client_configs(kubectl, |path| {
        json!({"service": {"name": "tg-tokengate-webhook", "namespace": namespace,
                           "path": path, "port": 443}})
    });

    // Upgrade: options switched on and off take their objects with them.
    helm.run([
        "upgrade",
        release,
        chart,
        "--namespace",
        namespace,
        "--reuse-values",
        "--set",
        "dashboard.enabled=true,metrics.service=false,operator.podDisruptionBudget.enabled=false,\
         operator.replicas=3",
    ])
    .unwrap_or_else(|e| panic!("{e:#}"));
    let upgraded = release_objects(kubectl, namespace, release);
    assert!(
        upgraded.contains(&"configmap/tg-tokengate-dashboard".to_owned()),
        "{upgraded:?}"
    );
    assert!(
        !upgraded.iter().any(|o| o.contains("metrics")),
        "{upgraded:?}"
    );
    assert!(
        !upgraded
            .iter()
            .any(|o| o.starts_with("poddisruptionbudget")),
        "{upgraded:?}"
    );
    // The Lease the operator holds keeps its holder through the upgrade.
    let holder = kubectl
        .run([
            "get",
            "lease",
            "tg-tokengate-operator",
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ])
        .expect("lease")
        .stdout;
    assert_eq!(holder, "chart-operator");
    assert!(operator.is_running(), "{}", operator.log_tail(40));
    drop(operator);

    helm.run(["uninstall", release, "--namespace", namespace, "--wait"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let left = release_objects(kubectl, namespace, release);
    assert!(left.is_empty(), "orphans after uninstall: {left:?}");
    // Nothing else is left in the release namespace either (its defaults aside).
    let remaining = kubectl
        .run([
            "get",
            "all,configmaps,secrets,serviceaccounts,leases,roles,rolebindings",
            "-n",
            namespace,
            "-o",
            "name",
        ])
        .expect("list")
        .stdout;
    let remaining: Vec<&str> = remaining
        .lines()
        .filter(|l| !matches!(*l, "configmap/kube-root-ca.crt" | "serviceaccount/default"))
        .collect();
    assert!(remaining.is_empty(), "left in {namespace}: {remaining:?}");
    assert!(
        kubectl
            .run(["get", "crd", "tokenpolicies.tokengate.dev"])
            .is_ok(),
        "the CRD stays (helm never deletes CRDs)"
    );
}

/// Points every webhook of the install test's two configurations (release `tg`) at
/// `client_config(path)`.
fn set_client_configs(kubectl: &Tool, client_config: impl Fn(&str) -> Value) {
    for (kind, name, path, count) in [
        (
            "mutatingwebhookconfiguration",
            "tg-tokengate-injector",
            "/inject",
            2,
        ),
        (
            "validatingwebhookconfiguration",
            "tg-tokengate-policy-validator",
            "/validate",
            1,
        ),
    ] {
        let patch: Vec<Value> = (0..count)
            .map(|i| {
                json!({"op": "replace", "path": format!("/webhooks/{i}/clientConfig"),
                       "value": client_config(path)})
            })
            .collect();
        kubectl
            .run([
                "patch",
                kind,
                name,
                "--type=json",
                "-p",
                &serde_json::to_string(&patch).expect("patch"),
            ])
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

/// The injected sidecar of `pod`, if it has one.
fn sidecar_of(pod: &Pod) -> Option<&k8s_openapi::api::core::v1::Container> {
    pod.spec
        .as_ref()?
        .init_containers
        .as_ref()?
        .iter()
        .find(|c| c.name == contract::SIDECAR_CONTAINER)
}

/// Every value in values.yaml carries a `# --` comment and a row in the chart's README table.
#[test]
fn every_value_is_documented() {
    let values = std::fs::read_to_string(chart().join("values.yaml")).expect("values.yaml");
    let readme = std::fs::read_to_string(chart().join("README.md")).expect("README.md");
    let parsed: Value = serde_saphyr::from_str(&values).expect("values.yaml parses");
    let mut leaves = Vec::new();
    collect_leaves(&parsed, String::new(), &mut leaves);
    let table = readme
        .split_once("## Values")
        .map(|(_, table)| table)
        .expect("README.md has a Values section");
    let documented: Vec<&str> = table
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split_once('`').map(|(key, _)| key))
        .collect();
    for leaf in &leaves {
        // A map documented as a whole (e.g. operator.resources) covers its keys.
        let covered = documented
            .iter()
            .any(|key| leaf == key || leaf.starts_with(&format!("{key}.")));
        assert!(covered, "{leaf} has no row in charts/tokengate/README.md");
    }
    let commented = values.matches("# -- ").count();
    assert_eq!(
        commented,
        documented.len(),
        "a `# --` comment per documented value"
    );
}

fn collect_leaves(value: &Value, prefix: String, out: &mut Vec<String>) {
    match value.as_object() {
        Some(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                collect_leaves(child, path, out);
            }
        }
        _ => out.push(prefix),
    }
}
