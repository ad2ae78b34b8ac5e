//! [`VcardRepo`] and [`PrivateRepo`] for [`Storage`]: one XML document per key.

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{now_micros, PrivateRepo, Storage, StorageError, VcardRepo};

const GET_VCARD: Sql = sql!("SELECT xml FROM vcards WHERE domain = ? AND username = ?");
const SET_VCARD: Sql = sql!(
    "INSERT INTO vcards (domain, username, xml, updated_micros) VALUES (?, ?, ?, ?)",
    on_conflict: "ON CONFLICT (domain, username) DO UPDATE SET \
       xml = excluded.xml, updated_micros = excluded.updated_micros",
    on_duplicate: "ON DUPLICATE KEY UPDATE \
       xml = VALUES(xml), updated_micros = VALUES(updated_micros)",
);
const GET_PRIVATE: Sql = sql!("SELECT xml FROM private_storage WHERE domain = ? AND username = ? AND namespace = ?");
const OTHER_PRIVATE: Sql =
    sql!("SELECT namespace, xml FROM private_storage WHERE domain = ? AND username = ? AND namespace <> ?");
const SET_PRIVATE: Sql = sql!(
    "INSERT INTO private_storage (domain, username, namespace, xml, updated_micros) \
     VALUES (?, ?, ?, ?, ?)",
    on_conflict: "ON CONFLICT (domain, username, namespace) DO UPDATE SET \
       xml = excluded.xml, updated_micros = excluded.updated_micros",
    on_duplicate: "ON DUPLICATE KEY UPDATE \
       xml = VALUES(xml), updated_micros = VALUES(updated_micros)",
);

#[async_trait]
impl VcardRepo for Storage {
    async fn get_vcard(&self, domain: &str, user: &str) -> Result<Option<String>, StorageError> {
        let _timed = crate::Timed::start("VcardRepo", "get_vcard");
        on_backend!(self, |pool, d| {
            let row = sqlx::query(GET_VCARD.get(d)).bind(domain).bind(user).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(r.try_get("xml")?),
                None => None,
            })
        })
    }

    async fn set_vcard(&self, domain: &str, user: &str, xml: &str) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("VcardRepo", "set_vcard");
        on_backend!(self, |pool, d| {
            sqlx::query(SET_VCARD.get(d)).bind(domain).bind(user).bind(xml).bind(now_micros()).execute(pool).await?;
        });
        Ok(())
    }
}

#[async_trait]
impl PrivateRepo for Storage {
    async fn get_private(&self, domain: &str, user: &str, namespace: &str) -> Result<Option<String>, StorageError> {
        let _timed = crate::Timed::start("PrivateRepo", "get_private");
        on_backend!(self, |pool, d| {
            let row =
                sqlx::query(GET_PRIVATE.get(d)).bind(domain).bind(user).bind(namespace).fetch_optional(pool).await?;
            Ok(match row {
                Some(r) => Some(r.try_get("xml")?),
                None => None,
            })
        })
    }

    async fn set_private(&self, domain: &str, user: &str, namespace: &str, xml: &str) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("PrivateRepo", "set_private");
        on_backend!(self, |pool, d| {
            sqlx::query(SET_PRIVATE.get(d))
                .bind(domain)
                .bind(user)
                .bind(namespace)
                .bind(xml)
                .bind(now_micros())
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    async fn private_size(&self, domain: &str, user: &str, except: &str) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("PrivateRepo", "private_size");
        // Read whole: what an account stores is bounded by this very check.
        let total: usize = on_backend!(self, |pool, d| {
            let rows = sqlx::query(OTHER_PRIVATE.get(d)).bind(domain).bind(user).bind(except).fetch_all(pool).await?;
            let mut total = 0usize;
            for r in rows {
                let ns: String = r.try_get("namespace")?;
                let xml: String = r.try_get("xml")?;
                total = total.saturating_add(ns.len() + xml.len());
            }
            total
        });
        Ok(total as u64)
    }
}
