//! [`OfflineRepo`] for [`Storage`].

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{count_to_u64, OfflineMessage, OfflineRepo, Storage, StorageError};

const COUNT: Sql = sql!("SELECT COUNT(*) AS n FROM offline_messages WHERE domain = ? AND username = ?");
const INSERT: Sql = sql!(
    "INSERT INTO offline_messages (domain, username, sender, stanza, stamp_micros) \
     VALUES (?, ?, ?, ?, ?)"
);
/// The oldest messages no live claim holds, up to a limit: the last one bounds the claim.
const CLAIMABLE: Sql = sql!(
    "SELECT id FROM offline_messages WHERE domain = ? AND username = ? \
     AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT ?"
);
/// PostgreSQL and MySQL re-check the condition on rows a concurrent claim
/// changed meanwhile (PostgreSQL after waiting for its row locks, InnoDB with
/// a locking read), so two claims never share a row; SQLite's write
/// transaction runs them one after the other.
const CLAIM: Sql = sql!(
    "UPDATE offline_messages SET claimed_by = ?, claimed_until = ? \
     WHERE domain = ? AND username = ? AND id <= ? AND (claimed_until IS NULL OR claimed_until < ?)"
);
const CLAIMED: Sql = sql!(
    "SELECT id, sender, stanza, stamp_micros FROM offline_messages \
     WHERE domain = ? AND username = ? AND claimed_by = ? ORDER BY id"
);
const DELETE_CLAIMED: Sql =
    sql!("DELETE FROM offline_messages WHERE domain = ? AND username = ? AND claimed_by = ? AND id >= ? AND id <= ?");
const RELEASE: Sql = sql!(
    "UPDATE offline_messages SET claimed_by = NULL, claimed_until = NULL \
     WHERE domain = ? AND username = ? AND claimed_by = ?"
);
const RELEASE_PREFIX: Sql =
    sql!("UPDATE offline_messages SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by LIKE ?");

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
        let _timed = crate::Timed::start("OfflineRepo", "store_offline");
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

    async fn claim_offline(
        &self,
        domain: &str,
        user: &str,
        claim: &str,
        now_micros: i64,
        until_micros: i64,
        limit: u64,
    ) -> Result<Vec<OfflineMessage>, StorageError> {
        let _timed = crate::Timed::start("OfflineRepo", "claim_offline");
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let out: Vec<OfflineMessage> = on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            let ids = sqlx::query(CLAIMABLE.get(d))
                .bind(domain)
                .bind(user)
                .bind(now_micros)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            let Some(last) = ids.last() else {
                tx.rollback().await?;
                return Ok(Vec::new());
            };
            let last: i64 = last.try_get("id")?;
            sqlx::query(CLAIM.get(d))
                .bind(claim)
                .bind(until_micros)
                .bind(domain)
                .bind(user)
                .bind(last)
                .bind(now_micros)
                .execute(&mut *tx)
                .await?;
            let rows = sqlx::query(CLAIMED.get(d)).bind(domain).bind(user).bind(claim).fetch_all(&mut *tx).await?;
            tx.commit().await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(offline_message!(r));
            }
            out
        });
        Ok(out)
    }

    async fn delete_offline(
        &self,
        domain: &str,
        user: &str,
        claim: &str,
        first_id: i64,
        last_id: i64,
    ) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("OfflineRepo", "delete_offline");
        Ok(on_backend!(self, |pool, d| {
            sqlx::query(DELETE_CLAIMED.get(d))
                .bind(domain)
                .bind(user)
                .bind(claim)
                .bind(first_id)
                .bind(last_id)
                .execute(pool)
                .await?
                .rows_affected()
        }))
    }

    async fn release_offline(&self, domain: &str, user: &str, claim: &str) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("OfflineRepo", "release_offline");
        Ok(on_backend!(self, |pool, d| {
            sqlx::query(RELEASE.get(d)).bind(domain).bind(user).bind(claim).execute(pool).await?.rows_affected()
        }))
    }

    async fn release_offline_claims(&self, claim_prefix: &str) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("OfflineRepo", "release_offline_claims");
        if claim_prefix.contains(['%', '_', '\\']) {
            return Err(StorageError::Config(format!("claim prefix {claim_prefix:?} holds a LIKE pattern character")));
        }
        let pattern = format!("{claim_prefix}%");
        Ok(on_backend!(self, |pool, d| {
            sqlx::query(RELEASE_PREFIX.get(d)).bind(&pattern).execute(pool).await?.rows_affected()
        }))
    }

    async fn count_offline(&self, domain: &str, user: &str) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("OfflineRepo", "count_offline");
        let n: i64 = on_backend!(self, |pool, d| {
            sqlx::query(COUNT.get(d)).bind(domain).bind(user).fetch_one(pool).await?.try_get("n")?
        });
        count_to_u64(n)
    }
}
