//! The keys of one source as the operator delivers them in the namespace bundle (ConfigMap
//! `tokengate-jwks`, one [`jwks_file_name`](tokengate_policy::contract::jwks_file_name) each):
//! a JSON document with the source, when it was fetched, the discovery document's `issuer` and
//! the key set exactly as fetched.
//!
//! ```json
//! {
//!   "source": {"openidConfig": "https://login.example/.well-known/openid-configuration"},
//!   "fetchedAt": "2026-12-01T03:00:00.000Z",
//!   "issuer": "https://login.example/",
//!   "jwksUri": "https://login.example/keys",
//!   "jwks": {"keys": [...]}
//! }
//! ```
//!
//! The operator writes it with [`render`]; the sidecar reads it with [`parse`], which checks it
//! as a fetch would (a key set with no usable key is refused).

use std::time::SystemTime;

use anyhow::{Context as _, anyhow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokengate_policy::RemoteKeySource;

use crate::SourceKeys;

/// The source a document is about, named by the policy field it comes from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
enum SourceField {
    /// An OpenID Connect discovery document (`openidConfigs[].url`, the Entra authority).
    OpenidConfig(String),
    /// A JWKS URL (`jwksUris[]`).
    JwksUri(String),
}

#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Document {
    source: SourceField,
    /// RFC 3339, UTC.
    fetched_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    issuer: Option<String>,
    jwks_uri: String,
    jwks: Value,
}

/// The document for keys of `source`, as the bundle carries them.
pub fn render(source: &RemoteKeySource, keys: &SourceKeys) -> anyhow::Result<String> {
    let document = Document {
        source: match source {
            RemoteKeySource::Discovery(url) => SourceField::OpenidConfig(url.clone()),
            RemoteKeySource::Jwks(url) => SourceField::JwksUri(url.clone()),
        },
        fetched_at: humantime::format_rfc3339_millis(keys.fetched_wall).to_string(),
        issuer: keys.issuer.clone(),
        jwks_uri: keys.jwks_uri.clone(),
        jwks: keys.jwks.clone(),
    };
    serde_json::to_string_pretty(&document)
        .with_context(|| format!("writing the delivered keys of {source}"))
}

/// The source and keys of a delivered document.
pub fn parse(text: &str) -> anyhow::Result<(RemoteKeySource, SourceKeys)> {
    let document: Document =
        serde_json::from_str(text).context("not a delivered key set document")?;
    let source = match document.source {
        SourceField::OpenidConfig(url) => RemoteKeySource::Discovery(url),
        SourceField::JwksUri(url) => RemoteKeySource::Jwks(url),
    };
    let fetched_wall: SystemTime = humantime::parse_rfc3339(&document.fetched_at)
        .map_err(|err| anyhow!("fetchedAt {:?}: {err}", document.fetched_at))?;
    let keys = SourceKeys::from_jwks(
        document.jwks,
        &document.jwks_uri,
        document.issuer,
        fetched_wall,
    )
    .with_context(|| format!("delivered keys of {source}"))?;
    Ok((source, keys))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::json;

    use super::*;

    fn jwks() -> Value {
        // An RSA public key (2048 bits) and an entry this process cannot use.
        json!({"keys": [
            {"kty": "RSA", "kid": "r1", "use": "sig", "alg": "RS256", "e": "AQAB",
             "n": "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw"},
            {"kty": "OKP", "crv": "X448", "kid": "odd", "x": "AAAA"},
        ]})
    }

    #[test]
    fn a_document_carries_source_time_issuer_and_key_set_unchanged() {
        let source = RemoteKeySource::Discovery(
            "https://login.example/.well-known/openid-configuration".to_owned(),
        );
        let fetched = SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000);
        let keys = SourceKeys::from_jwks(
            jwks(),
            "https://login.example/keys",
            Some("https://login.example/".to_owned()),
            fetched,
        )
        .expect("usable key set");
        let text = render(&source, &keys).expect("render");
        let value: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            value["source"]["openidConfig"],
            "https://login.example/.well-known/openid-configuration"
        );
        assert_eq!(value["fetchedAt"], "2026-11-30T00:53:20.000Z");
        assert_eq!(
            value["jwks"],
            jwks(),
            "the key set as fetched, unusable key included"
        );

        let (parsed_source, parsed) = parse(&text).expect("parse");
        assert_eq!(parsed_source, source);
        assert_eq!(parsed.fetched_wall, fetched);
        assert_eq!(parsed.issuer.as_deref(), Some("https://login.example/"));
        assert_eq!(parsed.jwks_uri, "https://login.example/keys");
        let kids: Vec<_> = parsed.keys.iter().map(|k| k.kid.as_deref()).collect();
        assert_eq!(kids, [Some("r1")]);
        assert!(parsed.fetched_at.elapsed() >= Duration::from_secs(24 * 3600));
    }

    #[test]
    fn bad_documents_are_refused_with_what_is_wrong() {
        let good = json!({"source": {"jwksUri": "https://idp.example/keys"},
                          "fetchedAt": "2026-12-01T03:00:00Z",
                          "jwksUri": "https://idp.example/keys", "jwks": jwks()});
        assert!(parse(&good.to_string()).is_ok());
        let cases = [
            (
                json!({"fetchedAt": "2026-12-01T03:00:00Z"}),
                "not a delivered key set",
            ),
            (
                json!({"source": {"jwksUri": "u"}, "fetchedAt": "yesterday", "jwksUri": "u",
                       "jwks": jwks()}),
                "fetchedAt \"yesterday\"",
            ),
            (
                json!({"source": {"jwksUri": "u"}, "fetchedAt": "2026-12-01T03:00:00Z",
                       "jwksUri": "u", "jwks": {"keys": []}}),
                "holds no usable signing keys",
            ),
            (
                json!({"source": {"jwksUri": "u"}, "fetchedAt": "2026-12-01T03:00:00Z",
                       "jwksUri": "u", "jwks": {}}),
                "no keys array",
            ),
        ];
        for (document, expected) in cases {
            let err = format!("{:#}", parse(&document.to_string()).expect_err("refused"));
            assert!(err.contains(expected), "{expected}: {err}");
        }
        assert!(parse("{").is_err());
    }
}
