//! Outbox rows and emitted messages (`tidings_connector_postgres::outbox`): a decoded pgoutput
//! tuple, or a `pg_logical_emit_message` body, turned into a Publish.
//!
//! The input picks the outbox relation's columns (names, order, extras), the row's values and
//! an emitted message's bytes. Properties: a row or message that becomes a Publish has the
//! `channel` column's text as its channel, `data` and `headers` that are JSON (kept as
//! written), the row's `message_id` as its id when set (else the derived id), and the `id`
//! column as the row id when it is a number; a row without a `channel` is poison.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::value::RawValue;
use std::collections::HashMap;
use tidings_connector_postgres::outbox::{derived_id, emitted, row, OutboxColumns};
use tidings_connector_postgres::pgoutput::{Column, Relation, Tuple, Value};

const NAMES: [&str; 8] = [
    "id",
    "channel",
    "name",
    "data",
    "headers",
    "message_id",
    "created_at",
    "extra",
];

fn relation(u: &mut Unstructured<'_>) -> Result<Relation> {
    let n = u.int_in_range(0..=9)?;
    let mut columns = Vec::with_capacity(n);
    for _ in 0..n {
        columns.push(Column {
            key: u.arbitrary()?,
            name: u.choose(&NAMES)?.to_string(),
            type_oid: u.arbitrary()?,
            type_modifier: -1,
        });
    }
    Ok(Relation {
        oid: 1,
        namespace: "tidings".into(),
        name: "outbox".into(),
        replica_identity: b'd',
        columns,
    })
}

fn tuple(u: &mut Unstructured<'_>) -> Result<Tuple> {
    let n = u.int_in_range(0..=10)?;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        values.push(match u.int_in_range(0..=5)? {
            0 => Value::Null,
            1 => Value::UnchangedToast,
            2 => Value::Binary(Bytes::copy_from_slice(u.arbitrary::<&[u8]>()?)),
            _ => Value::Text(Bytes::copy_from_slice(u.arbitrary::<&[u8]>()?)),
        });
    }
    Ok(Tuple(values))
}

fn text_at<'t>(relation: &Relation, tuple: &'t Tuple, name: &str) -> Option<&'t Value> {
    let i = relation.columns.iter().position(|c| c.name == name)?;
    tuple.0.get(i)
}

fn check(u: &mut Unstructured<'_>) -> Result<()> {
    let relation = relation(u)?;
    let tuple = tuple(u)?;
    let lsn: u64 = u.arbitrary()?;
    let id = derived_id(lsn, u.arbitrary()?);
    let cols = OutboxColumns::of(&relation);
    let text = |name| text_at(&relation, &tuple, name).and_then(|v| v.as_text().ok().flatten());
    match row(&cols, &tuple, id.clone()) {
        Ok(r) => {
            let p = &r.publish;
            assert_eq!(Some(p.channel.as_str()), text("channel"));
            assert_eq!(p.name.as_deref(), text("name"));
            for (field, v) in [("data", &p.data), ("headers", &p.headers)] {
                if let Some(v) = v {
                    assert_eq!(
                        Some(v.get()),
                        text(field).map(|t| t.trim_matches([' ', '\t', '\n', '\r']))
                    );
                    // JSON by its grammar (a number may be beyond what an f64 holds).
                    serde_json::from_str::<IgnoredAny>(v.get())
                        .unwrap_or_else(|e| panic!("`{field}` {:?} is not JSON: {e}", v.get()));
                }
            }
            assert_eq!(p.id.as_deref(), Some(text("message_id").unwrap_or(&id)));
            assert_eq!(r.row_id, text("id").and_then(|t| t.parse().ok()));
        }
        Err(_) if text("channel").is_none() => {}
        Err(why) => assert!(!why.is_empty()),
    }
    let content: &[u8] = u.arbitrary()?;
    if let Ok(p) = emitted(content, id.clone()) {
        let fields: HashMap<String, Option<Box<RawValue>>> =
            serde_json::from_slice(content).expect("an emitted message is a JSON object");
        let string = |name: &str| -> Option<String> {
            let v = fields.get(name)?.as_ref()?;
            Some(serde_json::from_str(v.get()).expect("a string field"))
        };
        assert_eq!(string("channel").as_deref(), Some(p.channel.as_str()));
        assert_eq!(p.id, Some(string("message_id").unwrap_or(id)));
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = check(&mut Unstructured::new(data));
});
