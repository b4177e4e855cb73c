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

/// Condition reasons, one place for the operator that writes them, the webhook and the tests
/// that read them, and users who alert on them (they also name the operator's Events).
pub mod reason {
    /// `Ready=True`: the policy is in its namespace's bundle.
    pub const RENDERED: &str = "Rendered";
    /// `Ready=False`: the spec fails validation; the message lists every field at fault.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// `Ready=False`: a `secretRef` names a Secret (or key) that does not exist.
    pub const SECRET_NOT_FOUND: &str = "SecretNotFound";
    /// `KeysResolved=True`: every key source answered with keys, or the keys are inline.
    pub const KEYS_FETCHED: &str = "KeysFetched";
    /// `KeysResolved=Unknown`: the first fetch of a key source has not finished.
    pub const FETCHING: &str = "Fetching";
    /// `KeysResolved=False`: a key source failed; the message names it and the error.
    pub const KEY_SOURCE_FAILED: &str = "KeySourceFailed";
    /// `Conflict=True`: another TokenPolicy selects some of the same pods.
    pub const SELECTOR_OVERLAP: &str = "SelectorOverlap";
    /// `Conflict=False`.
    pub const NO_OVERLAP: &str = "NoOverlap";
    /// `Bypass=True`: a Service targets a protected port so that traffic skips the sidecar.
    pub const SERVICE_TARGETS_APP_PORT: &str = "ServiceTargetsAppPort";
    /// `Bypass=False`.
    pub const NO_BYPASS: &str = "NoBypass";
}

/// Condition status values (`metav1.ConditionStatus`).
pub mod condition_status {
    pub const TRUE: &str = "True";
    pub const FALSE: &str = "False";
    pub const UNKNOWN: &str = "Unknown";
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
