//! `tokengate`, the user command line: `import-apim` converts Azure API Management token
//! policies into TokenPolicy YAML. Depends on the policy crate only: no cluster access.

pub mod apim;
pub mod cli;
pub mod import;
pub mod report;
pub mod values;

/// Exit codes of `tokengate`.
pub mod exit {
    /// Everything was carried over (notes aside).
    pub const OK: i32 = 0;
    /// TokenPolicy YAML was written, but the report lists something not carried over: an
    /// attribute or element without an equivalent, a named value not given, a policy
    /// expression, a policy that needs a decision, or a TokenPolicy that would be refused.
    pub const INCOMPLETE: i32 = 2;
    /// Unusable input or invocation (not XML, no token policy, a bad option): nothing written.
    /// The same code as the other tokengate binaries use for bad configuration (EX_USAGE).
    pub const UNUSABLE: i32 = 64;
}
