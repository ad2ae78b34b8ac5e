//! SASL mechanisms for XMPP authentication, sans-IO.
//!
//! Implements, server and client side:
//! - the SASL framework as used by XMPP: RFC 4422, and RFC 6120 §6 for the
//!   failure conditions;
//! - `PLAIN`: RFC 4616;
//! - `EXTERNAL` with a client certificate: who it logs in as (XEP-0178, [`external`]);
//! - the `HT-*` token mechanisms of FAST (XEP-0484, [`fast`]);
//! - `SCRAM-SHA-1`: RFC 5802; `SCRAM-SHA-256`: RFC 7677; `SCRAM-SHA-512`:
//!   draft-melnikov-scram-sha-512 (same construction with SHA-512);
//! - the `-PLUS` variants with the `tls-exporter` channel binding of RFC 9266,
//!   as XMPP uses it (XEP-0440 advertises the binding types);
//! - SASLprep (RFC 4013) of usernames and passwords through `stringprep`.
//!
//! # Shape
//! [`SaslServer`] is a step function: the IO driver feeds it what the client
//! sent ([`SaslInput::Response`], already base64-decoded) and acts on the
//! [`SaslOutput`]. When the mechanism needs the account's secrets it answers
//! [`SaslOutput::LookupCredentials`] and the driver replies with
//! [`SaslInput::Credentials`]; so this module never touches a store.
//!
//! [`ScramClient`] and [`plain_initial_response`] are the client side, used
//! by tests and the load generator.
//!
//! # Security notes
//! - Stored SCRAM secrets are [`ScramCredentials`] (salted keys, never the
//!   password).
//! - For an unknown user the SCRAM exchange continues with a stable fake salt
//!   (derived from a [`SaltSecret`] the server keeps, so it survives restarts
//!   and is the same on every node) and the configured iteration count, and
//!   fails only at the final step, so the server's answers do not reveal
//!   which accounts exist (RFC 5802 §9, RFC 7677 §4).
//! - Proofs and passwords are compared in constant time (`subtle`).
//! - A client that says "y" (supports channel binding but thinks the server
//!   does not) while this server advertised a `-PLUS` mechanism is under a
//!   downgrade attack and is refused (RFC 5802 §6).

mod crypto;
pub mod external;
pub mod fast;
mod plain;
mod scram;
#[cfg(test)]
mod tests;

pub use plain::plain_initial_response;

/// Constant-time equality of two secrets' texts (their lengths stay hidden).
pub fn ct_eq_str(a: &str, b: &str) -> bool {
    crypto::ct_eq_hidden_len(a.as_bytes(), b.as_bytes())
}
pub use scram::{ClientChannelBinding, ScramClient, ScramCredentials};

/// Iteration count for SCRAM keys derived here when the caller has no
/// stored count (plaintext-stored passwords, unknown users). RFC 7677 §4
/// recommends at least 4096.
pub const DEFAULT_ITERATIONS: u32 = 4096;

/// Length of salts this module generates.
pub const SALT_LEN: usize = 16;

/// The key fake SCRAM salts are derived from ([`SaslServer::with_salt_secret`]).
/// Cheap to clone; never printed.
#[derive(Clone)]
pub struct SaltSecret(std::sync::Arc<[u8]>);

impl SaltSecret {
    pub fn new(key: &[u8]) -> SaltSecret {
        SaltSecret(key.into())
    }

    /// A fresh random key (for a first start, or tests).
    pub fn random() -> SaltSecret {
        SaltSecret::new(&crypto::random_bytes(32))
    }
}

impl std::fmt::Debug for SaltSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SaltSecret(..)")
    }
}

/// The TLS exporter label for the `tls-exporter` channel binding
/// (RFC 9266 §2); the context is empty and the length is
/// [`TLS_EXPORTER_LEN`].
pub const TLS_EXPORTER_LABEL: &str = "EXPORTER-Channel-Binding";

/// Length in bytes of `tls-exporter` channel-binding data (RFC 9266 §2).
pub const TLS_EXPORTER_LEN: usize = 32;

/// The channel-binding type name sent in the GS2 header.
pub const TLS_EXPORTER_CB_NAME: &str = "tls-exporter";

/// Hash function of a SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashAlg {
    Sha1,
    Sha256,
    Sha512,
}

impl HashAlg {
    /// Every supported hash, strongest first.
    pub const ALL: [HashAlg; 3] = [HashAlg::Sha512, HashAlg::Sha256, HashAlg::Sha1];

    /// Digest (and therefore SCRAM key) length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlg::Sha1 => 20,
            HashAlg::Sha256 => 32,
            HashAlg::Sha512 => 64,
        }
    }

    /// Name used in [`ScramCredentials::to_storage_string`].
    pub fn storage_name(self) -> &'static str {
        match self {
            HashAlg::Sha1 => "sha1",
            HashAlg::Sha256 => "sha256",
            HashAlg::Sha512 => "sha512",
        }
    }

    /// Inverse of [`HashAlg::storage_name`].
    pub fn from_storage_name(s: &str) -> Option<Self> {
        HashAlg::ALL.into_iter().find(|h| h.storage_name() == s)
    }

    /// Higher is stronger; used to pick one entry when any would do.
    fn strength(self) -> u8 {
        match self {
            HashAlg::Sha1 => 1,
            HashAlg::Sha256 => 2,
            HashAlg::Sha512 => 3,
        }
    }
}

/// A SASL mechanism this server implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Mechanism {
    /// A verified client certificate (XEP-0178); see [`external`].
    External,
    Plain,
    ScramSha1,
    ScramSha1Plus,
    ScramSha256,
    ScramSha256Plus,
    ScramSha512,
    ScramSha512Plus,
}

impl Mechanism {
    /// Every mechanism, strongest first; the order in which to advertise.
    pub const ALL: [Mechanism; 8] = [
        Mechanism::External,
        Mechanism::ScramSha512Plus,
        Mechanism::ScramSha512,
        Mechanism::ScramSha256Plus,
        Mechanism::ScramSha256,
        Mechanism::ScramSha1Plus,
        Mechanism::ScramSha1,
        Mechanism::Plain,
    ];

    /// The registered SASL name, as sent in `<mechanism/>` and `<auth/>`.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::External => "EXTERNAL",
            Mechanism::Plain => "PLAIN",
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha1Plus => "SCRAM-SHA-1-PLUS",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::ScramSha256Plus => "SCRAM-SHA-256-PLUS",
            Mechanism::ScramSha512 => "SCRAM-SHA-512",
            Mechanism::ScramSha512Plus => "SCRAM-SHA-512-PLUS",
        }
    }

    /// Parses a mechanism name. SASL names are upper case (RFC 4422 §3.1) and
    /// matched exactly.
    pub fn from_name(s: &str) -> Option<Self> {
        Mechanism::ALL.into_iter().find(|m| m.name() == s)
    }

    /// Whether this is a channel-binding (`-PLUS`) mechanism.
    pub fn is_plus(&self) -> bool {
        matches!(self, Mechanism::ScramSha1Plus | Mechanism::ScramSha256Plus | Mechanism::ScramSha512Plus)
    }

    /// The SCRAM hash, or `None` for PLAIN and EXTERNAL.
    pub fn hash(&self) -> Option<HashAlg> {
        match self {
            Mechanism::External | Mechanism::Plain => None,
            Mechanism::ScramSha1 | Mechanism::ScramSha1Plus => Some(HashAlg::Sha1),
            Mechanism::ScramSha256 | Mechanism::ScramSha256Plus => Some(HashAlg::Sha256),
            Mechanism::ScramSha512 | Mechanism::ScramSha512Plus => Some(HashAlg::Sha512),
        }
    }
}

/// What the account store holds for a user.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// The password itself (legacy stores).
    Plain(String),
    /// Salted SCRAM keys, one entry per hash algorithm.
    Scram(Vec<ScramCredentials>),
}

impl Credentials {
    /// Checks a password (as sent with PLAIN) against these credentials, in
    /// constant time.
    ///
    /// Both sides are SASLprep'd; if SASLprep rejects a string it is compared
    /// as is, so a legacy plaintext password that does not survive SASLprep
    /// still works with PLAIN. For SCRAM keys the strongest entry is
    /// re-derived with its stored salt and iteration count.
    pub fn verify_password(&self, password: &str) -> bool {
        match self {
            Credentials::Plain(stored) => {
                let given = stringprep::saslprep(password).unwrap_or(password.into());
                let stored = stringprep::saslprep(stored).unwrap_or(stored.as_str().into());
                crypto::ct_eq_hidden_len(given.as_bytes(), stored.as_bytes())
            }
            Credentials::Scram(list) => {
                let Some(entry) = list.iter().max_by_key(|c| c.hash.strength()) else {
                    return false;
                };
                match ScramCredentials::derive(entry.hash, password, &entry.salt, entry.iterations) {
                    Ok(derived) => crypto::ct_eq(&derived.stored_key, &entry.stored_key),
                    Err(_) => false,
                }
            }
        }
    }
}

/// SASL failure conditions (RFC 6120 §6.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SaslFailure {
    Aborted,
    AccountDisabled,
    CredentialsExpired,
    EncryptionRequired,
    IncorrectEncoding,
    InvalidAuthzid,
    InvalidMechanism,
    MalformedRequest,
    MechanismTooWeak,
    NotAuthorized,
    TemporaryAuthFailure,
}

impl SaslFailure {
    /// The element name of the condition inside `<failure/>`.
    pub fn as_str(&self) -> &'static str {
        match self {
            SaslFailure::Aborted => "aborted",
            SaslFailure::AccountDisabled => "account-disabled",
            SaslFailure::CredentialsExpired => "credentials-expired",
            SaslFailure::EncryptionRequired => "encryption-required",
            SaslFailure::IncorrectEncoding => "incorrect-encoding",
            SaslFailure::InvalidAuthzid => "invalid-authzid",
            SaslFailure::InvalidMechanism => "invalid-mechanism",
            SaslFailure::MalformedRequest => "malformed-request",
            SaslFailure::MechanismTooWeak => "mechanism-too-weak",
            SaslFailure::NotAuthorized => "not-authorized",
            SaslFailure::TemporaryAuthFailure => "temporary-auth-failure",
        }
    }
}

impl std::fmt::Display for SaslFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether `password` can be used with SASL at all: SASLprep (RFC 4013)
/// accepts it and leaves something.
pub fn password_is_acceptable(password: &str) -> bool {
    stringprep::saslprep(password).is_ok_and(|p| !p.is_empty())
}

/// Errors of the client side and of credential handling.
#[derive(Debug, thiserror::Error)]
pub enum SaslError {
    #[error("message is not valid UTF-8")]
    InvalidUtf8,
    #[error("SASLprep rejected the string")]
    Saslprep,
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("invalid base64")]
    Base64,
    #[error("iteration count must be at least 1")]
    InvalidIterations,
    #[error("server nonce does not extend the client nonce")]
    NonceMismatch,
    #[error("server signature does not match")]
    ServerSignatureMismatch,
    #[error("server reported SCRAM error: {0}")]
    ServerError(String),
    #[error("server requires an unsupported SCRAM extension")]
    UnsupportedExtension,
    #[error("invalid SCRAM credential storage string: {0}")]
    InvalidStorage(&'static str),
    #[error("SCRAM step called out of order")]
    OutOfOrder,
}

/// Input to [`SaslServer::step`].
pub enum SaslInput<'a> {
    /// The initial response (possibly empty) or a later response, already
    /// base64-decoded.
    Response(&'a [u8]),
    /// Answer to [`SaslOutput::LookupCredentials`]; `None` means no such user.
    Credentials(Option<Credentials>),
}

/// What the driver must do next.
#[derive(Debug)]
pub enum SaslOutput {
    /// Send `<challenge/>` with this (not yet base64-encoded) data.
    Challenge(Vec<u8>),
    /// Look up this user's credentials and answer with
    /// [`SaslInput::Credentials`].
    LookupCredentials { username: String },
    /// Authenticated as `username` (SASLprep'd authcid). Send `<success/>`
    /// with `additional_data` if present. Any requested authorization
    /// identity is in [`SaslServer::authzid`].
    Success { username: String, additional_data: Option<Vec<u8>> },
    /// Send `<failure/>` with this condition. The exchange is over.
    Failure(SaslFailure),
}

enum State {
    /// Nothing received yet. `challenged` records that we already answered
    /// an empty initial response with an empty challenge.
    Start {
        challenged: bool,
    },
    PlainAwaitCredentials(plain::Pending),
    ScramAwaitCredentials(scram::ClientFirst),
    ScramAwaitFinal(scram::AwaitFinal),
    /// EXTERNAL: the certificate names this account; does it exist?
    ExternalAwaitAccount {
        username: String,
    },
    Done,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::Start { .. } => "start",
            State::PlainAwaitCredentials(_) => "plain-await-credentials",
            State::ScramAwaitCredentials(_) => "scram-await-credentials",
            State::ScramAwaitFinal(_) => "scram-await-final",
            State::ExternalAwaitAccount { .. } => "external-await-account",
            State::Done => "done",
        }
    }
}

/// Server side of one authentication exchange.
pub struct SaslServer {
    mechanism: Mechanism,
    tls_exporter: Option<Vec<u8>>,
    plus_advertised: bool,
    default_iterations: u32,
    salt_secret: Option<SaltSecret>,
    authzid: Option<String>,
    /// EXTERNAL: what the verified client certificate names, the stream's
    /// domain and the checks to map them to an account.
    certificate: Option<Box<(external::CertIdentity, String, Vec<external::ExternalCheck>)>>,
    state: State,
    /// Fixed server nonce part, for the RFC test vectors.
    nonce_override: Option<String>,
}

impl std::fmt::Debug for SaslServer {
    // Hand-written so that passwords held between steps never reach logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslServer")
            .field("mechanism", &self.mechanism)
            .field("channel_binding", &self.tls_exporter.is_some())
            .field("plus_advertised", &self.plus_advertised)
            .field("state", &self.state.name())
            .finish()
    }
}

impl SaslServer {
    /// Starts an exchange.
    ///
    /// `tls_exporter`: the RFC 9266 channel-binding data of this TLS
    /// connection if any (32 bytes from `export_keying_material` with label
    /// [`TLS_EXPORTER_LABEL`] and no context).
    /// `plus_advertised`: whether this server advertised any `-PLUS`
    /// mechanism on this stream (used for the "y" downgrade check).
    pub fn new(mechanism: Mechanism, tls_exporter: Option<Vec<u8>>, plus_advertised: bool) -> Self {
        SaslServer {
            mechanism,
            tls_exporter,
            plus_advertised,
            default_iterations: DEFAULT_ITERATIONS,
            salt_secret: None,
            authzid: None,
            certificate: None,
            state: State::Start { challenged: false },
            nonce_override: None,
        }
    }

    /// For EXTERNAL: the identity of the client certificate the TLS layer
    /// verified on this connection, the stream's `domain`, and the
    /// `auth.sasl_external` checks. Without it, EXTERNAL fails with
    /// `not-authorized`.
    #[must_use]
    pub fn with_certificate(
        mut self,
        identity: external::CertIdentity,
        domain: &str,
        checks: Vec<external::ExternalCheck>,
    ) -> Self {
        self.certificate = Some(Box::new((identity, domain.to_owned(), checks)));
        self
    }

    /// Iteration count used when keys are derived here (plaintext-stored
    /// passwords) and for the fake salt of unknown users. Set it to what the
    /// store uses for real accounts so that unknown users look alike.
    #[must_use]
    pub fn with_default_iterations(mut self, iterations: u32) -> Self {
        self.default_iterations = iterations.max(1);
        self
    }

    /// The key fake salts are derived from; without it, one chosen per process
    /// (fake salts then change when the process restarts).
    #[must_use]
    pub fn with_salt_secret(mut self, secret: SaltSecret) -> Self {
        self.salt_secret = Some(secret);
        self
    }

    /// Fixes the server part of the SCRAM nonce. Only for test vectors: a
    /// predictable nonce defeats replay protection.
    #[cfg(test)]
    pub(crate) fn with_server_nonce(mut self, nonce: &str) -> Self {
        self.nonce_override = Some(nonce.to_owned());
        self
    }

    /// The mechanism of this exchange.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The authorization identity the client asked for, if any (PLAIN
    /// authzid or SCRAM `a=`). Its localpart was checked against the
    /// username; the driver must still check that it is a JID of this
    /// server's domain.
    pub fn authzid(&self) -> Option<&str> {
        self.authzid.as_deref()
    }

    /// Advances the exchange by one input.
    pub fn step(&mut self, input: SaslInput<'_>) -> SaslOutput {
        let state = std::mem::replace(&mut self.state, State::Done);
        let (next, output) = self.transition(state, input);
        self.state = match output {
            SaslOutput::Success { .. } | SaslOutput::Failure(_) => State::Done,
            _ => next,
        };
        output
    }

    fn transition(&mut self, state: State, input: SaslInput<'_>) -> (State, SaslOutput) {
        let fail = |f| (State::Done, SaslOutput::Failure(f));
        match (state, input) {
            // EXTERNAL's only message is the authzid, which may be empty.
            (State::Start { .. }, SaslInput::Response(msg)) if self.mechanism == Mechanism::External => {
                self.external_message(msg)
            }
            (State::ExternalAwaitAccount { username }, SaslInput::Credentials(creds)) => match creds {
                Some(_) => (State::Done, SaslOutput::Success { username, additional_data: None }),
                // The certificate is good but names no account here.
                None => fail(SaslFailure::NotAuthorized),
            },
            // RFC 6120 §6.4.2: with no initial response the server sends an
            // empty challenge. We cannot tell "=" from absent, and an empty
            // message is valid for neither PLAIN nor SCRAM, so do it once.
            (State::Start { challenged: false }, SaslInput::Response([])) => {
                (State::Start { challenged: true }, SaslOutput::Challenge(Vec::new()))
            }
            (State::Start { .. }, SaslInput::Response(msg)) => self.first_message(msg),
            (State::PlainAwaitCredentials(p), SaslInput::Credentials(creds)) => {
                match creds {
                    Some(c) if c.verify_password(&p.password) => {
                        (State::Done, SaslOutput::Success { username: p.username, additional_data: None })
                    }
                    // Same answer for "no such user" and "wrong password".
                    _ => fail(SaslFailure::NotAuthorized),
                }
            }
            (State::ScramAwaitCredentials(cf), SaslInput::Credentials(creds)) => {
                let Some(hash) = self.mechanism.hash() else {
                    return fail(SaslFailure::TemporaryAuthFailure);
                };
                let (await_final, server_first) = scram::server_first(
                    cf,
                    hash,
                    creds,
                    self.default_iterations,
                    self.salt_secret.as_ref().map(|s| &*s.0),
                    self.nonce_override.as_deref(),
                );
                (State::ScramAwaitFinal(await_final), SaslOutput::Challenge(server_first))
            }
            (State::ScramAwaitFinal(af), SaslInput::Response(msg)) => match scram::server_final(af, msg) {
                Ok((username, v)) => (State::Done, SaslOutput::Success { username, additional_data: Some(v) }),
                Err(f) => fail(f),
            },
            // Credentials nobody asked for: a driver bug, not the client's.
            (_, SaslInput::Credentials(_)) => fail(SaslFailure::TemporaryAuthFailure),
            // A response while we wait for the store, or after the end.
            (_, SaslInput::Response(_)) => fail(SaslFailure::MalformedRequest),
        }
    }

    /// EXTERNAL (XEP-0178 §3): `msg` is the authorization identity, empty
    /// when the client leaves the choice to the certificate.
    fn external_message(&mut self, msg: &[u8]) -> (State, SaslOutput) {
        let fail = |f| (State::Done, SaslOutput::Failure(f));
        let Some(cert) = self.certificate.as_deref() else {
            return fail(SaslFailure::NotAuthorized);
        };
        let Ok(authzid) = std::str::from_utf8(msg) else {
            return fail(SaslFailure::MalformedRequest);
        };
        let authzid = Some(authzid).filter(|a| !a.is_empty());
        let (identity, domain, checks) = cert;
        match external::external_username(identity, authzid, domain, checks) {
            Ok(username) => {
                self.authzid = authzid.map(str::to_owned);
                (State::ExternalAwaitAccount { username: username.clone() }, SaslOutput::LookupCredentials { username })
            }
            Err(f) => fail(f),
        }
    }

    fn first_message(&mut self, msg: &[u8]) -> (State, SaslOutput) {
        let fail = |f| (State::Done, SaslOutput::Failure(f));
        if self.mechanism == Mechanism::Plain {
            return match plain::parse(msg) {
                Ok(p) => {
                    self.authzid = p.authzid.clone();
                    let username = p.username.clone();
                    (State::PlainAwaitCredentials(p), SaslOutput::LookupCredentials { username })
                }
                Err(f) => fail(f),
            };
        }
        match scram::parse_client_first(msg, self.mechanism, self.tls_exporter.as_deref(), self.plus_advertised) {
            Ok(cf) => {
                self.authzid = cf.authzid.clone();
                let username = cf.username.clone();
                (State::ScramAwaitCredentials(cf), SaslOutput::LookupCredentials { username })
            }
            Err(f) => fail(f),
        }
    }
}

/// Checks a requested authorization identity against the authenticated
/// username: only "act as myself" is allowed, written either as the bare
/// username or as a JID whose localpart is the username (the driver checks
/// the domain). Anything else is `invalid-authzid` (RFC 6120 §6.5.6).
fn check_authzid(authzid: Option<&str>, username: &str) -> Result<(), SaslFailure> {
    let Some(a) = authzid else {
        return Ok(());
    };
    // In a JID the localpart ends at the first '@' before any '/'; an '@'
    // after a '/' belongs to the resource.
    let local = match a.find('@') {
        Some(i) if !a[..i].contains('/') => &a[..i],
        _ => a,
    };
    if local == username {
        Ok(())
    } else {
        Err(SaslFailure::InvalidAuthzid)
    }
}
