//! The `HT-*` mechanisms of FAST (XEP-0484): a token the server issued
//! earlier proves the client's identity in one message
//! (draft-schmaus-kitten-sasl-ht).
//!
//! The client sends `authcid NUL HMAC(token, "Initiator" || cb)`; the server
//! answers with `HMAC(token, "Responder" || cb)` as additional data. `cb` is
//! empty for the `-NONE` variants and the RFC 9266 `tls-exporter` data for
//! `-EXPR`. Which tokens a user has, and whether one is still valid, is the
//! caller's business: this module only computes and checks proofs.

use sha2::{Sha256, Sha384, Sha512};
use sha3::{Sha3_256, Sha3_384, Sha3_512};

use super::SaslFailure;

/// The hash of an `HT-*` mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HtHash {
    Sha256,
    Sha384,
    Sha512,
    Sha3_256,
    Sha3_384,
    Sha3_512,
}

/// One `HT-<hash>-<binding>` mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HtMechanism {
    pub hash: HtHash,
    /// `-EXPR` (bound to the `tls-exporter` channel binding) rather than `-NONE`.
    pub exporter: bool,
}

impl HtMechanism {
    /// Every mechanism, strongest hash first, each binding before `-NONE`.
    pub const ALL: [HtMechanism; 12] = {
        use HtHash::*;
        const fn m(hash: HtHash, exporter: bool) -> HtMechanism {
            HtMechanism { hash, exporter }
        }
        [
            m(Sha3_512, true),
            m(Sha3_512, false),
            m(Sha512, true),
            m(Sha512, false),
            m(Sha3_384, true),
            m(Sha3_384, false),
            m(Sha384, true),
            m(Sha384, false),
            m(Sha3_256, true),
            m(Sha3_256, false),
            m(Sha256, true),
            m(Sha256, false),
        ]
    };

    /// The registered name, such as `HT-SHA-256-NONE` or `HT-SHA-3-512-EXPR`.
    pub fn name(&self) -> &'static str {
        use HtHash::*;
        match (self.hash, self.exporter) {
            (Sha256, false) => "HT-SHA-256-NONE",
            (Sha256, true) => "HT-SHA-256-EXPR",
            (Sha384, false) => "HT-SHA-384-NONE",
            (Sha384, true) => "HT-SHA-384-EXPR",
            (Sha512, false) => "HT-SHA-512-NONE",
            (Sha512, true) => "HT-SHA-512-EXPR",
            (Sha3_256, false) => "HT-SHA-3-256-NONE",
            (Sha3_256, true) => "HT-SHA-3-256-EXPR",
            (Sha3_384, false) => "HT-SHA-3-384-NONE",
            (Sha3_384, true) => "HT-SHA-3-384-EXPR",
            (Sha3_512, false) => "HT-SHA-3-512-NONE",
            (Sha3_512, true) => "HT-SHA-3-512-EXPR",
        }
    }

    /// The mechanism of this exact (upper-case) name.
    pub fn from_name(name: &str) -> Option<HtMechanism> {
        HtMechanism::ALL.into_iter().find(|m| m.name() == name)
    }

    fn hmac(&self, token: &[u8], label: &[u8], cb: &[u8]) -> Vec<u8> {
        use hmac::{Hmac, KeyInit, Mac};
        fn run<D: hmac::EagerHash>(key: &[u8], parts: [&[u8]; 2]) -> Vec<u8> {
            // HMAC takes keys of any length; this cannot fail.
            let Ok(mut mac) = <Hmac<D> as KeyInit>::new_from_slice(key) else { return Vec::new() };
            for p in parts {
                Mac::update(&mut mac, p);
            }
            mac.finalize().into_bytes().to_vec()
        }
        let parts = [label, cb];
        match self.hash {
            HtHash::Sha256 => run::<Sha256>(token, parts),
            HtHash::Sha384 => run::<Sha384>(token, parts),
            HtHash::Sha512 => run::<Sha512>(token, parts),
            HtHash::Sha3_256 => run::<Sha3_256>(token, parts),
            HtHash::Sha3_384 => run::<Sha3_384>(token, parts),
            HtHash::Sha3_512 => run::<Sha3_512>(token, parts),
        }
    }

    /// What the client proves with: `HMAC(token, "Initiator" || cb)`.
    pub fn initiator(&self, token: &str, cb: &[u8]) -> Vec<u8> {
        self.hmac(token.as_bytes(), b"Initiator", cb)
    }

    /// What the server answers with: `HMAC(token, "Responder" || cb)`.
    pub fn responder(&self, token: &str, cb: &[u8]) -> Vec<u8> {
        self.hmac(token.as_bytes(), b"Responder", cb)
    }

    /// Whether `proof` is the initiator proof for `token`, compared in constant time.
    pub fn verify(&self, token: &str, cb: &[u8], proof: &[u8]) -> bool {
        super::crypto::ct_eq_hidden_len(&self.initiator(token, cb), proof)
    }

    /// The client's message: `username NUL proof`.
    pub fn initial_response(&self, username: &str, token: &str, cb: &[u8]) -> Vec<u8> {
        let mut out = username.as_bytes().to_vec();
        out.push(0);
        out.extend(self.initiator(token, cb));
        out
    }
}

/// Splits the client's message into its username and its proof.
pub fn parse_initial_response(msg: &[u8]) -> Result<(String, Vec<u8>), SaslFailure> {
    let nul = msg.iter().position(|b| *b == 0).ok_or(SaslFailure::MalformedRequest)?;
    let user = std::str::from_utf8(&msg[..nul]).map_err(|_| SaslFailure::MalformedRequest)?;
    let proof = &msg[nul + 1..];
    if user.is_empty() || proof.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    Ok((user.to_owned(), proof.to_vec()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        let mut names: Vec<&str> = HtMechanism::ALL.iter().map(|m| m.name()).collect();
        for m in HtMechanism::ALL {
            assert_eq!(HtMechanism::from_name(m.name()), Some(m));
        }
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), 12);
        assert_eq!(HtMechanism::from_name("ht-sha-256-none"), None);
    }

    #[test]
    fn proofs_are_hmacs_over_the_label_and_the_binding() {
        let m = HtMechanism::from_name("HT-SHA-256-NONE").unwrap();
        // HMAC-SHA-256(key = "token", "Initiator"), as xmpp.js computes it.
        let expected = {
            use hmac::{Hmac, KeyInit, Mac};
            let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"token").unwrap();
            Mac::update(&mut mac, b"Initiator");
            mac.finalize().into_bytes().to_vec()
        };
        assert_eq!(m.initiator("token", b""), expected);
        assert!(m.verify("token", b"", &expected));
        assert!(!m.verify("other", b"", &expected));
        assert_ne!(m.initiator("token", b""), m.responder("token", b""));
        let expr = HtMechanism::from_name("HT-SHA-256-EXPR").unwrap();
        assert_ne!(expr.initiator("token", &[1; 32]), expr.initiator("token", &[2; 32]));
        for m in HtMechanism::ALL {
            let len = match m.hash {
                HtHash::Sha256 | HtHash::Sha3_256 => 32,
                HtHash::Sha384 | HtHash::Sha3_384 => 48,
                HtHash::Sha512 | HtHash::Sha3_512 => 64,
            };
            assert_eq!(m.initiator("t", b"").len(), len, "{}", m.name());
        }
    }

    #[test]
    fn the_initial_response_is_the_username_then_the_proof() {
        let m = HtMechanism::from_name("HT-SHA-3-256-NONE").unwrap();
        let msg = m.initial_response("juliet", "t0k3n", b"");
        let (user, proof) = parse_initial_response(&msg).unwrap();
        assert_eq!(user, "juliet");
        assert!(m.verify("t0k3n", b"", &proof));
        for bad in [&b""[..], b"juliet", b"\0proof", b"juliet\0", b"\xff\0proof"] {
            assert_eq!(parse_initial_response(bad), Err(SaslFailure::MalformedRequest), "{bad:?}");
        }
    }
}
