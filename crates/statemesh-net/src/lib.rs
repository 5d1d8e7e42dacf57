//! statemesh's links: QUIC between every pair of peers, local-socket and mDNS discovery, and
//! peer authentication with the mesh secret.

pub mod auth;
pub mod discovery;
pub mod keyring;
#[cfg(unix)]
pub mod local;
pub mod mdns;
pub mod quic;
pub mod secret;
mod udp;
pub mod views;
