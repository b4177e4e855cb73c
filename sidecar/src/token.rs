//! A compact JWS taken apart once: the header fields the checks read, the signature bytes, and
//! the payload, decoded only once the signature holds.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use crate::reject::{RejectReason, Rejection};

/// Longest `kid` looked up; longer ones cannot name any key we hold.
const MAX_KID_LEN: usize = 256;

/// A token whose header is well-formed. Nothing in it is trusted yet.
#[derive(Debug)]
pub struct ParsedToken<'t> {
    /// `header.payload`: the bytes the signature covers.
    signed: &'t str,
    payload: &'t str,
    signature_segment: &'t str,
    /// `None` when the signature segment is not base64url: reported at the signature check, so
    /// that the header's own problems are named first.
    signature: Option<Vec<u8>>,
    alg: String,
    kid: Option<String>,
    typ: Option<String>,
}

impl<'t> ParsedToken<'t> {
    /// Splits `token` and decodes its header. `jwk`, `jku`, `x5u` and `x5c` are never read:
    /// trusting a key the token brings along would let anyone sign.
    pub fn parse(token: &'t str) -> Result<Self, Rejection> {
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(signature_segment), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            let count = token.split('.').count();
            let detail = if count == 5 {
                "encrypted tokens (JWE) are not supported".to_owned()
            } else {
                format!("expected 3 segments, found {count}")
            };
            return Err(Rejection::new(RejectReason::JwtInvalid, detail));
        };
        let mut fields = decode_json_object(header, "header")?;
        if let Some(crit) = fields.get("crit") {
            // RFC 7515 4.1.11: a recipient must refuse extensions it does not understand, and
            // we understand none.
            return Err(Rejection::new(
                RejectReason::JwtInvalid,
                format!("header lists critical extensions we do not support: {crit}"),
            ));
        }
        let alg = match fields.remove("alg") {
            Some(Value::String(alg)) => alg,
            _ => {
                return Err(Rejection::new(
                    RejectReason::JwtInvalid,
                    "header has no alg",
                ));
            }
        };
        let kid = match fields.remove("kid") {
            None => None,
            Some(Value::String(kid)) if kid.len() <= MAX_KID_LEN => Some(kid),
            Some(Value::String(_)) => {
                return Err(Rejection::new(
                    RejectReason::TokenSignatureKeyNotFound,
                    "kid is longer than any key id",
                ));
            }
            Some(_) => {
                return Err(Rejection::new(
                    RejectReason::JwtInvalid,
                    "kid is not a string",
                ));
            }
        };
        let typ = match fields.remove("typ") {
            Some(Value::String(typ)) => Some(typ),
            _ => None,
        };
        Ok(Self {
            signed: &token[..header.len() + 1 + payload.len()],
            payload,
            signature_segment,
            signature: URL_SAFE_NO_PAD.decode(signature_segment).ok(),
            alg,
            kid,
            typ,
        })
    }

    /// The header's `alg`, as written.
    pub fn alg(&self) -> &str {
        &self.alg
    }

    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    pub fn typ(&self) -> Option<&str> {
        self.typ.as_deref()
    }

    /// The bytes the signature covers.
    pub fn signed_message(&self) -> &[u8] {
        self.signed.as_bytes()
    }

    /// Whether the signature segment is empty, as in unsigned (`alg: none`) tokens.
    pub fn is_unsigned(&self) -> bool {
        self.signature_segment.is_empty()
    }

    /// The decoded signature.
    pub fn signature(&self) -> Result<&[u8], Rejection> {
        self.signature
            .as_deref()
            .ok_or_else(|| Rejection::new(RejectReason::JwtInvalid, "signature is not base64url"))
    }

    /// Decodes the payload. Called once, after the signature has been checked.
    pub fn claims(&self) -> Result<Map<String, Value>, Rejection> {
        decode_json_object(self.payload, "payload")
    }
}

fn decode_json_object(segment: &str, what: &str) -> Result<Map<String, Value>, Rejection> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| {
        Rejection::new(RejectReason::JwtInvalid, format!("{what} is not base64url"))
    })?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(Rejection::new(
            RejectReason::JwtInvalid,
            format!("{what} is not a JSON object"),
        )),
        Err(_) => Err(Rejection::new(
            RejectReason::JwtInvalid,
            format!("{what} is not JSON"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    fn refusal(token: &str) -> (RejectReason, String) {
        let rejection = ParsedToken::parse(token).expect_err("refused");
        (rejection.reason, rejection.detail)
    }

    #[test]
    fn the_header_is_read_once_and_the_payload_left_for_later() {
        let token = format!(
            "{}.{}.{}",
            encode(r#"{"alg":"RS256","kid":"k1","typ":"JWT","jku":"https://evil"}"#),
            encode(r#"{"sub":"a"}"#),
            URL_SAFE_NO_PAD.encode([1, 2, 3])
        );
        let parsed = ParsedToken::parse(&token).expect("parses");
        assert_eq!(
            (parsed.alg(), parsed.kid(), parsed.typ()),
            ("RS256", Some("k1"), Some("JWT"))
        );
        assert_eq!(parsed.signature().expect("signature"), [1, 2, 3]);
        let (signed, _) = token.rsplit_once('.').expect("dot");
        assert_eq!(parsed.signed_message(), signed.as_bytes());
        assert_eq!(parsed.claims().expect("claims")["sub"], "a");
    }

    #[test]
    fn malformed_tokens_are_named() {
        let header = encode(r#"{"alg":"RS256"}"#);
        for (token, reason, detail) in [
            (
                "a.b".to_owned(),
                RejectReason::JwtInvalid,
                "expected 3 segments, found 2",
            ),
            (
                "a.b.c.d.e".to_owned(),
                RejectReason::JwtInvalid,
                "encrypted tokens (JWE) are not supported",
            ),
            (
                "%%.b.c".to_owned(),
                RejectReason::JwtInvalid,
                "header is not base64url",
            ),
            (
                format!("{}.b.c", encode("[1]")),
                RejectReason::JwtInvalid,
                "header is not a JSON object",
            ),
            (
                format!("{}.b.c", encode("{")),
                RejectReason::JwtInvalid,
                "header is not JSON",
            ),
            (
                format!("{}.b.c", encode(r#"{"typ":"JWT"}"#)),
                RejectReason::JwtInvalid,
                "header has no alg",
            ),
            (
                format!("{}.b.c", encode(r#"{"alg":7}"#)),
                RejectReason::JwtInvalid,
                "header has no alg",
            ),
            (
                format!("{}.b.c", encode(r#"{"alg":"RS256","kid":42}"#)),
                RejectReason::JwtInvalid,
                "kid is not a string",
            ),
            (
                format!(
                    "{}.b.c",
                    encode(&format!(r#"{{"alg":"RS256","kid":"{}"}}"#, "k".repeat(300)))
                ),
                RejectReason::TokenSignatureKeyNotFound,
                "kid is longer than any key id",
            ),
            (
                format!("{}.b.c", encode(r#"{"alg":"RS256","crit":["exp"]}"#)),
                RejectReason::JwtInvalid,
                "header lists critical extensions we do not support: [\"exp\"]",
            ),
        ] {
            assert_eq!(refusal(&token), (reason, detail.to_owned()), "{token}");
        }
        // Signature and payload problems wait for their turn.
        let token = format!("{header}.%%.%%");
        let parsed = ParsedToken::parse(&token).expect("header is fine");
        assert_eq!(
            parsed.signature().expect_err("bad signature").detail,
            "signature is not base64url"
        );
        assert_eq!(
            parsed.claims().expect_err("bad payload").detail,
            "payload is not base64url"
        );
    }
}
