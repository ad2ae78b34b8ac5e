//! Writing each query once for every backend.
//!
//! Queries are written with MySQL-style `?` placeholders, each bound exactly once and in
//! order. [`sql!`](crate::sql::sql!) turns such a literal, at compile time, into a [`Sql`]
//! holding that text (for MySQL and SQLite) and a copy with the `?`s numbered `$1`, `$2`,
//! … (for PostgreSQL). SQLite gets the plain `?`s, bound by position: sqlx looks up
//! the name of each numbered one, which costs a many-row statement quadratic time. An
//! upsert carries the standard (`on_conflict`) tail on SQLite and PostgreSQL. The statements stay
//! `&'static str`, as sqlx 0.9 wants, and nothing is rewritten at run time.
//!
//! [`on_backend!`](crate::sql::on_backend!) then expands a body once per backend with the
//! concrete pool bound, so row decoding and binds are type-checked for each driver.

/// The SQL flavour a query is sent in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

impl Dialect {
    /// The statement that opens a transaction that is going to write.
    ///
    /// SQLite's default `BEGIN` is deferred: a transaction that reads before writing
    /// fails with `SQLITE_BUSY` (without waiting) when another connection wrote in the
    /// meantime. `BEGIN IMMEDIATE` takes the write lock up front and waits for it with
    /// the busy timeout instead.
    pub(crate) const fn begin_write(self) -> &'static str {
        match self {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres | Dialect::MySql => "BEGIN",
        }
    }
}

/// One statement in the placeholder styles of all backends; build it with
/// [`sql!`](crate::sql::sql!).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sql {
    /// MySQL's text: `?` placeholders (and its own upsert tail).
    qmark: &'static str,
    /// The standard text with `?` placeholders: SQLite's (see the module's text).
    standard: &'static str,
    /// The standard text with `$1`, `$2`, … placeholders: PostgreSQL's.
    numbered: &'static str,
}

impl Sql {
    #[doc(hidden)]
    pub(crate) const fn new(qmark: &'static str, standard: &'static str, numbered: &'static str) -> Sql {
        Sql { qmark, standard, numbered }
    }

    /// The text to send to a backend of dialect `d`.
    pub(crate) const fn get(self, d: Dialect) -> &'static str {
        match d {
            Dialect::MySql => self.qmark,
            Dialect::Sqlite => self.standard,
            Dialect::Postgres => self.numbered,
        }
    }
}

const fn decimal_digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Number of `?` placeholders in `src`.
pub(crate) const fn placeholder_count(src: &str) -> usize {
    let b = src.as_bytes();
    let mut i = 0;
    let mut n = 0;
    while i < b.len() {
        if b[i] == b'?' {
            n += 1;
        }
        i += 1;
    }
    n
}

/// Length of `src` once its `?` placeholders are numbered.
pub(crate) const fn numbered_len(src: &str) -> usize {
    let b = src.as_bytes();
    let mut i = 0;
    let mut n = 0;
    let mut len = 0;
    while i < b.len() {
        match b[i] {
            b'?' => {
                n += 1;
                len += 1 + decimal_digits(n);
            }
            b'$' => panic!("write queries with `?` placeholders, not `$N`"),
            _ => len += 1,
        }
        i += 1;
    }
    len
}

/// `src` with its `?` placeholders replaced by `$1`, `$2`, …; `N` must be
/// [`numbered_len`]`(src)`.
pub(crate) const fn numbered_bytes<const N: usize>(src: &str) -> [u8; N] {
    let b = src.as_bytes();
    let mut out = [0u8; N];
    let mut i = 0;
    let mut o = 0;
    let mut n = 0;
    while i < b.len() {
        if b[i] == b'?' {
            n += 1;
            out[o] = b'$';
            o += 1;
            let digits = decimal_digits(n);
            let mut k = digits;
            let mut v = n;
            while k > 0 {
                k -= 1;
                out[o + k] = b'0' + (v % 10) as u8;
                v /= 10;
            }
            o += digits;
        } else {
            out[o] = b[i];
            o += 1;
        }
        i += 1;
    }
    assert!(o == N, "numbered_bytes: wrong output length");
    out
}

/// Builds a [`Sql`](crate::sql::Sql) from a query written with `?` placeholders.
///
/// * `sql!("SELECT … WHERE a = ? AND b = ?")` — the same text everywhere; the
///   argument may also be a `concat!` of literals.
/// * `sql!("INSERT … VALUES (?, ?)", on_conflict: "ON CONFLICT … DO UPDATE …",
///   on_duplicate: "ON DUPLICATE KEY UPDATE …")` — an upsert: the head is followed by
///   the `on_conflict` tail on SQLite and PostgreSQL and by the `on_duplicate` tail on
///   MySQL. The tails must not contain placeholders.
macro_rules! sql {
    (@build $qmark:ident, $std:ident) => {{
        const LEN: usize = $crate::sql::numbered_len($std);
        const BYTES: [u8; LEN] = $crate::sql::numbered_bytes::<LEN>($std);
        const NUMBERED: &str = match ::core::str::from_utf8(&BYTES) {
            Ok(s) => s,
            Err(_) => panic!("SQL text is not UTF-8"),
        };
        $crate::sql::Sql::new($qmark, $std, NUMBERED)
    }};
    // The head may be a `concat!` of literals (a multi-row insert).
    ($head:expr, on_conflict: $std:expr, on_duplicate: $my:expr $(,)?) => {{
        const QMARK: &str = concat!($head, " ", $my);
        const STD: &str = concat!($head, " ", $std);
        const _: () = assert!(
            $crate::sql::placeholder_count(QMARK) == $crate::sql::placeholder_count(STD),
            "upsert tails must not contain placeholders"
        );
        $crate::sql::sql!(@build QMARK, STD)
    }};
    // A literal, or a `concat!` of literals (queries assembled from shared parts).
    ($q:expr) => {{
        const QMARK: &str = $q;
        $crate::sql::sql!(@build QMARK, QMARK)
    }};
}

/// `on_backend!(storage, |pool, dialect| { … })` runs the block with `pool` bound to
/// the concrete sqlx pool of `storage` and `dialect` to its [`Dialect`]. The block is
/// expanded once per backend.
macro_rules! on_backend {
    ($storage:expr, |$pool:ident, $d:ident| $body:block) => {
        match &$storage.backend {
            $crate::Backend::Sqlite($pool) => {
                #[allow(unused_variables)]
                let $d = $crate::sql::Dialect::Sqlite;
                $body
            }
            $crate::Backend::Postgres($pool) => {
                #[allow(unused_variables)]
                let $d = $crate::sql::Dialect::Postgres;
                $body
            }
            $crate::Backend::MySql($pool) => {
                #[allow(unused_variables)]
                let $d = $crate::sql::Dialect::MySql;
                $body
            }
        }
    };
}

pub(crate) use {on_backend, sql};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_placeholders() {
        const Q: Sql = crate::sql::sql!("SELECT a FROM t WHERE b = ? AND c IN (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        assert_eq!(Q.get(Dialect::MySql), "SELECT a FROM t WHERE b = ? AND c IN (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
        assert_eq!(
            Q.get(Dialect::Postgres),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        );
        // SQLite binds plain `?` by position.
        assert_eq!(Q.get(Dialect::Sqlite), Q.get(Dialect::MySql));
    }

    #[test]
    fn upsert_tails() {
        const Q: Sql = crate::sql::sql!(
            "INSERT INTO t (a, b) VALUES (?, ?)",
            on_conflict: "ON CONFLICT (a) DO UPDATE SET b = excluded.b",
            on_duplicate: "ON DUPLICATE KEY UPDATE b = VALUES(b)",
        );
        assert_eq!(Q.get(Dialect::MySql), "INSERT INTO t (a, b) VALUES (?, ?) ON DUPLICATE KEY UPDATE b = VALUES(b)");
        assert_eq!(
            Q.get(Dialect::Postgres),
            "INSERT INTO t (a, b) VALUES ($1, $2) ON CONFLICT (a) DO UPDATE SET b = excluded.b"
        );
        assert_eq!(
            Q.get(Dialect::Sqlite),
            "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO UPDATE SET b = excluded.b"
        );
    }

    #[test]
    fn concat_of_literals() {
        const Q: Sql = crate::sql::sql!(concat!("SELECT a FROM t WHERE b = ?", " AND c = ?", ""));
        assert_eq!(Q.get(Dialect::MySql), "SELECT a FROM t WHERE b = ? AND c = ?");
        assert_eq!(Q.get(Dialect::Postgres), "SELECT a FROM t WHERE b = $1 AND c = $2");
    }

    #[test]
    fn no_placeholders_and_unicode() {
        const Q: Sql = crate::sql::sql!("SELECT 'ü😀'");
        assert_eq!(Q.get(Dialect::Postgres), "SELECT 'ü😀'");
    }
}
