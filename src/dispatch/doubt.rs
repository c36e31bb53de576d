//! Runs of claims whose outcome the dispatcher does not know (the proposal timed out or failed
//! after it may have reached the leader's log). Pure bookkeeping, no I/O.
//!
//! Such a claim can still be applied later, after the dispatcher has given up on it. If it then
//! opens runs, the dispatcher must queue them itself: a later claim of the same runs is rejected
//! (the job's cursor has moved past them), and nothing else in the epoch would look at them
//! until the next leader re-queues every open run. The chaos soak saw exactly that after a
//! quorum loss healed: two runs waited 6 s for the next leadership change.
//!
//! So every run of a doubtful claim is remembered until it is queued by any path, or found in
//! the state machine when its job changes (a claim applying touches its job) or the index is
//! rebuilt. A run this epoch queued itself is forgotten the moment it is queued, so a run
//! already attempted is never queued twice because of doubt.

use std::collections::{BTreeSet, HashMap};

/// What the state machine says of a remembered run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// It was opened (by the doubtful claim) and needs an attempt: queue it.
    Open,
    /// It exists and is finished: nothing to do.
    Finished,
    /// Not there (yet): the claim may still apply.
    Absent,
}

/// The runs of doubtful claims, by job.
#[derive(Debug, Default)]
pub struct Doubts {
    by_job: HashMap<String, BTreeSet<String>>,
}

impl Doubts {
    /// Remembers `run_id` of job `job_id` from a claim whose outcome is unknown.
    pub fn add(&mut self, job_id: &str, run_id: String) {
        self.by_job
            .entry(job_id.to_owned())
            .or_default()
            .insert(run_id);
    }

    /// Forgets a run that was just queued (by any path).
    pub fn queued(&mut self, job_id: &str, run_id: &str) {
        if let Some(runs) = self.by_job.get_mut(job_id) {
            runs.remove(run_id);
            if runs.is_empty() {
                self.by_job.remove(job_id);
            }
        }
    }

    pub fn has_job(&self, job_id: &str) -> bool {
        self.by_job.contains_key(job_id)
    }

    /// Job ids with remembered runs.
    pub fn jobs(&self) -> Vec<String> {
        self.by_job.keys().cloned().collect()
    }

    /// Looks up the remembered runs of `job_id`; returns those to queue now. Finished runs are
    /// forgotten, absent ones kept.
    pub fn resolve(&mut self, job_id: &str, mut find: impl FnMut(&str) -> Found) -> Vec<String> {
        let Some(runs) = self.by_job.get_mut(job_id) else {
            return Vec::new();
        };
        let mut open = Vec::new();
        runs.retain(|run_id| match find(run_id) {
            Found::Open => {
                open.push(run_id.clone());
                false
            }
            Found::Finished => false,
            Found::Absent => true,
        });
        if runs.is_empty() {
            self.by_job.remove(job_id);
        }
        open
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_job.values().map(BTreeSet::len).sum()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.by_job.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_doubtful_claim_applied_late_has_its_runs_queued_when_its_job_changes() {
        let mut d = Doubts::default();
        d.add("j", "r38".into());
        d.add("j", "r41".into());
        // Right after the timeout the claim is not applied yet: keep both.
        assert!(d.resolve("j", |_| Found::Absent).is_empty());
        assert_eq!(d.len(), 2);
        // It applies later and touches the job: both runs are queued, then forgotten.
        assert_eq!(d.resolve("j", |_| Found::Open), ["r38", "r41"]);
        assert!(d.is_empty() && !d.has_job("j"));
    }

    #[test]
    fn runs_queued_by_another_path_or_finished_are_forgotten_and_never_queued_again() {
        let mut d = Doubts::default();
        for r in ["a", "b", "c"] {
            d.add("j", r.into());
        }
        // A later claim of ours was accepted for "a": this epoch queued it itself.
        d.queued("j", "a");
        let found = |r: &str| match r {
            "a" => Found::Open, // would be a duplicate if it were still remembered
            "b" => Found::Finished,
            _ => Found::Absent,
        };
        assert!(d.resolve("j", found).is_empty());
        assert_eq!(d.jobs(), ["j"]);
        assert_eq!(d.len(), 1, "only the absent run is kept");
        d.queued("j", "c");
        assert!(d.is_empty());
        assert!(d.resolve("other", |_| Found::Open).is_empty());
    }
}
