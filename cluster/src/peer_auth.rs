//! Proving that both ends of a link know a shared secret, without sending it
//! (as Erlang's cookie, but never in the clear): HMAC-SHA-256 over both
//! sides' random nonces and what the hello said.
//!
//! The dialling side says hello; the listening side answers with a
//! challenge (its nonce); the dialling side answers with its own nonce and
//! its proof; the listening side checks it and answers with its proof, which
//! the dialling side checks in turn. Each proof names its role, so one side's
//! proof can never be replayed as the other's, and each covers both nonces,
//! so no proof is good for a second connection. A peer that fails is refused
//! before any other frame is read from it.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Bytes in a nonce.
pub const NONCE_LEN: usize = 32;
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Which side a proof comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The side that dialled and said hello.
    Dialler,
    /// The side that accepted the connection.
    Listener,
}

impl Role {
    fn label(self) -> &'static [u8] {
        match self {
            Role::Dialler => b"meerkat link proof: dialler",
            Role::Listener => b"meerkat link proof: listener",
        }
    }
}

/// A shared secret. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SharedSecret(Vec<u8>);

impl std::fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SharedSecret(..)")
    }
}

impl SharedSecret {
    /// The secret as configured; too short a one is refused.
    pub fn new(secret: &str) -> Result<SharedSecret, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!("must be at least {MIN_SECRET_LEN} bytes long"));
        }
        Ok(SharedSecret(secret.as_bytes().to_vec()))
    }

    /// `None` only if HMAC refused the key, which it does for no length.
    fn mac(&self, role: Role, context: &[&[u8]], listener_nonce: &[u8], dialler_nonce: &[u8]) -> Option<Hmac<Sha256>> {
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).ok()?;
        mac.update(role.label());
        // Each part with its length, so that parts cannot run into each other.
        for part in context.iter().copied().chain([listener_nonce, dialler_nonce]) {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        Some(mac)
    }

    /// The proof `role` sends: `context` is what the hello said (cluster or
    /// global host, the two ends' names), then both nonces.
    pub fn proof(&self, role: Role, context: &[&[u8]], listener_nonce: &[u8], dialler_nonce: &[u8]) -> Vec<u8> {
        self.mac(role, context, listener_nonce, dialler_nonce)
            .map(|m| m.finalize().into_bytes().to_vec())
            .unwrap_or_default()
    }

    /// Whether `proof` is `role`'s proof for these values (compared in constant time).
    pub fn verify(
        &self,
        role: Role,
        context: &[&[u8]],
        listener_nonce: &[u8],
        dialler_nonce: &[u8],
        proof: &[u8],
    ) -> bool {
        dialler_nonce.len() == NONCE_LEN
            && listener_nonce.len() == NONCE_LEN
            && self.mac(role, context, listener_nonce, dialler_nonce).is_some_and(|m| m.verify_slice(proof).is_ok())
    }
}

/// A fresh random nonce.
pub fn nonce() -> Vec<u8> {
    let mut n = vec![0u8; NONCE_LEN];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut n);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_hold_only_for_their_role_secret_context_and_nonces() {
        let s = SharedSecret::new("correct horse battery staple").unwrap();
        let (ln, dn) = (nonce(), nonce());
        let ctx: [&[u8]; 3] = [b"cluster", b"1", b"2"];
        let p = s.proof(Role::Dialler, &ctx, &ln, &dn);
        assert!(s.verify(Role::Dialler, &ctx, &ln, &dn, &p));
        assert!(!s.verify(Role::Listener, &ctx, &ln, &dn, &p), "not the other side's");
        assert!(!s.verify(Role::Dialler, &[b"cluster", b"1", b"3"], &ln, &dn, &p), "not another hello's");
        assert!(!s.verify(Role::Dialler, &ctx, &nonce(), &dn, &p), "not another connection's");
        let other = SharedSecret::new("correct horse battery stapler").unwrap();
        assert!(!other.verify(Role::Dialler, &ctx, &ln, &dn, &p), "not another secret's");
        assert!(!s.verify(Role::Dialler, &[b"clusterx", b"", b"2"], &ln, &dn, &p), "parts cannot shift");
        assert!(SharedSecret::new("short").is_err());
        assert_eq!(format!("{s:?}"), "SharedSecret(..)");
    }
}
