//! Hash, HMAC and PBKDF2 dispatch over [`HashAlg`], plus the few
//! constant-time and randomness helpers the mechanisms share.
//!
//! Everything here works on byte vectors so the SCRAM code can stay generic
//! over the hash at run time (the mechanism is chosen by the client).

use std::sync::OnceLock;

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

use super::HashAlg;

/// `H(data)`.
pub(crate) fn hash(alg: HashAlg, data: &[u8]) -> Vec<u8> {
    match alg {
        HashAlg::Sha1 => Sha1::digest(data).to_vec(),
        HashAlg::Sha256 => Sha256::digest(data).to_vec(),
        HashAlg::Sha512 => Sha512::digest(data).to_vec(),
    }
}

fn hmac_with<D: hmac::EagerHash>(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC is defined for keys of any length (long keys are hashed, short
    // ones padded), so this constructor cannot fail for `Hmac`.
    let mut mac = <Hmac<D> as KeyInit>::new_from_slice(key).expect("HMAC accepts keys of any length");
    Mac::update(&mut mac, data);
    mac.finalize().into_bytes().to_vec()
}

/// `HMAC(key, data)`.
pub(crate) fn hmac(alg: HashAlg, key: &[u8], data: &[u8]) -> Vec<u8> {
    match alg {
        HashAlg::Sha1 => hmac_with::<Sha1>(key, data),
        HashAlg::Sha256 => hmac_with::<Sha256>(key, data),
        HashAlg::Sha512 => hmac_with::<Sha512>(key, data),
    }
}

/// `Hi(password, salt, i)` from RFC 5802 §2.2, which is PBKDF2 with
/// HMAC-H as PRF and dkLen equal to the hash output length.
pub(crate) fn hi(alg: HashAlg, password: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
    let mut out = vec![0u8; alg.output_len()];
    match alg {
        HashAlg::Sha1 => pbkdf2::pbkdf2_hmac::<Sha1>(password, salt, iterations, &mut out),
        HashAlg::Sha256 => pbkdf2::pbkdf2_hmac::<Sha256>(password, salt, iterations, &mut out),
        HashAlg::Sha512 => pbkdf2::pbkdf2_hmac::<Sha512>(password, salt, iterations, &mut out),
    }
    out
}

/// Cryptographically random bytes from the thread-local CSPRNG.
pub(crate) fn random_bytes(len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    rand::rng().fill_bytes(&mut out);
    out
}

/// Constant-time equality. Lengths are not secret here (they are fixed by
/// the hash), so a length mismatch may return early.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Constant-time equality that also hides the lengths, by comparing
/// SHA-256 digests. Used for plaintext passwords.
pub(crate) fn ct_eq_hidden_len(a: &[u8], b: &[u8]) -> bool {
    let da = Sha256::digest(a);
    let db = Sha256::digest(b);
    bool::from(da.as_slice().ct_eq(db.as_slice()))
}

/// `a XOR b` for equal-length inputs.
pub(crate) fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// A salt for a user we have no SCRAM salt for (unknown user, or a plaintext
/// password that is hashed on the fly), as long as real salts ([`super::SALT_LEN`]).
///
/// It must be stable per user: if it changed on every attempt while real
/// users' salts stay fixed, two attempts would tell an attacker whether an
/// account exists (RFC 5802 §9, RFC 7677 §4). So it is an HMAC of the user
/// name keyed with `key`, which the server keeps (the same across restarts
/// and nodes); without one, a secret chosen once per process.
pub(crate) fn stable_salt(key: Option<&[u8]>, alg: HashAlg, username: &str) -> Vec<u8> {
    static KEY: OnceLock<Vec<u8>> = OnceLock::new();
    let key = key.unwrap_or_else(|| KEY.get_or_init(|| random_bytes(32)));
    let mut data = Vec::with_capacity(username.len() + 8);
    data.extend_from_slice(alg.storage_name().as_bytes());
    data.push(0);
    data.extend_from_slice(username.as_bytes());
    let mut salt = hmac(HashAlg::Sha256, key, &data);
    salt.truncate(super::SALT_LEN);
    salt
}
