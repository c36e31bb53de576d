//! Which release each member runs, as the leader hears it: every answer to an AppendEntries
//! names the answering node's version (`VERSION_HEADER`) and the newest format it reads
//! (`FORMAT_HEADER`). A release before these headers (v0.1.0) sends neither; its members are
//! known only as older. What finalizing an upgrade asks of every member (`Release::reads`).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::typ::NodeId;

pub(crate) const VERSION_HEADER: &str = "hookd-version";
pub(crate) const FORMAT_HEADER: &str = "hookd-format";
/// Longest version a peer may name (clipped beyond).
const VERSION_MAX: usize = 64;

/// A member's release as it said it last (none of either: a release that does not say).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub version: Option<String>,
    /// The newest format of the machine's records and commands it reads.
    pub format: Option<u32>,
}

impl Release {
    /// This node's release, for a machine whose newest format is `format`.
    pub fn this(format: u32) -> Release {
        Release {
            version: Some(env!("CARGO_PKG_VERSION").to_owned()),
            format: Some(format),
        }
    }

    /// What a peer's answer says, taken as hostile: a version of printable ASCII only,
    /// clipped; a format that is a number.
    pub(crate) fn of_answer(headers: &reqwest::header::HeaderMap) -> Release {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let version = text(VERSION_HEADER)
            .map(|v| {
                v.chars()
                    .filter(|c| c.is_ascii_graphic())
                    .take(VERSION_MAX)
                    .collect::<String>()
            })
            .filter(|v| !v.is_empty());
        let format = text(FORMAT_HEADER).and_then(|f| f.trim().parse().ok());
        Release { version, format }
    }

    /// Whether this release reads records and commands of `format`.
    pub fn reads(&self, format: u32) -> bool {
        self.format.is_some_and(|f| f >= format)
    }
}

/// Each peer's release, from its last answer to an AppendEntries of this node (so, while this
/// node leads, every member's).
#[derive(Debug, Clone, Default)]
pub struct Releases(Arc<Mutex<BTreeMap<NodeId, Release>>>);

impl Releases {
    pub(crate) fn record(&self, node: NodeId, release: Release) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node, release);
    }

    pub fn all(&self) -> BTreeMap<NodeId, Release> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    fn answer(version: Option<&[u8]>, format: Option<&str>) -> Release {
        let mut h = HeaderMap::new();
        if let Some(v) = version {
            h.insert(VERSION_HEADER, HeaderValue::from_bytes(v).unwrap());
        }
        if let Some(f) = format {
            h.insert(FORMAT_HEADER, HeaderValue::from_str(f).unwrap());
        }
        Release::of_answer(&h)
    }

    #[test]
    fn a_peers_release_is_read_from_its_answer_and_never_trusted_beyond_text_and_a_number() {
        let ok = answer(Some(b"0.2.0"), Some("5"));
        assert_eq!(ok.version.as_deref(), Some("0.2.0"));
        assert_eq!(ok.format, Some(5));
        assert!(ok.reads(5) && ok.reads(4) && !ok.reads(6));

        let older = answer(None, None);
        assert_eq!(older, Release::default(), "a release that does not say");
        assert!(!older.reads(1), "an unknown release reads nothing new");

        let hostile = answer(Some(&[b'v'; 500]), Some("lots"));
        assert_eq!(hostile.version.map(|v| v.len()), Some(VERSION_MAX));
        assert_eq!(hostile.format, None);
        let spaced = answer(Some(b"0.2 .0\t<x>"), Some(" 7 "));
        assert_eq!(spaced.version.as_deref(), Some("0.2.0<x>"));
        assert_eq!(spaced.format, Some(7));
        assert_eq!(answer(Some(b"  "), None).version, None);
    }
}
