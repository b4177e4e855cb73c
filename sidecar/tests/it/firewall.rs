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
