//! Test tool for `tests/store_kill.rs`: writes to a store in a loop and prints a line after
//! every write the store acknowledged as durable, until it is killed. Not part of hookd.
//!
//! Usage: `store-writer DATA_DIR` — resumes from whatever the data dir holds.
//! `store-writer DATA_DIR changes` — only applies, never flushing: batch `n` puts `n` under
//! each of the keys `k00` to `k{CHANGE_KEYS - 1}`, so a state whose keys differ holds part of
//! a batch. Prints `change n` after each.

use std::io::Write;

use std::sync::Arc;

use hookd_raft::machine::kv::{Cmd, Kv};
use hookd_raft::store::Store;
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .ok_or("usage: store-writer DATA_DIR")?;
    let store = Store::open(std::path::Path::new(&dir), 1, Arc::new(Kv))?;
    if std::env::args().nth(2).as_deref() == Some("changes") {
        return changes(store).await;
    }
    let mut log = store.log_store();
    let mut sm = store.state_machine();
    let mut next = log
        .get_log_state()
        .await?
        .last_log_id
        .map_or(1, |l| l.index + 1);
    let (applied, _) = sm.applied_state().await?;
    // Re-apply what the log holds beyond the state machine, as openraft would on start.
    let mut applied = applied.map_or(0, |l| l.index);
    let mut out = std::io::stdout().lock();
    loop {
        let term = next;
        log.save_vote(&Vote::new_committed(term, 1)).await?;
        writeln!(out, "vote {term}")?;
        let entry = Entry {
            log_id: LogId::new(CommittedLeaderId::new(term, 1), next),
            payload: EntryPayload::Normal(Cmd::Put {
                key: format!("job-{next}"),
                value: "x".repeat(200),
            }),
        };
        log.blocking_append([entry.clone()]).await?;
        writeln!(out, "append {next}")?;
        use openraft::RaftLogReader;
        let pending = log.try_get_log_entries(applied + 1..=next).await?;
        sm.apply(pending).await?;
        applied = next;
        writeln!(out, "apply {next}")?;
        out.flush()?;
        next += 1;
    }
}

/// Keys each batch of the `changes` mode writes.
const CHANGE_KEYS: u64 = 64;

/// The `changes` mode: batches of `CHANGE_KEYS` puts, applied one after another, never flushed
/// here (sled's own flusher writes them out every half second, wherever a batch stands).
async fn changes(store: Store<Kv>) -> Result<(), Box<dyn std::error::Error>> {
    let mut sm = store.state_machine();
    let (applied, _) = sm.applied_state().await?;
    let mut next = applied.map_or(0, |l| l.index) / CHANGE_KEYS + 1;
    let mut out = std::io::stdout().lock();
    loop {
        let entries = (0..CHANGE_KEYS).map(|k| Entry {
            log_id: LogId::new(
                CommittedLeaderId::new(1, 1),
                (next - 1) * CHANGE_KEYS + k + 1,
            ),
            payload: EntryPayload::Normal(Cmd::Put {
                key: format!("k{k:02}"),
                value: next.to_string(),
            }),
        });
        sm.apply(entries.collect::<Vec<_>>()).await?;
        writeln!(out, "change {next}")?;
        out.flush()?;
        next += 1;
    }
}
