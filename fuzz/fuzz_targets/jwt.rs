//! JWT parsing and verification with the sidecar's verifier. The first byte picks the form:
//! even, the rest is the token as sent; odd, the rest is a JOSE header and a payload
//! separated by 0xFF, signed with the policy's HMAC key, so inputs get past the signature and
//! into the claim checks. Nothing panics, and an accepted token meets every rule of the policy.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use libfuzzer_sys::fuzz_target;
use tokengate_keys::KeyView;
use tokengate_policy::{CompiledPolicy, KeyFiles, compile, parse_documents};
use tokengate_sidecar::token::ParsedToken;
use tokengate_sidecar::trace::NoTrace;
use tokengate_sidecar::verify::verify;

const SECRET: &[u8] = b"fuzzing-secret-of-thirty-two-b!!";
const NOW: f64 = 1_700_000_000.0;
const SKEW: f64 = 30.0;

struct NoFiles;

impl KeyFiles for NoFiles {
    fn read(&self, path: &str) -> std::io::Result<String> {
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            path.to_owned(),
        ))
    }
}

static POLICY: LazyLock<CompiledPolicy> = LazyLock::new(|| {
    let yaml = format!(
        "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {{name: fuzz}}\nspec:\n  selector: {{matchLabels: {{app: fuzz}}}}\n  validateJwt:\n    issuerSigningKeys: [{{id: k1, value: \"{}\"}}]\n    algorithms: [HS256]\n    issuers: [https://issuer.example]\n    audiences: [api://fuzz]\n    requiredClaims:\n      - {{name: scp, match: any, separator: \" \", values: [read, write]}}\n      - {{name: org.id}}\n    clockSkew: 30s\n",
        STANDARD.encode(SECRET)
    );
    let document = parse_documents(&yaml).expect("policy parses").remove(0);
    compile(&document, &NoFiles).expect("policy compiles")
});

fn signed(header: &[u8], payload: &[u8]) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let token = if mode % 2 == 0 {
        String::from_utf8_lossy(rest).into_owned()
    } else {
        let (header, payload) = match rest.iter().position(|b| *b == 0xff) {
            Some(at) => (&rest[..at], &rest[at + 1..]),
            None => (rest, &b""[..]),
        };
        signed(header, payload)
    };
    let policy = &*POLICY;
    let keys = KeyView {
        static_keys: &policy.verification.static_keys,
        remote: Vec::new(),
    };
    let Ok(parsed) = ParsedToken::parse(&token) else {
        return;
    };
    let Ok(verified) = verify(&parsed, &policy.verification, &keys, NOW, &mut NoTrace) else {
        return;
    };
    let claims = &verified.claims;
    assert_eq!(verified.algorithm.to_string(), "HS256");
    assert_eq!(
        claims.get("iss").and_then(|v| v.as_str()),
        Some("https://issuer.example")
    );
    let audience_ok = match claims.get("aud") {
        Some(serde_json::Value::String(a)) => a == "api://fuzz",
        Some(serde_json::Value::Array(all)) => all.iter().any(|a| a == "api://fuzz"),
        _ => false,
    };
    assert!(audience_ok, "aud {:?}", claims.get("aud"));
    let exp = verified.times.expires_at.expect("exp is required");
    assert!(NOW < exp + SKEW, "expired token accepted: exp {exp}");
    if let Some(nbf) = verified.times.not_before {
        assert!(NOW + SKEW >= nbf, "token not yet valid accepted: nbf {nbf}");
    }
    let scope_ok = |s: &str| s == "read" || s == "write";
    let scopes_ok = match claims.get("scp") {
        Some(serde_json::Value::String(text)) => text.split(' ').any(scope_ok),
        Some(serde_json::Value::Array(all)) => all.iter().any(|v| match v {
            serde_json::Value::String(text) => text.split(' ').any(scope_ok),
            _ => false,
        }),
        _ => false,
    };
    assert!(scopes_ok, "scp {:?}", claims.get("scp"));
});
