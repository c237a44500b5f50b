//! Checks before streaming, and the replication slot: created when missing on a first run,
//! never silently recreated once a checkpoint says we read from it.

use tidings_connectors_core::SourceError;
use tokio_postgres::Client;

use crate::pgoutput::{format_lsn, parse_lsn, Lsn};

/// What the slot looks like before streaming starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotState {
    /// Created by this start.
    pub created: bool,
    /// The slot's `confirmed_flush_lsn`: everything before it was confirmed by us.
    pub confirmed_flush: Lsn,
    /// Bytes of WAL the slot holds back (`pg_current_wal_lsn() - restart_lsn`).
    pub lag_bytes: i64,
    /// With `on_slot_lost = "recreate"`: the slot had lost changes after the checkpoint, and
    /// streaming goes on from a slot that does not have them.
    pub lost: Option<Loss>,
}

/// How a slot lost the changes after the connector's checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loss {
    /// The slot did not exist: it was dropped; a new one was created.
    Dropped,
    /// Postgres invalidated it (`wal_status = lost`); it was dropped and created again.
    Invalidated,
    /// The slot's confirmed position is past the checkpoint: it was recreated, advanced, or
    /// read by another consumer, and the changes in between never reached Tidings.
    Ahead {
        /// The slot's `confirmed_flush_lsn`.
        slot_at: Lsn,
    },
}

impl std::fmt::Display for Loss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Loss::Dropped => f.write_str("dropped"),
            Loss::Invalidated => f.write_str("invalidated"),
            Loss::Ahead { slot_at } => {
                write!(f, "ahead of the checkpoint (at {})", format_lsn(*slot_at))
            }
        }
    }
}

/// The fix for a lost slot, shared by every loss.
const RECOVER: &str = "set `on_slot_lost = \"recreate\"` on the connector and restart: Tidings creates the slot again if needed, continues from it, and gives every channel it published to a new epoch so clients resync (they are told continuity was lost). Rows committed while the slot was missing are not streamed: re-insert the outbox rows clients must see";

/// Map an SQL error: connection trouble is transient, the rest needs the operator.
pub fn sql_error(doing: &str, e: tokio_postgres::Error) -> SourceError {
    use tokio_postgres::error::SqlState;
    let code = e.code().cloned();
    let fatal_fix = match &code {
        Some(c) if *c == SqlState::INVALID_PASSWORD => {
            Some("check the user and password in the connection URL")
        }
        Some(c) if *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => Some(
            "allow this user and host in pg_hba.conf (for replication as well as for the database)",
        ),
        Some(c) if *c == SqlState::INVALID_CATALOG_NAME => {
            Some("check the database name in the connection URL")
        }
        Some(c) if *c == SqlState::INSUFFICIENT_PRIVILEGE => {
            Some("grant the connector's role the privileges named above")
        }
        _ => None,
    };
    let what = format!("{doing}: {}", describe(&e));
    // A server without TLS, or a certificate that does not verify, will not fix itself by
    // retrying.
    let fatal_fix = fatal_fix.or_else(|| {
        if what.contains("server does not support TLS") {
            Some("the server has TLS off: enable it (ssl = on with a certificate in postgresql.conf), or use sslmode=prefer or sslmode=disable in the URL")
        } else {
            e.to_string().contains("TLS handshake").then_some(
                "check sslmode and sslrootcert in the URL against the server's certificate",
            )
        }
    });
    match fatal_fix {
        Some(fix) => SourceError::fatal(what, fix),
        None => SourceError::Transient {
            what,
            source: Some(Box::new(e)),
        },
    }
}

/// The server's message (with its detail), or the client error's chain.
pub fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(d) => format!("{} ({d})", db.message()),
            None => db.message().to_owned(),
        },
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(inner) = source {
                s.push_str(": ");
                s.push_str(&inner.to_string());
                source = inner.source();
            }
            s
        }
    }
}

/// Check the server can stream to us, and find or create the slot.
///
/// `resuming` is the stored checkpoint: with one, a missing slot, an invalidated one, or one
/// whose confirmed position is past the checkpoint means changes were lost. Then `recreate`
/// (`on_slot_lost = "recreate"`) recovers and says so in [`SlotState::lost`]; otherwise the
/// answer is a fatal error saying what was lost and how to recover.
pub async fn prepare(
    client: &Client,
    slot: &str,
    publication: &str,
    resuming: Option<Lsn>,
    recreate: bool,
) -> Result<SlotState, SourceError> {
    let q = |doing: &'static str| move |e| sql_error(doing, e);
    let wal_level: String = client
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(q("cannot read wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(SourceError::fatal(
            format!("wal_level is {wal_level:?}; logical replication needs \"logical\""),
            "run ALTER SYSTEM SET wal_level = logical; (as a superuser) and restart Postgres, or start it with -c wal_level=logical",
        ));
    }
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(q("cannot read the role's attributes"))?;
    let (user, can_replicate): (String, bool) = (row.get(0), row.get(1));
    if !can_replicate {
        return Err(SourceError::fatal(
            format!("role {user:?} may not start replication"),
            format!("as a superuser run ALTER ROLE \"{user}\" REPLICATION; or connect as a role that has it"),
        ));
    }
    let publication_exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await
        .map_err(q("cannot look up the publication"))?
        .is_some();
    if !publication_exists {
        return Err(SourceError::fatal(
            format!("publication {publication:?} does not exist in this database"),
            "run `tidings migrate --postgres URL` to create the outbox and its publication, or set the connector's `publication` to an existing one",
        ));
    }
    let found = client
        .query_opt(
            "SELECT slot_type, plugin, database = current_database(), wal_status, \
                    confirmed_flush_lsn::text, \
                    coalesce(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::bigint \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(q("cannot look up the replication slot"))?;
    let Some(row) = found else {
        if let Some(lsn) = resuming {
            if recreate {
                tracing::warn!(%slot, checkpoint = %format_lsn(lsn), "the replication slot was dropped; creating it again (on_slot_lost = \"recreate\")");
                let mut state = create(client, slot).await?;
                state.lost = Some(Loss::Dropped);
                return Ok(state);
            }
            return Err(SourceError::fatal(
                format!(
                    "replication slot {slot:?} does not exist, but this connector's checkpoint is at LSN {}: the slot was dropped, and with it the WAL of every change committed after that point that Tidings had not read yet. Those changes can no longer be streamed",
                    format_lsn(lsn)
                ),
                RECOVER,
            ));
        }
        return create(client, slot).await;
    };
    let (slot_type, plugin, same_db): (String, Option<String>, bool) =
        (row.get(0), row.get(1), row.get(2));
    let wal_status: Option<String> = row.get(3);
    if slot_type != "logical" || plugin.as_deref() != Some("pgoutput") || !same_db {
        return Err(SourceError::fatal(
            format!(
                "replication slot {slot:?} exists but is not a pgoutput logical slot of this database (type {slot_type}, plugin {})",
                plugin.as_deref().unwrap_or("none")
            ),
            "choose another slot name with the connector's `slot` option, or drop that slot if nothing uses it",
        ));
    }
    if wal_status.as_deref() == Some("lost") {
        if !recreate {
            return Err(lost(slot));
        }
        tracing::warn!(%slot, "the replication slot was invalidated; dropping and creating it again (on_slot_lost = \"recreate\")");
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(q("cannot drop the invalidated replication slot"))?;
        let mut state = create(client, slot).await?;
        state.lost = Some(Loss::Invalidated);
        return Ok(state);
    }
    let confirmed: Option<String> = row.get(4);
    let confirmed_flush = confirmed.as_deref().and_then(parse_lsn).unwrap_or(0);
    // Tidings confirms only positions already stored as its checkpoint, so a slot past the
    // checkpoint is not the slot Tidings read from (or someone else read from it).
    let lost = match resuming {
        Some(at) if confirmed_flush > at => {
            if !recreate {
                return Err(SourceError::fatal(
                    format!(
                        "replication slot {slot:?} is at LSN {} but this connector's checkpoint is at LSN {}: the slot was recreated, advanced (pg_replication_slot_advance) or read by another consumer, so the changes committed in between never reached Tidings and can no longer be streamed",
                        format_lsn(confirmed_flush),
                        format_lsn(at)
                    ),
                    format!("{RECOVER}. If another program reads this slot, give each its own slot (the connector's `slot` option)"),
                ));
            }
            tracing::warn!(%slot, checkpoint = %format_lsn(at), slot_at = %format_lsn(confirmed_flush), "the replication slot is past the checkpoint; continuing from it (on_slot_lost = \"recreate\")");
            Some(Loss::Ahead {
                slot_at: confirmed_flush,
            })
        }
        _ => None,
    };
    Ok(SlotState {
        created: false,
        confirmed_flush,
        lag_bytes: row.get(5),
        lost,
    })
}

/// The error for a slot Postgres invalidated.
pub fn lost(slot: &str) -> SourceError {
    SourceError::fatal(
        format!("replication slot {slot:?} was invalidated by Postgres (wal_status = lost, usually max_slot_wal_keep_size was exceeded while Tidings was behind or down): the WAL of changes Tidings had not read yet was removed, and those outbox rows can no longer be streamed"),
        format!("{RECOVER}; raise max_slot_wal_keep_size to survive longer outages"),
    )
}

async fn create(client: &Client, slot: &str) -> Result<SlotState, SourceError> {
    match client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
    {
        Ok(row) => {
            let lsn: String = row.get(0);
            tracing::info!(%slot, lsn = %lsn, "created the replication slot");
            Ok(SlotState {
                created: true,
                confirmed_flush: parse_lsn(&lsn).unwrap_or(0),
                lag_bytes: 0,
                lost: None,
            })
        }
        // Another instance created it in the meantime: stream from it.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {
            Ok(SlotState {
                created: false,
                confirmed_flush: 0,
                lag_bytes: 0,
                lost: None,
            })
        }
        Err(e) => Err(sql_error("cannot create the replication slot", e)),
    }
}
