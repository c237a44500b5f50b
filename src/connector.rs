//! The connectors a server runs: each built from a [`Context`] the runtime hands it, after the
//! server's metrics exist, and its status kept in the server's [`ConnectorRegistry`] for
//! `GET /v1/connectors`. Which connectors there are, and their checked settings, come from the
//! [`Resolved`] configuration (see [`crate::config::ConnectorConfig`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use tidings_connectors_core::{Context, OnPoison, Source, StatusFields};

use crate::config::{ConfigError, Resolved};
use crate::metrics::Metrics;
use crate::source::{PoisonPolicy, SourceOptions, SourceStatus};

/// What `GET /v1/connectors` reports about one connector.
struct Registered {
    /// The configured `type`.
    kind: &'static str,
    /// Kept by the runner ([`crate::source::run`]).
    run: Arc<SourceStatus>,
    /// The connector's own fields (Postgres: the slot's latest lag reading).
    fields: StatusFields,
}

/// Every connector one server runs, by name. Owned by that server's runtime (two servers in
/// one process each have their own), filled when the connectors are built, read through the
/// app state.
#[derive(Default)]
pub struct ConnectorRegistry(BTreeMap<String, Registered>);

impl ConnectorRegistry {
    /// The status of every connector: its state (`starting`, `running`, `retrying` with the
    /// attempt, `stopped` with the reason), last error, last checkpoint and counters, and the
    /// connector's own fields (Postgres: the slot's latest lag reading, `null` until the first,
    /// or while the slot cannot be read). docs/operations.md describes each field.
    pub fn status(&self) -> serde_json::Value {
        let connectors: Vec<serde_json::Value> = self
            .0
            .iter()
            .map(|(name, c)| {
                let mut v = serde_json::json!({ "name": name, "type": c.kind });
                if let (Some(obj), Ok(serde_json::Value::Object(run))) =
                    (v.as_object_mut(), serde_json::to_value(c.run.report()))
                {
                    obj.extend(run);
                    obj.extend(c.fields.snapshot());
                }
                v
            })
            .collect();
        serde_json::json!({ "connectors": connectors })
    }

    /// The names of the connectors stopped by an error only the operator can fix, in name
    /// order: what `/readyz` names (the reasons, which name hosts and tables, stay behind
    /// `GET /v1/connectors`).
    pub fn stopped(&self) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(_, c)| c.run.failed())
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

/// Sources with their runner options, as [`crate::runtime::Server::start_with_sources`] takes them.
pub type Sources = Vec<(SourceOptions, Box<dyn Source>)>;

/// Build every connector of `config`, each reporting its gauges through `metrics`: the
/// registry of their status, and the sources with their runner options.
pub fn build(
    config: &Resolved,
    metrics: &Metrics,
) -> Result<(ConnectorRegistry, Sources), ConfigError> {
    let mut registry = ConnectorRegistry::default();
    let mut sources: Sources = Vec::with_capacity(config.connectors().len());
    for resolved in config.connectors() {
        let name = &resolved.name;
        let connector = config.connectors[name].connector();
        let fields = StatusFields::default();
        let ctx = Context {
            name: name.clone(),
            dead_letter: resolved.dead_letter.as_str().to_owned(),
            status: fields.clone(),
            metrics: metrics.connector(name),
        };
        let source = connector.build(ctx).map_err(|p| ConfigError::Invalid {
            field: format!("connectors.{name}.{}", p.field),
            problem: p.problem,
        })?;
        let status = Arc::new(SourceStatus::default());
        registry.0.insert(
            name.clone(),
            Registered {
                kind: connector.kind(),
                run: status.clone(),
                fields,
            },
        );
        sources.push((
            SourceOptions {
                name: name.clone(),
                poison: match resolved.on_poison {
                    OnPoison::DeadLetter => PoisonPolicy::DeadLetter(resolved.dead_letter.clone()),
                    OnPoison::Stop => PoisonPolicy::Stop,
                },
                max_message_bytes: config.limits.max_message_bytes,
                status,
            },
            source,
        ));
    }
    Ok((registry, sources))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::ChannelName;
    use crate::config::Config;

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
        let (_, sources) = build(&c.clone().resolve().unwrap(), &Metrics::new()).unwrap();
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
        let (_, sources) = build(&c.clone().resolve().unwrap(), &Metrics::new()).unwrap();
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
