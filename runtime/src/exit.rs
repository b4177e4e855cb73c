//! Exit codes, the same for every tokengate binary.

/// A run that ended as asked (SIGTERM, SIGINT, or a `check` that allowed the token).
pub const OK: i32 = 0;

/// A runtime failure after a valid start (for example: leadership lost, a `check` refusal).
pub const FAILURE: i32 = 1;

/// Bad invocation or configuration. sysexits calls 64 EX_USAGE; linkerd and most proxies use it
/// for "bad invocation or configuration", so a crash-looping pod's exit code says "fix the
/// configuration", not "retry".
pub const CONFIG: i32 = 64;
