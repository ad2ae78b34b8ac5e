//! Accounts and credentials.
//!
//! Passwords are stored as salted SCRAM keys (SHA-1, SHA-256 and SHA-512) by
//! default; `[auth] password.format = "plain"` stores them as given, as
//! MongooseIM allows. Either form serves every mechanism: PLAIN checks against
//! the keys, and SCRAM derives keys from a plain password at login.

use std::sync::Arc;

use meerkat_storage::{AccountRepo, Storage, StorageError, StoredPassword};
use meerkat_xmpp::sasl::{Credentials, HashAlg, ScramCredentials};

/// How passwords are kept (`[auth] password.format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PasswordFormat {
    #[default]
    Scram,
    Plain,
}

/// Why an account operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("the account already exists")]
    Exists,
    #[error("no such account")]
    NotFound,
    #[error("invalid username: {0}")]
    InvalidUsername(String),
    #[error("the password must not be empty")]
    EmptyPassword,
    #[error("{0} is not served by this node")]
    UnknownHost(String),
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("password hashing failed: {0}")]
    Hashing(String),
}

/// Account management over the account repository.
#[derive(Clone)]
pub struct Accounts {
    storage: Arc<Storage>,
    hosts: Arc<Vec<String>>,
    format: PasswordFormat,
    iterations: u32,
}

impl Accounts {
    pub fn new(storage: Arc<Storage>, hosts: Vec<String>, format: PasswordFormat, iterations: u32) -> Self {
        Accounts { storage, hosts: Arc::new(hosts), format, iterations }
    }

    /// The canonical localpart (RFC 7622 nodeprep), or why it is not valid.
    pub fn normalize_username(user: &str) -> Result<String, AccountError> {
        let jid = meerkat_xmpp::jid::parse_bare(&format!("{user}@localhost"))
            .map_err(|e| AccountError::InvalidUsername(e.to_string()))?;
        match jid.node() {
            Some(n) if !user.contains('@') && !user.contains('/') => Ok(n.as_str().to_owned()),
            _ => Err(AccountError::InvalidUsername(user.to_owned())),
        }
    }

    fn check_host(&self, host: &str) -> Result<(), AccountError> {
        if self.hosts.iter().any(|h| h == host) {
            Ok(())
        } else {
            Err(AccountError::UnknownHost(host.to_owned()))
        }
    }

    async fn stored(&self, password: &str) -> Result<StoredPassword, AccountError> {
        if password.is_empty() {
            return Err(AccountError::EmptyPassword);
        }
        match self.format {
            PasswordFormat::Plain => Ok(StoredPassword::Plain(password.to_owned())),
            PasswordFormat::Scram => {
                let password = password.to_owned();
                let iterations = self.iterations;
                // Key derivation costs milliseconds of CPU: keep it off the reactor threads.
                let joined = tokio::task::spawn_blocking(move || -> Result<String, String> {
                    let mut parts = Vec::new();
                    for h in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
                        let c = ScramCredentials::generate(h, &password, iterations).map_err(|e| e.to_string())?;
                        parts.push(c.to_storage_string());
                    }
                    Ok(parts.join(" "))
                })
                .await
                .map_err(|e| AccountError::Hashing(e.to_string()))?
                .map_err(AccountError::Hashing)?;
                Ok(StoredPassword::Scram(joined))
            }
        }
    }

    pub async fn register(&self, host: &str, user: &str, password: &str) -> Result<(), AccountError> {
        self.check_host(host)?;
        let user = Self::normalize_username(user)?;
        // A taken name costs no key derivation (the insert below still
        // decides when two registrations race for one name).
        if self.storage.get_password(host, &user).await?.is_some() {
            return Err(AccountError::Exists);
        }
        let stored = self.stored(password).await?;
        match self.storage.create_account(host, &user, &stored).await {
            Ok(()) => Ok(()),
            Err(StorageError::Conflict(_)) => Err(AccountError::Exists),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn set_password(&self, host: &str, user: &str, password: &str) -> Result<(), AccountError> {
        self.check_host(host)?;
        let user = Self::normalize_username(user)?;
        let stored = self.stored(password).await?;
        if self.storage.set_password(host, &user, &stored).await? {
            Ok(())
        } else {
            Err(AccountError::NotFound)
        }
    }

    pub async fn remove(&self, host: &str, user: &str) -> Result<(), AccountError> {
        self.check_host(host)?;
        let user = Self::normalize_username(user)?;
        if self.storage.remove_account(host, &user).await? {
            Ok(())
        } else {
            Err(AccountError::NotFound)
        }
    }

    pub async fn list(&self, host: &str) -> Result<Vec<String>, AccountError> {
        self.check_host(host)?;
        Ok(self.storage.list_accounts(host).await?)
    }

    pub async fn exists(&self, host: &str, user: &str) -> Result<bool, AccountError> {
        Ok(self.storage.get_password(host, user).await?.is_some())
    }

    /// What SASL needs for `user`, or `None` if there is no such account.
    pub async fn credentials(&self, host: &str, user: &str) -> Result<Option<Credentials>, AccountError> {
        let Ok(user) = Self::normalize_username(user) else {
            return Ok(None);
        };
        Ok(match self.storage.get_password(host, &user).await? {
            None => None,
            Some(StoredPassword::Plain(p)) => Some(Credentials::Plain(p)),
            Some(StoredPassword::Scram(s)) => {
                let creds: Result<Vec<_>, _> =
                    s.split_whitespace().map(ScramCredentials::from_storage_string).collect();
                match creds {
                    Ok(c) => Some(Credentials::Scram(c)),
                    Err(e) => {
                        tracing::error!(%user, %host, error = %e, "stored SCRAM credentials do not decode");
                        None
                    }
                }
            }
        })
    }
}
