//! The TokenPolicy reference, `docs/reference.md`: Markdown rendered from the OpenAPI schema of
//! the CRD that [`crate::crd::crd`] builds, so every field is documented with the same words
//! `kubectl explain` shows and the same CEL rules the API server enforces. `crdgen --reference`
//! prints it; a test keeps `docs/reference.md` equal to it.

use std::fmt::Write as _;

use anyhow::{Context, Result};
use serde_json::Value;
use tokengate_policy::spec::HumanDuration;

/// The command that rewrites `docs/reference.md`.
pub const REGENERATE: &str =
    "cargo run -p tokengate-operator --bin crdgen -- --reference > docs/reference.md";

/// The reference for the CRD's storage version: an introduction, then one section per object
/// of `spec` and of `status`.
pub fn reference_markdown() -> Result<String> {
    let crd = serde_json::to_value(crate::crd::crd()?).context("serializing the CRD")?;
    let text = |pointer: &str| {
        crd.pointer(pointer)
            .and_then(Value::as_str)
            .with_context(|| format!("the CRD has no {pointer}"))
    };
    let group = text("/spec/group")?;
    let kind = text("/spec/names/kind")?;
    let scope = text("/spec/scope")?;
    let version = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .and_then(|versions| {
            versions
                .iter()
                .find(|version| version["storage"].as_bool() == Some(true))
        })
        .context("the CRD has no storage version")?;
    let version_name = version["name"].as_str().context("a version has no name")?;
    let schema = version
        .pointer("/schema/openAPIV3Schema")
        .context("the CRD's version has no schema")?;
    let spec = schema
        .pointer("/properties/spec")
        .context("the CRD's schema has no spec")?;

    let mut out = String::new();
    let _ = writeln!(out, "# {kind} reference\n");
    let _ = writeln!(
        out,
        "Generated from the CRD's schema by `{REGENERATE}`; do not edit (a test fails when it \
         is stale).\n"
    );
    if let Some(description) = one_line(schema) {
        let _ = writeln!(out, "{description}\n");
    }
    let _ = writeln!(
        out,
        "`apiVersion: {group}/{version_name}`, `kind: {kind}`, {}.\n",
        scope.to_lowercase()
    );
    out.push_str(&render_schema("spec", spec));
    if let Some(status) = schema.pointer("/properties/status") {
        out.push('\n');
        out.push_str(&render_schema("status", status));
    }
    Ok(out)
}

/// Renders the object schema at `path` and every object nested in it, each as a section with a
/// table of its fields and the CEL rules evaluated on it. Nested objects follow their parent, in
/// field order, named by their path (`spec.rules[]` for the items of a list).
pub fn render_schema(path: &str, schema: &Value) -> String {
    let mut out = String::new();
    render_object(path, schema, &mut out);
    out
}

fn render_object(path: &str, schema: &Value, out: &mut String) {
    if !out.is_empty() {
        out.push('\n');
    }
    let _ = writeln!(out, "## `{path}`\n");
    if let Some(description) = one_line(schema) {
        let _ = writeln!(out, "{description}\n");
    }

    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let mut nested = Vec::new();
    let mut rules = rules_of(schema, None);
    if let Some(properties) = schema["properties"].as_object() {
        let _ = writeln!(out, "| Field | Type | Required / default | Description |");
        let _ = writeln!(out, "|---|---|---|---|");
        for (name, field) in properties {
            let field_type = type_of(&format!("{path}.{name}"), field, &mut nested);
            let presence = if required.contains(&name.as_str()) {
                "required".to_owned()
            } else if let Some(default) = field.get("default") {
                format!("default {}", code(&value_text(default)))
            } else {
                "optional".to_owned()
            };
            let description = one_line(field).unwrap_or_default();
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} |",
                cell(&code(name)),
                cell(&field_type),
                cell(&presence),
                cell(&description)
            );
            rules.extend(field_rules(name, field));
        }
    }
    if !rules.is_empty() {
        if schema["properties"].is_object() {
            out.push('\n');
        }
        let _ = writeln!(out, "Rules the API server checks (CEL):\n");
        for rule in rules {
            let _ = writeln!(out, "- {rule}");
        }
    }
    for (nested_path, nested_schema) in nested {
        render_object(&nested_path, nested_schema, out);
    }
}

/// The type column: `string`, `integer`, `boolean`, `duration`, the enum's values, `list of X`,
/// `map of string to X`, or a link to the section of a nested object, which is queued in
/// `nested`; bounds follow.
fn type_of<'a>(path: &str, schema: &'a Value, nested: &mut Vec<(String, &'a Value)>) -> String {
    let mut text = if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| code(&value_text(v))).collect();
        format!("one of {}", values.join(", "))
    } else {
        match schema["type"].as_str() {
            Some("object") if is_section(schema) => {
                nested.push((path.to_owned(), schema));
                format!("[object](#{})", anchor(path))
            }
            Some("object") => match schema.get("additionalProperties") {
                Some(values) if values.is_object() => format!(
                    "map of string to {}",
                    type_of(&format!("{path}.*"), values, nested)
                ),
                _ if schema["x-kubernetes-preserve-unknown-fields"] == Value::Bool(true) => {
                    "object (any fields)".to_owned()
                }
                _ => "object".to_owned(),
            },
            Some("array") => match schema.get("items") {
                Some(items) => format!("list of {}", type_of(&format!("{path}[]"), items, nested)),
                None => "list".to_owned(),
            },
            Some("string") if schema["pattern"].as_str() == Some(HumanDuration::PATTERN) => {
                "duration (`30s`, `2m`, `1h30m`)".to_owned()
            }
            Some(other) => match schema["format"].as_str() {
                Some(format) => format!("{other} ({format})"),
                None => other.to_owned(),
            },
            None if schema["x-kubernetes-int-or-string"] == Value::Bool(true) => {
                "integer or string".to_owned()
            }
            None => "any".to_owned(),
        }
    };
    for bound in bounds(schema) {
        let _ = write!(text, ", {bound}");
    }
    text
}

fn bounds(schema: &Value) -> Vec<String> {
    let number = |key: &str| schema.get(key).map(value_text);
    let mut out = Vec::new();
    for (min, max, unit) in [
        ("minimum", "maximum", ""),
        ("minLength", "maxLength", " characters"),
        ("minItems", "maxItems", " items"),
    ] {
        match (number(min), number(max)) {
            (Some(min), Some(max)) => out.push(format!("{min} to {max}{unit}")),
            (Some(min), None) => out.push(format!("at least {min}{unit}")),
            (None, Some(max)) => out.push(format!("at most {max}{unit}")),
            (None, None) => {}
        }
    }
    out
}

/// An object that gets a section of its own: one with named fields.
fn is_section(schema: &Value) -> bool {
    schema["type"].as_str() == Some("object") && schema["properties"].is_object()
}

/// The CEL rules of a field that has no section of its own (a scalar, a list, or the scalar
/// items of a list), listed in its parent's section under the field's name.
fn field_rules(name: &str, field: &Value) -> Vec<String> {
    if is_section(field) {
        return Vec::new();
    }
    let mut rules = rules_of(field, Some(name));
    if let Some(items) = field.get("items").filter(|items| !is_section(items)) {
        rules.extend(rules_of(items, Some(&format!("{name}[]"))));
    }
    rules
}

fn rules_of(schema: &Value, field: Option<&str>) -> Vec<String> {
    let prefix = field
        .map(|field| format!("{}: ", code(field)))
        .unwrap_or_default();
    schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|validation| {
            let rule = code(validation["rule"].as_str().unwrap_or_default());
            match validation["message"].as_str() {
                Some(message) => format!("{prefix}{rule}: {}", one_line_text(message)),
                None => format!("{prefix}{rule}"),
            }
        })
        .collect()
}

/// A schema's description on one line (tables have no others).
fn one_line(schema: &Value) -> Option<String> {
    schema["description"]
        .as_str()
        .map(one_line_text)
        .filter(|text| !text.is_empty())
}

fn one_line_text(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// A default or enum value as written in YAML: strings bare, anything else as compact JSON.
fn value_text(value: &Value) -> String {
    match value {
        Value::String(text) if !text.is_empty() => text.clone(),
        Value::Number(number) => match number.as_f64() {
            // Bounds of integers arrive as floats (`599.0`).
            Some(float) if float.fract() == 0.0 && float.abs() < 1e15 => format!("{float:.0}"),
            _ => number.to_string(),
        },
        other => other.to_string(),
    }
}

/// Inline code that survives backticks in the text.
fn code(text: &str) -> String {
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// A table cell: `|` would end it, even inside inline code.
fn cell(text: &str) -> String {
    text.replace('|', "\\|")
}

/// The anchor GitHub gives a heading `` `{path}` ``.
fn anchor(path: &str) -> String {
    path.chars()
        .filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_')
        .flat_map(char::to_lowercase)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A small schema with what the reference must show: nested objects, a list of objects,
    /// enums, defaults, bounds, a duration, a map, a free-form object and CEL rules at three
    /// levels.
    fn schema() -> Value {
        json!({
            "description": "Desired state.\nSecond line with `code | pipe`.",
            "type": "object",
            "required": ["selector"],
            "properties": {
                "selector": {
                    "description": "Pods, by label.",
                    "type": "object",
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"}
                        }
                    },
                    "x-kubernetes-validations": [
                        {"rule": "size(self.matchLabels) > 0", "message": "name a label"}
                    ]
                },
                "mode": {
                    "description": "How strict.",
                    "type": "string",
                    "enum": ["Strict", "Lax"],
                    "default": "Strict"
                },
                "httpCode": {
                    "type": "integer",
                    "default": 401,
                    "minimum": 400.0,
                    "maximum": 599.0
                },
                "clockSkew": {
                    "description": "Tolerance.",
                    "type": "string",
                    "pattern": HumanDuration::PATTERN
                },
                "upgrades": {
                    "type": "array",
                    "default": ["websocket"],
                    "items": {"type": "string"},
                    "maxItems": 4,
                    "x-kubernetes-validations": [
                        {"rule": "!self.exists(u, u == 'h2c')", "message": "h2c is never allowed"}
                    ]
                },
                "jwk": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "rules": {
                    "description": "Per-route requirements.",
                    "type": "array",
                    "items": {
                        "description": "One route.",
                        "type": "object",
                        "required": ["paths"],
                        "properties": {
                            "paths": {"type": "array", "items": {"type": "string"}},
                            "claims": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "match": {"type": "string", "enum": ["all", "any"]}
                                    }
                                }
                            }
                        }
                    }
                }
            },
            "x-kubernetes-validations": [
                {"rule": "has(self.a) != has(self.b)", "message": "set exactly one\nof a and b"}
            ]
        })
    }

    #[test]
    fn renders_one_section_per_object_with_its_table_and_rules() {
        let expected = "\
## `spec`

Desired state. Second line with `code | pipe`.

| Field | Type | Required / default | Description |
|---|---|---|---|
| `clockSkew` | duration (`30s`, `2m`, `1h30m`) | optional | Tolerance. |
| `httpCode` | integer, 400 to 599 | default `401` |  |
| `jwk` | object (any fields) | optional |  |
| `mode` | one of `Strict`, `Lax` | default `Strict` | How strict. |
| `rules` | list of [object](#specrules) | optional | Per-route requirements. |
| `selector` | [object](#specselector) | required | Pods, by label. |
| `upgrades` | list of string, at most 4 items | default `[\"websocket\"]` |  |

Rules the API server checks (CEL):

- `has(self.a) != has(self.b)`: set exactly one of a and b
- `upgrades`: `!self.exists(u, u == 'h2c')`: h2c is never allowed

## `spec.rules[]`

One route.

| Field | Type | Required / default | Description |
|---|---|---|---|
| `claims` | list of [object](#specrulesclaims) | optional |  |
| `paths` | list of string | required |  |

## `spec.rules[].claims[]`

| Field | Type | Required / default | Description |
|---|---|---|---|
| `match` | one of `all`, `any` | optional |  |

## `spec.selector`

Pods, by label.

| Field | Type | Required / default | Description |
|---|---|---|---|
| `matchLabels` | map of string to string | optional |  |

Rules the API server checks (CEL):

- `size(self.matchLabels) > 0`: name a label
";
        assert_eq!(render_schema("spec", &schema()), expected);
    }

    #[test]
    fn pipes_in_cells_are_escaped_so_the_table_keeps_its_columns() {
        let schema = json!({
            "type": "object",
            "properties": {
                "op": {"description": "`a|b` or c", "type": "string", "enum": ["a|b", "c"]}
            }
        });
        let rendered = render_schema("spec", &schema);
        assert!(
            rendered.contains("| `op` | one of `a\\|b`, `c` | optional | `a\\|b` or c |"),
            "{rendered}"
        );
    }

    #[test]
    fn values_are_written_as_in_yaml() {
        assert_eq!(value_text(&json!("Bearer")), "Bearer");
        assert_eq!(value_text(&json!("")), "\"\"");
        assert_eq!(value_text(&json!(599.0)), "599");
        assert_eq!(value_text(&json!(0.5)), "0.5");
        assert_eq!(value_text(&json!(true)), "true");
        assert_eq!(code("say `hi`"), "`` say `hi` ``");
    }

    #[test]
    fn rendering_is_deterministic() {
        assert_eq!(
            reference_markdown().expect("reference"),
            reference_markdown().expect("reference")
        );
    }

    #[test]
    fn reference_documents_every_spec_field_and_cel_rule() {
        let reference = reference_markdown().expect("reference");
        for section in [
            "## `spec`",
            "## `spec.validateJwt`",
            "## `spec.validateJwt.requiredClaims[]`",
            "## `spec.validateJwt.issuerSigningKeys[]`",
            "## `spec.validateAzureAdToken`",
            "## `status`",
        ] {
            assert!(reference.contains(&format!("\n{section}\n")), "{section}");
        }
        assert!(reference.contains("| `clockSkew` | duration"));
        assert!(reference.contains("one of `OperatorWithFallback`, `Operator`, `Sidecar`"));
        assert!(reference.contains(
            "- `has(self.validateJwt) != has(self.validateAzureAdToken)`: set exactly one of \
             validateJwt and validateAzureAdToken"
        ));
    }

    #[test]
    fn committed_reference_matches_the_generated_one() {
        let committed = include_str!("../../docs/reference.md");
        let generated = reference_markdown().expect("reference");
        assert!(
            committed == generated,
            "docs/reference.md is stale: run `{REGENERATE}`"
        );
    }
}
