//! [`OfflineRepo`] for [`Storage`].

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Dialect, Sql};
use crate::{count_to_u64, OfflineMessage, OfflineRepo, Storage, StorageError};

const COUNT: Sql = sql!("SELECT COUNT(*) AS n FROM offline_messages WHERE domain = ? AND username = ?");
const INSERT: Sql = sql!(
    "INSERT INTO offline_messages (domain, username, sender, stanza, stamp_micros) \
     VALUES (?, ?, ?, ?, ?)"
);
/// SQLite and PostgreSQL: one atomic statement. Rows inserted by transactions that
/// commit after it started are not touched, so nothing is deleted unseen.
const DELETE_RETURNING: Sql = sql!(
    "DELETE FROM offline_messages WHERE domain = ? AND username = ? \
     RETURNING id, sender, stanza, stamp_micros"
);
/// MySQL has no `DELETE … RETURNING` (MariaDB does): lock the user's rows — InnoDB's
/// next-key locks also keep new ones out of the range — then delete what was read.
const SELECT_FOR_UPDATE: Sql = sql!(
    "SELECT id, sender, stanza, stamp_micros FROM offline_messages \
     WHERE domain = ? AND username = ? ORDER BY id FOR UPDATE"
);
const DELETE_UP_TO: Sql = sql!("DELETE FROM offline_messages WHERE domain = ? AND username = ? AND id <= ?");

macro_rules! offline_message {
    ($row:expr) => {{
        let r = $row;
        OfflineMessage {
            id: r.try_get("id")?,
            from: r.try_get("sender")?,
            stanza: r.try_get("stanza")?,
            stamp_micros: r.try_get("stamp_micros")?,
        }
    }};
}

#[async_trait]
impl OfflineRepo for Storage {
    async fn store_offline(
        &self,
        domain: &str,
        user: &str,
        from: &str,
        stanza: &str,
        stamp_micros: i64,
        max_per_user: u64,
    ) -> Result<bool, StorageError> {
        on_backend!(self, |pool, d| {
            // On SQLite the write transaction makes count-then-insert exact.
            let mut tx = pool.begin_with(d.begin_write()).await?;
            let n: i64 = sqlx::query(COUNT.get(d)).bind(domain).bind(user).fetch_one(&mut *tx).await?.try_get("n")?;
            if count_to_u64(n)? >= max_per_user {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query(INSERT.get(d))
                .bind(domain)
                .bind(user)
                .bind(from)
                .bind(stanza)
                .bind(stamp_micros)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(true)
    }

    async fn take_offline(&self, domain: &str, user: &str) -> Result<Vec<OfflineMessage>, StorageError> {
        let mut out: Vec<OfflineMessage> = on_backend!(self, |pool, d| {
            let mut out = Vec::new();
            if d == Dialect::MySql {
                let mut tx = pool.begin_with(d.begin_write()).await?;
                let rows = sqlx::query(SELECT_FOR_UPDATE.get(d)).bind(domain).bind(user).fetch_all(&mut *tx).await?;
                for r in &rows {
                    out.push(offline_message!(r));
                }
                if let Some(last) = out.last() {
                    sqlx::query(DELETE_UP_TO.get(d)).bind(domain).bind(user).bind(last.id).execute(&mut *tx).await?;
                }
                tx.commit().await?;
            } else {
                let rows = sqlx::query(DELETE_RETURNING.get(d)).bind(domain).bind(user).fetch_all(pool).await?;
                for r in &rows {
                    out.push(offline_message!(r));
                }
            }
            out
        });
        // RETURNING order is unspecified.
        out.sort_by_key(|m| m.id);
        Ok(out)
    }

    async fn count_offline(&self, domain: &str, user: &str) -> Result<u64, StorageError> {
        let n: i64 = on_backend!(self, |pool, d| {
            sqlx::query(COUNT.get(d)).bind(domain).bind(user).fetch_one(pool).await?.try_get("n")?
        });
        count_to_u64(n)
    }
}
