//! [`Storage::connect`]: URL scheme dispatch, pool options, TLS, migrations.

use std::str::FromStr;

use sqlx::migrate::Migrator;
use sqlx::mysql::{MySqlConnectOptions, MySqlPoolOptions, MySqlSslMode};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

use crate::{Backend, DbTls, Storage, StorageConfig, StorageError};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");
static MYSQL_MIGRATIONS: Migrator = sqlx::migrate!("migrations/mysql");

/// The URL's scheme, lower-cased, without the colon.
fn scheme(url: &str) -> Option<String> {
    let (scheme, _) = url.split_once(':')?;
    Some(scheme.to_ascii_lowercase())
}

/// `url` with its scheme replaced by `scheme` (sqlx's parsers expect the lower-case
/// canonical one).
fn with_scheme(url: &str, scheme: &str) -> String {
    match url.split_once(':') {
        Some((_, rest)) => format!("{scheme}:{rest}"),
        None => url.to_owned(),
    }
}

fn config_err(e: sqlx::Error) -> StorageError {
    StorageError::Config(e.to_string())
}

impl Storage {
    /// Opens a pool to `cfg.url`, chosen by scheme (`sqlite:`, `postgres:`,
    /// `postgresql:`, `mysql:`, `mariadb:`), and brings the schema up to date.
    ///
    /// SQLite databases are files, created if missing and put in WAL mode; an
    /// in-memory SQLite URL (`sqlite::memory:`) gets a single, never-recycled
    /// connection, since every connection would otherwise see its own database.
    pub async fn connect(cfg: &StorageConfig) -> Result<Storage, StorageError> {
        let scheme = scheme(&cfg.url)
            .ok_or_else(|| StorageError::Config("database URL has no scheme (sqlite:, postgres:, mysql:)".into()))?;
        let max = cfg.pool_size.max(1);
        let storage = match scheme.as_str() {
            "sqlite" => {
                let url = with_scheme(&cfg.url, "sqlite");
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                let mut opts = SqliteConnectOptions::from_str(&url)
                    .map_err(config_err)?
                    .create_if_missing(true)
                    .foreign_keys(true)
                    // How long a writer waits for another one (at least 5 s).
                    .busy_timeout(cfg.connect_timeout.max(std::time::Duration::from_secs(5)));
                if !in_memory {
                    // Readers no longer block the writer; `synchronous` stays FULL so a
                    // committed write survives power loss.
                    opts = opts.journal_mode(SqliteJournalMode::Wal);
                    // A statement that writes several rows inside a transaction (the
                    // batched upserts) keeps a statement journal of the pages it
                    // changes, to undo itself alone: in memory, not a temporary file
                    // written page by page and deleted at the end of the transaction.
                    opts = opts.pragma("temp_store", "memory");
                }
                let mut pool = SqlitePoolOptions::new().acquire_timeout(cfg.connect_timeout);
                if in_memory {
                    pool = pool.max_connections(1).min_connections(1).idle_timeout(None).max_lifetime(None);
                } else {
                    pool = pool.max_connections(max);
                }
                let pool = pool.connect_with(opts).await?;
                SQLITE_MIGRATIONS.run(&pool).await?;
                Storage { backend: Backend::Sqlite(pool) }
            }
            "postgres" | "postgresql" => {
                let url = with_scheme(&cfg.url, "postgres");
                let mut opts = PgConnectOptions::from_str(&url).map_err(config_err)?;
                opts = match &cfg.tls {
                    DbTls::Disabled => opts.ssl_mode(PgSslMode::Disable),
                    DbTls::Preferred => opts.ssl_mode(PgSslMode::Prefer),
                    DbTls::Required { ca_file } => {
                        let opts = opts.ssl_mode(PgSslMode::VerifyFull);
                        match ca_file {
                            Some(ca) => opts.ssl_root_cert(ca),
                            None => opts,
                        }
                    }
                };
                let pool = PgPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(cfg.connect_timeout)
                    .connect_with(opts)
                    .await?;
                POSTGRES_MIGRATIONS.run(&pool).await?;
                Storage { backend: Backend::Postgres(pool) }
            }
            "mysql" | "mariadb" => {
                // sqlx only parses `mysql:` URLs.
                let url = with_scheme(&cfg.url, "mysql");
                let mut opts = MySqlConnectOptions::from_str(&url)
                    .map_err(config_err)?
                    .charset("utf8mb4")
                    .collation("utf8mb4_bin");
                opts = match &cfg.tls {
                    DbTls::Disabled => opts.ssl_mode(MySqlSslMode::Disabled),
                    DbTls::Preferred => opts.ssl_mode(MySqlSslMode::Preferred),
                    DbTls::Required { ca_file } => {
                        let opts = opts.ssl_mode(MySqlSslMode::VerifyIdentity);
                        match ca_file {
                            Some(ca) => opts.ssl_ca(ca),
                            None => opts,
                        }
                    }
                };
                let pool = MySqlPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(cfg.connect_timeout)
                    .connect_with(opts)
                    .await?;
                MYSQL_MIGRATIONS.run(&pool).await?;
                Storage { backend: Backend::MySql(pool) }
            }
            other => {
                return Err(StorageError::Config(format!(
                    "unsupported database URL scheme {other:?} (expected sqlite, postgres, \
                     postgresql, mysql or mariadb)"
                )))
            }
        };
        tracing::info!(backend = storage.backend_name(), "storage connected, schema up to date");
        Ok(storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes() {
        assert_eq!(scheme("sqlite::memory:").as_deref(), Some("sqlite"));
        assert_eq!(scheme("PostgreSQL://h/db").as_deref(), Some("postgresql"));
        assert_eq!(scheme("no-scheme"), None);
        assert_eq!(with_scheme("MariaDB://h/db", "mysql"), "mysql://h/db");
        assert_eq!(with_scheme("SQLite:/x.db", "sqlite"), "sqlite:/x.db");
    }

    #[tokio::test]
    async fn rejects_unknown_scheme() {
        let cfg = StorageConfig {
            url: "redis://localhost".into(),
            pool_size: 1,
            connect_timeout: std::time::Duration::from_secs(1),
            tls: DbTls::Disabled,
        };
        assert!(matches!(Storage::connect(&cfg).await, Err(StorageError::Config(_))));
    }
}
