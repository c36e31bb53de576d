//! Secrets (API tokens, the peer secret): compared in constant time and never printed. The
//! peer secret never travels: a peer request carries an HMAC of what it is (`sign_request`),
//! and a node proves it holds the secret by answering a challenge (`prove`).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How far the time in a signed peer request may lie from the receiver's clock.
pub const SIGNATURE_SKEW_MS: i64 = 30_000;

/// Why a peer request's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no signature, or not of the form v1,t=MS,s=MAC")]
    Malformed,
    #[error("signed {0} ms away from this node's clock; at most {SIGNATURE_SKEW_MS} allowed")]
    Stale(i64),
    #[error("the signature does not match: another secret, or the request was altered")]
    Mismatch,
}

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

    /// The value itself, for keying a signature (the webhook signing secret). Never sent.
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

/// What a peer request is, as signed: method, path, the node it is meant for, and its body.
#[derive(Debug, Clone, Copy)]
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub target: u64,
    pub body: &'a [u8],
}

impl Secret {
    fn mac(&self, domain: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.value.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(domain);
        for part in parts {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac
    }

    fn request_mac(&self, r: &Signed<'_>, t_ms: i64) -> Hmac<Sha256> {
        let digest = Sha256::digest(r.body);
        self.mac(
            b"hookd-peer-request-v1",
            &[
                r.method.as_bytes(),
                r.path.as_bytes(),
                &r.target.to_be_bytes(),
                &t_ms.to_be_bytes(),
                &digest,
            ],
        )
    }

    /// The signature header value of request `r` made at `t_ms`: `v1,t=MS,s=MAC`.
    pub fn sign_request(&self, r: &Signed<'_>, t_ms: i64) -> String {
        let tag = self.request_mac(r, t_ms).finalize().into_bytes();
        format!("v1,t={t_ms},s={}", URL_SAFE_NO_PAD.encode(tag))
    }

    /// Checks the signature header value `given` of request `r` at `now_ms`; constant time.
    pub fn verify_request(
        &self,
        given: &str,
        r: &Signed<'_>,
        now_ms: i64,
    ) -> Result<(), SignatureError> {
        let rest = given
            .strip_prefix("v1,t=")
            .ok_or(SignatureError::Malformed)?;
        let (t, tag) = rest.split_once(",s=").ok_or(SignatureError::Malformed)?;
        let t_ms: i64 = t.parse().map_err(|_| SignatureError::Malformed)?;
        let tag = URL_SAFE_NO_PAD
            .decode(tag)
            .map_err(|_| SignatureError::Malformed)?;
        let skew = now_ms.saturating_sub(t_ms);
        if skew.saturating_abs() > SIGNATURE_SKEW_MS {
            return Err(SignatureError::Stale(skew));
        }
        self.request_mac(r, t_ms)
            .verify_slice(&tag)
            .map_err(|_| SignatureError::Mismatch)
    }

    /// Proof that node `node` holds this secret, answering the challenge `nonce`.
    pub fn prove(&self, nonce: &[u8], node: u64) -> String {
        let tag = self
            .mac(b"hookd-peer-proof-v1", &[nonce, &node.to_be_bytes()])
            .finalize()
            .into_bytes();
        URL_SAFE_NO_PAD.encode(tag)
    }

    /// Whether `proof` is node `node`'s answer to `nonce` with this secret; constant time.
    pub fn check_proof(&self, nonce: &[u8], node: u64, proof: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(proof) else {
            return false;
        };
        self.mac(b"hookd-peer-proof-v1", &[nonce, &node.to_be_bytes()])
            .verify_slice(&tag)
            .is_ok()
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

    #[test]
    fn a_signed_request_verifies_only_unaltered_in_time_and_with_the_same_secret() {
        let s = Secret::new("peer-secret-long-enough");
        let r = Signed {
            method: "POST",
            path: "/raft/append",
            target: 2,
            body: b"{\"entries\":[]}",
        };
        let t = 1_800_000_000_000;
        let sig = s.sign_request(&r, t);
        assert!(
            !sig.contains("peer-secret"),
            "the secret is not in the header"
        );
        assert_eq!(s.verify_request(&sig, &r, t), Ok(()));
        assert_eq!(s.verify_request(&sig, &r, t + SIGNATURE_SKEW_MS), Ok(()));
        let cases: Vec<(&str, Signed<'_>, i64, SignatureError)> = vec![
            (
                "stale",
                r,
                t + SIGNATURE_SKEW_MS + 1,
                SignatureError::Stale(SIGNATURE_SKEW_MS + 1),
            ),
            (
                "from the future",
                r,
                t - SIGNATURE_SKEW_MS - 1,
                SignatureError::Stale(-SIGNATURE_SKEW_MS - 1),
            ),
            (
                "another body",
                Signed { body: b"{}", ..r },
                t,
                SignatureError::Mismatch,
            ),
            (
                "another path",
                Signed {
                    path: "/forward/write",
                    ..r
                },
                t,
                SignatureError::Mismatch,
            ),
            (
                "another node",
                Signed { target: 3, ..r },
                t,
                SignatureError::Mismatch,
            ),
            (
                "another method",
                Signed { method: "GET", ..r },
                t,
                SignatureError::Mismatch,
            ),
        ];
        for (what, req, now, want) in cases {
            assert_eq!(s.verify_request(&sig, &req, now), Err(want), "{what}");
        }
        let other = Secret::new("another-secret");
        assert_eq!(
            other.verify_request(&sig, &r, t),
            Err(SignatureError::Mismatch)
        );
        for bad in [
            "",
            "Bearer peer-secret-long-enough",
            "v1,t=x,s=AAAA",
            "v1,t=1",
            "v1,t=1,s=%%",
        ] {
            assert_eq!(
                s.verify_request(bad, &r, t),
                Err(SignatureError::Malformed),
                "{bad:?}"
            );
        }
        // The time is signed too: moving it breaks the signature.
        let moved = sig.replacen(&format!("t={t}"), &format!("t={}", t + 1), 1);
        assert_eq!(
            s.verify_request(&moved, &r, t),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn a_proof_answers_one_challenge_for_one_node() {
        let s = Secret::new("peer-secret-long-enough");
        let proof = s.prove(b"nonce-1", 4);
        assert!(s.check_proof(b"nonce-1", 4, &proof));
        assert!(!s.check_proof(b"nonce-2", 4, &proof), "another challenge");
        assert!(!s.check_proof(b"nonce-1", 5, &proof), "another node");
        assert!(
            !Secret::new("x").check_proof(b"nonce-1", 4, &proof),
            "another secret"
        );
        assert!(!s.check_proof(b"nonce-1", 4, "garbage!"));
    }
}
