//! Gathering what waits in a channel into batches while earlier batches are in flight: the
//! leader's proposals into one log entry (`replica.rs`), a follower's forwarded writes into one
//! request (`forward.rs`).

use std::sync::Arc;

use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Takes items from a channel in batches, at most `in_flight` batches out at once.
pub(crate) struct Gather<T> {
    rx: mpsc::Receiver<T>,
    carry: Option<T>,
    permits: Arc<Semaphore>,
    max: usize,
    bytes_max: usize,
}

impl<T> Gather<T> {
    /// Batches of at most `max` items and about `bytes_max` bytes (a single larger item forms
    /// a batch of its own).
    pub(crate) fn new(
        rx: mpsc::Receiver<T>,
        in_flight: usize,
        max: usize,
        bytes_max: usize,
    ) -> Self {
        Gather {
            rx,
            carry: None,
            permits: Arc::new(Semaphore::new(in_flight)),
            max,
            bytes_max,
        }
    }

    /// The next batch and its slot, to hold until the batch is done: waits for a first item,
    /// then for a slot (so items gather while every slot is out), then takes the items already
    /// waiting that `fit` with the first (`size` gives their bytes). An item that does not fit
    /// starts the next batch. None once `cancel` fires or the channel closes. Cancel-safe.
    pub(crate) async fn next(
        &mut self,
        cancel: &CancellationToken,
        size: impl Fn(&T) -> usize,
        fits: impl Fn(&T, &T) -> bool,
    ) -> Option<(Vec<T>, OwnedSemaphorePermit)> {
        let first = match self.carry.take() {
            Some(item) => item,
            None => tokio::select! {
                _ = cancel.cancelled() => return None,
                item = self.rx.recv() => item?,
            },
        };
        // Kept here while waiting for a slot: a caller that drops this future loses nothing.
        self.carry = Some(first);
        let permit = tokio::select! {
            _ = cancel.cancelled() => return None,
            p = self.permits.clone().acquire_owned() => p.ok()?,
        };
        let first = self.carry.take()?;
        let mut bytes = size(&first);
        let mut batch = vec![first];
        while batch.len() < self.max {
            let Ok(item) = self.rx.try_recv() else { break };
            let b = size(&item);
            if !fits(&batch[0], &item) || bytes + b > self.bytes_max {
                self.carry = Some(item);
                break;
            }
            bytes += b;
            batch.push(item);
        }
        Some((batch, permit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_items_go_together_up_to_the_bounds_and_a_misfit_starts_the_next_batch() {
        let (tx, rx) = mpsc::channel(16);
        let mut g = Gather::new(rx, 1, 3, 10);
        let cancel = CancellationToken::new();
        // (item, size): 'a' items fit together, 'b' does not fit with them.
        for item in [("a", 4), ("a", 4), ("a", 4), ("a", 1), ("b", 1), ("a", 20)] {
            tx.send(item).await.expect("send");
        }
        let size = |i: &(&str, usize)| i.1;
        let fits = |a: &(&str, usize), b: &(&str, usize)| a.0 == b.0;
        let (first, slot) = g.next(&cancel, size, fits).await.expect("batch");
        assert_eq!(first, [("a", 4), ("a", 4)], "the third would pass 10 bytes");
        drop(slot);
        let (second, slot) = g.next(&cancel, size, fits).await.expect("batch");
        assert_eq!(second, [("a", 4), ("a", 1)]);
        // Its slot is held: the next batch waits for it.
        let waiting = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            g.next(&cancel, size, fits),
        );
        assert!(waiting.await.is_err(), "no slot while the only one is out");
        // The wait given up lost nothing.
        drop(slot);
        let (third, slot) = g.next(&cancel, size, fits).await.expect("batch");
        assert_eq!(third, [("b", 1)], "a misfit starts a batch of its own");
        drop(slot);
        let (fourth, _slot) = g.next(&cancel, size, fits).await.expect("batch");
        assert_eq!(fourth, [("a", 20)], "an item over the bytes alone");
        drop(tx);
        assert!(g.next(&cancel, size, fits).await.is_none(), "closed");
    }
}
