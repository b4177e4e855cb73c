//! The seam between the decision and the forwarded request. Before the gate judges a request,
//! its method, path and headers are put in the one form the application will receive; what
//! cannot be made unambiguous is refused with 400. The gate then judges exactly what is
//! forwarded.

use std::fmt;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::PathAndQuery;
use http::{Method, Uri, Version};
use tokengate_policy::CompiledPolicy;
use tokengate_policy::routes::PathRefusal;
use tokengate_policy::spec::UnderscoreHeaders;

/// A request the sidecar will not judge, because the application could read it differently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Path(PathRefusal),
    /// `CONNECT`: a tunnel to wherever the client names.
    Method,
    /// A method override (`X-HTTP-Method-Override`, `_method`): rules judge the method on the
    /// request line, and the application would act on another.
    MethodOverride(String),
    /// A header name with `_` under `headersWithUnderscores: Reject`.
    UnderscoreHeader(String),
}

impl Refusal {
    /// Reason code for responses, metrics and logs (bounded).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Path(_) => "PathNotAllowed",
            Self::Method => "MethodNotAllowed",
            Self::MethodOverride(_) => "MethodOverrideNotAllowed",
            Self::UnderscoreHeader(_) => "HeaderNotAllowed",
        }
    }

    /// What the client is told: fixed phrases, no request data.
    pub fn client_message(&self) -> String {
        match self {
            Self::Path(refusal) => format!("the path contains {refusal}"),
            Self::Method => "CONNECT is not served".to_owned(),
            Self::MethodOverride(_) => "method overrides are not accepted".to_owned(),
            Self::UnderscoreHeader(_) => {
                "header names with underscores are not accepted".to_owned()
            }
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MethodOverride(name) => write!(f, "method override {name:?}"),
            Self::UnderscoreHeader(name) => write!(f, "header {name:?} has an underscore"),
            other => f.write_str(&other.client_message()),
        }
    }
}

/// What preparing found out about the request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prepared {
    /// A CORS preflight the policy lets through without a token.
    pub cors_preflight: bool,
}

/// Header names (any `_`/`-` spelling) that carry a method override in common frameworks.
// Header names removed from every request and response, parsed once: a `&str` name is parsed
// and classified again on each use.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

const METHOD_OVERRIDE_HEADERS: &[&str] = &[
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];
/// Query parameter carrying a method override (Rails, Laravel, Symfony, method-override).
const METHOD_OVERRIDE_PARAMETER: &str = "_method";

/// Puts a request in the form the application will receive, under `policy`. Idempotent: a
/// prepared request is left unchanged by a second call with the same policy.
pub fn prepare(
    method: &mut Method,
    uri: &mut Uri,
    headers: &mut HeaderMap,
    version: Version,
    body_is_empty: bool,
    policy: &CompiledPolicy,
) -> Result<Prepared, Refusal> {
    prepare_method(method)?;
    prepare_path(uri, policy)?;
    refuse_method_overrides(uri, headers)?;
    prepare_headers(headers, version, policy)?;
    let cors_preflight = policy.requests.bypass_cors_preflight
        && *method == Method::OPTIONS
        && body_is_empty
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    Ok(Prepared { cors_preflight })
}

/// Methods in upper case, as most frameworks read them and as rules are written.
fn prepare_method(method: &mut Method) -> Result<(), Refusal> {
    let text = method.as_str();
    if text.bytes().any(|b| b.is_ascii_lowercase()) {
        let upper = text.to_ascii_uppercase();
        // An upper-cased token is still a token.
        if let Ok(upper) = Method::from_bytes(upper.as_bytes()) {
            *method = upper;
        }
    }
    if *method == Method::CONNECT {
        return Err(Refusal::Method);
    }
    Ok(())
}

fn prepare_path(uri: &mut Uri, policy: &CompiledPolicy) -> Result<(), Refusal> {
    let canonical = policy
        .rules
        .canonical_path(uri.path())
        .map_err(Refusal::Path)?;
    if canonical == uri.path() {
        return Ok(());
    }
    let path_and_query = match uri.query() {
        Some(query) => format!("{canonical}?{query}"),
        None => canonical.into_owned(),
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        PathAndQuery::try_from(path_and_query)
            .map_err(|_| Refusal::Path(PathRefusal::NotOriginForm))?,
    );
    *uri = Uri::from_parts(parts).map_err(|_| Refusal::Path(PathRefusal::NotOriginForm))?;
    Ok(())
}

fn refuse_method_overrides(uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
    if let Some(name) = headers.keys().find(|name| {
        METHOD_OVERRIDE_HEADERS
            .iter()
            .any(|m| same_spelling(name.as_str(), m))
    }) {
        return Err(Refusal::MethodOverride(name.as_str().to_owned()));
    }
    // Most queries name no method at all; an encoded name has a `%`.
    if let Some(query) = uri.query()
        && (query.contains("method") || query.contains('%'))
    {
        let overridden = query.split(['&', ';']).any(|pair| {
            url::form_urlencoded::parse(pair.as_bytes())
                .next()
                .is_some_and(|(key, _)| key.trim() == METHOD_OVERRIDE_PARAMETER)
        });
        if overridden {
            return Err(Refusal::MethodOverride(
                METHOD_OVERRIDE_PARAMETER.to_owned(),
            ));
        }
    }
    Ok(())
}

/// Hop-by-hop headers, upgrades, underscores and the spellings of the headers the sidecar
/// writes itself.
fn prepare_headers(
    headers: &mut HeaderMap,
    version: Version,
    policy: &CompiledPolicy,
) -> Result<(), Refusal> {
    let upgrades = allowed_upgrades(headers, version, &policy.requests.upgrades);
    remove_hop_by_hop(headers, upgrades.is_some());
    // Only the HTTP/1.1 upgrade mechanism uses it; h2c is never passed on.
    headers.remove(HTTP2_SETTINGS);
    if let Some(upgrades) = upgrades
        && let Ok(value) = HeaderValue::from_str(&upgrades.join(", "))
    {
        headers.insert(header::UPGRADE, value);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }

    let underscored: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().contains('_'))
        .cloned()
        .collect();
    match policy.requests.headers_with_underscores {
        UnderscoreHeaders::Drop => {
            for name in &underscored {
                headers.remove(name);
            }
        }
        UnderscoreHeaders::Reject => {
            if let Some(name) = underscored.first() {
                return Err(Refusal::UnderscoreHeader(name.as_str().to_owned()));
            }
        }
        UnderscoreHeaders::Keep => {}
    }

    // Only the sidecar writes claim headers: every spelling a server may map to one of them
    // goes, even where authentication is off. The token header and X-Forwarded-For keep their
    // exact name (judged, and appended to) but lose their other spellings.
    let token_header = policy.extraction.header.as_str();
    let forged: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            let name = name.as_str();
            policy
                .claims_to_headers
                .iter()
                .any(|mapping| same_spelling(name, &mapping.header))
                || (name != token_header && same_spelling(name, token_header))
                || (name != "x-forwarded-for" && same_spelling(name, "x-forwarded-for"))
        })
        .cloned()
        .collect();
    for name in forged {
        headers.remove(name);
    }
    Ok(())
}

/// Whether two header names are one to CGI-style servers (`X_User_Id` and `x-user-id` are
/// both `HTTP_X_USER_ID` to PHP, WSGI and Rack): equal but for case and `_` against `-`.
fn same_spelling(a: &str, b: &str) -> bool {
    let fold = |c: u8| match c {
        b'_' => b'-',
        c => c.to_ascii_lowercase(),
    };
    a.len() == b.len() && a.bytes().zip(b.bytes()).all(|(x, y)| fold(x) == fold(y))
}

/// The offered upgrade protocols the policy allows, when the request asks for an upgrade
/// (`Connection: upgrade` over HTTP/1.1) and at least one is allowed.
fn allowed_upgrades(
    headers: &HeaderMap,
    version: Version,
    allowed: &[String],
) -> Option<Vec<String>> {
    if version != Version::HTTP_11 || !connection_tokens(headers).any(|t| t == b"upgrade") {
        return None;
    }
    let offered: Vec<String> = headers
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|token| String::from_utf8_lossy(token.trim_ascii()).to_ascii_lowercase())
        .filter(|protocol| {
            let name = protocol.split('/').next().unwrap_or_default();
            allowed.iter().any(|a| a == protocol || a == name)
        })
        .collect();
    (!offered.is_empty()).then_some(offered)
}

/// The tokens of every `Connection` header, read as bytes (a value that is not visible ASCII
/// still names the headers it names), trimmed and lower-cased.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = Vec<u8>> + '_ {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|token| token.trim_ascii().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
}

/// Whether a prepared request keeps an upgrade (only allowed ones survive preparation).
pub(crate) fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE) && connection_tokens(headers).any(|t| t == b"upgrade")
}

/// RFC 9110 7.6.1: connection-specific headers do not cross a proxy.
pub(crate) fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let listed: Vec<HeaderName> = connection_tokens(headers)
        .filter_map(|token| HeaderName::from_bytes(&token).ok())
        .filter(|name| !(keep_upgrade && name == header::UPGRADE))
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in [
        KEEP_ALIVE,
        PROXY_CONNECTION,
        header::PROXY_AUTHORIZATION,
        header::TRAILER,
        header::TRANSFER_ENCODING,
    ] {
        headers.remove(name);
    }
    // gRPC needs `te: trailers` end to end; any other TE is hop-by-hop.
    if headers
        .get(header::TE)
        .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
    if !keep_upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

/// Whether the `Upgrade` of a 101 response is one the request offered.
pub(crate) fn upgrade_answered(request: &HeaderMap, response: &HeaderMap) -> bool {
    let offered: Vec<Vec<u8>> = request
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|token| token.trim_ascii().to_ascii_lowercase())
        .collect();
    let chosen: Vec<Vec<u8>> = response
        .get_all(header::UPGRADE)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(|token| token.trim_ascii().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect();
    !chosen.is_empty() && chosen.iter().all(|token| offered.contains(token))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_but_grpc_te_stays() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        headers.insert("x-app", HeaderValue::from_static("kept"));
        remove_hop_by_hop(&mut headers, false);
        assert!(headers.get("x-private").is_none());
        assert!(headers.get("keep-alive").is_none());
        assert!(headers.get(header::CONNECTION).is_none());
        assert_eq!(
            headers.get(header::TE).map(|v| v.as_bytes()),
            Some(&b"trailers"[..])
        );
        assert!(headers.get("x-app").is_some());
    }

    #[test]
    fn connection_values_that_are_not_ascii_still_name_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-private, \xff\xfe, X-Other").expect("opaque bytes"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("x-other", HeaderValue::from_static("1"));
        remove_hop_by_hop(&mut headers, false);
        assert!(headers.get("x-private").is_none());
        assert!(headers.get("x-other").is_none());
    }

    #[test]
    fn upgrade_headers_survive_an_upgrade() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&headers));
        remove_hop_by_hop(&mut headers, true);
        assert!(headers.get(header::UPGRADE).is_some());
        assert!(headers.get(header::CONNECTION).is_some());
    }

    #[test]
    fn only_listed_upgrades_are_kept() {
        let allowed = vec!["websocket".to_owned()];
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert_eq!(allowed_upgrades(&headers, Version::HTTP_11, &allowed), None);
        headers.insert(header::UPGRADE, HeaderValue::from_static("h2c, WebSocket"));
        assert_eq!(
            allowed_upgrades(&headers, Version::HTTP_11, &allowed),
            Some(vec!["websocket".to_owned()])
        );
        assert_eq!(allowed_upgrades(&headers, Version::HTTP_10, &allowed), None);
    }

    #[test]
    fn spellings_fold_case_and_underscores() {
        assert!(same_spelling("X_User_Id", "x-user-id"));
        assert!(same_spelling("x-user_id", "X_USER-ID"));
        assert!(!same_spelling("x-user-ids", "x-user-id"));
        assert!(!same_spelling("x.user.id", "x-user-id"));
    }

    #[test]
    fn a_101_must_answer_what_was_offered() {
        let mut request = HeaderMap::new();
        request.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        let mut response = HeaderMap::new();
        response.insert(header::UPGRADE, HeaderValue::from_static("WebSocket"));
        assert!(upgrade_answered(&request, &response));
        response.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        assert!(!upgrade_answered(&request, &response));
        assert!(!upgrade_answered(&HeaderMap::new(), &response));
    }
}
