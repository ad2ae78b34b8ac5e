//! [`StorageError`] and the classification of sqlx errors.

use sqlx::error::DatabaseError;

/// Everything a repository call can fail with.
///
/// Callers usually only need [`StorageError::is_retryable`] (back off and try again) and
/// [`StorageError::Conflict`] (the row already exists); everything else is fatal for the
/// operation at hand.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A unique or primary key already holds this value (e.g. the account exists).
    #[error("conflict: {0}")]
    Conflict(String),

    /// The database could not be reached or was busy: connection refused or lost, pool
    /// acquire timed out, deadlock, serialization failure, `SQLITE_BUSY`, too many
    /// connections. Retrying later may succeed.
    #[error("storage temporarily unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),

    /// Any other database or driver failure (bad SQL, constraint violation other than a
    /// duplicate key, value too long, TLS failure, closed pool…). Retrying won't help.
    #[error("storage error: {0}")]
    Fatal(#[source] sqlx::Error),

    /// The [`StorageConfig`](crate::StorageConfig) cannot be used (unknown URL scheme,
    /// malformed URL…).
    #[error("invalid storage configuration: {0}")]
    Config(String),

    /// Applying the schema migrations failed.
    #[error("database migration failed: {0}")]
    Migration(#[source] sqlx::migrate::MigrateError),

    /// A stored value cannot be interpreted (unknown enum tag, negative count…).
    #[error("corrupt data in storage: {0}")]
    Corrupt(String),
}

impl StorageError {
    /// Whether the same call may succeed if retried later.
    pub fn is_retryable(&self) -> bool {
        match self {
            StorageError::Unavailable(_) => true,
            StorageError::Migration(sqlx::migrate::MigrateError::Execute(e)) => is_transient(e),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error() {
            if db.is_unique_violation() {
                return StorageError::Conflict(db.message().to_owned());
            }
        }
        if is_transient(&e) {
            StorageError::Unavailable(e)
        } else {
            StorageError::Fatal(e)
        }
    }
}

impl From<sqlx::migrate::MigrateError> for StorageError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StorageError::Migration(e)
    }
}

fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut => true,
        // Refused, reset, timed out, unreachable… are worth retrying; TLS certificate
        // failures (rustls reports them as `InvalidData`) and the like are not.
        sqlx::Error::Io(io) => !matches!(
            io.kind(),
            std::io::ErrorKind::InvalidData
                | std::io::ErrorKind::InvalidInput
                | std::io::ErrorKind::PermissionDenied
                | std::io::ErrorKind::Unsupported
        ),
        sqlx::Error::Database(db) => is_transient_db(db.as_ref()),
        _ => false,
    }
}

fn is_transient_db(db: &dyn DatabaseError) -> bool {
    if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
        // ER_CON_COUNT_ERROR, ER_LOCK_WAIT_TIMEOUT, ER_LOCK_DEADLOCK,
        // ER_SERVER_SHUTDOWN, ER_QUERY_INTERRUPTED
        return matches!(my.number(), 1040 | 1205 | 1213 | 1053 | 1317);
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        // Primary result codes SQLITE_BUSY (5) and SQLITE_LOCKED (6), including their
        // extended variants (BUSY_SNAPSHOT, LOCKED_SHAREDCACHE…).
        return db.code().and_then(|c| c.parse::<i32>().ok()).is_some_and(|c| matches!(c & 0xff, 5 | 6));
    }
    // PostgreSQL SQLSTATEs: connection exceptions (class 08), serialization failure,
    // deadlock, too many connections, lock not available, admin/crash shutdown,
    // cannot connect now.
    match db.code() {
        Some(code) => {
            code.starts_with("08")
                || matches!(code.as_ref(), "40001" | "40P01" | "53300" | "55P03" | "57P01" | "57P02" | "57P03")
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        assert!(StorageError::from(sqlx::Error::PoolTimedOut).is_retryable());
        assert!(StorageError::from(sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused)))
            .is_retryable());
        assert!(!StorageError::from(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "invalid peer certificate: UnknownIssuer"
        )))
        .is_retryable());
        assert!(!StorageError::from(sqlx::Error::PoolClosed).is_retryable());
        assert!(!StorageError::from(sqlx::Error::RowNotFound).is_retryable());
        assert!(!StorageError::Conflict("x".into()).is_retryable());
    }
}
