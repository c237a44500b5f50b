//! Configuration vocabulary every connector shares, so that each says it the same way and the
//! server reads it once: what to do with a poison change, and how a bad setting is reported.

use serde::Deserialize;

/// What to do with a change (an outbox row, a change event) that cannot become a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnPoison {
    /// Publish the error and what identifies the change (its row and position, or its
    /// document key) to the dead-letter channel; go on.
    #[default]
    DeadLetter,
    /// Stop the connector and tell the operator.
    Stop,
}

/// A refused setting: the field (relative to the connector's table, such as `slot` or
/// `pipeline[0]`) and what is wrong with it. The server names it by its dotted path,
/// `connectors.NAME.FIELD`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{field}` {problem}")]
pub struct ConfigProblem {
    /// The field, relative to the connector's table.
    pub field: String,
    /// What is wrong with its value, and what to write instead.
    pub problem: String,
}

impl ConfigProblem {
    /// A problem with `field`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigProblem {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn on_poison_reads_its_snake_case_names() {
        let read = |v: &str| serde_json::from_value::<OnPoison>(serde_json::json!(v));
        assert_eq!(read("dead_letter").unwrap(), OnPoison::DeadLetter);
        assert_eq!(read("stop").unwrap(), OnPoison::Stop);
        assert!(read("ignore").is_err());
        assert_eq!(OnPoison::default(), OnPoison::DeadLetter);
    }
}
