//! Secrets (API tokens, the peer secret): compared in constant time and never printed.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A secret value. `Debug` shows `***`; comparing goes through SHA-256 digests, so neither the
/// matching prefix nor the length of the secret shows in the time taken.
#[derive(Clone)]
pub struct Secret {
    value: String,
    digest: [u8; 32],
}

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        let value = value.into();
        let digest = Sha256::digest(value.as_bytes()).into();
        Secret { value, digest }
    }

    /// The value itself, for sending it to a peer.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// True when `given` is this secret; constant time.
    pub fn matches(&self, given: &[u8]) -> bool {
        let given: [u8; 32] = Sha256::digest(given).into();
        self.digest.ct_eq(&given).into()
    }

    /// True when `given` is any of `secrets`; every one is compared, whichever matches.
    pub fn any_matches(secrets: &[Secret], given: &[u8]) -> bool {
        let given: [u8; 32] = Sha256::digest(given).into();
        secrets
            .iter()
            .fold(subtle::Choice::from(0), |acc, s| {
                acc | s.digest.ct_eq(&given)
            })
            .into()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_only_the_value_and_never_prints_it() {
        let s = Secret::new("hunter2-long-enough");
        assert!(s.matches(b"hunter2-long-enough"));
        for wrong in ["", "hunter2", "hunter2-long-enough ", "HUNTER2-long-enough"] {
            assert!(!s.matches(wrong.as_bytes()), "{wrong:?}");
        }
        assert_eq!(format!("{s:?}"), "Secret(***)");
        let all = [Secret::new("a1"), Secret::new("b2")];
        assert!(Secret::any_matches(&all, b"b2") && Secret::any_matches(&all, b"a1"));
        assert!(!Secret::any_matches(&all, b"c3") && !Secret::any_matches(&[], b"a1"));
    }
}
