//! Token verification with APIM `validate-jwt` and `validate-azure-ad-token` semantics.
//!
//! Order: header -> algorithm allow-list -> keys by `kid` -> signature -> exp/nbf/iat ->
//! iss -> aud -> (Entra: client application) -> required claims. The first failure decides
//! the reason. In Entra mode the issuer check is the policy crate's: `ver`, `iss` and `tid`
//! against the tenant and the accepted token versions.
//!
//! Each step is a function of a [`ParsedToken`], so the authenticator can run them in one pass
//! with a key refetch between choosing keys and checking the signature; [`verify`] runs them all
//! against one key view.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use tokengate_keys::{KeyChoice, KeyView, MAX_KEYS_TRIED};
use tokengate_policy::claims::ClaimFailure;
use tokengate_policy::entra::{EntraFailure, EntraRules};
use tokengate_policy::keys::KeyFingerprint;
use tokengate_policy::{IssuerRule, Verification, VerificationKey};

use crate::reject::{RejectReason, Rejection};
use crate::token::ParsedToken;
use crate::trace::Trace;

/// A token that passed every check of its policy.
#[derive(Clone, Debug)]
pub struct VerifiedToken {
    /// The claims; once verified, only those the policy reads later (see
    /// [`keep_claims`](Self::keep_claims)).
    pub claims: Map<String, Value>,
    pub algorithm: Signing,
    pub kid: Option<String>,
    pub issuer: Option<String>,
    pub times: Times,
    /// The key whose signature verified the token; `None` for unsigned tokens.
    pub verified_by: Option<KeyFingerprint>,
}

impl VerifiedToken {
    /// Drops every claim but the top-level ones named, so a cached token costs only what its
    /// route rules and headers read.
    pub fn keep_claims(&mut self, names: &[String]) {
        self.claims
            .retain(|name, _| names.iter().any(|kept| kept == name));
    }
}

/// How a token is signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// `alg: none`, accepted by policy.
    Unsigned,
    Signed(Algorithm),
}

impl fmt::Display for Signing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsigned => f.write_str("none"),
            // The variant names are the JOSE names.
            Self::Signed(alg) => write!(f, "{alg:?}"),
        }
    }
}

/// A token's `exp`, `nbf` and `iat`, kept to recheck them on every cache hit.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Times {
    pub expires_at: Option<f64>,
    pub not_before: Option<f64>,
    pub issued_at: Option<f64>,
}

/// Seconds since the Unix epoch, the scale of `exp`, `nbf` and `iat`.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Every check against one key view: no refetch (the authenticator adds that).
pub fn verify(
    token: &ParsedToken<'_>,
    rules: &Verification,
    keys: &KeyView<'_>,
    now: f64,
    trace: &mut dyn Trace,
) -> Result<VerifiedToken, Rejection> {
    let signing = check_algorithm(token, rules, trace)?;
    let verified_by = match signing {
        Signing::Unsigned => None,
        Signing::Signed(alg) => {
            let choice = keys.select(token.kid(), alg, rules.key_selection);
            Some(check_signature(token, alg, &choice, trace)?)
        }
    };
    check_claims(token, signing, verified_by, rules, keys, now, trace)
}

/// The algorithm allow-list (and `requireSignedTokens`).
pub fn check_algorithm(
    token: &ParsedToken<'_>,
    rules: &Verification,
    trace: &mut dyn Trace,
) -> Result<Signing, Rejection> {
    let alg_name = token.alg();
    if alg_name == "none" {
        if !rules.allow_unsigned {
            return Err(Rejection::new(
                RejectReason::TokenAlgorithmNotAllowed,
                "unsigned token (alg none) refused: requireSignedTokens",
            ));
        }
        if !token.is_unsigned() {
            return Err(Rejection::new(
                RejectReason::JwtInvalid,
                "alg none with a signature",
            ));
        }
        trace.step(
            "signature",
            true,
            format_args!("unsigned token accepted by policy"),
        );
        return Ok(Signing::Unsigned);
    }
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
    // Told apart from a wrong signature before any key is looked for.
    token.signature()?;
    trace.step("algorithm", true, format_args!("{alg_name} is allowed"));
    Ok(Signing::Signed(alg))
}

/// Whether a refetch of the key sets might change `choice`: the token's key is not among the
/// keys we hold.
pub fn names_unknown_key(token: &ParsedToken<'_>, choice: &KeyChoice<'_>) -> bool {
    match choice {
        KeyChoice::NotFound => true,
        // With a kid, the key it names may be about to be published.
        KeyChoice::KidRequired { .. } => token.kid().is_some(),
        KeyChoice::Try { .. } => false,
    }
}

/// Checks the signature with the chosen keys; the fingerprint of the key that verified it.
pub fn check_signature(
    token: &ParsedToken<'_>,
    alg: Algorithm,
    choice: &KeyChoice<'_>,
    trace: &mut dyn Trace,
) -> Result<KeyFingerprint, Rejection> {
    let (keys, fitting) = match choice {
        KeyChoice::Try { keys, fitting } => (keys, *fitting),
        KeyChoice::NotFound => {
            let detail = match token.kid() {
                Some(kid) => format!("no key with kid {kid:?} verifies {alg:?}"),
                None => format!("no key without a kid verifies {alg:?}"),
            };
            return Err(Rejection::new(
                RejectReason::TokenSignatureKeyNotFound,
                detail,
            ));
        }
        KeyChoice::KidRequired { fitting } => {
            let detail = match token.kid() {
                Some(kid) => format!(
                    "no key has kid {kid:?} and {fitting} keys without an id verify {alg:?}: keys are chosen by kid (keySelection ByKid)"
                ),
                None => format!(
                    "the token has no kid and {fitting} keys verify {alg:?}: keys are chosen by kid (keySelection ByKid)"
                ),
            };
            return Err(Rejection::new(
                RejectReason::TokenSignatureKeyNotFound,
                detail,
            ));
        }
    };
    let signature = token.signature()?;
    let message = token.signed_message();
    match keys
        .iter()
        .find(|key| verify_signature(signature, message, key, alg))
    {
        Some(key) => {
            trace.step(
                "signature",
                true,
                format_args!(
                    "verified with key {}",
                    key.kid.as_deref().unwrap_or("(no kid)")
                ),
            );
            Ok(*key.fingerprint())
        }
        None if fitting > keys.len() => Err(Rejection::new(
            RejectReason::TokenSignatureInvalid,
            format!(
                "signature does not verify with the {} keys tried of {fitting} candidates (at most {MAX_KEYS_TRIED} are tried)",
                keys.len()
            ),
        )),
        None => Err(Rejection::new(
            RejectReason::TokenSignatureInvalid,
            format!(
                "signature does not verify with {} candidate key(s)",
                keys.len()
            ),
        )),
    }
}

fn verify_signature(
    signature: &[u8],
    message: &[u8],
    key: &VerificationKey,
    alg: Algorithm,
) -> bool {
    let Some(provider) = jsonwebtoken::crypto::CryptoProvider::try_get_default() else {
        return false;
    };
    let Ok(verifier) = (provider.verifier_factory)(&alg, &key.key) else {
        return false;
    };
    // The trait takes the signature as a `Vec`.
    verifier.verify(message, &signature.to_vec()).is_ok()
}

/// The payload's checks, once the signature holds: times, issuer, audience, (Entra) client
/// application, required claims.
pub fn check_claims(
    token: &ParsedToken<'_>,
    algorithm: Signing,
    verified_by: Option<KeyFingerprint>,
    rules: &Verification,
    keys: &KeyView<'_>,
    now: f64,
    trace: &mut dyn Trace,
) -> Result<VerifiedToken, Rejection> {
    let claims = token.claims()?;
    let mut times = Times {
        expires_at: numeric_claim(&claims, "exp")?,
        not_before: numeric_claim(&claims, "nbf")?,
        issued_at: None,
    };
    check_expiry(&times, rules, now, trace)?;
    // Read after exp and nbf are checked, so an expired token is refused as expired.
    times.issued_at = numeric_claim(&claims, "iat")?;
    check_issued_at(&times, rules, now, trace)?;

    let issuer = claims.get("iss").and_then(Value::as_str).map(str::to_owned);
    let entra = match &rules.entra {
        Some(entra) => {
            let identity = entra
                .check_issuer(&claims, keys.discovery_issuers().next())
                .map_err(entra_rejection)?;
            trace.step(
                "issuer",
                true,
                format_args!(
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
                format_args!("{} is allowed", issuer.as_deref().unwrap_or("(any)")),
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
        trace.step(
            "audience",
            false,
            format_args!("{}", audience_values(&claims)),
        );
        return Err(rejection);
    }
    trace.step("audience", true, format_args!("allowed"));

    if let Some((entra, version)) = entra {
        let (claim, client) = entra
            .check_client(&claims, version)
            .map_err(entra_rejection)?;
        trace.step(
            "client application",
            true,
            format_args!("{claim} {client} is allowed"),
        );
    }

    for requirement in &rules.required_claims {
        requirement.check(&claims).map_err(claim_rejection)?;
        trace.step(
            "claim",
            true,
            format_args!("{} satisfied", requirement.path.as_str()),
        );
    }

    Ok(VerifiedToken {
        claims,
        algorithm,
        kid: token.kid().map(str::to_owned),
        issuer,
        times,
        verified_by,
    })
}

/// `exp`, `nbf` and `iat` against the clock, with the policy's skew. Also rerun on cache hits.
pub fn check_times(
    times: &Times,
    rules: &Verification,
    now: f64,
    trace: &mut dyn Trace,
) -> Result<(), Rejection> {
    check_expiry(times, rules, now, trace)?;
    check_issued_at(times, rules, now, trace)
}

fn check_expiry(
    times: &Times,
    rules: &Verification,
    now: f64,
    trace: &mut dyn Trace,
) -> Result<(), Rejection> {
    let skew = rules.clock_skew.as_secs_f64();
    match times.expires_at {
        None if rules.require_expiration_time => {
            return Err(Rejection::new(
                RejectReason::TokenClaimNotFound,
                "exp is required (requireExpirationTime)",
            ));
        }
        None => {}
        Some(exp) if now >= exp + skew => {
            trace.step("exp", false, format_args!("expired {:.0}s ago", now - exp));
            return Err(Rejection::new(RejectReason::TokenExpired, "exp has passed"));
        }
        Some(exp) => trace.step("exp", true, format_args!("expires in {:.0}s", exp - now)),
    }
    if let Some(nbf) = times.not_before {
        if now + skew < nbf {
            trace.step("nbf", false, format_args!("valid in {:.0}s", nbf - now));
            return Err(Rejection::new(
                RejectReason::TokenNotYetValid,
                "nbf is in the future",
            ));
        }
        trace.step("nbf", true, format_args!("reached"));
    }
    Ok(())
}

fn check_issued_at(
    times: &Times,
    rules: &Verification,
    now: f64,
    trace: &mut dyn Trace,
) -> Result<(), Rejection> {
    let Some(iat) = times.issued_at else {
        return Ok(());
    };
    if now + rules.clock_skew.as_secs_f64() < iat {
        trace.step(
            "iat",
            false,
            format_args!("issued {:.0}s in the future", iat - now),
        );
        return Err(Rejection::new(
            RejectReason::TokenNotYetValid,
            "iat is in the future",
        ));
    }
    trace.step("iat", true, format_args!("not in the future"));
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

#[cfg(test)]
mod tests {
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::json;
    use tokengate_testkit::idp::{EntraTokenVersion, IdentityProvider, KeyFamily};

    use super::*;
    use crate::testing::{hmac_token, policy, secret_base64, with_header};
    use crate::trace::NoTrace;

    const ISSUER: &str = "https://issuer.test";

    /// Two named HMAC keys (secrets of bytes 1 and 2), one issuer, one audience, one claim.
    fn hmac_policy(extra: &str) -> tokengate_policy::CompiledPolicy {
        policy(&format!(
            "  validateJwt:\n    issuerSigningKeys: [{{id: k1, value: \"{}\"}}, {{id: k2, value: \"{}\"}}]\n    algorithms: [HS256]\n    issuers: [\"{ISSUER}\"]\n    audiences: [api://unit]\n    requiredClaims: [{{name: scp, separator: \" \", values: [read]}}]\n{extra}",
            secret_base64(1),
            secret_base64(2)
        ))
    }

    fn claims(now: f64) -> Value {
        let now = now as u64;
        json!({"iss": ISSUER, "aud": "api://unit", "sub": "s", "scp": "read write",
               "iat": now, "nbf": now, "exp": now + 3600})
    }

    fn header(kid: Option<&str>) -> Value {
        match kid {
            Some(kid) => json!({"alg": "HS256", "typ": "JWT", "kid": kid}),
            None => json!({"alg": "HS256", "typ": "JWT"}),
        }
    }

    fn run(
        policy: &tokengate_policy::CompiledPolicy,
        token: &str,
        now: f64,
    ) -> Result<VerifiedToken, Rejection> {
        let view = KeyView {
            static_keys: &policy.verification.static_keys,
            remote: Vec::new(),
        };
        let parsed = ParsedToken::parse(token)?;
        verify(&parsed, &policy.verification, &view, now, &mut NoTrace)
    }

    #[test]
    fn a_valid_token_passes_with_its_key_times_and_issuer() {
        let policy = hmac_policy("");
        let now = unix_now();
        let verified = run(
            &policy,
            &hmac_token(&header(Some("k2")), &claims(now), 2),
            now,
        )
        .expect("valid");
        assert_eq!(verified.algorithm, Signing::Signed(Algorithm::HS256));
        assert_eq!(verified.algorithm.to_string(), "HS256");
        assert_eq!(verified.kid.as_deref(), Some("k2"));
        assert_eq!(verified.issuer.as_deref(), Some(ISSUER));
        assert_eq!(
            verified.verified_by,
            Some(*policy.verification.static_keys[1].fingerprint())
        );
        assert_eq!(verified.times.expires_at, Some((now as u64 + 3600) as f64));
    }

    /// Each reason code the verifier gives, from a token that differs from a valid one in one
    /// way only.
    #[test]
    fn each_reason_code() {
        let policy = hmac_policy("");
        let now = unix_now();
        let with = |change: &dyn Fn(&mut Value)| {
            let mut claims = claims(now);
            change(&mut claims);
            hmac_token(&header(Some("k1")), &claims, 1)
        };
        let valid = with(&|_| {});
        let cases: Vec<(&str, String, RejectReason, &str)> = vec![
            (
                "garbage",
                "garbage".into(),
                RejectReason::JwtInvalid,
                "expected 3 segments, found 1",
            ),
            (
                "payload not JSON",
                {
                    let (signed_header, _) = valid.split_once('.').expect("dot");
                    let signed = format!("{signed_header}.bm90IGpzb24");
                    let key = jsonwebtoken::EncodingKey::from_secret(&[1; 32]).expect("key");
                    let signature =
                        jsonwebtoken::crypto::sign(signed.as_bytes(), &key, Algorithm::HS256)
                            .expect("signs");
                    format!("{signed}.{signature}")
                },
                RejectReason::JwtInvalid,
                "payload is not JSON",
            ),
            (
                "signature not base64url",
                format!("{}.%%", valid.rsplit_once('.').expect("dot").0),
                RejectReason::JwtInvalid,
                "signature is not base64url",
            ),
            (
                "exp not a number",
                with(&|c| c["exp"] = json!("tomorrow")),
                RejectReason::JwtInvalid,
                "exp is not a NumericDate",
            ),
            (
                "unsigned",
                format!(
                    "{}.{}.",
                    URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
                    URL_SAFE_NO_PAD.encode(claims(now).to_string())
                ),
                RejectReason::TokenAlgorithmNotAllowed,
                "unsigned token (alg none) refused: requireSignedTokens",
            ),
            (
                "algorithm not allowed",
                with_header(&valid, &json!({"alg": "HS384", "kid": "k1"})),
                RejectReason::TokenAlgorithmNotAllowed,
                "algorithm HS384 is not allowed",
            ),
            (
                "unknown algorithm",
                with_header(&valid, &json!({"alg": "XS256", "kid": "k1"})),
                RejectReason::TokenAlgorithmNotAllowed,
                "unknown algorithm XS256",
            ),
            (
                "unknown kid",
                with_header(&valid, &header(Some("k9"))),
                RejectReason::TokenSignatureKeyNotFound,
                "no key with kid \"k9\" verifies HS256",
            ),
            (
                "no kid, two keys",
                with_header(&valid, &header(None)),
                RejectReason::TokenSignatureKeyNotFound,
                "the token has no kid and 2 keys verify HS256: keys are chosen by kid (keySelection ByKid)",
            ),
            (
                "wrong key",
                hmac_token(&header(Some("k1")), &claims(now), 2),
                RejectReason::TokenSignatureInvalid,
                "signature does not verify with 1 candidate key(s)",
            ),
            (
                "expired",
                with(&|c| c["exp"] = json!(now as u64 - 10)),
                RejectReason::TokenExpired,
                "exp has passed",
            ),
            (
                "no exp",
                with(&|c| drop(c.as_object_mut().map(|o| o.remove("exp")))),
                RejectReason::TokenClaimNotFound,
                "exp is required (requireExpirationTime)",
            ),
            (
                "nbf ahead",
                with(&|c| c["nbf"] = json!(now as u64 + 60)),
                RejectReason::TokenNotYetValid,
                "nbf is in the future",
            ),
            (
                "iat ahead",
                with(&|c| c["iat"] = json!(now as u64 + 60)),
                RejectReason::TokenNotYetValid,
                "iat is in the future",
            ),
            (
                "expired, odd iat",
                with(&|c| {
                    c["exp"] = json!(now as u64 - 10);
                    c["iat"] = json!("yesterday");
                }),
                RejectReason::TokenExpired,
                "exp has passed",
            ),
            (
                "other issuer",
                with(&|c| c["iss"] = json!("https://elsewhere")),
                RejectReason::TokenIssuerNotAllowed,
                "iss is not an accepted issuer",
            ),
            (
                "no issuer",
                with(&|c| drop(c.as_object_mut().map(|o| o.remove("iss")))),
                RejectReason::TokenIssuerNotAllowed,
                "iss is missing",
            ),
            (
                "other audience",
                with(&|c| c["aud"] = json!(["api://other"])),
                RejectReason::TokenAudienceNotAllowed,
                "aud is not an accepted audience",
            ),
            (
                "required claim missing",
                with(&|c| drop(c.as_object_mut().map(|o| o.remove("scp")))),
                RejectReason::TokenClaimNotFound,
                "claim scp is missing",
            ),
            (
                "required claim value",
                with(&|c| c["scp"] = json!("write")),
                RejectReason::TokenClaimValueNotAllowed,
                "claim scp has no accepted value",
            ),
        ];
        for (what, token, reason, detail) in cases {
            let rejection = run(&policy, &token, now).expect_err(what);
            assert_eq!(
                (rejection.reason, rejection.detail.as_str()),
                (reason, detail),
                "{what}"
            );
        }
    }

    #[test]
    fn clock_skew_applies_to_every_time() {
        let policy = hmac_policy("    clockSkew: 30s\n");
        let now = unix_now();
        let mut claims = claims(now);
        claims["exp"] = json!(now as u64 - 10);
        claims["nbf"] = json!(now as u64 + 10);
        claims["iat"] = json!(now as u64 + 10);
        run(&policy, &hmac_token(&header(Some("k1")), &claims, 1), now).expect("within skew");
    }

    #[test]
    fn unsigned_tokens_pass_only_when_the_policy_allows_them() {
        let policy =
            policy("  validateJwt:\n    requireSignedTokens: false\n    algorithms: [none]\n");
        let now = unix_now();
        let body = URL_SAFE_NO_PAD.encode(claims(now).to_string());
        let head = URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#);
        let verified = run(&policy, &format!("{head}.{body}."), now).expect("accepted");
        assert_eq!(verified.algorithm, Signing::Unsigned);
        assert_eq!(verified.verified_by, None);
        let rejection = run(&policy, &format!("{head}.{body}.c2ln"), now).expect_err("signed");
        assert_eq!(rejection.detail, "alg none with a signature");
    }

    /// `keySelection: TryAll`: a token without a kid is checked against the keys that fit, but
    /// never more than four.
    #[test]
    fn try_all_checks_at_most_four_keys() {
        let keys: Vec<String> = (1..=6u8)
            .map(|byte| format!("{{value: \"{}\"}}", secret_base64(byte)))
            .collect();
        let policy = policy(&format!(
            "  validateJwt:\n    issuerSigningKeys: [{}]\n    algorithms: [HS256]\n    keySelection: TryAll\n",
            keys.join(", ")
        ));
        let now = unix_now();
        let verified = run(&policy, &hmac_token(&header(None), &claims(now), 3), now)
            .expect("the third key verifies");
        assert_eq!(
            verified.verified_by,
            Some(*policy.verification.static_keys[2].fingerprint())
        );
        // A kid no key has is answered by the keys without an id, within the same bound.
        run(
            &policy,
            &hmac_token(&header(Some("nope")), &claims(now), 4),
            now,
        )
        .expect("the fourth key verifies");
        let rejection = run(&policy, &hmac_token(&header(None), &claims(now), 6), now)
            .expect_err("the sixth key is past the bound");
        assert_eq!(rejection.reason, RejectReason::TokenSignatureInvalid);
        assert_eq!(
            rejection.detail,
            "signature does not verify with the 4 keys tried of 6 candidates (at most 4 are tried)"
        );
    }

    #[test]
    fn a_single_key_serves_tokens_without_a_kid() {
        let policy = policy(&format!(
            "  validateJwt:\n    issuerSigningKeys: [{{id: only, value: \"{}\"}}]\n    algorithms: [HS256]\n",
            secret_base64(1)
        ));
        let now = unix_now();
        run(&policy, &hmac_token(&header(None), &claims(now), 1), now).expect("one key fits");
    }

    #[tokio::test]
    async fn entra_refuses_other_client_applications() {
        const TENANT: &str = "4a5f1b7e-2c3d-4e5f-8a9b-0c1d2e3f4a5b";
        const API: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
        const CLIENT: &str = "11111111-2222-4333-8444-555555555555";
        let idp = IdentityProvider::start_entra(TENANT)
            .await
            .expect("provider");
        let policy = policy(&format!(
            "  validateAzureAdToken:\n    tenantId: {TENANT}\n    authenticationEndpoint: {}\n    backendApplicationIds: [{API}]\n    clientApplicationIds: [{CLIENT}]\n",
            idp.base_url()
        ));
        let key =
            VerificationKey::from_jwk_value(&idp.current_key(KeyFamily::Rsa).jwk).expect("RSA key");
        let view = KeyView {
            static_keys: &[],
            remote: vec![std::sync::Arc::new(tokengate_keys::SourceKeys::of(
                vec![key],
                Some(idp.issuer().to_owned()),
            ))],
        };
        let now = unix_now() + 1.0;
        let check = |client: &str| {
            let claims = idp.entra_claims(EntraTokenVersion::V2, TENANT, client, API);
            let token = idp.sign(Algorithm::RS256, &claims);
            let parsed = ParsedToken::parse(&token)?;
            verify(&parsed, &policy.verification, &view, now, &mut NoTrace)
        };
        check(CLIENT).expect("the allowed client");
        let rejection = check("99999999-2222-4333-8444-555555555555").expect_err("another");
        assert_eq!(
            rejection.reason,
            RejectReason::TokenClientApplicationNotAllowed
        );
    }
}
