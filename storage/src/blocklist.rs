//! [`BlocklistRepo`] for [`Storage`].

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{BlocklistRepo, Storage, StorageError};

const GET: Sql = sql!("SELECT jid FROM blocklist_items WHERE domain = ? AND username = ? ORDER BY jid");
const INSERT: Sql = sql!(
    "INSERT INTO blocklist_items (domain, username, jid) VALUES (?, ?, ?)",
    on_conflict: "ON CONFLICT (domain, username, jid) DO NOTHING",
    // Not `INSERT IGNORE`: that would also turn a too-long JID into a truncated one.
    on_duplicate: "ON DUPLICATE KEY UPDATE jid = jid",
);
const DELETE_ONE: Sql = sql!("DELETE FROM blocklist_items WHERE domain = ? AND username = ? AND jid = ?");
const DELETE_ALL: Sql = sql!("DELETE FROM blocklist_items WHERE domain = ? AND username = ?");

#[async_trait]
impl BlocklistRepo for Storage {
    async fn get_blocklist(&self, domain: &str, user: &str) -> Result<Vec<String>, StorageError> {
        let _timed = crate::Timed::start("BlocklistRepo", "get_blocklist");
        on_backend!(self, |pool, d| {
            let rows = sqlx::query(GET.get(d)).bind(domain).bind(user).fetch_all(pool).await?;
            rows.iter().map(|r| r.try_get::<String, _>("jid").map_err(StorageError::from)).collect()
        })
    }

    async fn block(&self, domain: &str, user: &str, jids: &[String]) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("BlocklistRepo", "block");
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            for jid in jids {
                sqlx::query(INSERT.get(d)).bind(domain).bind(user).bind(jid).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn unblock(&self, domain: &str, user: &str, jids: &[String]) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("BlocklistRepo", "unblock");
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            for jid in jids {
                sqlx::query(DELETE_ONE.get(d)).bind(domain).bind(user).bind(jid).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn unblock_all(&self, domain: &str, user: &str) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("BlocklistRepo", "unblock_all");
        on_backend!(self, |pool, d| {
            sqlx::query(DELETE_ALL.get(d)).bind(domain).bind(user).execute(pool).await?;
        });
        Ok(())
    }
}
