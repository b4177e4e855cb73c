//! validate-jwt semantics end to end: real sidecar, real identity provider, real upstream.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::support::Bench;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider, KeyFamily, SignWith};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Discovery for the asymmetric keys, the HMAC secret inline, the test audience.
fn discovery_and_hmac(idp: &IdentityProvider) -> String {
    format!(
        "  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    issuerSigningKeys: [{{id: \"{}\", value: \"{}\"}}]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n",
        idp.discovery_url(),
        idp.current_kid(KeyFamily::Hmac),
        idp.hmac_secret_base64(),
    )
}

fn discovery(idp: &IdentityProvider, extra: &str) -> String {
    format!(
        "  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n{extra}",
        idp.discovery_url()
    )
}

const ALL_ALGORITHMS: [Algorithm; 12] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
];

#[tokio::test]
async fn every_algorithm_is_verified_and_forwarded() {
    let bench = Bench::start(discovery_and_hmac).await;
    for alg in ALL_ALGORITHMS {
        let token = bench.idp.token(alg);
        let reply = bench.get_with_token("/orders?x=1", &token).await;
        assert_eq!(reply.status, StatusCode::OK, "{alg:?}: {:?}", reply.body);
        let echoed = reply.echoed();
        assert_eq!(echoed.path, "/orders");
        assert_eq!(echoed.query.as_deref(), Some("x=1"));
        assert_eq!(
            echoed.header("authorization"),
            Some(format!("Bearer {token}").as_str()),
            "token forwarded by default"
        );
        // A token signed by another provider's key of the same algorithm is refused.
        let stranger = IdentityProvider::start().await.expect("second provider");
        let mut claims = bench.idp.claims();
        claims["iss"] = bench.idp.issuer().into();
        let foreign =
            stranger.sign_with_header(&bench.idp.header(alg), &claims, SignWith::Current(alg));
        let reply = bench.get_with_token("/", &foreign).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{alg:?} foreign key"
        );
        assert_eq!(reply.reason(), "TokenSignatureInvalid", "{alg:?}");
    }
}

#[tokio::test]
async fn every_key_form_verifies() {
    let idp = IdentityProvider::start().await.expect("provider");
    let rsa = idp.current_key(KeyFamily::Rsa);
    let p256 = idp.current_key(KeyFamily::EcP256);
    let ed = idp.current_key(KeyFamily::Ed25519);
    let forms: Vec<(&str, String, Algorithm)> = vec![
        ("jwk", format!("{{jwk: {}}}", rsa.jwk), Algorithm::RS256),
        (
            "pem",
            format!(
                "{{id: \"{}\", pem: {:?}}}",
                p256.kid,
                p256.pem.clone().expect("pem")
            ),
            Algorithm::ES256,
        ),
        (
            "ed25519 pem",
            format!("{{pem: {:?}}}", ed.pem.clone().expect("pem")),
            Algorithm::EdDSA,
        ),
        (
            "n+e",
            format!(
                "{{id: \"{}\", n: \"{}\", e: \"{}\"}}",
                rsa.kid,
                rsa.rsa_n.clone().expect("n"),
                rsa.rsa_e.clone().expect("e")
            ),
            Algorithm::PS256,
        ),
        (
            "modulus+exponent",
            format!(
                "{{id: \"{}\", modulus: {}, exponent: {}}}",
                rsa.kid,
                rsa.rsa_n.clone().expect("n"),
                rsa.rsa_e.clone().expect("e")
            ),
            Algorithm::RS256,
        ),
        (
            "value",
            format!("{{value: \"{}\"}}", idp.hmac_secret_base64()),
            Algorithm::HS256,
        ),
        ("file", "{file: hmac.key}".to_owned(), Algorithm::HS512),
    ];
    for (form, key, alg) in forms {
        let echo = tokengate_testkit::echo::EchoServer::start()
            .await
            .expect("echo");
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("hmac.key"), idp.hmac_secret_base64()).expect("key file");
        let policy = dir.path().join("p.yaml");
        std::fs::write(
            &policy,
            crate::support::manifest(
                "forms",
                &format!("  validateJwt:\n    issuerSigningKeys: [{key}]\n"),
            ),
        )
        .expect("policy");
        let sidecar = tokengate_sidecar::start(crate::support::config(vec![policy], &echo))
            .await
            .unwrap_or_else(|err| panic!("{form}: sidecar starts: {err:#}"));
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<Bytes>>();
        for (token, expected) in [
            (idp.token(alg), StatusCode::OK),
            (
                IdentityProvider::start().await.expect("other").token(alg),
                StatusCode::UNAUTHORIZED,
            ),
        ] {
            let request = Request::get(format!("http://{}/", sidecar.proxy_addr))
                .header("authorization", format!("Bearer {token}"))
                .body(Full::default())
                .expect("request");
            let response = client.request(request).await.expect("response");
            assert_eq!(response.status(), expected, "key form {form}");
        }
        sidecar.shutdown().await;
    }
}

#[tokio::test]
async fn jwks_uri_source_and_unknown_kid() {
    let bench = Bench::start(|idp| {
        format!(
            "  validateJwt:\n    jwksUris: [\"{}\"]\n    issuers: [\"{}\"]\n",
            idp.jwks_url(),
            idp.issuer()
        )
    })
    .await;
    let ok = bench
        .get_with_token("/", &bench.idp.token(Algorithm::ES384))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    let unpublished = bench.idp.add_unpublished_key(KeyFamily::Rsa);
    let token = bench
        .idp
        .sign_with_kid(&unpublished, Algorithm::RS256, &bench.idp.claims());
    let reply = bench.get_with_token("/", &token).await;
    assert_eq!(reply.reason(), "TokenSignatureKeyNotFound");
}

/// Each reason code, with the status and challenge it produces and the metric it moves.
#[tokio::test]
async fn each_reason_code_is_reported() {
    let bench = Bench::start(|idp| {
        discovery(
            idp,
            "    requiredClaims: [{name: tier, values: [gold]}]\n    algorithms: [RS256, ES256]\n",
        )
    })
    .await;
    let idp = &bench.idp;
    let base = {
        let mut c = idp.claims();
        c["tier"] = "gold".into();
        c
    };
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = base.clone();
        f(&mut c);
        idp.sign(Algorithm::RS256, &c)
    };
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing token", None, "TokenNotPresent"),
        (
            "scheme",
            Some("Basic dXNlcjpwdw==".into()),
            "TokenSchemeInvalid",
        ),
        ("not a jwt", Some("Bearer abc.def".into()), "JwtInvalid"),
        (
            "signature",
            Some(format!("Bearer {}", {
                let t = idp.sign(Algorithm::RS256, &base);
                let (head, _) = t.rsplit_once('.').expect("three parts");
                let other = idp.sign(Algorithm::RS256, &idp.claims());
                format!("{head}.{}", other.rsplit_once('.').expect("parts").1)
            })),
            "TokenSignatureInvalid",
        ),
        (
            "unknown kid",
            Some(format!(
                "Bearer {}",
                idp.sign_with_header(
                    &json!({"alg": "RS256", "kid": "nobody"}),
                    &base,
                    SignWith::Current(Algorithm::RS256)
                )
            )),
            "TokenSignatureKeyNotFound",
        ),
        (
            "algorithm",
            Some(format!("Bearer {}", idp.sign(Algorithm::PS256, &base))),
            "TokenAlgorithmNotAllowed",
        ),
        (
            "expired",
            Some(format!(
                "Bearer {}",
                with(&|c| c["exp"] = (now() - 60).into())
            )),
            "TokenExpired",
        ),
        (
            "not yet valid",
            Some(format!(
                "Bearer {}",
                with(&|c| c["nbf"] = (now() + 600).into())
            )),
            "TokenNotYetValid",
        ),
        (
            "issuer",
            Some(format!(
                "Bearer {}",
                with(&|c| c["iss"] = "https://evil.example".into())
            )),
            "TokenIssuerNotAllowed",
        ),
        (
            "audience",
            Some(format!(
                "Bearer {}",
                with(&|c| c["aud"] = "api://other".into())
            )),
            "TokenAudienceNotAllowed",
        ),
        (
            "claim missing",
            Some(format!(
                "Bearer {}",
                idp.sign(Algorithm::RS256, &idp.claims())
            )),
            "TokenClaimNotFound",
        ),
        (
            "claim value",
            Some(format!("Bearer {}", with(&|c| c["tier"] = "silver".into()))),
            "TokenClaimValueNotAllowed",
        ),
    ];
    for (name, authorization, reason) in cases {
        let before = bench.metric(
            "tokengate_requests_total",
            &[
                ("policy", "bench"),
                ("decision", "deny"),
                ("reason", reason),
            ],
        );
        let upstream_before = bench.echo.requests();
        let mut request = Request::get(bench.url("/"));
        if let Some(value) = &authorization {
            request = request.header("authorization", value);
        }
        let reply = bench
            .send(request.body(Full::default()).expect("request"))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(reply.reason(), reason, "{name}");
        assert_eq!(reply.json()["message"], "Unauthorized", "{name}");
        let challenge = reply.www_authenticate().expect("challenge");
        if reason == "TokenNotPresent" {
            assert_eq!(challenge, "Bearer", "{name}: no error code without a token");
        } else {
            assert!(
                challenge.starts_with("Bearer error=\"invalid_token\", error_description=\""),
                "{name}: {challenge}"
            );
        }
        assert_eq!(
            bench.echo.requests(),
            upstream_before,
            "{name}: never reaches the app"
        );
        let after = bench.metric(
            "tokengate_requests_total",
            &[
                ("policy", "bench"),
                ("decision", "deny"),
                ("reason", reason),
            ],
        );
        assert_eq!(after - before, 1.0, "{name}: counter moves by one");
    }
    let allowed = bench.metric(
        "tokengate_requests_total",
        &[("decision", "allow"), ("reason", "TokenValid")],
    );
    let ok = bench
        .get_with_token("/", &idp.sign(Algorithm::ES256, &base))
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(
        bench.metric(
            "tokengate_requests_total",
            &[("decision", "allow"), ("reason", "TokenValid")]
        ) - allowed,
        1.0
    );
    // Validation time is observed for every request.
    assert!(
        bench.metric(
            "tokengate_request_duration_seconds_count",
            &[("decision", "deny")]
        ) >= 12.0
    );
    assert!(bench.metric("tokengate_jwks_fetch_total", &[("result", "success")]) >= 1.0);
}

#[tokio::test]
async fn failed_validation_code_and_message_are_configurable() {
    let bench = Bench::start(|idp| {
        discovery(
            idp,
            "  failedValidation: {httpCode: 403, message: \"Token rejected\"}\n",
        )
    })
    .await;
    let reply = bench.get_with_token("/", "garbage").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["message"], "Token rejected");
    assert_eq!(reply.json()["statusCode"], 403);
}

#[tokio::test]
async fn keys_unavailable_and_no_policy() {
    // Keys never arrive: the sidecar is not ready and refuses with 503.
    let echo = tokengate_testkit::echo::EchoServer::start()
        .await
        .expect("echo");
    let dir = tempfile::tempdir().expect("dir");
    let policy = dir.path().join("p.yaml");
    std::fs::write(
        &policy,
        crate::support::manifest(
            "dead",
            "  validateJwt:\n    jwksUris: [\"http://127.0.0.1:9/keys\"]\n",
        ),
    )
    .expect("policy");
    let sidecar = tokengate_sidecar::start(crate::support::config(vec![policy.clone()], &echo))
        .await
        .expect("starts");
    let idp = IdentityProvider::start().await.expect("idp");
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::get(format!("http://{}/", sidecar.proxy_addr))
                .header(
                    "authorization",
                    format!("Bearer {}", idp.token(Algorithm::RS256)),
                )
                .body(Full::default())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(!sidecar.ready());
    let ready = client
        .request(
            Request::get(format!("http://{}/ready", sidecar.admin_addr))
                .body(Full::default())
                .expect("request"),
        )
        .await
        .expect("ready");
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    sidecar.shutdown().await;

    // A pod no policy selects is refused with NoPolicy.
    let labels = dir.path().join("labels");
    std::fs::write(&labels, "app=\"other\"\n").expect("labels");
    let mut config = crate::support::config(vec![policy], &echo);
    config.pod_labels = Some(labels);
    let sidecar = tokengate_sidecar::start(config).await.expect("starts");
    let response = client
        .request(
            Request::get(format!("http://{}/", sidecar.proxy_addr))
                .body(Full::default())
                .expect("request"),
        )
        .await
        .expect("response");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .expect("body")
        .to_bytes();
    let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
    assert_eq!(body["reason"], "NoPolicy");
    sidecar.shutdown().await;
}

#[tokio::test]
async fn token_sources_in_order() {
    let bench = Bench::start(|idp| {
        format!(
            "  token: {{header: X-Api-Token, queryParameter: access_token, cookie: session}}\n{}",
            discovery(idp, "")
        )
    })
    .await;
    let token = bench.idp.token(Algorithm::RS256);
    // A custom header has no scheme by default: the whole value is the token.
    let reply = bench.get("/", &[("x-api-token", &token)]).await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = bench
        .get(&format!("/q?a=b&access_token={token}"), &[])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let reply = bench
        .get("/c", &[("cookie", &format!("theme=dark; session={token}"))])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // The Authorization header is not a source of this policy.
    let reply = bench.get_with_token("/", &token).await;
    assert_eq!(reply.reason(), "TokenNotPresent");
}

#[tokio::test]
async fn scheme_is_case_insensitive() {
    let bench = Bench::start(|idp| discovery(idp, "")).await;
    let token = bench.idp.token(Algorithm::RS256);
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let reply = bench
            .get("/", &[("authorization", &format!("{scheme} {token}"))])
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{scheme}");
    }
}

#[tokio::test]
async fn clock_skew_at_both_edges() {
    let bench = Bench::start(|idp| discovery(idp, "    clockSkew: 60s\n")).await;
    let idp = &bench.idp;
    let token = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = idp.claims();
        f(&mut c);
        idp.sign(Algorithm::RS256, &c)
    };
    // exp: 50s ago is inside the 60s skew, 70s ago is outside.
    let inside = bench
        .get_with_token("/", &token(&|c| c["exp"] = (now() - 50).into()))
        .await;
    assert_eq!(inside.status, StatusCode::OK);
    let outside = bench
        .get_with_token("/", &token(&|c| c["exp"] = (now() - 70).into()))
        .await;
    assert_eq!(outside.reason(), "TokenExpired");
    // nbf: 50s ahead is inside, 70s ahead is outside.
    let inside = bench
        .get_with_token("/", &token(&|c| c["nbf"] = (now() + 50).into()))
        .await;
    assert_eq!(inside.status, StatusCode::OK);
    let outside = bench
        .get_with_token("/", &token(&|c| c["nbf"] = (now() + 70).into()))
        .await;
    assert_eq!(outside.reason(), "TokenNotYetValid");
    // iat in the future, beyond the skew.
    let outside = bench
        .get_with_token("/", &token(&|c| c["iat"] = (now() + 70).into()))
        .await;
    assert_eq!(outside.reason(), "TokenNotYetValid");
    // Without exp: refused by default.
    let no_exp = bench
        .get_with_token(
            "/",
            &token(&|c| {
                c.as_object_mut().map(|m| m.remove("exp"));
            }),
        )
        .await;
    assert_eq!(no_exp.reason(), "TokenClaimNotFound");
}

#[tokio::test]
async fn tokens_without_exp_when_not_required() {
    let bench = Bench::start(|idp| discovery(idp, "    requireExpirationTime: false\n")).await;
    let mut claims = bench.idp.claims();
    claims.as_object_mut().map(|m| m.remove("exp"));
    let reply = bench
        .get_with_token("/", &bench.idp.sign(Algorithm::RS256, &claims))
        .await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn required_claims_all_any_separator_nested_array() {
    let bench = Bench::start(|idp| {
        discovery(
            idp,
            "    requiredClaims:\n      - {name: roles, match: all, values: [Orders.Read, Orders.Write]}\n      - {name: scp, match: any, separator: \" \", values: [orders.read, admin]}\n      - {name: realm_access.groups, values: [staff]}\n      - {name: email_verified, values: [\"true\"]}\n",
        )
    })
    .await;
    let idp = &bench.idp;
    let good = {
        let mut c = idp.claims();
        c["roles"] = json!(["Orders.Read", "Orders.Write", "Other"]);
        c["scp"] = "profile orders.read".into();
        c["realm_access"] = json!({"groups": ["staff", "x"]});
        c["email_verified"] = true.into();
        c
    };
    assert_eq!(
        bench
            .get_with_token("/", &idp.sign(Algorithm::RS256, &good))
            .await
            .status,
        StatusCode::OK
    );
    type Change = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Change, &str)> = vec![
        (
            "all needs every value",
            Box::new(|c| c["roles"] = json!(["Orders.Read"])),
            "TokenClaimValueNotAllowed",
        ),
        (
            "any needs one value",
            Box::new(|c| c["scp"] = "profile email".into()),
            "TokenClaimValueNotAllowed",
        ),
        (
            "separator splits",
            Box::new(|c| c["scp"] = "orders.read,admin".into()),
            "TokenClaimValueNotAllowed",
        ),
        (
            "nested path",
            Box::new(|c| c["realm_access"] = json!({"groups": ["x"]})),
            "TokenClaimValueNotAllowed",
        ),
        (
            "nested missing",
            Box::new(|c| c["realm_access"] = json!({})),
            "TokenClaimNotFound",
        ),
        (
            "boolean",
            Box::new(|c| c["email_verified"] = false.into()),
            "TokenClaimValueNotAllowed",
        ),
    ];
    for (name, change, reason) in cases {
        let mut c = good.clone();
        change(&mut c);
        let reply = bench
            .get_with_token("/", &idp.sign(Algorithm::RS256, &c))
            .await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(reply.reason(), reason, "{name}");
    }
}

#[tokio::test]
async fn rules_disabled_optional_and_route_claims() {
    let bench = Bench::start(|idp| {
        format!(
            "{}  rules:\n    - {{paths: [\"/healthz\", \"/public/*\"], authentication: Disabled}}\n    - {{paths: [\"/maybe\"], authentication: Optional}}\n    - {{paths: [\"/admin/*\"], methods: [POST], requiredClaims: [{{name: roles, values: [Admin]}}]}}\n",
            discovery(idp, "")
        )
    })
    .await;
    let idp = &bench.idp;
    let anonymous = |path: &str, method: &str| {
        Request::builder()
            .method(method)
            .uri(bench.url(path))
            .body(Full::default())
            .expect("request")
    };
    assert_eq!(
        bench.send(anonymous("/healthz", "GET")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        bench.send(anonymous("/public/a/b", "GET")).await.status,
        StatusCode::OK
    );
    // Traversal cannot borrow the public rule.
    assert_eq!(
        bench
            .send(anonymous("/public/../admin/x", "GET"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        bench.send(anonymous("/maybe", "GET")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        bench.get_with_token("/maybe", "not-a-jwt").await.reason(),
        "JwtInvalid"
    );
    assert_eq!(
        bench.send(anonymous("/other", "GET")).await.status,
        StatusCode::UNAUTHORIZED
    );

    let user = idp.token(Algorithm::RS256);
    let admin = {
        let mut c = idp.claims();
        c["roles"] = json!(["Admin"]);
        idp.sign(Algorithm::RS256, &c)
    };
    let post = |token: &str| {
        Request::post(bench.url("/admin/users"))
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::from_static(b"{}")))
            .expect("request")
    };
    let forbidden = bench.send(post(&user)).await;
    assert_eq!(forbidden.status, StatusCode::FORBIDDEN);
    assert_eq!(forbidden.reason(), "TokenClaimNotFound");
    let challenge = forbidden.www_authenticate().expect("challenge");
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert_eq!(bench.send(post(&admin)).await.status, StatusCode::OK);
    // The method scopes the rule: GET /admin needs only a valid token.
    assert_eq!(
        bench.get_with_token("/admin/users", &user).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn claims_become_headers_and_forged_copies_are_dropped() {
    let bench = Bench::start(|idp| {
        format!(
            "{}  forwarding:\n    forwardToken: false\n    claimsToHeaders:\n      - {{claim: sub, header: X-User-Id}}\n      - {{claim: roles, header: X-Roles}}\n      - {{claim: org.id, header: X-Org}}\n      - {{claim: absent, header: X-Absent}}\n  rules:\n    - {{paths: [\"/open\"], authentication: Disabled}}\n",
            discovery(idp, "")
        )
    })
    .await;
    let idp = &bench.idp;
    let token = {
        let mut c = idp.claims();
        c["roles"] = json!(["a", "b"]);
        c["org"] = json!({"id": 42});
        idp.sign(Algorithm::RS256, &c)
    };
    let reply = bench
        .get(
            "/",
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-user-id", "forged"),
                ("x-absent", "forged"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let echoed = reply.echoed();
    assert_eq!(echoed.header_values("x-user-id"), ["test-subject"]);
    assert_eq!(echoed.header("x-roles"), Some("a,b"));
    assert_eq!(echoed.header("x-org"), Some("42"));
    assert!(
        echoed.header("x-absent").is_none(),
        "forged header removed, no claim to set"
    );
    assert!(echoed.header("authorization").is_none(), "token stripped");

    // Even where authentication is off, clients cannot inject the claim headers.
    let reply = bench.get("/open", &[("x-user-id", "forged")]).await;
    assert!(reply.echoed().header("x-user-id").is_none());
}

#[tokio::test]
async fn token_stripped_from_query_and_cookie() {
    let bench = Bench::start(|idp| {
        format!(
            "  token: {{queryParameter: access_token, cookie: session}}\n  forwarding: {{forwardToken: false}}\n{}",
            discovery(idp, "")
        )
    })
    .await;
    let token = bench.idp.token(Algorithm::ES256);
    let reply = bench
        .get(&format!("/q?a=1&access_token={token}&b=2"), &[])
        .await;
    assert_eq!(reply.echoed().query.as_deref(), Some("a=1&b=2"));
    let reply = bench
        .get("/c", &[("cookie", &format!("a=1; session={token}"))])
        .await;
    assert_eq!(reply.echoed().header("cookie"), Some("a=1"));
}

#[tokio::test]
async fn admin_endpoints() {
    let bench = Bench::start(|idp| discovery(idp, "")).await;
    assert_eq!(bench.admin_get("/live").await.status, StatusCode::OK);
    let ready = bench.admin_get("/ready").await;
    assert_eq!(ready.status, StatusCode::OK);
    let text = String::from_utf8_lossy(&ready.body).to_string();
    assert!(text.contains("policy bench"), "{text}");
    assert!(text.contains("openid-config"), "{text}");
    let metrics = bench.admin_get("/metrics").await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    for name in [
        "tokengate_jwks_fetch_total",
        "tokengate_keys",
        "tokengate_policy_reloads_total",
        "tokengate_policy_generation",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}
