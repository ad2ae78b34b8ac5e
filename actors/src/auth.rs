//! Accounts and credentials.
//!
//! Passwords are stored as salted SCRAM keys (SHA-1, SHA-256 and SHA-512) by
//! default; `[auth] password.format = "plain"` stores them as given, as
//! MongooseIM allows. Either form serves every mechanism: PLAIN checks against
//! the keys, and SCRAM derives keys from a plain password at login.
//!
//! Key derivation (PBKDF2, milliseconds of CPU each) never runs on a reactor
//! thread: registration, password changes and logins that derive keys (PLAIN
//! against stored SCRAM keys, SCRAM against a stored plain password) run it on
//! the [`HashingPool`], a few blocking threads shared by the whole node.

use std::sync::Arc;

use meerkat_storage::{AccountRepo, Storage, StorageError, StoredPassword};
use meerkat_xmpp::sasl::{Credentials, HashAlg, ScramCredentials};
use tokio::sync::Semaphore;

/// The node's bounded pool for expensive credential computations: at most
/// `threads` run at once, on tokio's blocking threads; callers beyond that
/// wait their turn (each waiting connection holds its own place in the
/// semaphore's queue, so the queue is bounded by the connections), and
/// none fails for want of a thread.
#[derive(Clone, Debug)]
pub struct HashingPool {
    permits: Arc<Semaphore>,
    threads: usize,
}

impl HashingPool {
    pub fn new(threads: usize) -> HashingPool {
        let threads = threads.max(1);
        HashingPool { permits: Arc::new(Semaphore::new(threads)), threads }
    }

    /// Half the machine's cores, at least one: the reactors keep the rest.
    pub fn default_threads() -> usize {
        std::thread::available_parallelism().map(|n| n.get() / 2).unwrap_or(1).max(1)
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a blocking thread once the pool has room, waiting until it does.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, AccountError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AccountError::Hashing("the pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            // Held until `f` is done, even if the caller stopped waiting.
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| AccountError::Hashing(e.to_string()))
    }
}

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
    #[error("the password cannot be used: SASLprep (RFC 4013) refuses it")]
    InvalidPassword,
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
    hashing: HashingPool,
}

impl Accounts {
    pub fn new(
        storage: Arc<Storage>,
        hosts: Vec<String>,
        format: PasswordFormat,
        iterations: u32,
        hashing: HashingPool,
    ) -> Self {
        Accounts { storage, hosts: Arc::new(hosts), format, iterations, hashing }
    }

    /// Where key derivation runs.
    pub fn hashing(&self) -> &HashingPool {
        &self.hashing
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
        if !meerkat_xmpp::sasl::password_is_acceptable(password) {
            return Err(AccountError::InvalidPassword);
        }
        match self.format {
            PasswordFormat::Plain => Ok(StoredPassword::Plain(password.to_owned())),
            PasswordFormat::Scram => {
                let password = password.to_owned();
                let iterations = self.iterations;
                // Key derivation costs milliseconds of CPU: keep it off the reactor threads.
                let joined = self
                    .hashing
                    .run(move || -> Result<String, String> {
                        let mut parts = Vec::new();
                        for h in [HashAlg::Sha1, HashAlg::Sha256, HashAlg::Sha512] {
                            let c = ScramCredentials::generate(h, &password, iterations).map_err(|e| e.to_string())?;
                            parts.push(c.to_storage_string());
                        }
                        Ok(parts.join(" "))
                    })
                    .await?
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Condvar, Mutex};

    /// At most `threads` computations run at once; the others wait for room
    /// and then all complete (none is refused).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hashing_pool_runs_at_most_its_threads_and_makes_the_rest_wait() {
        let pool = HashingPool::new(2);
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        // Jobs block until the test hands out a token each.
        let gate = Arc::new((Mutex::new(0usize), Condvar::new()));
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let (pool, running, most, gate) = (pool.clone(), running.clone(), most.clone(), gate.clone());
                tokio::spawn(async move {
                    pool.run(move || {
                        let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                        most.fetch_max(now, Ordering::SeqCst);
                        let (tokens, cv) = &*gate;
                        let mut t = cv.wait_while(tokens.lock().unwrap(), |t| *t == 0).unwrap();
                        *t -= 1;
                        running.fetch_sub(1, Ordering::SeqCst);
                        i
                    })
                    .await
                })
            })
            .collect();
        // Two jobs start; the other four wait on the pool, not on a thread of their own.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while running.load(Ordering::SeqCst) < 2 {
            assert!(std::time::Instant::now() < deadline, "the pool did not start two jobs");
            tokio::task::yield_now().await;
        }
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(running.load(Ordering::SeqCst), 2);
        {
            let (tokens, cv) = &*gate;
            *tokens.lock().unwrap() = 6;
            cv.notify_all();
        }
        let mut done = Vec::new();
        for j in jobs {
            done.push(j.await.unwrap().unwrap());
        }
        assert_eq!(done, (0..6).collect::<Vec<_>>());
        assert_eq!(most.load(Ordering::SeqCst), 2, "more computations ran at once than the pool has threads");
    }
}
