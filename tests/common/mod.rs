//! Shared test helpers: test certificates, the scripted fake intake, and the daemon
//! started in-process on port 0.
#![allow(dead_code)]

pub mod certs;
pub mod intake;
pub mod daemon;
