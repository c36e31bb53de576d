//! Black-box tools for hookd: they start `hookd` processes and talk to them over HTTP only (no
//! dependency on hookd's crates), so they test what users run. The chaos harness
//! (`hookd-jepsen`) is built from the modules below; `local` and `stats` serve the benchmarks,
//! and `local` hookd's integration tests too. `process` is what `local` and `cluster` share.

pub mod batch;
pub mod blackhole;
pub mod cgroup;
pub mod check;
pub mod client;
pub mod cluster;
pub mod etcd;
pub mod history;
pub mod lazyfs;
pub mod local;
pub mod membership;
pub mod nemesis;
pub mod net;
pub mod nginx;
pub mod process;
pub mod proxy;
pub mod report;
pub mod rolling;
pub mod run;
pub mod sink;
pub mod stats;
pub mod svg;
pub mod webdriver;
pub mod workload;
pub mod wrk;
