//! Route rules: which requirement applies to a request.

use std::borrow::Cow;

use crate::claims::ClaimRequirement;
use crate::spec::{Authentication, Rule};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    Exact(String),
    /// `/public/*`: `/public` itself and everything below it.
    Prefix(String),
}

impl PathPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("path {text:?} must start with /"));
        }
        if let Some(prefix) = text.strip_suffix("/*") {
            if prefix.contains('*') {
                return Err(format!("path {text:?}: * is only allowed as a final /*"));
            }
            return Ok(Self::Prefix(prefix.to_owned()));
        }
        if text.contains('*') {
            return Err(format!("path {text:?}: * is only allowed as a final /*"));
        }
        Ok(Self::Exact(text.to_owned()))
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Self::Exact(exact) => path == exact,
            Self::Prefix(prefix) => path
                .strip_prefix(prefix.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/')),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub paths: Vec<PathPattern>,
    /// Upper-case method names; empty matches every method.
    pub methods: Vec<String>,
    pub authentication: Authentication,
    pub required_claims: Vec<ClaimRequirement>,
}

impl CompiledRule {
    pub fn compile(rule: &Rule) -> Result<Self, String> {
        if rule.paths.is_empty() {
            return Err("a rule needs at least one path".into());
        }
        let paths = rule
            .paths
            .iter()
            .map(|p| PathPattern::parse(p))
            .collect::<Result<_, _>>()?;
        let methods = rule
            .methods
            .iter()
            .map(|m| {
                let upper = m.to_ascii_uppercase();
                if upper.is_empty() || !upper.bytes().all(|b| b.is_ascii_alphabetic()) {
                    Err(format!("method {m:?} is not an HTTP method"))
                } else {
                    Ok(upper)
                }
            })
            .collect::<Result<_, _>>()?;
        let required_claims = rule
            .required_claims
            .iter()
            .map(ClaimRequirement::compile)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            paths,
            methods,
            authentication: rule.authentication,
            required_claims,
        })
    }

    fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m == method))
            && self.paths.iter().any(|p| p.matches(path))
    }
}

/// What a request must satisfy.
#[derive(Clone, Copy, Debug)]
pub struct Route<'a> {
    pub authentication: Authentication,
    /// Route-level claims: a valid token without them is refused with 403.
    pub required_claims: &'a [ClaimRequirement],
    /// Index of the rule that matched, for explanations.
    pub rule: Option<usize>,
}

/// First matching rule wins; no match means a valid token is required.
pub fn route<'a>(rules: &'a [CompiledRule], method: &str, raw_path: &str) -> Route<'a> {
    let path = normalize_path(raw_path);
    rules
        .iter()
        .enumerate()
        .find(|(_, rule)| rule.matches(method, &path))
        .map(|(i, rule)| Route {
            authentication: rule.authentication,
            required_claims: &rule.required_claims,
            rule: Some(i),
        })
        .unwrap_or(Route {
            authentication: Authentication::Required,
            required_claims: &[],
            rule: None,
        })
}

/// The path as an application would resolve it: percent-decoded (except `/` and `\`, which
/// stay encoded so they cannot create segments), dot segments removed, repeated slashes merged.
/// Matching on this form means `/public/../admin` or `/public/%2e%2e/admin` cannot borrow a
/// public rule to reach a protected path.
pub fn normalize_path(raw: &str) -> Cow<'_, str> {
    let path = raw.split(['?', '#']).next().unwrap_or_default();
    let needs_work = path.contains('%')
        || path.contains("//")
        || path.split('/').any(|s| s == "." || s == "..")
        || !path.starts_with('/');
    if !needs_work {
        return Cow::Borrowed(path);
    }
    let decoded = percent_decode_keeping_separators(path);
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    let trailing = decoded.ends_with('/') && !segments.is_empty();
    let mut out = String::with_capacity(decoded.len() + 1);
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing {
        out.push('/');
    }
    Cow::Owned(out)
}

fn percent_decode_keeping_separators(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            let byte = hi << 4 | lo;
            if byte == b'/' || byte == b'\\' {
                out.extend_from_slice(&bytes[i..i + 3]);
            } else {
                out.push(byte);
            }
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Vec<CompiledRule> {
        let specs: Vec<Rule> = serde_json::from_value(serde_json::json!([
            {"paths": ["/healthz", "/public/*"], "authentication": "Disabled"},
            {"paths": ["/admin/*"], "methods": ["post"], "requiredClaims": [{"name": "roles", "values": ["Admin"]}]},
            {"paths": ["/maybe"], "authentication": "Optional"},
        ]))
        .expect("rules parse");
        specs
            .iter()
            .map(|r| CompiledRule::compile(r).expect("compiles"))
            .collect()
    }

    #[test]
    fn first_match_wins_and_default_is_required() {
        let rules = rules();
        assert_eq!(
            route(&rules, "GET", "/healthz").authentication,
            Authentication::Disabled
        );
        assert_eq!(
            route(&rules, "GET", "/healthz/x").authentication,
            Authentication::Required
        );
        assert_eq!(
            route(&rules, "GET", "/public").authentication,
            Authentication::Disabled
        );
        assert_eq!(
            route(&rules, "GET", "/public/a/b?x=1").authentication,
            Authentication::Disabled
        );
        assert_eq!(
            route(&rules, "GET", "/publicity").authentication,
            Authentication::Required
        );
        let admin = route(&rules, "POST", "/admin/users");
        assert_eq!(admin.rule, Some(1));
        assert_eq!(admin.required_claims.len(), 1);
        assert!(
            route(&rules, "GET", "/admin/users")
                .required_claims
                .is_empty()
        );
        assert_eq!(
            route(&rules, "GET", "/maybe").authentication,
            Authentication::Optional
        );
    }

    #[test]
    fn traversal_cannot_borrow_a_public_rule() {
        let rules = rules();
        for path in [
            "/public/../admin",
            "/public/%2e%2e/secret",
            "/public/./../secret",
            "//public/..//x",
        ] {
            assert_eq!(
                route(&rules, "GET", path).authentication,
                Authentication::Required,
                "{path}"
            );
        }
        assert_eq!(normalize_path("/a//b/./c/../d/"), "/a/b/d/");
        assert_eq!(normalize_path("/a%2Fb"), "/a%2Fb");
        assert_eq!(normalize_path("/%70ublic/x"), "/public/x");
        assert_eq!(normalize_path("/.."), "/");
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(PathPattern::parse("public").is_err());
        assert!(PathPattern::parse("/a/*/b").is_err());
        assert!(PathPattern::parse("/a*").is_err());
    }
}
