//! [`ArchiveRepo`] for [`Storage`]: XEP-0313 user archives with XEP-0059 paging.
//!
//! Every read is one statement shape per `with` variant (none, bare JID, full JID):
//! the time filters and the two cursors are always present and take sentinel values
//! when unused (`i64::MIN`/`i64::MAX`), so there is no SQL built at run time and each
//! bound is a plain range on the `(domain, username, [with_jid,] stamp_micros, seq)`
//! indexes. A cursor `(stamp, seq)` is written out as
//! `stamp > ? OR (stamp = ? AND seq > ?)` rather than as a row-value comparison, which
//! every backend's range optimizer understands.

use async_trait::async_trait;
use sqlx::Row;

use crate::sql::{on_backend, sql, Sql};
use crate::{
    count_to_u64, ArchiveDirection, ArchivePage, ArchiveQuery, ArchiveRepo, ArchivedMessage, Storage, StorageError,
};

const INSERT: Sql = sql!(
    "INSERT INTO archive_messages \
     (domain, username, archive_id, stamp_micros, with_jid, with_resource, direction, stanza) \
     VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
);
const POSITION: Sql =
    sql!("SELECT stamp_micros, seq FROM archive_messages WHERE domain = ? AND username = ? AND archive_id = ?");

/// A statement over the filtered, cursor-bounded range. Binds, in order: domain,
/// username, the `with` binds, start, end, the lower cursor (stamp, stamp, seq), the
/// upper cursor (stamp, stamp, seq), then whatever `$tail` adds.
macro_rules! ranged {
    ($head:literal, $with:literal, $tail:literal) => {
        sql!(concat!(
            $head,
            " FROM archive_messages WHERE domain = ? AND username = ?",
            $with,
            " AND stamp_micros >= ? AND stamp_micros <= ?",
            " AND (stamp_micros > ? OR (stamp_micros = ? AND seq > ?))",
            " AND (stamp_micros < ? OR (stamp_micros = ? AND seq < ?))",
            $tail
        ))
    };
}

/// The three statements of one `with` variant.
struct Shape {
    /// The first `LIMIT ?` messages of the range.
    forward: Sql,
    /// The last `LIMIT ?` messages of the range, newest first.
    backward: Sql,
    /// How many messages the range holds.
    count: Sql,
}

macro_rules! shape {
    ($with:literal) => {
        Shape {
            forward: ranged!(
                "SELECT seq, archive_id, stamp_micros, with_jid, with_resource, direction, stanza",
                $with,
                " ORDER BY stamp_micros, seq LIMIT ?"
            ),
            backward: ranged!(
                "SELECT seq, archive_id, stamp_micros, with_jid, with_resource, direction, stanza",
                $with,
                " ORDER BY stamp_micros DESC, seq DESC LIMIT ?"
            ),
            count: ranged!("SELECT COUNT(*) AS n", $with, ""),
        }
    };
}

const ANYONE: Shape = shape!("");
const WITH_BARE: Shape = shape!(" AND with_jid = ?");
const WITH_FULL: Shape = shape!(" AND with_jid = ? AND with_resource = ?");

/// A position in the total order of an archive: (timestamp, insertion sequence).
type Position = (i64, i64);
const BEFORE_ALL: Position = (i64::MIN, i64::MIN);
const AFTER_ALL: Position = (i64::MAX, i64::MAX);

/// The filters of a query, resolved to what is bound.
struct Range<'a> {
    domain: &'a str,
    user: &'a str,
    with_jid: Option<&'a str>,
    with_resource: Option<&'a str>,
    start: i64,
    end: i64,
}

impl Range<'_> {
    fn shape(&self) -> &'static Shape {
        match (self.with_jid, self.with_resource) {
            (None, _) => &ANYONE,
            (Some(_), None) => &WITH_BARE,
            (Some(_), Some(_)) => &WITH_FULL,
        }
    }
}

/// Binds a [`Range`] and the two cursors onto a query, in the order of `ranged!`.
macro_rules! bind_range {
    ($q:expr, $range:expr, $lo:expr, $hi:expr) => {{
        let r = $range;
        let mut q = $q.bind(r.domain).bind(r.user);
        if let Some(w) = r.with_jid {
            q = q.bind(w);
            if let Some(res) = r.with_resource {
                q = q.bind(res);
            }
        }
        let (lo, hi): (Position, Position) = ($lo, $hi);
        q.bind(r.start).bind(r.end).bind(lo.0).bind(lo.0).bind(lo.1).bind(hi.0).bind(hi.0).bind(hi.1)
    }};
}

/// The [`Position`] of the message with archive id `$id`, if the archive holds it.
macro_rules! position {
    ($conn:expr, $d:expr, $domain:expr, $user:expr, $id:expr) => {{
        let row = sqlx::query(POSITION.get($d)).bind($domain).bind($user).bind($id).fetch_optional($conn).await?;
        match row {
            Some(r) => Some::<Position>((r.try_get("stamp_micros")?, r.try_get("seq")?)),
            None => None,
        }
    }};
}

fn limit(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl ArchiveRepo for Storage {
    async fn store_archive(&self, messages: &[ArchivedMessage]) -> Result<(), StorageError> {
        let _timed = crate::Timed::start("ArchiveRepo", "store_archive");
        if messages.is_empty() {
            return Ok(());
        }
        on_backend!(self, |pool, d| {
            let mut tx = pool.begin_with(d.begin_write()).await?;
            for m in messages {
                sqlx::query(INSERT.get(d))
                    .bind(m.domain.as_str())
                    .bind(m.user.as_str())
                    .bind(m.id.as_str())
                    .bind(m.stamp_micros)
                    .bind(m.with_jid.as_str())
                    .bind(m.with_resource.as_deref().unwrap_or(""))
                    .bind(m.direction.as_str())
                    .bind(m.stanza.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    async fn query_archive(
        &self,
        domain: &str,
        user: &str,
        query: &ArchiveQuery,
    ) -> Result<Option<ArchivePage>, StorageError> {
        let _timed = crate::Timed::start("ArchiveRepo", "query_archive");
        let range = Range {
            domain,
            user,
            with_jid: query.with_jid.as_deref(),
            with_resource: query.with_jid.as_ref().and(query.with_resource.as_deref()),
            start: query.start_micros.unwrap_or(i64::MIN),
            end: query.end_micros.unwrap_or(i64::MAX),
        };
        let shape = range.shape();
        on_backend!(self, |pool, d| {
            // Every statement of the query on one connection.
            let mut conn = pool.acquire().await?;
            let lo = match &query.after {
                Some(id) => match position!(&mut *conn, d, domain, user, id) {
                    Some(p) => p,
                    None => return Ok(None),
                },
                None => BEFORE_ALL,
            };
            let hi = match &query.before {
                Some(id) => match position!(&mut *conn, d, domain, user, id) {
                    Some(p) => p,
                    None => return Ok(None),
                },
                None => AFTER_ALL,
            };

            // One row more than asked tells whether the page is the last one.
            let statement = if query.from_end { shape.backward } else { shape.forward };
            let rows = bind_range!(sqlx::query(statement.get(d)), &range, lo, hi)
                .bind(limit(query.max.saturating_add(1)))
                .fetch_all(&mut *conn)
                .await?;
            let complete = u64::try_from(rows.len()).unwrap_or(u64::MAX) <= query.max;
            let mut page: Vec<(Position, ArchivedMessage)> = Vec::with_capacity(rows.len());
            for r in rows.iter().take(usize::try_from(query.max).unwrap_or(usize::MAX)) {
                let direction: String = r.try_get("direction")?;
                let resource: String = r.try_get("with_resource")?;
                let stamp: i64 = r.try_get("stamp_micros")?;
                page.push((
                    (stamp, r.try_get("seq")?),
                    ArchivedMessage {
                        domain: domain.to_owned(),
                        user: user.to_owned(),
                        id: r.try_get("archive_id")?,
                        stamp_micros: stamp,
                        with_jid: r.try_get("with_jid")?,
                        with_resource: if resource.is_empty() { None } else { Some(resource) },
                        direction: ArchiveDirection::parse(&direction)
                            .ok_or_else(|| StorageError::Corrupt(format!("unknown archive direction {direction:?}")))?,
                        stanza: r.try_get("stanza")?,
                    },
                ));
            }
            if query.from_end {
                page.reverse();
            }

            let n: i64 = bind_range!(sqlx::query(shape.count.get(d)), &range, BEFORE_ALL, AFTER_ALL)
                .fetch_one(&mut *conn)
                .await?
                .try_get("n")?;
            let count = count_to_u64(n)?;
            let first_index = match page.first() {
                Some((first, _)) => {
                    let n: i64 = bind_range!(sqlx::query(shape.count.get(d)), &range, BEFORE_ALL, *first)
                        .fetch_one(&mut *conn)
                        .await?
                        .try_get("n")?;
                    Some(count_to_u64(n)?)
                }
                None => None,
            };
            Ok(Some(ArchivePage { messages: page.into_iter().map(|(_, m)| m).collect(), first_index, count, complete }))
        })
    }
}
