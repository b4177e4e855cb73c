//! validate-azure-ad-token semantics end to end: the real sidecar, the test identity provider's
//! Microsoft Entra personality as the authority, and the echo upstream, all over real HTTP.

use std::time::Duration;

use crate::support::{Bench, Reply, manifest, metric_value};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use tokengate_testkit::echo::EchoServer;
use tokengate_testkit::idp::{EntraApi, EntraTokenVersion, IdentityProvider, KeyFamily};
use tokio::io::{AsyncBufReadExt as _, BufReader};

use EntraTokenVersion::{V1, V2};

const HOME: &str = "4a5f1b7e-2c3d-4e5f-8a9b-0c1d2e3f4a5b";
const GUEST: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
const STRANGER: &str = "c0ffee00-1234-4abc-8def-00000000beef";
/// The protected API's application (client) id; its App ID URI is `api://orders`.
const ORDERS_API: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const CLIENT_APP: &str = "11111111-2222-4333-8444-555555555555";
const OTHER_APP: &str = "99999999-8888-4777-8666-555555555555";

/// The sidecar between a client, the Entra personality and the echo upstream.
struct EntraBench {
    bench: Bench,
}

impl std::ops::Deref for EntraBench {
    type Target = Bench;

    fn deref(&self) -> &Bench {
        &self.bench
    }
}

impl EntraBench {
    /// Starts an Entra authority serving the tenants HOME, GUEST and STRANGER, and the sidecar
    /// with `validateAzureAdToken` built by `validator` (indented four spaces) plus `rest`
    /// (further spec fields, indented two).
    async fn start(validator: impl FnOnce(&IdentityProvider) -> String, rest: &str) -> Self {
        let idp = IdentityProvider::start_entra(HOME)
            .await
            .expect("identity provider starts");
        idp.add_tenant(GUEST);
        idp.add_tenant(STRANGER);
        let spec =
            |idp: &IdentityProvider| format!("  validateAzureAdToken:\n{}{rest}", validator(idp));
        Self {
            bench: Bench::start_against(idp, spec, |_| {}).await,
        }
    }

    async fn call(&self, path: &str, token: &str) -> Reply {
        self.bench.get_with_token(path, token).await
    }

    fn denials(&self, reason: &str) -> f64 {
        metric_value(
            &self.sidecar.metrics.render(),
            "tokengate_requests_total",
            &[
                ("policy", "bench"),
                ("decision", "deny"),
                ("reason", reason),
            ],
        )
    }

    /// A token of `version` from `tenant` by `client` for `audience`, Entra-shaped.
    fn token(&self, version: EntraTokenVersion, tenant: &str, client: &str, aud: &str) -> String {
        self.idp.entra_token(version, tenant, client, aud)
    }

    /// Like [`token`](Self::token) with the claims adjusted first.
    fn token_with(
        &self,
        version: EntraTokenVersion,
        tenant: &str,
        client: &str,
        aud: &str,
        adjust: impl FnOnce(&mut Value),
    ) -> String {
        let mut claims = self.idp.entra_claims(version, tenant, client, aud);
        adjust(&mut claims);
        self.idp.sign(Algorithm::RS256, &claims)
    }
}

/// The usual validator: tenant HOME on the provider's authority, the orders API by App ID URI
/// and by application id, one client, then `extra` lines.
fn orders(idp: &IdentityProvider, extra: &str) -> String {
    format!(
        "    tenantId: {HOME}\n    authenticationEndpoint: {}\n    audiences: [api://orders]\n    backendApplicationIds: [{ORDERS_API}]\n    clientApplicationIds: [{CLIENT_APP}]\n{extra}",
        idp.base_url()
    )
}

fn assert_refused(reply: &Reply, status: StatusCode, reason: &str, case: &str) {
    assert_eq!(reply.status, status, "{case}: {:?}", reply.body);
    assert_eq!(reply.reason(), reason, "{case}");
}

fn challenge(reply: &Reply) -> String {
    reply.www_authenticate().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn v1_and_v2_tokens_are_accepted_and_forwarded() {
    let bench = EntraBench::start(
        |idp| orders(idp, ""),
        "  forwarding:\n    claimsToHeaders: [{claim: tid, header: X-Caller-Tenant}, {claim: oid, header: X-Caller-Object-Id}]\n",
    )
    .await;
    // Keys came from the tenant's own discovery document, at Entra's paths.
    let ready = bench
        .send(
            Request::get(format!("http://{}/ready", bench.sidecar.admin_addr))
                .body(Full::default())
                .expect("request"),
        )
        .await;
    assert_eq!(ready.status, StatusCode::OK);
    let ready_body = String::from_utf8_lossy(&ready.body).into_owned();
    assert!(
        ready_body.contains(&format!("/{HOME}/v2.0/.well-known/openid-configuration")),
        "{ready_body}"
    );

    let cases = [
        ("v1.0, App ID URI", V1, "api://orders".to_owned()),
        (
            "v1.0, default App ID URI",
            V1,
            format!("api://{ORDERS_API}"),
        ),
        ("v2.0, application id", V2, ORDERS_API.to_owned()),
    ];
    for (case, version, aud) in cases {
        let token = bench.token(version, HOME, CLIENT_APP, &aud);
        let reply = bench.call("/orders/42", &token).await;
        assert_eq!(reply.status, StatusCode::OK, "{case}: {:?}", reply.body);
        let echoed = reply.echoed();
        assert_eq!(echoed.path, "/orders/42");
        assert_eq!(
            echoed.header("authorization"),
            Some(format!("Bearer {token}").as_str()),
            "{case}: token forwarded"
        );
        assert_eq!(echoed.header("x-caller-tenant"), Some(HOME), "{case}");
        assert!(echoed.header("x-caller-object-id").is_some(), "{case}");
    }

    // Key rotation at the authority: the new kid is fetched on first sight, no restart.
    bench.idp.rotate(KeyFamily::Rsa);
    let token = bench.token(V2, HOME, CLIENT_APP, ORDERS_API);
    assert_eq!(bench.call("/", &token).await.status, StatusCode::OK);
}

#[tokio::test]
async fn each_field_is_enforced() {
    let bench = EntraBench::start(
        |idp| {
            orders(
                idp,
                "    requiredClaims:\n      - {name: roles, match: any, values: [Orders.Read, Orders.Write]}\n      - {name: scp, separator: \" \", values: [orders.read]}\n",
            )
        },
        "",
    )
    .await;
    let granted = |claims: &mut Value| {
        claims["roles"] = json!(["Orders.Read"]);
        claims["scp"] = "profile orders.read".into();
    };
    let good = bench.token_with(V2, HOME, CLIENT_APP, ORDERS_API, granted);
    assert_eq!(bench.call("/", &good).await.status, StatusCode::OK);

    let cases: Vec<(&str, String, &str)> = vec![
        // audiences / backendApplicationIds
        (
            "aud names another API",
            bench.token_with(V2, HOME, CLIENT_APP, OTHER_APP, granted),
            "TokenAudienceNotAllowed",
        ),
        (
            "bare form of a named App ID URI is no application id",
            bench.token_with(V1, HOME, CLIENT_APP, "orders", granted),
            "TokenAudienceNotAllowed",
        ),
        // clientApplicationIds: appid for v1.0, azp for v2.0
        (
            "v1.0 appid not allowed",
            bench.token_with(V1, HOME, OTHER_APP, "api://orders", granted),
            "TokenClientApplicationNotAllowed",
        ),
        (
            "v2.0 azp not allowed",
            bench.token_with(V2, HOME, OTHER_APP, ORDERS_API, granted),
            "TokenClientApplicationNotAllowed",
        ),
        (
            "v2.0 judged by azp, not appid",
            bench.token_with(V2, HOME, OTHER_APP, ORDERS_API, |c| {
                granted(c);
                c["appid"] = CLIENT_APP.into();
            }),
            "TokenClientApplicationNotAllowed",
        ),
        (
            "v1.0 judged by appid, not azp",
            bench.token_with(V1, HOME, OTHER_APP, "api://orders", |c| {
                granted(c);
                c["azp"] = CLIENT_APP.into();
            }),
            "TokenClientApplicationNotAllowed",
        ),
        // requiredClaims
        (
            "no roles",
            bench.token_with(V2, HOME, CLIENT_APP, ORDERS_API, |c| {
                c["scp"] = "orders.read".into();
            }),
            "TokenClaimNotFound",
        ),
        (
            "roles without an accepted value",
            bench.token_with(V2, HOME, CLIENT_APP, ORDERS_API, |c| {
                c["roles"] = json!(["Orders.Admin"]);
                c["scp"] = "orders.read".into();
            }),
            "TokenClaimValueNotAllowed",
        ),
        (
            "scp without orders.read",
            bench.token_with(V2, HOME, CLIENT_APP, ORDERS_API, |c| {
                c["roles"] = json!(["Orders.Write"]);
                c["scp"] = "orders.readx profile".into();
            }),
            "TokenClaimValueNotAllowed",
        ),
        // tenantId and authenticationEndpoint decide the issuer
        (
            "issuer of the global cloud, not this authority",
            bench.token_with(V2, HOME, CLIENT_APP, ORDERS_API, |c| {
                granted(c);
                c["iss"] = format!("https://login.microsoftonline.com/{HOME}/v2.0").into();
            }),
            "TokenIssuerNotAllowed",
        ),
        (
            "ver contradicts the issuer",
            bench.token_with(V2, HOME, CLIENT_APP, ORDERS_API, |c| {
                granted(c);
                c["ver"] = "1.0".into();
            }),
            "TokenIssuerNotAllowed",
        ),
        (
            "tid contradicts the issuer",
            bench.token_with(V2, HOME, CLIENT_APP, ORDERS_API, |c| {
                granted(c);
                c["tid"] = GUEST.into();
            }),
            "TokenIssuerNotAllowed",
        ),
    ];
    for (case, token, reason) in cases {
        let upstream_before = bench.echo.requests();
        let reply = bench.call("/", &token).await;
        assert_refused(&reply, StatusCode::UNAUTHORIZED, reason, case);
        assert!(
            challenge(&reply).starts_with("Bearer error=\"invalid_token\""),
            "{case}: {}",
            challenge(&reply)
        );
        assert_eq!(
            bench.echo.requests(),
            upstream_before,
            "{case}: never reaches the app"
        );
    }
}

#[tokio::test]
async fn audiences_accept_both_forms_of_an_application_id() {
    // Only the default App ID URI is listed: a v2.0 token carries the bare id and passes.
    let bench = EntraBench::start(
        |idp| {
            format!(
                "    tenantId: {HOME}\n    authenticationEndpoint: {}\n    audiences: [\"api://{ORDERS_API}\"]\n    clientApplicationIds: [{CLIENT_APP}]\n",
                idp.base_url()
            )
        },
        "",
    )
    .await;
    for (version, aud) in [
        (V2, ORDERS_API.to_owned()),
        (V1, format!("api://{ORDERS_API}")),
    ] {
        let token = bench.token(version, HOME, CLIENT_APP, &aud);
        assert_eq!(
            bench.call("/", &token).await.status,
            StatusCode::OK,
            "{aud}"
        );
    }
    let token = bench.token(V1, HOME, CLIENT_APP, "api://orders");
    assert_refused(
        &bench.call("/", &token).await,
        StatusCode::UNAUTHORIZED,
        "TokenAudienceNotAllowed",
        "unlisted App ID URI",
    );
}

/// The mistakes people make with Entra tokens, each with its exact reason, status and client
/// description, counted under that reason.
#[tokio::test]
async fn classic_mistakes_get_exact_reasons() {
    let v2_only = EntraBench::start(
        |idp| orders(idp, "    tokenVersions: [\"2.0\"]\n"),
        "  failedValidation: {httpCode: 403, message: Access denied}\n",
    )
    .await;
    let cases: Vec<(&str, String, &str, &str)> = vec![
        (
            "token for another audience (Microsoft Graph)",
            v2_only.token(V2, HOME, CLIENT_APP, "00000003-0000-0000-c000-000000000000"),
            "TokenAudienceNotAllowed",
            "The token audience is not allowed",
        ),
        (
            "token obtained by another client",
            v2_only.token(V2, HOME, OTHER_APP, ORDERS_API),
            "TokenClientApplicationNotAllowed",
            "The client application is not allowed: the client application in azp is not allowed",
        ),
        (
            "token from another tenant",
            v2_only.token(V2, GUEST, CLIENT_APP, ORDERS_API),
            "TokenIssuerNotAllowed",
            "The token issuer is not allowed: the token was issued by another tenant",
        ),
        (
            "v1.0 token where only v2.0 is configured",
            v2_only.token(V1, HOME, CLIENT_APP, "api://orders"),
            "TokenIssuerNotAllowed",
            "The token issuer is not allowed: a v1.0 token was presented where v2.0 tokens are required",
        ),
    ];
    for (case, token, reason, description) in cases {
        let before = v2_only.denials(reason);
        let reply = v2_only.call("/", &token).await;
        // failedValidation applies to Entra refusals as to validateJwt ones.
        assert_refused(&reply, StatusCode::FORBIDDEN, reason, case);
        assert_eq!(reply.json()["message"], "Access denied", "{case}");
        assert_eq!(
            challenge(&reply),
            format!("Bearer error=\"invalid_token\", error_description=\"{description}\""),
            "{case}"
        );
        assert_eq!(
            v2_only.denials(reason) - before,
            1.0,
            "{case}: counted once"
        );
    }

    let v1_only = EntraBench::start(|idp| orders(idp, "    tokenVersions: [\"1.0\"]\n"), "").await;
    let reply = v1_only
        .call("/", &v1_only.token(V2, HOME, CLIENT_APP, ORDERS_API))
        .await;
    assert_refused(
        &reply,
        StatusCode::UNAUTHORIZED,
        "TokenIssuerNotAllowed",
        "v2.0 token where only v1.0 is configured",
    );
    assert_eq!(
        challenge(&reply),
        "Bearer error=\"invalid_token\", error_description=\"The token issuer is not allowed: a v2.0 token was presented where v1.0 tokens are required\""
    );
    let v1 = v1_only.token(V1, HOME, CLIENT_APP, "api://orders");
    assert_eq!(v1_only.call("/", &v1).await.status, StatusCode::OK);
}

#[tokio::test]
async fn multi_tenant_accepts_any_tenant_or_the_allowed_ones() {
    let any = EntraBench::start(
        |idp| {
            format!(
                "    tenantId: organizations\n    authenticationEndpoint: {}\n    backendApplicationIds: [{ORDERS_API}]\n    clientApplicationIds: [{CLIENT_APP}]\n",
                idp.base_url()
            )
        },
        "",
    )
    .await;
    for tenant in [HOME, GUEST, STRANGER] {
        for (version, aud) in [(V2, ORDERS_API), (V1, ORDERS_API)] {
            let token = any.token(version, tenant, CLIENT_APP, aud);
            assert_eq!(
                any.call("/", &token).await.status,
                StatusCode::OK,
                "{tenant} {version:?}"
            );
        }
    }
    // tid must still be the tenant the issuer names.
    let forged = any.token_with(V2, GUEST, CLIENT_APP, ORDERS_API, |c| {
        c["tid"] = HOME.into()
    });
    assert_refused(
        &any.call("/", &forged).await,
        StatusCode::UNAUTHORIZED,
        "TokenIssuerNotAllowed",
        "tid of another tenant",
    );

    let listed = EntraBench::start(
        |idp| {
            format!(
                "    tenantId: common\n    allowedTenants: [{HOME}, {GUEST}]\n    authenticationEndpoint: {}\n    backendApplicationIds: [{ORDERS_API}]\n    clientApplicationIds: [{CLIENT_APP}]\n",
                idp.base_url()
            )
        },
        "",
    )
    .await;
    for tenant in [HOME, GUEST] {
        let token = listed.token(V2, tenant, CLIENT_APP, ORDERS_API);
        assert_eq!(
            listed.call("/", &token).await.status,
            StatusCode::OK,
            "{tenant}"
        );
    }
    let reply = listed
        .call("/", &listed.token(V2, STRANGER, CLIENT_APP, ORDERS_API))
        .await;
    assert_refused(
        &reply,
        StatusCode::UNAUTHORIZED,
        "TokenIssuerNotAllowed",
        "tenant not in allowedTenants",
    );
    assert!(
        challenge(&reply).ends_with("the token was issued by a tenant that is not allowed\""),
        "{}",
        challenge(&reply)
    );
}

/// APIM's `tenant-id` may be a verified domain: the tenant is the id the domain's discovery
/// document names.
#[tokio::test]
async fn a_domain_names_the_tenant() {
    let bench = EntraBench::start(
        |idp| {
            idp.add_tenant_domain("contoso.example", HOME);
            orders(idp, "").replacen(
                &format!("tenantId: {HOME}"),
                "tenantId: https://contoso.example",
                1,
            )
        },
        "",
    )
    .await;
    for version in [V1, V2] {
        let aud = if version == V1 {
            "api://orders"
        } else {
            ORDERS_API
        };
        let token = bench.token(version, HOME, CLIENT_APP, aud);
        assert_eq!(
            bench.call("/", &token).await.status,
            StatusCode::OK,
            "{version:?}"
        );
    }
    let reply = bench
        .call("/", &bench.token(V2, GUEST, CLIENT_APP, ORDERS_API))
        .await;
    assert_refused(
        &reply,
        StatusCode::UNAUTHORIZED,
        "TokenIssuerNotAllowed",
        "another tenant than the domain's",
    );
}

/// A client-credentials token from the authority's token endpoint, used end to end, in both
/// flows: (a) token forwarded with claims in headers; (b) token stripped, private backend.
#[tokio::test]
async fn client_credentials_token_end_to_end() {
    let bench = EntraBench::start(
        |idp| {
            format!(
                "    tenantId: {HOME}\n    authenticationEndpoint: {}\n    audiences: [api://legacy]\n    backendApplicationIds: [{ORDERS_API}]\n    clientApplicationIds: [{CLIENT_APP}]\n    tokenVersions: [\"2.0\"]\n    requiredClaims: [{{name: roles, match: any, values: [Orders.Read]}}]\n",
                idp.base_url()
            )
        },
        "  forwarding:\n    forwardToken: false\n    claimsToHeaders: [{claim: azp, header: X-Client-App}, {claim: roles, header: X-Roles}]\n  privateAccess: {networkPolicy: true}\n",
    )
    .await;
    let idp = &bench.idp;
    idp.register_api(EntraApi::new(ORDERS_API, V2).with_identifier_uri("api://orders"));
    idp.register_api(
        EntraApi::new("3f2504e0-4f89-41d3-9a0c-0305e82c3301", V1)
            .with_identifier_uri("api://legacy"),
    );
    idp.register_client_with_claims(CLIENT_APP, "s3cret", json!({ "roles": ["Orders.Read"] }));

    let fetch = |scope: &'static str| {
        let url = idp.entra_token_url(HOME);
        let client = bench.client.clone();
        async move {
            let form = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("grant_type", "client_credentials")
                .append_pair("client_id", CLIENT_APP)
                .append_pair("client_secret", "s3cret")
                .append_pair("scope", scope)
                .finish();
            let request = Request::post(url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Full::new(Bytes::from(form)))
                .expect("request");
            let response = client
                .request(request)
                .await
                .expect("token endpoint answers");
            assert_eq!(response.status(), StatusCode::OK);
            let body = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            let body: Value = serde_json::from_slice(&body).expect("JSON");
            body["access_token"]
                .as_str()
                .expect("access_token")
                .to_owned()
        }
    };

    let token = fetch("api://orders/.default").await;
    let reply = bench.call("/orders", &token).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let echoed = reply.echoed();
    assert_eq!(echoed.header("authorization"), None, "token stripped");
    assert_eq!(echoed.header("x-client-app"), Some(CLIENT_APP));
    assert_eq!(echoed.header("x-roles"), Some("Orders.Read"));

    // The legacy API's registration issues v1.0 tokens: refused by this v2.0-only policy.
    let legacy = fetch("api://legacy/.default").await;
    let reply = bench.call("/orders", &legacy).await;
    assert_refused(
        &reply,
        StatusCode::UNAUTHORIZED,
        "TokenIssuerNotAllowed",
        "v1.0 token from the token endpoint",
    );
    assert!(challenge(&reply).contains("a v1.0 token was presented"));
}

#[tokio::test]
async fn the_entra_example_runs_against_the_authority() {
    let example = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/entra-orders-api.yaml"
    ))
    .expect("example");
    let example_tenant = "8d2f6c1e-4b7a-4c3d-9e5f-1a2b3c4d5e6f";
    assert!(
        example.contains(example_tenant),
        "example changed its tenant"
    );
    assert!(example.contains("authenticationEndpoint: https://login.microsoftonline.com"));
    let idp = IdentityProvider::start_entra(example_tenant)
        .await
        .expect("provider");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("entra-orders-api.yaml");
    std::fs::write(
        &path,
        example.replace(
            "authenticationEndpoint: https://login.microsoftonline.com",
            &format!("authenticationEndpoint: {}", idp.base_url()),
        ),
    )
    .expect("write");
    let policies = tokengate_sidecar::load::load_policy_files(&[path]).expect("example compiles");
    let policy = policies.into_iter().next().expect("one policy");
    let entra = policy.verification.entra.clone().expect("entra mode");
    let client = entra.client_application_ids[0].clone();
    let api = policy
        .verification
        .audiences
        .iter()
        .find(|a| tokengate_policy::entra::is_guid(a))
        .cloned()
        .expect("the example names the API by id");
    let mut claims = idp.entra_claims(V2, example_tenant, &client, &api);
    claims["roles"] = json!(["Orders.Read"]);
    let token = idp.sign(Algorithm::RS256, &claims);
    let keys = tokengate_keys::KeyCache::new(
        tokengate_keys::KeySettings::default(),
        std::sync::Arc::new(tokengate_keys::KeyMetrics::unregistered().expect("metrics")),
        None,
    )
    .expect("key cache");
    let report = tokengate_sidecar::check::check(policy, keys, &token, "GET", "/orders/7").await;
    assert!(report.allowed, "{}", report.text);
}

const BIN: &str = env!("CARGO_BIN_EXE_tokengate-sidecar");

type LogLines = tokio::io::Lines<BufReader<tokio::process::ChildStderr>>;

/// The next JSON log event with this message.
async fn next_event(lines: &mut LogLines, message: &str) -> Value {
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {message:?} log line within 20s"))
            .expect("read stderr")
            .unwrap_or_else(|| panic!("sidecar exited before logging {message:?}"));
        let event: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
        if event["fields"]["message"] == message {
            return event;
        }
    }
}

/// `check` and the log explain an Entra refusal: which version came, which was expected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_the_log_explain_an_entra_refusal() {
    let idp = IdentityProvider::start_entra(HOME).await.expect("provider");
    let echo = EchoServer::start().await.expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("policy.yaml");
    let spec = format!(
        "  validateAzureAdToken:\n{}",
        orders(&idp, "    tokenVersions: [\"2.0\"]\n")
    );
    std::fs::write(&path, manifest("entra", &spec)).expect("write");
    let policy = path.to_str().expect("utf-8 path").to_owned();
    let v1 = idp.entra_token(V1, HOME, CLIENT_APP, "api://orders");
    let base = idp.base_url().to_owned();

    let args = vec![
        "check".to_owned(),
        "--policy".to_owned(),
        policy.clone(),
        "--token".to_owned(),
        v1.clone(),
    ];
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new(BIN).args(&args).output())
            .await
            .expect("join")
            .expect("binary runs");
    let out = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{out}");
    for expected in [
        format!("entra: authority {base}, tenant {HOME}"),
        format!("accepted issuers: v2.0 issuer {base}/{HOME}/v2.0"),
        format!("client applications (appid in v1.0, azp in v2.0): {CLIENT_APP}"),
        format!(
            "[FAIL] decision: TokenIssuerNotAllowed: v1.0 token (iss {base}/{HOME}/) but this policy accepts only v2.0 tokens (iss {base}/{HOME}/v2.0)"
        ),
        "accessTokenAcceptedVersion".to_owned(),
        "response: HTTP 401".to_owned(),
        "WWW-Authenticate: Bearer error=\"invalid_token\", error_description=\"The token issuer is not allowed: a v1.0 token was presented where v2.0 tokens are required\"".to_owned(),
    ] {
        assert!(out.contains(&expected), "missing {expected:?} in:\n{out}");
    }

    // Another client: check names the claim and its value.
    let stranger = idp.entra_token(V2, HOME, OTHER_APP, ORDERS_API);
    let args = vec![
        "check".to_owned(),
        "--policy".to_owned(),
        policy.clone(),
        "--token".to_owned(),
        stranger,
    ];
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new(BIN).args(&args).output())
            .await
            .expect("join")
            .expect("binary runs");
    let out = String::from_utf8_lossy(&output.stdout);
    assert!(
        out.contains(&format!(
            "decision: DENY TokenClientApplicationNotAllowed (azp {OTHER_APP} is not in clientApplicationIds)"
        )),
        "{out}"
    );

    // The running sidecar logs the same explanation (JSON logs on stderr).
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--policy",
            &policy,
            "--upstream",
            &echo.url(),
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("sidecar starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let listening = next_event(&mut lines, "listening").await;
    let proxy_addr = listening["fields"]["proxy_addr"]
        .as_str()
        .expect("proxy_addr logged")
        .to_owned();
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut status = StatusCode::SERVICE_UNAVAILABLE;
    // Keys arrive in the background; until then the answer is 503.
    for _ in 0..200 {
        let request = Request::get(format!("http://{proxy_addr}/"))
            .header("authorization", format!("Bearer {v1}"))
            .body(Full::default())
            .expect("request");
        status = client.request(request).await.expect("answer").status();
        if status != StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let refused = loop {
        let event = next_event(&mut lines, "request refused").await;
        if event["fields"]["reason"] == "TokenIssuerNotAllowed" {
            break event;
        }
    };
    let detail = refused["fields"]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with("v1.0 token") && detail.contains("accepts only v2.0 tokens"),
        "{refused}"
    );
    assert!(
        !refused.to_string().contains(&v1),
        "the token itself is never logged"
    );
    child.kill().await.expect("sidecar stops");
}

/// An authority with a private CA (https on a host the system roots know nothing of): trusted
/// only through `--extra-ca-file`, as the webhook's trust bundle passes it to injected sidecars.
#[tokio::test]
async fn an_https_authority_is_trusted_through_the_extra_ca_file_only() {
    use tokengate_testkit::cluster::pki::CertificateAuthority;
    use tokengate_testkit::idp::ServeOptions;

    let files = tempfile::tempdir().expect("temp dir");
    let ca = CertificateAuthority::new("private authority CA").expect("CA");
    let served = ca
        .issue_server("authority", &["127.0.0.1"])
        .expect("certificate");
    let ca_file = files.path().join("ca.crt");
    std::fs::write(&ca_file, ca.cert_pem()).expect("CA written");
    let start = || async {
        let tls = served.server_config().expect("TLS config");
        IdentityProvider::start_with(ServeOptions {
            entra_home_tenant: Some(HOME.to_owned()),
            tls: Some(std::sync::Arc::new(tls)),
            ..ServeOptions::at(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        })
        .await
        .expect("https authority starts")
    };

    let idp = start().await;
    assert!(idp.base_url().starts_with("https://"), "{}", idp.base_url());
    let trusting = Bench::start_against(
        idp,
        |idp| format!("  validateAzureAdToken:\n{}", orders(idp, "")),
        |config| config.extra_ca = Some(ca_file.clone()),
    )
    .await;
    let token = trusting.idp.entra_token(V2, HOME, CLIENT_APP, ORDERS_API);
    let reply = trusting.get_with_token("/orders", &token).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);

    // The same authority without the CA: the keys cannot be fetched, the sidecar never gets
    // ready and lets nothing through.
    let idp = start().await;
    let token = idp.entra_token(V2, HOME, CLIENT_APP, ORDERS_API);
    let echo = EchoServer::start().await.expect("echo server starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy.yaml");
    let spec = format!("  validateAzureAdToken:\n{}", orders(&idp, ""));
    std::fs::write(&policy, manifest("bench", &spec)).expect("policy written");
    let config = crate::support::config(vec![policy], &echo);
    let untrusting = Bench::with_config(idp, echo, dir, config).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!untrusting.sidecar.ready());
    let reply = untrusting.get_with_token("/orders", &token).await;
    assert_ne!(reply.status, StatusCode::OK, "{:?}", reply.body);
}
