//! `tokengate import-apim`: an APIM policy (one `validate-jwt` or `validate-azure-ad-token`
//! element, several policies side by side, a policy `<fragment>`, or a whole `<policies>`
//! document) into TokenPolicy YAML, with a report of everything that was not carried over.

use std::collections::BTreeMap;

use roxmltree::{Document, Node};
use tokengate_policy::document::{API_VERSION, DocumentMeta, KIND};
use tokengate_policy::selector::LabelSelector;
use tokengate_policy::spec::TokenPolicySpec;
use tokengate_policy::{TokenPolicyDocument, validate};

use crate::apim::{Converter, VALIDATE_AZURE_AD_TOKEN, VALIDATE_JWT, element_path};
use crate::report::{Kind, Report};
use crate::values::{NamedValues, one_line};

/// The element a fragment of several top-level policies is wrapped in to be read as XML.
pub const FRAGMENT_ROOT: &str = "tokengate-apim-fragment";

/// The label of the selector written when no `--selector` is given: valid, so the output
/// applies, and selecting no pod until it is replaced.
pub const PLACEHOLDER_SELECTOR: (&str, &str) = (
    "tokengate.dev/edit-selector",
    "replace-with-the-labels-of-the-pods-to-protect",
);

/// The name of the TokenPolicy when neither `--name` nor a file name gives one.
pub const DEFAULT_NAME: &str = "apim-import";

const SECTIONS: [&str; 4] = ["inbound", "backend", "outbound", "on-error"];

/// How the TokenPolicies are written.
#[derive(Debug, Default)]
pub struct Options {
    /// `metadata.name`; suffixed `-1`, `-2`, ... when the input holds several token policies.
    pub name: String,
    pub namespace: Option<String>,
    /// `spec.selector.matchLabels`; empty: [`PLACEHOLDER_SELECTOR`].
    pub selector: BTreeMap<String, String>,
    pub values: NamedValues,
}

/// The result of an import.
#[derive(Debug)]
pub struct Import {
    /// One TokenPolicy per token policy element, with the element's path.
    pub policies: Vec<(String, TokenPolicyDocument)>,
    pub report: Report,
}

/// Input that cannot be imported at all (exit 64).
#[derive(Debug, PartialEq, Eq)]
pub struct UnusableInput(pub String);

impl std::fmt::Display for UnusableInput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UnusableInput {}

/// What the input holds, in document order.
enum Found<'a, 'input> {
    /// A token policy element. `placement` says why it needs a decision: it sits inside
    /// another element of its section (`choose/when`), or outside `<inbound>`.
    Policy {
        element: Node<'a, 'input>,
        placement: Option<String>,
    },
    /// Anything else, reported: the item's kind, path and message.
    Other(Kind, String, String),
}

/// Converts `xml`; see the module documentation.
pub fn import(xml: &str, options: &Options) -> Result<Import, UnusableInput> {
    if xml.trim().is_empty() {
        return Err(UnusableInput("the input is empty".to_owned()));
    }
    let wrapped;
    let document = match Document::parse(xml) {
        Ok(document) => document,
        Err(original) => {
            // A fragment of several policies (`<validate-jwt/>` then `<choose/>`) has more than
            // one root element; read it inside one.
            wrapped = format!(
                "<{FRAGMENT_ROOT}>{}</{FRAGMENT_ROOT}>",
                without_declaration(xml)
            );
            Document::parse(&wrapped)
                .map_err(|_| UnusableInput(format!("not well-formed XML: {original}")))?
        }
    };
    let mut report = Report::default();
    let found = find_policies(document.root_element())?;

    let mut policies = Vec::new();
    let count = found
        .iter()
        .filter(|f| matches!(f, Found::Policy { .. }))
        .count();
    for entry in found {
        let (element, placement) = match entry {
            Found::Policy { element, placement } => (element, placement),
            Found::Other(kind, path, message) => {
                report.push(kind, path, message);
                continue;
            }
        };
        let path = element_path(element);
        if let Some(placement) = placement {
            report.push(Kind::Decision, &path, placement);
        }
        let converted = Converter {
            values: &options.values,
            report: &mut report,
        }
        .convert(element);
        let name = if count > 1 {
            format!("{}-{}", options.name, policies.len() + 1)
        } else {
            options.name.clone()
        };
        let selector = if options.selector.is_empty() {
            let (key, value) = PLACEHOLDER_SELECTOR;
            BTreeMap::from([(key.to_owned(), value.to_owned())])
        } else {
            options.selector.clone()
        };
        let spec = TokenPolicySpec {
            selector: LabelSelector {
                match_labels: selector,
                match_expressions: Vec::new(),
            },
            token: converted.token,
            validate_jwt: converted.validate_jwt,
            validate_azure_ad_token: converted.validate_azure_ad_token,
            failed_validation: converted.failed_validation,
            ..TokenPolicySpec::default()
        };
        for error in validate(&spec) {
            report.push(
                Kind::Refused,
                format!("{name}: {}", error.field),
                format!(
                    "{}; the validating webhook refuses the TokenPolicy until this is fixed",
                    error.message
                ),
            );
        }
        let document = TokenPolicyDocument {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: DocumentMeta {
                name,
                namespace: options.namespace.clone(),
                ..DocumentMeta::default()
            },
            spec,
        };
        policies.push((path, document));
    }
    if options.selector.is_empty() {
        let (key, value) = PLACEHOLDER_SELECTOR;
        report.push(
            Kind::Note,
            "spec.selector",
            format!(
                "no --selector given: written as {key}: {value}, which selects no pod; replace it with the labels of the pods to protect (--selector app=orders)"
            ),
        );
    }
    for name in options.values.unused() {
        report.push(
            Kind::Note,
            format!("--set {name}"),
            "the policy uses no named value of this name",
        );
    }
    Ok(Import { policies, report })
}

/// The text after an XML declaration, which may only stand at the very start of a document.
fn without_declaration(xml: &str) -> &str {
    let trimmed = xml.trim_start_matches('\u{feff}').trim_start();
    if trimmed.starts_with("<?xml")
        && let Some(end) = trimmed.find("?>")
    {
        return &trimmed[end + 2..];
    }
    xml
}

fn is_token_policy(node: &Node<'_, '_>) -> bool {
    node.is_element()
        && matches!(
            node.tag_name().name(),
            VALIDATE_JWT | VALIDATE_AZURE_AD_TOKEN
        )
}

/// Every token policy element of the input and every other policy, in document order.
fn find_policies<'a, 'input>(
    root: Node<'a, 'input>,
) -> Result<Vec<Found<'a, 'input>>, UnusableInput> {
    let mut found = Vec::new();
    let name = root.tag_name().name();
    match name {
        VALIDATE_JWT | VALIDATE_AZURE_AD_TOKEN => found.push(Found::Policy {
            element: root,
            placement: None,
        }),
        "policies" => {
            for section in root.children().filter(Node::is_element) {
                let section_name = section.tag_name().name();
                if SECTIONS.contains(&section_name) {
                    walk_section(section, section_name == "inbound", &mut found);
                } else {
                    found.push(Found::Other(
                        Kind::NotCarriedOver,
                        element_path(section),
                        "not a policy section (inbound, backend, outbound, on-error); left out"
                            .to_owned(),
                    ));
                }
            }
        }
        // Our wrapper around several policies, and APIM's policy fragments.
        FRAGMENT_ROOT | "fragment" => walk_section(root, true, &mut found),
        _ if SECTIONS.contains(&name) => walk_section(root, name == "inbound", &mut found),
        _ => {
            return Err(UnusableInput(format!(
                "expected <policies>, <fragment>, <validate-jwt> or <validate-azure-ad-token>, found <{name}>"
            )));
        }
    }
    if !found.iter().any(|f| matches!(f, Found::Policy { .. })) {
        return Err(UnusableInput(
            "no validate-jwt or validate-azure-ad-token policy found".to_owned(),
        ));
    }
    Ok(found)
}

fn walk_section<'a, 'input>(
    section: Node<'a, 'input>,
    inbound: bool,
    found: &mut Vec<Found<'a, 'input>>,
) {
    let outside = (!inbound).then(|| {
        format!(
            "APIM runs token policies in inbound only, and this one is in {}; it is converted, but decide whether the application needs it, and delete its TokenPolicy if not",
            section.tag_name().name()
        )
    });
    for child in section.children().filter(Node::is_element) {
        if is_token_policy(&child) {
            found.push(Found::Policy {
                element: child,
                placement: outside.clone(),
            });
            continue;
        }
        let name = child.tag_name().name();
        if name == "base" {
            continue;
        }
        let nested: Vec<_> = child.descendants().filter(is_token_policy).collect();
        let advice = if name == "choose" {
            "conditions are not converted; requirements that depend on the path, the method or claims can be written as spec.rules (paths, methods, authentication, requiredClaims)"
        } else {
            "tokengate converts validate-jwt and validate-azure-ad-token only; keep this policy in front of the cluster or replace it on its own"
        };
        found.push(Found::Other(
            Kind::NotCarriedOver,
            element_path(child),
            format!("not a token policy, not converted: {advice}"),
        ));
        for element in nested {
            let condition = element
                .ancestors()
                .take_while(|a| *a != child)
                .chain(std::iter::once(child))
                .find_map(|a| a.attribute("condition"))
                .map(|c| format!(" (condition {})", one_line(c)))
                .unwrap_or_default();
            found.push(Found::Policy {
                element,
                placement: Some(format!(
                    "APIM applies it only inside {name}{condition}; it is converted as a TokenPolicy for every request of the selected pods: limit it with spec.rules (paths, methods, authentication), or delete it"
                )),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> Options {
        Options {
            name: "orders".to_owned(),
            selector: BTreeMap::from([("app".to_owned(), "orders".to_owned())]),
            ..Options::default()
        }
    }

    #[test]
    fn unusable_input_is_an_error() {
        let err = import("<validate-jwt", &options()).expect_err("not XML");
        assert!(err.0.starts_with("not well-formed XML"), "{err}");
        let err = import("<set-header name=\"x\"/>", &options()).expect_err("no token policy");
        assert!(err.0.contains("found <set-header>"), "{err}");
        let err = import(
            "<policies><inbound><base/></inbound></policies>",
            &options(),
        )
        .expect_err("empty");
        assert!(err.0.contains("no validate-jwt"), "{err}");
    }

    #[test]
    fn a_fragment_of_several_policies_is_read_and_its_other_policies_reported() {
        let xml = r#"<?xml version="1.0"?>
<validate-jwt><openid-config url="https://idp.example/.well-known/openid-configuration"/></validate-jwt>
<rate-limit calls="10" renewal-period="60"/>"#;
        let import = import(xml, &options()).expect("imports");
        assert_eq!(import.policies.len(), 1);
        assert_eq!(import.policies[0].0, "validate-jwt");
        assert_eq!(import.policies[0].1.metadata.name, "orders");
        let item = &import.report.items[0];
        assert_eq!(
            (item.kind, item.path.as_str()),
            (Kind::NotCarriedOver, "rate-limit")
        );
    }

    #[test]
    fn every_occurrence_in_a_policies_document_becomes_a_suffixed_policy() {
        let xml = r#"<policies>
  <inbound>
    <base />
    <validate-jwt><openid-config url="https://a.example/.well-known/openid-configuration"/></validate-jwt>
    <choose>
      <when condition="@(context.Request.Method == &quot;POST&quot;)">
        <validate-jwt><openid-config url="https://b.example/.well-known/openid-configuration"/></validate-jwt>
      </when>
    </choose>
  </inbound>
  <outbound>
    <validate-jwt><openid-config url="https://c.example/.well-known/openid-configuration"/></validate-jwt>
  </outbound>
</policies>"#;
        let import = import(xml, &options()).expect("imports");
        let names: Vec<_> = import
            .policies
            .iter()
            .map(|(path, doc)| (path.as_str(), doc.metadata.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("policies/inbound/validate-jwt", "orders-1"),
                ("policies/inbound/choose/when/validate-jwt", "orders-2"),
                ("policies/outbound/validate-jwt", "orders-3"),
            ]
        );
        let decisions: Vec<_> = import
            .report
            .items
            .iter()
            .filter(|i| i.kind == Kind::Decision)
            .collect();
        assert_eq!(decisions.len(), 2);
        assert!(
            decisions[0]
                .message
                .contains("condition @(context.Request.Method == \"POST\")"),
            "{}",
            decisions[0].message
        );
        assert!(decisions[1].message.contains("outbound"));
        assert!(!import.report.is_complete());
    }

    #[test]
    fn what_the_webhook_would_refuse_and_unused_named_values_are_reported() {
        let xml = r#"<validate-jwt><issuer-signing-keys><key certificate-id="c"/></issuer-signing-keys></validate-jwt>"#;
        let import = import(
            xml,
            &Options {
                values: NamedValues::parse(["tenant=x"]).expect("values"),
                ..options()
            },
        )
        .expect("imports");
        let kinds: Vec<_> = import
            .report
            .items
            .iter()
            .map(|i| (i.kind, i.path.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (
                    Kind::NotCarriedOver,
                    "validate-jwt/issuer-signing-keys/key/@certificate-id"
                ),
                (
                    Kind::Refused,
                    "orders: spec.validateJwt.issuerSigningKeys[0]"
                ),
                (Kind::Note, "--set tenant"),
            ]
        );
    }

    #[test]
    fn a_policy_fragment_is_read_like_an_inbound_section() {
        let xml = r#"<fragment><validate-jwt><openid-config url="https://idp.example/.well-known/openid-configuration"/></validate-jwt></fragment>"#;
        let import = import(xml, &options()).expect("imports");
        assert_eq!(import.policies[0].0, "fragment/validate-jwt");
        assert!(import.report.is_complete(), "{:?}", import.report);
    }

    #[test]
    fn without_a_selector_the_placeholder_is_written_and_noted() {
        let xml = r#"<validate-jwt><openid-config url="https://idp.example/.well-known/openid-configuration"/></validate-jwt>"#;
        let import = import(
            xml,
            &Options {
                name: "x".to_owned(),
                ..Options::default()
            },
        )
        .expect("imports");
        let selector = &import.policies[0].1.spec.selector.match_labels;
        assert_eq!(
            selector.get(PLACEHOLDER_SELECTOR.0).map(String::as_str),
            Some(PLACEHOLDER_SELECTOR.1)
        );
        assert!(import.report.is_complete(), "a note only");
        assert_eq!(import.report.items[0].path, "spec.selector");
    }
}
