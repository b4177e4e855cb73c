//! Cross-crate suites; the code is in the test targets (`node.rs`), in [`support`] (shared with
//! the demo, `demo.rs`) and in `tokengate-testkit`.
//! The kind suite for users is in `kind/` (shell scripts, `make kind-test`).

pub mod support;
