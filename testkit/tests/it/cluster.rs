//! The local control plane (real etcd, kube-apiserver and kube-controller-manager) and the
//! harness pieces the operator and webhook tiers build on.
//!
//! Needs the binaries from `make controlplane`; `make test` builds them and points
//! TOKENGATE_CONTROLPLANE_BIN at them.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams,
    PostParams,
};
use kube::{Api, Client};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokengate_testkit::cluster::podrunner::{PodRunnerOptions, RunningPod};
use tokengate_testkit::cluster::webhook::{
    WebhookRegistration, WebhookServer, dry_run_create, patch_response,
};
use tokengate_testkit::cluster::{ControlPlane, apply_crd, wait_until};

const TIMEOUT: Duration = Duration::from_secs(60);

async fn setup(prefix: &str) -> (&'static ControlPlane, Client, String) {
    let cp = ControlPlane::shared().await.expect("control plane");
    let client = cp.client().await.expect("admin client");
    let namespace = cp.namespace(&client, prefix).await.expect("test namespace");
    (cp, client, namespace)
}

fn from_json<T: DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("test object matches its type")
}

fn test_pod(name: &str, labels: Value, command: &[&str]) -> Pod {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "containers": [{ "name": "main", "image": "example.invalid/app:1", "command": command }],
        },
    }))
}

#[tokio::test]
async fn custom_resource_round_trips_through_a_crd() {
    let (_cp, client, namespace) = setup("crd").await;
    let crd: CustomResourceDefinition = from_json(json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "widgets.test.tokengate.dev" },
        "spec": {
            "group": "test.tokengate.dev",
            "names": { "kind": "Widget", "listKind": "WidgetList", "plural": "widgets", "singular": "widget" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": { "status": {} },
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": {
                        "spec": {
                            "type": "object",
                            "required": ["size"],
                            "properties": {
                                "size": { "type": "integer", "minimum": 1 },
                                "color": { "type": "string", "default": "blue" },
                            },
                        },
                        "status": { "type": "object", "properties": { "ready": { "type": "boolean" } } },
                    },
                }},
            }],
        },
    }));
    apply_crd(&client, &crd).await.expect("CRD established");

    let resource = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("test.tokengate.dev", "v1", "Widget"),
        "widgets",
    );
    let widgets = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &resource);
    let widget: DynamicObject = from_json(json!({
        "apiVersion": "test.tokengate.dev/v1",
        "kind": "Widget",
        "metadata": { "name": "w1" },
        "spec": { "size": 3 },
    }));
    // Discovery of a new CRD can lag behind Established for a moment.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let created = loop {
        match widgets.create(&PostParams::default(), &widget).await {
            Ok(object) => break object,
            Err(kube::Error::Api(status))
                if status.is_not_found() && std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("create Widget: {e}"),
        }
    };
    assert_eq!(created.data["spec"]["size"], 3);
    assert_eq!(
        created.data["spec"]["color"], "blue",
        "schema default applied by the API server"
    );

    let invalid: DynamicObject = from_json(json!({
        "apiVersion": "test.tokengate.dev/v1",
        "kind": "Widget",
        "metadata": { "name": "w2" },
        "spec": { "size": 0 },
    }));
    match widgets.create(&PostParams::default(), &invalid).await {
        Err(kube::Error::Api(status)) => assert!(status.is_invalid(), "{status:?}"),
        other => panic!("a Widget with size 0 must be rejected, got {other:?}"),
    }

    widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "ready": true } })),
        )
        .await
        .expect("patch Widget status");
    let listed = widgets
        .list(&ListParams::default())
        .await
        .expect("list Widgets");
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].data["status"]["ready"], true);
    assert_eq!(listed.items[0].data["spec"]["size"], 3);
}

#[tokio::test]
async fn deployment_produces_pods_through_the_controller_manager() {
    let (_cp, client, namespace) = setup("deploy").await;
    let deployment: Deployment = from_json(json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "example.invalid/web:1" }] },
            },
        },
    }));
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    let deployment = deployments
        .create(&PostParams::default(), &deployment)
        .await
        .expect("create Deployment");
    let deployment_uid = deployment.metadata.uid.expect("Deployment uid");

    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &namespace);
    wait_until(TIMEOUT, "two Pods of the Deployment", || async {
        Ok(pods
            .list(&ListParams::default().labels("app=web"))
            .await?
            .items
            .len()
            == 2)
    })
    .await
    .expect("Deployment scaled up");

    let replica_set = replica_sets
        .list(&ListParams::default())
        .await
        .expect("list ReplicaSets")
        .items
        .into_iter()
        .next()
        .expect("a ReplicaSet");
    let owner = replica_set
        .metadata
        .owner_references
        .clone()
        .unwrap_or_default();
    assert!(
        owner
            .iter()
            .any(|o| o.uid == deployment_uid && o.controller == Some(true)),
        "ReplicaSet controlled by the Deployment: {owner:?}"
    );
    let replica_set_uid = replica_set.metadata.uid.expect("ReplicaSet uid");
    for pod in pods
        .list(&ListParams::default())
        .await
        .expect("list Pods")
        .items
    {
        let owners = pod.metadata.owner_references.unwrap_or_default();
        assert!(
            owners.iter().any(|o| o.uid == replica_set_uid),
            "Pod owned by the ReplicaSet: {owners:?}"
        );
    }
    wait_until(
        TIMEOUT,
        "Deployment status to count two replicas",
        || async {
            let status = deployments.get("web").await?.status.unwrap_or_default();
            Ok(status.replicas == Some(2))
        },
    )
    .await
    .expect("Deployment status");
}

#[tokio::test]
async fn mutating_webhook_served_by_the_test_changes_pods() {
    let (_cp, client, namespace) = setup("webhook").await;
    let server = WebhookServer::start(|_path, request| {
        let has_labels = request
            .object
            .as_ref()
            .and_then(|o| o.metadata.labels.as_ref())
            .is_some();
        let operations = if has_labels {
            json!([{ "op": "add", "path": "/metadata/labels/tokengate.dev~1mutated", "value": "true" }])
        } else {
            json!([{ "op": "add", "path": "/metadata/labels", "value": { "tokengate.dev/mutated": "true" } }])
        };
        patch_response(&request, operations)
    })
    .await
    .expect("start webhook server");

    let registration = WebhookRegistration::pods_in_namespace(
        format!("mutate-{namespace}.tokengate.dev"),
        server.url("/mutate"),
        server.ca_pem(),
        &namespace,
    );
    registration
        .register_mutating(&client)
        .await
        .expect("register webhook");

    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let probe = test_pod("probe", json!({ "probe": "true" }), &["true"]);
    server
        .wait_until_called("/mutate", TIMEOUT, || async {
            dry_run_create(&pods, &probe).await.map(|_| ())
        })
        .await
        .expect("the API server calls the webhook");
    assert!(
        pods.get_opt("probe").await.expect("get probe").is_none(),
        "dry-run stores nothing"
    );

    let pod = pods
        .create(
            &PostParams::default(),
            &test_pod("mutated", json!({ "app": "demo" }), &["true"]),
        )
        .await
        .expect("create Pod");
    let labels = pod.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("tokengate.dev/mutated").map(String::as_str),
        Some("true")
    );
    assert_eq!(labels.get("app").map(String::as_str), Some("demo"));
    assert!(server.calls("/mutate") >= 2);

    registration
        .unregister(&client)
        .await
        .expect("unregister webhook");
}

#[tokio::test]
async fn deleting_an_owner_cascades_to_its_dependents() {
    let (_cp, client, namespace) = setup("cascade").await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    let secrets = Api::<Secret>::namespaced(client.clone(), &namespace);
    let owner = config_maps
        .create(
            &PostParams::default(),
            &from_json(json!({ "metadata": { "name": "owner" }, "data": { "k": "v" } })),
        )
        .await
        .expect("create owner");
    let owner_reference = json!([{
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": "owner",
        "uid": owner.metadata.uid.expect("owner uid"),
    }]);
    config_maps
        .create(
            &PostParams::default(),
            &from_json(
                json!({ "metadata": { "name": "child", "ownerReferences": owner_reference } }),
            ),
        )
        .await
        .expect("create dependent ConfigMap");
    secrets
        .create(
            &PostParams::default(),
            &from_json(
                json!({ "metadata": { "name": "child", "ownerReferences": owner_reference } }),
            ),
        )
        .await
        .expect("create dependent Secret");

    config_maps
        .delete("owner", &DeleteParams::background())
        .await
        .expect("delete owner");
    wait_until(
        TIMEOUT,
        "the garbage collector to delete the dependents",
        || async {
            Ok(config_maps.get_opt("child").await?.is_none()
                && secrets.get_opt("child").await?.is_none())
        },
    )
    .await
    .expect("dependents collected");

    // Foreground deletion walks a Deployment → ReplicaSet → Pods chain.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &namespace);
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let replica_sets = Api::<ReplicaSet>::namespaced(client.clone(), &namespace);
    deployments
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "chain" },
                "spec": {
                    "replicas": 1,
                    "selector": { "matchLabels": { "app": "chain" } },
                    "template": {
                        "metadata": { "labels": { "app": "chain" } },
                        "spec": { "containers": [{ "name": "c", "image": "example.invalid/c:1" }] },
                    },
                },
            })),
        )
        .await
        .expect("create Deployment");
    wait_until(TIMEOUT, "the Deployment's Pod", || async {
        Ok(!pods.list(&ListParams::default()).await?.items.is_empty())
    })
    .await
    .expect("Pod created");
    deployments
        .delete("chain", &DeleteParams::foreground())
        .await
        .expect("delete Deployment");
    wait_until(
        TIMEOUT,
        "the Deployment, ReplicaSet and Pod to be gone",
        || async {
            Ok(deployments.get_opt("chain").await?.is_none()
                && replica_sets
                    .list(&ListParams::default())
                    .await?
                    .items
                    .is_empty()
                && pods.list(&ListParams::default()).await?.items.is_empty())
        },
    )
    .await
    .expect("cascade finished");
}

fn read_link(path: &Path) -> String {
    std::fs::read_link(path)
        .unwrap_or_else(|e| panic!("{} is a symlink: {e}", path.display()))
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn pod_runner_projects_volumes_and_follows_updates() {
    let (_cp, client, namespace) = setup("runner").await;
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    config_maps
        .create(
            &PostParams::default(),
            &from_json(
                json!({ "metadata": { "name": "app-config" }, "data": { "greeting": "hello" } }),
            ),
        )
        .await
        .expect("create ConfigMap");

    let script = "echo \"pod=$POD file=$GREETING_FILE\"; cat /etc/podinfo/labels; echo; \
                  while true; do echo \"greeting=$(cat /etc/config/greeting)\"; sleep 0.1; done";
    let pod: Pod = from_json(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": "runner", "labels": { "app": "demo", "tier": "web" } },
        "spec": {
            "containers": [{
                "name": "main",
                "image": "example.invalid/shell:1",
                "command": ["/usr/local/bin/shell", "-c", script],
                "env": [
                    { "name": "POD", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "GREETING_FILE", "value": "/etc/config/greeting" },
                ],
                "volumeMounts": [
                    { "name": "config", "mountPath": "/etc/config" },
                    { "name": "podinfo", "mountPath": "/etc/podinfo" },
                ],
            }],
            "volumes": [
                { "name": "config", "configMap": { "name": "app-config" } },
                { "name": "podinfo", "downwardAPI": { "items": [
                    { "path": "labels", "fieldRef": { "fieldPath": "metadata.labels" } },
                ]}},
            ],
        },
    }));
    let pods = Api::<Pod>::namespaced(client.clone(), &namespace);
    let pod = pods
        .create(&PostParams::default(), &pod)
        .await
        .expect("create Pod");
    let mut app = Command::new("sh");
    app.arg("-c").arg("echo app up; exec sleep 600");
    let options = PodRunnerOptions::new("main")
        .program("/usr/local/bin/shell", "sh")
        .app(app);
    let mut running = RunningPod::start(&client, &pod, options)
        .await
        .expect("run the Pod's container");

    running
        .wait_for_log("greeting=hello", TIMEOUT)
        .await
        .expect("container reads the ConfigMap");
    let output = running.logs();
    let config_dir = running.volume_dir("config").expect("config volume");
    assert!(
        output.contains(&format!(
            "pod=runner file={}",
            config_dir.join("greeting").display()
        )),
        "environment from the Pod, mount paths rewritten: {output}"
    );
    assert!(
        output.contains("app=\"demo\"\ntier=\"web\""),
        "labels file as kubelet writes it: {output}"
    );

    // kubelet's layout: ..data → timestamped directory, one symlink per key through ..data.
    let first_data = read_link(&config_dir.join("..data"));
    assert!(
        first_data.starts_with("..2"),
        "timestamped directory: {first_data}"
    );
    assert_eq!(read_link(&config_dir.join("greeting")), "..data/greeting");
    assert_eq!(
        running.local_path("/etc/config/greeting"),
        Some(config_dir.join("greeting"))
    );
    // The ServiceAccount admission plugin mounted the API access volume; it is projected too.
    let token = running
        .local_path("/var/run/secrets/kubernetes.io/serviceaccount/token")
        .expect("service account mount");
    assert!(
        std::fs::read_to_string(&token)
            .expect("projected token")
            .starts_with("ey"),
        "a JWT from the TokenRequest API"
    );

    let stored = pods.get("runner").await.expect("get Pod");
    let status = stored.status.expect("Pod status");
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert!(
        status
            .conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True"),
        "Pod marked Ready"
    );

    config_maps
        .patch(
            "app-config",
            &PatchParams::default(),
            &Patch::Merge(json!({ "data": { "greeting": "bonjour" } })),
        )
        .await
        .expect("update ConfigMap");
    running
        .wait_for_log("greeting=bonjour", TIMEOUT)
        .await
        .expect("the update reaches the running container");
    let second_data = read_link(&config_dir.join("..data"));
    assert_ne!(first_data, second_data, "..data swapped to a new directory");
    assert!(
        !config_dir.join(&first_data).exists(),
        "the previous data directory is removed"
    );

    pods.patch(
        "runner",
        &PatchParams::default(),
        &Patch::Merge(json!({ "metadata": { "labels": { "tier": "api" } } })),
    )
    .await
    .expect("relabel Pod");
    let labels_file = running
        .local_path("/etc/podinfo/labels")
        .expect("podinfo mount");
    wait_until(TIMEOUT, "the labels file to follow the Pod", || async {
        Ok(std::fs::read_to_string(&labels_file)?.contains("tier=\"api\""))
    })
    .await
    .expect("downward API follows label changes");
    assert!(running.container().is_running());
    let app = running.app().expect("stand-in app");
    assert!(app.is_running());
    assert!(app.log().contains("app up"));
}

const PROBE: &str = env!("CARGO_BIN_EXE_tokengate-kube-probe");

fn probe(method: &str, path: &str, body: Option<&str>) -> Command {
    let mut command = Command::new(PROBE);
    command.arg(method).arg(path);
    if let Some(body) = body {
        command.arg(body);
    }
    command
}

#[tokio::test]
async fn process_runs_as_a_service_account_under_rbac() {
    let (cp, client, namespace) = setup("rbac").await;
    Api::<ServiceAccount>::namespaced(client.clone(), &namespace)
        .create(
            &PostParams::default(),
            &from_json(json!({ "metadata": { "name": "reader" } })),
        )
        .await
        .expect("create ServiceAccount");
    Api::<Role>::namespaced(client.clone(), &namespace)
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "configmap-reader" },
                "rules": [{ "apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"] }],
            })),
        )
        .await
        .expect("create Role");
    Api::<RoleBinding>::namespaced(client.clone(), &namespace)
        .create(
            &PostParams::default(),
            &from_json(json!({
                "metadata": { "name": "reader" },
                "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader" },
                "subjects": [{ "kind": "ServiceAccount", "name": "reader", "namespace": namespace }],
            })),
        )
        .await
        .expect("create RoleBinding");

    let allowed_path = format!("/api/v1/namespaces/{namespace}/configmaps");
    wait_until(TIMEOUT, "the RoleBinding to take effect", || async {
        let output = cp
            .run_as_service_account(
                &client,
                &namespace,
                "reader",
                probe("GET", &allowed_path, None),
            )
            .await?;
        Ok(output.status.success())
    })
    .await
    .expect("ServiceAccount may list ConfigMaps");

    let output = cp
        .run_as_service_account(
            &client,
            &namespace,
            "reader",
            probe(
                "GET",
                &format!("/api/v1/namespaces/{namespace}/secrets"),
                None,
            ),
        )
        .await
        .expect("run probe");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(3),
        "Secrets are forbidden: {stdout}"
    );
    assert!(stdout.starts_with("403"), "{stdout}");
    assert!(
        stdout.contains(&format!("system:serviceaccount:{namespace}:reader")),
        "the API server saw the ServiceAccount: {stdout}"
    );

    // The long-running variant, as the operator will be run.
    let review = r#"{"apiVersion":"authentication.k8s.io/v1","kind":"SelfSubjectReview"}"#;
    let mut process = cp
        .spawn_as_service_account(
            &client,
            &namespace,
            "reader",
            probe(
                "POST",
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                Some(review),
            ),
        )
        .await
        .expect("spawn probe");
    let status = tokio::task::spawn_blocking(move || {
        let status = process.wait_timeout(TIMEOUT);
        (status, process.log())
    })
    .await
    .expect("join");
    let (status, log) = status;
    assert!(status.expect("probe exits").success(), "{log}");
    let body: Value = serde_json::from_str(log.lines().nth(1).expect("response body"))
        .expect("SelfSubjectReview JSON");
    assert_eq!(
        body["status"]["userInfo"]["username"],
        format!("system:serviceaccount:{namespace}:reader")
    );
}
