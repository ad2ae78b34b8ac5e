//! [`FastTokenRepo`] for [`Storage`].

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{FastSlot, FastToken, FastTokenRepo, FastTokens, Storage, StorageError};

const GET: Sql = sql!(
    "SELECT current_token, current_expire, current_count, current_mech, new_token, new_expire, new_count, new_mech \
     FROM fast_tokens WHERE domain = ? AND username = ? AND user_agent = ?"
);
/// A first token is the one in use at once; later ones are the next token.
const SET_NEW: Sql = sql!(
    "INSERT INTO fast_tokens (domain, username, user_agent, current_token, current_expire, current_count, current_mech) \
     VALUES (?, ?, ?, ?, ?, 0, ?)",
    on_conflict: "ON CONFLICT (domain, username, user_agent) DO UPDATE SET new_token = excluded.current_token, \
                  new_expire = excluded.current_expire, new_count = 0, new_mech = excluded.current_mech",
    on_duplicate: "ON DUPLICATE KEY UPDATE new_token = VALUES(current_token), new_expire = VALUES(current_expire), \
                   new_count = 0, new_mech = VALUES(current_mech)",
);
/// The current token, if it is `token` and `count` is 0 or above its count.
const USE_CURRENT: Sql = sql!(
    "UPDATE fast_tokens SET current_count = CASE WHEN ? > current_count THEN ? ELSE current_count END \
     WHERE domain = ? AND username = ? AND user_agent = ? AND current_token = ? AND (? = 0 OR ? > current_count)"
);
/// The next token becomes the current one (and is the next no more).
const USE_NEW: Sql = sql!(
    "UPDATE fast_tokens SET current_token = new_token, current_expire = new_expire, \
     current_count = CASE WHEN ? > new_count THEN ? ELSE new_count END, current_mech = new_mech, \
     new_token = NULL, new_expire = NULL, new_count = NULL, new_mech = NULL \
     WHERE domain = ? AND username = ? AND user_agent = ? AND new_token = ? AND (? = 0 OR ? > new_count)"
);
const DELETE: Sql = sql!("DELETE FROM fast_tokens WHERE domain = ? AND username = ? AND user_agent = ?");

fn token(token: Option<String>, expire: Option<i64>, count: Option<i64>, mech: Option<String>) -> Option<FastToken> {
    Some(FastToken { token: token?, expires_at: expire?, count: count.unwrap_or(0), mechanism: mech? })
}

#[async_trait]
impl FastTokenRepo for Storage {
    async fn fast_tokens(&self, domain: &str, user: &str, agent: &str) -> Result<FastTokens, StorageError> {
        let _timed = crate::Timed::start("FastTokenRepo", "fast_tokens");
        on_backend!(self, |pool, d| {
            let row = sqlx::query(GET.get(d)).bind(domain).bind(user).bind(agent).fetch_optional(pool).await?;
            let Some(r) = row else { return Ok(FastTokens::default()) };
            Ok(FastTokens {
                current: token(
                    r.try_get("current_token")?,
                    r.try_get("current_expire")?,
                    r.try_get("current_count")?,
                    r.try_get("current_mech")?,
                ),
                new: token(
                    r.try_get("new_token")?,
                    r.try_get("new_expire")?,
                    r.try_get("new_count")?,
                    r.try_get("new_mech")?,
                ),
            })
        })
    }

    async fn set_new_fast_token(
        &self,
        domain: &str,
        user: &str,
        agent: &str,
        t: &FastToken,
    ) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("FastTokenRepo", "set_new_fast_token");
        on_backend!(self, |pool, d| {
            sqlx::query(SET_NEW.get(d))
                .bind(domain)
                .bind(user)
                .bind(agent)
                .bind(&t.token)
                .bind(t.expires_at)
                .bind(&t.mechanism)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn use_fast_token(
        &self,
        domain: &str,
        user: &str,
        agent: &str,
        slot: FastSlot,
        token: &str,
        count: i64,
    ) -> Result<bool, StorageError> {
        let _timed = crate::Timed::start("FastTokenRepo", "use_fast_token");
        let q = match slot {
            FastSlot::Current => USE_CURRENT,
            FastSlot::New => USE_NEW,
        };
        let affected = on_backend!(self, |pool, d| {
            sqlx::query(q.get(d))
                .bind(count)
                .bind(count)
                .bind(domain)
                .bind(user)
                .bind(agent)
                .bind(token)
                .bind(count)
                .bind(count)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(affected == 1)
    }

    async fn remove_fast_tokens(&self, domain: &str, user: &str, agent: &str) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("FastTokenRepo", "remove_fast_tokens");
        on_backend!(self, |pool, d| {
            sqlx::query(DELETE.get(d)).bind(domain).bind(user).bind(agent).execute(pool).await?;
        });
        Ok(())
    }
}
