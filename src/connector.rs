//! Database connectors from the configuration: `[connectors.NAME]` tables, validated with the
//! rest of the configuration and turned into [`Source`]s for [`crate::runtime::Server`].
//!
//! A connector's name keys its checkpoint in the log (renaming it starts it from scratch) and
//! names its default dead-letter channel, `dead:NAME`.

use std::collections::BTreeMap;

use serde::Deserialize;
use tidings_connector_mongodb::{MongoConfig, MongoSource};
use tidings_connector_postgres::{PostgresConfig, PostgresSource};
use tidings_connectors_core::Source;

use crate::channel::ChannelName;
use crate::config::{Config, ConfigError};
use crate::source::{PoisonPolicy, SourceOptions, SourceStatus};

/// Name `tidings serve --postgres URL` gives its connector.
pub const DEFAULT_POSTGRES_NAME: &str = "postgres";
/// Name `tidings serve --mongodb URI` gives its connector.
pub const DEFAULT_MONGODB_NAME: &str = "mongodb";

/// One configured connector, by `type`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConnectorConfig {
    /// A Postgres outbox read over logical replication (`connectors/postgres`).
    Postgres(PostgresConfig),
    /// A MongoDB change stream (`connectors/mongodb`).
    Mongodb(MongoConfig),
}

fn invalid(field: String, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        problem: problem.into(),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A channel a connector writes to besides its routed ones: the configured name, or the default.
fn own_channel(
    name: &str,
    field: &str,
    configured: Option<&str>,
    default: String,
) -> Result<ChannelName, ConfigError> {
    let text = configured.map(str::to_owned).unwrap_or(default);
    ChannelName::parse(&text).map_err(|e| {
        invalid(
            format!("connectors.{name}.{field}"),
            format!("{text:?} is not a valid channel name: {e}"),
        )
    })
}

/// The dead-letter channel of connector `name`.
fn dead_letter(name: &str, configured: Option<&str>) -> Result<ChannelName, ConfigError> {
    own_channel(name, "dead_letter", configured, format!("dead:{name}"))
}

/// Check every connector; the first problem is named by its dotted path.
pub fn validate(connectors: &BTreeMap<String, ConnectorConfig>) -> Result<(), ConfigError> {
    for (name, connector) in connectors {
        if !valid_name(name) {
            return Err(invalid(
                format!("connectors.{name:?}"),
                "is not a valid connector name: use 1 to 64 letters, digits, '_' and '-'",
            ));
        }
        match connector {
            ConnectorConfig::Postgres(pg) => {
                pg.validate()
                    .map_err(|p| invalid(format!("connectors.{name}.{}", p.field), p.problem))?;
                dead_letter(name, pg.dead_letter.as_deref())?;
                postgres_control_channel(name, pg.control_channel.as_deref())?;
            }
            ConnectorConfig::Mongodb(mongo) => {
                mongo
                    .validate()
                    .map_err(|p| invalid(format!("connectors.{name}.{}", p.field), p.problem))?;
                dead_letter(name, mongo.dead_letter.as_deref())?;
                control_channel(name, mongo.control_channel.as_deref())?;
            }
        }
    }
    Ok(())
}

/// The control channel of MongoDB connector `name` (lifecycle events, resync).
fn control_channel(name: &str, configured: Option<&str>) -> Result<ChannelName, ConfigError> {
    own_channel(
        name,
        "control_channel",
        configured,
        format!("mongodb:{name}"),
    )
}

/// A source whose channel resets are checked here: a connector that recorded a channel the
/// log refused (an invalid name went to the dead-letter channel instead) must not make the
/// whole reset fail.
struct ValidResets<S>(S);

#[async_trait::async_trait]
impl<S: Source> Source for ValidResets<S> {
    async fn start(
        &mut self,
        from: Option<tidings_connectors_core::SourcePosition>,
    ) -> Result<(), tidings_connectors_core::SourceError> {
        self.0.start(from).await
    }
    async fn next_batch(
        &mut self,
    ) -> Result<tidings_connectors_core::Batch, tidings_connectors_core::SourceError> {
        self.0.next_batch().await
    }
    async fn committed(
        &mut self,
        position: &tidings_connectors_core::SourcePosition,
    ) -> Result<(), tidings_connectors_core::SourceError> {
        self.0.committed(position).await
    }
    fn take_resets(&mut self) -> Vec<String> {
        let mut resets = self.0.take_resets();
        resets.retain(|c| ChannelName::parse(c).is_ok());
        resets
    }
}

/// The control channel of Postgres connector `name` (a truncate of a captured table).
fn postgres_control_channel(
    name: &str,
    configured: Option<&str>,
) -> Result<ChannelName, ConfigError> {
    own_channel(
        name,
        "control_channel",
        configured,
        format!("postgres:{name}"),
    )
}

/// What `GET /v1/connectors` reports about one connector.
struct Registered {
    /// The configured `type`.
    kind: &'static str,
    /// Kept by the runner ([`crate::source::run`]).
    run: std::sync::Arc<SourceStatus>,
    /// Postgres: the slot's latest lag reading.
    slot: Option<std::sync::Arc<tidings_connector_postgres::lag::SlotStatus>>,
}

/// Every connector built in this process, by name, registered when connectors are built.
/// Process-wide (connectors are built before the server exists): one server per process; a
/// connector built again under the same name replaces the earlier one.
static STATUS: std::sync::LazyLock<parking_lot::Mutex<BTreeMap<String, Registered>>> =
    std::sync::LazyLock::new(Default::default);

/// The status of every connector built in this process: its state (`starting`, `running`,
/// `retrying` with the attempt, `stopped` with the reason), last error, last checkpoint and
/// counters, and for Postgres the slot's latest lag reading (`null` until the first, or while
/// the slot cannot be read). docs/operations.md describes each field.
pub fn status() -> serde_json::Value {
    let connectors: Vec<serde_json::Value> = STATUS
        .lock()
        .iter()
        .map(|(name, c)| {
            let mut v = serde_json::json!({ "name": name, "type": c.kind });
            if let (Some(obj), Ok(serde_json::Value::Object(run))) =
                (v.as_object_mut(), serde_json::to_value(c.run.report()))
            {
                obj.extend(run);
                if let Some(slot) = &c.slot {
                    let lag = slot.get();
                    obj.insert("slot_lag_bytes".into(), lag.map(|l| l.lag_bytes).into());
                    obj.insert(
                        "retained_wal_bytes".into(),
                        lag.map(|l| l.retained_bytes).into(),
                    );
                }
            }
            v
        })
        .collect();
    serde_json::json!({ "connectors": connectors })
}

/// Sources with their runner options, as [`crate::runtime::Server::start_with_sources`] takes them.
pub type Sources = Vec<(SourceOptions, Box<dyn Source>)>;

/// Build every configured connector as a source with its runner options.
pub fn build(config: &Config) -> Result<Sources, ConfigError> {
    validate(&config.connectors)?;
    let mut sources: Sources = Vec::new();
    for (name, connector) in &config.connectors {
        let status = std::sync::Arc::new(SourceStatus::default());
        // Each connector yields its source and whether poison goes to its dead-letter channel.
        let (source, to_dead_letter, dlq): (Box<dyn Source>, bool, ChannelName) = match connector {
            ConnectorConfig::Postgres(pg) => {
                let dlq = dead_letter(name, pg.dead_letter.as_deref())?;
                let control = postgres_control_channel(name, pg.control_channel.as_deref())?;
                let mut source = PostgresSource::new(name.clone(), pg.clone(), dlq.as_str())
                    .map_err(|e| {
                        invalid(
                            format!("connectors.{name}.{}", e.problem.field),
                            e.problem.problem,
                        )
                    })?
                    .with_control_channel(control.as_str());
                source.observe_lag(std::sync::Arc::new(|connector, lag| {
                    crate::metrics::postgres_slot(connector, lag.lag_bytes, lag.retained_bytes)
                }));
                STATUS.lock().insert(
                    name.clone(),
                    Registered {
                        kind: "postgres",
                        run: status.clone(),
                        slot: Some(source.status()),
                    },
                );
                let source = ValidResets(source);
                let to_dlq = matches!(
                    pg.on_poison,
                    tidings_connector_postgres::OnPoison::DeadLetter
                );
                (Box::new(source), to_dlq, dlq)
            }
            ConnectorConfig::Mongodb(mongo) => {
                let dlq = dead_letter(name, mongo.dead_letter.as_deref())?;
                let control = control_channel(name, mongo.control_channel.as_deref())?;
                let source =
                    MongoSource::new(name.clone(), mongo.clone(), dlq.as_str(), control.as_str())
                        .map_err(|p| invalid(format!("connectors.{name}.{}", p.field), p.problem))?;
                STATUS.lock().insert(
                    name.clone(),
                    Registered {
                        kind: "mongodb",
                        run: status.clone(),
                        slot: None,
                    },
                );
                let to_dlq = matches!(
                    mongo.on_poison,
                    tidings_connector_mongodb::OnPoison::DeadLetter
                );
                (Box::new(source), to_dlq, dlq)
            }
        };
        sources.push((
            SourceOptions {
                name: name.clone(),
                poison: if to_dead_letter {
                    PoisonPolicy::DeadLetter(dlq)
                } else {
                    PoisonPolicy::Stop
                },
                max_message_bytes: config.limits.max_message_bytes,
                status,
            },
            source,
        ));
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_connectors_parse_and_validate() {
        let c = Config::from_toml(
            r#"
            [connectors.orders]
            type = "postgres"
            url = "postgres://app:secret@db/shop"
            slot = "orders_slot"
            dead_letter = "dead:orders-x"
            cleanup_batch = 500
            status_interval = "2s"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let sources = build(&c).unwrap();
        assert_eq!(sources.len(), 1);
        assert_eq!(sources[0].0.name, "orders");
        assert_eq!(
            sources[0].0.poison,
            PoisonPolicy::DeadLetter(ChannelName::parse("dead:orders-x").unwrap())
        );
        assert!(
            !format!("{c:?}").contains("secret"),
            "the password never prints"
        );
    }

    #[test]
    fn mongodb_connectors_parse_and_validate() {
        let c = Config::from_toml(
            r#"
            [connectors.shop]
            type = "mongodb"
            uri = "mongodb://app:secret@db:27017/?replicaSet=rs0"
            collection = "shop.orders"
            channel = "store:{fullDocument.storeId}"
            on_poison = "stop"
            "#,
        )
        .unwrap();
        c.validate().unwrap();
        let sources = build(&c).unwrap();
        assert_eq!(sources[0].0.name, "shop");
        assert_eq!(sources[0].0.poison, PoisonPolicy::Stop);
        assert!(
            !format!("{c:?}").contains("secret"),
            "the password never prints"
        );
        let field = |toml: &str| match Config::from_toml(toml).map(|c| c.validate()) {
            Ok(Err(ConfigError::Invalid { field, .. })) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        let base = "[connectors.shop]\ntype = \"mongodb\"\nuri = \"mongodb://h\"\n";
        assert_eq!(field(base), "connectors.shop.collection");
        assert_eq!(
            field(&format!(
                "{base}collection = \"a.b\"\nchannel = \"x\"\ncontrol_channel = \"a b\"\n"
            )),
            "connectors.shop.control_channel"
        );
        assert_eq!(
            field(&format!(
                "{base}collection = \"a.b\"\npipeline = [1]\nchannel = \"x\"\n"
            )),
            "connectors.shop.pipeline[0]"
        );
    }

    #[test]
    fn bad_connectors_name_the_dotted_field() {
        let field = |toml: &str| match Config::from_toml(toml).map(|c| c.validate()) {
            Ok(Err(ConfigError::Invalid { field, .. })) => field,
            other => panic!("expected an invalid field, got {other:?}"),
        };
        assert_eq!(
            field("[connectors.orders]\ntype = \"postgres\"\nurl = \"postgres://u@h/d\"\nslot = \"Bad Slot\"\n"),
            "connectors.orders.slot"
        );
        assert_eq!(
            field("[connectors.orders]\ntype = \"postgres\"\nurl = \"postgres://h/d\"\n"),
            "connectors.orders.url"
        );
        assert_eq!(
            field("[connectors.orders]\ntype = \"postgres\"\nurl = \"postgres://u@h/d\"\ndead_letter = \"no spaces\"\n"),
            "connectors.orders.dead_letter"
        );
        assert_eq!(
            field("[connectors.\"a b\"]\ntype = \"postgres\"\nurl = \"postgres://u@h/d\"\n"),
            "connectors.\"a b\""
        );
        let err = Config::from_toml(
            "[connectors.orders]\ntype = \"postgres\"\nurl = \"postgres://u@h/d\"\nslott = \"x\"\n",
        )
        .unwrap_err();
        assert!(err.contains("slott"), "{err}");
        let err = Config::from_toml("[connectors.orders]\ntype = \"oracle\"\n").unwrap_err();
        assert!(err.contains("oracle"), "{err}");
    }
}
