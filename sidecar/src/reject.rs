//! Why a request is refused, and the one place that turns a refusal into a response.

use std::fmt;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use tokengate_policy::spec::FailedValidation;

/// Reason codes shared by responses, metrics and logs: APIM's vocabulary plus ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    TokenNotPresent,
    TokenSchemeInvalid,
    JwtInvalid,
    TokenSignatureInvalid,
    TokenSignatureKeyNotFound,
    TokenAlgorithmNotAllowed,
    TokenExpired,
    TokenNotYetValid,
    TokenIssuerNotAllowed,
    TokenAudienceNotAllowed,
    TokenClaimNotFound,
    TokenClaimValueNotAllowed,
    TokenClientApplicationNotAllowed,
    KeysUnavailable,
    NoPolicy,
}

impl RejectReason {
    pub const ALL: [RejectReason; 15] = [
        Self::TokenNotPresent,
        Self::TokenSchemeInvalid,
        Self::JwtInvalid,
        Self::TokenSignatureInvalid,
        Self::TokenSignatureKeyNotFound,
        Self::TokenAlgorithmNotAllowed,
        Self::TokenExpired,
        Self::TokenNotYetValid,
        Self::TokenIssuerNotAllowed,
        Self::TokenAudienceNotAllowed,
        Self::TokenClaimNotFound,
        Self::TokenClaimValueNotAllowed,
        Self::TokenClientApplicationNotAllowed,
        Self::KeysUnavailable,
        Self::NoPolicy,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokenNotPresent => "TokenNotPresent",
            Self::TokenSchemeInvalid => "TokenSchemeInvalid",
            Self::JwtInvalid => "JwtInvalid",
            Self::TokenSignatureInvalid => "TokenSignatureInvalid",
            Self::TokenSignatureKeyNotFound => "TokenSignatureKeyNotFound",
            Self::TokenAlgorithmNotAllowed => "TokenAlgorithmNotAllowed",
            Self::TokenExpired => "TokenExpired",
            Self::TokenNotYetValid => "TokenNotYetValid",
            Self::TokenIssuerNotAllowed => "TokenIssuerNotAllowed",
            Self::TokenAudienceNotAllowed => "TokenAudienceNotAllowed",
            Self::TokenClaimNotFound => "TokenClaimNotFound",
            Self::TokenClaimValueNotAllowed => "TokenClaimValueNotAllowed",
            Self::TokenClientApplicationNotAllowed => "TokenClientApplicationNotAllowed",
            Self::KeysUnavailable => "KeysUnavailable",
            Self::NoPolicy => "NoPolicy",
        }
    }

    /// The RFC 6750 description a client sees. Generic on purpose: the token's contents stay
    /// out of responses and logs.
    fn description(self) -> &'static str {
        match self {
            Self::TokenNotPresent => "No access token was presented",
            Self::TokenSchemeInvalid => "The authorization scheme is not accepted",
            Self::JwtInvalid => "The token is not a well-formed JWT",
            Self::TokenSignatureInvalid => "The token signature is invalid",
            Self::TokenSignatureKeyNotFound => "The token was signed by an unknown key",
            Self::TokenAlgorithmNotAllowed => "The token signing algorithm is not allowed",
            Self::TokenExpired => "The token has expired",
            Self::TokenNotYetValid => "The token is not valid yet",
            Self::TokenIssuerNotAllowed => "The token issuer is not allowed",
            Self::TokenAudienceNotAllowed => "The token audience is not allowed",
            Self::TokenClaimNotFound => "A required claim is missing",
            Self::TokenClaimValueNotAllowed => "A required claim has no accepted value",
            Self::TokenClientApplicationNotAllowed => "The client application is not allowed",
            Self::KeysUnavailable => "Signing keys are not available",
            Self::NoPolicy => "No token policy applies to this workload",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the token failed the policy (401-style) or a route's extra claims (403).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Authentication,
    Authorization,
}

/// A refused request: the reason, and a detail safe to log: claim names and identifiers (`iss`,
/// `kid`, `alg`; in Entra mode the tenant and the client application id), never other values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub reason: RejectReason,
    pub stage: Stage,
    pub detail: String,
    /// A fixed phrase appended to the client's `error_description`, for mistakes the client can
    /// fix (a v1.0 token where v2.0 is required). Static, so no token value reaches a response.
    pub hint: Option<&'static str>,
}

impl Rejection {
    pub fn new(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            stage: Stage::Authentication,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn with_hint(mut self, hint: Option<&'static str>) -> Self {
        self.hint = hint;
        self
    }

    pub fn forbidden(reason: RejectReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            stage: Stage::Authorization,
            detail: detail.into(),
            hint: None,
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.detail.is_empty() {
            write!(f, "{}", self.reason)
        } else {
            write!(f, "{}: {}", self.reason, self.detail)
        }
    }
}

/// The response for a refusal. `policy` is `None` when no policy applies.
pub fn rejection_response(
    rejection: &Rejection,
    policy: Option<&FailedValidation>,
) -> Response<Bytes> {
    let (status, message, challenge) = match (rejection.reason, rejection.stage) {
        (RejectReason::KeysUnavailable, _) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Service Unavailable".to_owned(),
            None,
        ),
        (RejectReason::NoPolicy, _) => (StatusCode::FORBIDDEN, "Forbidden".to_owned(), None),
        (reason, Stage::Authorization) => (
            StatusCode::FORBIDDEN,
            "Forbidden".to_owned(),
            Some(format!(
                "Bearer error=\"insufficient_scope\", error_description=\"{}\"",
                description(reason, rejection.hint)
            )),
        ),
        (RejectReason::TokenNotPresent, Stage::Authentication) => {
            let (status, message) = configured(policy);
            // RFC 6750 3.1: no error code when the request carried no token at all.
            (status, message, Some("Bearer".to_owned()))
        }
        (reason, Stage::Authentication) => {
            let (status, message) = configured(policy);
            (
                status,
                message,
                Some(format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    description(reason, rejection.hint)
                )),
            )
        }
    };
    let body = serde_json::json!({
        "statusCode": status.as_u16(),
        "message": message,
        "reason": rejection.reason.as_str(),
    });
    let mut response = Response::new(Bytes::from(body.to_string()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(challenge) = challenge
        && let Ok(value) = HeaderValue::from_str(&challenge)
    {
        headers.insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

fn description(reason: RejectReason, hint: Option<&'static str>) -> String {
    match hint {
        Some(hint) => format!("{}: {hint}", reason.description()),
        None => reason.description().to_owned(),
    }
}

fn configured(policy: Option<&FailedValidation>) -> (StatusCode, String) {
    let fallback = FailedValidation::default();
    let failed = policy.unwrap_or(&fallback);
    let status = StatusCode::from_u16(failed.http_code).unwrap_or(StatusCode::UNAUTHORIZED);
    (status, failed.message.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(resp: &Response<Bytes>) -> Option<&str> {
        resp.headers()
            .get(header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
    }

    #[test]
    fn missing_token_gets_a_bare_challenge() {
        let resp = rejection_response(&Rejection::new(RejectReason::TokenNotPresent, ""), None);
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(header(&resp), Some("Bearer"));
    }

    #[test]
    fn invalid_token_uses_the_policy_code_and_message() {
        let failed = FailedValidation {
            http_code: 419,
            message: "Go away".into(),
        };
        let resp = rejection_response(
            &Rejection::new(RejectReason::TokenExpired, "exp"),
            Some(&failed),
        );
        assert_eq!(resp.status().as_u16(), 419);
        assert_eq!(
            header(&resp),
            Some("Bearer error=\"invalid_token\", error_description=\"The token has expired\"")
        );
        let body: serde_json::Value = serde_json::from_slice(resp.body()).expect("json body");
        assert_eq!(body["message"], "Go away");
        assert_eq!(body["reason"], "TokenExpired");
    }

    #[test]
    fn route_claims_answer_403_insufficient_scope() {
        let resp = rejection_response(
            &Rejection::forbidden(RejectReason::TokenClaimValueNotAllowed, "roles"),
            None,
        );
        assert_eq!(resp.status(), StatusCode::FORBIDDEN);
        assert!(header(&resp).is_some_and(|h| h.contains("insufficient_scope")));
    }

    #[test]
    fn a_hint_extends_the_description() {
        let resp = rejection_response(
            &Rejection::new(RejectReason::TokenIssuerNotAllowed, "v1.0 token").with_hint(Some(
                "a v1.0 token was presented where v2.0 tokens are required",
            )),
            None,
        );
        assert_eq!(
            header(&resp),
            Some(
                "Bearer error=\"invalid_token\", error_description=\"The token issuer is not allowed: a v1.0 token was presented where v2.0 tokens are required\""
            )
        );
    }

    #[test]
    fn keys_unavailable_is_503() {
        let resp = rejection_response(&Rejection::new(RejectReason::KeysUnavailable, ""), None);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(header(&resp), None);
    }
}
