//! A connector's own status fields: what it adds to its entry in `GET /v1/connectors` beside the
//! runner's state and counters (the Postgres slot's lag, for example).

use std::sync::{Arc, Mutex, PoisonError};

use serde_json::{Map, Value};

/// Where a connector reports its own status fields. The runtime makes one per connector (so
/// that each server, and later each cluster node, reports its own connectors) and reads it
/// when asked; the connector sets fields whenever it learns something new. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct StatusFields(Arc<Mutex<Map<String, Value>>>);

impl StatusFields {
    /// Set `field` to `value` (`Value::Null` for "not known now").
    pub fn set(&self, field: &str, value: impl Into<Value>) {
        let mut fields = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        fields.insert(field.to_owned(), value.into());
    }

    /// Every field as it stands now.
    pub fn snapshot(&self) -> Map<String, Value> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_shared_by_clones_and_replaced_by_name() {
        let status = StatusFields::default();
        let reporter = status.clone();
        reporter.set("slot_lag_bytes", Value::Null);
        reporter.set("slot_lag_bytes", 312);
        reporter.set("retained_wal_bytes", 18_872);
        let fields = status.snapshot();
        assert_eq!(fields.len(), 2);
        assert_eq!(fields["slot_lag_bytes"], 312);
        assert_eq!(fields["retained_wal_bytes"], 18_872);
    }
}
