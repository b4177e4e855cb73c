//! The test identity provider and the echo upstream, exercised over real HTTP.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, Method, Request, StatusCode, Version, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};
use tokengate_testkit::echo::{self, EchoRecord, EchoServer};
use tokengate_testkit::idp::{
    DEFAULT_AUDIENCE, EntraApi, EntraTokenVersion, IdentityProvider, KeyFamily, SignWith,
};
use tokio_tungstenite::tungstenite::Message;

const ALL_ALGS: [Algorithm; 12] = [
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

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("response body is JSON")
    }
}

fn http1_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

async fn send(request: Request<Full<Bytes>>) -> Answer {
    let response = http1_client()
        .request(request)
        .await
        .expect("request succeeds");
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body readable")
        .to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

async fn get(url: &str) -> Answer {
    send(
        Request::get(url)
            .body(Full::default())
            .expect("valid request"),
    )
    .await
}

async fn post_form(url: &str, form: &[(&str, &str)], basic: Option<(&str, &str)>) -> Answer {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = Request::post(url)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .expect("valid request");
    if let Some((id, secret)) = basic {
        let credentials = STANDARD.encode(format!("{id}:{secret}"));
        request.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Basic {credentials}")
                .parse()
                .expect("ascii header"),
        );
    }
    send(request).await
}

fn validation(idp: &IdentityProvider, alg: Algorithm, audience: &str) -> Validation {
    let mut validation = Validation::new(alg);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[idp.issuer()]);
    validation
}

fn verify(token: &str, key: &DecodingKey, validation: &Validation) -> Value {
    jsonwebtoken::decode::<Value>(token, key, validation)
        .unwrap_or_else(|e| panic!("token verifies: {e}"))
        .claims
}

fn decode_segment(segment: &str) -> Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment).expect("base64url"))
        .expect("segment is JSON")
}

async fn fetch_jwks(idp: &IdentityProvider) -> Vec<Value> {
    let answer = get(&idp.jwks_url()).await;
    assert_eq!(answer.status, StatusCode::OK);
    answer.json()["keys"]
        .as_array()
        .expect("keys array")
        .clone()
}

fn kid_of(jwk: &Value) -> &str {
    jwk["kid"].as_str().expect("jwk has kid")
}

#[tokio::test]
async fn discovery_document_describes_the_provider() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    let answer = get(&idp.discovery_url()).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    let doc = answer.json();
    assert_eq!(doc["issuer"], idp.issuer());
    assert_eq!(doc["jwks_uri"], idp.jwks_url());
    assert_eq!(doc["token_endpoint"], idp.token_url());
    let algs = doc["id_token_signing_alg_values_supported"]
        .as_array()
        .expect("alg list");
    for alg in ["RS256", "PS512", "ES256", "ES384", "EdDSA"] {
        assert!(algs.contains(&json!(alg)), "{alg} advertised");
    }
    assert!(
        !algs.contains(&json!("HS256")),
        "symmetric algorithms are not advertised"
    );
    assert_eq!(idp.discovery_fetches(), 1);
    assert!(idp.issuer().starts_with("http://127.0.0.1:"));
}

#[tokio::test]
async fn jwks_publishes_every_asymmetric_key() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    let answer = get(&idp.jwks_url()).await;
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    let keys = answer.json()["keys"]
        .as_array()
        .expect("keys array")
        .clone();
    assert_eq!(keys.len(), 4, "RSA, P-256, P-384 and Ed25519: {keys:?}");
    for jwk in &keys {
        assert_eq!(jwk["use"], "sig");
        assert!(!kid_of(jwk).is_empty());
        assert_ne!(jwk["kty"], "oct", "the HMAC secret is never published");
    }
    let by_kid = |family| {
        let kid = idp.current_kid(family);
        keys.iter()
            .find(|k| kid_of(k) == kid)
            .expect("current key published")
            .clone()
    };
    let rsa = by_kid(KeyFamily::Rsa);
    assert_eq!(rsa["kty"], "RSA");
    assert!(
        rsa.get("alg").is_none(),
        "the RSA key serves RS* and PS*, so no single alg"
    );
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(rsa["n"].as_str().expect("n"))
            .expect("b64")
            .len(),
        256
    );
    assert_eq!(rsa["e"], "AQAB");
    let p256 = by_kid(KeyFamily::EcP256);
    assert_eq!(
        (p256["kty"].as_str(), p256["crv"].as_str()),
        (Some("EC"), Some("P-256"))
    );
    assert_eq!(p256["alg"], "ES256");
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(p256["y"].as_str().expect("y"))
            .expect("b64")
            .len(),
        32
    );
    let p384 = by_kid(KeyFamily::EcP384);
    assert_eq!(
        (p384["crv"].as_str(), p384["alg"].as_str()),
        (Some("P-384"), Some("ES384"))
    );
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(p384["x"].as_str().expect("x"))
            .expect("b64")
            .len(),
        48
    );
    let ed = by_kid(KeyFamily::Ed25519);
    assert_eq!(
        (ed["kty"].as_str(), ed["crv"].as_str()),
        (Some("OKP"), Some("Ed25519"))
    );
    assert_eq!(ed["alg"], "EdDSA");
    assert!(ed.get("y").is_none());
    assert_eq!(idp.jwks(), answer.json());
}

#[tokio::test]
async fn every_algorithm_verifies_with_the_published_key() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    let jwks = fetch_jwks(&idp).await;
    for alg in ALL_ALGS {
        let token = idp.token(alg);
        let header = jsonwebtoken::decode_header(&token).expect("header decodes");
        assert_eq!(header.alg, alg);
        assert_eq!(header.typ.as_deref(), Some("JWT"));
        let kid = header.kid.expect("header has kid");
        let key = if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            assert!(
                jwks.iter().all(|k| kid_of(k) != kid),
                "HMAC kid not in the JWKS"
            );
            DecodingKey::from_base64_secret(&idp.hmac_secret_base64()).expect("secret decodes")
        } else {
            let jwk = jwks
                .iter()
                .find(|k| kid_of(k) == kid)
                .expect("kid published")
                .clone();
            let jwk: Jwk = serde_json::from_value(jwk).expect("valid JWK");
            DecodingKey::from_jwk(&jwk).expect("JWK loads")
        };
        let claims = verify(&token, &key, &validation(&idp, alg, DEFAULT_AUDIENCE));
        assert_eq!(claims["sub"], "test-subject", "{alg:?}");
        let iat = claims["iat"].as_u64().expect("iat");
        assert_eq!(claims["nbf"].as_u64(), Some(iat));
        assert_eq!(claims["exp"].as_u64(), Some(iat + 3600));
    }
}

#[tokio::test]
async fn pem_and_modulus_exponent_forms_verify() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    for alg in ALL_ALGS {
        let family = KeyFamily::for_algorithm(alg);
        if family == KeyFamily::Hmac {
            continue;
        }
        let export = idp.current_key(family);
        let pem = export.pem.as_deref().expect("public keys have a PEM");
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        let key = match family {
            KeyFamily::Rsa => DecodingKey::from_rsa_pem(pem.as_bytes()),
            KeyFamily::Ed25519 => DecodingKey::from_ed_pem(pem.as_bytes()),
            _ => DecodingKey::from_ec_pem(pem.as_bytes()),
        }
        .expect("PEM loads");
        let token = idp.token(alg);
        verify(&token, &key, &validation(&idp, alg, DEFAULT_AUDIENCE));
        if family == KeyFamily::Rsa {
            let (n, e) = (export.rsa_n.expect("n"), export.rsa_e.expect("e"));
            assert_eq!(export.jwk["n"], n.as_str());
            let key = DecodingKey::from_rsa_components(&n, &e).expect("n/e load");
            verify(&token, &key, &validation(&idp, alg, DEFAULT_AUDIENCE));
        }
    }
    let hmac = idp.current_key(KeyFamily::Hmac);
    assert!(hmac.pem.is_none() && hmac.rsa_n.is_none());
    assert_eq!(
        STANDARD
            .decode(hmac.secret_base64.expect("secret"))
            .expect("base64")
            .len(),
        64
    );
}

#[tokio::test]
async fn hand_built_headers_are_kept_verbatim() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    let claims = idp.claims();

    let none = idp.sign_with_header(&json!({ "alg": "none" }), &claims, SignWith::Unsigned);
    let parts: Vec<&str> = none.split('.').collect();
    assert_eq!(parts.len(), 3);
    assert_eq!(decode_segment(parts[0]), json!({ "alg": "none" }));
    assert_eq!(decode_segment(parts[1]), claims);
    assert_eq!(parts[2], "");

    let rsa_kid = idp.current_kid(KeyFamily::Rsa);
    let hostile = json!({
        "alg": "RS256", "kid": rsa_kid, "jku": "http://evil.example/keys",
        "crit": ["exp"], "x5u": "http://evil.example/cert",
    });
    let token = idp.sign_with_header(&hostile, &claims, SignWith::Current(Algorithm::RS256));
    assert_eq!(
        decode_segment(token.split('.').next().expect("header")),
        hostile
    );
    let rsa = idp.current_key(KeyFamily::Rsa);
    let key = DecodingKey::from_rsa_pem(rsa.pem.as_deref().expect("pem").as_bytes()).expect("pem");
    let message = token.rsplit_once('.').expect("three parts");
    assert!(
        jsonwebtoken::crypto::verify(message.1, message.0.as_bytes(), &key, Algorithm::RS256)
            .expect("verify runs"),
        "signature covers the exact header bytes"
    );

    // Algorithm confusion: HS256 keyed with the RSA public key PEM.
    let pem = rsa.pem.expect("pem");
    let confused = idp.sign_with_header(
        &json!({ "alg": "HS256", "kid": rsa_kid }),
        &claims,
        SignWith::Secret(pem.clone().into_bytes(), Algorithm::HS256),
    );
    let key = DecodingKey::from_secret(pem.as_bytes()).expect("secret");
    verify(
        &confused,
        &key,
        &validation(&idp, Algorithm::HS256, DEFAULT_AUDIENCE),
    );

    let raw = idp.sign_raw(
        br#"{"alg":"ES256","alg":"none"}"#,
        b"{}",
        SignWith::Signature("AAAA".into()),
    );
    assert!(raw.ends_with(".AAAA"));
    assert_eq!(
        URL_SAFE_NO_PAD
            .decode(raw.split('.').next().expect("header"))
            .expect("b64"),
        br#"{"alg":"ES256","alg":"none"}"#
    );

    let stranger = idp.add_unpublished_key(KeyFamily::EcP256);
    assert!(!idp.published_kids().contains(&stranger));
    let token = idp.sign_with_kid(&stranger, Algorithm::ES256, &claims);
    assert_eq!(
        jsonwebtoken::decode_header(&token).expect("header").kid,
        Some(stranger.clone())
    );
    let key = DecodingKey::from_ec_pem(
        idp.key(&stranger)
            .expect("known")
            .pem
            .expect("pem")
            .as_bytes(),
    )
    .expect("pem");
    verify(
        &token,
        &key,
        &validation(&idp, Algorithm::ES256, DEFAULT_AUDIENCE),
    );
    assert!(
        idp.try_sign_raw(
            b"{}",
            b"{}",
            &SignWith::Kid("nope".into(), Algorithm::RS256)
        )
        .is_err()
    );
}

#[tokio::test]
async fn rotation_shows_in_the_jwks() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    let old = idp.current_kid(KeyFamily::Rsa);
    let new = idp.rotate(KeyFamily::Rsa);
    assert_ne!(old, new);
    assert_eq!(idp.current_kid(KeyFamily::Rsa), new);
    let kids: Vec<String> = fetch_jwks(&idp)
        .await
        .iter()
        .map(|k| kid_of(k).to_owned())
        .collect();
    assert!(kids.contains(&old) && kids.contains(&new), "{kids:?}");
    let token = idp.token(Algorithm::RS256);
    assert_eq!(
        jsonwebtoken::decode_header(&token).expect("header").kid,
        Some(new.clone())
    );

    assert!(idp.retire(&old));
    let kids: Vec<String> = fetch_jwks(&idp)
        .await
        .iter()
        .map(|k| kid_of(k).to_owned())
        .collect();
    assert!(!kids.contains(&old) && kids.contains(&new));
    assert!(
        idp.key(&old).is_some_and(|k| !k.published),
        "retired keys stay known"
    );

    idp.publish_only(&[&new]);
    assert_eq!(fetch_jwks(&idp).await.len(), 1);
    assert_eq!(idp.published_kids(), vec![new.clone()]);
    assert!(idp.publish(&old));
    assert!(
        !idp.publish(&idp.current_kid(KeyFamily::Hmac)),
        "secrets never published"
    );
    assert_eq!(fetch_jwks(&idp).await.len(), 2);

    let hmac_old = idp.hmac_secret_base64();
    idp.rotate(KeyFamily::Hmac);
    assert_ne!(idp.hmac_secret_base64(), hmac_old);
    assert_eq!(fetch_jwks(&idp).await.len(), 2);
}

#[tokio::test]
async fn availability_delay_and_counters() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    idp.set_available(false);
    let answer = get(&idp.jwks_url()).await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        get(&idp.discovery_url()).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!((idp.jwks_fetches(), idp.discovery_fetches()), (1, 1));

    idp.set_available(true);
    assert_eq!(get(&idp.jwks_url()).await.status, StatusCode::OK);
    assert_eq!(get(&idp.jwks_url()).await.status, StatusCode::OK);
    assert_eq!((idp.jwks_fetches(), idp.discovery_fetches()), (3, 1));

    idp.set_delay(Some(Duration::from_millis(300)));
    let started = Instant::now();
    assert_eq!(get(&idp.discovery_url()).await.status, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(300));
    idp.set_delay(None);

    idp.set_jwks_override(Some("{not json".into()));
    assert_eq!(&get(&idp.jwks_url()).await.body[..], b"{not json");
    idp.set_jwks_override(None);
    idp.set_discovery_override(Some(json!({ "issuer": "https://elsewhere" })));
    assert_eq!(
        get(&idp.discovery_url()).await.json()["issuer"],
        "https://elsewhere"
    );

    idp.reset_counters();
    assert_eq!(
        (
            idp.jwks_fetches(),
            idp.discovery_fetches(),
            idp.token_requests()
        ),
        (0, 0, 0)
    );
}

#[tokio::test]
async fn malformed_requests_get_errors_not_panics() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    assert_eq!(
        get(&format!("{}/nope", idp.base_url())).await.status,
        StatusCode::NOT_FOUND
    );
    let post = Request::post(idp.jwks_url())
        .body(Full::default())
        .expect("request");
    assert_eq!(send(post).await.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(
        get(&idp.token_url()).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );

    let not_form = Request::post(idp.token_url())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from_static(b"{}")))
        .expect("request");
    let answer = send(not_form).await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "invalid_request");

    let huge = Request::post(idp.token_url())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(vec![b'a'; 1 << 20])))
        .expect("request");
    assert_eq!(send(huge).await.status, StatusCode::BAD_REQUEST);

    let bad_basic = Request::post(idp.token_url())
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::AUTHORIZATION, "Basic %%%")
        .body(Full::new(Bytes::from_static(
            b"grant_type=client_credentials",
        )))
        .expect("request");
    assert_eq!(send(bad_basic).await.status, StatusCode::UNAUTHORIZED);
    // Still serving.
    assert_eq!(get(&idp.jwks_url()).await.status, StatusCode::OK);
}

#[tokio::test]
async fn client_credentials_grant_mints_tokens() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    idp.register_client("orders-client", "s3cret");
    let scope = "api://orders/.default";
    let answer = post_form(
        &idp.token_url(),
        &[
            ("grant_type", "client_credentials"),
            ("client_id", "orders-client"),
            ("client_secret", "s3cret"),
            ("scope", scope),
        ],
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.headers[header::CACHE_CONTROL], "no-store");
    let body = answer.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let token = body["access_token"].as_str().expect("access_token");
    let header = jsonwebtoken::decode_header(token).expect("header");
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.kid, Some(idp.current_kid(KeyFamily::Rsa)));
    let rsa = idp.current_key(KeyFamily::Rsa);
    let key = DecodingKey::from_rsa_components(
        rsa.rsa_n.as_deref().expect("n"),
        rsa.rsa_e.as_deref().expect("e"),
    )
    .expect("n/e");
    let claims = verify(
        token,
        &key,
        &validation(&idp, Algorithm::RS256, "api://orders"),
    );
    assert_eq!(claims["azp"], "orders-client");
    assert_eq!(claims["client_id"], "orders-client");
    assert_eq!(claims["sub"], "orders-client");

    // HTTP Basic client authentication, another algorithm, extra claims.
    idp.register_client_with_claims("reader", "p@ss:word", json!({ "roles": ["read"] }));
    idp.set_token_algorithm(Algorithm::ES256);
    idp.set_token_lifetime(Duration::from_secs(60));
    let answer = post_form(
        &idp.token_url(),
        &[("grant_type", "client_credentials"), ("scope", scope)],
        Some(("reader", "p%40ss%3Aword")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let body = answer.json();
    assert_eq!(body["expires_in"], 60);
    let token = body["access_token"].as_str().expect("access_token");
    let ec = idp.current_key(KeyFamily::EcP256);
    let key = DecodingKey::from_ec_pem(ec.pem.expect("pem").as_bytes()).expect("pem");
    let claims = verify(
        token,
        &key,
        &validation(&idp, Algorithm::ES256, "api://orders"),
    );
    assert_eq!(claims["roles"], json!(["read"]));
    assert_eq!(
        claims["exp"].as_u64(),
        claims["iat"].as_u64().map(|iat| iat + 60)
    );
    assert_eq!(idp.token_requests(), 2);
}

#[tokio::test]
async fn client_credentials_errors_follow_rfc_6749() {
    let idp = IdentityProvider::start().await.expect("idp starts");
    idp.register_client("app", "secret");
    let url = idp.token_url();
    let base = |secret: &'static str, scope: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", "app"),
            ("client_secret", secret),
            ("scope", scope),
        ]
    };
    let expect_error = |answer: Answer, status: StatusCode, code: &str| {
        assert_eq!(answer.status, status, "{code}: {:?}", answer.body);
        assert_eq!(answer.json()["error"], code);
    };

    let answer = post_form(&url, &base("wrong", "api://x/.default"), None).await;
    assert!(answer.headers.contains_key(header::WWW_AUTHENTICATE));
    expect_error(answer, StatusCode::UNAUTHORIZED, "invalid_client");
    let unknown = [
        ("grant_type", "client_credentials"),
        ("client_id", "ghost"),
        ("client_secret", "secret"),
        ("scope", "api://x/.default"),
    ];
    expect_error(
        post_form(&url, &unknown, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );
    let anonymous = [
        ("grant_type", "client_credentials"),
        ("scope", "api://x/.default"),
    ];
    expect_error(
        post_form(&url, &anonymous, None).await,
        StatusCode::UNAUTHORIZED,
        "invalid_client",
    );

    let mut password = base("secret", "api://x/.default");
    password[0] = ("grant_type", "password");
    expect_error(
        post_form(&url, &password, None).await,
        StatusCode::BAD_REQUEST,
        "unsupported_grant_type",
    );
    let no_grant = &base("secret", "api://x/.default")[1..];
    expect_error(
        post_form(&url, no_grant, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );

    for scope in ["api://x", "/.default", "a/.default b/.default"] {
        expect_error(
            post_form(&url, &base("secret", scope), None).await,
            StatusCode::BAD_REQUEST,
            "invalid_scope",
        );
    }
    let no_scope = &base("secret", "")[..3];
    expect_error(
        post_form(&url, no_scope, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_scope",
    );

    let both = post_form(
        &url,
        &base("secret", "api://x/.default"),
        Some(("app", "secret")),
    )
    .await;
    expect_error(both, StatusCode::BAD_REQUEST, "invalid_request");
    let mut repeated = base("secret", "api://x/.default");
    repeated.push(("scope", "api://y/.default"));
    expect_error(
        post_form(&url, &repeated, None).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
}

// ----- Microsoft Entra ID personality -----

const HOME_TENANT: &str = "4a5f1b7e-2c3d-4e5f-8a9b-0c1d2e3f4a5b";
const GUEST_TENANT: &str = "9e8d7c6b-5a4f-4e3d-8c2b-1a0f9e8d7c6b";
const ORDERS_API: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
const LEGACY_API: &str = "3f2504e0-4f89-41d3-9a0c-0305e82c3301";
const CLIENT_APP: &str = "11111111-2222-4333-8444-555555555555";

fn rsa_decoding_key(idp: &IdentityProvider) -> DecodingKey {
    let rsa = idp.current_key(KeyFamily::Rsa);
    DecodingKey::from_rsa_components(
        rsa.rsa_n.as_deref().expect("n"),
        rsa.rsa_e.as_deref().expect("e"),
    )
    .expect("n/e")
}

fn entra_validation(issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[issuer]);
    validation
}

#[tokio::test]
async fn entra_discovery_is_tenant_scoped() {
    let idp = IdentityProvider::start_entra(HOME_TENANT)
        .await
        .expect("idp starts");
    let base = idp.base_url().to_owned();
    assert_eq!(idp.tenant_id(), HOME_TENANT);
    assert_eq!(idp.issuer(), format!("{base}/{HOME_TENANT}/v2.0"));
    assert_eq!(
        idp.discovery_url(),
        format!("{base}/{HOME_TENANT}/v2.0/.well-known/openid-configuration")
    );

    let doc = get(&idp.discovery_url()).await.json();
    assert_eq!(doc["issuer"], format!("{base}/{HOME_TENANT}/v2.0"));
    assert_eq!(
        doc["jwks_uri"],
        format!("{base}/{HOME_TENANT}/discovery/v2.0/keys")
    );
    assert_eq!(
        doc["token_endpoint"],
        format!("{base}/{HOME_TENANT}/oauth2/v2.0/token")
    );
    assert_eq!(doc, idp.discovery_document());

    // Multi-tenant documents carry Entra's issuer template and keep their segment in URLs.
    for keyword in ["organizations", "common"] {
        let doc = get(&idp.entra_discovery_url(keyword)).await.json();
        assert_eq!(
            doc["issuer"],
            format!("{base}/{{tenantid}}/v2.0"),
            "{keyword}"
        );
        assert_eq!(
            doc["jwks_uri"],
            format!("{base}/{keyword}/discovery/v2.0/keys")
        );
    }
    // A domain names its tenant; the issuer carries the id.
    idp.add_tenant_domain("contoso.example", HOME_TENANT);
    let doc = get(&idp.entra_discovery_url("contoso.example"))
        .await
        .json();
    assert_eq!(doc["issuer"], format!("{base}/{HOME_TENANT}/v2.0"));
    // The v1.0 document names the v1.0 issuer.
    let doc = get(&format!(
        "{base}/{HOME_TENANT}/.well-known/openid-configuration"
    ))
    .await
    .json();
    assert_eq!(doc["issuer"], format!("{base}/{HOME_TENANT}/"));
    assert_eq!(doc["jwks_uri"], format!("{base}/common/discovery/keys"));

    // Unknown tenants are refused as Entra refuses them; generic paths do not exist here.
    let unknown = get(&idp.entra_discovery_url(GUEST_TENANT)).await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown.json()["error"], "invalid_tenant");
    assert_eq!(
        get(&format!("{base}/.well-known/openid-configuration"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
    idp.add_tenant(GUEST_TENANT);
    assert_eq!(
        get(&idp.entra_discovery_url(GUEST_TENANT)).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn entra_keys_are_rsa_only() {
    let idp = IdentityProvider::start_entra(HOME_TENANT)
        .await
        .expect("idp starts");
    for path in [
        idp.jwks_url(),
        format!("{}/common/discovery/keys", idp.base_url()),
        format!("{}/organizations/discovery/v2.0/keys", idp.base_url()),
    ] {
        let keys = get(&path).await.json()["keys"]
            .as_array()
            .expect("keys array")
            .clone();
        assert!(!keys.is_empty(), "{path}");
        assert!(keys.iter().all(|k| k["kty"] == "RSA"), "{path}: {keys:?}");
        assert!(
            keys.iter()
                .any(|k| k["kid"] == idp.current_kid(KeyFamily::Rsa).as_str()),
            "{path}"
        );
    }
    assert_eq!(idp.jwks()["keys"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn entra_claims_take_each_version_shape() {
    let idp = IdentityProvider::start_entra(HOME_TENANT)
        .await
        .expect("idp starts");
    let key = rsa_decoding_key(&idp);
    let v1 = idp.entra_token(
        EntraTokenVersion::V1,
        HOME_TENANT,
        CLIENT_APP,
        "api://orders",
    );
    let v1_issuer = idp.entra_issuer(EntraTokenVersion::V1, HOME_TENANT);
    let claims = verify(&v1, &key, &entra_validation(&v1_issuer, "api://orders"));
    assert_eq!(claims["ver"], "1.0");
    assert_eq!(claims["appid"], CLIENT_APP);
    assert_eq!(claims["appidacr"], "1");
    assert_eq!(claims["idp"], v1_issuer.as_str());
    assert_eq!(claims["tid"], HOME_TENANT);
    assert!(claims.get("azp").is_none());
    assert_eq!(claims["oid"], claims["sub"]);

    let v2 = idp.entra_token(EntraTokenVersion::V2, HOME_TENANT, CLIENT_APP, ORDERS_API);
    let v2_issuer = idp.entra_issuer(EntraTokenVersion::V2, HOME_TENANT);
    let claims = verify(&v2, &key, &entra_validation(&v2_issuer, ORDERS_API));
    assert_eq!(claims["ver"], "2.0");
    assert_eq!(claims["azp"], CLIENT_APP);
    assert_eq!(claims["azpacr"], "1");
    assert!(claims.get("appid").is_none());
    for name in ["iat", "nbf", "exp", "oid"] {
        assert!(claims.get(name).is_some(), "{name}");
    }
}

#[tokio::test]
async fn entra_client_credentials_follow_the_api_registration() {
    let idp = IdentityProvider::start_entra(HOME_TENANT)
        .await
        .expect("idp starts");
    idp.register_api(
        EntraApi::new(ORDERS_API, EntraTokenVersion::V2).with_identifier_uri("api://orders"),
    );
    idp.register_api(
        EntraApi::new(LEGACY_API, EntraTokenVersion::V1).with_identifier_uri("api://legacy"),
    );
    idp.register_client_with_claims(CLIENT_APP, "s3cret", json!({ "roles": ["Orders.Read"] }));
    let key = rsa_decoding_key(&idp);
    let request = |tenant: String, scope: &'static str| {
        let url = idp.entra_token_url(&tenant);
        async move {
            post_form(
                &url,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", CLIENT_APP),
                    ("client_secret", "s3cret"),
                    ("scope", scope),
                ],
                None,
            )
            .await
        }
    };

    // accessTokenAcceptedVersion 2: a v2.0 token whose aud is the API's application id.
    let answer = request(HOME_TENANT.to_owned(), "api://orders/.default").await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let token = answer.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let claims = verify(
        &token,
        &key,
        &entra_validation(
            &idp.entra_issuer(EntraTokenVersion::V2, HOME_TENANT),
            ORDERS_API,
        ),
    );
    assert_eq!(claims["azp"], CLIENT_APP);
    assert_eq!(claims["roles"], json!(["Orders.Read"]));

    // accessTokenAcceptedVersion 1 (or null): a v1.0 token whose aud is what was asked for.
    let answer = request(HOME_TENANT.to_owned(), "api://legacy/.default").await;
    let token = answer.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let claims = verify(
        &token,
        &key,
        &entra_validation(
            &idp.entra_issuer(EntraTokenVersion::V1, HOME_TENANT),
            "api://legacy",
        ),
    );
    assert_eq!(claims["appid"], CLIENT_APP);
    assert_eq!(claims["ver"], "1.0");

    // A guest tenant issues its own tenant's tokens, by id or by domain.
    idp.add_tenant_domain("fabrikam.example", GUEST_TENANT);
    let answer = request("fabrikam.example".to_owned(), "api://orders/.default").await;
    let token = answer.json()["access_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let claims = verify(
        &token,
        &key,
        &entra_validation(
            &idp.entra_issuer(EntraTokenVersion::V2, GUEST_TENANT),
            ORDERS_API,
        ),
    );
    assert_eq!(claims["tid"], GUEST_TENANT);

    // Entra's refusals: multi-tenant endpoint, unknown resource, unknown tenant.
    let answer = request("common".to_owned(), "api://orders/.default").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "invalid_request");
    let answer = request(HOME_TENANT.to_owned(), "api://unknown/.default").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "invalid_resource");
    let answer = request(CLIENT_APP.to_owned(), "api://orders/.default").await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    assert_eq!(answer.json()["error"], "invalid_tenant");
}

async fn echo_request(request: Request<Full<Bytes>>) -> (Answer, EchoRecord) {
    let answer = send(request).await;
    let record: EchoRecord = serde_json::from_slice(&answer.body).expect("echo record");
    (answer, record)
}

#[tokio::test]
async fn echo_reports_the_request() {
    let echo = EchoServer::start().await.expect("echo starts");
    assert_eq!(echo.requests(), 0);
    let request = Request::builder()
        .method(Method::PUT)
        .uri(format!("{}/some/path?a=1&b=two", echo.url()))
        .header("x-multi", "one")
        .header("x-multi", "two")
        .header("Authorization", "Bearer abc")
        .body(Full::new(Bytes::from_static(b"hello echo")))
        .expect("request");
    let (answer, record) = echo_request(request).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(record.method, "PUT");
    assert_eq!(record.path, "/some/path");
    assert_eq!(record.query.as_deref(), Some("a=1&b=two"));
    assert_eq!(record.version, "HTTP/1.1");
    assert_eq!(record.header_values("X-Multi"), ["one", "two"]);
    assert_eq!(record.header("authorization"), Some("Bearer abc"));
    assert_eq!(record.body_len, 10);
    assert_eq!(record.body.as_deref(), Some("hello echo"));
    assert_eq!(
        record.body_sha256,
        "c9ddddac15592d9d0e0017d5e48b3a8d4e9c2ed07e28c4f14b9d393849a43526"
    );
    assert_eq!(echo.requests(), 1);
    assert_eq!(echo.last_request(), Some(record));

    let status = Request::get(format!("{}/x", echo.url()))
        .header(echo::STATUS_HEADER, "418")
        .body(Full::default())
        .expect("request");
    let (answer, record) = echo_request(status).await;
    assert_eq!(answer.status, StatusCode::IM_A_TEAPOT);
    assert_eq!(record.body_len, 0);
    assert_eq!(record.body, Some(String::new()));
    assert_eq!(echo.requests(), 2);
    echo.reset();
    assert_eq!((echo.requests(), echo.last_request()), (0, None));
}

#[tokio::test]
async fn echo_hashes_large_uploads_without_echoing_them() {
    let echo = EchoServer::start().await.expect("echo starts");
    const CHUNKS: u64 = 64;
    let size = CHUNKS * echo::CHUNK_SIZE as u64;
    let frames = futures_util::stream::iter((0..CHUNKS).map(|i| {
        let chunk = echo::pattern(i * echo::CHUNK_SIZE as u64, echo::CHUNK_SIZE);
        Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(chunk)))
    }));
    let client: Client<HttpConnector, StreamBody<_>> =
        Client::builder(TokioExecutor::new()).build_http();
    let request = Request::post(format!("{}/upload", echo.url()))
        .body(StreamBody::new(frames))
        .expect("request");
    let response = client.request(request).await.expect("upload");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let record: EchoRecord = serde_json::from_slice(&body).expect("record");
    assert_eq!(record.body_len, size);
    assert_eq!(record.body_sha256, echo::pattern_sha256(size));
    assert_eq!(record.body, None, "large bodies are not echoed");
    assert_eq!(record.header("transfer-encoding"), Some("chunked"));
}

#[tokio::test]
async fn echo_streams_bytes() {
    let echo = EchoServer::start().await.expect("echo starts");
    let n: u64 = 3 * echo::CHUNK_SIZE as u64 + 17;
    let answer = get(&format!("{}/bytes/{n}", echo.url())).await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(
        answer.headers[header::CONTENT_LENGTH],
        n.to_string().as_str()
    );
    assert_eq!(answer.body.len() as u64, n);
    assert_eq!(&answer.body[..], &echo::pattern(0, n as usize)[..]);
    assert_eq!(get(&format!("{}/bytes/0", echo.url())).await.body.len(), 0);
    assert_eq!(
        get(&format!("{}/bytes/lots", echo.url())).await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(echo.requests(), 3);
}

#[tokio::test]
async fn echo_speaks_http2_prior_knowledge() {
    let echo = EchoServer::start().await.expect("echo starts");
    let client: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let request = Request::post(format!("{}/h2?x=y", echo.url()))
        .header("x-test", "h2")
        .body(Full::new(Bytes::from_static(b"over h2")))
        .expect("request");
    let response = client.request(request).await.expect("h2 request");
    assert_eq!(response.version(), Version::HTTP_2);
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let record: EchoRecord = serde_json::from_slice(&body).expect("record");
    assert_eq!(record.version, "HTTP/2.0");
    assert_eq!(
        (record.path.as_str(), record.query.as_deref()),
        ("/h2", Some("x=y"))
    );
    assert_eq!(record.header("x-test"), Some("h2"));
    assert_eq!(record.body.as_deref(), Some("over h2"));

    let n = 200_000u64;
    let response = client
        .request(
            Request::get(format!("{}/bytes/{n}", echo.url()))
                .body(Full::default())
                .expect("req"),
        )
        .await
        .expect("h2 bytes");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(body.len() as u64, n);
}

#[tokio::test]
async fn echo_echoes_websocket_messages() {
    let echo = EchoServer::start().await.expect("echo starts");
    let url = format!("ws://{}/ws", echo.addr());
    let (mut ws, response) = tokio_tungstenite::connect_async(url)
        .await
        .expect("ws handshake");
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello ws")).await.expect("send text");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::text("hello ws")
    );
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .expect("send binary");
    assert_eq!(
        ws.next().await.expect("reply").expect("ok"),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    ws.close(None).await.expect("close");
    assert_eq!(echo.last_request().map(|r| r.path), Some("/ws".to_owned()));
}

#[tokio::test]
async fn demo_binaries_serve_and_mint() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    let mut idp = Command::new(env!("CARGO_BIN_EXE_tokengate-idp"))
        .args(["--listen", "127.0.0.1:0", "--client", "cli:pw"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("idp binary starts");
    let stdout = idp.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let issuer = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("issuer printed in time")
        .expect("stdout readable")
        .expect("a line");
    assert!(issuer.starts_with("http://127.0.0.1:"), "{issuer}");

    let output = Command::new(env!("CARGO_BIN_EXE_tokengate-idp"))
        .args([
            "token",
            "--issuer",
            &issuer,
            "--client-id",
            "cli",
            "--client-secret",
            "pw",
        ])
        .output()
        .await
        .expect("token subcommand runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let token = String::from_utf8(output.stdout).expect("utf-8");
    let header = jsonwebtoken::decode_header(token.trim()).expect("a JWT");
    assert_eq!(header.alg, Algorithm::RS256);
    idp.kill().await.expect("idp stops");

    let mut echo = Command::new(env!("CARGO_BIN_EXE_tokengate-echo"))
        .args(["--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("echo binary starts");
    let mut lines = BufReader::new(echo.stdout.take().expect("stdout piped")).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("url printed in time")
        .expect("stdout readable")
        .expect("a line");
    let answer = get(&format!("{url}/hi")).await;
    assert_eq!(answer.json()["path"], "/hi");
    echo.kill().await.expect("echo stops");
}

#[tokio::test]
async fn demo_binary_acts_as_entra() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    use tokio::process::Command;

    let mut idp = Command::new(env!("CARGO_BIN_EXE_tokengate-idp"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--client",
            "cli:pw",
            "--entra-tenant",
            HOME_TENANT,
            "--entra-api",
            ORDERS_API,
            "--entra-api",
            &format!("{LEGACY_API}:1"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("idp binary starts");
    let stdout = idp.stdout.take().expect("stdout piped");
    let mut lines = BufReader::new(stdout).lines();
    let issuer = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("issuer printed in time")
        .expect("stdout readable")
        .expect("a line");
    assert!(
        issuer.starts_with("http://127.0.0.1:")
            && issuer.ends_with(&format!("/{HOME_TENANT}/v2.0")),
        "{issuer}"
    );

    for (api, ver, aud) in [
        (ORDERS_API, "2.0", ORDERS_API.to_owned()),
        (LEGACY_API, "1.0", format!("api://{LEGACY_API}")),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_tokengate-idp"))
            .args([
                "token",
                "--issuer",
                &issuer,
                "--client-id",
                "cli",
                "--client-secret",
                "pw",
                "--scope",
                &format!("api://{api}/.default"),
            ])
            .output()
            .await
            .expect("token subcommand runs");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout).expect("utf-8");
        let claims = decode_segment(token.trim().split('.').nth(1).expect("payload"));
        assert_eq!(claims["ver"], ver);
        assert_eq!(claims["aud"], aud.as_str());
        assert_eq!(claims["tid"], HOME_TENANT);
    }
    idp.kill().await.expect("idp stops");
}
