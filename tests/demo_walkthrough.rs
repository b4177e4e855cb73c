//! `make demo`'s walkthrough, run to the end (`tokengate-demo --exit-after-walkthrough`) on a
//! node of its own, and without one (`--no-node`: the pod runner), and its output checked: each
//! step of the story is there, with the answers a user should see. Needs what the node tier
//! needs; part of `make test`.

use std::process::Command;
use std::sync::Mutex;

/// One demo at a time: each starts a control plane of its own.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
#[ignore = "needs root, the images and `make node`: run by `make test` and `make node-test`"]
fn the_demo_walkthrough_shows_each_step_on_the_node() {
    check(&[]);
}

#[test]
#[ignore = "needs the built binaries and `make controlplane kubectl`: run by `make test` and `make node-test`"]
fn the_demo_walkthrough_shows_each_step_without_a_node() {
    check(&["--no-node"]);
}

fn check(args: &[&str]) {
    let _one = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let output = Command::new(env!("CARGO_BIN_EXE_tokengate-demo"))
        .arg("--exit-after-walkthrough")
        .args(args)
        .output()
        .expect("the demo runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stdout}");
    assert!(output.status.success(), "the demo failed:\n{stderr}");
    let expected = [
        // every progress line
        "[1/7] a control plane",
        "[2/7] ",
        "[3/7] the identity provider",
        "[4/7] kubectl apply -f examples/quickstart.yaml",
        "[5/7] a Deployment in the opted-in namespace",
        "[6/7] the walkthrough",
        "[7/7] the cluster is yours",
        // the injected pod
        "tokengate-sidecar",
        // no token: 401 with the reason, a challenge
        "HTTP/1.1 401",
        "\"reason\":\"TokenNotPresent\"",
        // the token: the application saw the caller
        "\"x-user-id\":[",
        // another audience
        "\"reason\":\"TokenAudienceNotAllowed\"",
        // kubectl get tp / describe tp
        "quickstart",
        "KeysResolved",
        // the edit, live
        "policy edit enforced by the running sidecar",
        // the metrics
        "tokengate_requests_total{",
        "reason=\"TokenAudienceNotAllowed\"",
        // how to reach it
        "export KUBECONFIG=",
    ];
    for needle in expected {
        assert!(stdout.contains(needle), "the output lacks {needle:?}");
    }
    assert!(
        stdout.to_lowercase().contains("www-authenticate: bearer"),
        "the refusal carries its challenge"
    );
}
