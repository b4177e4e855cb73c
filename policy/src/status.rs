//! What the operator reports on a TokenPolicy (`status`), shared by the operator that writes it
//! and by `kubectl get tokenpolicies` through the CRD's printer columns.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Condition types on a TokenPolicy.
pub mod condition {
    /// The policy is valid and rendered into its namespace's bundle.
    pub const READY: &str = "Ready";
    /// The policy's key sources answered with keys (discovery, JWKS, referenced Secrets).
    pub const KEYS_RESOLVED: &str = "KeysResolved";
    /// Another TokenPolicy selects some of the same pods; the oldest one applies.
    pub const CONFLICT: &str = "Conflict";
    /// A Service reaches the protected pods around the sidecar.
    pub const BYPASS: &str = "Bypass";
}

/// Observed state of a TokenPolicy, written by the operator.
#[derive(Serialize, Deserialize, JsonSchema, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TokenPolicyStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `KeysResolved`, `Conflict` and `Bypass`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// `validateJwt` or `validateAzureAdToken`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,

    /// The selector in `kubectl`'s label-selector syntax.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// How many pods of the namespace the selector picks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selected_pods: Option<i32>,
}
