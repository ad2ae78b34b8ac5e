//! SCRAM (RFC 5802) with SHA-1, SHA-256 (RFC 7677) and SHA-512, with and
//! without the `tls-exporter` channel binding (RFC 9266).
//!
//! Message grammar (RFC 5802 §7), as far as we need it:
//! ```text
//! client-first  = gs2-header client-first-bare
//! gs2-header    = ("n" / "y" / "p=" cb-name) "," ["a=" saslname] ","
//! client-first-bare = ["m=" ext ","] "n=" saslname "," "r=" c-nonce ["," ext]
//! server-first  = ["m=" ext ","] "r=" nonce "," "s=" salt "," "i=" count ["," ext]
//! client-final  = "c=" base64(gs2-header cb-data) "," "r=" nonce ["," ext] "," "p=" proof
//! server-final  = ("e=" error / "v=" signature) ["," ext]
//! ```
//! Key derivation (RFC 5802 §3):
//! ```text
//! SaltedPassword  = Hi(SASLprep(password), salt, i)
//! ClientKey       = HMAC(SaltedPassword, "Client Key")
//! StoredKey       = H(ClientKey)
//! ServerKey       = HMAC(SaltedPassword, "Server Key")
//! AuthMessage     = client-first-bare "," server-first "," client-final-without-proof
//! ClientProof     = ClientKey XOR HMAC(StoredKey, AuthMessage)
//! ServerSignature = HMAC(ServerKey, AuthMessage)
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;

use super::crypto;
use super::{check_authzid, Credentials, HashAlg, Mechanism, SaslError, SaslFailure, SALT_LEN, TLS_EXPORTER_CB_NAME};

/// Random bytes in each side's nonce part (base64-encoded to 32 characters).
const NONCE_BYTES: usize = 24;

/// Salted SCRAM keys as stored for an account (never the password).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramCredentials {
    pub hash: HashAlg,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

/// `SaltedPassword` for a password, after SASLprep.
fn salted_password(hash: HashAlg, password: &str, salt: &[u8], iterations: u32) -> Result<Vec<u8>, SaslError> {
    if iterations == 0 {
        return Err(SaslError::InvalidIterations);
    }
    let password = stringprep::saslprep(password).map_err(|_| SaslError::Saslprep)?;
    Ok(crypto::hi(hash, password.as_bytes(), salt, iterations))
}

impl ScramCredentials {
    /// Derives the stored keys from a password (SASLprep'd first, as the
    /// client will do the same).
    pub fn derive(hash: HashAlg, password: &str, salt: &[u8], iterations: u32) -> Result<Self, SaslError> {
        let salted = salted_password(hash, password, salt, iterations)?;
        let client_key = crypto::hmac(hash, &salted, b"Client Key");
        Ok(ScramCredentials {
            hash,
            salt: salt.to_vec(),
            iterations,
            stored_key: crypto::hash(hash, &client_key),
            server_key: crypto::hmac(hash, &salted, b"Server Key"),
        })
    }

    /// Derives keys with a fresh random salt of [`SALT_LEN`] bytes.
    pub fn generate(hash: HashAlg, password: &str, iterations: u32) -> Result<Self, SaslError> {
        Self::derive(hash, password, &crypto::random_bytes(SALT_LEN), iterations)
    }

    /// `<hash>$<iterations>$<b64 salt>$<b64 StoredKey>$<b64 ServerKey>`,
    /// e.g. `sha256$4096$...`. Standard base64 never contains `$`.
    pub fn to_storage_string(&self) -> String {
        format!(
            "{}${}${}${}${}",
            self.hash.storage_name(),
            self.iterations,
            B64.encode(&self.salt),
            B64.encode(&self.stored_key),
            B64.encode(&self.server_key)
        )
    }

    /// Parses [`ScramCredentials::to_storage_string`] output, checking key
    /// lengths against the hash.
    pub fn from_storage_string(s: &str) -> Result<Self, SaslError> {
        let mut parts = s.split('$');
        let (Some(hash), Some(iterations), Some(salt), Some(stored), Some(server), None) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(SaslError::InvalidStorage("expected five '$'-separated fields"));
        };
        let hash = HashAlg::from_storage_name(hash).ok_or(SaslError::InvalidStorage("unknown hash"))?;
        let iterations: u32 = iterations.parse().map_err(|_| SaslError::InvalidStorage("bad iteration count"))?;
        if iterations == 0 {
            return Err(SaslError::InvalidIterations);
        }
        let decode = |f: &str| B64.decode(f).map_err(|_| SaslError::Base64);
        let creds = ScramCredentials {
            hash,
            iterations,
            salt: decode(salt)?,
            stored_key: decode(stored)?,
            server_key: decode(server)?,
        };
        if creds.salt.is_empty() {
            return Err(SaslError::InvalidStorage("empty salt"));
        }
        if creds.stored_key.len() != hash.output_len() || creds.server_key.len() != hash.output_len() {
            return Err(SaslError::InvalidStorage("key length does not match hash"));
        }
        Ok(creds)
    }
}

/// Decodes a `saslname`: `=2C` is ',' and `=3D` is '='; any other '=' (and
/// a raw ',') is invalid (RFC 5802 §5.1).
fn decode_saslname(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '=' => match (chars.next(), chars.next()) {
                (Some('2'), Some('C')) => out.push(','),
                (Some('3'), Some('D')) => out.push('='),
                _ => return None,
            },
            ',' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fn encode_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

/// `printable` of RFC 5802 §7: 0x21-0x7E except ','.
fn is_valid_nonce(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// An attribute is a single ASCII letter, '=', then the value.
fn attr(field: &str, name: u8) -> Option<&str> {
    let b = field.as_bytes();
    (b.len() >= 2 && b[0] == name && b[1] == b'=').then(|| &field[2..])
}

/// Whether a field is a well-formed extension attribute (RFC 5802 §7 `attr-val`).
fn is_attr(field: &str) -> bool {
    let b = field.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b'='
}

fn new_nonce() -> String {
    B64.encode(crypto::random_bytes(NONCE_BYTES))
}

// ---------------------------------------------------------------- server

/// A validated client-first message waiting for the account's credentials.
pub(super) struct ClientFirst {
    /// SASLprep'd username.
    pub(super) username: String,
    pub(super) authzid: Option<String>,
    client_first_bare: String,
    client_nonce: String,
    /// What `c=` of the client-final message must decode to:
    /// gs2-header followed by the channel-binding data if `p=` was used.
    expected_cbind: Vec<u8>,
}

pub(super) fn parse_client_first(
    msg: &[u8],
    mechanism: Mechanism,
    tls_exporter: Option<&[u8]>,
    plus_advertised: bool,
) -> Result<ClientFirst, SaslFailure> {
    use SaslFailure::{MalformedRequest, NotAuthorized};
    let text = std::str::from_utf8(msg).map_err(|_| MalformedRequest)?;
    let (flag, rest) = text.split_once(',').ok_or(MalformedRequest)?;
    let (authz, bare) = rest.split_once(',').ok_or(MalformedRequest)?;
    let gs2_header = &text[..flag.len() + authz.len() + 2];

    // Channel-binding negotiation (RFC 5802 §6 and §7 gs2-cbind-flag).
    let cb_data: &[u8] = match flag {
        // Client does not support channel binding. A -PLUS mechanism
        // requires it, so that combination is inconsistent.
        "n" if mechanism.is_plus() => return Err(NotAuthorized),
        "n" => &[],
        // Client supports channel binding but believes the server does not.
        // If we advertised -PLUS, someone stripped it: downgrade attack.
        "y" if mechanism.is_plus() || plus_advertised => return Err(NotAuthorized),
        "y" => &[],
        _ => {
            let name = flag.strip_prefix("p=").ok_or(MalformedRequest)?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-') {
                return Err(MalformedRequest);
            }
            // Channel binding with a non-PLUS mechanism, a binding type we do
            // not support (tls-unique is unsafe with TLS 1.3), or no TLS
            // exporter on this connection: the binding cannot be verified.
            if !mechanism.is_plus() || name != TLS_EXPORTER_CB_NAME {
                return Err(NotAuthorized);
            }
            tls_exporter.ok_or(NotAuthorized)?
        }
    };

    let authzid = if authz.is_empty() {
        None
    } else {
        let a = attr(authz, b'a').ok_or(MalformedRequest)?;
        let a = decode_saslname(a).ok_or(MalformedRequest)?;
        if a.is_empty() {
            return Err(MalformedRequest);
        }
        Some(a)
    };

    let mut fields = bare.split(',');
    let first = fields.next().ok_or(MalformedRequest)?;
    // "m=" announces a mandatory extension; we support none (RFC 5802 §5.1).
    let user = attr(first, b'n').ok_or(MalformedRequest)?;
    let nonce = fields.next().and_then(|f| attr(f, b'r')).ok_or(MalformedRequest)?;
    if !is_valid_nonce(nonce) || !fields.all(is_attr) {
        return Err(MalformedRequest);
    }
    let user = decode_saslname(user).ok_or(MalformedRequest)?;
    let username = stringprep::saslprep(&user).map_err(|_| MalformedRequest)?.into_owned();
    if username.is_empty() {
        return Err(MalformedRequest);
    }
    check_authzid(authzid.as_deref(), &username)?;

    let mut expected_cbind = gs2_header.as_bytes().to_vec();
    expected_cbind.extend_from_slice(cb_data);
    Ok(ClientFirst {
        username,
        authzid,
        client_first_bare: bare.to_owned(),
        client_nonce: nonce.to_owned(),
        expected_cbind,
    })
}

/// State between server-first and client-final.
pub(super) struct AwaitFinal {
    hash: HashAlg,
    username: String,
    nonce: String,
    expected_cbind: Vec<u8>,
    /// `client-first-bare "," server-first ","`: AuthMessage up to the
    /// client-final part.
    auth_prefix: String,
    stored_key: Vec<u8>,
    server_key: Vec<u8>,
    /// False when the keys are made up (unknown user, no entry for this
    /// hash): the proof then fails whatever the client sends.
    genuine: bool,
}

/// Builds server-first from the looked-up credentials.
///
/// Every path produces the same message shape, and a user without usable
/// keys gets a stable fake salt, so this message does not reveal whether
/// the account exists; the exchange fails only at the final step.
pub(super) fn server_first(
    cf: ClientFirst,
    hash: HashAlg,
    creds: Option<Credentials>,
    default_iterations: u32,
    salt_secret: Option<&[u8]>,
    nonce_override: Option<&str>,
) -> (AwaitFinal, Vec<u8>) {
    let found = match creds {
        Some(Credentials::Scram(list)) => list.into_iter().find(|c| c.hash == hash),
        // Plaintext store: derive on the fly, with the same stable salt an
        // unknown user would get so the two cannot be told apart.
        Some(Credentials::Plain(password)) => ScramCredentials::derive(
            hash,
            &password,
            &crypto::stable_salt(salt_secret, hash, &cf.username),
            default_iterations,
        )
        .ok(),
        None => None,
    };
    let (keys, genuine) = match found {
        Some(keys) => (keys, true),
        None => (
            ScramCredentials {
                hash,
                salt: crypto::stable_salt(salt_secret, hash, &cf.username),
                iterations: default_iterations,
                stored_key: crypto::random_bytes(hash.output_len()),
                server_key: crypto::random_bytes(hash.output_len()),
            },
            false,
        ),
    };
    let server_part = nonce_override.map_or_else(new_nonce, str::to_owned);
    let nonce = format!("{}{}", cf.client_nonce, server_part);
    let server_first = format!("r={},s={},i={}", nonce, B64.encode(&keys.salt), keys.iterations);
    let auth_prefix = format!("{},{},", cf.client_first_bare, server_first);
    (
        AwaitFinal {
            hash,
            username: cf.username,
            nonce,
            expected_cbind: cf.expected_cbind,
            auth_prefix,
            stored_key: keys.stored_key,
            server_key: keys.server_key,
            genuine,
        },
        server_first.into_bytes(),
    )
}

/// Checks client-final; on success returns the username and the
/// server-final message (`v=<ServerSignature>`).
pub(super) fn server_final(af: AwaitFinal, msg: &[u8]) -> Result<(String, Vec<u8>), SaslFailure> {
    use SaslFailure::{MalformedRequest, NotAuthorized};
    let text = std::str::from_utf8(msg).map_err(|_| MalformedRequest)?;
    // The proof is always the last attribute.
    let (without_proof, proof) = text.rsplit_once(',').ok_or(MalformedRequest)?;
    let proof = attr(proof, b'p').ok_or(MalformedRequest)?;
    let proof = B64.decode(proof).map_err(|_| MalformedRequest)?;
    let mut fields = without_proof.split(',');
    let cbind = fields.next().and_then(|f| attr(f, b'c')).ok_or(MalformedRequest)?;
    let cbind = B64.decode(cbind).map_err(|_| MalformedRequest)?;
    let nonce = fields.next().and_then(|f| attr(f, b'r')).ok_or(MalformedRequest)?;
    if !fields.all(is_attr) || proof.len() != af.hash.output_len() {
        return Err(MalformedRequest);
    }
    // The channel binding repeats the gs2 header (so it is integrity
    // protected by the proof) and, for -PLUS, carries the TLS exporter: a
    // mismatch means a different TLS connection, i.e. a MITM.
    if !crypto::ct_eq(&cbind, &af.expected_cbind) || nonce != af.nonce {
        return Err(NotAuthorized);
    }
    let auth_message = format!("{}{}", af.auth_prefix, without_proof);
    let client_signature = crypto::hmac(af.hash, &af.stored_key, auth_message.as_bytes());
    let client_key = crypto::xor(&proof, &client_signature);
    let proof_ok = crypto::ct_eq(&crypto::hash(af.hash, &client_key), &af.stored_key);
    if !(proof_ok && af.genuine) {
        return Err(NotAuthorized);
    }
    let server_signature = crypto::hmac(af.hash, &af.server_key, auth_message.as_bytes());
    let v = format!("v={}", B64.encode(server_signature));
    Ok((af.username, v.into_bytes()))
}

// ---------------------------------------------------------------- client

/// Channel-binding choice of a SCRAM client (the gs2 cbind flag).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientChannelBinding {
    /// gs2 "n": the client does not do channel binding.
    None,
    /// gs2 "y": the client could, but the server offered no -PLUS mechanism.
    ClientSupportsServerDoesNot,
    /// gs2 "p=tls-exporter" with this connection's exporter bytes
    /// (use with a -PLUS mechanism).
    TlsExporter(Vec<u8>),
}

/// Client side of a SCRAM exchange.
pub struct ScramClient {
    hash: HashAlg,
    /// SASLprep'd password, or `None` if SASLprep rejected it.
    password: Option<String>,
    cb: ClientChannelBinding,
    authzid: Option<String>,
    client_nonce: String,
    client_first_bare: String,
    /// Expected ServerSignature, once client-final has been built.
    server_signature: Option<Vec<u8>>,
    /// A SaltedPassword the caller computed earlier, with its salt and
    /// iteration count ([`ScramClient::use_salted_password`]).
    salted: Option<(Vec<u8>, u32, Vec<u8>)>,
}

impl std::fmt::Debug for ScramClient {
    // Hand-written to keep the password out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramClient")
            .field("hash", &self.hash)
            .field("cb", &self.cb)
            .field("client_first_bare", &self.client_first_bare)
            .finish_non_exhaustive()
    }
}

impl ScramClient {
    /// Starts an exchange with a random nonce.
    pub fn new(hash: HashAlg, username: &str, password: &str, cb: ClientChannelBinding) -> Self {
        Self::with_nonce(hash, username, password, cb, &new_nonce())
    }

    /// Starts an exchange with a given client nonce (for test vectors; a
    /// nonce must never repeat). It must be printable ASCII without ','.
    pub fn with_nonce(hash: HashAlg, username: &str, password: &str, cb: ClientChannelBinding, nonce: &str) -> Self {
        // RFC 5802 §5.1: the client SHOULD SASLprep the username; if that
        // fails, send it as is and let the server decide.
        let username = stringprep::saslprep(username).map_or_else(|_| username.to_owned(), |u| u.into_owned());
        let password = stringprep::saslprep(password).ok().map(|p| p.into_owned());
        ScramClient {
            hash,
            password,
            cb,
            authzid: None,
            client_nonce: nonce.to_owned(),
            client_first_bare: format!("n={},r={}", encode_saslname(&username), nonce),
            server_signature: None,
            salted: None,
        }
    }

    /// The salt and iteration count a server-first message names, so that a
    /// client can look up a SaltedPassword it keeps (RFC 5802 §5.1: clients
    /// may cache it per salt and iteration count).
    pub fn server_first_params(server_first: &[u8]) -> Result<(Vec<u8>, u32), SaslError> {
        let text = std::str::from_utf8(server_first).map_err(|_| SaslError::InvalidUtf8)?;
        let mut fields = text.split(',').skip(1);
        let salt = fields.next().and_then(|f| attr(f, b's')).ok_or(SaslError::Malformed("expected s="))?;
        let iterations = fields.next().and_then(|f| attr(f, b'i')).ok_or(SaslError::Malformed("expected i="))?;
        let salt = B64.decode(salt).map_err(|_| SaslError::Base64)?;
        let iterations = iterations.parse().map_err(|_| SaslError::Malformed("bad iteration count"))?;
        Ok((salt, iterations))
    }

    /// `SaltedPassword = Hi(password, salt, iterations)`, the costly step.
    pub fn salted_password(&self, salt: &[u8], iterations: u32) -> Result<Vec<u8>, SaslError> {
        let password = self.password.as_deref().ok_or(SaslError::Saslprep)?;
        Ok(crypto::hi(self.hash, password.as_bytes(), salt, iterations.max(1)))
    }

    /// Uses `salted` instead of deriving it when the server names this salt
    /// and iteration count.
    pub fn use_salted_password(&mut self, salt: Vec<u8>, iterations: u32, salted: Vec<u8>) {
        self.salted = Some((salt, iterations, salted));
    }

    /// Requests an authorization identity (`a=` in the gs2 header).
    #[must_use]
    pub fn with_authzid(mut self, authzid: &str) -> Self {
        self.authzid = Some(authzid.to_owned());
        self
    }

    fn gs2_header(&self) -> String {
        let flag = match &self.cb {
            ClientChannelBinding::None => "n".to_owned(),
            ClientChannelBinding::ClientSupportsServerDoesNot => "y".to_owned(),
            ClientChannelBinding::TlsExporter(_) => format!("p={TLS_EXPORTER_CB_NAME}"),
        };
        match &self.authzid {
            Some(a) => format!("{flag},a={},", encode_saslname(a)),
            None => format!("{flag},,"),
        }
    }

    /// The client-first message (the SASL initial response).
    pub fn client_first(&mut self) -> Vec<u8> {
        format!("{}{}", self.gs2_header(), self.client_first_bare).into_bytes()
    }

    /// Processes server-first and returns client-final.
    pub fn handle_server_first(&mut self, server_first: &[u8]) -> Result<Vec<u8>, SaslError> {
        let text = std::str::from_utf8(server_first).map_err(|_| SaslError::InvalidUtf8)?;
        let mut fields = text.split(',');
        let first = fields.next().unwrap_or("");
        if attr(first, b'm').is_some() {
            return Err(SaslError::UnsupportedExtension);
        }
        let nonce = attr(first, b'r').ok_or(SaslError::Malformed("expected r="))?;
        let salt = fields.next().and_then(|f| attr(f, b's')).ok_or(SaslError::Malformed("expected s="))?;
        let iterations = fields.next().and_then(|f| attr(f, b'i')).ok_or(SaslError::Malformed("expected i="))?;
        if !fields.all(is_attr) {
            return Err(SaslError::Malformed("bad extension"));
        }
        // The server must extend our nonce with its own part.
        if !is_valid_nonce(nonce) || nonce.len() <= self.client_nonce.len() || !nonce.starts_with(&self.client_nonce) {
            return Err(SaslError::NonceMismatch);
        }
        let salt = B64.decode(salt).map_err(|_| SaslError::Base64)?;
        let iterations: u32 = iterations.parse().map_err(|_| SaslError::Malformed("bad iteration count"))?;
        if iterations == 0 {
            return Err(SaslError::InvalidIterations);
        }
        let password = self.password.as_deref().ok_or(SaslError::Saslprep)?;

        let salted = match &self.salted {
            Some((s, i, v)) if *s == salt && *i == iterations => v.clone(),
            _ => crypto::hi(self.hash, password.as_bytes(), &salt, iterations),
        };
        let client_key = crypto::hmac(self.hash, &salted, b"Client Key");
        let stored_key = crypto::hash(self.hash, &client_key);
        let server_key = crypto::hmac(self.hash, &salted, b"Server Key");

        let mut cbind = self.gs2_header().into_bytes();
        if let ClientChannelBinding::TlsExporter(data) = &self.cb {
            cbind.extend_from_slice(data);
        }
        let without_proof = format!("c={},r={}", B64.encode(cbind), nonce);
        let auth_message = format!("{},{},{}", self.client_first_bare, text, without_proof);
        let client_signature = crypto::hmac(self.hash, &stored_key, auth_message.as_bytes());
        let proof = crypto::xor(&client_key, &client_signature);
        self.server_signature = Some(crypto::hmac(self.hash, &server_key, auth_message.as_bytes()));
        Ok(format!("{},p={}", without_proof, B64.encode(proof)).into_bytes())
    }

    /// Checks server-final (the `<success/>` additional data). Succeeding
    /// here is what authenticates the server to the client.
    pub fn verify_server_final(&self, server_final: &[u8]) -> Result<(), SaslError> {
        let expected = self.server_signature.as_ref().ok_or(SaslError::OutOfOrder)?;
        let text = std::str::from_utf8(server_final).map_err(|_| SaslError::InvalidUtf8)?;
        let first = text.split(',').next().unwrap_or("");
        if let Some(e) = attr(first, b'e') {
            return Err(SaslError::ServerError(e.to_owned()));
        }
        let v = attr(first, b'v').ok_or(SaslError::Malformed("expected v="))?;
        let v = B64.decode(v).map_err(|_| SaslError::Base64)?;
        if crypto::ct_eq(&v, expected) {
            Ok(())
        } else {
            Err(SaslError::ServerSignatureMismatch)
        }
    }
}
