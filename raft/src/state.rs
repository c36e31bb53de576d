//! The state machine's data model and the deterministic `apply` of one command.
//!
//! `apply_command` reads nothing but the command, the entry's log id and the tables it is given:
//! no clock, no randomness, no I/O besides the tables. The sled store runs it inside one
//! transaction per batch; tests run it over an in-memory map.

use sled::transaction::ConflictableTransactionError;

use crate::command::{Command, CommandResult, Job};
use crate::typ::LogId;

/// The tables of the state machine. Each is one sled tree per snapshot generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// job id → `Job` (JSON)
    Jobs = 0,
    /// node id (8 bytes, big-endian) → API address (UTF-8)
    Nodes = 1,
    /// named singletons, e.g. `cluster_id`
    Misc = 2,
}

impl Table {
    pub const ALL: [Table; 3] = [Table::Jobs, Table::Nodes, Table::Misc];

    pub fn name(self) -> &'static str {
        match self {
            Table::Jobs => "jobs",
            Table::Nodes => "nodes",
            Table::Misc => "misc",
        }
    }
}

/// Key of the cluster id in `Table::Misc`.
pub const CLUSTER_ID_KEY: &[u8] = b"cluster_id";

/// Why a transaction over the tables stopped.
#[derive(Debug, thiserror::Error)]
pub enum StateFault {
    #[error("storage error: {0}")]
    Storage(sled::Error),
    #[error("transaction saw fewer trees than tables")]
    MissingTables,
    #[error("corrupt record in table {table}: {source}")]
    Decode {
        table: &'static str,
        source: serde_json::Error,
    },
}

pub type TxResult<T> = Result<T, ConflictableTransactionError<StateFault>>;

/// Key-value access to the state machine's tables inside one atomic batch.
pub trait Tables {
    fn get(&self, table: Table, key: &[u8]) -> TxResult<Option<Vec<u8>>>;
    fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> TxResult<()>;
    fn del(&self, table: Table, key: &[u8]) -> TxResult<()>;
}

fn get_job<T: Tables>(t: &T, id: &str) -> TxResult<Option<Job>> {
    match t.get(Table::Jobs, id.as_bytes())? {
        None => Ok(None),
        Some(bytes) => decode_job(&bytes)
            .map(Some)
            .map_err(ConflictableTransactionError::Abort),
    }
}

/// Decodes a stored job record.
pub fn decode_job(bytes: &[u8]) -> Result<Job, StateFault> {
    serde_json::from_slice(bytes).map_err(|source| StateFault::Decode {
        table: Table::Jobs.name(),
        source,
    })
}

fn put_job<T: Tables>(t: &T, job: &Job) -> TxResult<()> {
    // Serializing our own plain struct cannot fail.
    let bytes = serde_json::to_vec(job).unwrap_or_default();
    t.put(Table::Jobs, job.id.as_bytes(), bytes)
}

/// Applies one command at `log_id`. Deterministic: equal inputs give equal outputs and writes.
pub fn apply_command<T: Tables>(t: &T, log_id: &LogId, cmd: &Command) -> TxResult<CommandResult> {
    match cmd {
        Command::CreateJob { id, spec, now_ms } => {
            if let Some(existing) = get_job(t, id)? {
                return Ok(if existing.spec == *spec {
                    CommandResult::Job {
                        job: existing,
                        created: false,
                        changed: false,
                    }
                } else {
                    CommandResult::Conflict { existing }
                });
            }
            let job = new_job(id, spec.clone(), log_id, *now_ms);
            put_job(t, &job)?;
            Ok(CommandResult::Job {
                job,
                created: true,
                changed: true,
            })
        }
        Command::PutJob { id, spec, now_ms } => match get_job(t, id)? {
            None => {
                let job = new_job(id, spec.clone(), log_id, *now_ms);
                put_job(t, &job)?;
                Ok(CommandResult::Job {
                    job,
                    created: true,
                    changed: true,
                })
            }
            Some(existing) if existing.spec == *spec => Ok(CommandResult::Job {
                job: existing,
                created: false,
                changed: false,
            }),
            Some(mut job) => {
                job.spec = spec.clone();
                touch(&mut job, *now_ms);
                put_job(t, &job)?;
                Ok(CommandResult::Job {
                    job,
                    created: false,
                    changed: true,
                })
            }
        },
        Command::DeleteJob { id, now_ms: _ } => match get_job(t, id)? {
            None => Ok(CommandResult::NotFound),
            Some(job) => {
                t.del(Table::Jobs, id.as_bytes())?;
                Ok(CommandResult::Deleted { job })
            }
        },
        Command::SetPaused { id, paused, now_ms } => match get_job(t, id)? {
            None => Ok(CommandResult::NotFound),
            Some(job) if job.spec.paused == *paused => Ok(CommandResult::Job {
                job,
                created: false,
                changed: false,
            }),
            Some(mut job) => {
                job.spec.paused = *paused;
                touch(&mut job, *now_ms);
                put_job(t, &job)?;
                Ok(CommandResult::Job {
                    job,
                    created: false,
                    changed: true,
                })
            }
        },
        Command::SetNodeInfo { node_id, api_addr } => {
            t.put(
                Table::Nodes,
                &node_id.to_be_bytes(),
                api_addr.as_bytes().to_vec(),
            )?;
            Ok(CommandResult::Done)
        }
        Command::SetClusterId { cluster_id } => {
            if t.get(Table::Misc, CLUSTER_ID_KEY)?.is_none() {
                t.put(Table::Misc, CLUSTER_ID_KEY, cluster_id.as_bytes().to_vec())?;
            }
            Ok(CommandResult::Done)
        }
    }
}

fn new_job(id: &str, spec: crate::command::JobSpec, log_id: &LogId, now_ms: i64) -> Job {
    Job {
        id: id.to_owned(),
        spec,
        incarnation: log_id.index,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        version: 1,
    }
}

/// Marks a changed job. `updated_at` never moves backwards, even if the proposing leader's clock
/// is behind the previous one's.
fn touch(job: &mut Job, now_ms: i64) {
    job.version += 1;
    job.updated_at_ms = job.updated_at_ms.max(now_ms);
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use super::*;
    use crate::command::{JobSpec, MisfirePolicy, MisfireSpec, RetrySpec, ScheduleSpec};

    /// (table, key) → value
    type Rows = BTreeMap<(u8, Vec<u8>), Vec<u8>>;

    #[derive(Default)]
    struct MemTables(RefCell<Rows>);

    impl Tables for MemTables {
        fn get(&self, table: Table, key: &[u8]) -> TxResult<Option<Vec<u8>>> {
            Ok(self.0.borrow().get(&(table as u8, key.to_vec())).cloned())
        }
        fn put(&self, table: Table, key: &[u8], value: Vec<u8>) -> TxResult<()> {
            self.0
                .borrow_mut()
                .insert((table as u8, key.to_vec()), value);
            Ok(())
        }
        fn del(&self, table: Table, key: &[u8]) -> TxResult<()> {
            self.0.borrow_mut().remove(&(table as u8, key.to_vec()));
            Ok(())
        }
    }

    fn spec(url: &str) -> JobSpec {
        JobSpec {
            url: url.into(),
            method: "POST".into(),
            headers: BTreeMap::new(),
            body: None,
            schedule: ScheduleSpec::After { after_ms: 1000 },
            retry: RetrySpec {
                max_attempts: 5,
                initial_backoff_ms: 1000,
                max_backoff_ms: 3_600_000,
                multiplier: 2.0,
                jitter: 0.2,
            },
            timeout_ms: 10_000,
            misfire: MisfireSpec {
                policy: MisfirePolicy::FireOnce,
                grace_ms: 60_000,
                catchup_window_ms: 86_400_000,
            },
            paused: false,
        }
    }

    fn log_id(index: u64) -> LogId {
        openraft::LogId::new(openraft::CommittedLeaderId::new(1, 1), index)
    }

    fn apply(t: &MemTables, index: u64, cmd: Command) -> CommandResult {
        apply_command(t, &log_id(index), &cmd).expect("in-memory apply cannot fail")
    }

    #[test]
    fn create_is_idempotent_for_equal_specs_and_conflicts_otherwise() {
        let t = MemTables::default();
        let create = |url: &str, now| Command::CreateJob {
            id: "a".into(),
            spec: spec(url),
            now_ms: now,
        };
        let CommandResult::Job {
            job, created: true, ..
        } = apply(&t, 1, create("http://x/", 10))
        else {
            panic!("first create must create");
        };
        assert_eq!(
            (job.incarnation, job.version, job.created_at_ms),
            (1, 1, 10)
        );
        match apply(&t, 2, create("http://x/", 20)) {
            CommandResult::Job {
                job: again,
                created: false,
                changed: false,
            } => assert_eq!(again, job, "a safe retry returns the stored job unchanged"),
            other => panic!("unexpected {other:?}"),
        }
        match apply(&t, 3, create("http://y/", 30)) {
            CommandResult::Conflict { existing } => assert_eq!(existing, job),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn put_replaces_and_bumps_version_delete_then_create_gets_new_incarnation() {
        let t = MemTables::default();
        let put = |url: &str, now| Command::PutJob {
            id: "a".into(),
            spec: spec(url),
            now_ms: now,
        };
        assert!(matches!(
            apply(&t, 1, put("http://x/", 10)),
            CommandResult::Job { created: true, .. }
        ));
        let CommandResult::Job {
            job,
            created: false,
            changed: true,
        } = apply(&t, 2, put("http://y/", 5))
        else {
            panic!("replace expected");
        };
        assert_eq!(job.version, 2);
        assert_eq!(job.updated_at_ms, 10, "updated_at never goes backwards");
        assert_eq!(job.spec.url, "http://y/");
        let del = Command::DeleteJob {
            id: "a".into(),
            now_ms: 30,
        };
        assert!(matches!(
            apply(&t, 3, del.clone()),
            CommandResult::Deleted { .. }
        ));
        assert_eq!(apply(&t, 4, del), CommandResult::NotFound);
        let CommandResult::Job {
            job, created: true, ..
        } = apply(&t, 5, put("http://y/", 40))
        else {
            panic!("create expected");
        };
        assert_eq!((job.incarnation, job.version), (5, 1));
    }

    #[test]
    fn pause_changes_once_and_unknown_ids_are_not_found() {
        let t = MemTables::default();
        apply(
            &t,
            1,
            Command::CreateJob {
                id: "a".into(),
                spec: spec("http://x/"),
                now_ms: 1,
            },
        );
        let pause = || Command::SetPaused {
            id: "a".into(),
            paused: true,
            now_ms: 2,
        };
        assert!(matches!(
            apply(&t, 2, pause()),
            CommandResult::Job { changed: true, .. }
        ));
        match apply(&t, 3, pause()) {
            CommandResult::Job {
                job,
                changed: false,
                ..
            } => {
                assert!(job.spec.paused);
                assert_eq!(job.version, 2);
            }
            other => panic!("unexpected {other:?}"),
        }
        let unknown = Command::SetPaused {
            id: "b".into(),
            paused: true,
            now_ms: 2,
        };
        assert_eq!(apply(&t, 4, unknown), CommandResult::NotFound);
    }

    #[test]
    fn cluster_id_is_set_once() {
        let t = MemTables::default();
        apply(
            &t,
            1,
            Command::SetClusterId {
                cluster_id: "one".into(),
            },
        );
        apply(
            &t,
            2,
            Command::SetClusterId {
                cluster_id: "two".into(),
            },
        );
        assert_eq!(
            t.get(Table::Misc, CLUSTER_ID_KEY).ok().flatten(),
            Some(b"one".to_vec())
        );
    }
}
