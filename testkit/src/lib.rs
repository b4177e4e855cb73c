//! Test infrastructure shared by every test tier: the test identity provider, the echo upstream,
//! the local control-plane harness, and the check of the chart's dashboard against what
//! tokengate exposes.

pub mod cluster;
pub mod dashboard;
pub mod echo;
pub mod https;
pub mod idp;
pub mod metrics;
