//! Token verification with APIM `validate-jwt` and `validate-azure-ad-token` semantics.
//!
//! Order: header -> algorithm allow-list -> key by `kid` -> signature -> exp/nbf/iat ->
//! iss -> aud -> (Entra: client application) -> required claims. The first failure decides
//! the reason. In Entra mode the issuer check is the policy crate's: `ver`, `iss` and `tid`
//! against the tenant and the accepted token versions.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use tokengate_policy::claims::ClaimFailure;
use tokengate_policy::entra::{EntraFailure, EntraRules};
use tokengate_policy::{IssuerRule, Verification};

use crate::reject::{RejectReason, Rejection};
use tokengate_keys::KeyView;

/// A token that passed every check of its policy.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    pub claims: Map<String, Value>,
    /// `none` for accepted unsigned tokens.
    pub algorithm: String,
    pub kid: Option<String>,
    pub issuer: Option<String>,
    pub expires_at: Option<f64>,
    pub not_before: Option<f64>,
    /// The key whose signature verified the token; `None` for unsigned tokens.
    pub verified_by: Option<crate::token_cache::KeyFingerprint>,
}

/// Receives each check as it runs, for `tokengate-sidecar check`. Messages may quote token
/// values, so the request path uses [`NoTrace`].
pub trait Trace: Send {
    fn step(&mut self, check: &'static str, passed: bool, message: String);
}

pub struct NoTrace;

impl Trace for NoTrace {
    fn step(&mut self, _: &'static str, _: bool, _: String) {}
}

/// Longest `kid` looked up; longer ones cannot name any key we hold.
const MAX_KID_LEN: usize = 256;

pub fn verify(
    token: &str,
    rules: &Verification,
    keys: &KeyView<'_>,
    now: f64,
    trace: &mut dyn Trace,
) -> Result<VerifiedToken, Rejection> {
    let result = verify_inner(token, rules, keys, now, trace);
    if let Err(rejection) = &result {
        trace.step("decision", false, rejection.to_string());
    }
    result
}

fn verify_inner(
    token: &str,
    rules: &Verification,
    keys: &KeyView<'_>,
    now: f64,
    trace: &mut dyn Trace,
) -> Result<VerifiedToken, Rejection> {
    let parts = Parts::split(token)?;
    let header = parts.header()?;
    trace.step(
        "format",
        true,
        "three base64url segments, JSON header".into(),
    );

    if let Some(crit) = header.get("crit") {
        // RFC 7515 4.1.11: a recipient must refuse extensions it does not understand, and we
        // understand none.
        return Err(Rejection::new(
            RejectReason::JwtInvalid,
            format!("header lists critical extensions we do not support: {crit}"),
        ));
    }
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or_else(|| Rejection::new(RejectReason::JwtInvalid, "header has no alg"))?;
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) if kid.len() <= MAX_KID_LEN => Some(kid.as_str()),
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
    // `jwk`, `jku`, `x5u` and `x5c` are never used to find keys: trusting a key the token
    // brings along would let anyone sign.

    let algorithm = if alg_name == "none" {
        if !rules.allow_unsigned {
            return Err(Rejection::new(
                RejectReason::TokenAlgorithmNotAllowed,
                "unsigned token (alg none) refused: requireSignedTokens",
            ));
        }
        if !parts.signature.is_empty() {
            return Err(Rejection::new(
                RejectReason::JwtInvalid,
                "alg none with a signature",
            ));
        }
        trace.step(
            "signature",
            true,
            "unsigned token accepted by policy".into(),
        );
        None
    } else {
        let alg: Algorithm = alg_name.parse().map_err(|_| {
            Rejection::new(
                RejectReason::TokenAlgorithmNotAllowed,
                format!("unknown algorithm {alg_name}"),
            )
        })?;
        if !rules.algorithms.contains(&alg) {
            return Err(Rejection::new(
                RejectReason::TokenAlgorithmNotAllowed,
                format!("algorithm {alg_name} is not allowed"),
            ));
        }
        trace.step("algorithm", true, format!("{alg_name} is allowed"));
        Some(alg)
    };

    let mut verifying_key = None;
    if let Some(alg) = algorithm {
        // Decoded here only to tell a malformed token from a wrong signature.
        URL_SAFE_NO_PAD
            .decode(parts.signature)
            .map_err(|_| Rejection::new(RejectReason::JwtInvalid, "signature is not base64url"))?;
        let candidates = keys.candidates(kid, alg);
        if candidates.is_empty() {
            let detail = match kid {
                Some(kid) => format!("no key with kid {kid:?} verifies {alg_name}"),
                None => format!("no key without a kid verifies {alg_name}"),
            };
            return Err(Rejection::new(
                RejectReason::TokenSignatureKeyNotFound,
                detail,
            ));
        }
        let message = parts.signed_message().as_bytes();
        let verified_by = candidates
            .iter()
            .find(|key| verify_signature(parts.signature, message, key, alg));
        match verified_by {
            Some(key) => {
                verifying_key = Some(*key.fingerprint());
                trace.step(
                    "signature",
                    true,
                    format!(
                        "verified with key {}",
                        key.kid.as_deref().unwrap_or("(no kid)")
                    ),
                );
            }
            None => {
                return Err(Rejection::new(
                    RejectReason::TokenSignatureInvalid,
                    format!(
                        "signature does not verify with {} candidate key(s)",
                        candidates.len()
                    ),
                ));
            }
        }
    }

    let claims = parts.claims()?;
    let expires_at = numeric_claim(&claims, "exp")?;
    let not_before = numeric_claim(&claims, "nbf")?;
    check_times(&claims, rules, now, expires_at, not_before, trace)?;

    let issuer = claims.get("iss").and_then(Value::as_str).map(str::to_owned);
    let entra = match &rules.entra {
        Some(entra) => {
            let identity = entra
                .check_issuer(&claims, keys.discovery_issuers().next())
                .map_err(entra_rejection)?;
            trace.step(
                "issuer",
                true,
                format!(
                    "{} token of tenant {} ({} is allowed)",
                    identity.version, identity.tenant, identity.issuer
                ),
            );
            Some((entra, identity.version))
        }
        None => {
            check_issuer(issuer.as_deref(), rules, keys)?;
            trace.step(
                "issuer",
                true,
                format!("{} is allowed", issuer.as_deref().unwrap_or("(any)")),
            );
            None
        }
    };

    if let Err(mut rejection) = check_audience(&claims, &rules.audiences) {
        if let Some((_, version)) = entra {
            rejection.detail = format!(
                "{} ({version} token: {})",
                rejection.detail,
                EntraRules::audience_advice(version)
            );
        }
        trace.step("audience", false, audience_values(&claims));
        return Err(rejection);
    }
    trace.step("audience", true, "allowed".into());

    if let Some((entra, version)) = entra {
        let (claim, client) = entra
            .check_client(&claims, version)
            .map_err(entra_rejection)?;
        trace.step(
            "client application",
            true,
            format!("{claim} {client} is allowed"),
        );
    }

    for requirement in &rules.required_claims {
        requirement.check(&claims).map_err(claim_rejection)?;
        trace.step(
            "claim",
            true,
            format!("{} satisfied", requirement.path.as_str()),
        );
    }
    trace.step("decision", true, "token accepted".into());

    Ok(VerifiedToken {
        claims,
        algorithm: alg_name.to_owned(),
        kid: kid.map(str::to_owned),
        issuer,
        expires_at,
        not_before,
        verified_by: verifying_key,
    })
}

fn verify_signature(
    signature: &str,
    message: &[u8],
    key: &tokengate_policy::VerificationKey,
    alg: Algorithm,
) -> bool {
    jsonwebtoken::crypto::verify(signature, message, &key.key, alg).unwrap_or(false)
}

/// `exp`, `nbf` and `iat` against the clock, with the policy's skew. Also rerun on cache hits.
pub fn check_times(
    claims: &Map<String, Value>,
    rules: &Verification,
    now: f64,
    expires_at: Option<f64>,
    not_before: Option<f64>,
    trace: &mut dyn Trace,
) -> Result<(), Rejection> {
    let skew = rules.clock_skew.as_secs_f64();
    match expires_at {
        None if rules.require_expiration_time => {
            return Err(Rejection::new(
                RejectReason::TokenClaimNotFound,
                "exp is required (requireExpirationTime)",
            ));
        }
        None => {}
        Some(exp) if now >= exp + skew => {
            trace.step("exp", false, format!("expired {:.0}s ago", now - exp));
            return Err(Rejection::new(RejectReason::TokenExpired, "exp has passed"));
        }
        Some(exp) => trace.step("exp", true, format!("expires in {:.0}s", exp - now)),
    }
    if let Some(nbf) = not_before {
        if now + skew < nbf {
            trace.step("nbf", false, format!("valid in {:.0}s", nbf - now));
            return Err(Rejection::new(
                RejectReason::TokenNotYetValid,
                "nbf is in the future",
            ));
        }
        trace.step("nbf", true, "reached".into());
    }
    if let Some(iat) = numeric_claim(claims, "iat")? {
        if now + skew < iat {
            trace.step(
                "iat",
                false,
                format!("issued {:.0}s in the future", iat - now),
            );
            return Err(Rejection::new(
                RejectReason::TokenNotYetValid,
                "iat is in the future",
            ));
        }
        trace.step("iat", true, "not in the future".into());
    }
    Ok(())
}

fn check_issuer(
    issuer: Option<&str>,
    rules: &Verification,
    keys: &KeyView<'_>,
) -> Result<(), Rejection> {
    let allowed = |candidates: &mut dyn Iterator<Item = &str>| {
        issuer.is_some_and(|iss| {
            for candidate in candidates {
                if candidate == iss {
                    return true;
                }
            }
            false
        })
    };
    let ok = match &rules.issuers {
        IssuerRule::Any => true,
        IssuerRule::Listed(list) => allowed(&mut list.iter().map(String::as_str)),
        IssuerRule::FromDiscovery => allowed(&mut keys.discovery_issuers()),
    };
    if ok {
        Ok(())
    } else if issuer.is_none() {
        Err(Rejection::new(
            RejectReason::TokenIssuerNotAllowed,
            "iss is missing",
        ))
    } else {
        Err(Rejection::new(
            RejectReason::TokenIssuerNotAllowed,
            "iss is not an accepted issuer",
        ))
    }
}

fn check_audience(claims: &Map<String, Value>, audiences: &[String]) -> Result<(), Rejection> {
    if audiences.is_empty() {
        return Ok(());
    }
    let matches = |v: &Value| v.as_str().is_some_and(|a| audiences.iter().any(|x| x == a));
    let ok = match claims.get("aud") {
        Some(Value::Array(items)) => items.iter().any(matches),
        Some(other) => matches(other),
        None => {
            return Err(Rejection::new(
                RejectReason::TokenAudienceNotAllowed,
                "aud is missing",
            ));
        }
    };
    if ok {
        Ok(())
    } else {
        Err(Rejection::new(
            RejectReason::TokenAudienceNotAllowed,
            "aud is not an accepted audience",
        ))
    }
}

/// The token's `aud`, for `check` only: the request path never traces.
fn audience_values(claims: &Map<String, Value>) -> String {
    match claims.get("aud") {
        Some(aud) => format!("aud {aud} is not accepted"),
        None => "aud is missing".to_owned(),
    }
}

fn entra_rejection(failure: EntraFailure) -> Rejection {
    match failure {
        EntraFailure::Issuer { detail, hint } => {
            Rejection::new(RejectReason::TokenIssuerNotAllowed, detail).with_hint(hint)
        }
        EntraFailure::ClientApplication { detail, hint } => {
            Rejection::new(RejectReason::TokenClientApplicationNotAllowed, detail)
                .with_hint(Some(hint))
        }
    }
}

pub fn claim_rejection(failure: ClaimFailure) -> Rejection {
    match failure {
        ClaimFailure::NotFound { claim } => Rejection::new(
            RejectReason::TokenClaimNotFound,
            format!("claim {claim} is missing"),
        ),
        ClaimFailure::ValueNotAllowed { claim } => Rejection::new(
            RejectReason::TokenClaimValueNotAllowed,
            format!("claim {claim} has no accepted value"),
        ),
    }
}

fn numeric_claim(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, Rejection> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .filter(|v| v.is_finite())
            .map(Some)
            .ok_or_else(|| {
                Rejection::new(RejectReason::JwtInvalid, format!("{name} is not a number"))
            }),
        Some(_) => Err(Rejection::new(
            RejectReason::JwtInvalid,
            format!("{name} is not a NumericDate"),
        )),
    }
}

/// The three segments of a compact JWS.
struct Parts<'t> {
    token: &'t str,
    header: &'t str,
    payload: &'t str,
    signature: &'t str,
}

impl<'t> Parts<'t> {
    fn split(token: &'t str) -> Result<Self, Rejection> {
        let mut segments = token.split('.');
        let (Some(header), Some(payload), Some(signature), None) = (
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
        Ok(Self {
            token,
            header,
            payload,
            signature,
        })
    }

    fn signed_message(&self) -> &'t str {
        &self.token[..self.header.len() + 1 + self.payload.len()]
    }

    fn header(&self) -> Result<Map<String, Value>, Rejection> {
        decode_json_object(self.header, "header")
    }

    fn claims(&self) -> Result<Map<String, Value>, Rejection> {
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
