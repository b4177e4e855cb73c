//! Route rules: which requirement applies to a request, and the one form of a request path
//! that rules are matched against and the application receives.

use std::borrow::Cow;
use std::fmt;
use std::ops::Deref;

use crate::claims::ClaimRequirement;
use crate::spec::{
    Authentication, Backslashes, EscapedSlashes, PathNormalization, PathParameters, Rule,
};

/// A rule's path: exact (`/healthz`) or a prefix (`/public/*`: `/public` itself and everything
/// below it), held in canonical form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathPattern {
    /// The canonical path, or the prefix without its `/*`.
    pub base: String,
    pub prefix: bool,
    pub case_sensitive: bool,
}

impl PathPattern {
    /// Parses a rule path under the default normalisation.
    pub fn parse(text: &str) -> Result<Self, String> {
        Self::parse_with(text, &PathNormalization::default())
    }

    /// Parses a rule path. A path that normalises to something else is refused with the form
    /// to write instead, and one that requests can never have (it holds what normalisation
    /// refuses) is refused as unreachable; percent-encoding differences are accepted.
    pub fn parse_with(text: &str, paths: &PathNormalization) -> Result<Self, String> {
        if !text.starts_with('/') {
            return Err(format!("path {text:?} must start with /"));
        }
        let (base, prefix) = match text.strip_suffix("/*") {
            Some(base) => (base, true),
            None => (text, false),
        };
        if base.contains('*') {
            return Err(format!("path {text:?}: * is only allowed as a final /*"));
        }
        if prefix && base.ends_with('/') {
            return Err(format!(
                "path {text:?}: write the prefix without a trailing slash, as {}/*",
                base.trim_end_matches('/')
            ));
        }
        let base = if base.is_empty() {
            String::new()
        } else {
            let canonical = canonical_path(base, paths).map_err(|refusal| {
                format!("path {text:?} can never match: requests with {refusal} are refused")
            })?;
            if canonical != base && decode_all(&canonical) != decode_all(base) {
                let star = if prefix { "/*" } else { "" };
                return Err(format!(
                    "path {text:?} is judged as {canonical}{star}; write it that way"
                ));
            }
            canonical.into_owned()
        };
        Ok(Self {
            base,
            prefix,
            case_sensitive: paths.case_sensitive,
        })
    }

    /// Whether this pattern covers `path`, a canonical path.
    pub fn matches(&self, path: &str) -> bool {
        let eq = |a: &str, b: &str| {
            if self.case_sensitive {
                a == b
            } else {
                a.eq_ignore_ascii_case(b)
            }
        };
        if !self.prefix {
            return eq(path, &self.base);
        }
        match (path.get(..self.base.len()), path.get(self.base.len()..)) {
            (Some(head), Some(rest)) => {
                eq(head, &self.base) && (rest.is_empty() || rest.starts_with('/'))
            }
            _ => false,
        }
    }
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix {
            write!(f, "{}/*", self.base)
        } else {
            f.write_str(&self.base)
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledRule {
    pub paths: Vec<PathPattern>,
    /// Upper-case method names (`HEAD` added wherever `GET` is listed); empty matches every
    /// method.
    pub methods: Vec<String>,
    pub authentication: Authentication,
    pub required_claims: Vec<ClaimRequirement>,
}

impl CompiledRule {
    /// Compiles a rule under the default normalisation.
    pub fn compile(rule: &Rule) -> Result<Self, String> {
        Self::compile_with(rule, &PathNormalization::default())
    }

    pub fn compile_with(rule: &Rule, paths: &PathNormalization) -> Result<Self, String> {
        if rule.paths.is_empty() {
            return Err("a rule needs at least one path".into());
        }
        let patterns = rule
            .paths
            .iter()
            .map(|p| PathPattern::parse_with(p, paths))
            .collect::<Result<_, _>>()?;
        let mut methods: Vec<String> = Vec::new();
        for m in &rule.methods {
            let upper = m.to_ascii_uppercase();
            if upper.is_empty() || !upper.bytes().all(|b| b.is_ascii_alphabetic()) {
                return Err(format!("method {m:?} is not an HTTP method"));
            }
            if !methods.contains(&upper) {
                methods.push(upper);
            }
        }
        // Servers answer HEAD with the GET handler: a rule for GET must cover it.
        if methods.iter().any(|m| m == "GET") && !methods.iter().any(|m| m == "HEAD") {
            methods.push("HEAD".to_owned());
        }
        let required_claims = rule
            .required_claims
            .iter()
            .map(ClaimRequirement::compile)
            .collect::<Result<_, _>>()?;
        Ok(Self {
            paths: patterns,
            methods,
            authentication: rule.authentication,
            required_claims,
        })
    }

    /// Whether this rule covers a request: `method` in any case, `path` canonical.
    pub fn matches(&self, method: &str, path: &str) -> bool {
        (self.methods.is_empty() || self.methods.iter().any(|m| m.eq_ignore_ascii_case(method)))
            && self.paths.iter().any(|p| p.matches(path))
    }
}

/// A policy's rules with the normalisation their paths are matched under.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteTable {
    pub rules: Vec<CompiledRule>,
    pub paths: PathNormalization,
}

impl Deref for RouteTable {
    type Target = [CompiledRule];

    fn deref(&self) -> &[CompiledRule] {
        &self.rules
    }
}

impl RouteTable {
    /// The canonical form of a request path under this table's normalisation.
    pub fn canonical_path<'p>(&self, raw: &'p str) -> Result<Cow<'p, str>, PathRefusal> {
        canonical_path(raw, &self.paths)
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

/// First matching rule wins; no match means a valid token is required. `path` is normalised
/// first (a no-op for the canonical paths the proxy passes); a path normalisation refuses
/// matches no rule, and the proxy never forwards one.
pub fn route<'a>(table: &'a RouteTable, method: &str, path: &str) -> Route<'a> {
    let unmatched = Route {
        authentication: Authentication::Required,
        required_claims: &[],
        rule: None,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let Ok(path) = canonical_path(path, &table.paths) else {
        return unmatched;
    };
    table
        .rules
        .iter()
        .enumerate()
        .find(|(_, rule)| rule.matches(method, &path))
        .map_or(unmatched, |(i, rule)| Route {
            authentication: rule.authentication,
            required_claims: &rule.required_claims,
            rule: Some(i),
        })
}

/// Why a path cannot be made unambiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathRefusal {
    /// `*` (asterisk form) or anything else not starting with `/`.
    NotOriginForm,
    /// `%` not followed by two hex digits.
    MalformedEscape,
    /// A control character, raw or percent-encoded (`%00`, `%0A`...).
    ControlCharacter,
    /// `%2F` or `%5C` with `escapedSlashes: Reject`.
    EscapedSlash,
    /// `\` with `backslashes: Reject`.
    Backslash,
    /// `;` or `%3B` with `pathParameters: Reject`.
    PathParameter,
}

impl PathRefusal {
    /// Bounded label for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotOriginForm => "NotOriginForm",
            Self::MalformedEscape => "MalformedEscape",
            Self::ControlCharacter => "ControlCharacter",
            Self::EscapedSlash => "EscapedSlash",
            Self::Backslash => "Backslash",
            Self::PathParameter => "PathParameter",
        }
    }
}

impl fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotOriginForm => "a request target that is not a path",
            Self::MalformedEscape => "a malformed percent-encoding",
            Self::ControlCharacter => "a control character",
            Self::EscapedSlash => "an encoded slash or backslash (%2F, %5C)",
            Self::Backslash => "a backslash",
            Self::PathParameter => "a path parameter (;)",
        })
    }
}

/// The one form of `raw` that rules are matched against and the application receives:
///
/// - percent-encoded unreserved characters decoded (`%61` is `a`, `%2e` is `.`), every other
///   escape kept with upper-case hex, characters outside RFC 3986 `pchar` encoded;
/// - dot segments resolved (RFC 3986 5.2.4) and, with `mergeSlashes`, empty segments merged;
/// - `%2F`/`%5C`, `\` and `;` handled as the options say; control characters and malformed
///   escapes refused.
///
/// The result is a fixed point: normalising it again returns it unchanged, so an application
/// that decodes, resolves or merges once more reaches the same path.
pub fn canonical_path<'p>(
    raw: &'p str,
    paths: &PathNormalization,
) -> Result<Cow<'p, str>, PathRefusal> {
    if !raw.starts_with('/') {
        return Err(PathRefusal::NotOriginForm);
    }
    if is_canonical(raw, paths) {
        return Ok(Cow::Borrowed(raw));
    }
    let stripped;
    let input = if raw.contains(';') {
        match paths.path_parameters {
            PathParameters::Reject => return Err(PathRefusal::PathParameter),
            PathParameters::Strip => {
                // Before decoding, as servlet containers do: `%3B` stays data.
                stripped = strip_path_parameters(raw);
                stripped.as_str()
            }
            PathParameters::Keep => raw,
        }
    } else {
        raw
    };
    let decoded = decode(input, paths)?;
    Ok(Cow::Owned(resolve(&decoded, paths.merge_slashes)))
}

/// Whether `path` is already its own canonical form (one pass, no allocation).
fn is_canonical(path: &str, paths: &PathNormalization) -> bool {
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'%' => {
                let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                    return false;
                };
                if !(is_upper_hex(hi) && is_upper_hex(lo)) {
                    return false;
                }
                let Some(value) = hex_pair(hi, lo) else {
                    return false;
                };
                let kept = match value {
                    b'/' | b'\\' => paths.escaped_slashes == EscapedSlashes::Keep,
                    b';' => paths.path_parameters != PathParameters::Reject,
                    v => !is_unreserved(v) && !is_control(v),
                };
                if !kept {
                    return false;
                }
                i += 3;
                continue;
            }
            b'\\' if paths.backslashes != Backslashes::Keep => return false,
            b';' if paths.path_parameters != PathParameters::Keep => return false,
            b'\\' | b';' => {}
            b if !is_pchar_raw(b) => return false,
            _ => {}
        }
        i += 1;
    }
    // Segments: no dot segments, no empty ones when merging (a trailing slash is not one).
    let body = &path[1..];
    let segments = body.split('/');
    let count = body.split('/').count();
    for (n, segment) in segments.enumerate() {
        match segment {
            "." | ".." => return false,
            "" if paths.merge_slashes && n + 1 < count => return false,
            _ => {}
        }
    }
    true
}

fn strip_path_parameters(raw: &str) -> String {
    raw.split('/')
        .map(|segment| segment.split(';').next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("/")
}

/// Percent-decoding of unreserved characters, the options' separators, and encoding of what
/// is not a `pchar`. The result is ASCII.
fn decode(input: &str, paths: &PathNormalization) -> Result<String, PathRefusal> {
    let bytes = input.as_bytes();
    let mut out = String::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let value = match (bytes.get(i + 1), bytes.get(i + 2)) {
                (Some(&hi), Some(&lo)) => hex_pair(hi, lo),
                _ => None,
            }
            .ok_or(PathRefusal::MalformedEscape)?;
            match value {
                v if is_unreserved(v) => out.push(char::from(v)),
                b'/' | b'\\' => match paths.escaped_slashes {
                    EscapedSlashes::Reject => return Err(PathRefusal::EscapedSlash),
                    EscapedSlashes::Unescape => out.push('/'),
                    EscapedSlashes::Keep => push_escaped(&mut out, value),
                },
                v if is_control(v) => return Err(PathRefusal::ControlCharacter),
                b';' if paths.path_parameters == PathParameters::Reject => {
                    return Err(PathRefusal::PathParameter);
                }
                v => push_escaped(&mut out, v),
            }
            i += 3;
            continue;
        }
        match b {
            b'\\' => match paths.backslashes {
                Backslashes::Reject => return Err(PathRefusal::Backslash),
                Backslashes::Slash => out.push('/'),
                Backslashes::Keep => out.push('\\'),
            },
            // Only reachable with `pathParameters: Keep`: the others refused or stripped it.
            b';' => out.push(';'),
            b if is_control(b) => return Err(PathRefusal::ControlCharacter),
            b if is_pchar_raw(b) => out.push(char::from(b)),
            b => push_escaped(&mut out, b),
        }
        i += 1;
    }
    Ok(out)
}

/// RFC 3986 5.2.4 on a decoded path that starts with `/`; empty segments merged on request.
fn resolve(decoded: &str, merge_slashes: bool) -> String {
    let body = decoded.get(1..).unwrap_or_default();
    let count = body.split('/').count();
    let mut segments: Vec<&str> = Vec::with_capacity(count);
    let mut trailing = false;
    for (n, segment) in body.split('/').enumerate() {
        let last = n + 1 == count;
        match segment {
            "." => trailing |= last,
            ".." => {
                segments.pop();
                trailing |= last;
            }
            "" if last => trailing = true,
            "" if merge_slashes => {}
            other => segments.push(other),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for segment in &segments {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || (trailing && !segments.is_empty()) {
        out.push('/');
    }
    out
}

/// Every escape decoded, for comparing rule paths written in different encodings.
fn decode_all(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let (Some(&hi), Some(&lo)) = (bytes.get(i + 1), bytes.get(i + 2))
            && let Some(value) = hex_pair(hi, lo)
        {
            out.push(value);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

fn push_escaped(out: &mut String, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    out.push('%');
    out.push(char::from(HEX[usize::from(byte >> 4)]));
    out.push(char::from(HEX[usize::from(byte & 0xf)]));
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_control(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// RFC 3986 `pchar` without `%` and `;`, plus `/`.
fn is_pchar_raw(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b'/'
        )
}

fn is_upper_hex(b: u8) -> bool {
    b.is_ascii_digit() || (b'A'..=b'F').contains(&b)
}

fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    Some(hex(hi)? << 4 | hex(lo)?)
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

    fn table_with(paths: PathNormalization) -> RouteTable {
        let specs: Vec<Rule> = serde_json::from_value(serde_json::json!([
            {"paths": ["/healthz", "/public/*"], "authentication": "Disabled"},
            {"paths": ["/admin/*"], "methods": ["post"], "requiredClaims": [{"name": "roles", "values": ["Admin"]}]},
            {"paths": ["/maybe"], "authentication": "Optional"},
            {"paths": ["/reports/*"], "methods": ["GET"], "authentication": "Disabled"},
        ]))
        .expect("rules parse");
        RouteTable {
            rules: specs
                .iter()
                .map(|r| CompiledRule::compile_with(r, &paths).expect("compiles"))
                .collect(),
            paths,
        }
    }

    fn table() -> RouteTable {
        table_with(PathNormalization::default())
    }

    fn canonical(raw: &str) -> Result<String, PathRefusal> {
        canonical_path(raw, &PathNormalization::default()).map(Cow::into_owned)
    }

    #[test]
    fn first_match_wins_and_default_is_required() {
        let rules = table();
        let auth = |method: &str, path: &str| route(&rules, method, path).authentication;
        assert_eq!(auth("GET", "/healthz"), Authentication::Disabled);
        assert_eq!(auth("GET", "/healthz/x"), Authentication::Required);
        assert_eq!(auth("GET", "/public"), Authentication::Disabled);
        assert_eq!(auth("GET", "/public/a/b?x=1"), Authentication::Disabled);
        assert_eq!(auth("GET", "/publicity"), Authentication::Required);
        let admin = route(&rules, "POST", "/admin/users");
        assert_eq!(admin.rule, Some(1));
        assert_eq!(admin.required_claims.len(), 1);
        assert!(
            route(&rules, "GET", "/admin/users")
                .required_claims
                .is_empty()
        );
        assert_eq!(auth("GET", "/maybe"), Authentication::Optional);
    }

    #[test]
    fn methods_compare_in_any_case_and_get_covers_head() {
        let rules = table();
        for method in ["post", "Post", "POST", "pOsT"] {
            assert_eq!(route(&rules, method, "/admin/x").rule, Some(1), "{method}");
        }
        assert_eq!(
            route(&rules, "HEAD", "/reports/q1").authentication,
            Authentication::Disabled
        );
        assert_eq!(
            route(&rules, "head", "/reports/q1").authentication,
            Authentication::Disabled
        );
        assert_eq!(
            route(&rules, "POST", "/reports/q1").authentication,
            Authentication::Required
        );
        assert_eq!(rules.rules[3].methods, ["GET", "HEAD"]);
    }

    #[test]
    fn traversal_cannot_borrow_a_public_rule() {
        let rules = table();
        for path in [
            "/public/../admin",
            "/public/%2e%2e/secret",
            "/public/%2E%2e/secret",
            "/public/./../secret",
            "//public/..//x",
            "/public/.%2e/x",
        ] {
            assert_eq!(
                route(&rules, "GET", path).authentication,
                Authentication::Required,
                "{path}"
            );
        }
        assert_eq!(canonical("/a//b/./c/../d/").as_deref(), Ok("/a/b/d/"));
        assert_eq!(canonical("/%70ublic/x").as_deref(), Ok("/public/x"));
        assert_eq!(canonical("/..").as_deref(), Ok("/"));
        assert_eq!(canonical("/a/b/..").as_deref(), Ok("/a/"));
        assert_eq!(canonical("/a%7e%2d").as_deref(), Ok("/a~-"));
        assert_eq!(canonical("/a%3f%20b").as_deref(), Ok("/a%3F%20b"));
        assert_eq!(canonical("/caf\u{e9}").as_deref(), Ok("/caf%C3%A9"));
        assert_eq!(canonical("/a\"b").as_deref(), Ok("/a%22b"));
    }

    #[test]
    fn ambiguous_paths_are_refused_by_default() {
        for (path, refusal) in [
            ("/public/..%2Fadmin", PathRefusal::EscapedSlash),
            ("/public%2f..%2fadmin", PathRefusal::EscapedSlash),
            ("/public/..%5Cadmin", PathRefusal::EscapedSlash),
            ("/public/..\\admin", PathRefusal::Backslash),
            ("/public/..;/admin", PathRefusal::PathParameter),
            ("/admin;jsessionid=1", PathRefusal::PathParameter),
            ("/admin%3Bx", PathRefusal::PathParameter),
            ("/a%2", PathRefusal::MalformedEscape),
            ("/a%zz", PathRefusal::MalformedEscape),
            ("/a%u002e", PathRefusal::MalformedEscape),
            ("/a%00b", PathRefusal::ControlCharacter),
            ("/admin%0a", PathRefusal::ControlCharacter),
            ("*", PathRefusal::NotOriginForm),
            ("admin", PathRefusal::NotOriginForm),
        ] {
            assert_eq!(canonical(path), Err(refusal), "{path}");
        }
    }

    #[test]
    fn options_unescape_strip_slash_and_keep() {
        let lenient = PathNormalization {
            merge_slashes: false,
            escaped_slashes: EscapedSlashes::Unescape,
            backslashes: Backslashes::Slash,
            path_parameters: PathParameters::Strip,
            case_sensitive: true,
        };
        let c = |raw: &str| canonical_path(raw, &lenient).map(Cow::into_owned);
        assert_eq!(c("/public/..%2Fadmin").as_deref(), Ok("/admin"));
        assert_eq!(c("/public\\..\\admin").as_deref(), Ok("/admin"));
        assert_eq!(c("/public/..;x=1/admin").as_deref(), Ok("/admin"));
        assert_eq!(c("/admin;jsessionid=1/x").as_deref(), Ok("/admin/x"));
        assert_eq!(c("/a%3Bb").as_deref(), Ok("/a%3Bb"));
        assert_eq!(c("/a//b").as_deref(), Ok("/a//b"));
        assert_eq!(c("/a//../b").as_deref(), Ok("/a/b"));
        let keep = PathNormalization {
            escaped_slashes: EscapedSlashes::Keep,
            backslashes: Backslashes::Keep,
            path_parameters: PathParameters::Keep,
            ..PathNormalization::default()
        };
        let k = |raw: &str| canonical_path(raw, &keep).map(Cow::into_owned);
        assert_eq!(k("/files/a%2fb").as_deref(), Ok("/files/a%2Fb"));
        assert_eq!(k("/m;v=1/x").as_deref(), Ok("/m;v=1/x"));
        assert_eq!(k("/a\\b").as_deref(), Ok("/a\\b"));
    }

    #[test]
    fn canonical_paths_are_fixed_points() {
        let options = [
            PathNormalization::default(),
            PathNormalization {
                merge_slashes: false,
                escaped_slashes: EscapedSlashes::Unescape,
                backslashes: Backslashes::Slash,
                path_parameters: PathParameters::Strip,
                case_sensitive: false,
            },
            PathNormalization {
                escaped_slashes: EscapedSlashes::Keep,
                backslashes: Backslashes::Keep,
                path_parameters: PathParameters::Keep,
                ..PathNormalization::default()
            },
        ];
        let samples = [
            "/",
            "//",
            "/a//b/",
            "/a/./b/../c",
            "/%2e%2E/x",
            "/a%2Fb%5c",
            "/a\\b",
            "/a;b/c;d",
            "/%41%7a%3b",
            "/x/..;/y",
            "/caf\u{e9}/%c3%a9",
            "/a/b/.",
            "/a/b/..",
            "/.;/x",
        ];
        for paths in &options {
            for raw in samples {
                if let Ok(once) = canonical_path(raw, paths) {
                    let twice = canonical_path(&once, paths);
                    assert_eq!(twice.as_deref(), Ok(once.as_ref()), "{raw} under {paths:?}");
                    assert!(is_canonical(&once, paths), "{once} under {paths:?}");
                }
            }
        }
    }

    #[test]
    fn case_insensitive_matching_on_request() {
        let insensitive = table_with(PathNormalization {
            case_sensitive: false,
            ..PathNormalization::default()
        });
        assert_eq!(route(&insensitive, "POST", "/ADMIN/users").rule, Some(1));
        assert_eq!(
            route(&insensitive, "GET", "/Public/x").authentication,
            Authentication::Disabled
        );
        assert_eq!(route(&table(), "POST", "/ADMIN/users").rule, None);
    }

    #[test]
    fn bad_patterns_are_refused() {
        assert!(PathPattern::parse("public").is_err());
        assert!(PathPattern::parse("/a/*/b").is_err());
        assert!(PathPattern::parse("/a*").is_err());
        let dots = PathPattern::parse("/public/../admin").expect_err("dot segments");
        assert!(dots.contains("judged as /admin"), "{dots}");
        let unreachable = PathPattern::parse("/a;b").expect_err("path parameter");
        assert!(unreachable.contains("can never match"), "{unreachable}");
        assert!(PathPattern::parse("/public//*").is_err());
        assert_eq!(
            PathPattern::parse("/caf\u{e9}/*").expect("encoded").base,
            "/caf%C3%A9"
        );
        assert_eq!(PathPattern::parse("/*").expect("everything").base, "");
    }
}
