//! The import's output applies with the real kubectl to a real kube-apiserver: the CRD from
//! `crds/`, then every fixture's YAML (`tests/fixtures/*.yaml`), client-side and server-side,
//! into a namespace of its own; any warning kubectl prints fails the test, and kubectl's YAML 1.1
//! reading of each file must equal the policy crate's.
//!
//! The control plane and kubectl come from `make controlplane kubectl`
//! (`TOKENGATE_CONTROLPLANE_BIN`, `TOKENGATE_KUBECTL_BIN`).

use std::path::{Path, PathBuf};

use serde_json::Value;
use tokengate_testkit::cluster::ControlPlane;
use tokengate_testkit::cluster::tools::{Tool, drop_context_namespaces, whole_numbers_as_integers};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cli crate sits in the workspace")
        .to_owned()
}

fn apply(kubectl: &Tool, path: &Path, namespace: &str, flags: &[&str]) {
    let mut args = vec!["apply", "--field-manager=tokengate-tests", "-n", namespace];
    args.extend_from_slice(flags);
    if flags.contains(&"--server-side") {
        args.push("--force-conflicts");
    }
    let path = path.to_str().expect("UTF-8 path");
    args.extend(["-f", path]);
    kubectl.run(&args).unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn every_fixtures_output_applies_with_kubectl() {
    let cp = ControlPlane::shared_blocking().unwrap_or_else(|e| panic!("{e:#}"));
    let home = cp.dir().join("cli-tools");
    std::fs::create_dir_all(&home).expect("tools home");
    let kubectl = Tool::kubectl(cp.admin_kubeconfig(), &home).unwrap_or_else(|e| panic!("{e:#}"));

    let crd = repo().join("crds/tokengate.dev_tokenpolicies.yaml");
    apply(&kubectl, &crd, "default", &["--server-side"]);
    kubectl
        .run([
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            "crd/tokenpolicies.tokengate.dev",
        ])
        .unwrap_or_else(|e| panic!("{e:#}"));

    let mut outputs: Vec<PathBuf> = std::fs::read_dir(repo().join("cli/tests/fixtures"))
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    outputs.sort();
    assert!(outputs.len() >= 8, "the fixtures' outputs are missing");

    let namespace = format!("import-apim-{:04x}", std::process::id() & 0xffff);
    kubectl
        .run(["create", "namespace", &namespace])
        .unwrap_or_else(|e| panic!("{e:#}"));
    for output in &outputs {
        let text = std::fs::read_to_string(output).expect("fixture output");
        // What the policy crate reads, and the same objects as written (YAML 1.2).
        tokengate_policy::parse_documents(&text)
            .unwrap_or_else(|e| panic!("{}: {e}", output.display()));
        let ours: Vec<Value> = serde_saphyr::from_multiple::<Value>(&text)
            .expect("YAML documents")
            .into_iter()
            .filter(|v| !v.is_null())
            .map(whole_numbers_as_integers)
            .collect();
        // A fixture may name its own namespace; the others go to the test's.
        let target = ours[0]["metadata"]["namespace"]
            .as_str()
            .unwrap_or(&namespace)
            .to_owned();
        if target != namespace {
            let _ = kubectl.run_unchecked(["create", "namespace", &target]);
        }
        // kubectl (YAML 1.1) reads the same objects.
        let mut theirs = kubectl
            .objects_as_read(output)
            .unwrap_or_else(|e| panic!("{e:#}"));
        drop_context_namespaces(&mut theirs, &ours);
        assert_eq!(
            theirs,
            ours,
            "{} reads differently under YAML 1.1",
            output.display()
        );
        apply(&kubectl, output, &target, &["--dry-run=server"]);
        apply(
            &kubectl,
            output,
            &target,
            &["--dry-run=server", "--server-side"],
        );
        apply(&kubectl, output, &target, &["--server-side"]);
        for document in &ours {
            let name = document["metadata"]["name"].as_str().expect("name");
            kubectl
                .run(["get", "-n", &target, "tokenpolicy", name, "-o", "name"])
                .unwrap_or_else(|e| panic!("{}: {e:#}", output.display()));
        }
    }
}
