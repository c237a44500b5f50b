//! Outbox rows and emitted messages turned into [`Publish`]es.
//!
//! A row's columns are found by name in the relation pgoutput describes, so the table may have
//! more columns (or a different column order) than the migration creates. The message id is the
//! row's `message_id` when set (idempotency chosen by the application), otherwise it is derived
//! from the transaction's commit LSN and the row's place in it, so a replay after a crash
//! deduplicates in the log.

use serde_json::value::RawValue;
use tidings_connectors_core::Publish;

use crate::pgoutput::{format_lsn, Lsn, Relation, Tuple};

/// Where the outbox columns are in a relation's tuples.
#[derive(Debug, Clone, Default)]
pub struct OutboxColumns {
    id: Option<usize>,
    channel: Option<usize>,
    name: Option<usize>,
    data: Option<usize>,
    headers: Option<usize>,
    message_id: Option<usize>,
}

impl OutboxColumns {
    /// Find the columns by name.
    pub fn of(relation: &Relation) -> Self {
        let find = |n: &str| relation.columns.iter().position(|c| c.name == n);
        OutboxColumns {
            id: find("id"),
            channel: find("channel"),
            name: find("name"),
            data: find("data"),
            headers: find("headers"),
            message_id: find("message_id"),
        }
    }
}

/// The message id of the `index`th message of the transaction committed at `commit_lsn`.
pub fn derived_id(commit_lsn: Lsn, index: u64) -> String {
    format!("pg:{}:{index}", format_lsn(commit_lsn))
}

/// A row read from the outbox: its message, and its `id` for clean-up.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxRow {
    pub row_id: Option<i64>,
    pub publish: Publish,
}

/// Why a row or message cannot become a message at all (the runner checks channel names and
/// sizes itself).
pub type Poison = String;

/// An inserted outbox row.
pub fn row(cols: &OutboxColumns, tuple: &Tuple, id: String) -> Result<OutboxRow, Poison> {
    let text = |i: Option<usize>| -> Result<Option<&str>, Poison> {
        match i.and_then(|i| tuple.0.get(i)) {
            None => Ok(None),
            Some(v) => v.as_text().map_err(|e| e.to_string()),
        }
    };
    let json = |field: &str, i: Option<usize>| -> Result<Option<Box<RawValue>>, Poison> {
        text(i)?
            .map(|t| {
                RawValue::from_string(t.to_owned())
                    .map_err(|e| format!("`{field}` is not JSON: {e}"))
            })
            .transpose()
    };
    let row_id = text(cols.id)?.and_then(|t| t.parse().ok());
    let channel = text(cols.channel)?
        .ok_or("the row's `channel` is null")?
        .to_owned();
    let publish = Publish {
        channel,
        name: text(cols.name)?.map(str::to_owned),
        data: json("data", cols.data)?,
        headers: json("headers", cols.headers)?,
        id: Some(text(cols.message_id)?.map(str::to_owned).unwrap_or(id)),
        key: None,
    };
    Ok(OutboxRow { row_id, publish })
}

/// The fields of a `pg_logical_emit_message(true, 'tidings', '{...}')` message.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Emitted {
    channel: Option<String>,
    name: Option<String>,
    data: Option<Box<RawValue>>,
    headers: Option<Box<RawValue>>,
    message_id: Option<String>,
}

/// A table-free outbox message: JSON with the outbox table's fields.
pub fn emitted(content: &[u8], id: String) -> Result<Publish, Poison> {
    let e: Emitted = serde_json::from_slice(content).map_err(|e| {
        format!(
            "the message is not a JSON object with channel, name, data, headers, message_id: {e}"
        )
    })?;
    Ok(Publish {
        channel: e.channel.ok_or("the message has no `channel`")?,
        name: e.name,
        data: e.data,
        headers: e.headers,
        id: Some(e.message_id.unwrap_or(id)),
        key: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pgoutput::{Column, Value};
    use bytes::Bytes;

    fn relation() -> Relation {
        let col = |name: &str| Column {
            key: name == "id",
            name: name.into(),
            type_oid: 25,
            type_modifier: -1,
        };
        Relation {
            oid: 1,
            namespace: "tidings".into(),
            name: "outbox".into(),
            replica_identity: b'd',
            columns: [
                "id",
                "channel",
                "name",
                "data",
                "headers",
                "message_id",
                "created_at",
            ]
            .iter()
            .map(|n| col(n))
            .collect(),
        }
    }

    fn t(s: &str) -> Value {
        Value::Text(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn a_row_becomes_a_message_with_a_derived_id() {
        let cols = OutboxColumns::of(&relation());
        let tuple = Tuple(vec![
            t("42"),
            t("orders:7"),
            t("order.paid"),
            t(r#"{"total": "12.50"}"#),
            Value::Null,
            Value::Null,
            t("2024-01-01 00:00:00+00"),
        ]);
        let r = row(&cols, &tuple, derived_id(0x1_0000_00A0, 3)).unwrap();
        assert_eq!(r.row_id, Some(42));
        assert_eq!(r.publish.channel, "orders:7");
        assert_eq!(r.publish.name.as_deref(), Some("order.paid"));
        // The text as Postgres wrote it.
        assert_eq!(
            r.publish.data.as_deref().map(RawValue::get),
            Some(r#"{"total": "12.50"}"#)
        );
        assert_eq!(r.publish.id.as_deref(), Some("pg:1/A0:3"));
    }

    #[test]
    fn message_id_wins_and_nulls_are_poison() {
        let cols = OutboxColumns::of(&relation());
        let mut tuple = Tuple(vec![
            t("1"),
            t("c"),
            Value::Null,
            t("1"),
            t("{}"),
            t("client-abc"),
            Value::Null,
        ]);
        let r = row(&cols, &tuple, "pg:0/1:0".into()).unwrap();
        assert_eq!(r.publish.id.as_deref(), Some("client-abc"));
        tuple.0[1] = Value::Null;
        assert!(row(&cols, &tuple, "x".into())
            .unwrap_err()
            .contains("channel"));
    }

    #[test]
    fn row_json_is_checked_and_kept_as_written() {
        let cols = OutboxColumns::of(&relation());
        let tuple = |data: &str, headers: &str| {
            Tuple(vec![
                t("1"),
                t("c"),
                Value::Null,
                t(data),
                t(headers),
                Value::Null,
                Value::Null,
            ])
        };
        let r = row(&cols, &tuple(" [1, 2] ", "{\n  \"a\": 1\n}"), "x".into()).unwrap();
        assert_eq!(r.publish.data.as_deref().map(RawValue::get), Some("[1, 2]"));
        assert_eq!(
            r.publish.headers.as_deref().map(RawValue::get),
            Some("{\n  \"a\": 1\n}")
        );
        let e = row(&cols, &tuple("{nope", "{}"), "x".into()).unwrap_err();
        assert!(
            e.starts_with("`data` is not JSON: key must be a string"),
            "{e}"
        );
        let e = row(&cols, &tuple("1", "[1"), "x".into()).unwrap_err();
        assert!(e.starts_with("`headers` is not JSON: EOF"), "{e}");
    }

    #[test]
    fn emitted_messages() {
        let p = emitted(br#"{"channel":"a:b","data":{"x":1}}"#, "pg:0/5:0".into()).unwrap();
        assert_eq!(p.channel, "a:b");
        assert_eq!(p.id.as_deref(), Some("pg:0/5:0"));
        assert!(emitted(br#"{"data":1}"#, "i".into())
            .unwrap_err()
            .contains("channel"));
        assert!(emitted(b"nope", "i".into()).is_err());
        // Kept as written, line breaks included (SSE sends each line as a `data:` field).
        let p = emitted(
            b"{\"channel\":\"a\",\"data\":{\"x\": 1},\"headers\":{\n  \"h\": [1,\r\n 2]\n}}",
            "i".into(),
        )
        .unwrap();
        assert_eq!(p.data.as_deref().map(RawValue::get), Some(r#"{"x": 1}"#));
        assert_eq!(
            p.headers.as_deref().map(RawValue::get),
            Some("{\n  \"h\": [1,\r\n 2]\n}")
        );
        assert!(emitted(br#"{"channel":"a","chanel":"b"}"#, "i".into()).is_err());
    }
}
