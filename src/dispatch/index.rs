//! The dispatcher's index of every job: what a claim round needs of a job without reading it
//! (version, incarnation, paused, parsed schedule, target) and the jobs ordered by the due
//! instant of their next run to claim.
//!
//! With 1M jobs this is the leader's largest structure, so it is laid out for size: entries in a
//! slab (`Vec`), found by id through a hash table of 4-byte slot numbers, ordered by
//! `(due, slot)` (16 bytes per job), interval and one-shot schedules inline (`Compact`), and each
//! target key held once with a count of the jobs using it. A `HashMap<Arc<str>, Entry>` plus a
//! `BTreeSet<(i64, Arc<str>)>` and an `Arc<Schedule>` per job took ~310 MiB at 1.1M jobs
//! (heaptrack): 80-byte hash slots at 2^21 buckets, 63 MiB of interval schedules, 43 MiB of
//! B-tree.

use std::collections::{BTreeSet, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use hashbrown::HashTable;

use super::targets::TargetKey;
use crate::schedule::Compact;

/// A job id, one allocation shared by the index and the dispatcher's sets.
pub type JobId = Arc<str>;

/// What the index knows of a job's definition (reused when the job's version is unchanged).
#[derive(Debug, Clone)]
pub struct Indexed {
    pub version: u64,
    pub incarnation: u64,
    pub paused: bool,
    pub schedule: Option<Compact>,
}

/// What a claim round reads of an indexed job.
#[derive(Debug, Clone)]
pub struct Found {
    pub target: Option<TargetKey>,
    pub schedule: Option<Compact>,
}

/// No next due instant: nothing to claim, or being claimed, or held.
const NO_DUE: i64 = i64::MIN;
/// No target: the job's URL has none the scheduler can key.
const NO_TARGET: u32 = u32::MAX;

struct Slot {
    id: JobId,
    job: Indexed,
    next_due: i64,
    target: u32,
}

#[derive(Default)]
pub struct JobIndex {
    hasher: RandomState,
    /// Slot numbers, hashed by their entry's id.
    table: HashTable<u32>,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    by_due: BTreeSet<(i64, u32)>,
    /// Target keys by number, with how many indexed jobs use each.
    targets: Vec<Option<(TargetKey, usize)>>,
    target_numbers: HashMap<TargetKey, u32>,
    free_targets: Vec<u32>,
}

impl JobIndex {
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Indexes a job (replacing what the index held for `id`).
    pub fn insert(
        &mut self,
        id: JobId,
        job: Indexed,
        next_due: Option<i64>,
        target: Option<TargetKey>,
    ) {
        self.remove(&id);
        let target = target.map_or(NO_TARGET, |k| self.take_target(k));
        let next_due = next_due.unwrap_or(NO_DUE);
        let slot = Slot {
            id,
            job,
            next_due,
            target,
        };
        let hash = self.hasher.hash_one(&*slot.id);
        let n = match self.free.pop() {
            Some(n) => {
                self.slots[n as usize] = Some(slot);
                n
            }
            None => {
                let n = u32::try_from(self.slots.len()).expect("fewer than 2^32 jobs");
                self.slots.push(Some(slot));
                n
            }
        };
        if next_due != NO_DUE {
            self.by_due.insert((next_due, n));
        }
        let (slots, hasher) = (&self.slots, &self.hasher);
        self.table
            .insert_unique(hash, n, |&m| hasher.hash_one(&*slot_of(slots, m).id));
    }

    /// Removes a job, returning what the index knew of it.
    pub fn remove(&mut self, id: &str) -> Option<Indexed> {
        let hash = self.hasher.hash_one(id);
        let slots = &self.slots;
        let n = match self
            .table
            .find_entry(hash, |&n| &*slot_of(slots, n).id == id)
        {
            Ok(entry) => entry.remove().0,
            Err(_) => return None,
        };
        let slot = self.slots[n as usize].take().expect("an indexed slot");
        self.free.push(n);
        if slot.next_due != NO_DUE {
            self.by_due.remove(&(slot.next_due, n));
        }
        self.drop_target(slot.target);
        Some(slot.job)
    }

    pub fn get(&self, id: &str) -> Option<Found> {
        let slot = self.slot(id)?;
        Some(Found {
            target: self.target_key(slot.target),
            schedule: slot.job.schedule.clone(),
        })
    }

    /// Gives a job back the due instant it was taken out of the order at (`pop_first_due`),
    /// unless it has one again (it changed meanwhile and was re-indexed). False if it is gone.
    pub fn restore_due(&mut self, id: &str, due: i64) -> bool {
        let Some(n) = self.number(id) else {
            return false;
        };
        let slot = self.slots[n as usize].as_mut().expect("an indexed slot");
        if slot.next_due == NO_DUE {
            slot.next_due = due;
            self.by_due.insert((due, n));
        }
        true
    }

    /// The earliest due instant of a job to claim.
    pub fn first_due_at(&self) -> Option<i64> {
        self.by_due.first().map(|&(due, _)| due)
    }

    /// Takes the job with the earliest due instant out of the order (it stays indexed, with no
    /// due instant until it is re-indexed or `restore_due`).
    pub fn pop_first_due(&mut self) -> Option<(i64, JobId)> {
        let (due, n) = self.by_due.pop_first()?;
        let slot = self.slots[n as usize].as_mut().expect("an indexed slot");
        slot.next_due = NO_DUE;
        Some((due, slot.id.clone()))
    }

    /// The due instants in order.
    pub fn dues(&self) -> impl Iterator<Item = i64> + '_ {
        self.by_due.iter().map(|&(due, _)| due)
    }

    fn number(&self, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&n| &*slot_of(&self.slots, n).id == id)
            .copied()
    }

    fn slot(&self, id: &str) -> Option<&Slot> {
        self.number(id).map(|n| slot_of(&self.slots, n))
    }

    fn target_key(&self, n: u32) -> Option<TargetKey> {
        let (key, _) = self.targets.get(n as usize)?.as_ref()?;
        Some(key.clone())
    }

    /// The number of target `k`, counting one more job using it.
    fn take_target(&mut self, k: TargetKey) -> u32 {
        if let Some(&n) = self.target_numbers.get(&k) {
            if let Some((_, uses)) = self.targets[n as usize].as_mut() {
                *uses += 1;
            }
            return n;
        }
        let entry = Some((k.clone(), 1));
        let n = match self.free_targets.pop() {
            Some(n) => {
                self.targets[n as usize] = entry;
                n
            }
            None => {
                self.targets.push(entry);
                u32::try_from(self.targets.len() - 1).expect("fewer than 2^32 targets")
            }
        };
        self.target_numbers.insert(k, n);
        n
    }

    /// One job fewer uses target `n`; the key goes with its last job.
    fn drop_target(&mut self, n: u32) {
        let Some(Some((key, uses))) = self.targets.get_mut(n as usize) else {
            return;
        };
        *uses -= 1;
        if *uses == 0 {
            self.target_numbers.remove(&*key);
            self.targets[n as usize] = None;
            self.free_targets.push(n);
        }
    }
}

fn slot_of(slots: &[Option<Slot>], n: u32) -> &Slot {
    slots[n as usize].as_ref().expect("an indexed slot")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(version: u64) -> Indexed {
        Indexed {
            version,
            incarnation: 1,
            paused: false,
            schedule: Some(Compact::Once { at_ms: 5 }),
        }
    }

    fn key(s: &str) -> Option<TargetKey> {
        Some(TargetKey::from(s))
    }

    #[test]
    fn jobs_come_out_in_due_order_and_a_replaced_job_keeps_only_its_new_due() {
        let mut ix = JobIndex::default();
        ix.insert("b".into(), job(1), Some(20), key("h:1"));
        ix.insert("a".into(), job(1), Some(30), key("h:1"));
        ix.insert("c".into(), job(1), None, key("h:2"));
        ix.insert("d".into(), job(1), Some(10), None);
        ix.insert("a".into(), job(2), Some(5), key("h:1")); // replaced: 30 is gone
        assert_eq!(ix.len(), 4);
        assert_eq!(ix.dues().collect::<Vec<_>>(), vec![5, 10, 20]);
        assert_eq!(ix.first_due_at(), Some(5));
        let mut popped = Vec::new();
        while let Some((due, id)) = ix.pop_first_due() {
            popped.push((due, id.to_string()));
        }
        assert_eq!(
            popped,
            vec![(5, "a".into()), (10, "d".into()), (20, "b".into())]
        );
        assert_eq!(ix.len(), 4, "popped jobs stay indexed");
        assert_eq!(ix.remove("a").map(|j| j.version), Some(2));
        assert!(ix.remove("a").is_none());
    }

    #[test]
    fn restore_due_puts_back_only_a_job_without_a_due_instant() {
        let mut ix = JobIndex::default();
        ix.insert("a".into(), job(1), Some(10), None);
        let (due, id) = ix.pop_first_due().unwrap();
        assert_eq!(ix.first_due_at(), None);
        assert!(ix.restore_due(&id, due));
        assert_eq!(ix.first_due_at(), Some(10));
        // Re-indexed meanwhile with another instant: that one stands.
        ix.pop_first_due();
        ix.insert("a".into(), job(2), Some(40), None);
        assert!(ix.restore_due("a", 10));
        assert_eq!(ix.dues().collect::<Vec<_>>(), vec![40]);
        ix.remove("a");
        assert!(!ix.restore_due("a", 10), "gone");
        assert_eq!(ix.first_due_at(), None);
    }

    #[test]
    fn slots_and_target_keys_are_reused_and_a_key_goes_with_its_last_job() {
        let mut ix = JobIndex::default();
        for i in 0..100 {
            ix.insert(format!("j{i}").into(), job(1), Some(i), key("h:1"));
        }
        let shared = ix.get("j7").unwrap().target.unwrap();
        let other = ix.get("j8").unwrap().target.unwrap();
        assert!(Arc::ptr_eq(&shared, &other), "one key for all its jobs");
        for i in 0..100 {
            assert!(ix.remove(&format!("j{i}")).is_some());
        }
        assert_eq!(ix.len(), 0);
        assert!(
            ix.target_numbers.is_empty(),
            "the key went with its last job"
        );
        assert_eq!(ix.first_due_at(), None);
        for i in 0..100 {
            ix.insert(format!("k{i}").into(), job(1), Some(100 - i), key("h:2"));
        }
        assert_eq!(ix.slots.len(), 100, "freed slots were reused");
        assert_eq!(ix.targets.len(), 1, "the freed target number was reused");
        assert_eq!(ix.get("k0").unwrap().target.as_deref(), Some("h:2"));
        assert_eq!(
            ix.pop_first_due().map(|(d, id)| (d, id.to_string())),
            Some((1, "k99".into()))
        );
        assert!(ix.get("j3").is_none());
    }

    #[test]
    fn a_job_without_a_target_or_schedule_is_still_indexed() {
        let mut ix = JobIndex::default();
        let mut j = job(3);
        j.schedule = None;
        ix.insert("x".into(), j, None, None);
        let found = ix.get("x").unwrap();
        assert!(found.target.is_none() && found.schedule.is_none());
        assert_eq!(ix.remove("x").map(|j| j.version), Some(3));
    }
}
