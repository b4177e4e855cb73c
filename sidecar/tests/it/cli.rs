//! The command line as users meet it: `check` explains decisions, bad files exit 64.

use std::process::Command;

use jsonwebtoken::Algorithm;
use tokengate_testkit::idp::IdentityProvider;

const BIN: &str = env!("CARGO_BIN_EXE_tokengate-sidecar");

/// The quick-start example with the provider's real address in place of the demo's.
fn quickstart_for(idp: &IdentityProvider, dir: &std::path::Path) -> std::path::PathBuf {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/quickstart.yaml"
    ))
    .expect("quick-start example");
    assert!(
        example.contains("http://127.0.0.1:9400"),
        "example changed its provider address"
    );
    let path = dir.join("quickstart.yaml");
    std::fs::write(
        &path,
        example.replace("http://127.0.0.1:9400", idp.base_url()),
    )
    .expect("write");
    path
}

async fn check(args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    // The provider runs on this runtime: let the child block a worker thread, not the runtime.
    let output = tokio::task::spawn_blocking(move || Command::new(BIN).args(&args).output())
        .await
        .expect("join")
        .expect("binary runs");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_explains_accept_and_refuse() {
    let idp = IdentityProvider::start().await.expect("provider");
    let dir = tempfile::tempdir().expect("dir");
    let policy = quickstart_for(&idp, dir.path());
    let policy = policy.to_str().expect("utf-8 path");

    let mut claims = idp.claims();
    claims["aud"] = "api://demo".into();
    let good = idp.sign(Algorithm::RS256, &claims);
    let (code, out, err) = check(&["check", "--policy", policy, "--token", &good]).await;
    assert_eq!(code, 0, "{out}{err}");
    for line in [
        "policy: quickstart",
        "[pass] signature",
        "[pass] audience",
        "decision: ALLOW",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }

    claims["aud"] = "api://other".into();
    let wrong_audience = idp.sign(Algorithm::RS256, &claims);
    let (code, out, _) = check(&["check", "--policy", policy, "--token", &wrong_audience]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("decision: DENY TokenAudienceNotAllowed"),
        "{out}"
    );
    assert!(out.contains("response: HTTP 401"), "{out}");
    assert!(out.contains("error=\"invalid_token\""), "{out}");

    // Routes are explained too.
    let (code, out, _) = check(&[
        "check", "--policy", policy, "--token", "x", "--path", "/healthz",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Disabled (rules[0])"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_policy_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().expect("dir");
    let policy = dir.path().join("bad.yaml");
    std::fs::write(
        &policy,
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {name: bad}\nspec:\n  selector: {matchLabels: {app: a}}\n  validateJwt: {jwksUris: [\"not a url\"]}\n",
    )
    .expect("write");
    let policy = policy.to_str().expect("utf-8 path");
    let (code, _, err) = check(&["check", "--policy", policy, "--token", "x"]).await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("spec.validateJwt.jwksUris[0]"), "{err}");

    let (code, _, err) = check(&[
        "run",
        "--policy",
        policy,
        "--upstream",
        "http://127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ])
    .await;
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("is not a URL"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_flags_are_checked_and_documented() {
    let common = [
        "--upstream",
        "http://127.0.0.1:1",
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "127.0.0.1:0",
    ];
    // A bundle needs the pod's labels to choose a policy.
    let mut args = vec!["run", "--bundle", "missing-bundle"];
    args.extend(common);
    let (code, _, err) = check(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--pod-labels"), "{err}");
    // Policy files and a bundle exclude each other.
    let mut args = vec![
        "run",
        "--bundle",
        "missing-bundle",
        "--pod-labels",
        "missing-labels",
        "--policy",
        "p.yaml",
    ];
    args.extend(common);
    let (code, _, err) = check(&args).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");

    let (code, out, _) = check(&["run", "--help"]).await;
    assert_eq!(code, 0);
    for flag in [
        "--bundle <DIR>",
        "--token-cache-entries",
        "--startup <STARTUP>",
        "failClosed",
        "--startup-timeout",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}:\n{out}");
    }
}

/// What the operator's side writes into an injected pod (from the shared contract) is exactly
/// what this binary's `run` accepts, and means the bundle, labels and ports the contract names.
#[test]
fn run_accepts_the_arguments_the_contract_builds() {
    use clap::Parser as _;
    use tokengate_policy::contract;
    use tokengate_sidecar::cli::{Cli, Command};

    use std::time::Duration;

    // Every tuning flag set, as the operator writes them from the chart's values.
    let tuning = contract::SidecarTuning {
        log_format: Some("json".to_owned()),
        upstream_timeout: Some(Duration::from_millis(1500)),
        idle_timeout: Some(Duration::from_secs(90)),
        header_read_timeout: Some(Duration::from_secs(3)),
        drain_timeout: Some(Duration::from_secs(20)),
        trust_bundle: Some(contract::TrustBundle {
            config_map: "corp-ca".to_owned(),
            key: "ca.crt".to_owned(),
        }),
    };
    let args = std::iter::once("tokengate-sidecar".to_owned())
        .chain(contract::sidecar_run_args(8080, &tuning));
    let cli = Cli::try_parse_from(args).expect("the sidecar parses the contract's arguments");
    assert!(matches!(cli.log_format, tokengate_runtime::LogFormat::Json));
    let Command::Run(run) = cli.command else {
        panic!("not a run command");
    };
    assert_eq!(run.upstream_timeout, Duration::from_millis(1500));
    assert_eq!(run.idle_timeout, Duration::from_secs(90));
    assert_eq!(run.header_read_timeout, Duration::from_secs(3));
    assert_eq!(run.drain_timeout, Duration::from_secs(20));
    let config = run.into_config();
    assert_eq!(
        config.extra_ca.as_deref(),
        Some(
            std::path::Path::new(contract::TRUST_BUNDLE_DIR)
                .join("ca.crt")
                .as_path()
        )
    );
    let bundle = config.bundle.expect("bundle");
    assert_eq!(bundle, std::path::Path::new(contract::BUNDLE_DIR));
    assert_eq!(
        config.pod_labels.expect("pod labels"),
        std::path::Path::new(contract::POD_INFO_DIR).join(contract::POD_LABELS_FILE)
    );
    assert_eq!(config.listen.port(), contract::SIDECAR_PROXY_PORT);
    assert_eq!(config.admin.port(), contract::SIDECAR_ADMIN_PORT);
    assert_eq!(config.upstream.base.to_string(), "http://127.0.0.1:8080/");
    assert!(config.policy_files.is_empty());
    // The bundle's subdirectories are the ones the sidecar's loader reads.
    assert_eq!(
        tokengate_sidecar::bundle::POLICIES_DIR,
        contract::BUNDLE_POLICIES_DIR
    );
    assert_eq!(
        tokengate_sidecar::bundle::KEYS_DIR,
        contract::BUNDLE_KEYS_DIR
    );
    // The webhook's probes name these paths on the admin port.
    struct Up;
    impl tokengate_runtime::AdminState for Up {
        fn readiness(&self) -> tokengate_runtime::Readiness {
            tokengate_runtime::Readiness {
                ready: true,
                detail: String::new(),
            }
        }
        fn metrics(&self) -> String {
            String::new()
        }
    }
    for path in [contract::SIDECAR_LIVE_PATH, contract::SIDECAR_READY_PATH] {
        let response = tokengate_runtime::admin::respond(path, &Up);
        assert_eq!(response.status(), http::StatusCode::OK, "{path}");
    }
}

/// What the webhook writes for a pod with the pod firewall: the init container's arguments,
/// the sidecar's extra flag and the probes it hands over (the JSON of `TOKENGATE_APP_PROBES`,
/// given here as the flag it sets).
#[test]
fn the_pod_firewall_arguments_the_contract_builds_are_accepted() {
    use clap::Parser as _;
    use tokengate_policy::contract;
    use tokengate_sidecar::cli::{Cli, Command};

    let args = std::iter::once("tokengate-sidecar".to_owned()).chain(contract::firewall_args(8080));
    let cli = Cli::try_parse_from(args).expect("the sidecar parses the firewall's arguments");
    let Command::Firewall(firewall) = cli.command else {
        panic!("not a firewall command");
    };
    assert_eq!(firewall.port, 8080);

    let probes = vec![contract::AppProbe {
        container: "app".to_owned(),
        kind: "readiness".to_owned(),
        timeout_seconds: 2,
        action: contract::AppProbeAction::HttpGet {
            port: 8080,
            path: "/healthz".to_owned(),
            headers: vec![("X-Probe".to_owned(), "1".to_owned())],
        },
    }];
    let json = serde_json::to_string(&probes).expect("JSON");
    let args = std::iter::once("tokengate-sidecar".to_owned())
        .chain(contract::sidecar_run_args(
            8080,
            &contract::SidecarTuning::default(),
        ))
        .chain([
            contract::require_pod_firewall_arg(8080),
            "--app-probes".to_owned(),
            json,
        ]);
    let cli = Cli::try_parse_from(args).expect("the sidecar parses the pod firewall flags");
    let Command::Run(run) = cli.command else {
        panic!("not a run command");
    };
    let config = run.into_config();
    assert_eq!(config.pod_firewall, Some(8080));
    assert_eq!(config.app_probes, probes);
}
