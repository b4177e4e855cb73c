//! Admission webhooks against the local API server: a small HTTPS server for handlers written in
//! the test, registration by URL (no Services, DNS or kube-proxy here), and a wait until the API
//! server really calls the webhook, since it picks up new configurations asynchronously.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use kube::{Api, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use super::pki::CertificateAuthority;
use super::wait_until;

/// Decides one admission request; `path` is the URL path the API server called.
pub type AdmissionHandler =
    dyn Fn(&str, AdmissionRequest<DynamicObject>) -> AdmissionResponse + Send + Sync + 'static;

/// An HTTPS admission webhook server on 127.0.0.1, running on the current tokio runtime; it
/// stops when dropped.
pub struct WebhookServer {
    addr: SocketAddr,
    ca_pem: String,
    calls: Arc<Mutex<HashMap<String, usize>>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for WebhookServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for WebhookServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebhookServer {
    /// Serves `handler` for every path, with a certificate for IP 127.0.0.1 from a fresh CA.
    pub async fn start<F>(handler: F) -> Result<WebhookServer>
    where
        F: Fn(&str, AdmissionRequest<DynamicObject>) -> AdmissionResponse + Send + Sync + 'static,
    {
        let ca = CertificateAuthority::new("tokengate-test-webhook-ca")?;
        let serving = ca.issue_server("127.0.0.1", &["127.0.0.1", "localhost"])?;
        let tls = serving
            .server_config()
            .context("configuring the webhook serving certificate")?;
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the webhook server")?;
        let addr = listener
            .local_addr()
            .context("reading the webhook address")?;
        let calls = Arc::new(Mutex::new(HashMap::new()));
        let handler: Arc<AdmissionHandler> = Arc::new(handler);
        let task = tokio::spawn(accept_loop(listener, acceptor, handler, calls.clone()));
        Ok(WebhookServer {
            addr,
            ca_pem: ca.cert_pem().to_string(),
            calls,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    /// The CA bundle (PEM) for the webhook configuration.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// How many admission reviews arrived on `path` so far.
    pub fn calls(&self, path: &str) -> usize {
        self.calls
            .lock()
            .map(|calls| calls.get(path).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    /// Runs `probe` (e.g. a dry-run create that the webhook matches) until the API server has
    /// called `path` at least once more than before.
    pub async fn wait_until_called<F, Fut>(
        &self,
        path: &str,
        timeout: Duration,
        mut probe: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<()>>,
    {
        let before = self.calls(path);
        wait_until(timeout, &format!("the API server to call {path}"), || {
            let probed = probe();
            async move {
                // Until the configuration is picked up the probe may fail for unrelated
                // reasons (e.g. the object is rejected); only the call count decides.
                let _ = probed.await;
                Ok(self.calls(path) > before)
            }
        })
        .await
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    handler: Arc<AdmissionHandler>,
    calls: Arc<Mutex<HashMap<String, usize>>>,
) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let acceptor = acceptor.clone();
        let handler = handler.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(stream).await else {
                return;
            };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let handler = handler.clone();
                let calls = calls.clone();
                async move { Ok::<_, Infallible>(serve(request, &*handler, &calls).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}

async fn serve(
    request: Request<Incoming>,
    handler: &AdmissionHandler,
    calls: &Mutex<HashMap<String, usize>>,
) -> Response<Full<Bytes>> {
    let path = request.uri().path().to_string();
    if let Ok(mut calls) = calls.lock() {
        *calls.entry(path.clone()).or_insert(0) += 1;
    }
    let response = match request.into_body().collect().await {
        Ok(body) => decide(&path, &body.to_bytes(), handler),
        Err(e) => AdmissionResponse::invalid(format!("reading the request body: {e}")),
    };
    match serde_json::to_vec(&response.into_review()) {
        Ok(body) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response")),
        Err(e) => plain(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string()),
    }
}

fn decide(path: &str, body: &[u8], handler: &AdmissionHandler) -> AdmissionResponse {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(review) => review,
        Err(e) => return AdmissionResponse::invalid(format!("malformed AdmissionReview: {e}")),
    };
    match review.try_into() {
        Ok(request) => handler(path, request),
        Err(e) => AdmissionResponse::invalid(format!("AdmissionReview without request: {e}")),
    }
}

fn plain(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(message.to_string())));
    *response.status_mut() = status;
    response
}

/// An allowing response that applies `operations`, a JSON patch (RFC 6902) given as JSON, e.g.
/// `json!([{"op": "add", "path": "/metadata/labels/x", "value": "y"}])`.
pub fn patch_response(
    request: &AdmissionRequest<DynamicObject>,
    operations: serde_json::Value,
) -> AdmissionResponse {
    let patch: json_patch::Patch = match serde_json::from_value(operations) {
        Ok(patch) => patch,
        Err(e) => return AdmissionResponse::invalid(format!("malformed JSON patch: {e}")),
    };
    match AdmissionResponse::from(request).with_patch(patch) {
        Ok(response) => response,
        Err(e) => AdmissionResponse::invalid(format!("serializing the patch: {e}")),
    }
}

/// An admission webhook configuration pointing at a URL, scoped to one namespace by default so
/// that webhooks of one test never see another test's objects.
#[derive(Clone, Debug)]
pub struct WebhookRegistration {
    /// Name of both the configuration object and its single webhook (needs a dot, e.g.
    /// `inject.tokengate.dev`).
    pub name: String,
    pub url: String,
    pub ca_bundle_pem: String,
    pub rules: Vec<RuleWithOperations>,
    pub namespace_selector: Option<LabelSelector>,
    pub object_selector: Option<LabelSelector>,
    /// `Fail` or `Ignore`.
    pub failure_policy: String,
    pub timeout_seconds: i32,
}

impl WebhookRegistration {
    /// Pod CREATE requests in `namespace`, failing closed.
    pub fn pods_in_namespace(
        name: impl Into<String>,
        url: impl Into<String>,
        ca_bundle_pem: impl Into<String>,
        namespace: &str,
    ) -> Self {
        WebhookRegistration {
            name: name.into(),
            url: url.into(),
            ca_bundle_pem: ca_bundle_pem.into(),
            rules: vec![RuleWithOperations {
                api_groups: Some(vec![String::new()]),
                api_versions: Some(vec!["v1".to_string()]),
                operations: Some(vec!["CREATE".to_string()]),
                resources: Some(vec!["pods".to_string()]),
                scope: Some("Namespaced".to_string()),
            }],
            namespace_selector: Some(namespace_selector(namespace)),
            object_selector: None,
            failure_policy: "Fail".to_string(),
            timeout_seconds: 10,
        }
    }

    fn client_config(&self) -> WebhookClientConfig {
        WebhookClientConfig {
            url: Some(self.url.clone()),
            ca_bundle: Some(ByteString(self.ca_bundle_pem.clone().into_bytes())),
            service: None,
        }
    }

    fn metadata(&self) -> ObjectMeta {
        ObjectMeta {
            name: Some(self.name.clone()),
            labels: Some([(super::TEST_NAMESPACE_LABEL.to_string(), "true".to_string())].into()),
            ..Default::default()
        }
    }

    /// Creates or replaces a MutatingWebhookConfiguration.
    pub async fn register_mutating(&self, client: &kube::Client) -> Result<()> {
        let configuration = MutatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(vec![MutatingWebhook {
                name: self.name.clone(),
                admission_review_versions: vec!["v1".to_string()],
                client_config: self.client_config(),
                failure_policy: Some(self.failure_policy.clone()),
                namespace_selector: self.namespace_selector.clone(),
                object_selector: self.object_selector.clone(),
                rules: Some(self.rules.clone()),
                side_effects: "None".to_string(),
                timeout_seconds: Some(self.timeout_seconds),
                reinvocation_policy: Some("Never".to_string()),
                ..Default::default()
            }]),
        };
        apply(client, &self.name, &configuration).await
    }

    /// Creates or replaces a ValidatingWebhookConfiguration.
    pub async fn register_validating(&self, client: &kube::Client) -> Result<()> {
        let configuration = ValidatingWebhookConfiguration {
            metadata: self.metadata(),
            webhooks: Some(vec![ValidatingWebhook {
                name: self.name.clone(),
                admission_review_versions: vec!["v1".to_string()],
                client_config: self.client_config(),
                failure_policy: Some(self.failure_policy.clone()),
                namespace_selector: self.namespace_selector.clone(),
                object_selector: self.object_selector.clone(),
                rules: Some(self.rules.clone()),
                side_effects: "None".to_string(),
                timeout_seconds: Some(self.timeout_seconds),
                ..Default::default()
            }]),
        };
        apply(client, &self.name, &configuration).await
    }

    /// Deletes the configuration(s) of this name, mutating and validating; absent is fine.
    pub async fn unregister(&self, client: &kube::Client) -> Result<()> {
        delete_if_present::<MutatingWebhookConfiguration>(client, &self.name).await?;
        delete_if_present::<ValidatingWebhookConfiguration>(client, &self.name).await
    }
}

/// Selects exactly the namespace `name` (by its immutable `kubernetes.io/metadata.name` label).
pub fn namespace_selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some([("kubernetes.io/metadata.name".to_string(), name.to_string())].into()),
        match_expressions: None,
    }
}

async fn apply<K>(client: &kube::Client, name: &str, object: &K) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + Serialize
        + DeserializeOwned,
{
    Api::<K>::all(client.clone())
        .patch(
            name,
            &PatchParams::apply("tokengate-testkit").force(),
            &Patch::Apply(object),
        )
        .await
        .with_context(|| format!("applying {} {name}", K::kind(&())))?;
    Ok(())
}

async fn delete_if_present<K>(client: &kube::Client, name: &str) -> Result<()>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::ClusterResourceScope>
        + Clone
        + std::fmt::Debug
        + DeserializeOwned,
{
    match Api::<K>::all(client.clone())
        .delete(name, &DeleteParams::default())
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
        Err(e) => Err(anyhow!(e).context(format!("deleting {} {name}", K::kind(&())))),
    }
}

/// Webhook configurations (such as the chart's, rendered) with each webhook's `clientConfig`
/// pointed at `https://127.0.0.1:{port}` plus its Service path instead of the Service: a webhook
/// served by a local process, with no Services or kube-proxy here.
pub fn configurations_at_local_port(
    mut documents: Vec<serde_json::Value>,
    port: u16,
) -> Result<Vec<serde_json::Value>> {
    for document in &mut documents {
        for hook in document["webhooks"].as_array_mut().into_iter().flatten() {
            let path = hook["clientConfig"]["service"]["path"]
                .as_str()
                .context("a webhook without a service path")?
                .to_owned();
            hook["clientConfig"] =
                serde_json::json!({"url": format!("https://127.0.0.1:{port}{path}")});
        }
    }
    Ok(documents)
}

/// A server-side dry-run create: runs admission (webhooks included) without storing anything.
pub async fn dry_run_create<K>(api: &Api<K>, object: &K) -> Result<K>
where
    K: Resource + Clone + std::fmt::Debug + Serialize + DeserializeOwned,
{
    let params = PostParams {
        dry_run: true,
        field_manager: Some("tokengate-testkit".to_string()),
    };
    api.create(&params, object).await.context("dry-run create")
}
