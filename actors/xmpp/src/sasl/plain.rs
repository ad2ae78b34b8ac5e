//! The PLAIN mechanism (RFC 4616).
//!
//! The single message is `[authzid] NUL authcid NUL passwd` in UTF-8. It
//! carries the password in the clear, so the driver should offer PLAIN only
//! over TLS (RFC 4616 §6).

use super::{check_authzid, SaslFailure};

/// A parsed PLAIN message waiting for the account's credentials.
pub(super) struct Pending {
    /// SASLprep'd authcid.
    pub(super) username: String,
    /// As sent; [`super::Credentials::verify_password`] normalizes it.
    pub(super) password: String,
    pub(super) authzid: Option<String>,
}

pub(super) fn parse(msg: &[u8]) -> Result<Pending, SaslFailure> {
    let text = std::str::from_utf8(msg).map_err(|_| SaslFailure::MalformedRequest)?;
    let mut parts = text.split('\0');
    let (Some(authzid), Some(authcid), Some(password), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslFailure::MalformedRequest);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    // RFC 4616 §2: the server prepares authcid and password with SASLprep.
    // A name SASLprep rejects cannot belong to any account.
    let username = stringprep::saslprep(authcid).map_err(|_| SaslFailure::MalformedRequest)?.into_owned();
    if username.is_empty() {
        return Err(SaslFailure::MalformedRequest);
    }
    let authzid = (!authzid.is_empty()).then(|| authzid.to_owned());
    check_authzid(authzid.as_deref(), &username)?;
    Ok(Pending { username, password: password.to_owned(), authzid })
}

/// Builds the PLAIN initial response for a client.
pub fn plain_initial_response(authzid: Option<&str>, username: &str, password: &str) -> Vec<u8> {
    let authzid = authzid.unwrap_or("");
    let mut out = Vec::with_capacity(authzid.len() + username.len() + password.len() + 2);
    out.extend_from_slice(authzid.as_bytes());
    out.push(0);
    out.extend_from_slice(username.as_bytes());
    out.push(0);
    out.extend_from_slice(password.as_bytes());
    out
}
