//! One change event (or snapshot document) as the driver received it: the top-level fields that
//! routing ([`crate::router`]) and the payload ([`crate::payload`]) read, found once, in one pass
//! over its bytes, and never decoded to a [`bson::Document`].

use bson::{Bson, RawBsonRef, RawDocument};
use serde_json::{Map, Value};
use tidings_connectors_core::SourceError;

use crate::extjson::Ext;

/// Event types that describe the collection rather than a document.
pub const LIFECYCLE: [&str; 4] = ["drop", "rename", "dropDatabase", "invalidate"];

/// Fields a pipeline sets to route an event; never part of the payload.
pub(crate) const ROUTING_FIELDS: [&str; 3] = ["_channel", "_name", "_headers"];

/// Why an event produced no messages: bytes that are not BSON (what `bson` said; the caller says
/// where they came from), or the source's own error (a poison event with `on_poison = "stop"`).
pub(crate) enum Failure {
    Unreadable(String),
    Source(SourceError),
}

impl From<bson::raw::Error> for Failure {
    fn from(e: bson::raw::Error) -> Self {
        Failure::Unreadable(e.to_string())
    }
}

/// Writing JSON text fails only on bytes that are not BSON: the error's message is `bson`'s.
impl From<serde_json::Error> for Failure {
    fn from(e: serde_json::Error) -> Self {
        Failure::Unreadable(e.to_string())
    }
}

/// One event, and the top-level fields routing and the payload read, found in one pass over its
/// bytes (the first of a name, as [`RawDocument::get`] finds it).
pub(crate) struct Parts<'a> {
    pub(crate) event: &'a RawDocument,
    pub(crate) op: Option<&'a str>,
    pub(crate) ns: Option<RawBsonRef<'a>>,
    pub(crate) document_key: Option<RawBsonRef<'a>>,
    pub(crate) full_document: Option<RawBsonRef<'a>>,
    pub(crate) before: Option<RawBsonRef<'a>>,
    pub(crate) update_description: Option<RawBsonRef<'a>>,
    pub(crate) cluster_time: Option<RawBsonRef<'a>>,
    pub(crate) lsid: Option<RawBsonRef<'a>>,
    pub(crate) txn_number: Option<RawBsonRef<'a>>,
    pub(crate) to: Option<RawBsonRef<'a>>,
    pub(crate) channel: Option<RawBsonRef<'a>>,
    pub(crate) name: Option<RawBsonRef<'a>>,
    pub(crate) headers: Option<RawBsonRef<'a>>,
}

impl<'a> Parts<'a> {
    pub(crate) fn read(event: &'a RawDocument) -> Result<Parts<'a>, bson::raw::Error> {
        let mut p = Parts {
            event,
            op: None,
            ns: None,
            document_key: None,
            full_document: None,
            before: None,
            update_description: None,
            cluster_time: None,
            lsid: None,
            txn_number: None,
            to: None,
            channel: None,
            name: None,
            headers: None,
        };
        for element in event {
            let (key, value) = element?;
            let slot = match key {
                "operationType" => {
                    if let (None, RawBsonRef::String(op)) = (p.op, value) {
                        p.op = Some(op);
                    }
                    continue;
                }
                "ns" => &mut p.ns,
                "documentKey" => &mut p.document_key,
                "fullDocument" => &mut p.full_document,
                "fullDocumentBeforeChange" => &mut p.before,
                "updateDescription" => &mut p.update_description,
                "clusterTime" => &mut p.cluster_time,
                "lsid" => &mut p.lsid,
                "txnNumber" => &mut p.txn_number,
                "to" => &mut p.to,
                "_channel" => &mut p.channel,
                "_name" => &mut p.name,
                "_headers" => &mut p.headers,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value);
            }
        }
        Ok(p)
    }

    /// The value at a template's field path, as relaxed JSON would hold it (`None`: missing).
    /// Documents and arrays come back empty: a template renders scalars only. An event without
    /// a document (a delete) is read through its pre-image, when it carries one.
    pub(crate) fn resolve(&self, path: &[String]) -> Result<Option<Value>, Failure> {
        let Some((first, rest)) = path.split_first() else {
            return Ok(None);
        };
        let null = |v: &Option<RawBsonRef<'_>>| matches!(v, None | Some(RawBsonRef::Null));
        let top = match first.as_str() {
            "fullDocument" if null(&self.full_document) && !null(&self.before) => self.before,
            f if ROUTING_FIELDS.contains(&f) => None,
            // Found by `read` already (the first of the name, as `get` finds it).
            "fullDocument" => self.full_document,
            "fullDocumentBeforeChange" => self.before,
            "ns" => self.ns,
            "documentKey" => self.document_key,
            f => self.event.get(f)?,
        };
        let Some(mut at) = top else {
            return Ok(None);
        };
        let mut rest = rest.iter();
        loop {
            match (at, rest.as_slice().first()) {
                (RawBsonRef::Document(_), None) => return Ok(Some(Value::Object(Map::new()))),
                (RawBsonRef::Array(_), None) => return Ok(Some(Value::Array(Vec::new()))),
                (RawBsonRef::Document(d), Some(seg)) => match d.get(seg)? {
                    Some(v) => {
                        at = v;
                        rest.next();
                    }
                    None => return Ok(None),
                },
                // A JSON array has no named members.
                (RawBsonRef::Array(_), Some(_)) => return Ok(None),
                (scalar, _) => {
                    // A scalar whose JSON form may be an object (`{"$oid": ...}`): go on there.
                    let mut v = serde_json::to_value(Ext {
                        value: scalar,
                        canonical: false,
                    })?;
                    for seg in rest {
                        match v.get_mut(seg.as_str()) {
                            Some(inner) => v = inner.take(),
                            None => return Ok(None),
                        }
                    }
                    return Ok(Some(v));
                }
            }
        }
    }
}

/// The `(lsid, txnNumber)` of an event in a transaction.
pub fn txn_key(event: &RawDocument) -> Option<(Bson, Bson)> {
    let get = |k: &str| Bson::try_from(event.get(k).ok()??).ok();
    Some((get("lsid")?, get("txnNumber")?))
}
