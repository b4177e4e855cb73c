//! The thin HTTP layer: HTTPS (rustls, HTTP/2 and HTTP/1.1) on the webhook port, one path per
//! webhook, AdmissionReview in and out, metrics around each decision.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::ListParams;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use serde::de::DeserializeOwned;
use tokengate_policy::TokenPolicy;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::inject::{InjectSettings, Injection, Skip, inject_with, skip};
use super::validate::{PolicyRules, review_policy};
use super::{INJECT_PATH, VALIDATE_PATH};
use crate::metrics::Metrics;

/// AdmissionReviews carry the object and, on update, the old one; objects are at most 1.5 MiB
/// in etcd.
const MAX_BODY: usize = 8 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Listing the namespace's policies (overlap warnings; whether a pod gets the pod firewall)
/// must not hold up an admission.
const LIST_TIMEOUT: Duration = Duration::from_secs(3);

/// Everything the handlers need.
pub struct Webhooks {
    pub inject: InjectSettings,
    pub policy_rules: PolicyRules,
    pub client: kube::Client,
    pub metrics: Arc<Metrics>,
}

/// The mutating webhook's answer to one request, and its `result` metric label.
/// `pod_firewall`: whether a TokenPolicy selecting the pod asks for the pod firewall, or why
/// that could not be found out (then the pod is refused: injecting without the firewall it may
/// need would be silently wrong; the pod's controller retries).
pub fn review_pod(
    request: &AdmissionRequest<Pod>,
    settings: &InjectSettings,
    pod_firewall: Result<bool, String>,
) -> (AdmissionResponse, &'static str) {
    let response = AdmissionResponse::from(request);
    if request.operation != Operation::Create {
        return (response, "skipped");
    }
    let Some(pod) = &request.object else {
        return (
            AdmissionResponse::invalid("the AdmissionReview carries no Pod"),
            "error",
        );
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let pod_name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let pod_firewall = match pod_firewall {
        Ok(firewall) => firewall,
        Err(message) if skip(pod, &namespace, settings).is_none() => {
            tracing::warn!(%namespace, pod = %pod_name, %message, "pod refused: its TokenPolicies are unknown");
            return (
                response.deny(format!(
                    "tokengate cannot inject this pod now: whether a TokenPolicy asks for its pod \
                     firewall is unknown ({message}); try again"
                )),
                "error",
            );
        }
        Err(_) => false,
    };
    match inject_with(pod, &namespace, settings, pod_firewall) {
        Injection::Skip(reason) => {
            let reason = match reason {
                Skip::OptedOut => "opted out",
                Skip::ExcludedNamespace => "excluded namespace",
                Skip::AlreadyInjected => "already injected",
            };
            tracing::debug!(%namespace, pod = %pod_name, reason, "not injected");
            (response, "skipped")
        }
        Injection::Inject { patch, port } => match response.with_patch(patch) {
            Ok(response) => {
                tracing::debug!(%namespace, pod = %pod_name, port, "sidecar injected");
                (response, "injected")
            }
            Err(err) => (
                AdmissionResponse::invalid(format!("writing the patch: {err}")),
                "error",
            ),
        },
        Injection::Refuse(message) => {
            tracing::info!(%namespace, pod = %pod_name, %message, "pod refused");
            (
                response.deny(format!("tokengate cannot protect this pod: {message}")),
                "denied",
            )
        }
    }
}

impl Webhooks {
    async fn review_policy(
        &self,
        request: &AdmissionRequest<TokenPolicy>,
    ) -> (AdmissionResponse, &'static str) {
        let mut response = AdmissionResponse::from(request);
        if !matches!(request.operation, Operation::Create | Operation::Update) {
            return (response, "allowed");
        }
        let Some(policy) = &request.object else {
            return (
                AdmissionResponse::invalid("the AdmissionReview carries no TokenPolicy"),
                "error",
            );
        };
        let namespace = request.namespace.clone().unwrap_or_default();
        let mut warnings = Vec::new();
        let others = match self.namespace_policies(&namespace).await {
            Ok(others) => others,
            Err(message) => {
                warnings.push(format!(
                    "overlaps with other TokenPolicies were not checked: {message}"
                ));
                Vec::new()
            }
        };
        let review = review_policy(
            policy,
            request.operation == Operation::Create,
            &others,
            &self.policy_rules,
        );
        warnings.extend(review.warnings);
        warnings.extend(pod_firewall_warning(policy, request.old_object.as_ref()));
        if !warnings.is_empty() {
            response.warnings = Some(warnings);
        }
        match review.refusal {
            Some(message) => (response.deny(message), "denied"),
            None => (response, "allowed"),
        }
    }

    async fn namespace_policies(&self, namespace: &str) -> Result<Vec<TokenPolicy>, String> {
        let api = Api::<TokenPolicy>::namespaced(self.client.clone(), namespace);
        match tokio::time::timeout(LIST_TIMEOUT, api.list(&ListParams::default())).await {
            Ok(Ok(list)) => Ok(list.items),
            Ok(Err(err)) => Err(format!("listing TokenPolicies: {err}")),
            Err(_) => Err(format!("listing TokenPolicies took over {LIST_TIMEOUT:?}")),
        }
    }

    /// Whether a TokenPolicy of the pod's namespace that selects it asks for the pod firewall.
    /// Asked of the API server on each injection (a few per second at most: pods are created
    /// by controllers at their pace), so that a policy created just before its pods is seen;
    /// a watch cache could lag behind that. Pods left alone are not looked up.
    async fn pod_firewall(&self, request: &AdmissionRequest<Pod>) -> Result<bool, String> {
        let Some(pod) = request.object.as_ref() else {
            return Ok(false);
        };
        let namespace = request
            .namespace
            .clone()
            .or_else(|| pod.metadata.namespace.clone())
            .unwrap_or_default();
        if request.operation != Operation::Create || skip(pod, &namespace, &self.inject).is_some() {
            return Ok(false);
        }
        let policies = self.namespace_policies(&namespace).await?;
        Ok(wants_pod_firewall(pod, &policies))
    }

    async fn handle(&self, path: &str, body: &[u8]) -> (AdmissionResponse, &'static str) {
        match path {
            INJECT_PATH => match parse::<Pod>(body) {
                Ok(request) => {
                    let firewall = self.pod_firewall(&request).await;
                    review_pod(&request, &self.inject, firewall)
                }
                Err(message) => (AdmissionResponse::invalid(message), "error"),
            },
            _ => match parse::<TokenPolicy>(body) {
                Ok(request) => self.review_policy(&request).await,
                Err(message) => (AdmissionResponse::invalid(message), "error"),
            },
        }
    }
}

/// A policy that newly asks for the pod firewall: it reaches pods when they are created, so
/// the ones already running go without it until they are replaced (the `Bypass` condition
/// counts them). Said at once, where the change is made.
pub fn pod_firewall_warning(policy: &TokenPolicy, old: Option<&TokenPolicy>) -> Option<String> {
    let asks = |p: &TokenPolicy| {
        p.spec
            .private_access
            .as_ref()
            .is_some_and(|a| a.pod_firewall)
    };
    (asks(policy) && !old.is_some_and(asks)).then(|| {
        "privateAccess.podFirewall applies to pods created from now on: pods already running keep \
         what they have until they are replaced (kubectl rollout restart)"
            .to_owned()
    })
}

/// Whether any live TokenPolicy that selects `pod` asks for `privateAccess.podFirewall`. Any,
/// not only the one the sidecar applies: two policies selecting a pod is a conflict to fix,
/// and meanwhile the pod gets the stronger protection.
pub fn wants_pod_firewall(pod: &Pod, policies: &[TokenPolicy]) -> bool {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    policies.iter().any(|policy| {
        policy.metadata.deletion_timestamp.is_none()
            && policy
                .spec
                .private_access
                .as_ref()
                .is_some_and(|p| p.pod_firewall)
            && policy.spec.selector.matches(&labels)
    })
}

/// The request of an AdmissionReview, or why there is none (answered as an invalid request).
fn parse<K>(body: &[u8]) -> Result<AdmissionRequest<K>, String>
where
    K: kube::Resource + DeserializeOwned,
{
    let review: AdmissionReview<K> =
        serde_json::from_slice(body).map_err(|e| format!("malformed AdmissionReview: {e}"))?;
    review
        .try_into()
        .map_err(|_| "the AdmissionReview carries no request".to_owned())
}

/// Accepts TLS connections on `listener` for ever.
pub async fn serve(listener: TcpListener, acceptor: TlsAcceptor, webhooks: Arc<Webhooks>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors or similar: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let webhooks = Arc::clone(&webhooks);
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(error = %err, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let webhooks = Arc::clone(&webhooks);
                async move { Ok::<_, Infallible>(respond(request, &webhooks).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn respond(request: Request<Incoming>, webhooks: &Webhooks) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_owned();
    let webhook = match path.as_str() {
        INJECT_PATH => "inject",
        VALIDATE_PATH => "validate",
        _ => return plain(StatusCode::NOT_FOUND, "no webhook at this path\n"),
    };
    if request.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview\n");
    }
    // Timed from the whole request being in: the decision and the answer, not the transfer.
    let (started, (response, result)) =
        match Limited::new(request.into_body(), MAX_BODY).collect().await {
            Ok(body) => {
                let started = Instant::now();
                (started, webhooks.handle(&path, &body.to_bytes()).await)
            }
            Err(err) => (
                Instant::now(),
                (
                    AdmissionResponse::invalid(format!("reading the request: {err}")),
                    "error",
                ),
            ),
        };
    let reply = match serde_json::to_vec(&response.into_review()) {
        Ok(body) => Response::builder()
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
        Err(err) => plain(StatusCode::INTERNAL_SERVER_ERROR, &format!("{err}\n")),
    };
    webhooks
        .metrics
        .admission
        .with_label_values(&[webhook, result])
        .inc();
    webhooks
        .metrics
        .admission_duration
        .with_label_values(&[webhook])
        .observe(started.elapsed().as_secs_f64());
    reply
}

fn plain(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_owned())));
    *response.status_mut() = status;
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn settings() -> InjectSettings {
        let args = <Flags as clap::Parser>::try_parse_from(["tokengate-operator"])
            .expect("defaults parse")
            .webhook;
        args.inject_settings("tokengate-system").expect("settings")
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        webhook: super::super::WebhookArgs,
    }

    fn review(namespace: &str, pod: Value) -> AdmissionRequest<Pod> {
        let body = json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "7c1e", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace, "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": pod, "dryRun": false,
            },
        });
        parse::<Pod>(&serde_json::to_vec(&body).expect("json")).expect("review parses")
    }

    fn answer(namespace: &str, pod: Value) -> (Value, &'static str) {
        let (response, result) = review_pod(&review(namespace, pod), &settings(), Ok(false));
        let json = serde_json::to_value(response.into_review()).expect("review");
        (json["response"].clone(), result)
    }

    #[test]
    fn the_review_carries_the_patch_or_the_refusal() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "orders-", "labels": {"app": "orders"}},
            "spec": {"containers": [{"name": "orders", "ports": [{"name": "http", "containerPort": 8080}]}]},
        });
        let (response, result) = answer("shop", pod.clone());
        assert_eq!(result, "injected");
        assert_eq!(response["uid"], "7c1e");
        assert_eq!(response["allowed"], true);
        assert_eq!(response["patchType"], "JSONPatch");
        // kube writes the patch's bytes as a JSON array, which the API server reads as well.
        let patch: Vec<u8> = serde_json::from_value(response["patch"].clone()).expect("patch");
        let patch: Value = serde_json::from_slice(&patch).expect("patch JSON");
        assert!(patch.to_string().contains("tokengate-sidecar"));

        // The namespace comes from the request: pods of the operator's namespace are never
        // injected, whatever the configuration sends.
        let (response, result) = answer("tokengate-system", pod);
        assert_eq!(result, "skipped");
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none());

        let (response, result) = answer(
            "shop",
            json!({"metadata": {"name": "batch"}, "spec": {"containers": [{"name": "job"}]}}),
        );
        assert_eq!(result, "denied");
        assert_eq!(response["allowed"], false);
        let message = response["status"]["message"].as_str().expect("message");
        assert!(
            message.starts_with("tokengate cannot protect this pod: "),
            "{message}"
        );
    }

    /// The webhook's own cost for one pod (parse, decide, write the answer), without the
    /// network or the API server. A measurement, run by hand:
    /// `cargo test -p tokengate-operator --lib -- --ignored --nocapture cost_of_one_review`
    #[test]
    #[ignore = "a measurement, run by hand"]
    fn cost_of_one_review() {
        let text = include_str!("testdata/inject/deployment-pod.pod.yaml");
        let pod: Value = serde_saphyr::from_str(text).expect("pod");
        let body = serde_json::to_vec(&json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "7c1e", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": "shop", "operation": "CREATE", "userInfo": {}, "object": pod,
            },
        }))
        .expect("body");
        // CPU time of this thread (utime + stime, in clock ticks of 10 ms): on a loaded machine
        // wall time mostly measures waiting for a core.
        let cpu_ticks = || {
            std::fs::read_to_string("/proc/thread-self/stat")
                .ok()
                .and_then(|stat| {
                    // Fields 14 and 15 of stat(5); the text after the command starts at
                    // field 3.
                    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                    let field = |n: usize| fields.get(n - 3)?.parse::<u64>().ok();
                    Some(field(14)? + field(15)?)
                })
                .unwrap_or(0)
        };
        let settings = settings();
        let mut times = Vec::new();
        let cpu_before = cpu_ticks();
        for _ in 0..1000 {
            let started = std::time::Instant::now();
            let request = parse::<Pod>(&body).expect("parses");
            let (response, _) = review_pod(&request, &settings, Ok(false));
            let answer = serde_json::to_vec(&response.into_review()).expect("answer");
            assert!(!answer.is_empty());
            times.push(started.elapsed());
        }
        let cpu_ms = (cpu_ticks() - cpu_before) as f64 * 10.0 / 1000.0;
        times.sort();
        eprintln!(
            "one review: wall p50 {:?} p99 {:?}, CPU {cpu_ms:.3} ms on average ({} bytes in)",
            times[499],
            times[989],
            body.len()
        );
    }

    #[test]
    fn the_pod_firewall_follows_the_selecting_policies_and_unknown_policies_refuse() {
        let pod_value = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "orders-", "labels": {"app": "orders"}},
            "spec": {"containers": [{"name": "orders", "ports": [{"containerPort": 8080}]}]},
        });
        let pod: Pod = serde_json::from_value(pod_value.clone()).expect("pod");
        let policy = |name: &str, app: &str, firewall: bool| -> TokenPolicy {
            serde_json::from_value(json!({
                "apiVersion": "tokengate.dev/v1alpha1", "kind": "TokenPolicy",
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"selector": {"matchLabels": {"app": app}},
                    "validateJwt": {"jwksUris": ["https://idp.example/keys"]},
                    "privateAccess": {"podFirewall": firewall}},
            }))
            .expect("policy")
        };
        assert!(wants_pod_firewall(&pod, &[policy("a", "orders", true)]));
        let (on, off) = (policy("a", "orders", true), policy("a", "orders", false));
        assert!(pod_firewall_warning(&on, None).is_some_and(|w| w.contains("rollout restart")));
        assert!(pod_firewall_warning(&on, Some(&off)).is_some());
        assert!(pod_firewall_warning(&on, Some(&on)).is_none());
        assert!(pod_firewall_warning(&off, None).is_none());
        assert!(!wants_pod_firewall(&pod, &[policy("a", "orders", false)]));
        assert!(!wants_pod_firewall(&pod, &[policy("a", "billing", true)]));
        assert!(wants_pod_firewall(
            &pod,
            &[policy("a", "orders", false), policy("b", "orders", true)]
        ));

        let request = review("shop", pod_value.clone());
        let (response, result) = review_pod(&request, &settings(), Ok(true));
        assert_eq!(result, "injected");
        let json = serde_json::to_value(response.into_review()).expect("review");
        let patch: Vec<u8> =
            serde_json::from_value(json["response"]["patch"].clone()).expect("patch");
        let patch = String::from_utf8(patch).expect("UTF-8");
        assert!(
            patch.contains(tokengate_policy::contract::FIREWALL_CONTAINER),
            "{patch}"
        );
        let (response, result) = review_pod(
            &request,
            &settings(),
            Err("listing TokenPolicies: timeout".into()),
        );
        assert_eq!(result, "error");
        let json = serde_json::to_value(response.into_review()).expect("review");
        assert_eq!(json["response"]["allowed"], false);
        let message = json["response"]["status"]["message"]
            .as_str()
            .unwrap_or_default();
        assert!(
            message.contains("listing TokenPolicies: timeout"),
            "{message}"
        );
        // A pod left alone does not need its policies.
        let (_, result) = review_pod(
            &review("kube-system", pod_value),
            &settings(),
            Err("unknown".into()),
        );
        assert_eq!(result, "skipped");
    }

    #[test]
    fn malformed_reviews_are_answered_as_invalid() {
        assert!(parse::<Pod>(b"{}").is_err());
        assert!(parse::<Pod>(b"not json").is_err());
    }
}
