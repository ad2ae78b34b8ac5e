//! [`AccountRepo`] for [`Storage`].

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{count_to_u64, now_micros, AccountRepo, Storage, StorageError, StoredPassword};

const KIND_PLAIN: &str = "plain";
const KIND_SCRAM: &str = "scram";

fn split_password(p: &StoredPassword) -> (&'static str, &str) {
    match p {
        StoredPassword::Plain(s) => (KIND_PLAIN, s),
        StoredPassword::Scram(s) => (KIND_SCRAM, s),
    }
}

fn join_password(kind: &str, value: String) -> Result<StoredPassword, StorageError> {
    match kind {
        KIND_PLAIN => Ok(StoredPassword::Plain(value)),
        KIND_SCRAM => Ok(StoredPassword::Scram(value)),
        other => Err(StorageError::Corrupt(format!("unknown password kind {other:?}"))),
    }
}

const INSERT: Sql = sql!(
    "INSERT INTO accounts (domain, username, password_kind, password, created_micros) \
     VALUES (?, ?, ?, ?, ?)"
);
const GET_PASSWORD: Sql = sql!("SELECT password_kind, password FROM accounts WHERE domain = ? AND username = ?");
const SET_PASSWORD: Sql = sql!("UPDATE accounts SET password_kind = ?, password = ? WHERE domain = ? AND username = ?");
const LIST: Sql = sql!("SELECT username FROM accounts WHERE domain = ? ORDER BY username");
const COUNT: Sql = sql!("SELECT COUNT(*) AS n FROM accounts WHERE domain = ?");

/// Everything owned by an account, children first; the account row goes last so that
/// its `rows_affected` tells whether it existed.
const REMOVE: [Sql; 11] = [
    sql!("DELETE FROM roster_groups WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM archive_messages WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM roster_items WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM offline_messages WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM vcards WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM private_storage WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM blocklist_items WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM fast_tokens WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM inbox_entries WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM push_subscriptions WHERE domain = ? AND username = ?"),
    sql!("DELETE FROM accounts WHERE domain = ? AND username = ?"),
];

#[async_trait]
impl AccountRepo for Storage {
    async fn create_account(&self, domain: &str, user: &str, password: &StoredPassword) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("AccountRepo", "create_account");
        let (kind, value) = split_password(password);
        on_backend!(self, |pool, d| {
            sqlx::query(INSERT.get(d))
                .bind(domain)
                .bind(user)
                .bind(kind)
                .bind(value)
                .bind(now_micros())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn get_password(&self, domain: &str, user: &str) -> Result<Option<StoredPassword>, StorageError> {
        let _timed = crate::Timed::start("AccountRepo", "get_password");
        let row: Option<(String, String)> = on_backend!(self, |pool, d| {
            match sqlx::query(GET_PASSWORD.get(d)).bind(domain).bind(user).fetch_optional(pool).await? {
                Some(row) => Some((row.try_get("password_kind")?, row.try_get("password")?)),
                None => None,
            }
        });
        row.map(|(kind, value)| join_password(&kind, value)).transpose()
    }

    async fn set_password(&self, domain: &str, user: &str, password: &StoredPassword) -> Result<bool, StorageError> {
        let _timed = crate::Timed::start("AccountRepo", "set_password");
        let (kind, value) = split_password(password);
        // MySQL reports matched (not changed) rows: sqlx sets CLIENT_FOUND_ROWS.
        let n = on_backend!(self, |pool, d| {
            sqlx::query(SET_PASSWORD.get(d))
                .bind(kind)
                .bind(value)
                .bind(domain)
                .bind(user)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    async fn remove_account(&self, domain: &str, user: &str) -> Result<bool, StorageError> {
        let _timed = crate::Timed::start("AccountRepo", "remove_account");
        let removed = on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            // The account's PEP nodes (XEP-0163) go with it.
            let pep = crate::pubsub::pep_service_key(domain, user);
            for q in crate::pubsub::REMOVE_SERVICE {
                sqlx::query(q.get(d)).bind(&pep).execute(&mut *tx).await?;
            }
            let mut last = 0;
            for q in REMOVE {
                last = sqlx::query(q.get(d)).bind(domain).bind(user).execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            last
        });
        Ok(removed > 0)
    }

    async fn list_accounts(&self, domain: &str) -> Result<Vec<String>, StorageError> {
        let _timed = crate::Timed::start("AccountRepo", "list_accounts");
        on_backend!(self, |pool, d| {
            let rows = sqlx::query(LIST.get(d)).bind(domain).fetch_all(pool).await?;
            rows.iter().map(|r| r.try_get::<String, _>("username").map_err(StorageError::from)).collect()
        })
    }

    async fn count_accounts(&self, domain: &str) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("AccountRepo", "count_accounts");
        let n: i64 = on_backend!(self, |pool, d| {
            sqlx::query(COUNT.get(d)).bind(domain).fetch_one(pool).await?.try_get("n")?
        });
        count_to_u64(n)
    }
}
