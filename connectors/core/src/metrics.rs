//! Gauges a connector sets for itself, such as the Postgres slot lag, labelled with the
//! connector's name. The runtime owns the [`ConnectorGauges`] of its server and registers it
//! once with its Prometheus registry; each connector gets a [`ConnectorMetrics`] for its own
//! label. Connectors of one kind share each metric's family, so two Postgres connectors give
//! one `tidings_postgres_slot_lag_bytes` family with two label values, as Prometheus text
//! requires.

use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
pub use prometheus_client::registry::Unit;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectorLabel {
    connector: String,
}

/// One gauge metric of the connectors, by name.
#[derive(Debug)]
struct GaugeFamily {
    name: &'static str,
    /// As the registry writes it: with a full stop.
    help: String,
    unit: Option<Unit>,
    family: Family<ConnectorLabel, Gauge>,
}

/// Every gauge the connectors of one server set, a family per metric name, in the order they
/// were first asked for. A Prometheus collector: register it with the server's registry (which
/// adds its prefix); a family is written once it has a value, as the registry does with its own.
#[derive(Debug, Default)]
pub struct ConnectorGauges(Mutex<Vec<GaugeFamily>>);

impl ConnectorGauges {
    /// The handle of connector `name`, labelled with it.
    pub fn connector(self: &Arc<Self>, name: &str) -> ConnectorMetrics {
        ConnectorMetrics {
            gauges: self.clone(),
            connector: name.to_owned(),
        }
    }

    fn family(
        &self,
        name: &'static str,
        help: &str,
        unit: Option<Unit>,
    ) -> Family<ConnectorLabel, Gauge> {
        let mut families = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = families.iter().find(|f| f.name == name) {
            return f.family.clone();
        }
        let family = Family::default();
        families.push(GaugeFamily {
            name,
            help: format!("{help}."),
            unit,
            family: family.clone(),
        });
        family
    }
}

impl Collector for ConnectorGauges {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let families = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        for f in families.iter().filter(|f| !f.family.is_empty()) {
            let metric =
                encoder.encode_descriptor(f.name, &f.help, f.unit.as_ref(), MetricType::Gauge)?;
            f.family.encode(metric)?;
        }
        Ok(())
    }
}

/// A connector's way to its own gauges, handed to it by the runtime in its
/// [`crate::connector::Context`]. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ConnectorMetrics {
    gauges: Arc<ConnectorGauges>,
    connector: String,
}

impl ConnectorMetrics {
    /// A handle of its own, registered nowhere: for a connector built outside a server (tests,
    /// tools), whose gauges nobody reads.
    pub fn detached(connector: &str) -> Self {
        Arc::new(ConnectorGauges::default()).connector(connector)
    }

    /// The gauge `name` (without the server's prefix or the unit's suffix) of this connector,
    /// its family described by `help` and `unit` when it is first asked for.
    pub fn gauge(&self, name: &'static str, help: &str, unit: Option<Unit>) -> ConnectorGauge {
        ConnectorGauge {
            family: self.gauges.family(name, help, unit),
            label: ConnectorLabel {
                connector: self.connector.clone(),
            },
        }
    }
}

/// One gauge of one connector. Its series appears at the first [`ConnectorGauge::set`], so a
/// reading not taken yet is absent rather than zero.
#[derive(Debug, Clone)]
pub struct ConnectorGauge {
    family: Family<ConnectorLabel, Gauge>,
    label: ConnectorLabel,
}

impl ConnectorGauge {
    /// Set the gauge to `value`.
    pub fn set(&self, value: i64) {
        self.family.get_or_create(&self.label).set(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn connectors_share_one_family_per_metric_and_appear_once_set() {
        let gauges = Arc::new(ConnectorGauges::default());
        let mut registry = Registry::with_prefix("tidings");
        registry.register_collector(Box::new(gauges.clone()));
        let render = |r: &Registry| {
            let mut out = String::new();
            prometheus_client::encoding::text::encode(&mut out, r).unwrap();
            out
        };
        let a = gauges
            .connector("a")
            .gauge("slot_lag", "Lag", Some(Unit::Bytes));
        let b = gauges
            .connector("b")
            .gauge("slot_lag", "Lag", Some(Unit::Bytes));
        assert!(!render(&registry).contains("slot_lag"), "nothing set yet");
        a.set(5);
        b.set(7);
        let text = render(&registry);
        assert_eq!(
            text.matches("# TYPE tidings_slot_lag_bytes gauge").count(),
            1,
            "{text}"
        );
        assert!(
            text.contains("# HELP tidings_slot_lag_bytes Lag.\n"),
            "{text}"
        );
        assert!(
            text.contains("tidings_slot_lag_bytes{connector=\"a\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("tidings_slot_lag_bytes{connector=\"b\"} 7\n"),
            "{text}"
        );
    }
}
