//! hookd's integration tests: whole nodes and clusters as real processes on loopback.

mod api;
mod bounds;
mod bulk;
mod cli;
mod cluster;
mod dispatch;
mod edits;
mod events;
mod harness;
mod idempotency;
mod isolation;
mod members;
mod node;
mod openapi;
mod overlap;
mod policy;
mod restart;
mod security;
mod shards;
mod sink;
mod stats;
mod tls;
mod ui;
