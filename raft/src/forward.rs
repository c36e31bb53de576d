//! Writes a follower forwards to its group's leader, gathered into one peer request per batch
//! (`PATH_FORWARD_WRITES`), as the leader gathers its proposals into one log entry: with many
//! clients on a follower, one request, one signature and one wake-up on each side carry many
//! writes instead of one each.
//!
//! One task per group takes the writes as they come and, while its requests in flight are at
//! their bound (`replica::in_flight_per_group`, as for the leader's batches), gathers the next
//! ones (for the same leader) into one. A leader is sent batches only once it said it takes
//! them, on its answer to a single forwarded write (`PATH_FORWARD_WRITE`, `BATCHES_HEADER`);
//! until then, and for a leader of the previous release, which never says so, each write goes
//! on its own. A leader that answers a batch with `404` (rolled back to that release at the
//! same address) proposed nothing and goes back to single writes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::gather::Gather;
use crate::machine::Machine;
use crate::network::{ForwardError, PeerClient, TransportError};
use crate::typ::NodeId;

/// Writes in one request, and their rough size bound (a single larger write still goes alone):
/// small enough that encoding one is quick, since it happens on the Raft runtime.
pub(crate) const BATCH_MAX: usize = 256;
const BATCH_BYTES_MAX: usize = 1 << 20;
/// Writes waiting for a request; senders wait (within their deadline) when it is full.
const QUEUED_MAX: usize = 4096;

/// A leader: its node id and peer address.
pub(crate) type Dest = (NodeId, String);

/// Why a forwarded write has no answer from the leader. Each write of a batch gets its own copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failed {
    /// Nothing reached the leader: the write may be sent again.
    NothingSent(String),
    /// Nothing was sent: every forwarding slot stayed taken until the deadline.
    Busy(String),
    /// The leader may or may not have proposed the write.
    Unconfirmed(String),
    /// The leader does not take batches; nothing was proposed. Send the write on its own.
    Singly,
}

impl Failed {
    /// What a transport error means for each write of the request it failed. Pure.
    pub(crate) fn of(e: &TransportError) -> Failed {
        match e {
            TransportError::Busy => Failed::Busy(e.to_string()),
            e if e.nothing_sent() => Failed::NothingSent(e.to_string()),
            e => Failed::Unconfirmed(e.to_string()),
        }
    }
}

/// The outcome of each of `n` writes sent in one request, given the request's. Pure.
fn outcomes<R: Clone>(
    sent: Result<Option<Vec<R>>, TransportError>,
    n: usize,
) -> Vec<Result<R, Failed>> {
    match sent {
        Ok(Some(answers)) => answers.into_iter().map(Ok).collect(),
        Ok(None) => vec![Err(Failed::Singly); n],
        Err(e) => vec![Err(Failed::of(&e)); n],
    }
}

/// What a write's caller gets: the leader's answer, or why there is none.
type Outcome<M> = Result<Result<<M as Machine>::Output, ForwardError>, Failed>;

struct Item<M: Machine> {
    dest: Dest,
    cmd: M::Command,
    deadline: Instant,
    reply: oneshot::Sender<Outcome<M>>,
}

/// Leaders that said they take batches.
type Batching = Arc<Mutex<HashSet<Dest>>>;

/// The forwarding side of one group: `write` hands a write to the task that batches them.
pub(crate) struct Forwarder<M: Machine> {
    tx: mpsc::Sender<Item<M>>,
    batching: Batching,
}

impl<M: Machine> Forwarder<M> {
    /// The forwarder and its task, which keeps up to `in_flight` requests out and runs until
    /// `cancel`.
    pub(crate) fn new(
        peers: PeerClient,
        in_flight: usize,
        cancel: CancellationToken,
    ) -> (Forwarder<M>, impl std::future::Future<Output = ()> + Send) {
        let (tx, rx) = mpsc::channel(QUEUED_MAX);
        let batching = Batching::default();
        let task = run::<M>(rx, peers, batching.clone(), in_flight, cancel);
        (Forwarder { tx, batching }, task)
    }

    /// Whether writes for `dest` go through `write` (else one by one).
    pub(crate) fn batches_to(&self, dest: &Dest) -> bool {
        lock(&self.batching).contains(dest)
    }

    /// Records what `dest` said of batches on its answer to a single forwarded write.
    pub(crate) fn note(&self, dest: &Dest, takes_batches: bool) {
        let mut batching = lock(&self.batching);
        if !takes_batches {
            batching.remove(dest);
        } else if !batching.contains(dest) {
            batching.insert(dest.clone());
        }
    }

    /// Sends `cmd` to the leader `dest` with the other writes waiting for it, and waits for its
    /// answer until `deadline`.
    pub(crate) async fn write(&self, dest: Dest, cmd: M::Command, deadline: Instant) -> Outcome<M> {
        let (reply, answer) = oneshot::channel();
        let item = Item {
            dest,
            cmd,
            deadline,
            reply,
        };
        match tokio::time::timeout_at(deadline, self.tx.send(item)).await {
            Err(_) => {
                return Err(Failed::Busy(
                    "forwarded writes queued until the deadline".into(),
                ))
            }
            Ok(Err(_)) => return Err(Failed::NothingSent("the forwarder has stopped".into())),
            Ok(Ok(())) => {}
        }
        // The batch's request ends by the earliest deadline in it, and then answers every write.
        answer
            .await
            .unwrap_or_else(|_| Err(Failed::Unconfirmed("the forwarder stopped".into())))
    }
}

async fn run<M: Machine>(
    rx: mpsc::Receiver<Item<M>>,
    peers: PeerClient,
    batching: Batching,
    in_flight: usize,
    cancel: CancellationToken,
) {
    let mut gather = Gather::new(rx, in_flight, BATCH_MAX, BATCH_BYTES_MAX);
    let size = |i: &Item<M>| M::approx_bytes(&i.cmd);
    let same_leader = |a: &Item<M>, b: &Item<M>| a.dest == b.dest;
    while let Some((batch, permit)) = gather.next(&cancel, size, same_leader).await {
        tokio::spawn(send::<M>(peers.clone(), batching.clone(), batch, permit));
    }
}

/// Sends one batch and answers each of its writes.
async fn send<M: Machine>(
    peers: PeerClient,
    batching: Batching,
    batch: Vec<Item<M>>,
    _permit: OwnedSemaphorePermit,
) {
    let Some(dest) = batch.first().map(|i| i.dest.clone()) else {
        return;
    };
    let deadline = batch
        .iter()
        .map(|i| i.deadline)
        .min()
        .unwrap_or_else(Instant::now);
    let (cmds, replies): (Vec<M::Command>, Vec<_>) =
        batch.into_iter().map(|i| (i.cmd, i.reply)).unzip();
    let left = deadline.saturating_duration_since(Instant::now());
    let sent = peers
        .forward_writes::<M>(dest.0, &dest.1, &cmds, left)
        .await;
    if matches!(sent, Ok(None)) {
        tracing::info!(leader = dest.0, addr = %dest.1, "the leader takes forwarded writes one by one (an earlier release)");
        lock(&batching).remove(&dest);
    }
    for (reply, outcome) in replies.into_iter().zip(outcomes(sent, cmds.len())) {
        let _ = reply.send(outcome);
    }
}

fn lock(batching: &Batching) -> std::sync::MutexGuard<'_, HashSet<Dest>> {
    batching.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::machine::kv::{Cmd, Kv};

    /// A peer port that answers every request with `status`, on a port of its own.
    async fn answering(status: u16) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let status = axum::http::StatusCode::from_u16(status).expect("status");
        let app = axum::Router::new().fallback(move || async move { status });
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    fn client() -> PeerClient {
        let removals = Arc::new(tokio::sync::watch::channel(None).0);
        PeerClient::new(
            None,
            Arc::new(|| None),
            Default::default(),
            None,
            removals,
            0,
        )
        .expect("client")
    }

    fn put() -> Cmd {
        Cmd::Put {
            key: "k".into(),
            value: "v".into(),
        }
    }

    #[tokio::test]
    async fn batches_go_only_to_a_leader_that_said_it_takes_them_and_a_404_is_not_nonsense() {
        let old = answering(404).await;
        let peers = client();
        let cancel = CancellationToken::new();
        let (forwarder, task) = Forwarder::<Kv>::new(peers.clone(), 1, cancel.clone());
        tokio::spawn(task);
        let dest: Dest = (2, old.clone());
        assert!(
            !forwarder.batches_to(&dest),
            "a leader not heard from gets single writes"
        );
        forwarder.note(&dest, false);
        assert!(
            !forwarder.batches_to(&dest),
            "one of the previous release, too"
        );
        forwarder.note(&dest, true);
        forwarder.note(&(3, old.clone()), true);
        assert!(forwarder.batches_to(&dest), "once it said it takes them");
        // Rolled back at the same address: it answers 404, proposed nothing, and gets single
        // writes from then on.
        let deadline = Instant::now() + Duration::from_secs(5);
        let outcome = forwarder.write(dest.clone(), put(), deadline).await;
        assert_eq!(outcome.err(), Some(Failed::Singly));
        assert!(!forwarder.batches_to(&dest), "sent singly from now on");
        assert!(forwarder.batches_to(&(3, old.clone())), "only that leader");
        // Not nonsense: the next request goes out (a 404 again), not held by a backoff.
        let one = [put()];
        let again = peers.forward_writes::<Kv>(2, &old, &one, Duration::from_secs(5));
        assert!(matches!(again.await, Ok(None)));

        // A refusal that is not about the path still pauses the peer.
        let refusing = answering(401).await;
        let refused = peers.forward_writes::<Kv>(2, &refusing, &one, Duration::from_secs(5));
        assert!(matches!(
            refused.await,
            Err(TransportError::Rejected { status: 401, .. })
        ));
        let outcome = forwarder.write((2, refusing), put(), deadline).await;
        assert!(
            matches!(outcome, Err(Failed::NothingSent(_))),
            "{outcome:?}"
        );
        cancel.cancel();
    }

    fn http_error() -> reqwest::Error {
        // A request that cannot be built: a reqwest error without any network.
        reqwest::Client::new()
            .get("http://[::1")
            .build()
            .expect_err("an invalid URL")
    }

    #[test]
    fn each_write_of_a_request_gets_the_request_s_outcome() {
        let addr = || "127.0.0.1:1".to_owned();
        let answered: Vec<Result<u32, Failed>> = outcomes(Ok(Some(vec![7, 8])), 2);
        assert_eq!(answered, vec![Ok(7), Ok(8)]);
        assert_eq!(outcomes::<u32>(Ok(None), 3), vec![Err(Failed::Singly); 3]);
        let kind = |f: &Failed| match f {
            Failed::NothingSent(_) => "nothing sent",
            Failed::Busy(_) => "busy",
            Failed::Unconfirmed(_) => "unconfirmed",
            Failed::Singly => "singly",
        };
        let cases: Vec<(TransportError, &str)> = vec![
            (TransportError::Busy, "busy"),
            (
                TransportError::BackingOff {
                    addr: addr(),
                    left: Duration::from_secs(1),
                },
                "nothing sent",
            ),
            (
                TransportError::Unproven {
                    addr: addr(),
                    detail: "no".into(),
                },
                "nothing sent",
            ),
            (
                TransportError::Http {
                    addr: addr(),
                    source: http_error(),
                },
                "unconfirmed",
            ),
            (
                TransportError::Rejected {
                    addr: addr(),
                    status: 500,
                    body: String::new(),
                },
                "unconfirmed",
            ),
            (
                TransportError::Garbled {
                    addr: addr(),
                    detail: "1 answer to 2 writes".into(),
                },
                "unconfirmed",
            ),
        ];
        for (e, expected) in cases {
            let label = e.to_string();
            let all = outcomes::<u32>(Err(e), 2);
            assert_eq!(all.len(), 2, "{label}");
            assert!(
                all.iter()
                    .all(|o| o.as_ref().is_err_and(|f| kind(f) == expected)),
                "{label}: {all:?}"
            );
        }
    }
}
