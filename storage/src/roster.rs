//! [`RosterRepo`] for [`Storage`].

use std::collections::BTreeSet;

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{RosterItem, RosterRepo, Storage, StorageError, Subscription};

/// One row of the item ⟕ groups join, before folding groups into their item.
struct JoinedRow {
    contact: String,
    name: Option<String>,
    subscription: String,
    ask_out: bool,
    pending_in: bool,
    pre_approved: bool,
    group: Option<String>,
}

/// Folds join rows (ordered by contact, then group) into items.
fn fold(rows: Vec<JoinedRow>) -> Result<Vec<RosterItem>, StorageError> {
    let mut items: Vec<RosterItem> = Vec::new();
    for row in rows {
        match items.last_mut() {
            Some(last) if last.contact == row.contact => {
                if let Some(g) = row.group {
                    last.groups.push(g);
                }
            }
            _ => {
                let subscription = Subscription::parse(&row.subscription).ok_or_else(|| {
                    StorageError::Corrupt(format!("unknown roster subscription {:?}", row.subscription))
                })?;
                items.push(RosterItem {
                    contact: row.contact,
                    name: row.name,
                    subscription,
                    ask_out: row.ask_out,
                    pending_in: row.pending_in,
                    pre_approved: row.pre_approved,
                    groups: row.group.into_iter().collect(),
                });
            }
        }
    }
    Ok(items)
}

/// Decodes a [`JoinedRow`] from any backend's row type.
macro_rules! joined_row {
    ($row:expr) => {{
        let r = $row;
        JoinedRow {
            contact: r.try_get("contact")?,
            name: r.try_get("name")?,
            subscription: r.try_get("subscription")?,
            ask_out: r.try_get("ask_out")?,
            pending_in: r.try_get("pending_in")?,
            pre_approved: r.try_get("pre_approved")?,
            group: r.try_get("group_name")?,
        }
    }};
}

const GET_ROSTER: Sql = sql!(
    "SELECT i.contact, i.name, i.subscription, i.ask_out, i.pending_in, i.pre_approved, \
            g.group_name \
     FROM roster_items i LEFT JOIN roster_groups g \
       ON g.domain = i.domain AND g.username = i.username AND g.contact = i.contact \
     WHERE i.domain = ? AND i.username = ? \
     ORDER BY i.contact, g.group_name"
);
const GET_ITEM: Sql = sql!(
    "SELECT i.contact, i.name, i.subscription, i.ask_out, i.pending_in, i.pre_approved, \
            g.group_name \
     FROM roster_items i LEFT JOIN roster_groups g \
       ON g.domain = i.domain AND g.username = i.username AND g.contact = i.contact \
     WHERE i.domain = ? AND i.username = ? AND i.contact = ? \
     ORDER BY g.group_name"
);
const UPSERT_ITEM: Sql = sql!(
    "INSERT INTO roster_items \
       (domain, username, contact, name, subscription, ask_out, pending_in, pre_approved) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    on_conflict: "ON CONFLICT (domain, username, contact) DO UPDATE SET \
       name = excluded.name, subscription = excluded.subscription, \
       ask_out = excluded.ask_out, pending_in = excluded.pending_in, \
       pre_approved = excluded.pre_approved",
    on_duplicate: "ON DUPLICATE KEY UPDATE \
       name = VALUES(name), subscription = VALUES(subscription), \
       ask_out = VALUES(ask_out), pending_in = VALUES(pending_in), \
       pre_approved = VALUES(pre_approved)",
);
const DELETE_GROUPS: Sql = sql!("DELETE FROM roster_groups WHERE domain = ? AND username = ? AND contact = ?");
const INSERT_GROUP: Sql = sql!("INSERT INTO roster_groups (domain, username, contact, group_name) VALUES (?, ?, ?, ?)");
const DELETE_ITEM: Sql = sql!("DELETE FROM roster_items WHERE domain = ? AND username = ? AND contact = ?");

#[async_trait]
impl RosterRepo for Storage {
    async fn get_roster(&self, domain: &str, user: &str) -> Result<Vec<RosterItem>, StorageError> {
        let _timed = crate::Timed::start("RosterRepo", "get_roster");
        let rows = on_backend!(self, |pool, d| {
            let rows = sqlx::query(GET_ROSTER.get(d)).bind(domain).bind(user).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(joined_row!(r));
            }
            out
        });
        fold(rows)
    }

    async fn get_item(&self, domain: &str, user: &str, contact: &str) -> Result<Option<RosterItem>, StorageError> {
        let _timed = crate::Timed::start("RosterRepo", "get_item");
        let rows = on_backend!(self, |pool, d| {
            let rows = sqlx::query(GET_ITEM.get(d)).bind(domain).bind(user).bind(contact).fetch_all(pool).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(joined_row!(r));
            }
            out
        });
        Ok(fold(rows)?.into_iter().next())
    }

    async fn put_item(&self, domain: &str, user: &str, item: &RosterItem) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("RosterRepo", "put_item");
        let groups: BTreeSet<&str> = item.groups.iter().map(String::as_str).collect();
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            sqlx::query(UPSERT_ITEM.get(d))
                .bind(domain)
                .bind(user)
                .bind(&item.contact)
                .bind(item.name.as_deref())
                .bind(item.subscription.as_str())
                .bind(item.ask_out)
                .bind(item.pending_in)
                .bind(item.pre_approved)
                .execute(&mut *tx)
                .await?;
            sqlx::query(DELETE_GROUPS.get(d)).bind(domain).bind(user).bind(&item.contact).execute(&mut *tx).await?;
            for group in &groups {
                sqlx::query(INSERT_GROUP.get(d))
                    .bind(domain)
                    .bind(user)
                    .bind(&item.contact)
                    .bind(*group)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn remove_item(&self, domain: &str, user: &str, contact: &str) -> Result<bool, StorageError> {
        let _timed = crate::Timed::start("RosterRepo", "remove_item");
        let n = on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            sqlx::query(DELETE_GROUPS.get(d)).bind(domain).bind(user).bind(contact).execute(&mut *tx).await?;
            let n = sqlx::query(DELETE_ITEM.get(d))
                .bind(domain)
                .bind(user)
                .bind(contact)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            n
        });
        Ok(n > 0)
    }
}
