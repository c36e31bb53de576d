//! The overlap policy (SPEC §2 `overlap`): what a run that falls due does while an earlier run
//! of its job is open. Decided in `apply` (`Command::StartRun`) from the replicated runs, so a
//! new leader decides exactly as the old one would.

use serde::{Deserialize, Serialize};

/// A job's overlap policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(test, derive(arbitrary::Arbitrary))]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Start it anyway.
    #[default]
    Allow,
    /// Record it `skipped` (reason `overlap`).
    Skip,
    /// Keep at most one waiting, started when the open run ends; skip further ones.
    BufferOne,
    /// End the open runs (`failed`, `superseded`) and start it.
    CancelPrevious,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
            Overlap::BufferOne => "buffer_one",
            Overlap::CancelPrevious => "cancel_previous",
        }
    }

    /// Whether its runs never overlap at the target: `skip` and `buffer_one` (`allow` lets
    /// them, and `cancel_previous` ends the open run in the state without calling it back).
    pub fn one_at_a_time(self) -> bool {
        matches!(self, Overlap::Skip | Overlap::BufferOne)
    }

    pub fn parse(text: &str) -> Option<Overlap> {
        [
            Overlap::Allow,
            Overlap::Skip,
            Overlap::BufferOne,
            Overlap::CancelPrevious,
        ]
        .into_iter()
        .find(|o| o.as_str() == text)
    }
}

/// What becomes of a run falling due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Start,
    Skip,
    Wait,
    /// End the open runs, then start.
    Supersede,
}

/// The decision for a run falling due under `policy`, with `open` other runs of its job open
/// (started or attempted, not ended) and `waiting` held back by `buffer_one`.
pub fn decide(policy: Overlap, open: usize, waiting: usize) -> Decision {
    match (policy, open) {
        (Overlap::Allow, _) | (_, 0) => Decision::Start,
        (Overlap::Skip, _) => Decision::Skip,
        (Overlap::BufferOne, _) if waiting == 0 => Decision::Wait,
        (Overlap::BufferOne, _) => Decision::Skip,
        (Overlap::CancelPrevious, _) => Decision::Supersede,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_skip_and_buffer_one_keep_runs_from_overlapping_at_the_target() {
        use Overlap::*;
        for (o, one) in [
            (Allow, false),
            (Skip, true),
            (BufferOne, true),
            (CancelPrevious, false),
        ] {
            assert_eq!(o.one_at_a_time(), one, "{o:?}");
        }
    }

    #[test]
    fn each_policy_decides_by_the_open_and_waiting_runs() {
        use Decision as D;
        use Overlap::*;
        for (policy, open, waiting, want) in [
            (Allow, 0, 0, D::Start),
            (Allow, 3, 1, D::Start),
            (Skip, 0, 0, D::Start),
            (Skip, 1, 0, D::Skip),
            (BufferOne, 0, 0, D::Start),
            (BufferOne, 1, 0, D::Wait),
            (BufferOne, 1, 1, D::Skip),
            (CancelPrevious, 0, 0, D::Start),
            (CancelPrevious, 2, 0, D::Supersede),
        ] {
            assert_eq!(
                decide(policy, open, waiting),
                want,
                "{policy:?} {open} {waiting}"
            );
        }
        for o in [Allow, Skip, BufferOne, CancelPrevious] {
            assert_eq!(Overlap::parse(o.as_str()), Some(o));
        }
        assert_eq!(Overlap::parse("forbid"), None);
    }
}
