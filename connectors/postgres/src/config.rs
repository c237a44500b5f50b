//! Settings of one Postgres connector (`[connectors.NAME]` with `type = "postgres"`), with the
//! defaults `tidings serve --postgres URL` uses, checked once at start-up.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
pub use tidings_connectors_core::{ConfigProblem, OnPoison};

/// Default replication slot name.
pub const DEFAULT_SLOT: &str = "tidings";
/// Default publication, created by the migration.
pub const DEFAULT_PUBLICATION: &str = "tidings_outbox";
/// Default outbox table, created by the migration.
pub const DEFAULT_OUTBOX_TABLE: &str = "tidings.outbox";
/// Default prefix of `pg_logical_emit_message` messages that are outbox messages.
pub const DEFAULT_MESSAGE_PREFIX: &str = "tidings";
/// Default interval of standby status updates (as `pg_recvlogical`).
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
/// Default longest silence of a connection to Postgres before it is taken for dead.
pub const DEFAULT_NETWORK_TIMEOUT: Duration = Duration::from_secs(60);
/// Default most outbox rows held in memory from one transaction before they are handed on.
pub const DEFAULT_MAX_BATCH_MESSAGES: usize = 10_000;
/// Default most published outbox rows deleted in one statement.
pub const DEFAULT_CLEANUP_BATCH: usize = 1_000;
/// Default pause between clean-up statements when rows are waiting.
pub const DEFAULT_CLEANUP_INTERVAL: Duration = Duration::from_millis(200);
/// Default `retained_wal_warning`: a slot holding back more WAL than this is worth a look
/// long before most disks fill.
pub const DEFAULT_RETAINED_WAL_WARNING: u64 = 4 << 30;

/// A size in bytes as configured: an integer of bytes, or a string such as `"512MiB"` or
/// `"4 GB"` (units B, kB, MB, GB, TB and KiB, MiB, GiB, TiB), read by [`ByteSize::bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ByteSize {
    /// A number of bytes.
    Bytes(u64),
    /// A number with a unit.
    Text(String),
}

impl ByteSize {
    /// The size in bytes, or what is wrong with the text.
    pub fn bytes(&self) -> Result<u64, String> {
        let text = match self {
            ByteSize::Bytes(n) => return Ok(*n),
            ByteSize::Text(t) => t.trim(),
        };
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let unit_bytes: u64 = match unit.trim() {
            "" | "B" => 1,
            "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => {
                return Err(format!(
                    "{text:?} has an unknown unit: use B, kB, MB, GB, TB, KiB, MiB, GiB or TiB"
                ))
            }
        };
        number
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(unit_bytes))
            .ok_or_else(|| format!("{text:?} is not a size such as \"4GiB\" or a number of bytes"))
    }
}

/// What to do when the replication slot no longer has the changes after the checkpoint
/// (dropped, invalidated by Postgres, recreated, or advanced by someone else).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnSlotLost {
    /// Stop the connector, saying what was lost and how to recover.
    #[default]
    Fail,
    /// Create the slot again (dropping an invalidated one first), continue from it, and give
    /// every channel this connector published to a new epoch so clients resync.
    Recreate,
}

/// A connection URL (`postgres://user:password@host:port/db?sslmode=require`) or libpq
/// key/value string. Never printed with its password.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ConnectionUrl(String);

impl ConnectionUrl {
    /// Wrap a URL.
    pub fn new(url: impl Into<String>) -> Self {
        ConnectionUrl(url.into())
    }

    /// The URL itself, password included.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match crate::connection::Settings::parse(&self.0) {
            Ok(s) => write!(f, "{:?}", s.display()),
            Err(_) => f.write_str("<unparsable url>"),
        }
    }
}

/// Settings of one Postgres connector.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL; the role needs REPLICATION (or superuser).
    pub url: ConnectionUrl,
    /// Logical replication slot, created when missing.
    #[serde(default = "default_slot")]
    pub slot: String,
    /// Publication streamed (must include the outbox table).
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Outbox table as `schema.table`.
    #[serde(default = "default_outbox_table")]
    pub outbox_table: String,
    /// `pg_logical_emit_message` prefix of table-free outbox messages.
    #[serde(default = "default_message_prefix")]
    pub message_prefix: String,
    /// Channel template for plain table capture, e.g. `products:{store_id}`: every table of
    /// the publication other than the outbox becomes row-change messages. Off when unset.
    #[serde(default)]
    pub channel: Option<String>,
    /// Channel of table-level events (a truncate of a captured table); default `postgres:NAME`.
    #[serde(default)]
    pub control_channel: Option<String>,
    /// Channel that poison rows go to; default `dead:NAME`.
    #[serde(default)]
    pub dead_letter: Option<String>,
    /// What to do with a poison row.
    #[serde(default)]
    pub on_poison: OnPoison,
    /// What to do when the slot lost changes Tidings had not read.
    #[serde(default)]
    pub on_slot_lost: OnSlotLost,
    /// Delete outbox rows once their messages are durable in the log.
    #[serde(default = "default_true")]
    pub cleanup: bool,
    /// Most rows deleted in one statement.
    #[serde(default = "default_cleanup_batch")]
    pub cleanup_batch: usize,
    /// Pause between clean-up statements while rows are waiting.
    #[serde(default = "default_cleanup_interval", with = "humantime_serde")]
    pub cleanup_interval: Duration,
    /// Interval of standby status updates (confirmations) to Postgres.
    #[serde(default = "default_status_interval", with = "humantime_serde")]
    pub status_interval: Duration,
    /// How long a connection to Postgres may stay silent before it is taken for dead and
    /// replaced: the replication session (on which Postgres sends a keepalive every
    /// `wal_sender_timeout / 2` while nothing else flows) and each SQL round trip (lag
    /// readings, channel tracking, outbox clean-up). A connection that dies without a reset (a
    /// NAT or firewall that dropped its state, a frozen host) would otherwise hang forever.
    #[serde(default = "default_network_timeout", with = "humantime_serde")]
    pub network_timeout: Duration,
    /// Memory budget: most rows of one transaction held before they are appended (a larger
    /// transaction is appended in parts; see docs/postgres.md).
    #[serde(default = "default_max_batch_messages")]
    pub max_batch_messages: usize,
    /// Retained WAL (`pg_current_wal_lsn() - restart_lsn`) above which the lag reader warns
    /// and the status says `retained_wal_warning: true`: a slot whose reader stopped keeps WAL
    /// until the database's disk is full.
    #[serde(default = "default_retained_wal_warning")]
    pub retained_wal_warning: ByteSize,
}

fn default_slot() -> String {
    DEFAULT_SLOT.into()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.into()
}
fn default_outbox_table() -> String {
    DEFAULT_OUTBOX_TABLE.into()
}
fn default_message_prefix() -> String {
    DEFAULT_MESSAGE_PREFIX.into()
}
fn default_true() -> bool {
    true
}
fn default_cleanup_batch() -> usize {
    DEFAULT_CLEANUP_BATCH
}
fn default_cleanup_interval() -> Duration {
    DEFAULT_CLEANUP_INTERVAL
}
fn default_status_interval() -> Duration {
    DEFAULT_STATUS_INTERVAL
}
fn default_network_timeout() -> Duration {
    DEFAULT_NETWORK_TIMEOUT
}
fn default_max_batch_messages() -> usize {
    DEFAULT_MAX_BATCH_MESSAGES
}
fn default_retained_wal_warning() -> ByteSize {
    ByteSize::Bytes(DEFAULT_RETAINED_WAL_WARNING)
}

/// A Postgres identifier we accept for slots and publications: lowercase letters, digits and
/// `_`, at most 63 bytes, not starting with a digit. Slot names allow nothing else anyway,
/// and keeping publications to the same set means they never need quoting.
pub fn valid_identifier(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PostgresConfig {
    /// The settings `tidings serve --postgres URL` uses.
    pub fn with_defaults(url: ConnectionUrl) -> Self {
        PostgresConfig {
            url,
            slot: default_slot(),
            publication: default_publication(),
            outbox_table: default_outbox_table(),
            message_prefix: default_message_prefix(),
            channel: None,
            control_channel: None,
            dead_letter: None,
            on_poison: OnPoison::default(),
            on_slot_lost: OnSlotLost::default(),
            cleanup: true,
            cleanup_batch: DEFAULT_CLEANUP_BATCH,
            cleanup_interval: DEFAULT_CLEANUP_INTERVAL,
            status_interval: DEFAULT_STATUS_INTERVAL,
            network_timeout: DEFAULT_NETWORK_TIMEOUT,
            max_batch_messages: DEFAULT_MAX_BATCH_MESSAGES,
            retained_wal_warning: default_retained_wal_warning(),
        }
    }

    /// Check every value; the first problem names its field.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        let bad = |field: &str, problem: String| Err(ConfigProblem::new(field, problem));
        if let Err(e) = crate::connection::Settings::parse(self.url.expose()) {
            return bad("url", e.to_string());
        }
        if !valid_identifier(&self.slot) {
            return bad(
                "slot",
                format!(
                    "{:?} is not a valid slot name: use 1 to 63 lowercase letters, digits and '_'",
                    self.slot
                ),
            );
        }
        if !valid_identifier(&self.publication) {
            return bad(
                "publication",
                format!("{:?} is not a valid publication name: use 1 to 63 lowercase letters, digits and '_'", self.publication),
            );
        }
        match self.outbox_table.split_once('.') {
            Some((schema, table)) if valid_identifier(schema) && valid_identifier(table) => {}
            _ => {
                return bad(
                    "outbox_table",
                    format!(
                        "{:?} must be schema.table in lowercase letters, digits and '_'",
                        self.outbox_table
                    ),
                )
            }
        }
        if let Some(template) = &self.channel {
            if let Err(e) = tidings_connectors_core::route::ChannelTemplate::parse(template) {
                return bad("channel", e.problem);
            }
        }
        if self.message_prefix.is_empty() || self.message_prefix.contains('\0') {
            return bad("message_prefix", "must be a non-empty string".into());
        }
        if !(1..=100_000).contains(&self.cleanup_batch) {
            return bad(
                "cleanup_batch",
                format!("is {}; it must be between 1 and 100000", self.cleanup_batch),
            );
        }
        if !(100..=1_000_000).contains(&self.max_batch_messages) {
            return bad(
                "max_batch_messages",
                format!(
                    "is {}; it must be between 100 and 1000000",
                    self.max_batch_messages
                ),
            );
        }
        if self.status_interval < Duration::from_millis(100)
            || self.status_interval > Duration::from_secs(3600)
        {
            return bad(
                "status_interval",
                "must be between 100ms and 1h (and shorter than the server's wal_sender_timeout)"
                    .into(),
            );
        }
        if self.network_timeout < Duration::from_secs(1)
            || self.network_timeout > Duration::from_secs(3600)
        {
            return bad(
                "network_timeout",
                format!(
                    "is {:?}; it must be between 1s and 1h (the default, 60s, matches Postgres' own wal_receiver_timeout)",
                    self.network_timeout
                ),
            );
        }
        match self.retained_wal_warning.bytes() {
            Err(problem) => return bad("retained_wal_warning", problem),
            Ok(0) => return bad("retained_wal_warning", "must be more than 0 bytes".into()),
            Ok(_) => {}
        }
        Ok(())
    }

    /// `retained_wal_warning` in bytes. Call after [`PostgresConfig::validate`].
    pub fn retained_wal_warning_bytes(&self) -> u64 {
        self.retained_wal_warning
            .bytes()
            .unwrap_or(DEFAULT_RETAINED_WAL_WARNING)
    }

    /// The channel of table-level events of connector `name`: as configured, or
    /// `postgres:NAME`.
    pub fn control_channel(&self, name: &str) -> String {
        self.control_channel
            .clone()
            .unwrap_or_else(|| format!("postgres:{name}"))
    }

    /// The outbox table as (schema, table). Call after [`PostgresConfig::validate`].
    pub fn outbox(&self) -> (&str, &str) {
        self.outbox_table
            .split_once('.')
            .unwrap_or(("tidings", "outbox"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> PostgresConfig {
        serde_json::from_value(toml_to_json(toml_text)).unwrap()
    }

    /// Tiny stand-in for TOML in unit tests: `key = "value"` lines only.
    fn toml_to_json(text: &str) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let (k, v) = line.split_once('=').unwrap();
            let v = v.trim();
            let v = if let Some(s) = v.strip_prefix('"') {
                serde_json::Value::String(s.trim_end_matches('"').into())
            } else {
                serde_json::from_str(v).unwrap()
            };
            map.insert(k.trim().into(), v);
        }
        serde_json::Value::Object(map)
    }

    #[test]
    fn defaults_validate() {
        let c = parse("url = \"postgres://u:p@localhost/db\"");
        assert_eq!(c.slot, "tidings");
        assert_eq!(c.outbox(), ("tidings", "outbox"));
        assert_eq!(c.network_timeout, Duration::from_secs(60));
        c.validate().unwrap();
        let c = parse("url = \"postgres://u:p@localhost/db\"\nnetwork_timeout = \"15s\"");
        assert_eq!(c.network_timeout, Duration::from_secs(15));
        assert!(
            !format!("{c:?}").contains(":p@"),
            "the password never prints: {c:?}"
        );
    }

    #[test]
    fn bad_values_name_their_field() {
        let mut c = PostgresConfig::with_defaults(ConnectionUrl::new("postgres://u@h/db"));
        c.slot = "Bad-Slot".into();
        assert_eq!(c.validate().unwrap_err().field, "slot");
        c.slot = "ok".into();
        c.outbox_table = "outbox".into();
        assert_eq!(c.validate().unwrap_err().field, "outbox_table");
        c.outbox_table = "a.b".into();
        c.max_batch_messages = 0;
        assert_eq!(c.validate().unwrap_err().field, "max_batch_messages");
        c.max_batch_messages = 1000;
        c.network_timeout = Duration::from_millis(500);
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "network_timeout");
        assert!(e.problem.contains("between 1s and 1h"), "{e}");
        c.network_timeout = DEFAULT_NETWORK_TIMEOUT;
        c.url = ConnectionUrl::new("postgres://h/db?sslmode=sometimes");
        let e = c.validate().unwrap_err();
        assert_eq!(e.field, "url");
        assert!(e.problem.contains("sslmode"), "{e}");
        let unknown = serde_json::from_value::<PostgresConfig>(serde_json::json!({
            "url": "postgres://h/db", "slots": "x"
        }));
        assert!(unknown.unwrap_err().to_string().contains("slots"));
    }

    #[test]
    fn on_slot_lost_defaults_to_fail_and_names_its_values() {
        let c = parse("url = \"postgres://u@h/db\"");
        assert_eq!(c.on_slot_lost, OnSlotLost::Fail);
        let c = parse("url = \"postgres://u@h/db\"\non_slot_lost = \"recreate\"");
        assert_eq!(c.on_slot_lost, OnSlotLost::Recreate);
        let bad = serde_json::from_value::<PostgresConfig>(serde_json::json!({
            "url": "postgres://h/db", "on_slot_lost": "ignore"
        }));
        let e = bad.unwrap_err().to_string();
        assert!(e.contains("fail") && e.contains("recreate"), "{e}");
    }

    #[test]
    fn retained_wal_warning_takes_bytes_or_a_size_with_a_unit() {
        let c = parse("url = \"postgres://u@h/db\"");
        assert_eq!(c.retained_wal_warning_bytes(), 4 << 30);
        let c = parse("url = \"postgres://u@h/db\"\nretained_wal_warning = \"512MiB\"");
        assert_eq!(c.retained_wal_warning_bytes(), 512 << 20);
        let c = parse("url = \"postgres://u@h/db\"\nretained_wal_warning = \"2 GB\"");
        assert_eq!(c.retained_wal_warning_bytes(), 2_000_000_000);
        let c: PostgresConfig = serde_json::from_value(serde_json::json!({
            "url": "postgres://h/db", "retained_wal_warning": 12345
        }))
        .unwrap();
        assert_eq!(c.retained_wal_warning_bytes(), 12345);
        for bad in ["4 gigs", "GiB", "0", "99999999999TiB"] {
            let mut c = PostgresConfig::with_defaults(ConnectionUrl::new("postgres://u@h/db"));
            c.retained_wal_warning = ByteSize::Text(bad.into());
            let e = c.validate().unwrap_err();
            assert_eq!(e.field, "retained_wal_warning", "{bad}: {e}");
        }
    }

    #[test]
    fn identifiers() {
        assert!(valid_identifier("tidings_2"));
        assert!(!valid_identifier("2x"));
        assert!(!valid_identifier("a;drop"));
        assert!(!valid_identifier(&"a".repeat(64)));
    }
}
