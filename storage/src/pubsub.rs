//! [`PubsubRepo`] for [`Storage`].

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{PubsubItem, PubsubNode, PubsubRepo, PubsubSubscription, Storage, StorageError};

const CREATE_NODE: Sql = sql!(
    "INSERT INTO pubsub_nodes (node_key, service_key, service, name, owner, config, created_micros) \
     VALUES (?, ?, ?, ?, ?, ?, ?)"
);
const NODE: Sql = sql!("SELECT service, name, owner, config, created_micros FROM pubsub_nodes WHERE node_key = ?");
const NODES: Sql = sql!(
    "SELECT service, name, owner, config, created_micros FROM pubsub_nodes WHERE service_key = ? \
     ORDER BY created_micros, node_key"
);
const CONFIGURE: Sql = sql!("UPDATE pubsub_nodes SET config = ? WHERE node_key = ?");
const DELETE: [Sql; 4] = [
    sql!("DELETE FROM pubsub_items WHERE node_key = ?"),
    sql!("DELETE FROM pubsub_affiliations WHERE node_key = ?"),
    sql!("DELETE FROM pubsub_subscriptions WHERE node_key = ?"),
    sql!("DELETE FROM pubsub_nodes WHERE node_key = ?"),
];
const NEXT_SEQ: Sql = sql!("SELECT COALESCE(MAX(seq), 0) AS seq FROM pubsub_items WHERE node_key = ?");
const UPSERT_ITEM: Sql = sql!(
    "INSERT INTO pubsub_items (node_key, item_key, item_id, publisher, payload, seq) VALUES (?, ?, ?, ?, ?, ?)",
    on_conflict: "ON CONFLICT (node_key, item_key) DO UPDATE SET publisher = excluded.publisher, \
                  payload = excluded.payload, seq = excluded.seq",
    on_duplicate: "ON DUPLICATE KEY UPDATE publisher = VALUES(publisher), payload = VALUES(payload), seq = VALUES(seq)",
);
const OLDEST_BEYOND: Sql =
    sql!("SELECT item_key, item_id FROM pubsub_items WHERE node_key = ? ORDER BY seq DESC LIMIT 1000000 OFFSET ?");
const DELETE_ITEM_KEY: Sql = sql!("DELETE FROM pubsub_items WHERE node_key = ? AND item_key = ?");
const PURGE: Sql = sql!("DELETE FROM pubsub_items WHERE node_key = ?");
const LAST_ITEMS: Sql =
    sql!("SELECT item_id, publisher, payload, seq FROM pubsub_items WHERE node_key = ? ORDER BY seq DESC LIMIT ?");
const ITEM: Sql = sql!("SELECT item_id, publisher, payload, seq FROM pubsub_items WHERE node_key = ? AND item_key = ?");
const SET_AFFILIATION: Sql = sql!(
    "INSERT INTO pubsub_affiliations (node_key, jid_key, jid, affiliation) VALUES (?, ?, ?, ?)",
    on_conflict: "ON CONFLICT (node_key, jid_key) DO UPDATE SET affiliation = excluded.affiliation",
    on_duplicate: "ON DUPLICATE KEY UPDATE affiliation = VALUES(affiliation)",
);
const REMOVE_AFFILIATION: Sql = sql!("DELETE FROM pubsub_affiliations WHERE node_key = ? AND jid_key = ?");
const AFFILIATIONS: Sql = sql!("SELECT jid, affiliation FROM pubsub_affiliations WHERE node_key = ? ORDER BY jid_key");
const USER_AFFILIATIONS: Sql = sql!(
    "SELECT n.name AS name, a.affiliation AS affiliation FROM pubsub_affiliations a \
     JOIN pubsub_nodes n ON n.node_key = a.node_key WHERE n.service_key = ? AND a.jid_key = ? \
     ORDER BY n.created_micros, n.node_key"
);
const SUBSCRIBE: Sql = sql!(
    "INSERT INTO pubsub_subscriptions (node_key, subid, jid_key, jid, state, created_micros) VALUES (?, ?, ?, ?, ?, ?)",
    on_conflict: "ON CONFLICT (node_key, subid) DO UPDATE SET state = excluded.state",
    on_duplicate: "ON DUPLICATE KEY UPDATE state = VALUES(state)",
);
const UNSUBSCRIBE_ONE: Sql = sql!("DELETE FROM pubsub_subscriptions WHERE node_key = ? AND jid_key = ? AND subid = ?");
const UNSUBSCRIBE_ALL: Sql = sql!("DELETE FROM pubsub_subscriptions WHERE node_key = ? AND jid_key = ?");
const SUBSCRIPTIONS: Sql = sql!(
    "SELECT subid, jid, state, created_micros FROM pubsub_subscriptions WHERE node_key = ? \
     ORDER BY created_micros, subid"
);
const USER_SUBSCRIPTIONS: Sql = sql!(
    "SELECT n.name AS name, s.subid AS subid, s.jid AS jid, s.state AS state, s.created_micros AS created_micros \
     FROM pubsub_subscriptions s JOIN pubsub_nodes n ON n.node_key = s.node_key \
     WHERE n.service_key = ? AND s.jid_key = ? ORDER BY s.created_micros, s.subid"
);

/// Hex SHA-256 of the parts, each followed by a zero byte.
fn key(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The service key of an account's PEP nodes.
pub(crate) fn pep_service_key(domain: &str, user: &str) -> String {
    key(&[&format!("{user}@{domain}")])
}

/// Deletes a service's nodes with everything in them (bind its service key to each).
pub(crate) const REMOVE_SERVICE: [Sql; 4] = [
    sql!("DELETE FROM pubsub_items WHERE node_key IN (SELECT node_key FROM pubsub_nodes WHERE service_key = ?)"),
    sql!("DELETE FROM pubsub_affiliations WHERE node_key IN (SELECT node_key FROM pubsub_nodes WHERE service_key = ?)"),
    sql!(
        "DELETE FROM pubsub_subscriptions WHERE node_key IN (SELECT node_key FROM pubsub_nodes WHERE service_key = ?)"
    ),
    sql!("DELETE FROM pubsub_nodes WHERE service_key = ?"),
];

fn node_key(service: &str, name: &str) -> String {
    key(&[service, name])
}

fn node_of(r: &impl RowLike) -> Result<PubsubNode, StorageError> {
    Ok(PubsubNode {
        service: r.text("service")?,
        name: r.text("name")?,
        owner: r.text("owner")?,
        config: r.text("config")?,
        created_micros: r.int("created_micros")?,
    })
}

fn item_of(r: &impl RowLike) -> Result<PubsubItem, StorageError> {
    Ok(PubsubItem {
        id: r.text("item_id")?,
        publisher: r.text("publisher")?,
        payload: r.text("payload")?,
        seq: r.int("seq")?,
    })
}

fn subscription_of(r: &impl RowLike) -> Result<PubsubSubscription, StorageError> {
    Ok(PubsubSubscription {
        subid: r.text("subid")?,
        jid: r.text("jid")?,
        state: r.text("state")?,
        created_micros: r.int("created_micros")?,
    })
}

/// The columns read here, from a row of any backend.
trait RowLike {
    fn text(&self, col: &str) -> Result<String, StorageError>;
    fn int(&self, col: &str) -> Result<i64, StorageError>;
}

macro_rules! row_like {
    ($row:ty) => {
        impl RowLike for $row {
            fn text(&self, col: &str) -> Result<String, StorageError> {
                Ok(self.try_get::<String, _>(col)?)
            }
            fn int(&self, col: &str) -> Result<i64, StorageError> {
                Ok(self.try_get::<i64, _>(col)?)
            }
        }
    };
}
row_like!(sqlx::sqlite::SqliteRow);
row_like!(sqlx::postgres::PgRow);
row_like!(sqlx::mysql::MySqlRow);

#[async_trait]
impl PubsubRepo for Storage {
    async fn pubsub_create_node(&self, node: &PubsubNode) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_create_node");
        let nk = node_key(&node.service, &node.name);
        let sk = key(&[&node.service]);
        let owner_key = key(&[&node.owner]);
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            sqlx::query(CREATE_NODE.get(d))
                .bind(&nk)
                .bind(&sk)
                .bind(&node.service)
                .bind(&node.name)
                .bind(&node.owner)
                .bind(&node.config)
                .bind(node.created_micros)
                .execute(&mut *tx)
                .await?;
            sqlx::query(SET_AFFILIATION.get(d))
                .bind(&nk)
                .bind(&owner_key)
                .bind(&node.owner)
                .bind("owner")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn pubsub_node(&self, service: &str, name: &str) -> Result<Option<PubsubNode>, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_node");
        let nk = node_key(service, name);
        on_backend!(self, |pool, d| {
            let row = sqlx::query(NODE.get(d)).bind(&nk).fetch_optional(pool).await?;
            row.as_ref().map(node_of).transpose()
        })
    }

    async fn pubsub_nodes(&self, service: &str) -> Result<Vec<PubsubNode>, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_nodes");
        let sk = key(&[service]);
        on_backend!(self, |pool, d| {
            let rows = sqlx::query(NODES.get(d)).bind(&sk).fetch_all(pool).await?;
            rows.iter().map(node_of).collect()
        })
    }

    async fn pubsub_configure(&self, service: &str, name: &str, config: &str) -> Result<bool, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_configure");
        let nk = node_key(service, name);
        let n = on_backend!(self, |pool, d| {
            sqlx::query(CONFIGURE.get(d)).bind(config).bind(&nk).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    async fn pubsub_delete_node(&self, service: &str, name: &str) -> Result<bool, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_delete_node");
        let nk = node_key(service, name);
        let n = on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            let mut last = 0;
            for q in DELETE {
                last = sqlx::query(q.get(d)).bind(&nk).execute(&mut *tx).await?.rows_affected();
            }
            tx.commit().await?;
            last
        });
        Ok(n > 0)
    }

    async fn pubsub_publish(
        &self,
        service: &str,
        name: &str,
        item: &PubsubItem,
        max_items: Option<u64>,
    ) -> Result<(i64, Vec<String>), StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_publish");
        let nk = node_key(service, name);
        let ik = key(&[&item.id]);
        let keep = max_items.map(|m| i64::try_from(m.max(1)).unwrap_or(i64::MAX));
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            let last: i64 = sqlx::query(NEXT_SEQ.get(d)).bind(&nk).fetch_one(&mut *tx).await?.try_get("seq")?;
            let seq = last + 1;
            sqlx::query(UPSERT_ITEM.get(d))
                .bind(&nk)
                .bind(&ik)
                .bind(&item.id)
                .bind(&item.publisher)
                .bind(&item.payload)
                .bind(seq)
                .execute(&mut *tx)
                .await?;
            let mut removed = Vec::new();
            if let Some(keep) = keep {
                let rows = sqlx::query(OLDEST_BEYOND.get(d)).bind(&nk).bind(keep).fetch_all(&mut *tx).await?;
                for r in &rows {
                    let k: String = r.try_get("item_key")?;
                    sqlx::query(DELETE_ITEM_KEY.get(d)).bind(&nk).bind(&k).execute(&mut *tx).await?;
                    removed.push(r.try_get::<String, _>("item_id")?);
                }
            }
            tx.commit().await?;
            Ok((seq, removed))
        })
    }

    async fn pubsub_retract(&self, service: &str, name: &str, id: &str) -> Result<bool, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_retract");
        let (nk, ik) = (node_key(service, name), key(&[id]));
        let n = on_backend!(self, |pool, d| {
            sqlx::query(DELETE_ITEM_KEY.get(d)).bind(&nk).bind(&ik).execute(pool).await?.rows_affected()
        });
        Ok(n > 0)
    }

    async fn pubsub_purge(&self, service: &str, name: &str) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_purge");
        let nk = node_key(service, name);
        Ok(on_backend!(self, |pool, d| { sqlx::query(PURGE.get(d)).bind(&nk).execute(pool).await?.rows_affected() }))
    }

    async fn pubsub_items(
        &self,
        service: &str,
        name: &str,
        last: Option<u64>,
    ) -> Result<Vec<PubsubItem>, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_items");
        let nk = node_key(service, name);
        let limit = last.map_or(i64::MAX, |n| i64::try_from(n).unwrap_or(i64::MAX));
        let mut items: Vec<PubsubItem> = on_backend!(self, |pool, d| {
            let rows = sqlx::query(LAST_ITEMS.get(d)).bind(&nk).bind(limit).fetch_all(pool).await?;
            rows.iter().map(item_of).collect::<Result<_, StorageError>>()?
        });
        items.reverse();
        Ok(items)
    }

    async fn pubsub_items_by_id(
        &self,
        service: &str,
        name: &str,
        ids: &[String],
    ) -> Result<Vec<PubsubItem>, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_items_by_id");
        let nk = node_key(service, name);
        let mut items = Vec::new();
        for id in ids {
            let ik = key(&[id]);
            let found = on_backend!(self, |pool, d| {
                let row = sqlx::query(ITEM.get(d)).bind(&nk).bind(&ik).fetch_optional(pool).await?;
                row.as_ref().map(item_of).transpose()?
            });
            items.extend(found);
        }
        Ok(items)
    }

    async fn pubsub_set_affiliation(
        &self,
        service: &str,
        name: &str,
        jid: &str,
        affiliation: Option<&str>,
    ) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_set_affiliation");
        let (nk, jk) = (node_key(service, name), key(&[jid]));
        on_backend!(self, |pool, d| {
            match affiliation {
                Some(a) => {
                    sqlx::query(SET_AFFILIATION.get(d)).bind(&nk).bind(&jk).bind(jid).bind(a).execute(pool).await?
                }
                None => sqlx::query(REMOVE_AFFILIATION.get(d)).bind(&nk).bind(&jk).execute(pool).await?,
            };
        });
        Ok(())
    }

    async fn pubsub_affiliations(&self, service: &str, name: &str) -> Result<Vec<(String, String)>, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_affiliations");
        let nk = node_key(service, name);
        on_backend!(self, |pool, d| {
            let rows = sqlx::query(AFFILIATIONS.get(d)).bind(&nk).fetch_all(pool).await?;
            rows.iter().map(|r| Ok((r.text("jid")?, r.text("affiliation")?))).collect()
        })
    }

    async fn pubsub_user_affiliations(&self, service: &str, jid: &str) -> Result<Vec<(String, String)>, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_user_affiliations");
        let (sk, jk) = (key(&[service]), key(&[jid]));
        on_backend!(self, |pool, d| {
            let rows = sqlx::query(USER_AFFILIATIONS.get(d)).bind(&sk).bind(&jk).fetch_all(pool).await?;
            rows.iter().map(|r| Ok((r.text("name")?, r.text("affiliation")?))).collect()
        })
    }

    async fn pubsub_subscribe(&self, service: &str, name: &str, sub: &PubsubSubscription) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_subscribe");
        let (nk, jk) = (node_key(service, name), key(&[&sub.jid]));
        on_backend!(self, |pool, d| {
            sqlx::query(SUBSCRIBE.get(d))
                .bind(&nk)
                .bind(&sub.subid)
                .bind(&jk)
                .bind(&sub.jid)
                .bind(&sub.state)
                .bind(sub.created_micros)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn pubsub_unsubscribe(
        &self,
        service: &str,
        name: &str,
        jid: &str,
        subid: Option<&str>,
    ) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_unsubscribe");
        let (nk, jk) = (node_key(service, name), key(&[jid]));
        Ok(on_backend!(self, |pool, d| {
            match subid {
                Some(s) => sqlx::query(UNSUBSCRIBE_ONE.get(d)).bind(&nk).bind(&jk).bind(s).execute(pool).await?,
                None => sqlx::query(UNSUBSCRIBE_ALL.get(d)).bind(&nk).bind(&jk).execute(pool).await?,
            }
            .rows_affected()
        }))
    }

    async fn pubsub_subscriptions(&self, service: &str, name: &str) -> Result<Vec<PubsubSubscription>, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_subscriptions");
        let nk = node_key(service, name);
        on_backend!(self, |pool, d| {
            let rows = sqlx::query(SUBSCRIPTIONS.get(d)).bind(&nk).fetch_all(pool).await?;
            rows.iter().map(subscription_of).collect()
        })
    }

    async fn pubsub_user_subscriptions(
        &self,
        service: &str,
        jid: &str,
    ) -> Result<Vec<(String, PubsubSubscription)>, StorageError> {
        let _timed = crate::Timed::start("PubsubRepo", "pubsub_user_subscriptions");
        let (sk, jk) = (key(&[service]), key(&[jid]));
        on_backend!(self, |pool, d| {
            let rows = sqlx::query(USER_SUBSCRIPTIONS.get(d)).bind(&sk).bind(&jk).fetch_all(pool).await?;
            rows.iter().map(|r| Ok((r.text("name")?, subscription_of(r)?))).collect()
        })
    }
}
