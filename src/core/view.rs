//! The read side of the state machine: jobs, runs and the nodes' records, decoded from the
//! tables `state.rs` writes, through any `Read` (the replicated store's applied tables, or an
//! in-memory map in tests).

use std::collections::BTreeSet;
use std::ops::Bound;

use super::command::{Job, NodeId, Run, RunStatus, TargetPolicy};
use super::events::{
    self, ClusterMemory, Delivery, EventType, Notification, CLUSTER_EVENTS_KEY, NOTIFY_INDEX_KEY,
};
use super::records::{
    cluster_format_of, decode, decode_job, decode_run, decode_run_list, status_key_parts,
    status_prefix, Guard, StateFault, Table, CLUSTER_FORMAT_KEY, CLUSTER_ID_KEY,
};

/// A key and its value.
pub type Row = (Vec<u8>, Vec<u8>);

/// Read access to the tables. Each call sees the state as it stands; an iterator keeps seeing
/// the state it started on.
pub trait Read {
    fn get(&self, table: Table, key: &[u8]) -> Result<Option<Vec<u8>>, StateFault>;
    /// The rows of `table` with keys in `(from, to)`, in key order or (`reverse`) against it.
    fn range(
        &self,
        table: Table,
        from: Bound<Vec<u8>>,
        to: Bound<Vec<u8>>,
        reverse: bool,
    ) -> Box<dyn Iterator<Item = Result<Row, StateFault>> + Send>;
    /// Rows in `table`.
    fn len(&self, table: Table) -> usize;
}

/// The rows of `table` whose keys start with `prefix`.
pub(super) fn with_prefix<R: Read>(
    r: &R,
    table: Table,
    prefix: Vec<u8>,
    reverse: bool,
) -> Box<dyn Iterator<Item = Result<Row, StateFault>> + Send> {
    let end = prefix_end(&prefix);
    r.range(table, Bound::Included(prefix), end, reverse)
}

/// The first key after every key starting with `prefix` (unbounded if there is none).
pub(super) fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

/// Jobs, runs and node records, read from `R`.
#[derive(Clone)]
pub struct View<R> {
    pub(super) read: R,
}

impl<R: Read> View<R> {
    pub fn new(read: R) -> View<R> {
        View { read }
    }

    /// Every target's policy, in target order (a record that does not decode is left out).
    pub fn target_policies(&self) -> Result<Vec<(String, TargetPolicy)>, StateFault> {
        let mut out = Vec::new();
        for row in with_prefix(&self.read, Table::TargetPolicies, Vec::new(), false) {
            let (k, v) = row?;
            if let Ok(policy) = serde_json::from_slice(&v) {
                out.push((String::from_utf8_lossy(&k).into_owned(), policy));
            }
        }
        Ok(out)
    }

    /// What idempotency key `key` holds for a request with `fingerprint` at `now_ms`.
    pub fn idempotency(
        &self,
        key: &str,
        fingerprint: &super::idempotency::Fingerprint,
        now_ms: i64,
    ) -> Result<super::idempotency::Lookup, StateFault> {
        let stored = self
            .read
            .get(Table::Idempotency, &super::idempotency::record_key(key))?;
        super::idempotency::judge(stored.as_deref(), fingerprint, now_ms)
    }

    /// A stored job record as the job stands: with the cursor of its guard.
    pub(super) fn job(&self, bytes: &[u8]) -> Result<Job, StateFault> {
        let mut job = decode_job(bytes)?;
        let guard = self
            .read
            .get(Table::Guards, job.id.as_bytes())?
            .and_then(|b| Guard::decode(&b));
        if let Some(g) = guard {
            g.apply_to(&mut job);
        }
        Ok(job)
    }

    pub fn get_job(&self, id: &str) -> Result<Option<Job>, StateFault> {
        match self.read.get(Table::Jobs, id.as_bytes())? {
            Some(bytes) => self.job(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `limit` jobs with ids strictly after `after`, in id order, and whether more follow.
    pub fn list_jobs(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Job>, bool), StateFault> {
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_bytes().to_vec()));
        let mut jobs = Vec::with_capacity(limit.min(1024));
        for item in self.read.range(Table::Jobs, from, Bound::Unbounded, false) {
            let (_, v) = item?;
            if jobs.len() == limit {
                return Ok((jobs, true));
            }
            jobs.push(self.job(&v)?);
        }
        Ok((jobs, false))
    }

    /// Notifications in id order after `after`, at most `limit`; and whether more follow.
    pub fn list_notifications(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Notification>, bool), StateFault> {
        let from = after.map_or(Bound::Unbounded, |a| Bound::Excluded(a.as_bytes().to_vec()));
        let mut out = Vec::new();
        for item in self
            .read
            .range(Table::Notifications, from, Bound::Unbounded, false)
        {
            let (_, v) = item?;
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(decode(Table::Notifications, &v)?);
        }
        Ok((out, false))
    }

    pub fn get_notification(&self, id: &str) -> Result<Option<Notification>, StateFault> {
        self.record(Table::Notifications, id)
    }

    /// An event's delivery not yet delivered or failed for good (`core::events`).
    pub fn get_delivery(&self, key: &str) -> Result<Option<Delivery>, StateFault> {
        self.record(Table::Events, key)
    }

    /// What cluster events have told so far.
    pub fn cluster_memory(&self) -> Result<ClusterMemory, StateFault> {
        let record = self.read.get(Table::Misc, CLUSTER_EVENTS_KEY)?;
        Ok(ClusterMemory::from_record(record.as_deref()))
    }

    /// The event types some notification takes.
    pub fn subscribed_events(&self) -> Result<BTreeSet<EventType>, StateFault> {
        let record = self.read.get(Table::Misc, NOTIFY_INDEX_KEY)?;
        Ok(events::subscribed(record.as_deref()))
    }

    /// Every event delivery still to make, with its key.
    pub fn open_deliveries(&self) -> Result<Vec<(String, Delivery)>, StateFault> {
        let mut out = Vec::new();
        for item in self
            .read
            .range(Table::Events, Bound::Unbounded, Bound::Unbounded, false)
        {
            let (k, v) = item?;
            out.push((
                String::from_utf8_lossy(&k).into_owned(),
                decode(Table::Events, &v)?,
            ));
        }
        Ok(out)
    }

    fn record<V: serde::de::DeserializeOwned>(
        &self,
        table: Table,
        key: &str,
    ) -> Result<Option<V>, StateFault> {
        match self.read.get(table, key.as_bytes())? {
            Some(bytes) => decode(table, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Every job, in id order (for building the dispatcher's index).
    pub fn all_jobs(&self) -> impl Iterator<Item = Result<Job, StateFault>>
    where
        R: Clone,
    {
        let view = self.clone();
        self.read
            .range(Table::Jobs, Bound::Unbounded, Bound::Unbounded, false)
            .map(move |item| view.job(&item?.1))
    }

    pub fn get_run(&self, id: &str) -> Result<Option<Run>, StateFault> {
        match self.read.get(Table::Runs, id.as_bytes())? {
            Some(bytes) => decode_run(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// A job's runs, newest first, optionally only those with `status`.
    pub fn job_runs(
        &self,
        job_id: &str,
        status: Option<RunStatus>,
        limit: usize,
    ) -> Result<Vec<Run>, StateFault> {
        let list = match self.read.get(Table::JobRuns, job_id.as_bytes())? {
            Some(bytes) => decode_run_list(&bytes)?,
            None => Vec::new(),
        };
        let mut runs = Vec::new();
        for (_, id) in list.iter().rev() {
            if runs.len() == limit {
                break;
            }
            if let Some(run) = self.get_run(id)? {
                if status.is_none_or(|s| run.status == s) {
                    runs.push(run);
                }
            }
        }
        Ok(runs)
    }

    /// Runs across jobs with `status`, newest due first.
    pub fn runs_with_status(
        &self,
        status: RunStatus,
        limit: usize,
    ) -> Result<Vec<Run>, StateFault> {
        let mut runs = Vec::new();
        for item in with_prefix(&self.read, Table::ByStatus, status_prefix(status), true) {
            if runs.len() == limit {
                break;
            }
            let (_, id) = status_key_parts(&item?.0);
            if let Some(run) = self.get_run(&id)? {
                runs.push(run);
            }
        }
        Ok(runs)
    }

    /// Every run that still needs a delivery attempt (from the status index).
    pub fn open_runs(&self) -> Result<Vec<Run>, StateFault> {
        let mut runs = Vec::new();
        // The open statuses a run is stored with (`InFlight` is only ever shown, not stored).
        for status in [RunStatus::Pending, RunStatus::Retrying] {
            runs.extend(self.runs_with_status(status, usize::MAX)?);
        }
        Ok(runs)
    }

    /// Number of jobs stored.
    pub fn job_count(&self) -> usize {
        self.read.len(Table::Jobs)
    }

    /// API addresses recorded by `SetNodeInfo`, by node id.
    pub fn node_api_addrs(&self) -> Vec<(NodeId, String)> {
        self.read
            .range(Table::Nodes, Bound::Unbounded, Bound::Unbounded, false)
            .filter_map(Result::ok)
            .filter_map(|(k, v)| {
                let id = u64::from_be_bytes(k.as_slice().try_into().ok()?);
                Some((id, String::from_utf8_lossy(&v).into_owned()))
            })
            .collect()
    }

    /// The cluster id, once the first leader has recorded it.
    /// The cluster's format, if recorded (`Command::SetFormat`).
    pub fn cluster_format(&self) -> Option<u32> {
        let record = self.read.get(Table::Misc, CLUSTER_FORMAT_KEY).ok()??;
        cluster_format_of(&record)
    }

    pub fn cluster_id(&self) -> Option<String> {
        self.read
            .get(Table::Misc, CLUSTER_ID_KEY)
            .ok()
            .flatten()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_key_reads_back_as_its_due_instant_and_run_id() {
        for (due, id) in [
            (0, "run_1_0"),
            (-5, "r"),
            (i64::MAX, ""),
            (1_700_000_000_000, "a:b"),
        ] {
            let key = super::super::records::status_key(RunStatus::Failed, due, id);
            assert_eq!(status_key_parts(&key), (due, id.to_owned()));
        }
    }

    #[test]
    fn a_prefix_ends_before_the_first_key_past_it() {
        assert_eq!(prefix_end(b"ab"), Bound::Excluded(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xFF]), Bound::Excluded(vec![2]));
        assert_eq!(prefix_end(&[0xFF, 0xFF]), Bound::Unbounded);
        assert_eq!(prefix_end(b""), Bound::Unbounded);
    }
}
