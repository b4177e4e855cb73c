//! Values as APIM policies write them: named values (`{{name}}`), substituted before anything
//! else as APIM does, and policy expressions (`@(...)`, `@{...}`), which are C# evaluated per
//! request and have no equivalent in a TokenPolicy.

use std::collections::BTreeMap;

/// Named values given on the command line (`--set NAME=VALUE`), and which of them were used.
#[derive(Clone, Debug, Default)]
pub struct NamedValues {
    values: BTreeMap<String, String>,
    used: std::cell::RefCell<std::collections::BTreeSet<String>>,
}

/// What became of one attribute's or element's text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// A literal, named values substituted. `unset` lists the named values that were not given
    /// and stay in the text as `{{name}}`.
    Literal { text: String, unset: Vec<String> },
    /// A policy expression (after substitution), never to be copied as a literal.
    Expression(String),
}

impl NamedValues {
    /// Reads `NAME=VALUE` pairs; the name may be written with its braces (`{{NAME}}=VALUE`).
    pub fn parse<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut values = BTreeMap::new();
        for pair in pairs {
            let Some((name, value)) = pair.split_once('=') else {
                return Err(format!("--set {pair:?}: write it as NAME=VALUE"));
            };
            let name = name.trim();
            let name = name
                .strip_prefix("{{")
                .and_then(|n| n.strip_suffix("}}"))
                .unwrap_or(name)
                .trim();
            if !is_named_value_name(name) {
                return Err(format!(
                    "--set {pair:?}: {name:?} is not a named value's name (letters, digits, '-', '_' and '.')"
                ));
            }
            if values.insert(name.to_owned(), value.to_owned()).is_some() {
                return Err(format!("--set {name}: given twice"));
            }
        }
        Ok(Self {
            values,
            used: Default::default(),
        })
    }

    /// The text with every `{{name}}` that was given replaced, and whether the result is a
    /// policy expression.
    pub fn resolve(&self, raw: &str) -> Value {
        let mut text = String::with_capacity(raw.len());
        let mut unset = Vec::new();
        let mut rest = raw;
        while let Some(start) = rest.find("{{") {
            let after = &rest[start + 2..];
            let Some(end) = after.find("}}") else { break };
            let name = after[..end].trim();
            text.push_str(&rest[..start]);
            if !is_named_value_name(name) {
                // Not a named value (`{{` inside an expression, say): keep it as written.
                text.push_str(&rest[start..start + 2 + end + 2]);
            } else if let Some(value) = self.values.get(name) {
                self.used.borrow_mut().insert(name.to_owned());
                text.push_str(value);
            } else {
                text.push_str(&rest[start..start + 2 + end + 2]);
                if !unset.iter().any(|n| n == name) {
                    unset.push(name.to_owned());
                }
            }
            rest = &after[end + 2..];
        }
        text.push_str(rest);
        if is_expression(&text) {
            Value::Expression(text.trim().to_owned())
        } else {
            Value::Literal { text, unset }
        }
    }

    /// Names given with `--set` that the policy never used (a typo, most likely).
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.borrow();
        self.values
            .keys()
            .filter(|name| !used.contains(*name))
            .cloned()
            .collect()
    }
}

/// APIM evaluates an attribute or element value as C# when it starts with `@(` or `@{`.
pub fn is_expression(text: &str) -> bool {
    let text = text.trim_start();
    text.starts_with("@(") || text.starts_with("@{")
}

fn is_named_value_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// An expression on one line, for a report or a placeholder.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn literal(text: &str, unset: &[&str]) -> Value {
        Value::Literal {
            text: text.to_owned(),
            unset: unset.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn substitutes_given_named_values_and_keeps_the_others_visible() {
        let values = NamedValues::parse(["tenant=contoso.onmicrosoft.com", "{{aud}}=api://orders"])
            .expect("parses");
        assert_eq!(
            values.resolve("https://login.example/{{tenant}}/v2.0"),
            literal("https://login.example/contoso.onmicrosoft.com/v2.0", &[])
        );
        assert_eq!(
            values.resolve("{{ missing }} and {{missing}}"),
            literal("{{ missing }} and {{missing}}", &["missing"])
        );
        assert_eq!(values.unused(), vec!["aud".to_owned()]);
        assert_eq!(values.resolve("{{aud}}"), literal("api://orders", &[]));
        assert!(values.unused().is_empty());
    }

    #[test]
    fn recognises_expressions_also_when_a_named_value_holds_one() {
        let values =
            NamedValues::parse(["host=@(context.Request.OriginalUrl.Host)"]).expect("parses");
        assert_eq!(
            values.resolve("{{host}}"),
            Value::Expression("@(context.Request.OriginalUrl.Host)".to_owned())
        );
        assert_eq!(
            values.resolve("  @{ return \"x\"; }"),
            Value::Expression("@{ return \"x\"; }".to_owned())
        );
        // An @ elsewhere is literal text.
        assert_eq!(
            values.resolve("user@example.com"),
            literal("user@example.com", &[])
        );
    }

    #[test]
    fn refuses_malformed_pairs() {
        assert!(NamedValues::parse(["novalue"]).is_err());
        assert!(NamedValues::parse(["bad name=x"]).is_err());
        assert!(NamedValues::parse(["a=1", "a=2"]).is_err());
        let values = NamedValues::parse(["empty="]).expect("an empty value is a value");
        assert_eq!(values.resolve("{{empty}}"), literal("", &[]));
    }
}
