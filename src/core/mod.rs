//! The domain core: jobs, runs and claims as a deterministic state machine (`state`), the
//! commands that change it (`command`), how its tables are read (`view`), and the planner
//! whose decisions `apply` must agree with (`plan`: which runs to claim, what follows an
//! attempt). No tokio, no sled, no openraft, no clock: `crate::replicated` runs the state
//! machine inside the replicated store, `crate::dispatch` runs the planner, and `tests.rs` runs
//! both together over in-memory tables with a fake clock.

pub mod command;
pub mod events;
pub mod filter;
pub mod format;
pub mod idempotency;
pub mod overlap;
pub mod plan;
pub mod query;
mod records;
pub mod render;
pub mod state;
pub mod validate;
pub mod view;

#[cfg(test)]
mod mem;
#[cfg(test)]
mod tests;

pub use command::{Command, CommandResult, Job, JobSpec};
