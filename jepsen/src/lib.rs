//! Black-box tools for hookd: they start `hookd` processes and talk to them over HTTP only (no
//! dependency on hookd's crates), so they test what users run.

pub mod local;
pub mod stats;
