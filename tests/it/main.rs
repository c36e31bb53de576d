//! hookd's integration tests: whole nodes and clusters as real processes on loopback.

mod api;
mod cluster;
mod harness;
mod node;
