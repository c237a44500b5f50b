//! The data of each message: the `normalized` payload or the `raw` event, in the configured
//! Extended JSON flavour, written straight from the event's BSON to JSON text; and the data of a
//! dead-letter message.

use bson::RawBsonRef;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::config::Payload;
use crate::event::{Failure, Parts, ROUTING_FIELDS};
use crate::extjson::{self, Doc, Ext, TimestampParts};

/// The payload, in the configured shape and flavour, as JSON text.
pub(crate) fn data(
    payload: Payload,
    canonical: bool,
    parts: &Parts<'_>,
    op: &str,
) -> Result<Box<RawValue>, Failure> {
    if let Payload::Raw = payload {
        return Ok(extjson::text(&Doc {
            doc: parts.event,
            canonical,
            skip: &ROUTING_FIELDS,
        })?);
    }
    let (updated_fields, removed_fields) = match parts.update_description {
        Some(RawBsonRef::Document(d)) => (d.get("updatedFields")?, d.get("removedFields")?),
        _ => (None, None),
    };
    let cluster_time = match parts.cluster_time {
        Some(RawBsonRef::Timestamp(ts)) => Some(TimestampParts {
            t: ts.time,
            i: ts.increment,
        }),
        _ => None,
    };
    let txn = match (parts.lsid, parts.txn_number) {
        (Some(RawBsonRef::Null), _) | (_, Some(RawBsonRef::Null)) => None,
        (Some(lsid), Some(txn_number)) => Some((lsid, txn_number)),
        _ => None,
    };
    Ok(extjson::text(&Normalized {
        op,
        ns: parts.ns,
        key: parts.document_key,
        document: parts.full_document,
        before: parts.before,
        updated_fields,
        removed_fields,
        cluster_time,
        txn,
        to: (op == "rename").then_some(parts.to),
        canonical,
    })?)
}

/// The `normalized` payload, written in this order:
/// `{op, ns, key, document, before, updated_fields, removed_fields, cluster_time, txn[, to]}`
/// (`to` for a rename only). Missing parts are `null`; `txn` is `{lsid, txn_number}` when the
/// event carries both.
struct Normalized<'a> {
    op: &'a str,
    ns: Option<RawBsonRef<'a>>,
    key: Option<RawBsonRef<'a>>,
    document: Option<RawBsonRef<'a>>,
    before: Option<RawBsonRef<'a>>,
    updated_fields: Option<RawBsonRef<'a>>,
    removed_fields: Option<RawBsonRef<'a>>,
    cluster_time: Option<TimestampParts>,
    txn: Option<(RawBsonRef<'a>, RawBsonRef<'a>)>,
    to: Option<Option<RawBsonRef<'a>>>,
    canonical: bool,
}

impl<'a> Serialize for Normalized<'a> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let canonical = self.canonical;
        let ext = |v: Option<RawBsonRef<'a>>| v.map(|value| Ext { value, canonical });
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("op", self.op)?;
        m.serialize_entry("ns", &ext(self.ns))?;
        m.serialize_entry("key", &ext(self.key))?;
        m.serialize_entry("document", &ext(self.document))?;
        m.serialize_entry("before", &ext(self.before))?;
        m.serialize_entry("updated_fields", &ext(self.updated_fields))?;
        m.serialize_entry("removed_fields", &ext(self.removed_fields))?;
        m.serialize_entry("cluster_time", &self.cluster_time)?;
        match self.txn {
            Some((lsid, txn_number)) => m.serialize_entry(
                "txn",
                &Txn {
                    lsid: ext(Some(lsid)),
                    txn_number: ext(Some(txn_number)),
                },
            )?,
            None => m.serialize_entry("txn", &())?,
        }
        if let Some(to) = self.to {
            m.serialize_entry("to", &ext(to))?;
        }
        m.end()
    }
}

/// The payload's `txn`.
#[derive(Serialize)]
struct Txn<'a> {
    lsid: Option<Ext<'a>>,
    txn_number: Option<Ext<'a>>,
}

/// The data of a dead-letter message: why, where, and the event as its payload would have
/// carried it.
#[derive(Serialize)]
pub(crate) struct DeadLetter<'a> {
    pub(crate) error: &'a str,
    pub(crate) source: &'a str,
    pub(crate) op: &'a str,
    pub(crate) ns: &'a RawValue,
    pub(crate) key: Option<&'a RawValue>,
    pub(crate) position: &'a RawValue,
    pub(crate) event: &'a RawValue,
}
