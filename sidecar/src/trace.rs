//! A hook that sees each step of a decision, for `tokengate-sidecar check`.

use std::fmt;

/// Receives each check as it runs. Messages may quote token values, so the request path uses
/// [`NoTrace`]; they are format arguments, so nothing is formatted unless a tracer keeps them.
pub trait Trace: Send {
    fn step(&mut self, check: &'static str, passed: bool, message: fmt::Arguments<'_>);
}

/// The request path's tracer: keeps nothing.
pub struct NoTrace;

impl Trace for NoTrace {
    fn step(&mut self, _: &'static str, _: bool, _: fmt::Arguments<'_>) {}
}
