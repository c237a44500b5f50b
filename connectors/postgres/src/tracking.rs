//! The channels a connector has published to, kept in `tidings.connector_channels`
//! (migration 2), so that after a slot loss the connector can name every channel whose
//! history has a hole and ask the server to give it a new epoch.
//!
//! A channel is recorded *before* the first batch that publishes to it is handed out, so a
//! channel with a message in the log is always in the table, across crashes. Channels already
//! recorded by this process are remembered (up to [`MAX_KNOWN`]), so a stream that keeps
//! publishing to the same channels costs nothing; a transaction that opens new channels costs
//! one `INSERT … ON CONFLICT DO NOTHING` round trip.

use std::collections::HashSet;
use std::time::Duration;

use tidings_connectors_core::{Publish, SourceError};
use tokio_postgres::Client;

use crate::connection::{within, NoAnswer, Settings};
use crate::slot::{describe, sql_error};

/// An SQL error on the table: missing privileges get the exact GRANT.
fn table_error(doing: &str, e: tokio_postgres::Error) -> SourceError {
    if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
        return SourceError::Fatal {
            what: format!("{doing}: {}", describe(&e)),
            fix: "as the owner of the tidings schema run: GRANT USAGE ON SCHEMA tidings TO <connector role>; GRANT SELECT, INSERT ON tidings.connector_channels TO <connector role>;".into(),
        };
    }
    sql_error(doing, e)
}

/// Most channel names remembered as recorded; past it the memory is cleared (the next
/// message on each channel records it again, which is harmless).
pub const MAX_KNOWN: usize = 100_000;

/// Records channels for connector `name`.
pub struct Tracker {
    name: String,
    settings: Settings,
    client: Option<Client>,
    known: HashSet<String>,
    /// Longest wait for an answer (`network_timeout`).
    limit: Duration,
}

impl Tracker {
    /// A tracker for the connector `name`; connects on first use, and gives up on a round
    /// trip unanswered after `limit`.
    pub fn new(name: &str, settings: Settings, limit: Duration) -> Self {
        Tracker {
            name: name.to_owned(),
            settings,
            client: None,
            known: HashSet::new(),
            limit,
        }
    }

    /// The answer of one round trip (see [`within`]): the session is dropped unless it
    /// succeeded, and no answer in time is a retryable error saying what was being done.
    fn settle<T>(
        &mut self,
        doing: &str,
        answer: Result<Result<T, tokio_postgres::Error>, NoAnswer>,
    ) -> Result<Result<T, tokio_postgres::Error>, SourceError> {
        if !matches!(answer, Ok(Ok(_))) {
            self.client = None;
        }
        answer.map_err(|silent| silent.doing(doing))
    }

    async fn client(&mut self) -> Result<&Client, SourceError> {
        if self.client.as_ref().is_none_or(Client::is_closed) {
            let doing = format!("cannot connect to {}", self.settings.display());
            let c = within(self.limit, self.settings.connect_sql())
                .await
                .map_err(|silent| silent.doing(&doing))?
                .map_err(|e| sql_error(&doing, e))?;
            self.client = Some(c);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }

    /// Check that the table exists (migration 2), so a missing one is found at start.
    pub async fn check(&mut self) -> Result<(), SourceError> {
        const DOING: &str = "cannot look up tidings.connector_channels";
        let limit = self.limit;
        let c = self.client().await?;
        let answer = within(
            limit,
            c.query_one(
                "SELECT to_regclass('tidings.connector_channels') IS NOT NULL",
                &[],
            ),
        )
        .await;
        let found = self
            .settle(DOING, answer)?
            .map_err(|e| table_error(DOING, e))?
            .get::<_, bool>(0);
        if found {
            Ok(())
        } else {
            Err(SourceError::Fatal {
                what: "the table tidings.connector_channels (migration 2) does not exist; the connector records there the channels it publishes to, so that a lost replication slot can give them a new epoch".into(),
                fix: "run `tidings migrate --postgres URL` (it is idempotent) and restart".into(),
            })
        }
    }

    /// Record the channels of `messages` not recorded yet. Call before handing them out.
    pub async fn record(&mut self, messages: &[Publish]) -> Result<(), SourceError> {
        let mut new: Vec<&str> = messages
            .iter()
            .map(|m| m.channel.as_str())
            .filter(|c| !self.known.contains(*c))
            .collect();
        if new.is_empty() {
            return Ok(());
        }
        new.sort_unstable();
        new.dedup();
        const DOING: &str = "cannot record channels in tidings.connector_channels";
        let (name, limit) = (self.name.clone(), self.limit);
        let c = self.client().await?;
        let answer = within(
            limit,
            c.execute(
                "INSERT INTO tidings.connector_channels (connector, channel) \
                 SELECT $1, unnest($2::text[]) ON CONFLICT DO NOTHING",
                &[&name, &new],
            ),
        )
        .await;
        self.settle(DOING, answer)?
            .map_err(|e| table_error(DOING, e))?;
        if self.known.len() + new.len() > MAX_KNOWN {
            self.known.clear();
        }
        self.known.extend(new.into_iter().map(str::to_owned));
        Ok(())
    }

    /// The primary key columns of the table `oid`, in key order (empty without one).
    pub async fn primary_key(&mut self, oid: u32) -> Result<Vec<String>, SourceError> {
        const DOING: &str = "cannot look up a captured table's primary key";
        let limit = self.limit;
        let c = self.client().await?;
        let answer = within(
            limit,
            c.query(
                "SELECT a.attname::text FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1 AND i.indisprimary ORDER BY k.n",
                &[&oid],
            ),
        )
        .await;
        let rows = self
            .settle(DOING, answer)?
            .map_err(|e| sql_error(DOING, e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Every channel recorded for this connector.
    pub async fn channels(&mut self) -> Result<Vec<String>, SourceError> {
        const DOING: &str = "cannot read tidings.connector_channels";
        let (name, limit) = (self.name.clone(), self.limit);
        let c = self.client().await?;
        let answer = within(
            limit,
            c.query(
                "SELECT channel FROM tidings.connector_channels WHERE connector = $1 ORDER BY channel",
                &[&name],
            ),
        )
        .await;
        let rows = self
            .settle(DOING, answer)?
            .map_err(|e| table_error(DOING, e))?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
