//! [`SecretRepo`] for [`Storage`].

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{SecretRepo, Storage, StorageError};

/// Inserts unless the name exists: the first writer wins, on every backend.
const INSERT_IF_ABSENT: Sql = sql!(
    "INSERT INTO server_secrets (name, value) VALUES (?, ?)",
    on_conflict: "ON CONFLICT (name) DO NOTHING",
    on_duplicate: "ON DUPLICATE KEY UPDATE name = name",
);
const GET: Sql = sql!("SELECT value FROM server_secrets WHERE name = ?");

/// Longest secret kept (the MySQL column's size).
const MAX_SECRET: usize = 1024;

#[async_trait]
impl SecretRepo for Storage {
    async fn shared_secret(&self, name: &str, candidate: &[u8]) -> Result<Vec<u8>, StorageError> {
        let _timed = crate::Timed::start("SecretRepo", "shared_secret");
        if candidate.is_empty() || candidate.len() > MAX_SECRET {
            return Err(StorageError::Config(format!("a secret must have 1 to {MAX_SECRET} bytes")));
        }
        let value: Vec<u8> = on_backend!(self, |pool, d| {
            sqlx::query(INSERT_IF_ABSENT.get(d)).bind(name).bind(candidate).execute(pool).await?;
            sqlx::query(GET.get(d)).bind(name).fetch_one(pool).await?.try_get("value")?
        });
        if value.is_empty() {
            return Err(StorageError::Corrupt(format!("the secret {name:?} is empty")));
        }
        Ok(value)
    }
}
