//! Test infrastructure shared by every test tier: the test identity provider, the echo upstream
//! and the local control-plane harness.

pub mod cluster;
pub mod echo;
pub mod idp;
