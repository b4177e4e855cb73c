//! Claim paths and required-claim checks (APIM `required-claims` semantics).

use serde_json::Value;

use crate::spec::{ClaimMatch, RequiredClaim};

/// A claim name, or a dotted path into nested objects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimPath {
    name: String,
    segments: Vec<String>,
}

impl ClaimPath {
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            return Err("claim name is empty".into());
        }
        let segments: Vec<String> = name.split('.').map(str::to_owned).collect();
        // A name with empty segments can still be a literal top-level claim ("a..b" is odd but
        // legal JSON); it just cannot be a path.
        let segments = if segments.iter().any(String::is_empty) {
            vec![name.to_owned()]
        } else {
            segments
        };
        Ok(Self {
            name: name.to_owned(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.name
    }

    /// The top-level claims [`resolve`](Self::resolve) may read: the literal name and, for a
    /// dotted path, its first segment.
    pub fn top_level_names(&self) -> impl Iterator<Item = &str> {
        let first = self
            .segments
            .first()
            .filter(|first| **first != self.name)
            .map(String::as_str);
        std::iter::once(self.name.as_str()).chain(first)
    }

    /// The literal top-level claim wins over a dotted path, so claims whose names contain dots
    /// (URIs, as some identity providers use) still resolve.
    pub fn resolve<'a>(&self, claims: &'a serde_json::Map<String, Value>) -> Option<&'a Value> {
        if let Some(value) = claims.get(&self.name) {
            return Some(value);
        }
        let (first, rest) = self.segments.split_first()?;
        if rest.is_empty() {
            return None;
        }
        let mut current = claims.get(first)?;
        for segment in rest {
            current = current.as_object()?.get(segment)?;
        }
        Some(current)
    }
}

/// Why a claim requirement failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimFailure {
    NotFound { claim: String },
    ValueNotAllowed { claim: String },
}

/// A compiled `requiredClaims` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimRequirement {
    pub path: ClaimPath,
    pub match_: ClaimMatch,
    pub separator: Option<String>,
    pub values: Vec<String>,
}

impl ClaimRequirement {
    pub fn compile(spec: &RequiredClaim) -> Result<Self, String> {
        Ok(Self {
            path: ClaimPath::parse(&spec.name)?,
            match_: spec.match_,
            separator: spec.separator.clone().filter(|s| !s.is_empty()),
            values: spec.values.clone(),
        })
    }

    pub fn check(&self, claims: &serde_json::Map<String, Value>) -> Result<(), ClaimFailure> {
        let Some(value) = self.path.resolve(claims).filter(|v| !v.is_null()) else {
            return Err(ClaimFailure::NotFound {
                claim: self.path.as_str().to_owned(),
            });
        };
        if self.values.is_empty() {
            return Ok(());
        }
        let present = claim_values(value, self.separator.as_deref());
        let has = |wanted: &String| present.iter().any(|p| p == wanted);
        let ok = match self.match_ {
            ClaimMatch::All => self.values.iter().all(has),
            ClaimMatch::Any => self.values.iter().any(has),
        };
        if ok {
            Ok(())
        } else {
            Err(ClaimFailure::ValueNotAllowed {
                claim: self.path.as_str().to_owned(),
            })
        }
    }
}

/// The values a claim carries: each array element, or the string split by the separator.
/// Numbers and booleans compare by their JSON text.
fn claim_values(value: &Value, separator: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let mut push = |v: &Value| match v {
        Value::String(s) => match separator {
            Some(sep) => out.extend(s.split(sep).filter(|p| !p.is_empty()).map(str::to_owned)),
            None => out.push(s.clone()),
        },
        Value::Number(_) | Value::Bool(_) => out.push(v.to_string()),
        _ => {}
    };
    match value {
        Value::Array(items) => items.iter().for_each(&mut push),
        other => push(other),
    }
    out
}

/// A claim rendered as a header value: scalars as text, arrays comma-separated, objects as
/// compact JSON.
pub fn claim_header_value(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(value.to_string()),
        Value::Array(items) => Some(
            items
                .iter()
                .filter_map(|item| match item {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                })
                .collect::<Vec<_>>()
                .join(","),
        ),
        Value::Object(_) => Some(value.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().cloned().expect("object")
    }

    fn requirement(
        name: &str,
        m: ClaimMatch,
        sep: Option<&str>,
        values: &[&str],
    ) -> ClaimRequirement {
        ClaimRequirement::compile(&RequiredClaim {
            name: name.into(),
            match_: m,
            separator: sep.map(str::to_owned),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        })
        .expect("compiles")
    }

    #[test]
    fn all_and_any_over_arrays() {
        let c = claims(json!({"roles": ["Orders.Read", "Orders.Write"]}));
        assert!(
            requirement(
                "roles",
                ClaimMatch::All,
                None,
                &["Orders.Read", "Orders.Write"]
            )
            .check(&c)
            .is_ok()
        );
        assert_eq!(
            requirement("roles", ClaimMatch::All, None, &["Orders.Read", "Admin"]).check(&c),
            Err(ClaimFailure::ValueNotAllowed {
                claim: "roles".into()
            })
        );
        assert!(
            requirement("roles", ClaimMatch::Any, None, &["Admin", "Orders.Write"])
                .check(&c)
                .is_ok()
        );
    }

    #[test]
    fn separator_splits_strings() {
        let c = claims(json!({"scp": "orders.read orders.write"}));
        assert!(
            requirement("scp", ClaimMatch::All, Some(" "), &["orders.write"])
                .check(&c)
                .is_ok()
        );
        assert!(
            requirement("scp", ClaimMatch::All, None, &["orders.write"])
                .check(&c)
                .is_err()
        );
    }

    #[test]
    fn dotted_paths_reach_nested_claims_and_literal_names_win() {
        let c = claims(json!({
            "realm_access": {"roles": ["admin"]},
            "https://example.com/tier": "gold",
        }));
        assert!(
            requirement("realm_access.roles", ClaimMatch::All, None, &["admin"])
                .check(&c)
                .is_ok()
        );
        assert!(
            requirement("https://example.com/tier", ClaimMatch::All, None, &["gold"])
                .check(&c)
                .is_ok()
        );
        assert_eq!(
            requirement("realm_access.groups", ClaimMatch::All, None, &[]).check(&c),
            Err(ClaimFailure::NotFound {
                claim: "realm_access.groups".into()
            })
        );
    }

    #[test]
    fn top_level_names_cover_what_resolve_reads() {
        let names = |path: &str| {
            ClaimPath::parse(path)
                .expect("path")
                .top_level_names()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };
        assert_eq!(names("sub"), ["sub"]);
        assert_eq!(
            names("realm_access.roles"),
            ["realm_access.roles", "realm_access"]
        );
        assert_eq!(names("a..b"), ["a..b"]);
    }

    #[test]
    fn presence_only_and_scalars() {
        let c = claims(json!({"email_verified": true, "level": 3, "gone": null}));
        assert!(
            requirement("email_verified", ClaimMatch::All, None, &["true"])
                .check(&c)
                .is_ok()
        );
        assert!(
            requirement("level", ClaimMatch::Any, None, &["3"])
                .check(&c)
                .is_ok()
        );
        assert!(
            requirement("gone", ClaimMatch::All, None, &[])
                .check(&c)
                .is_err()
        );
    }

    #[test]
    fn header_values_for_every_shape() {
        assert_eq!(claim_header_value(&json!("a")), Some("a".into()));
        assert_eq!(
            claim_header_value(&json!(["a", "b", 3])),
            Some("a,b,3".into())
        );
        assert_eq!(
            claim_header_value(&json!({"k": 1})),
            Some("{\"k\":1}".into())
        );
        assert_eq!(claim_header_value(&json!(null)), None);
    }
}
