//! TokenPolicy manifests as files: the YAML a user `kubectl apply`s is the YAML the sidecar
//! reads standalone, and the form the operator renders into the bundle.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::spec::TokenPolicySpec;

pub const API_VERSION: &str = "tokengate.dev/v1alpha1";
pub const KIND: &str = "TokenPolicy";

/// A TokenPolicy object as read from a file.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicyDocument {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: DocumentMeta,
    pub spec: TokenPolicySpec,
}

/// The part of `metadata` the sidecar uses.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DocumentMeta {
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// Orders policies when two select the same pod: the oldest applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Why a manifest could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    #[error("not YAML: {message}")]
    Stream { message: String },
    #[error("document {index}: not YAML a TokenPolicy can be read from: {message}")]
    Syntax { index: usize, message: String },
    #[error(
        "document {index}: expected apiVersion {API_VERSION} and kind {KIND}, found {api_version} {kind}"
    )]
    WrongKind {
        index: usize,
        api_version: String,
        kind: String,
    },
    #[error("document {index}: metadata.name is missing")]
    Unnamed { index: usize },
    #[error("no TokenPolicy found")]
    Empty,
}

/// Every TokenPolicy in a YAML (or JSON) stream; `---` separates documents and empty documents
/// are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<TokenPolicyDocument>, DocumentError> {
    let values: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|err| DocumentError::Stream {
            message: err.to_string(),
        })?;
    let mut docs = Vec::new();
    for (index, value) in values.into_iter().enumerate() {
        let index = index + 1;
        if value.is_null() {
            continue;
        }
        let api_version = value
            .get("apiVersion")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        let kind = value
            .get("kind")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default();
        if api_version != API_VERSION || kind != KIND {
            return Err(DocumentError::WrongKind {
                index,
                api_version: api_version.to_owned(),
                kind: kind.to_owned(),
            });
        }
        let doc: TokenPolicyDocument =
            serde_json::from_value(value).map_err(|err| DocumentError::Syntax {
                index,
                message: err.to_string(),
            })?;
        if doc.metadata.name.is_empty() {
            return Err(DocumentError::Unnamed { index });
        }
        docs.push(doc);
    }
    if docs.is_empty() {
        return Err(DocumentError::Empty);
    }
    Ok(docs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_several_documents_and_names_the_bad_one() {
        let text = r#"
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
metadata: {name: a}
spec:
  selector: {matchLabels: {app: a}}
  validateJwt: {jwksUris: ["https://idp.example/keys"]}
---
---
apiVersion: tokengate.dev/v1alpha1
kind: TokenPolicy
metadata: {name: b, namespace: shop}
spec:
  selector: {matchLabels: {app: b}}
  validateJwt: {jwksUris: ["https://idp.example/keys"], clockSkew: 30s}
"#;
        let docs = parse_documents(text).expect("parses");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].metadata.namespace.as_deref(), Some("shop"));
        let skew = docs[1].spec.validate_jwt.as_ref().map(|v| v.clock_skew.0);
        assert_eq!(skew, Some(std::time::Duration::from_secs(30)));

        let err = parse_documents("apiVersion: v1\nkind: ConfigMap\n").expect_err("wrong kind");
        assert!(err.to_string().contains("expected apiVersion"), "{err}");
        let err = parse_documents(
            "apiVersion: tokengate.dev/v1alpha1\nkind: TokenPolicy\nmetadata: {name: x}\nspec:\n  selector: {matchLabels: {app: a}}\n  validateJwt: {clockSkew: soon}\n",
        )
        .expect_err("bad duration");
        assert!(err.to_string().contains("invalid duration"), "{err}");
    }
}
