//! The OAuth 2.0 token endpoint: client-credentials grant (RFC 6749 section 4.4) with client
//! authentication by form parameters or HTTP Basic (section 2.3.1), errors per section 5.2.

use std::collections::HashMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap};
use http::{HeaderValue, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response};
use serde_json::json;

use super::jws::{self, SignWith};
use super::keys::alg_name;
use super::routes::{Personality, Route};
use super::{Shared, entra, lock, unix_now};
use crate::idp::server::json_response;

/// Token requests are a few hundred bytes; anything far larger is not a token request.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// An RFC 6749 section 5.2 error response.
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
}

impl OAuthError {
    fn invalid_request(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            code: "invalid_request",
            description: description.into(),
        }
    }

    fn invalid_client(description: impl Into<String>) -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: description.into(),
        }
    }

    fn response(&self) -> Response<Full<Bytes>> {
        let mut resp = json_response(
            self.status,
            &json!({ "error": self.code, "error_description": self.description }),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"tokengate-idp\""),
            );
        }
        no_store(resp)
    }
}

/// Token responses must not be cached (RFC 6749 section 5.1).
fn no_store(mut resp: Response<Full<Bytes>>) -> Response<Full<Bytes>> {
    let headers = resp.headers_mut();
    headers.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    headers.insert(http::header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) async fn handle(
    shared: &Shared,
    route: &Route,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match grant(shared, route, req).await {
        Ok(resp) => no_store(resp),
        Err(err) => err.response(),
    }
}

async fn grant(
    shared: &Shared,
    route: &Route,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, OAuthError> {
    let (parts, body) = req.into_parts();
    let is_form = parts
        .headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !is_form {
        return Err(OAuthError::invalid_request(
            "Content-Type must be application/x-www-form-urlencoded",
        ));
    }
    let body = Limited::new(body, MAX_FORM_BYTES)
        .collect()
        .await
        .map_err(|e| OAuthError::invalid_request(format!("unreadable request body: {e}")))?
        .to_bytes();
    let form = parse_form(&body)?;

    match form.get("grant_type").map(String::as_str) {
        None => return Err(OAuthError::invalid_request("missing grant_type")),
        Some("client_credentials") => {}
        Some(other) => {
            return Err(OAuthError {
                status: StatusCode::BAD_REQUEST,
                code: "unsupported_grant_type",
                description: format!("grant_type {other:?} is not supported"),
            });
        }
    }

    let (client_id, client_secret) = client_credentials(&parts.headers, &form)?;
    let extra_claims = {
        let clients = lock(&shared.clients);
        match clients.get(&client_id) {
            Some(client) if client.secret == client_secret => client.extra_claims.clone(),
            _ => return Err(OAuthError::invalid_client("client authentication failed")),
        }
    };

    let resource = audience_from_scope(form.get("scope").map(String::as_str))?;

    let (alg, lifetime) = {
        let settings = lock(&shared.settings);
        (settings.token_alg, settings.token_lifetime)
    };
    let lifetime_secs = lifetime.as_secs();
    let mut claims = match (shared.personality, &route.tenant) {
        (Personality::Entra, Some(segment)) => {
            let granted = entra::grant(&lock(&shared.directory), segment, &resource);
            let (tenant, version, audience) =
                granted.map_err(|(code, description)| OAuthError {
                    status: StatusCode::BAD_REQUEST,
                    code,
                    description,
                })?;
            entra::access_token_claims(
                &shared.base_url,
                version,
                &tenant,
                &client_id,
                &audience,
                unix_now(),
                lifetime_secs,
            )
        }
        _ => Personality::generic_access_token_claims(
            &shared.issuer,
            &client_id,
            &resource,
            unix_now(),
            lifetime_secs,
        ),
    };
    if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra_claims.as_object()) {
        for (name, value) in extra {
            claims.insert(name.clone(), value.clone());
        }
    }

    let token = {
        let keys = lock(&shared.keys);
        let header = super::header_for(&keys, alg);
        jws::compact(
            &keys,
            header.to_string().as_bytes(),
            claims.to_string().as_bytes(),
            &SignWith::Current(alg),
        )
    };
    let token = token.map_err(|e| OAuthError {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        code: "server_error",
        description: format!("signing with {}: {e:#}", alg_name(alg)),
    })?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "access_token": token, "token_type": "Bearer", "expires_in": lifetime_secs }),
    ))
}

/// Parameters must not repeat (RFC 6749 section 3.2).
fn parse_form(body: &[u8]) -> Result<HashMap<String, String>, OAuthError> {
    let mut form = HashMap::new();
    for (name, value) in url::form_urlencoded::parse(body) {
        if form.insert(name.to_string(), value.into_owned()).is_some() {
            return Err(OAuthError::invalid_request(format!(
                "parameter {name:?} repeated"
            )));
        }
    }
    Ok(form)
}

/// The client's id and secret from exactly one authentication method.
fn client_credentials(
    headers: &HeaderMap,
    form: &HashMap<String, String>,
) -> Result<(String, String), OAuthError> {
    let basic = match headers.get(AUTHORIZATION) {
        None => None,
        Some(value) => Some(parse_basic(value).ok_or_else(|| {
            OAuthError::invalid_client("malformed Authorization header; expected Basic")
        })?),
    };
    let posted = form.get("client_secret");
    match (basic, posted) {
        (Some(_), Some(_)) => Err(OAuthError::invalid_request(
            "more than one client authentication method",
        )),
        (Some((id, secret)), None) => {
            if form.get("client_id").is_some_and(|form_id| *form_id != id) {
                return Err(OAuthError::invalid_request(
                    "client_id does not match Authorization",
                ));
            }
            Ok((id, secret))
        }
        (None, Some(secret)) => match form.get("client_id") {
            Some(id) => Ok((id.clone(), secret.clone())),
            None => Err(OAuthError::invalid_request("missing client_id")),
        },
        (None, None) => Err(OAuthError::invalid_client("no client authentication")),
    }
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`.
fn parse_basic(value: &HeaderValue) -> Option<(String, String)> {
    let value = value.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (id, secret) = decoded.split_once(':')?;
    Some((form_decode(id)?, form_decode(secret)?))
}

fn form_decode(s: &str) -> Option<String> {
    let plus_as_space = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// `<resource>/.default` names the resource the token is for; the audience is the resource.
fn audience_from_scope(scope: Option<&str>) -> Result<String, OAuthError> {
    let invalid = |description: String| OAuthError {
        status: StatusCode::BAD_REQUEST,
        code: "invalid_scope",
        description,
    };
    let scope =
        scope.ok_or_else(|| invalid("missing scope; expected <resource>/.default".into()))?;
    let mut scopes = scope.split(' ').filter(|s| !s.is_empty());
    let (Some(only), None) = (scopes.next(), scopes.next()) else {
        return Err(invalid(
            "expected exactly one scope, <resource>/.default".into(),
        ));
    };
    match only.strip_suffix("/.default") {
        Some(resource) if !resource.is_empty() => Ok(resource.to_owned()),
        _ => Err(invalid(format!(
            "scope {only:?} is not <resource>/.default"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_to_audience() {
        assert_eq!(
            audience_from_scope(Some("api://app/.default"))
                .ok()
                .as_deref(),
            Some("api://app")
        );
        assert!(audience_from_scope(Some("/.default")).is_err());
        assert!(audience_from_scope(Some("api://app")).is_err());
        assert!(audience_from_scope(Some("a/.default b/.default")).is_err());
        assert!(audience_from_scope(None).is_err());
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        let value = HeaderValue::from_str(&format!("Basic {}", STANDARD.encode("my+app:s%3Acret")))
            .expect("ascii header");
        assert_eq!(
            parse_basic(&value),
            Some(("my app".to_owned(), "s:cret".to_owned()))
        );
        assert_eq!(parse_basic(&HeaderValue::from_static("Bearer abc")), None);
        assert_eq!(parse_basic(&HeaderValue::from_static("Basic !!!")), None);
    }
}
