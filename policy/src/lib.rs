//! The `TokenPolicy` API: spec types, defaults, validation, and compilation into the runtime
//! model the sidecar enforces. No I/O: files are read through [`compile::KeyFiles`].

pub mod claims;
pub mod compile;
pub mod contract;
pub mod document;
pub mod entra;
pub mod keys;
pub mod routes;
pub mod selector;
pub mod spec;
pub mod status;

pub use compile::{
    CompiledPolicy, Extraction, FieldError, InvalidPolicy, IssuerRule, KeyFiles, RemoteKeySource,
    RequestRules, Verification, compile, remote_key_sources, validate,
};
pub use document::{DocumentError, TokenPolicyDocument, parse_documents};
pub use keys::{KeyError, VerificationKey};
pub use selector::LabelSelector;
pub use spec::{KeyDelivery, KeySelection, TokenPolicy, TokenPolicySpec};
pub use status::TokenPolicyStatus;

/// Re-exported so users of the model name algorithms with the same type.
pub use jsonwebtoken::Algorithm;
