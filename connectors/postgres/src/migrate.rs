//! The SQL the connector needs, from `migrations/postgres/`, applied in version order by
//! `tidings migrate --postgres URL`. Each applied version is recorded in
//! `tidings.schema_migrations`; an advisory lock keeps two runs from racing. The files are
//! idempotent as well, so a database prepared by hand is not broken by a later run.

use crate::connection::{Settings, UrlError};
use crate::slot::describe;

/// One migration: version, name, SQL.
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, oldest first.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "outbox",
        sql: include_str!("../../../migrations/postgres/0001_outbox.sql"),
    },
    Migration {
        version: 2,
        name: "connector_channels",
        sql: include_str!("../../../migrations/postgres/0002_connector_channels.sql"),
    },
];

/// Advisory lock key of `tidings migrate` (an arbitrary constant: "tidings" in ASCII).
const LOCK_KEY: i64 = 0x0074_6964_696e_6773;

/// Why migrating failed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("cannot connect to Postgres at {at}: {problem}; check the URL, that the server runs, and pg_hba.conf")]
    Connect { at: String, problem: String },
    #[error("migration {version} ({name}) failed: {problem}; nothing of it was applied. Fix the cause (often: connect as the database owner or a superuser) and run `tidings migrate` again")]
    Apply {
        version: i32,
        name: &'static str,
        problem: String,
    },
    #[error("cannot record migrations in tidings.schema_migrations: {0}")]
    Bookkeeping(String),
}

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Versions applied by this run.
    pub applied: Vec<i32>,
    /// The newest version now in the database.
    pub current: i32,
    /// What happened to the replication slot.
    pub slot: SlotOutcome,
}

/// The replication slot after a migration run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotOutcome {
    /// Created now: outbox rows committed from now on will be streamed.
    Created { name: String, lsn: String },
    /// It was there already.
    Existed { name: String },
    /// Not created (no slot asked for, or the server refused); the connector creates it at
    /// its first start, and rows committed before then are not streamed.
    NotCreated { reason: String },
}

/// Apply every migration the database lacks, then create the replication slot `slot` (when
/// given) so that every outbox row committed from now on is streamed, even the ones written
/// before Tidings first starts.
pub async fn migrate(url: &str, slot: Option<&str>) -> Result<Report, MigrateError> {
    let settings = Settings::parse(url)?;
    let mut client = settings
        .connect_sql()
        .await
        .map_err(|e| MigrateError::Connect {
            at: settings.display(),
            problem: describe(&e),
        })?;
    let book = |e: tokio_postgres::Error| MigrateError::Bookkeeping(describe(&e));
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(book)?;
    let result = apply_all(&mut client).await;
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let (applied, current) = result?;
    let slot = match slot {
        None => SlotOutcome::NotCreated {
            reason: "no slot name given".into(),
        },
        Some(name) => create_slot(&client, name).await,
    };
    Ok(Report {
        applied,
        current,
        slot,
    })
}

async fn create_slot(client: &tokio_postgres::Client, name: &str) -> SlotOutcome {
    if !crate::config::valid_identifier(name) {
        return SlotOutcome::NotCreated {
            reason: format!("{name:?} is not a valid slot name"),
        };
    }
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1",
            &[&name],
        )
        .await;
    match exists {
        Ok(Some(_)) => {
            return SlotOutcome::Existed {
                name: name.to_owned(),
            }
        }
        Ok(None) => {}
        Err(e) => {
            return SlotOutcome::NotCreated {
                reason: describe(&e),
            }
        }
    }
    match client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&name],
        )
        .await
    {
        Ok(row) => SlotOutcome::Created {
            name: name.to_owned(),
            lsn: row.get(0),
        },
        Err(e) => SlotOutcome::NotCreated {
            reason: describe(&e),
        },
    }
}

async fn apply_all(client: &mut tokio_postgres::Client) -> Result<(Vec<i32>, i32), MigrateError> {
    let book = |e: tokio_postgres::Error| MigrateError::Bookkeeping(describe(&e));
    client
        .batch_execute(
            "CREATE SCHEMA IF NOT EXISTS tidings;
             CREATE TABLE IF NOT EXISTS tidings.schema_migrations (
                 version    integer     PRIMARY KEY,
                 name       text        NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             );",
        )
        .await
        .map_err(book)?;
    let done: Vec<i32> = client
        .query("SELECT version FROM tidings.schema_migrations", &[])
        .await
        .map_err(book)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.contains(&m.version)) {
        let fail = |e: tokio_postgres::Error| MigrateError::Apply {
            version: m.version,
            name: m.name,
            problem: describe(&e),
        };
        let tx = client.transaction().await.map_err(fail)?;
        tx.batch_execute(m.sql).await.map_err(fail)?;
        tx.execute(
            "INSERT INTO tidings.schema_migrations (version, name) VALUES ($1, $2)",
            &[&m.version, &m.name],
        )
        .await
        .map_err(fail)?;
        tx.commit().await.map_err(fail)?;
        tracing::info!(version = m.version, name = m.name, "migration applied");
        applied.push(m.version);
    }
    let current = done
        .iter()
        .chain(applied.iter())
        .copied()
        .max()
        .unwrap_or(0);
    Ok((applied, current))
}
