//! [`PushRepo`] for [`Storage`].

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{PushRepo, PushSubscription, Storage, StorageError};

const UPSERT: Sql = sql!(
    "INSERT INTO push_subscriptions (domain, username, sub_key, pubsub_jid, node, resource, form, created_micros) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    on_conflict: "ON CONFLICT (domain, username, sub_key) DO UPDATE SET resource = excluded.resource, \
                  form = excluded.form, created_micros = excluded.created_micros",
    on_duplicate: "ON DUPLICATE KEY UPDATE resource = VALUES(resource), form = VALUES(form), \
                   created_micros = VALUES(created_micros)",
);
const DISABLE_NODE: Sql = sql!("DELETE FROM push_subscriptions WHERE domain = ? AND username = ? AND sub_key = ?");
const DISABLE_JID: Sql = sql!("DELETE FROM push_subscriptions WHERE domain = ? AND username = ? AND pubsub_jid = ?");
const LIST: Sql = sql!(
    "SELECT pubsub_jid, node, resource, form, created_micros FROM push_subscriptions \
     WHERE domain = ? AND username = ? ORDER BY created_micros, sub_key"
);

/// The key of a subscription: hex SHA-256 of the app server's JID and node.
fn sub_key(pubsub_jid: &str, node: &str) -> String {
    let digest = Sha256::new().chain_update(pubsub_jid.as_bytes()).chain_update([0]).chain_update(node).finalize();
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

#[async_trait]
impl PushRepo for Storage {
    async fn enable_push(&self, domain: &str, user: &str, sub: &PushSubscription) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("PushRepo", "enable_push");
        let key = sub_key(&sub.pubsub_jid, &sub.node);
        on_backend!(self, |pool, d| {
            sqlx::query(UPSERT.get(d))
                .bind(domain)
                .bind(user)
                .bind(&key)
                .bind(&sub.pubsub_jid)
                .bind(&sub.node)
                .bind(&sub.resource)
                .bind(&sub.form)
                .bind(sub.created_micros)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn disable_push(
        &self,
        domain: &str,
        user: &str,
        pubsub_jid: &str,
        node: Option<&str>,
    ) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("PushRepo", "disable_push");
        Ok(on_backend!(self, |pool, d| {
            let q = match node {
                Some(n) => sqlx::query(DISABLE_NODE.get(d)).bind(domain).bind(user).bind(sub_key(pubsub_jid, n)),
                None => sqlx::query(DISABLE_JID.get(d)).bind(domain).bind(user).bind(pubsub_jid.to_owned()),
            };
            q.execute(pool).await?.rows_affected()
        }))
    }

    async fn push_subscriptions(&self, domain: &str, user: &str) -> Result<Vec<PushSubscription>, StorageError> {
        let _timed = crate::Timed::start("PushRepo", "push_subscriptions");
        on_backend!(self, |pool, d| {
            let rows = sqlx::query(LIST.get(d)).bind(domain).bind(user).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(PushSubscription {
                    pubsub_jid: r.try_get("pubsub_jid")?,
                    node: r.try_get("node")?,
                    resource: r.try_get("resource")?,
                    form: r.try_get("form")?,
                    created_micros: r.try_get("created_micros")?,
                });
            }
            Ok(out)
        })
    }
}
