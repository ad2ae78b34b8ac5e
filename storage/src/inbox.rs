//! [`InboxRepo`] for [`Storage`].

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Dialect, Sql};
use crate::{
    InboxBoxes, InboxChange, InboxDelta, InboxEntry, InboxMessage, InboxQuery, InboxRepo, InboxTotals, Storage,
    StorageError,
};

/// One row of [`upsert!`]: 7 placeholders.
macro_rules! row {
    () => {
        "(?, ?, ?, ?, ?, ?, ?, 'inbox', 0)"
    };
}
/// Rows by doubling: 2, 4, 8, then 32.
macro_rules! rows2 {
    () => {
        concat!(row!(), ", ", row!())
    };
}
macro_rules! rows4 {
    () => {
        concat!(rows2!(), ", ", rows2!())
    };
}
macro_rules! rows8 {
    () => {
        concat!(rows4!(), ", ", rows4!())
    };
}
macro_rules! rows32 {
    () => {
        concat!(rows8!(), ", ", rows8!(), ", ", rows8!(), ", ", rows8!())
    };
}
/// A conversation's new last message with `unread_count` = the messages it
/// adds to the count: the stored count plus them (`UPSERT_ADD`), or them
/// alone, the account having written in between (`UPSERT_SET`). The archive
/// and the bin give the conversation back to the inbox. A message stamped
/// before the stored one (two senders' copies written out of order) still
/// counts, but does not replace the last message. MySQL assigns in order,
/// each seeing the ones before, so the stamp goes last there.
macro_rules! upsert {
    ($count:literal, $count_mysql:literal) => {
        upsert!(row!(), $count, $count_mysql)
    };
    ($rows:expr, $count:literal, $count_mysql:literal) => {
        sql!(
            concat!(
                "INSERT INTO inbox_entries (domain, username, remote_jid, msg_id, content, stamp_micros, \
                 unread_count, box_name, muted_until) VALUES ",
                $rows
            ),
            on_conflict: concat!(
                "ON CONFLICT (domain, username, remote_jid) DO UPDATE SET \
                 msg_id = CASE WHEN excluded.stamp_micros >= inbox_entries.stamp_micros THEN excluded.msg_id \
                 ELSE inbox_entries.msg_id END, \
                 content = CASE WHEN excluded.stamp_micros >= inbox_entries.stamp_micros THEN excluded.content \
                 ELSE inbox_entries.content END, \
                 unread_count = ",
                $count,
                ", box_name = CASE WHEN inbox_entries.box_name IN ('archive', 'bin') THEN 'inbox' \
                 ELSE inbox_entries.box_name END, \
                 stamp_micros = CASE WHEN excluded.stamp_micros >= inbox_entries.stamp_micros \
                 THEN excluded.stamp_micros ELSE inbox_entries.stamp_micros END"
            ),
            on_duplicate: concat!(
                "ON DUPLICATE KEY UPDATE \
                 msg_id = IF(VALUES(stamp_micros) >= stamp_micros, VALUES(msg_id), msg_id), \
                 content = IF(VALUES(stamp_micros) >= stamp_micros, VALUES(content), content), \
                 unread_count = ",
                $count_mysql,
                ", box_name = CASE WHEN box_name IN ('archive', 'bin') THEN 'inbox' ELSE box_name END, \
                 stamp_micros = GREATEST(stamp_micros, VALUES(stamp_micros))"
            ),
        )
    };
}
const UPSERT_ADD: Sql =
    upsert!("inbox_entries.unread_count + excluded.unread_count", "unread_count + VALUES(unread_count)");
const UPSERT_SET: Sql = upsert!("excluded.unread_count", "VALUES(unread_count)");
/// The same for 8 and 32 conversations at once (distinct ones: PostgreSQL
/// refuses to update a row twice in one statement).
const UPSERT_ADD_8: Sql =
    upsert!(rows8!(), "inbox_entries.unread_count + excluded.unread_count", "unread_count + VALUES(unread_count)");
const UPSERT_SET_8: Sql = upsert!(rows8!(), "excluded.unread_count", "VALUES(unread_count)");
const UPSERT_ADD_32: Sql =
    upsert!(rows32!(), "inbox_entries.unread_count + excluded.unread_count", "unread_count + VALUES(unread_count)");
const UPSERT_SET_32: Sql = upsert!(rows32!(), "excluded.unread_count", "VALUES(unread_count)");
/// Conversations written by one statement, at most.
const ROWS_MAX: usize = 32;
const GET: Sql = sql!(
    "SELECT remote_jid, msg_id, content, stamp_micros, unread_count, box_name, muted_until \
     FROM inbox_entries WHERE domain = ? AND username = ? AND remote_jid = ?"
);
const MARK_READ: Sql = sql!(
    "UPDATE inbox_entries SET unread_count = 0 WHERE domain = ? AND username = ? AND remote_jid = ? AND msg_id = ?"
);
/// The read flag: 1 read (nothing unread), 2 unread (one if none), 0 unchanged.
const CHANGE: Sql = sql!(
    "UPDATE inbox_entries SET box_name = COALESCE(?, box_name), muted_until = COALESCE(?, muted_until), \
     unread_count = CASE WHEN ? = 1 THEN 0 WHEN ? = 2 AND unread_count = 0 THEN 1 ELSE unread_count END \
     WHERE domain = ? AND username = ? AND remote_jid = ?"
);
/// Between two exclusive positions `(stamp, remote JID)` (row values, so that
/// the order index is scanned from the position on) and two inclusive times,
/// with the box and unread filters; ascending or descending.
macro_rules! query {
    ($order:literal) => {
        sql!(concat!(
            "SELECT remote_jid, msg_id, content, stamp_micros, unread_count, box_name, muted_until \
             FROM inbox_entries WHERE domain = ? AND username = ? \
             AND stamp_micros >= ? AND stamp_micros <= ? \
             AND (stamp_micros, remote_jid) > (?, ?) AND (stamp_micros, remote_jid) < (?, ?) \
             AND (? = 0 OR box_name = ?) AND (? = 0 OR box_name <> 'bin') AND (? = 0 OR unread_count > 0) \
             ORDER BY stamp_micros ",
            $order,
            ", remote_jid ",
            $order,
            " LIMIT ?"
        ))
    };
}
const QUERY_ASC: Sql = query!("ASC");
const QUERY_DESC: Sql = query!("DESC");
/// Only conversations with something unread count, so the totals read the
/// `inbox_entries_unread` index (partial where the database has them).
const TOTALS: Sql = sql!(
    "SELECT CAST(COALESCE(SUM(unread_count), 0) AS BIGINT) AS unread, \
     COUNT(CASE WHEN unread_count > 0 THEN 1 END) AS active \
     FROM inbox_entries WHERE domain = ? AND username = ? AND unread_count > 0 AND box_name <> 'bin'"
);
/// MySQL casts to SIGNED, not BIGINT.
const TOTALS_MYSQL: Sql = sql!(
    "SELECT CAST(COALESCE(SUM(unread_count), 0) AS SIGNED) AS unread, \
     COUNT(CASE WHEN unread_count > 0 THEN 1 END) AS active \
     FROM inbox_entries WHERE domain = ? AND username = ? AND unread_count > 0 AND box_name <> 'bin'"
);
/// An update's id, unless one is there already (no row inserted then):
/// SQLite and PostgreSQL, then MySQL (the ids are fixed-length, so `IGNORE`
/// cannot hide a truncation).
const APPLIED: Sql =
    sql!("INSERT INTO inbox_updates (update_id, stamp_micros) VALUES (?, ?) ON CONFLICT (update_id) DO NOTHING");
const APPLIED_MYSQL: Sql = sql!("INSERT IGNORE INTO inbox_updates (update_id, stamp_micros) VALUES (?, ?)");
const FORGET_UPDATES: Sql = sql!("DELETE FROM inbox_updates WHERE stamp_micros < ?");
const EMPTY_BIN: Sql = sql!("DELETE FROM inbox_entries WHERE domain = ? AND username = ? AND box_name = 'bin'");
const CLEAN_BINS: Sql = sql!("DELETE FROM inbox_entries WHERE box_name = 'bin' AND stamp_micros < ?");

/// An [`InboxEntry`] from a row of any backend.
macro_rules! entry {
    ($r:expr) => {{
        let r = $r;
        Ok::<_, sqlx::Error>(InboxEntry {
            remote_jid: r.try_get("remote_jid")?,
            msg_id: r.try_get("msg_id")?,
            content: r.try_get("content")?,
            stamp_micros: r.try_get("stamp_micros")?,
            unread_count: r.try_get("unread_count")?,
            box_name: r.try_get("box_name")?,
            muted_until: r.try_get("muted_until")?,
        })
    }};
}

/// Runs one of the upserts: `$stmt` with the conversation's last message and
/// the messages it adds to the count.
macro_rules! write_last {
    ($exec:expr, $d:expr, $stmt:expr, $domain:expr, $user:expr, $remote:expr, $id:expr, $content:expr, $stamp:expr, $count:expr) => {
        sqlx::query($stmt.get($d))
            .bind($domain)
            .bind($user)
            .bind($remote)
            .bind($id)
            .bind($content)
            .bind($stamp)
            .bind($count)
            .execute($exec)
            .await?
    };
}

/// The upsert of one message: received, one more unread; sent, none.
fn message_upsert(m: &InboxMessage) -> (Sql, i64) {
    if m.incoming {
        (UPSERT_ADD, 1)
    } else {
        (UPSERT_SET, 0)
    }
}

#[async_trait]
impl InboxRepo for Storage {
    async fn inbox_message(&self, domain: &str, user: &str, m: &InboxMessage) -> Result<InboxEntry, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_message");
        self.inbox_write(domain, user, m).await?;
        self.inbox_entry(domain, user, &m.remote_jid)
            .await?
            .ok_or_else(|| StorageError::Corrupt("an inbox entry vanished after its upsert".into()))
    }

    async fn inbox_write(&self, domain: &str, user: &str, m: &InboxMessage) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_write");
        let (stmt, count) = message_upsert(m);
        on_backend!(self, |pool, d| {
            write_last!(pool, d, stmt, domain, user, &m.remote_jid, &*m.msg_id, &*m.content, m.stamp_micros, count);
        });
        Ok(())
    }

    async fn inbox_apply(&self, deltas: &[InboxDelta]) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_apply");
        if deltas.is_empty() {
            return Ok(());
        }
        // Markers run in order with the upserts of the same conversation:
        // upserts wait in `set` and `add` (by statement) until a conversation
        // comes again or ROWS_MAX are waiting, then go in statements of 32,
        // 8 and 1 rows.
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            let mut waiting: std::collections::HashSet<(&str, &str, &str)> = std::collections::HashSet::new();
            let (mut set, mut add): (Vec<&InboxDelta>, Vec<&InboxDelta>) = (Vec::new(), Vec::new());
            // A `None` at the end writes what still waits.
            for next in deltas.iter().map(Some).chain([None]) {
                let key = next.map(|x| (x.domain.as_str(), x.user.as_str(), x.remote_jid.as_str()));
                if key.is_none_or(|k| waiting.contains(&k)) || set.len() + add.len() == ROWS_MAX {
                    for (rows, stmts) in [
                        (&mut set, [UPSERT_SET_32, UPSERT_SET_8, UPSERT_SET]),
                        (&mut add, [UPSERT_ADD_32, UPSERT_ADD_8, UPSERT_ADD]),
                    ] {
                        let mut rest = &rows[..];
                        while !rest.is_empty() {
                            let (n, stmt) = match rest.len() {
                                32.. => (32, stmts[0]),
                                8.. => (8, stmts[1]),
                                _ => (1, stmts[2]),
                            };
                            let mut q = sqlx::query(stmt.get(d));
                            for r in &rest[..n] {
                                if let Some(last) = &r.last {
                                    q = q
                                        .bind(&r.domain)
                                        .bind(&r.user)
                                        .bind(&r.remote_jid)
                                        .bind(&*last.msg_id)
                                        .bind(&*last.content)
                                        .bind(last.stamp_micros)
                                        .bind(r.add);
                                }
                            }
                            q.execute(&mut *tx).await?;
                            rest = &rest[n..];
                        }
                        rows.clear();
                    }
                    waiting.clear();
                }
                let (Some(delta), Some(key)) = (next, key) else { break };
                for mark in &delta.marks {
                    sqlx::query(MARK_READ.get(d))
                        .bind(&delta.domain)
                        .bind(&delta.user)
                        .bind(&delta.remote_jid)
                        .bind(mark)
                        .execute(&mut *tx)
                        .await?;
                }
                if delta.last.is_some() {
                    waiting.insert(key);
                    if delta.reset {
                        set.push(delta)
                    } else {
                        add.push(delta)
                    }
                }
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn inbox_mark_read(
        &self,
        domain: &str,
        user: &str,
        remote: &str,
        msg_id: &str,
    ) -> Result<bool, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_mark_read");
        let n = on_backend!(self, |pool, d| {
            sqlx::query(MARK_READ.get(d))
                .bind(domain)
                .bind(user)
                .bind(remote)
                .bind(msg_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(n > 0)
    }

    async fn inbox_entry(&self, domain: &str, user: &str, remote: &str) -> Result<Option<InboxEntry>, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_entry");
        on_backend!(self, |pool, d| {
            let row = sqlx::query(GET.get(d)).bind(domain).bind(user).bind(remote).fetch_optional(pool).await?;
            Ok(row.as_ref().map(|r| entry!(r)).transpose()?)
        })
    }

    async fn inbox_change(
        &self,
        domain: &str,
        user: &str,
        remote: &str,
        change: &InboxChange,
    ) -> Result<Option<InboxEntry>, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_change");
        let read: i64 = match change.read {
            None => 0,
            Some(true) => 1,
            Some(false) => 2,
        };
        on_backend!(self, |pool, d| {
            sqlx::query(CHANGE.get(d))
                .bind(change.box_name.as_deref())
                .bind(change.muted_until)
                .bind(read)
                .bind(read)
                .bind(domain)
                .bind(user)
                .bind(remote)
                .execute(pool)
                .await?;
        });
        self.inbox_entry(domain, user, remote).await
    }

    async fn inbox_query(&self, domain: &str, user: &str, q: &InboxQuery) -> Result<Vec<InboxEntry>, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_query");
        // Positions in ascending key order: in a descending query, "after"
        // means lower keys and "before" higher ones.
        let (lower, upper) = if q.ascending { (&q.after, &q.before) } else { (&q.before, &q.after) };
        let lower = lower.clone().unwrap_or((i64::MIN, String::new()));
        let upper = upper.clone().unwrap_or((i64::MAX, String::new()));
        // With `before`, the page is the entries right before it: scan from it
        // backwards, then turn the page around.
        let reverse = q.before.is_some();
        let scan_ascending = q.ascending != reverse;
        let (only, only_box, not_bin) = match &q.boxes {
            InboxBoxes::AllButBin => (0_i64, "", 1_i64),
            InboxBoxes::All => (0, "", 0),
            InboxBoxes::Only(b) => (1, b.as_str(), 0),
        };
        let limit = i64::try_from(q.max).unwrap_or(i64::MAX);
        let stmt = if scan_ascending { QUERY_ASC } else { QUERY_DESC };
        let mut entries = on_backend!(self, |pool, d| {
            let rows = sqlx::query(stmt.get(d))
                .bind(domain)
                .bind(user)
                .bind(q.start_micros.unwrap_or(i64::MIN))
                .bind(q.end_micros.unwrap_or(i64::MAX))
                .bind(lower.0)
                .bind(&lower.1)
                .bind(upper.0)
                .bind(&upper.1)
                .bind(only)
                .bind(only_box)
                .bind(not_bin)
                .bind(i64::from(q.hidden_read))
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(|r| entry!(r)).collect::<Result<Vec<_>, _>>()?
        });
        if reverse {
            entries.reverse();
        }
        Ok(entries)
    }

    async fn inbox_totals(&self, domain: &str, user: &str) -> Result<InboxTotals, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_totals");
        on_backend!(self, |pool, d| {
            let stmt = if d == Dialect::MySql { TOTALS_MYSQL } else { TOTALS };
            let r = sqlx::query(stmt.get(d)).bind(domain).bind(user).fetch_one(pool).await?;
            Ok(InboxTotals { unread_messages: r.try_get("unread")?, active_conversations: r.try_get("active")? })
        })
    }

    async fn inbox_empty_bin(&self, domain: &str, user: &str) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_empty_bin");
        Ok(on_backend!(self, |pool, d| {
            sqlx::query(EMPTY_BIN.get(d)).bind(domain).bind(user).execute(pool).await?.rows_affected()
        }))
    }

    async fn inbox_clean_bins(&self, before_micros: i64) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_clean_bins");
        Ok(on_backend!(self, |pool, d| {
            sqlx::query(CLEAN_BINS.get(d)).bind(before_micros).execute(pool).await?.rows_affected()
        }))
    }

    async fn inbox_write_once(
        &self,
        domain: &str,
        user: &str,
        m: &InboxMessage,
        update_id: &str,
    ) -> Result<bool, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_write_once");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            let applied = if d == Dialect::MySql { APPLIED_MYSQL } else { APPLIED };
            let fresh =
                sqlx::query(applied.get(d)).bind(update_id).bind(now).execute(&mut *tx).await?.rows_affected() > 0;
            if fresh {
                let (stmt, count) = message_upsert(m);
                write_last!(
                    &mut *tx,
                    d,
                    stmt,
                    domain,
                    user,
                    &m.remote_jid,
                    &*m.msg_id,
                    &*m.content,
                    m.stamp_micros,
                    count
                );
            }
            tx.commit().await?;
            Ok(fresh)
        })
    }

    async fn inbox_forget_updates(&self, before_micros: i64) -> Result<u64, StorageError> {
        let _timed = crate::Timed::start("InboxRepo", "inbox_forget_updates");
        Ok(on_backend!(self, |pool, d| {
            sqlx::query(FORGET_UPDATES.get(d)).bind(before_micros).execute(pool).await?.rows_affected()
        }))
    }
}
