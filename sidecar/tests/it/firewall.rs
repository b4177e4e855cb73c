//! The pod firewall installed for real, by the sidecar binary, in a fresh network namespace
//! (`unshare -n`, or `-rn` without root), and listed with Debian's `nft`: what the kernel holds
//! is what the sidecar printed, a second run (an init container restarted) replaces the table
//! instead of failing or doubling it, and the canary answers.

use std::process::Command;

use tokengate_sidecar::firewall::{CanaryState, PodFirewall, canary};

/// Runs `script` with `sh` in a new network namespace with loopback up; `None` (and the reason
/// printed) where such a namespace or `nft` is not available.
fn in_network_namespace(script: &str) -> Option<std::process::Output> {
    let root = rustix::process::geteuid().is_root();
    let unshare = if root { "-n" } else { "-rn" };
    let nft = Command::new("nft").arg("--version").output();
    if !nft.is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: Debian's nft is not installed (apt-get install nftables)");
        return None;
    }
    let probe = Command::new("unshare").args([unshare, "true"]).output();
    if !probe.as_ref().is_ok_and(|o| o.status.success()) {
        eprintln!("skipped: cannot create a network namespace here (unshare {unshare}: {probe:?})");
        return None;
    }
    let script = format!("ip link set lo up && {script}");
    let output = Command::new("unshare")
        .args([unshare, "sh", "-ec", &script])
        .env("SIDECAR", env!("CARGO_BIN_EXE_tokengate-sidecar"))
        .output()
        .expect("unshare runs");
    Some(output)
}

#[test]
fn the_installed_table_is_the_printed_one_and_reruns_replace_it() {
    let Some(output) = in_network_namespace(
        "\"$SIDECAR\" firewall --port 8080 >/dev/null && \"$SIDECAR\" firewall --port 8080 && \
         echo ---- && nft list ruleset",
    ) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let (printed, listed) = stdout.split_once("----\n").expect("both parts");
    let expected = PodFirewall { port: 8080 }.nft_text();
    assert_eq!(printed, expected);
    // One table, exactly the printed one, after two runs.
    assert_eq!(listed, expected, "{listed}");
    assert!(stderr.contains("pod firewall installed"), "{stderr}");
}

#[test]
fn without_net_admin_the_firewall_fails_with_a_reason() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: dropping NET_ADMIN needs root here");
        return;
    }
    // capsh is not everywhere; setpriv (util-linux) is where unshare is.
    let Some(output) = in_network_namespace(
        "setpriv --inh-caps=-all --bounding-set=-net_admin \"$SIDECAR\" firewall --port 8080",
    ) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("NET_ADMIN"), "{stderr}");
}

#[tokio::test]
async fn the_canary_is_silent_where_no_table_is_installed() {
    // This machine's own namespace has no tokengate table: plain port unreachable.
    let state = canary(std::time::Duration::from_millis(500))
        .await
        .expect("canary");
    assert_eq!(state, CanaryState::Missing);
}

/// `run --require-pod-firewall` where no rules are in force (this machine's own namespace):
/// keys alone do not make the sidecar ready; `/ready` says why and the metric says missing.
/// The application probes handed over answer on the admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_pod_firewall_that_is_missing_keeps_ready_failing() {
    use http::StatusCode;
    use tokengate_policy::contract::{AppProbe, AppProbeAction};

    let bench = crate::support::Bench::start_with(
        |idp| {
            format!(
                "  validateJwt:\n    jwksUris: [\"{}\"]\n    issuers: [\"{}\"]\n",
                idp.jwks_url(),
                idp.issuer()
            )
        },
        |config| {
            let port = config.upstream.base.port_u16().expect("echo port");
            config.pod_firewall = Some(port);
            config.app_probes = vec![
                AppProbe {
                    container: "app".to_owned(),
                    kind: "readiness".to_owned(),
                    timeout_seconds: 1,
                    action: AppProbeAction::HttpGet {
                        port,
                        path: "/healthz".to_owned(),
                        headers: Vec::new(),
                    },
                },
                AppProbe {
                    container: "app".to_owned(),
                    kind: "liveness".to_owned(),
                    timeout_seconds: 1,
                    action: AppProbeAction::HttpGet {
                        port,
                        path: "/healthz".to_owned(),
                        headers: vec![("X-Echo-Status".to_owned(), "500".to_owned())],
                    },
                },
            ];
        },
    )
    .await;
    // The keys are there (the gate is ready), the firewall is not.
    let mut ready = bench.admin_get("/ready").await;
    for _ in 0..50 {
        if String::from_utf8_lossy(&ready.body).contains("pod firewall") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        ready = bench.admin_get("/ready").await;
    }
    let body = String::from_utf8_lossy(&ready.body).into_owned();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("the pod firewall's rules for port"), "{body}");
    assert!(body.contains("tokengate-firewall"), "{body}");
    assert_eq!(
        bench.metric("tokengate_pod_firewall", &[("state", "missing")]),
        1.0
    );
    assert_eq!(
        bench.metric("tokengate_pod_firewall", &[("state", "in_place")]),
        0.0
    );

    let passing = bench.admin_get("/app-health/app/readiness").await;
    assert_eq!(passing.status, StatusCode::OK);
    assert_eq!(bench.echo.last_request().expect("probed").path, "/healthz");
    let failing = bench.admin_get("/app-health/app/liveness").await;
    assert_eq!(failing.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&failing.body).contains("500"));
    let unknown = bench.admin_get("/app-health/app/startup").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
}
