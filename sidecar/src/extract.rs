//! Finding the token in a request: header (with scheme), query parameter, cookie.

use http::header::{COOKIE, HeaderMap};
use http::{HeaderValue, Uri};
use tokengate_policy::Extraction;

use crate::reject::{RejectReason, Rejection};

/// Where the token was found, so it can be removed before forwarding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenLocation {
    Header,
    Query,
    Cookie,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractedToken {
    pub token: String,
    pub location: TokenLocation,
}

/// The token of a request, `Ok(None)` when none of the sources carries one.
///
/// Every configured source is read. The same token in several sources is one token; different
/// tokens are refused like two `Authorization` headers, since the application might read the
/// one that was not verified.
pub fn extract(
    rules: &Extraction,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Option<ExtractedToken>, Rejection> {
    let sources = [
        (TokenLocation::Header, from_header(rules, headers)?),
        (TokenLocation::Query, from_query(rules, uri)?),
        (TokenLocation::Cookie, from_cookie(rules, headers)?),
    ];
    let mut found: Option<ExtractedToken> = None;
    for (location, token) in sources {
        let Some(token) = token else { continue };
        match &found {
            None => found = Some(ExtractedToken { token, location }),
            Some(first) if first.token == token => {}
            Some(first) => {
                return Err(Rejection::new(
                    RejectReason::JwtInvalid,
                    format!(
                        "different tokens in the {} and the {}",
                        first.location.as_str(),
                        location.as_str()
                    ),
                ));
            }
        }
    }
    if let Some(found) = &found
        && found.token.len() > rules.max_length
    {
        return Err(Rejection::new(
            RejectReason::JwtInvalid,
            format!(
                "token is {} bytes, over the {}-byte limit",
                found.token.len(),
                rules.max_length
            ),
        ));
    }
    Ok(found)
}

impl TokenLocation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Query => "query",
            Self::Cookie => "cookie",
        }
    }
}

fn from_header(rules: &Extraction, headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    let mut values = headers.get_all(rules.header.as_str()).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        // The application might read the other one: refuse the ambiguity.
        return Err(Rejection::new(
            RejectReason::JwtInvalid,
            format!("more than one {} header", rules.header),
        ));
    }
    let value = value.to_str().map_err(|_| {
        Rejection::new(
            RejectReason::JwtInvalid,
            format!("{} header is not visible ASCII", rules.header),
        )
    })?;
    let value = value.trim();
    let token = match &rules.scheme {
        None => value,
        Some(scheme) => {
            let (given, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
            if !given.eq_ignore_ascii_case(scheme) {
                return Err(Rejection::new(
                    RejectReason::TokenSchemeInvalid,
                    format!("{} header does not use the {scheme} scheme", rules.header),
                ));
            }
            rest.trim()
        }
    };
    if token.is_empty() {
        return Ok(None);
    }
    Ok(Some(token.to_owned()))
}

fn from_query(rules: &Extraction, uri: &Uri) -> Result<Option<String>, Rejection> {
    let (Some(name), Some(query)) = (&rules.query_parameter, uri.query()) else {
        return Ok(None);
    };
    let mut found = None;
    for pair in query_pairs(query) {
        let Some(value) = token_parameter(pair, name) else {
            continue;
        };
        if found.is_some() {
            return Err(Rejection::new(
                RejectReason::JwtInvalid,
                format!("query parameter {name} given more than once"),
            ));
        }
        found = Some(value);
    }
    Ok(found.filter(|t| !t.is_empty()))
}

fn from_cookie(rules: &Extraction, headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    let Some(name) = &rules.cookie else {
        return Ok(None);
    };
    let mut found = None;
    for (key, value) in cookie_pairs(headers) {
        if same_parameter_name(&percent_decode(key), name) {
            if found.is_some() {
                return Err(Rejection::new(
                    RejectReason::JwtInvalid,
                    format!("cookie {name} given more than once"),
                ));
            }
            found = Some(value.trim_matches('"').to_owned());
        }
    }
    Ok(found.filter(|t| !t.is_empty()))
}

fn cookie_pairs(headers: &HeaderMap) -> impl Iterator<Item = (&str, &str)> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim(), v.trim()))
        })
}

/// The raw `key=value` pairs of a query. `;` separates pairs too, as Rack and older Python
/// read it, so a token hidden behind one is still seen.
fn query_pairs(query: &str) -> impl Iterator<Item = &str> {
    query.split(['&', ';']).filter(|pair| !pair.is_empty())
}

/// The decoded value of a raw query pair when its name is the token parameter's.
fn token_parameter(pair: &str, name: &str) -> Option<String> {
    let (key, value) = url::form_urlencoded::parse(pair.as_bytes()).next()?;
    same_parameter_name(&key, name).then(|| value.into_owned())
}

/// Whether a decoded parameter or cookie name reaches the application as `name`: exactly, or
/// as PHP reads it (leading spaces dropped, ` `, `.` and `[` turned into `_`, `name[...]`
/// an array of `name`).
fn same_parameter_name(key: &str, name: &str) -> bool {
    if key == name {
        return true;
    }
    let key = key.trim_start_matches(' ');
    let base = match key.find('[') {
        Some(open) if key[open..].contains(']') => &key[..open],
        _ => key,
    };
    let mangled: String = base
        .chars()
        .map(|c| if matches!(c, ' ' | '.' | '[') { '_' } else { c })
        .collect();
    mangled == name
}

fn percent_decode(text: &str) -> String {
    percent_encoding::percent_decode_str(text)
        .decode_utf8_lossy()
        .into_owned()
}

/// Removes every configured token source from a request whose token must not reach the
/// application (`forwardToken: false`, or a token that was not verified): the token header
/// when it carries the token's scheme (another scheme, such as `Basic` on a route without
/// authentication, is left alone), every query parameter and cookie the application would read
/// under the token's names. Other query parameters keep their exact bytes.
pub fn strip_token_sources(rules: &Extraction, headers: &mut HeaderMap, uri: &mut Uri) {
    let header_carries_token =
        headers
            .get_all(rules.header.as_str())
            .iter()
            .any(|value| match &rules.scheme {
                None => true,
                Some(scheme) => {
                    let value = value.as_bytes().trim_ascii_start();
                    value.len() >= scheme.len()
                        && value[..scheme.len()].eq_ignore_ascii_case(scheme.as_bytes())
                        && value
                            .get(scheme.len())
                            .is_none_or(|b| *b == b' ' || *b == b'\t')
                }
            });
    if header_carries_token {
        headers.remove(rules.header.as_str());
    }
    if let (Some(name), Some(query)) = (&rules.query_parameter, uri.query()) {
        let pairs: Vec<&str> = query_pairs(query).collect();
        let kept: Vec<&str> = pairs
            .iter()
            .copied()
            .filter(|pair| token_parameter(pair, name).is_none())
            .collect();
        if kept.len() != pairs.len() {
            let mut path_and_query = uri.path().to_owned();
            if !kept.is_empty() {
                path_and_query.push('?');
                path_and_query.push_str(&kept.join("&"));
            }
            let mut parts = uri.clone().into_parts();
            if let Ok(pq) = path_and_query.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(new) = Uri::from_parts(parts) {
                    *uri = new;
                }
            }
        }
    }
    if let Some(name) = &rules.cookie {
        let pairs: Vec<(&str, &str)> = cookie_pairs(headers).collect();
        let kept: Vec<String> = pairs
            .iter()
            .filter(|(k, _)| !same_parameter_name(&percent_decode(k), name))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        if kept.len() != pairs.len() {
            headers.remove(COOKIE);
            if !kept.is_empty()
                && let Ok(value) = HeaderValue::from_str(&kept.join("; "))
            {
                headers.insert(COOKIE, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Extraction {
        Extraction {
            header: "authorization".into(),
            scheme: Some("Bearer".into()),
            query_parameter: Some("access_token".into()),
            cookie: Some("session".into()),
            max_length: 100,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (k, v) in pairs {
            map.append(*k, HeaderValue::from_static(v));
        }
        map
    }

    #[test]
    fn scheme_is_case_insensitive_and_required() {
        let uri = Uri::from_static("/");
        let found = extract(&rules(), &headers(&[("authorization", "bEaReR abc")]), &uri)
            .expect("ok")
            .expect("found");
        assert_eq!(found.token, "abc");
        let err = extract(&rules(), &headers(&[("authorization", "Basic abc")]), &uri)
            .expect_err("wrong scheme");
        assert_eq!(err.reason, RejectReason::TokenSchemeInvalid);
        assert_eq!(
            extract(&rules(), &headers(&[("authorization", "Bearer ")]), &uri).expect("ok"),
            None
        );
    }

    #[test]
    fn sources_in_order_and_duplicates_refused() {
        let uri = Uri::from_static("/x?a=1&access_token=q");
        let found = extract(&rules(), &headers(&[("cookie", "other=c")]), &uri)
            .expect("ok")
            .expect("found");
        assert_eq!(
            (found.token.as_str(), found.location),
            ("q", TokenLocation::Query)
        );
        let found = extract(
            &rules(),
            &headers(&[("cookie", "a=b; session=c")]),
            &Uri::from_static("/"),
        )
        .expect("ok")
        .expect("found");
        assert_eq!(
            (found.token.as_str(), found.location),
            ("c", TokenLocation::Cookie)
        );
        let dup = extract(
            &rules(),
            &headers(&[("authorization", "Bearer a"), ("authorization", "Bearer b")]),
            &uri,
        );
        assert_eq!(dup.expect_err("dup").reason, RejectReason::JwtInvalid);
    }

    #[test]
    fn length_cap() {
        let long = format!("Bearer {}", "a".repeat(101));
        let mut map = HeaderMap::new();
        map.insert(
            "authorization",
            HeaderValue::from_str(&long).expect("ascii"),
        );
        let err = extract(&rules(), &map, &Uri::from_static("/")).expect_err("too long");
        assert_eq!(err.reason, RejectReason::JwtInvalid);
    }

    #[test]
    fn stripping_keeps_everything_else() {
        let r = rules();
        let mut uri = Uri::from_static("/x?a=1&access_token=q&b=2");
        let mut map = headers(&[("cookie", "a=b; session=c; d=e")]);
        strip_token_sources(&r, &mut map, &mut uri);
        assert_eq!(uri.to_string(), "/x?a=1&b=2");
        assert_eq!(map.get(COOKIE).expect("cookie kept"), "a=b; d=e");
        // Other parameters keep their bytes; every spelling of the token parameter goes.
        let mut uri = Uri::from_static("/x?q=a+b%20c&access.token=f;access_token[]=g&z=%2F");
        let mut map = headers(&[("authorization", "Basic dXNlcjpwdw==")]);
        strip_token_sources(&r, &mut map, &mut uri);
        assert_eq!(uri.to_string(), "/x?q=a+b%20c&z=%2F");
        assert!(
            map.get("authorization").is_some(),
            "another scheme is not a token"
        );
        let mut map = headers(&[("authorization", "bearer abc")]);
        strip_token_sources(&r, &mut map, &mut uri);
        assert!(map.get("authorization").is_none());
    }

    #[test]
    fn different_tokens_in_several_sources_are_refused() {
        let both = extract(
            &rules(),
            &headers(&[("authorization", "Bearer a")]),
            &Uri::from_static("/?access_token=b"),
        );
        assert_eq!(
            both.expect_err("two tokens").reason,
            RejectReason::JwtInvalid
        );
        let cookie = extract(
            &rules(),
            &headers(&[("authorization", "Bearer a"), ("cookie", "session=b")]),
            &Uri::from_static("/"),
        );
        assert!(cookie.is_err());
        let same = extract(
            &rules(),
            &headers(&[("authorization", "Bearer a"), ("cookie", "session=a")]),
            &Uri::from_static("/?access_token=a"),
        )
        .expect("one token in three places")
        .expect("found");
        assert_eq!(same.location, TokenLocation::Header);
        for query in [
            "/?access_token=a&access.token=b",
            "/?access_token=a;access_token=b",
            "/?access_token=a&access%20token=b",
            "/?access_token=a&access_token[]=b",
        ] {
            let dup = extract(&rules(), &HeaderMap::new(), &Uri::from_static(query));
            assert!(dup.is_err(), "{query}");
        }
    }
}
