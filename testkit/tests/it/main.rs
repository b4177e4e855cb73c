//! The test kit's own tests, one binary: the identity provider (`idp::`) and the local control
//! plane with its harness (`cluster::`).

mod cluster;
mod idp;
