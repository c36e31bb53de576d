//! When a node builds a snapshot. Pure: the counts are passed in.
//!
//! A snapshot copies the whole state, so building one every fixed number of entries costs work
//! in proportion to the state per entry: with 1M jobs (a 300 MB snapshot) every 5,000 entries
//! the three nodes spent most of their disk and much of their CPU on snapshots during a fill,
//! and each build's many seconds of concurrent applies left fragmented heap behind (RSS 2 GiB
//! per node at 1M jobs, against 0.2 GiB with no snapshots at all). So a snapshot is due once at
//! least `min_entries` entries were applied since the last one *and* the commands applied since
//! amount to at least the last snapshot's size: the bytes written for snapshots stay at most
//! about those written for the log, whatever the state's size, and a restart or a lagging
//! follower replays at most about one state's worth of log.

/// Whether to build a snapshot now: `entries_since` entries and `bytes_since` bytes of commands
/// were applied since the last snapshot (`None`: not known, as in a data dir of an older version:
/// only the entry count decides), whose file is `snapshot_bytes` long (0: there is none).
pub fn snapshot_due(
    min_entries: u64,
    entries_since: u64,
    bytes_since: Option<u64>,
    snapshot_bytes: u64,
) -> bool {
    entries_since >= min_entries && bytes_since.is_none_or(|b| b >= snapshot_bytes)
}

/// After asking for a snapshot, how long before asking again while none has started (a request
/// openraft dropped).
pub const ASK_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Whether to ask openraft for a snapshot that is `due`, while `building` snapshots are being
/// built and the last request was `since_asked` ago (`None`: never, or a snapshot was completed
/// since). Never during a build: the entry count only falls once a build completes, and the
/// byte count restarts at its capture, so under a heavy load of small-state commands a snapshot
/// is due again within the build. Asking on every change of Raft's metrics then kept every
/// node's Raft core busy answering requests for the whole build (10-15 s with 45 MB states):
/// delivery fell by half on this machine.
pub fn ask_for_snapshot(
    due: bool,
    building: bool,
    since_asked: Option<std::time::Duration>,
) -> bool {
    due && !building && since_asked.is_none_or(|d| d >= ASK_AGAIN_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_due_after_enough_entries_and_a_state_worth_of_commands() {
        // (min entries, entries since, bytes since, snapshot bytes, due)
        let table = [
            // A small state: the entry count decides, as a fixed interval did.
            (5_000, 4_999, Some(10_000_000), 1_000, false),
            (5_000, 5_000, Some(10_000), 1_000, true),
            (150, 150, Some(150_000), 20_000, true),
            // No snapshot yet: the entry count decides.
            (5_000, 5_000, Some(1), 0, true),
            // A large state: enough entries, but far fewer command bytes than the state holds.
            (5_000, 50_000, Some(100_000_000), 300_000_000, false),
            (5_000, 50_000, Some(300_000_000), 300_000_000, true),
            // Bytes not counted (a data dir of an older version): the entry count alone decides.
            (5_000, 4_000, None, 300_000_000, false),
            (5_000, 5_000, None, 300_000_000, true),
        ];
        for (min, entries, bytes, snap, due) in table {
            assert_eq!(
                snapshot_due(min, entries, bytes, snap),
                due,
                "min {min} entries {entries} bytes {bytes:?} snapshot {snap}"
            );
        }
    }

    #[test]
    fn a_snapshot_is_asked_for_once_until_a_build_starts_and_never_during_one() {
        use std::time::Duration;
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        // (due, building, since asked, ask)
        let table = [
            (true, false, None, true),
            (false, false, None, false),
            // Asked just now: the build has not started yet.
            (true, false, Some(ms(5)), false),
            (true, false, Some(ms(1999)), false),
            // The request was dropped: ask again.
            (true, false, Some(s(2)), true),
            // A build is running: never, however long ago the last request was.
            (true, true, None, false),
            (true, true, Some(s(60)), false),
            (false, true, None, false),
        ];
        for (due, building, since, ask) in table {
            assert_eq!(
                ask_for_snapshot(due, building, since),
                ask,
                "due {due} building {building} since {since:?}"
            );
        }
    }
}
