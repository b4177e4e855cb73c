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
pub fn extract(
    rules: &Extraction,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Option<ExtractedToken>, Rejection> {
    let found = if let Some(token) = from_header(rules, headers)? {
        Some(ExtractedToken {
            token,
            location: TokenLocation::Header,
        })
    } else if let Some(token) = from_query(rules, uri)? {
        Some(ExtractedToken {
            token,
            location: TokenLocation::Query,
        })
    } else {
        from_cookie(rules, headers)?.map(|token| ExtractedToken {
            token,
            location: TokenLocation::Cookie,
        })
    };
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
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if key == name.as_str() {
            if found.is_some() {
                return Err(Rejection::new(
                    RejectReason::JwtInvalid,
                    format!("query parameter {name} given more than once"),
                ));
            }
            found = Some(value.into_owned());
        }
    }
    Ok(found.filter(|t| !t.is_empty()))
}

fn from_cookie(rules: &Extraction, headers: &HeaderMap) -> Result<Option<String>, Rejection> {
    let Some(name) = &rules.cookie else {
        return Ok(None);
    };
    let mut found = None;
    for pair in cookie_pairs(headers) {
        if pair.0 == name.as_str() {
            if found.is_some() {
                return Err(Rejection::new(
                    RejectReason::JwtInvalid,
                    format!("cookie {name} given more than once"),
                ));
            }
            found = Some(pair.1.trim_matches('"').to_owned());
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

/// Removes the token from where it was found, for `forwardToken: false`.
pub fn strip_token(
    rules: &Extraction,
    location: TokenLocation,
    headers: &mut HeaderMap,
    uri: &mut Uri,
) {
    match location {
        TokenLocation::Header => {
            headers.remove(rules.header.as_str());
        }
        TokenLocation::Query => {
            let Some(name) = &rules.query_parameter else {
                return;
            };
            let Some(query) = uri.query() else { return };
            let kept: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k != name.as_str())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let mut path_and_query = uri.path().to_owned();
            if !kept.is_empty() {
                path_and_query.push('?');
                path_and_query.push_str(
                    &url::form_urlencoded::Serializer::new(String::new())
                        .extend_pairs(kept)
                        .finish(),
                );
            }
            let mut parts = uri.clone().into_parts();
            if let Ok(pq) = path_and_query.parse() {
                parts.path_and_query = Some(pq);
                if let Ok(new) = Uri::from_parts(parts) {
                    *uri = new;
                }
            }
        }
        TokenLocation::Cookie => {
            let Some(name) = &rules.cookie else { return };
            let kept: Vec<String> = cookie_pairs(headers)
                .filter(|(k, _)| *k != name.as_str())
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
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
        let found = extract(&rules(), &headers(&[("cookie", "session=c")]), &uri)
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
        strip_token(&r, TokenLocation::Query, &mut map, &mut uri);
        assert_eq!(uri.to_string(), "/x?a=1&b=2");
        strip_token(&r, TokenLocation::Cookie, &mut map, &mut uri);
        assert_eq!(map.get(COOKIE).expect("cookie kept"), "a=b; d=e");
    }
}
