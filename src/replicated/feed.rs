//! The change feed from `apply` to the dispatcher: a dirty set per subscriber plus a wake-up,
//! instead of a bounded channel of batches. A slow subscriber never loses a change and never
//! has to rebuild its whole index because it fell behind: changes to the same job merge while
//! it is busy. Only an installed snapshot asks for a rebuild (`Changes::all`). Nothing is
//! collected without a subscriber (a follower keeps nothing).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::core::state::Touched;

/// What changed since a subscriber last looked.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Jobs whose definition, cursor or existence changed.
    pub jobs: BTreeSet<String>,
    /// Runs opened outside a claim (trigger, retry), in the order they were opened.
    pub runs: Vec<String>,
    /// A target's policy changed.
    pub policies: bool,
    /// The whole state was replaced (a snapshot was installed): rebuild everything.
    pub all: bool,
    /// Client writes applied, and runs recorded skipped, since last taken (summed).
    pub writes: u64,
    pub skipped: u64,
}

impl Changes {
    fn is_empty(&self) -> bool {
        self.jobs.is_empty()
            && self.runs.is_empty()
            && !self.policies
            && !self.all
            && self.writes == 0
            && self.skipped == 0
    }
}

#[derive(Default)]
struct Subscribers {
    next_id: u64,
    pending: HashMap<u64, (Changes, Arc<Notify>)>,
}

/// The publishing side, owned by the state machine.
#[derive(Default, Clone)]
pub struct Feed {
    subscribers: Arc<Mutex<Subscribers>>,
}

impl Feed {
    fn with<R>(&self, f: impl FnOnce(&mut Subscribers) -> R) -> R {
        f(&mut self.subscribers.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Records what an applied batch touched for every subscriber and wakes them.
    pub fn publish(&self, touched: &Touched) {
        if touched.jobs.is_empty()
            && touched.runs.is_empty()
            && !touched.policies
            && touched.writes == 0
            && touched.skipped == 0
        {
            return;
        }
        self.with(|s| {
            for (changes, notify) in s.pending.values_mut() {
                changes.jobs.extend(touched.jobs.iter().cloned());
                changes.runs.extend(touched.runs.iter().cloned());
                changes.policies |= touched.policies;
                changes.writes = changes.writes.saturating_add(touched.writes);
                changes.skipped = changes.skipped.saturating_add(touched.skipped);
                notify.notify_one();
            }
        });
    }

    /// Tells every subscriber the whole state was replaced.
    pub fn publish_all(&self) {
        self.with(|s| {
            for (changes, notify) in s.pending.values_mut() {
                changes.all = true;
                notify.notify_one();
            }
        });
    }

    /// Changes published from now on, until the subscription is dropped.
    pub fn subscribe(&self) -> Subscription {
        let notify = Arc::new(Notify::new());
        let id = self.with(|s| {
            s.next_id += 1;
            s.pending
                .insert(s.next_id, (Changes::default(), notify.clone()));
            s.next_id
        });
        Subscription {
            feed: self.clone(),
            id,
            notify,
        }
    }
}

/// One subscriber's end of the feed.
pub struct Subscription {
    feed: Feed,
    id: u64,
    notify: Arc<Notify>,
}

impl Subscription {
    /// Waits until something changed, then takes all of it. Cancel-safe: a change published
    /// while nobody waits is kept and wakes the next call.
    pub async fn changed(&self) -> Changes {
        loop {
            let taken = self.take();
            if !taken.is_empty() {
                return taken;
            }
            self.notify.notified().await;
        }
    }

    /// Takes what changed so far (empty if nothing did), without waiting.
    pub fn take(&self) -> Changes {
        self.feed.with(|s| {
            s.pending
                .get_mut(&self.id)
                .map(|(c, _)| std::mem::take(c))
                .unwrap_or_default()
        })
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let id = self.id;
        self.feed.with(|s| s.pending.remove(&id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touched(jobs: &[&str], runs: &[&str]) -> Touched {
        Touched {
            jobs: jobs.iter().map(|s| s.to_string()).collect(),
            runs: runs.iter().map(|s| s.to_string()).collect(),
            ..Touched::default()
        }
    }

    #[tokio::test]
    async fn a_busy_subscriber_gets_every_change_merged_and_none_twice() {
        let feed = Feed::default();
        feed.publish(&touched(&["early"], &[]));
        let sub = feed.subscribe();
        // Many batches while it is busy: merged, none lost, nothing to rebuild.
        for i in 0..10_000 {
            feed.publish(&touched(&["a", &format!("j{}", i % 3)], &[]));
        }
        feed.publish(&touched(&["b"], &["r1", "r2"]));
        let got = sub.changed().await;
        let jobs: Vec<&str> = got.jobs.iter().map(String::as_str).collect();
        assert_eq!(
            jobs,
            ["a", "b", "j0", "j1", "j2"],
            "not `early`: before it subscribed"
        );
        assert_eq!(got.runs, ["r1", "r2"]);
        assert!(!got.all);
        assert_eq!(sub.take(), Changes::default(), "taken once");

        // A policy change alone wakes it too.
        feed.publish(&Touched {
            policies: true,
            ..Touched::default()
        });
        let got = sub.take();
        assert!(got.policies && got.jobs.is_empty());

        // Counts alone wake it, and add up while it is busy.
        for (writes, skipped) in [(2, 0), (0, 12), (1, 1)] {
            feed.publish(&Touched {
                writes,
                skipped,
                ..Touched::default()
            });
        }
        let got = sub.take();
        assert_eq!((got.writes, got.skipped), (3, 13));
        assert!(got.jobs.is_empty() && !got.policies);

        // A change published while nobody waits wakes the next wait; a replaced state too.
        feed.publish_all();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), sub.changed())
            .await
            .expect("woken");
        assert!(got.all);
    }

    #[tokio::test]
    async fn nothing_is_kept_for_a_dropped_subscription_and_others_go_on() {
        let feed = Feed::default();
        let old = feed.subscribe();
        let new = feed.subscribe();
        drop(old);
        feed.publish(&touched(&["x"], &[]));
        assert_eq!(feed.with(|s| s.pending.len()), 1);
        assert_eq!(new.take().jobs.len(), 1);
        drop(new);
        feed.publish(&touched(&["y"], &[]));
        assert!(
            feed.with(|s| s.pending.is_empty()),
            "a follower keeps nothing"
        );
    }
}
