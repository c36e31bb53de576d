//! The deterministic `apply` of one command, one function per command, over the tables of
//! `records.rs`.
//!
//! `apply_command` reads nothing but the command, its entry's position and the tables it is
//! given: no clock, no randomness, no I/O besides the tables. The replicated store runs it
//! inside one transaction per batch (`crate::replicated`); tests run it over an in-memory map.

use super::command::MASK;
use super::command::{
    AttemptOutcome, AttemptResult, ClaimItem, ClaimKind, Command, CommandResult, Epoch, Job,
    JobSpec, Run, RunExt, RunStatus, SkipReason, SkippedRange, UnixMs,
};
use super::events;
use super::idempotency::{self, Lookup, Recall};
use super::overlap::{self, Decision};
use super::records::*;
pub use super::records::{
    decode_job, decode_run, decode_run_list, job_index_keys, status_key, status_prefix, Guard,
    RunList, StateFault, Table, Tables, CLUSTER_ID_KEY, DROPPED_TABLES, FORMAT_NEWEST,
    FORMAT_PREVIOUS_RELEASE, JOB_INDEX_KEY, JOB_INDEX_VERSION,
};

/// What applied commands changed, for the dispatcher.
#[derive(Debug, Default, Clone)]
pub struct Touched {
    /// Jobs whose definition, cursor or existence changed.
    pub jobs: Vec<String>,
    /// Runs opened outside a claim (trigger, retry), and events' deliveries (`core::events`):
    /// each needs an attempt.
    pub runs: Vec<String>,
    /// A target's policy changed.
    pub policies: bool,
    /// Client write commands applied (`Command::client_writes`), and runs recorded skipped (a
    /// misfire range counts its count): figures for `GET /v1/stats`, which the leader counts
    /// here, once each entry is applied, so a write forwarded by a follower is counted as
    /// surely as one sent to the leader, and nothing proposed but not applied is.
    pub writes: u64,
    pub skipped: u64,
}

/// Commands one batch entry may carry; `seq` numbers them inside the entry.
pub const BATCH_COMMANDS_MAX: usize = (1 << SEQ_SLOT_BITS) - 1;
const SEQ_SLOT_BITS: u32 = 16;

/// Where a command was applied: its entry's log index and the epoch of the leader that
/// proposed the entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub index: u64,
    pub epoch: Epoch,
    /// The shard whose log this is (`shards.rs`): numbers made from the position (`seq`) carry
    /// it, so ids built from them (incarnations, run ids, webhook-ids) are unique across
    /// shards. Shard 0's numbers are as a lone group's always were.
    pub shard: u32,
}

/// Bits of a `seq` a shard other than the first keeps for its own number.
const SHARD_BITS: u32 = 6;

/// Applies the command of the entry at `at`. Deterministic: equal inputs give equal outputs
/// and writes. What changed for the dispatcher is added to `touched`.
pub fn apply_command<T: Tables>(
    t: &T,
    at: &Position,
    cmd: &Command,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    // Every command gets a number unique in the whole log: its entry's index, and its slot in
    // a batch. Incarnations and manual run ids are built from it.
    let seq = |slot: u64| {
        let n = (at.index << SEQ_SLOT_BITS).wrapping_add(slot);
        match at.shard {
            0 => n,
            k => (n << SHARD_BITS) | u64::from(k),
        }
    };
    touched.writes = touched.writes.saturating_add(cmd.client_writes());
    match cmd {
        Command::Batch { commands } => {
            let mut results = Vec::with_capacity(commands.len());
            for (slot, c) in commands.iter().enumerate() {
                let result = match c {
                    // Batches do not nest; a nested one is rejected, not applied.
                    Command::Batch { .. } => CommandResult::NotFound,
                    c => apply_one(t, at, seq(slot as u64 + 1), c, touched)?,
                };
                results.push(result);
            }
            Ok(CommandResult::Batch { results })
        }
        c => apply_one(t, at, seq(0), c, touched),
    }
}

fn apply_one<T: Tables>(
    t: &T,
    at: &Position,
    seq: u64,
    cmd: &Command,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    match cmd {
        Command::Batch { .. } => Ok(CommandResult::NotFound),
        Command::CreateJob { id, spec, now_ms } => create_job(t, id, spec, seq, *now_ms, touched),
        Command::PutJob { id, spec, now_ms } => replace_job(t, id, spec, seq, *now_ms, touched),
        Command::CreateJob3 { id, spec, now_ms } => {
            create_job(t, id, &spec.clone().into(), seq, *now_ms, touched)
        }
        Command::PutJob3 { id, spec, now_ms } => {
            replace_job(t, id, &spec.clone().into(), seq, *now_ms, touched)
        }
        Command::DeleteJob { id, now_ms: _ } => delete_job(t, id, touched),
        Command::SetPaused { id, paused, now_ms } => set_paused(t, id, *paused, *now_ms, touched),
        Command::SetNodeInfo { node_id, api_addr } => {
            let key = node_id.to_be_bytes();
            t.put(Table::Nodes, &key, api_addr.as_bytes().to_vec())?;
            Ok(CommandResult::Done)
        }
        Command::SetClusterId { cluster_id } => {
            if t.get(Table::Misc, CLUSTER_ID_KEY)?.is_none() {
                t.put(Table::Misc, CLUSTER_ID_KEY, cluster_id.as_bytes().to_vec())?;
            }
            Ok(CommandResult::Done)
        }
        Command::SetFormat { format } => {
            let now = t.get(Table::Misc, CLUSTER_FORMAT_KEY)?;
            if Some(*format) > now.as_deref().and_then(cluster_format_of) {
                t.put(
                    Table::Misc,
                    CLUSTER_FORMAT_KEY,
                    format.to_be_bytes().to_vec(),
                )?;
            }
            Ok(CommandResult::Done)
        }
        Command::ClaimRuns {
            epoch,
            now_ms,
            items,
            retention,
        } => claim_runs(t, at, *epoch, *now_ms, items, *retention, touched),
        Command::RecordAttempts { outcomes } => {
            for outcome in outcomes {
                record_attempt(t, at, outcome, touched)?;
            }
            Ok(CommandResult::Done)
        }
        Command::StartRun { run_id } => start_run(t, at, run_id, touched),
        Command::SetTargetPolicy { target, policy } => {
            match policy {
                Some(p) => put_json(t, Table::TargetPolicies, target.as_bytes(), p)?,
                None => t.del(Table::TargetPolicies, target.as_bytes())?,
            }
            touched.policies = true;
            Ok(CommandResult::Done)
        }
        Command::SetNotification { id, spec, now_ms } => {
            events::set_notification(t, id, spec.as_ref(), *now_ms)
        }
        Command::Announce {
            announcement,
            at_ms,
        } => events::announce(t, at, seq, announcement, *at_ms, touched),
        Command::RetryRun { run_id, now_ms } => retry_run(t, run_id, *now_ms, touched),
        Command::TriggerJob {
            id,
            now_ms,
            retention,
        } => trigger_job(t, id, seq, *now_ms, *retention, touched),
        Command::Bulk {
            action,
            ids,
            now_ms,
        } => {
            // Each id once (validation asks for ascending ids), so a trigger's run ids, built
            // from the job's incarnation and this command's `seq`, stay unique.
            let mut changed = 0u32;
            for id in ids {
                let one = action.command(id, *now_ms);
                if did_change(&apply_one(t, at, seq, &one, touched)?) {
                    changed = changed.saturating_add(1);
                }
            }
            Ok(CommandResult::Bulk { changed })
        }
        Command::IfVersion {
            id,
            versions,
            command,
        } => {
            let current = get_job(t, id)?.map(|j| j.version);
            match current {
                Some(v) if versions.is_empty() || versions.contains(&v) => {
                    apply_one(t, at, seq, command, touched)
                }
                current => Ok(CommandResult::PreconditionFailed { current }),
            }
        }
        Command::Idempotent {
            key,
            fingerprint,
            now_ms,
            command,
        } => under_key(t, key, fingerprint, *now_ms, || {
            let result = apply_one(t, at, seq, command, touched)?;
            let recall = Recall::of(&result);
            Ok((result, recall))
        }),
        Command::Remember {
            key,
            fingerprint,
            now_ms,
            status,
            body,
        } => under_key(t, key, fingerprint, *now_ms, || {
            let recall = Recall::Answer {
                status: *status,
                body: body.clone(),
            };
            Ok((CommandResult::Done, recall))
        }),
    }
}

/// A command under idempotency key `key`: `act` runs only when the key is fresh, and what it
/// got is remembered; a repeat gets that, another request with the key is refused.
fn under_key<T: Tables>(
    t: &T,
    key: &str,
    fingerprint: &idempotency::Fingerprint,
    now_ms: UnixMs,
    act: impl FnOnce() -> TxResult<T, (CommandResult, Recall)>,
) -> TxResult<T, CommandResult> {
    idempotency::forget_due(t, now_ms)?;
    match idempotency::lookup(t, key, fingerprint, now_ms)? {
        Lookup::Repeat(recall) => Ok(CommandResult::Recalled { recall }),
        Lookup::Reused => Ok(CommandResult::KeyReused),
        Lookup::Fresh => {
            let (result, recall) = act()?;
            idempotency::remember(t, key, *fingerprint, now_ms, recall)?;
            Ok(result)
        }
    }
}

/// Whether a single-job command's result changed something (what a bulk answer counts).
fn did_change(result: &CommandResult) -> bool {
    match result {
        CommandResult::Job { changed, .. } => *changed,
        CommandResult::Deleted { .. } | CommandResult::Run { .. } => true,
        _ => false,
    }
}

/// The stored job `id` and `spec` with its masked secrets (`"***"`) taken from it; or the
/// answer when a masked secret has no stored value to keep.
fn with_stored_secrets<T: Tables>(
    t: &T,
    id: &str,
    spec: &JobSpec,
) -> TxResult<T, Result<(Option<Job>, JobSpec), CommandResult>> {
    let existing = get_job(t, id)?;
    Ok(match spec.unmask(existing.as_ref().map(|j| &j.spec)) {
        Ok(spec) => Ok((existing, spec)),
        Err(field) => Err(masked_without_value(&field)),
    })
}

/// A create: a new job, or the existing one when it is the same (`409` when not).
fn create_job<T: Tables>(
    t: &T,
    id: &str,
    spec: &JobSpec,
    seq: u64,
    now_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let (existing, spec) = match with_stored_secrets(t, id, spec)? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    if let Some(existing) = existing {
        return Ok(if existing.spec == spec {
            same_job(existing, now_ms)
        } else {
            CommandResult::Conflict { existing }
        });
    }
    touched.jobs.push(id.to_owned());
    insert_job(t, id, spec, seq, now_ms)
}

/// Stores job `id` as new (its first incarnation, or a new one after a delete).
fn insert_job<T: Tables>(
    t: &T,
    id: &str,
    spec: JobSpec,
    seq: u64,
    now_ms: UnixMs,
) -> TxResult<T, CommandResult> {
    let job = new_job(id, spec, seq, now_ms);
    put_job(t, &job, None)?;
    Ok(changed(job, true))
}

/// A replace (or a create when the job does not exist). A new schedule counts from the
/// replace; pausing forgets the runs not yet due, resuming skips what fell due while paused.
fn replace_job<T: Tables>(
    t: &T,
    id: &str,
    spec: &JobSpec,
    seq: u64,
    now_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let (existing, spec) = match with_stored_secrets(t, id, spec)? {
        Ok(found) => found,
        Err(answer) => return Ok(answer),
    };
    touched.jobs.push(id.to_owned());
    let old = match existing {
        None => return insert_job(t, id, spec, seq, now_ms),
        Some(existing) if existing.spec == spec => return Ok(same_job(existing, now_ms)),
        Some(job) => job,
    };
    let mut job = old.clone();
    if job.spec.schedule != spec.schedule {
        // The new schedule counts from the replace. Runs the old one would have had before it
        // are not owed, and the ones claimed ahead of their instant are dropped, so the new
        // schedule's first run is its first fire after the replace (docs/api.md#safe-edits).
        // Runs already open (a retry, a due run not sent yet, a trigger) go on.
        job.schedule_base_ms = now_ms;
        let kept = forget_runs_due_after(t, id, now_ms)?;
        job.cursor_ms = now_ms.saturating_sub(1).max(kept.unwrap_or(i64::MIN));
    } else if !job.spec.paused && spec.paused {
        forget_runs_due_after(t, id, now_ms)?;
    }
    if job.spec.paused && !spec.paused {
        job.cursor_ms = job.cursor_ms.max(now_ms);
    }
    job.spec = spec;
    touch(&mut job, now_ms);
    put_job(t, &job, Some(&old))?;
    Ok(changed(job, false))
}

/// A delete: the job, its guard and its runs.
fn delete_job<T: Tables>(t: &T, id: &str, touched: &mut Touched) -> TxResult<T, CommandResult> {
    let Some(job) = get_job(t, id)? else {
        return Ok(CommandResult::NotFound);
    };
    touched.jobs.push(id.to_owned());
    delete_job_record(t, &job)?;
    delete_job_runs(t, id)?;
    Ok(CommandResult::Deleted { job })
}

/// A pause forgets the runs not yet due; a resume skips the runs that fell due while paused
/// (neither delivered nor recorded).
fn set_paused<T: Tables>(
    t: &T,
    id: &str,
    paused: bool,
    now_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let old = match get_job(t, id)? {
        None => return Ok(CommandResult::NotFound),
        Some(job) if job.spec.paused == paused => return Ok(unchanged(job)),
        Some(job) => job,
    };
    let mut job = old.clone();
    touched.jobs.push(id.to_owned());
    job.spec.paused = paused;
    if paused {
        forget_runs_due_after(t, id, now_ms)?;
    } else {
        job.cursor_ms = job.cursor_ms.max(now_ms);
    }
    touch(&mut job, now_ms);
    put_job(t, &job, Some(&old))?;
    Ok(changed(job, false))
}

/// The leader's claims of epoch `epoch`, each accepted or not (`claim`); none from another
/// epoch than the one this entry was appended in.
fn claim_runs<T: Tables>(
    t: &T,
    at: &Position,
    epoch: Epoch,
    now_ms: UnixMs,
    items: &[ClaimItem],
    retention: u32,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    if epoch != at.epoch {
        return Ok(CommandResult::StaleEpoch);
    }
    let mut accepted = Vec::with_capacity(items.len());
    for item in items {
        let ok = claim(t, at, item, now_ms, retention, touched)?;
        if ok {
            touched.jobs.push(item.job_id.clone());
        }
        accepted.push(ok);
    }
    Ok(CommandResult::Claimed { accepted })
}

/// A failed run of the job's current incarnation goes back to retrying, due now.
fn retry_run<T: Tables>(
    t: &T,
    run_id: &str,
    now_ms: UnixMs,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let old = match get_run(t, run_id)? {
        None => return Ok(CommandResult::NotFound),
        Some(run) if run.status != RunStatus::Failed => {
            return Ok(CommandResult::NotRetryable { run })
        }
        Some(old) => old,
    };
    if get_job(t, &old.job_id)?.is_none_or(|j| j.incarnation != old.incarnation) {
        return Ok(CommandResult::NotFound);
    }
    let mut run = old.clone();
    run.status = RunStatus::Retrying;
    run.next_attempt_at_ms = Some(now_ms);
    put_run(t, &run, Some(&old))?;
    touched.runs.push(run.id.clone());
    Ok(CommandResult::Run { run })
}

/// A manual run of job `id`, due now, outside its schedule.
fn trigger_job<T: Tables>(
    t: &T,
    id: &str,
    seq: u64,
    now_ms: UnixMs,
    retention: u32,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let Some(job) = get_job(t, id)? else {
        return Ok(CommandResult::NotFound);
    };
    let run = Run {
        id: format!("{}_m{:x}", Run::scheduled_id(job.incarnation, now_ms), seq),
        job_id: job.id.clone(),
        incarnation: job.incarnation,
        scheduled_at_ms: now_ms,
        status: RunStatus::Pending,
        attempts: Vec::new(),
        next_attempt_at_ms: Some(now_ms),
        manual: true,
        skipped: None,
        claimed_at_ms: now_ms,
        ext: RunExt::default(),
    };
    insert_run(t, &run, retention)?;
    touched.runs.push(run.id.clone());
    Ok(CommandResult::Run { run })
}

/// Claims one run (or skipped range) if the job is still as the leader saw it. Reads and
/// writes the job's guard only, never its record (but for a skip's event).
fn claim<T: Tables>(
    t: &T,
    at: &Position,
    item: &ClaimItem,
    now_ms: i64,
    retention: u32,
    touched: &mut Touched,
) -> TxResult<T, bool> {
    let Some(mut guard) = get_guard(t, &item.job_id)? else {
        return Ok(false);
    };
    if guard.incarnation != item.incarnation || guard.paused || item.due_ms <= guard.cursor_ms {
        return Ok(false);
    }
    guard.cursor_ms = item.due_ms;
    put_guard(t, &item.job_id, guard)?;
    let mut ext = RunExt::default();
    let (status, skipped, next) = match &item.kind {
        ClaimKind::Deliver => (RunStatus::Pending, None, Some(item.due_ms)),
        ClaimKind::DeliverAt { at_ms } => {
            ext.due_ms = Some(*at_ms);
            (RunStatus::Pending, None, Some(*at_ms))
        }
        ClaimKind::Skip { count, first_ms } => (
            RunStatus::Skipped,
            Some(SkippedRange {
                count: *count,
                first_ms: *first_ms,
                last_ms: item.due_ms,
            }),
            None,
        ),
    };
    let run = Run {
        id: Run::scheduled_id(guard.incarnation, item.due_ms),
        job_id: item.job_id.clone(),
        incarnation: guard.incarnation,
        scheduled_at_ms: item.due_ms,
        status,
        attempts: Vec::new(),
        next_attempt_at_ms: next,
        manual: false,
        skipped,
        claimed_at_ms: now_ms,
        ext,
    };
    insert_run(t, &run, retention)?;
    if let Some(range) = &run.skipped {
        touched.skipped = touched.skipped.saturating_add(range.count);
    }
    events::run_ended(t, at, &run, now_ms, touched)?;
    Ok(true)
}

/// Appends an attempt to its run. Finished runs stay finished: a late report from a former
/// leader adds to the history but cannot reopen or fail a run that succeeded.
fn record_attempt<T: Tables>(
    t: &T,
    at: &Position,
    outcome: &AttemptOutcome,
    touched: &mut Touched,
) -> TxResult<T, ()> {
    if events::is_delivery(&outcome.run_id) {
        return events::record_attempt(t, outcome);
    }
    let Some(old) = get_run(t, &outcome.run_id)? else {
        return Ok(());
    };
    let mut run = old.clone();
    run.attempts.push(outcome.attempt.clone());
    let a = &outcome.attempt;
    let ended_at = a
        .started_at_ms
        .saturating_add(i64::try_from(a.duration_ms).unwrap_or(i64::MAX));
    // A run ending lets the one `buffer_one` held back for it start, when its attempt ended.
    let ends = !matches!(outcome.result, AttemptResult::RetryAt(_));
    if run.ext.blocking && run.status.is_open() && ends {
        release_waiting(t, &run, ended_at, touched)?;
    }
    if run.status.is_open() {
        match outcome.result {
            AttemptResult::Succeeded => {
                run.status = RunStatus::Succeeded;
                run.next_attempt_at_ms = None;
            }
            AttemptResult::RetryAt(at) => {
                run.status = RunStatus::Retrying;
                run.next_attempt_at_ms = Some(at);
            }
            AttemptResult::Failed => {
                run.status = RunStatus::Failed;
                run.next_attempt_at_ms = None;
            }
        }
    } else if outcome.result == AttemptResult::Succeeded && run.status == RunStatus::Failed {
        run.status = RunStatus::Succeeded;
    }
    put_run(t, &run, Some(&old))?;
    // An outcome that ends the run, or turns its failure into a success, is an event.
    if run.status != old.status && !run.status.is_open() {
        events::run_ended(t, at, &run, ended_at, touched)?;
    }
    Ok(())
}

/// The other runs of `run`'s job that are open (started or attempted, not ended), and those
/// held back by `buffer_one`.
fn overlapping<T: Tables>(t: &T, run: &Run) -> TxResult<T, (Vec<Run>, Vec<Run>)> {
    let (mut open, mut waiting) = (Vec::new(), Vec::new());
    for (_, id) in get_run_list(t, &run.job_id)? {
        if id == run.id {
            continue;
        }
        let Some(other) = get_run(t, &id)? else {
            continue;
        };
        if !other.status.is_open() || other.incarnation != run.incarnation {
            continue;
        }
        if other.ext.waiting {
            waiting.push(other);
        } else if other.ext.started || !other.attempts.is_empty() {
            open.push(other);
        }
    }
    Ok((open, waiting))
}

/// Whether run `run_id` may start now: by its job's overlap policy and the job's other open
/// runs (`overlap::decide`). A run already started (a new leader asking again) may.
fn start_run<T: Tables>(
    t: &T,
    at: &Position,
    run_id: &str,
    touched: &mut Touched,
) -> TxResult<T, CommandResult> {
    let no = Ok(CommandResult::Start { go: false });
    let Some(old) = get_run(t, run_id)? else {
        return no;
    };
    if !old.status.is_open() || old.ext.waiting {
        return no;
    }
    if old.ext.started || !old.attempts.is_empty() {
        return Ok(CommandResult::Start { go: true });
    }
    // A paused job starts nothing (the run stays open for the resume): the pause may have
    // been applied after the leader looked.
    let job = get_job(t, &old.job_id)?;
    let Some(job) = job.filter(|j| j.incarnation == old.incarnation && !j.spec.paused) else {
        return no;
    };
    let policy = job.spec.ext.overlap.unwrap_or_default();
    let (open, waiting) = overlapping(t, &old)?;
    let mut run = old.clone();
    // What the decision ends, it ends at this run's due instant.
    let due_ms = old.ext.due_ms.unwrap_or(old.scheduled_at_ms);
    let go = match overlap::decide(policy, open.len(), waiting.len()) {
        Decision::Start => true,
        Decision::Skip => {
            run.status = RunStatus::Skipped;
            run.next_attempt_at_ms = None;
            run.ext.skip_reason = Some(SkipReason::Overlap);
            touched.skipped = touched.skipped.saturating_add(1);
            false
        }
        Decision::Wait => {
            run.ext.waiting = true;
            for other in open {
                let mut blocking = other.clone();
                blocking.ext.blocking = true;
                put_run(t, &blocking, Some(&other))?;
            }
            false
        }
        Decision::Supersede => {
            for other in open {
                let mut ended = other.clone();
                ended.status = RunStatus::Failed;
                ended.next_attempt_at_ms = None;
                ended.ext.ended_by = Some("superseded".into());
                put_run(t, &ended, Some(&other))?;
                events::run_ended(t, at, &ended, due_ms, touched)?;
            }
            true
        }
    };
    // A run cleared to start is being attempted by the leader that asked: not `touched`.
    run.ext.started = go;
    put_run(t, &run, Some(&old))?;
    events::run_ended(t, at, &run, due_ms, touched)?;
    Ok(CommandResult::Start { go })
}

/// When `ended` (a run that is ending) leaves its job without another open run, the run that
/// `buffer_one` held back starts, at `at_ms`.
fn release_waiting<T: Tables>(
    t: &T,
    ended: &Run,
    at_ms: i64,
    touched: &mut Touched,
) -> TxResult<T, ()> {
    let (open, waiting) = overlapping(t, ended)?;
    let Some(held) = waiting.into_iter().next().filter(|_| open.is_empty()) else {
        return Ok(());
    };
    let mut run = held.clone();
    run.ext.waiting = false;
    run.ext.started = true;
    run.next_attempt_at_ms = Some(at_ms.max(run.scheduled_at_ms));
    put_run(t, &run, Some(&held))?;
    touched.runs.push(run.id.clone());
    Ok(())
}

fn changed(job: Job, created: bool) -> CommandResult {
    CommandResult::Job {
        job,
        created,
        changed: true,
    }
}

/// A create or replace at `now_ms` that found `job` with the same spec. When `job` is what a
/// create at `now_ms` made, untouched since, this is that very command applied again (a write
/// whose fate was unknown, proposed again: `Command::repeatable`), and it answers as the first
/// apply did: created. Another client creating the same job in the same millisecond is told
/// `created` too; the job is as it asked either way.
fn same_job(job: Job, now_ms: UnixMs) -> CommandResult {
    let created = job.version == 1 && job.created_at_ms == now_ms;
    CommandResult::Job {
        job,
        created,
        changed: false,
    }
}

fn unchanged(job: Job) -> CommandResult {
    CommandResult::Job {
        job,
        created: false,
        changed: false,
    }
}

/// `field` is the masked header's path (`headers.NAME`, `on_failure.headers.NAME`, …).
pub(super) fn masked_without_value(field: &str) -> CommandResult {
    let name = field.split_once("headers.").map_or(field, |(_, name)| name);
    CommandResult::Rejected {
        field: field.to_owned(),
        message: format!(
            "secret header {name} is sent as {MASK:?} but no stored value exists to keep; send the value"
        ),
    }
}

fn new_job(id: &str, spec: JobSpec, seq: u64, now_ms: i64) -> Job {
    Job {
        id: id.to_owned(),
        spec,
        incarnation: seq,
        created_at_ms: now_ms,
        updated_at_ms: now_ms,
        version: 1,
        schedule_base_ms: now_ms,
        // A one-shot `at` in the past is due at creation, so the cursor starts just before it.
        cursor_ms: now_ms.saturating_sub(1),
    }
}

/// Marks a changed job. `updated_at` never moves backwards, even if the proposing leader's clock
/// is behind the previous one's.
fn touch(job: &mut Job, now_ms: i64) {
    job.version = job.version.saturating_add(1);
    job.updated_at_ms = job.updated_at_ms.max(now_ms);
}

#[cfg(test)]
pub(crate) mod tests;
