//! Hostile tokens are refused with the right reason and never reach the application.

use crate::support::Bench;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use serde_json::json;
use tokengate_testkit::idp::{DEFAULT_AUDIENCE, IdentityProvider, KeyFamily, SignWith};

fn jwks_policy(idp: &IdentityProvider) -> String {
    format!(
        "  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    audiences: [\"{DEFAULT_AUDIENCE}\"]\n",
        idp.discovery_url()
    )
}

async fn refused(bench: &Bench, token: &str, reason: &str, what: &str) {
    let before = bench.echo.requests();
    let reply = bench.get_with_token("/", token).await;
    assert_eq!(
        reply.status,
        StatusCode::UNAUTHORIZED,
        "{what}: {:?}",
        reply.body
    );
    assert_eq!(reply.reason(), reason, "{what}");
    assert_eq!(
        bench.echo.requests(),
        before,
        "{what}: reached the application"
    );
}

#[tokio::test]
async fn unsigned_tokens() {
    let bench = Bench::start(jwks_policy).await;
    let claims = bench.idp.claims();
    for alg in ["none", "None", "NONE", "nOnE"] {
        let token = bench.idp.sign_with_header(
            &json!({"alg": alg, "typ": "JWT"}),
            &claims,
            SignWith::Unsigned,
        );
        refused(&bench, &token, "TokenAlgorithmNotAllowed", alg).await;
    }
    // A real signature stapled onto an alg:none header does not help.
    let signed = bench.idp.token(Algorithm::RS256);
    let signature = signed.rsplit('.').next().expect("signature");
    let token = bench.idp.sign_with_header(
        &json!({"alg": "none"}),
        &claims,
        SignWith::Signature(signature.to_owned()),
    );
    refused(
        &bench,
        &token,
        "TokenAlgorithmNotAllowed",
        "none with signature",
    )
    .await;
}

#[tokio::test]
async fn unsigned_tokens_only_when_the_policy_opts_in_twice() {
    let bench = Bench::start(|idp| {
        format!(
            "  validateJwt:\n    issuerSigningKeys: [{{value: \"{}\"}}]\n    requireSignedTokens: false\n    algorithms: [HS256, none]\n",
            idp.hmac_secret_base64()
        )
    })
    .await;
    let token = bench.idp.sign_with_header(
        &json!({"alg": "none"}),
        &bench.idp.claims(),
        SignWith::Unsigned,
    );
    assert_eq!(
        bench.get_with_token("/", &token).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn algorithm_confusion_with_the_public_key_as_hmac_secret() {
    // Only asymmetric keys: HS256 is not in the allowed set at all.
    let bench = Bench::start(jwks_policy).await;
    let pem = bench.idp.current_key(KeyFamily::Rsa).pem.expect("pem");
    let kid = bench.idp.current_kid(KeyFamily::Rsa);
    let token = bench.idp.sign_with_header(
        &json!({"alg": "HS256", "kid": kid}),
        &bench.idp.claims(),
        SignWith::Secret(pem.clone().into_bytes(), Algorithm::HS256),
    );
    refused(
        &bench,
        &token,
        "TokenAlgorithmNotAllowed",
        "HS256 with RSA PEM",
    )
    .await;

    // HS256 allowed for a symmetric key, RS256 for the JWKS: the RSA key is never used as an
    // HMAC secret, so the forged signature does not verify.
    let bench = Bench::start(|idp| {
        format!(
            "  validateJwt:\n    openidConfigs: [{{url: \"{}\"}}]\n    issuerSigningKeys: [{{value: \"{}\"}}]\n    algorithms: [RS256, HS256]\n",
            idp.discovery_url(),
            idp.hmac_secret_base64()
        )
    })
    .await;
    let pem = bench.idp.current_key(KeyFamily::Rsa).pem.expect("pem");
    for header in [
        json!({"alg": "HS256", "kid": bench.idp.current_kid(KeyFamily::Rsa)}),
        json!({"alg": "HS256"}),
    ] {
        let token = bench.idp.sign_with_header(
            &header,
            &bench.idp.claims(),
            SignWith::Secret(pem.clone().into_bytes(), Algorithm::HS256),
        );
        let reply = bench.get_with_token("/", &token).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED, "{header}");
        assert!(
            ["TokenSignatureInvalid", "TokenSignatureKeyNotFound"]
                .contains(&reply.reason().as_str()),
            "{header}: {}",
            reply.reason()
        );
    }
}

#[tokio::test]
async fn keys_named_by_the_token_are_never_trusted() {
    let bench = Bench::start(jwks_policy).await;
    let attacker = IdentityProvider::start().await.expect("attacker provider");
    let attacker_key = attacker.current_key(KeyFamily::Rsa);
    let claims = bench.idp.claims();
    let headers = [
        (
            "jwk",
            json!({"alg": "RS256", "kid": attacker_key.kid, "jwk": attacker_key.jwk}),
        ),
        (
            "jku",
            json!({"alg": "RS256", "kid": attacker_key.kid, "jku": attacker.jwks_url()}),
        ),
        (
            "x5u",
            json!({"alg": "RS256", "kid": attacker_key.kid, "x5u": attacker.jwks_url()}),
        ),
    ];
    for (what, header) in headers {
        let token =
            attacker.sign_with_header(&header, &claims, SignWith::Current(Algorithm::RS256));
        refused(&bench, &token, "TokenSignatureKeyNotFound", what).await;
        // Borrowing a legitimate kid only moves the failure to the signature.
        let mut header = header.clone();
        header["kid"] = bench.idp.current_kid(KeyFamily::Rsa).into();
        let token =
            attacker.sign_with_header(&header, &claims, SignWith::Current(Algorithm::RS256));
        refused(&bench, &token, "TokenSignatureInvalid", what).await;
    }
    assert_eq!(
        attacker.jwks_fetches(),
        0,
        "the sidecar fetched a URL named by a token"
    );
}

#[tokio::test]
async fn hostile_kids() {
    let bench = Bench::start(jwks_policy).await;
    let claims = bench.idp.claims();
    for kid in [
        "../../../../etc/passwd",
        "' OR '1'='1",
        "key\"; DROP TABLE keys; --",
        "%00",
        "kid\u{0}nul",
        &"k".repeat(10_000),
    ] {
        let token = bench.idp.sign_with_header(
            &json!({"alg": "RS256", "kid": kid}),
            &claims,
            SignWith::Current(Algorithm::RS256),
        );
        if token.len() > 8192 {
            refused(&bench, &token, "JwtInvalid", "over the length cap").await;
        } else {
            refused(&bench, &token, "TokenSignatureKeyNotFound", kid).await;
        }
    }
    let token = bench.idp.sign_with_header(
        &json!({"alg": "RS256", "kid": 42}),
        &claims,
        SignWith::Current(Algorithm::RS256),
    );
    refused(&bench, &token, "JwtInvalid", "numeric kid").await;
}

#[tokio::test]
async fn critical_header_extensions_are_refused() {
    let bench = Bench::start(jwks_policy).await;
    let mut header = bench.idp.header(Algorithm::RS256);
    header["crit"] = json!(["exp"]);
    header["exp"] = json!(1);
    let token = bench.idp.sign_with_header(
        &header,
        &bench.idp.claims(),
        SignWith::Current(Algorithm::RS256),
    );
    refused(&bench, &token, "JwtInvalid", "crit").await;
}

#[tokio::test]
async fn malformed_tokens() {
    let bench = Bench::start(jwks_policy).await;
    let idp = &bench.idp;
    let good = idp.token(Algorithm::RS256);
    let parts: Vec<&str> = good.split('.').collect();
    let header = idp.header(Algorithm::RS256).to_string();
    let cases: Vec<(&str, String)> = vec![
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{good}.x")),
        ("jwe shape", "a.b.c.d.e".to_owned()),
        (
            "header not base64",
            format!("!!!.{}.{}", parts[1], parts[2]),
        ),
        (
            "padded base64",
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
        ),
        (
            "signature not base64",
            format!("{}.{}.***", parts[0], parts[1]),
        ),
        (
            "payload not json",
            idp.sign_raw(
                header.as_bytes(),
                b"not json",
                SignWith::Current(Algorithm::RS256),
            ),
        ),
        (
            "payload is an array",
            idp.sign_raw(
                header.as_bytes(),
                b"[1,2]",
                SignWith::Current(Algorithm::RS256),
            ),
        ),
        (
            "header is a string",
            idp.sign_raw(b"\"RS256\"", b"{}", SignWith::Current(Algorithm::RS256)),
        ),
        (
            "exp not a number",
            idp.sign(Algorithm::RS256, &{
                let mut c = idp.claims();
                c["exp"] = "tomorrow".into();
                c
            }),
        ),
        ("empty", String::new()),
        ("dots", "..".to_owned()),
    ];
    for (what, token) in cases {
        let reason = if token.is_empty() {
            "TokenNotPresent"
        } else {
            "JwtInvalid"
        };
        refused(&bench, &token, reason, what).await;
    }
}

#[tokio::test]
async fn token_over_the_length_cap() {
    let bench =
        Bench::start(|idp| format!("  token: {{maxLength: 1024}}\n{}", jwks_policy(idp))).await;
    let mut claims = bench.idp.claims();
    claims["padding"] = "x".repeat(2000).into();
    let token = bench.idp.sign(Algorithm::RS256, &claims);
    refused(&bench, &token, "JwtInvalid", "long token").await;
    let short = bench.idp.token(Algorithm::ES256);
    assert_eq!(
        bench.get_with_token("/", &short).await.status,
        StatusCode::OK
    );
}
