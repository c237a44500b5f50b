//! One change event (or snapshot document) to messages: routing by template or by the
//! `_channel`/`_name`/`_headers` fields a pipeline sets, the payload (`normalized` or `raw`),
//! BSON to Extended JSON, and message ids derived from the resume token so that a replay
//! deduplicates in the log.
//!
//! Events are read from the bytes the driver received, once, in one pass over their top-level
//! fields: the template looks its fields up in the BSON itself, and only the parts the payload
//! carries are converted to JSON, in the configured flavour alone. (The test module keeps the
//! straightforward version, decode to a [`bson::Document`] and convert it whole with `bson`'s
//! own conversions, and checks that both give the same messages, byte for byte.)

use std::borrow::Cow;

use bson::{Bson, RawArray, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use serde_json::{json, Map, Number, Value};
use tidings_connectors_core::route::ChannelTemplate;
use tidings_connectors_core::{Publish, SourceError};

use crate::config::{JsonMode, OnPoison, Payload};

/// The message id of a snapshot document: `mdbs:` + 64 bits of the digest of the snapshot's
/// position and namespace, then the document's `_id` in a form that sorts as the snapshot reads
/// (by `_id`): ObjectIds as hex, integers as offset hex, short strings as they are; other keys
/// by the digest of their canonical JSON. Like [`event_id`], ids that sort keep the log's
/// duplicate index growing at its end while a large collection is read.
pub fn snapshot_id(resume_text: &str, db: &str, coll: &str, key: &Bson) -> String {
    let scope = digest(&[resume_text.as_bytes(), db.as_bytes(), coll.as_bytes()]);
    let scope = &scope[..16];
    let int = |v: i64| format!("mdbs:{scope}:i{:016x}", (v as u64) ^ (1 << 63));
    match key {
        Bson::ObjectId(oid) => format!("mdbs:{scope}:o{}", oid.to_hex()),
        Bson::Int32(v) => int(i64::from(*v)),
        Bson::Int64(v) => int(*v),
        // Ids are at most 255 bytes; the prefix takes 23.
        Bson::String(v) if v.len() <= 200 => format!("mdbs:{scope}:s{v}"),
        other => {
            let text = other.clone().into_canonical_extjson().to_string();
            format!("mdbs:{scope}:h{}", digest(&[text.as_bytes()]))
        }
    }
}

/// Event types that describe the collection rather than a document.
pub const LIFECYCLE: [&str; 4] = ["drop", "rename", "dropDatabase", "invalidate"];

/// Fields a pipeline sets to route an event; never part of the payload.
const ROUTING_FIELDS: [&str; 3] = ["_channel", "_name", "_headers"];

/// FNV-1a, 128 bits: a stable, dependency-free digest for message ids. Not for secrets.
pub fn digest(parts: &[&[u8]]) -> String {
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for part in parts {
        for b in part.iter().chain(&[0xff]) {
            h ^= u128::from(*b);
            h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
        }
    }
    format!("{h:032x}")
}

/// The message id of a change event: its cluster time (seconds and increment, fixed-width hex)
/// then 64 bits of the resume token's digest. Ids of one channel thus sort in commit order, so
/// the log's duplicate index grows at its end instead of at random places (with random ids
/// every insert dirties a page of its own: 42k against 68k messages/s into the log). Events of
/// one transaction share the cluster time; the digest tells them apart.
pub fn event_id(cluster_time: Option<bson::Timestamp>, token_text: &str) -> String {
    let d = digest(&[token_text.as_bytes()]);
    match cluster_time {
        Some(t) => format!("mdb:{:08x}{:08x}:{}", t.time, t.increment, &d[..16]),
        None => format!("mdb:{d}"),
    }
}

/// How events become messages; built once from the validated configuration.
#[derive(Debug, Clone)]
pub struct Router {
    pub connector: String,
    pub template: Option<ChannelTemplate>,
    pub payload: Payload,
    pub json: JsonMode,
    pub control_channel: String,
    pub dead_letter: String,
    pub on_poison: OnPoison,
}

/// Why an event produced no messages: bytes that are not BSON (the caller says where they came
/// from), or the source's own error (a poison event with `on_poison = "stop"`).
enum Failure {
    Unreadable(bson::raw::Error),
    Source(SourceError),
}

impl From<bson::raw::Error> for Failure {
    fn from(e: bson::raw::Error) -> Self {
        Failure::Unreadable(e)
    }
}

/// Where an event was routed: channel, name, headers; or why it could not be.
type Route = Result<(String, Option<String>, Option<Value>), String>;

impl Router {
    fn canonical(&self) -> bool {
        matches!(self.json, JsonMode::Canonical)
    }

    /// A control message on the control channel (lifecycle, resync).
    pub fn control(&self, name: &str, data: Value, id: String) -> Publish {
        Publish {
            channel: self.control_channel.clone(),
            name: Some(name.to_owned()),
            data: Some(data),
            headers: None,
            id: Some(id),
            key: None,
        }
    }

    /// Messages for one change event as the driver received it, whose resume token is `token`.
    pub fn change_raw(
        &self,
        event: &RawDocument,
        token: &Bson,
    ) -> Result<Vec<Publish>, SourceError> {
        let token_text = extjson_text(token);
        let result = Parts::read(event).map_err(Failure::from).and_then(|parts| {
            let op = parts.op.unwrap_or("unknown");
            let cluster_time = match parts.cluster_time {
                Some(RawBsonRef::Timestamp(t)) => Some(t),
                _ => None,
            };
            let id = event_id(cluster_time, &token_text);
            self.messages(&parts, op, &id, &token_text)
        });
        result.map_err(|f| match f {
            Failure::Source(e) => e,
            Failure::Unreadable(e) => SourceError::Fatal {
                what: format!(
                    "connector {}: MongoDB sent a change event that is not valid BSON ({e}) at position {token_text}",
                    self.connector
                ),
                fix: "check the MongoDB server and driver versions; report this with the position".into(),
            },
        })
    }

    /// Messages for one snapshot document as the driver received it, read at the change stream
    /// position `resume`. It is routed and shaped as the event `{operationType: "snapshot", ns,
    /// documentKey: {_id}, fullDocument}` would be.
    pub fn snapshot_raw(
        &self,
        db: &str,
        coll: &str,
        doc: &RawDocument,
        resume: &Bson,
    ) -> Result<Vec<Publish>, SourceError> {
        let unreadable = |e: bson::raw::Error| SourceError::Fatal {
            what: format!(
                "connector {}: MongoDB sent a document of {db}.{coll} that is not valid BSON ({e})",
                self.connector
            ),
            fix: "check the MongoDB server and driver versions; report this with the namespace"
                .into(),
        };
        let raw_key = doc.get("_id").map_err(unreadable)?;
        let key = match raw_key {
            Some(k) => Bson::try_from(k).map_err(unreadable)?,
            None => Bson::Null,
        };
        let resume_text = extjson_text(resume);
        let id = snapshot_id(&resume_text, db, coll, &key);
        let mut ns = RawDocumentBuf::new();
        ns.append("db", db);
        ns.append("coll", coll);
        let mut document_key = RawDocumentBuf::new();
        match raw_key {
            Some(k) => document_key.append_ref("_id", k),
            None => document_key.append("_id", RawBson::Null),
        }
        let mut event = RawDocumentBuf::new();
        event.append("operationType", "snapshot");
        event.append("ns", ns);
        event.append("documentKey", document_key);
        event.append_ref("fullDocument", doc);
        let parts = Parts::read(&event).map_err(unreadable)?;
        self.messages(&parts, "snapshot", &id, &resume_text)
            .map_err(|f| match f {
                Failure::Source(e) => e,
                Failure::Unreadable(e) => unreadable(e),
            })
    }

    fn messages(
        &self,
        parts: &Parts<'_>,
        op: &str,
        id: &str,
        position: &str,
    ) -> Result<Vec<Publish>, Failure> {
        let route = self.route(parts, op)?;
        // The document key as relaxed JSON whatever the payload's flavour: it names the
        // document in a dead-letter message, here or in the server's checks.
        let key = match parts.document_key {
            None | Some(RawBsonRef::Null) => None,
            Some(k) => Some(to_json(k, false)?),
        };
        let data = self.data(parts, op)?;
        if LIFECYCLE.contains(&op) {
            let mut out = vec![self.control(op, data.clone(), format!("{id}:c"))];
            // Also on the routed channel, when the event resolves to one.
            if let Ok((channel, name, headers)) = route {
                if channel != self.control_channel {
                    out.push(Publish {
                        channel,
                        name,
                        data: Some(data),
                        headers,
                        id: Some(format!("{id}:r")),
                        key,
                    });
                }
            }
            return Ok(out);
        }
        match route {
            Ok((channel, name, headers)) => Ok(vec![Publish {
                channel,
                name,
                data: Some(data),
                headers,
                id: Some(id.to_owned()),
                key,
            }]),
            Err(problem) => {
                let ns = data["ns"].clone();
                let key_text = key.as_ref().map_or_else(|| "null".into(), Value::to_string);
                tracing::warn!(source = %self.connector, %problem, key = %key_text, "poison change event");
                match self.on_poison {
                    OnPoison::Stop => Err(Failure::Source(SourceError::Fatal {
                        what: format!("connector {}: the {op} of document {key_text} in {ns} cannot be routed: {problem} (position {position})", self.connector),
                        fix: format!("fix the document or the routing (`connectors.{}.channel` or the pipeline's `_channel`), or set `connectors.{}.on_poison = \"dead_letter\"` to set such events aside", self.connector, self.connector),
                    })),
                    OnPoison::DeadLetter => Ok(vec![Publish {
                        channel: self.dead_letter.clone(),
                        name: Some("dead_letter".into()),
                        data: Some(json!({
                            "error": problem,
                            "source": self.connector,
                            "op": op,
                            "ns": ns,
                            "key": key,
                            "position": serde_json::from_str::<Value>(position).unwrap_or(Value::Null),
                            "event": data,
                        })),
                        headers: None,
                        id: Some(format!("{id}:dead")),
                        key,
                    }]),
                }
            }
        }
    }

    /// The channel (and name, headers) an event is routed to, or why it cannot be.
    fn route(&self, parts: &Parts<'_>, op: &str) -> Result<Route, bson::raw::Error> {
        let Some(t) = &self.template else {
            return Ok(self.route_by_fields(parts, op));
        };
        // Templates read the event as relaxed JSON, looked up in the BSON itself.
        let mut unreadable = None;
        let rendered = t.render_with(|path| match parts.resolve(path) {
            Ok(v) => v.map(Cow::Owned),
            Err(e) => {
                unreadable = Some(e);
                None
            }
        });
        if let Some(e) = unreadable {
            return Err(e);
        }
        Ok(rendered
            .map(|channel| (channel, Some(op.to_owned()), None))
            .map_err(|e| format!("channel template {:?}: {e}", t.as_str())))
    }

    /// Routing by the `_channel`, `_name`, `_headers` fields a pipeline set.
    fn route_by_fields(&self, parts: &Parts<'_>, op: &str) -> Route {
        // A value `bson` cannot decode counts as absent, as it always has here.
        let decoded = |v: RawBsonRef<'_>| Bson::try_from(v).ok();
        let channel = match parts.channel {
            Some(RawBsonRef::String(c)) => c.to_owned(),
            Some(other) if !matches!(other, RawBsonRef::Null) && decoded(other).is_some() => {
                return Err(format!(
                    "`_channel` must be a string, not {}",
                    decoded(other).unwrap_or(Bson::Null)
                ))
            }
            _ => return Err("the event has no `_channel` field: set it in the connector's `pipeline` (for example with $addFields), or configure a `channel` template".into()),
        };
        let name = match parts.name {
            Some(RawBsonRef::String(n)) => Some(n.to_owned()),
            Some(other) if !matches!(other, RawBsonRef::Null) && decoded(other).is_some() => {
                return Err(format!(
                    "`_name` must be a string, not {}",
                    decoded(other).unwrap_or(Bson::Null)
                ))
            }
            _ => Some(op.to_owned()),
        };
        let headers = match parts.headers {
            Some(RawBsonRef::Document(h)) => match object(h, self.canonical(), &[]) {
                Ok(h) => Some(Value::Object(h)),
                // Not decodable: absent, as above.
                Err(_) => None,
            },
            Some(other) if !matches!(other, RawBsonRef::Null) && decoded(other).is_some() => {
                return Err(format!(
                    "`_headers` must be a document, not {}",
                    decoded(other).unwrap_or(Bson::Null)
                ))
            }
            _ => None,
        };
        Ok((channel, name, headers))
    }

    /// The payload, in the configured shape and flavour.
    fn data(&self, parts: &Parts<'_>, op: &str) -> Result<Value, bson::raw::Error> {
        let canonical = self.canonical();
        if let Payload::Raw = self.payload {
            return Ok(Value::Object(object(
                parts.event,
                canonical,
                &ROUTING_FIELDS,
            )?));
        }
        let convert =
            |v: Option<RawBsonRef<'_>>| v.map_or(Ok(Value::Null), |v| to_json(v, canonical));
        let (updated_fields, removed_fields) = match parts.update_description {
            Some(RawBsonRef::Document(d)) => (
                convert(d.get("updatedFields")?)?,
                convert(d.get("removedFields")?)?,
            ),
            _ => (Value::Null, Value::Null),
        };
        let cluster_time = match parts.cluster_time {
            Some(RawBsonRef::Timestamp(ts)) => {
                let mut t = Map::with_capacity(2);
                t.insert("t".into(), ts.time.into());
                t.insert("i".into(), ts.increment.into());
                Value::Object(t)
            }
            _ => Value::Null,
        };
        let (lsid, txn_number) = (convert(parts.lsid)?, convert(parts.txn_number)?);
        let txn = if lsid.is_null() || txn_number.is_null() {
            Value::Null
        } else {
            let mut t = Map::with_capacity(2);
            t.insert("lsid".into(), lsid);
            t.insert("txn_number".into(), txn_number);
            Value::Object(t)
        };
        let mut out = Map::with_capacity(10);
        out.insert("op".into(), Value::String(op.to_owned()));
        out.insert("ns".into(), convert(parts.ns)?);
        out.insert("key".into(), convert(parts.document_key)?);
        out.insert("document".into(), convert(parts.full_document)?);
        out.insert("before".into(), convert(parts.before)?);
        out.insert("updated_fields".into(), updated_fields);
        out.insert("removed_fields".into(), removed_fields);
        out.insert("cluster_time".into(), cluster_time);
        out.insert("txn".into(), txn);
        if op == "rename" {
            out.insert("to".into(), convert(parts.to)?);
        }
        Ok(Value::Object(out))
    }
}

/// One event, and the top-level fields routing and the payload read, found in one pass over its
/// bytes (the first of a name, as [`RawDocument::get`] finds it).
struct Parts<'a> {
    event: &'a RawDocument,
    op: Option<&'a str>,
    ns: Option<RawBsonRef<'a>>,
    document_key: Option<RawBsonRef<'a>>,
    full_document: Option<RawBsonRef<'a>>,
    before: Option<RawBsonRef<'a>>,
    update_description: Option<RawBsonRef<'a>>,
    cluster_time: Option<RawBsonRef<'a>>,
    lsid: Option<RawBsonRef<'a>>,
    txn_number: Option<RawBsonRef<'a>>,
    to: Option<RawBsonRef<'a>>,
    channel: Option<RawBsonRef<'a>>,
    name: Option<RawBsonRef<'a>>,
    headers: Option<RawBsonRef<'a>>,
}

impl<'a> Parts<'a> {
    fn read(event: &'a RawDocument) -> Result<Parts<'a>, bson::raw::Error> {
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
    fn resolve(&self, path: &[String]) -> Result<Option<Value>, bson::raw::Error> {
        let Some((first, rest)) = path.split_first() else {
            return Ok(None);
        };
        let null = |v: &Option<RawBsonRef<'_>>| matches!(v, None | Some(RawBsonRef::Null));
        let top = match first.as_str() {
            "fullDocument" if null(&self.full_document) && !null(&self.before) => self.before,
            f if ROUTING_FIELDS.contains(&f) => None,
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
                    let mut v = to_json(scalar, false)?;
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

/// A raw BSON value as Extended JSON (canonical or relaxed), exactly as converting the decoded
/// [`Bson`] with `bson`'s own `into_canonical_extjson`/`into_relaxed_extjson` gives it. The
/// common types are converted here, without decoding them first; the rest by `bson`.
fn to_json(v: RawBsonRef<'_>, canonical: bool) -> Result<Value, bson::raw::Error> {
    Ok(match v {
        RawBsonRef::Document(d) => Value::Object(object(d, canonical, &[])?),
        RawBsonRef::Array(a) => Value::Array(array(a, canonical)?),
        RawBsonRef::String(s) => Value::String(s.to_owned()),
        RawBsonRef::Boolean(b) => Value::Bool(b),
        RawBsonRef::Null => Value::Null,
        RawBsonRef::Int32(i) if canonical => single("$numberInt", Value::String(i.to_string())),
        RawBsonRef::Int32(i) => Value::from(i),
        RawBsonRef::Int64(i) if canonical => single("$numberLong", Value::String(i.to_string())),
        RawBsonRef::Int64(i) => Value::from(i),
        RawBsonRef::Double(f) if canonical && f.is_normal() => {
            let mut s = f.to_string();
            if f.fract() == 0.0 {
                s.push_str(".0");
            }
            single("$numberDouble", Value::String(s))
        }
        RawBsonRef::Double(f) if canonical && f == 0.0 => single(
            "$numberDouble",
            Value::String(if f.is_sign_negative() { "-0.0" } else { "0.0" }.into()),
        ),
        // Subnormal, infinite and NaN canonical doubles are written as relaxed ones.
        RawBsonRef::Double(f) => match Number::from_f64(f) {
            Some(n) => Value::Number(n),
            None => Bson::Double(f).into_relaxed_extjson(),
        },
        RawBsonRef::ObjectId(oid) => single("$oid", Value::String(hex(&oid.bytes()))),
        RawBsonRef::DateTime(d) => {
            let ms = d.timestamp_millis();
            if canonical || ms < 0 {
                // Canonical dates, and relaxed ones before 1970, are milliseconds.
                single(
                    "$date",
                    single("$numberLong", Value::String(ms.to_string())),
                )
            } else {
                match rfc3339_millis(ms) {
                    Some(text) => single("$date", Value::String(text)),
                    // Past year 9999 `bson` has a way of its own: it writes those itself.
                    None => Bson::DateTime(d).into_relaxed_extjson(),
                }
            }
        }
        RawBsonRef::Timestamp(ts) => {
            let mut t = Map::with_capacity(2);
            t.insert("t".into(), ts.time.into());
            t.insert("i".into(), ts.increment.into());
            single("$timestamp", Value::Object(t))
        }
        other => {
            let b = Bson::try_from(other)?;
            if canonical {
                b.into_canonical_extjson()
            } else {
                b.into_relaxed_extjson()
            }
        }
    })
}

/// A raw document as a JSON object, leaving out the fields named in `skip`.
fn object(
    d: &RawDocument,
    canonical: bool,
    skip: &[&str],
) -> Result<Map<String, Value>, bson::raw::Error> {
    // Sized once: growing a map rehashes it, and this is the hot path.
    let mut out = Map::with_capacity(elements(d.as_bytes()));
    for element in d {
        let (key, value) = element?;
        if !skip.contains(&key) {
            out.insert(key.to_owned(), to_json(value, canonical)?);
        }
    }
    Ok(out)
}

fn array(a: &RawArray, canonical: bool) -> Result<Vec<Value>, bson::raw::Error> {
    let mut out = Vec::with_capacity(elements(a.as_bytes()));
    for item in a {
        out.push(to_json(item?, canonical)?);
    }
    Ok(out)
}

/// How many elements a BSON document (or array) holds, counted by skipping over them: a
/// capacity hint, so 0 for anything it does not recognise (the conversion itself reports what
/// is wrong with the bytes).
fn elements(doc: &[u8]) -> usize {
    let le32 = |at: usize| -> Option<usize> {
        let b = doc.get(at..at + 4)?;
        usize::try_from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok()
    };
    let cstring_end = |at: usize| -> Option<usize> {
        Some(at + doc.get(at..)?.iter().position(|b| *b == 0)? + 1)
    };
    let mut n = 0;
    let mut at = 4;
    loop {
        let Some(&kind) = doc.get(at) else {
            return 0;
        };
        if kind == 0 {
            return n;
        }
        let Some(value) = cstring_end(at + 1) else {
            return 0;
        };
        let size = match kind {
            0x01 | 0x09 | 0x11 | 0x12 => Some(8),
            0x02 | 0x0D | 0x0E => le32(value).map(|l| 4 + l),
            0x03 | 0x04 | 0x0F => le32(value),
            0x05 => le32(value).map(|l| 5 + l),
            0x06 | 0x0A | 0x7F | 0xFF => Some(0),
            0x07 => Some(12),
            0x08 => Some(1),
            0x0B => cstring_end(value)
                .and_then(cstring_end)
                .map(|end| end - value),
            0x0C => le32(value).map(|l| 4 + l + 12),
            0x10 => Some(4),
            0x13 => Some(16),
            _ => None,
        };
        match size {
            Some(size) => at = value + size,
            None => return 0,
        }
        n += 1;
    }
}

/// `{key: value}`.
fn single(key: &str, value: Value) -> Value {
    let mut m = Map::with_capacity(1);
    m.insert(key.to_owned(), value);
    Value::Object(m)
}

/// Lowercase hexadecimal, as `ObjectId::to_hex` writes it.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Milliseconds since the epoch as RFC 3339 in UTC, the way `bson` writes relaxed dates
/// (`2023-11-14T22:13:20.12Z`: the fraction only when not zero, without trailing zeros), for
/// years 1970 to 9999; `None` outside them.
fn rfc3339_millis(ms: i64) -> Option<String> {
    // 9999-12-31T23:59:59.999Z
    const LAST: i64 = 253_402_300_799_999;
    if !(0..=LAST).contains(&ms) {
        return None;
    }
    let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
    // Days to a civil date (Howard Hinnant's algorithm), for days >= 0.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (secs, millis) = (in_day / 1000, in_day % 1000);
    let mut out = String::with_capacity(24);
    digits(&mut out, year, 4);
    out.push('-');
    digits(&mut out, month, 2);
    out.push('-');
    digits(&mut out, day, 2);
    out.push('T');
    digits(&mut out, secs / 3600, 2);
    out.push(':');
    digits(&mut out, secs / 60 % 60, 2);
    out.push(':');
    digits(&mut out, secs % 60, 2);
    if millis != 0 {
        out.push('.');
        let (mut m, mut width) = (millis, 3);
        while m % 10 == 0 {
            m /= 10;
            width -= 1;
        }
        digits(&mut out, m, width);
    }
    out.push('Z');
    Some(out)
}

/// `n` (not negative) in `width` decimal digits, zero-padded.
fn digits(out: &mut String, n: i64, width: u32) {
    for p in (0..width).rev() {
        let d = (n / 10_i64.pow(p)) % 10;
        out.push(char::from(b'0' + u8::try_from(d).unwrap_or(0)));
    }
}

/// A token or key as canonical Extended JSON text: the text ids are derived from.
fn extjson_text(b: &Bson) -> String {
    match b {
        // A resume token, `{"_data": "8265..."}`: no need for a JSON tree.
        Bson::Document(d) if d.len() == 1 => match d.get("_data") {
            Some(Bson::String(data)) => match serde_json::to_string(data) {
                Ok(quoted) => format!("{{\"_data\":{quoted}}}"),
                Err(_) => b.clone().into_canonical_extjson().to_string(),
            },
            _ => b.clone().into_canonical_extjson().to_string(),
        },
        _ => b.clone().into_canonical_extjson().to_string(),
    }
}

/// The `(lsid, txnNumber)` of an event in a transaction.
pub fn txn_key(event: &RawDocument) -> Option<(Bson, Bson)> {
    let get = |k: &str| Bson::try_from(event.get(k).ok()??).ok();
    Some((get("lsid")?, get("txnNumber")?))
}

#[cfg(test)]
/// The straightforward conversion this module replaced, kept as the reference the fast one is
/// checked against: decode the event to a [`Document`], convert it whole with `bson`'s own
/// `into_relaxed_extjson`/`into_canonical_extjson`, route on the relaxed JSON, then take the
/// payload out of it.
mod reference {
    use bson::{Bson, Document};
    use serde_json::{json, Map, Value};
    use tidings_connectors_core::{Publish, SourceError};

    use super::{Router, LIFECYCLE, ROUTING_FIELDS};
    use crate::config::{JsonMode, OnPoison, Payload};

    /// A [`Router`] converting the straightforward way.
    pub struct Reference<'a>(pub &'a Router);

    impl std::ops::Deref for Reference<'_> {
        type Target = Router;
        fn deref(&self) -> &Router {
            self.0
        }
    }

    impl Reference<'_> {
        pub fn json(&self, b: Bson) -> Value {
            match self.json {
                JsonMode::Relaxed => b.into_relaxed_extjson(),
                JsonMode::Canonical => b.into_canonical_extjson(),
            }
        }

        /// The payload, taken out of the event converted once to JSON (`view`, relaxed; `exact`, the
        /// canonical conversion when `json = "canonical"`). `cluster_time` is read from the BSON.
        fn data(
            &self,
            view: &mut Map<String, Value>,
            exact: Option<Map<String, Value>>,
            cluster_time: Value,
            op: &str,
        ) -> Value {
            let mut own = exact;
            let event = own.as_mut().unwrap_or(view);
            match self.payload {
                Payload::Raw => {
                    for f in ROUTING_FIELDS {
                        event.remove(f);
                    }
                    Value::Object(std::mem::take(event))
                }
                Payload::Normalized => {
                    let mut take = |key: &str| event.remove(key).unwrap_or(Value::Null);
                    let (ns, key, document, before) = (
                        take("ns"),
                        take("documentKey"),
                        take("fullDocument"),
                        take("fullDocumentBeforeChange"),
                    );
                    let (to, lsid, txn_number) = (take("to"), take("lsid"), take("txnNumber"));
                    let mut desc = take("updateDescription");
                    let mut field = |name: &str| {
                        desc.as_object_mut()
                            .and_then(|d| d.remove(name))
                            .unwrap_or(Value::Null)
                    };
                    let (updated_fields, removed_fields) =
                        (field("updatedFields"), field("removedFields"));
                    let txn = if lsid.is_null() || txn_number.is_null() {
                        Value::Null
                    } else {
                        let mut t = Map::with_capacity(2);
                        t.insert("lsid".into(), lsid);
                        t.insert("txn_number".into(), txn_number);
                        Value::Object(t)
                    };
                    // Built by moving the converted parts in: `json!` would copy each one through
                    // serde, the document included.
                    let mut out = Map::with_capacity(10);
                    out.insert("op".into(), Value::String(op.to_owned()));
                    out.insert("ns".into(), ns);
                    out.insert("key".into(), key);
                    out.insert("document".into(), document);
                    out.insert("before".into(), before);
                    out.insert("updated_fields".into(), updated_fields);
                    out.insert("removed_fields".into(), removed_fields);
                    out.insert("cluster_time".into(), cluster_time);
                    out.insert("txn".into(), txn);
                    if op == "rename" {
                        out.insert("to".into(), to);
                    }
                    Value::Object(out)
                }
            }
        }

        /// The channel (and name, headers) an event is routed to, or why it cannot be. `view` is
        /// the event as relaxed JSON; `fields` the routing fields the pipeline set.
        fn route(
            &self,
            view: &Value,
            fields: RoutingFields,
            op: &str,
        ) -> Result<(String, Option<String>, Option<Value>), String> {
            match &self.template {
                Some(t) => {
                    // Templates read the event as relaxed JSON. An event without a document
                    // (a delete) is rendered against its pre-image when it carries one.
                    let no_document = view.get("fullDocument").is_none_or(Value::is_null);
                    let before = view
                        .get("fullDocumentBeforeChange")
                        .filter(|b| !b.is_null());
                    let rendered = match (no_document, before) {
                        (true, Some(before)) => {
                            let mut with = view.clone();
                            with["fullDocument"] = before.clone();
                            t.render(&with)
                        }
                        _ => t.render(view),
                    };
                    let channel =
                        rendered.map_err(|e| format!("channel template {:?}: {e}", t.as_str()))?;
                    Ok((channel, Some(op.to_owned()), None))
                }
                None => {
                    let channel = match fields.channel {
                        Some(Bson::String(c)) => c,
                        None | Some(Bson::Null) => return Err("the event has no `_channel` field: set it in the connector's `pipeline` (for example with $addFields), or configure a `channel` template".into()),
                        Some(other) => return Err(format!("`_channel` must be a string, not {other}")),
                    };
                    let name = match fields.name {
                        Some(Bson::String(n)) => Some(n),
                        None | Some(Bson::Null) => Some(op.to_owned()),
                        Some(other) => {
                            return Err(format!("`_name` must be a string, not {other}"))
                        }
                    };
                    let headers = match fields.headers {
                        Some(h @ Bson::Document(_)) => Some(self.json(h)),
                        None | Some(Bson::Null) => None,
                        Some(other) => {
                            return Err(format!("`_headers` must be a document, not {other}"))
                        }
                    };
                    Ok((channel, name, headers))
                }
            }
        }

        /// Messages for one change event whose resume token is `token`.
        pub fn change(&self, event: Document, token: &Bson) -> Result<Vec<Publish>, SourceError> {
            let op = event
                .get_str("operationType")
                .unwrap_or("unknown")
                .to_owned();
            let token_text = Bson::clone(token).into_canonical_extjson().to_string();
            let id = super::event_id(event.get_timestamp("clusterTime").ok(), &token_text);
            self.messages(self.convert(event), &op, &id, &token_text)
        }

        /// Messages for one snapshot document.
        pub fn snapshot(
            &self,
            db: &str,
            coll: &str,
            doc: Document,
            resume: &Bson,
        ) -> Result<Vec<Publish>, SourceError> {
            let key = doc.get("_id").cloned().unwrap_or(Bson::Null);
            let resume_text = resume.clone().into_canonical_extjson().to_string();
            let id = super::snapshot_id(&resume_text, db, coll, &key);
            let event = bson::doc! {
                "operationType": "snapshot",
                "ns": {"db": db, "coll": coll},
                "documentKey": {"_id": key},
                "fullDocument": doc,
            };
            self.messages(self.convert(event), "snapshot", &id, &resume_text)
        }

        /// Convert a [`Document`] event once: routing reads the relaxed view, the payload is taken
        /// out of it (or of the canonical conversion when that is the configured flavour).
        fn convert(&self, mut event: Document) -> Converted {
            let fields = RoutingFields {
                channel: event.remove("_channel"),
                name: event.remove("_name"),
                headers: event.remove("_headers"),
            };
            let cluster_time = match event.get("clusterTime") {
                Some(Bson::Timestamp(ts)) => json!({"t": ts.time, "i": ts.increment}),
                _ => Value::Null,
            };
            let exact = match self.json {
                JsonMode::Relaxed => None,
                JsonMode::Canonical => match Bson::Document(event.clone()).into_canonical_extjson()
                {
                    Value::Object(m) => Some(m),
                    _ => None,
                },
            };
            Converted {
                view: Bson::Document(event).into_relaxed_extjson(),
                exact,
                fields,
                cluster_time,
            }
        }

        fn messages(
            &self,
            converted: Converted,
            op: &str,
            id: &str,
            position: &str,
        ) -> Result<Vec<Publish>, SourceError> {
            let Converted {
                view,
                exact,
                fields,
                cluster_time,
            } = converted;
            let route = self.route(&view, fields, op);
            // The document key as relaxed JSON whatever the payload's flavour: it names the
            // document in a dead-letter message, here or in the server's checks.
            let key = view.get("documentKey").filter(|k| !k.is_null()).cloned();
            let mut view = match view {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            if LIFECYCLE.contains(&op) {
                let data = self.data(&mut view, exact, cluster_time, op);
                let mut out = vec![self.control(op, data.clone(), format!("{id}:c"))];
                // Also on the routed channel, when the event resolves to one.
                if let Ok((channel, name, headers)) = route {
                    if channel != self.control_channel {
                        out.push(Publish {
                            channel,
                            name,
                            data: Some(data),
                            headers,
                            id: Some(format!("{id}:r")),
                            key,
                        });
                    }
                }
                return Ok(out);
            }
            let data = self.data(&mut view, exact, cluster_time, op);
            match route {
                Ok((channel, name, headers)) => Ok(vec![Publish {
                    channel,
                    name,
                    data: Some(data),
                    headers,
                    id: Some(id.to_owned()),
                    key,
                }]),
                Err(problem) => {
                    let ns = data["ns"].clone();
                    let key_text = key.as_ref().map_or_else(|| "null".into(), Value::to_string);
                    tracing::warn!(source = %self.connector, %problem, key = %key_text, "poison change event");
                    match self.on_poison {
                        OnPoison::Stop => Err(SourceError::Fatal {
                            what: format!("connector {}: the {op} of document {key_text} in {ns} cannot be routed: {problem} (position {position})", self.connector),
                            fix: format!("fix the document or the routing (`connectors.{}.channel` or the pipeline's `_channel`), or set `connectors.{}.on_poison = \"dead_letter\"` to set such events aside", self.connector, self.connector),
                        }),
                        OnPoison::DeadLetter => Ok(vec![Publish {
                            channel: self.dead_letter.clone(),
                            name: Some("dead_letter".into()),
                            data: Some(json!({
                                "error": problem,
                                "source": self.connector,
                                "op": op,
                                "ns": ns,
                                "key": key,
                                "position": serde_json::from_str::<Value>(position).unwrap_or(Value::Null),
                                "event": data,
                            })),
                            headers: None,
                            id: Some(format!("{id}:dead")),
                            key,
                        }]),
                    }
                }
            }
        }
    }

    /// One event converted for routing and payload.
    struct Converted {
        /// The whole event as relaxed Extended JSON, without the routing fields.
        view: Value,
        /// The canonical conversion, when `json = "canonical"`.
        exact: Option<Map<String, Value>>,
        fields: RoutingFields,
        cluster_time: Value,
    }

    /// The fields a pipeline sets to route an event, taken out of it before conversion.
    struct RoutingFields {
        channel: Option<Bson>,
        name: Option<Bson>,
        headers: Option<Bson>,
    }
}

#[cfg(test)]
mod tests {
    use super::reference::Reference;
    use super::*;
    use bson::{
        doc, oid::ObjectId, spec::BinarySubtype, Binary, DateTime, Decimal128, Document, Timestamp,
    };

    /// The connector's path: the event's bytes, as the driver hands them, to messages.
    trait Change {
        fn change(&self, event: Document, token: &Bson) -> Result<Vec<Publish>, SourceError>;
    }

    impl Change for Router {
        fn change(&self, event: Document, token: &Bson) -> Result<Vec<Publish>, SourceError> {
            self.change_raw(&RawDocumentBuf::from_document(&event).unwrap(), token)
        }
    }

    fn router(template: Option<&str>) -> Router {
        Router {
            connector: "shop".into(),
            template: template.map(|t| ChannelTemplate::parse(t).unwrap()),
            payload: Payload::Normalized,
            json: JsonMode::Relaxed,
            control_channel: "mongodb:shop".into(),
            dead_letter: "dead:shop".into(),
            on_poison: OnPoison::DeadLetter,
        }
    }

    #[test]
    fn bson_types_become_relaxed_extended_json() {
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        let event = doc! {
            "_id": {"_data": "82AA"},
            "operationType": "insert",
            "clusterTime": Timestamp { time: 1_700_000_000, increment: 3 },
            "ns": {"db": "shop", "coll": "orders"},
            "documentKey": {"_id": oid},
            "fullDocument": {
                "_id": oid,
                "store": "n1",
                "at": DateTime::from_millis(1_700_000_000_123),
                "price": Decimal128::from_bytes([0x0c, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3e, 0x30]),
                "count": 5_000_000_000i64,
                "small": 7,
                "blob": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            },
        };
        let msgs = router(Some("store:{fullDocument.store}"))
            .change(event.clone(), &Bson::Document(doc! {"_data": "82AA"}))
            .unwrap();
        assert_eq!(msgs.len(), 1);
        let m = &msgs[0];
        assert_eq!(m.channel, "store:n1");
        assert_eq!(m.name.as_deref(), Some("insert"));
        // Cluster time 1_700_000_000 = 0x6553f100, increment 3, then the token's digest.
        let id = m.id.as_deref().unwrap();
        assert!(id.starts_with("mdb:6553f10000000003:"), "{id}");
        assert_eq!(id.len(), "mdb:".len() + 16 + 1 + 16);
        let d = &m.data.as_ref().unwrap()["document"];
        assert_eq!(d["_id"], json!({"$oid": "65a1b2c3d4e5f60718293a4b"}));
        assert_eq!(d["at"], json!({"$date": "2023-11-14T22:13:20.123Z"}));
        assert_eq!(d["count"], json!(5_000_000_000i64));
        assert_eq!(d["small"], json!(7));
        assert!(d["price"]["$numberDecimal"].is_string());
        assert_eq!(
            d["blob"],
            json!({"$binary": {"base64": "AQID", "subType": "00"}})
        );
        assert_eq!(
            m.data.as_ref().unwrap()["cluster_time"],
            json!({"t": 1_700_000_000u32, "i": 3})
        );
    }

    #[test]
    fn events_read_raw_convert_exactly_as_decoded_ones() {
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        let event = doc! {
            "_id": {"_data": "82AB"},
            "operationType": "update",
            "clusterTime": Timestamp { time: 1_700_000_000, increment: 3 },
            "ns": {"db": "shop", "coll": "orders"},
            "documentKey": {"_id": oid},
            "lsid": {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] }},
            "txnNumber": 4i64,
            "_channel": "orders:n1", "_name": "order.updated", "_headers": {"v": 2},
            "updateDescription": {"updatedFields": {"qty": 3, "at": DateTime::from_millis(-1)}, "removedFields": ["old"]},
            "fullDocument": {
                "_id": oid, "store": "n1", "qty": 3, "big": 5_000_000_000i64, "ratio": 0.5, "whole": 24.0,
                "nan": f64::NAN, "price": Decimal128::from_bytes([0x0c, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3e, 0x30]),
                "tags": ["a", {"b": [1, Bson::Null, true]}], "empty": {}, "none": Bson::Null,
                "blob": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] },
                "ts": Timestamp { time: 5, increment: 6 }, "re": bson::Regex { pattern: "^a".into(), options: "i".into() },
                "min": Bson::MinKey, "max": Bson::MaxKey,
            },
        };
        let raw = bson::RawDocumentBuf::from_document(&event).unwrap();
        let token = Bson::Document(doc! {"_data": "82AB"});
        for payload in [Payload::Normalized, Payload::Raw] {
            for json in [JsonMode::Relaxed, JsonMode::Canonical] {
                for template in [Some("store:{fullDocument.store}"), None] {
                    let mut r = router(template);
                    (r.payload, r.json) = (payload, json);
                    let decoded = Reference(&r).change(event.clone(), &token).unwrap();
                    let read_raw = r.change_raw(&raw, &token).unwrap();
                    assert_eq!(read_raw, decoded, "{payload:?} {json:?} {template:?}");
                    assert_eq!(
                        serde_json::to_string(&read_raw).unwrap(),
                        serde_json::to_string(&decoded).unwrap(),
                        "the same text, key order included"
                    );
                }
            }
        }
        let txn = txn_key(&raw).unwrap();
        assert_eq!(txn.1, Bson::Int64(4));
        // Snapshot documents too.
        let full = event.get_document("fullDocument").unwrap().clone();
        let raw_full = bson::RawDocumentBuf::from_document(&full).unwrap();
        for payload in [Payload::Normalized, Payload::Raw] {
            for json in [JsonMode::Relaxed, JsonMode::Canonical] {
                let mut r = router(Some("store:{fullDocument.store}"));
                (r.payload, r.json) = (payload, json);
                let decoded = Reference(&r)
                    .snapshot("shop", "orders", full.clone(), &token)
                    .unwrap();
                let read_raw = r.snapshot_raw("shop", "orders", &raw_full, &token).unwrap();
                assert_eq!(read_raw, decoded, "{payload:?} {json:?}");
                assert_eq!(
                    serde_json::to_string(&read_raw[0].data).unwrap(),
                    serde_json::to_string(&decoded[0].data).unwrap()
                );
            }
        }
    }

    #[test]
    fn routing_failures_go_to_the_dead_letter_with_the_key() {
        let event = doc! {"_id": {"_data": "82BB"}, "operationType": "insert", "ns": {"db": "s", "coll": "o"}, "documentKey": {"_id": 4}, "fullDocument": {"_id": 4}};
        let msgs = router(Some("store:{fullDocument.store}"))
            .change(event.clone(), &Bson::Document(doc! {"_data": "82BB"}))
            .unwrap();
        assert_eq!(msgs[0].channel, "dead:shop");
        let data = msgs[0].data.as_ref().unwrap();
        assert_eq!(data["key"], json!({"_id": 4}));
        assert!(
            data["error"]
                .as_str()
                .unwrap()
                .contains("fullDocument.store"),
            "{data}"
        );
        let mut stop = router(Some("store:{fullDocument.store}"));
        stop.on_poison = OnPoison::Stop;
        assert!(matches!(
            stop.change(event.clone(), &Bson::Null),
            Err(SourceError::Fatal { .. })
        ));
    }

    #[test]
    fn pipeline_fields_route_and_leave_the_payload() {
        let mut r = router(None);
        r.payload = Payload::Raw;
        let event = doc! {"_id": {"_data": "82CC"}, "operationType": "update", "_channel": "orders:7", "_name": "order.updated", "_headers": {"v": 2}, "documentKey": {"_id": 7}};
        let m = &r.change(event.clone(), &Bson::Null).unwrap()[0];
        assert_eq!(
            (m.channel.as_str(), m.name.as_deref()),
            ("orders:7", Some("order.updated"))
        );
        assert_eq!(m.headers, Some(json!({"v": 2})));
        assert!(m.data.as_ref().unwrap().get("_channel").is_none());
        assert_eq!(m.data.as_ref().unwrap()["operationType"], "update");
    }

    #[test]
    fn lifecycle_events_are_control_messages() {
        let event = doc! {"_id": {"_data": "82DD"}, "operationType": "drop", "ns": {"db": "s", "coll": "o"}};
        let msgs = router(Some("store:{fullDocument.store}"))
            .change(event.clone(), &Bson::Null)
            .unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            (msgs[0].channel.as_str(), msgs[0].name.as_deref()),
            ("mongodb:shop", Some("drop"))
        );
        let msgs = router(Some("coll:{ns.coll}"))
            .change(event.clone(), &Bson::Null)
            .unwrap();
        assert_eq!(
            msgs.iter().map(|m| m.channel.as_str()).collect::<Vec<_>>(),
            vec!["mongodb:shop", "coll:o"]
        );
    }

    #[test]
    fn ids_derive_from_the_token_only() {
        let r = router(Some("x"));
        let e =
            doc! {"_id": {"_data": "82EE"}, "operationType": "delete", "documentKey": {"_id": 1}};
        let a = r
            .change(e.clone(), &Bson::Document(doc! {"_data": "82EE"}))
            .unwrap();
        let b = r
            .change(e.clone(), &Bson::Document(doc! {"_data": "82EE"}))
            .unwrap();
        let c = r
            .change(e.clone(), &Bson::Document(doc! {"_data": "82EF"}))
            .unwrap();
        assert_eq!(a[0].id, b[0].id);
        assert_ne!(a[0].id, c[0].id);
    }

    /// Both ways, every message and its JSON text, or the same error.
    fn same_as_the_reference(r: &Router, event: &Document, token: &Bson, what: &str) {
        let fast = r.change(event.clone(), token);
        let reference = Reference(r).change(event.clone(), token);
        match (&fast, &reference) {
            (Ok(fast), Ok(reference)) => {
                assert_eq!(fast, reference, "{what}");
                assert_eq!(
                    serde_json::to_string(fast).unwrap(),
                    serde_json::to_string(reference).unwrap(),
                    "{what}: the same text, key order included"
                );
            }
            (Err(fast), Err(reference)) => {
                assert_eq!(fast.to_string(), reference.to_string(), "{what}")
            }
            _ => panic!("{what}: {fast:?} but the reference gives {reference:?}"),
        }
    }

    #[test]
    fn every_kind_of_event_converts_as_the_reference_does() {
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        let order = doc! {
            "_id": oid, "store": "n1", "owner": oid, "n": 5, "big": 5_000_000_000i64,
            "ratio": 2.5, "whole": 24.0, "paid": true, "none": Bson::Null,
            "at": DateTime::from_millis(1_700_000_000_120), "old": DateTime::from_millis(-5),
            "tags": ["a", {"b": [1, 2.5]}], "nested": {"deep": {"er": "x"}},
            "price": Decimal128::from_bytes([0x0c, 0x30, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x3e, 0x30]),
            "blob": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3] },
            "ts": Timestamp { time: 5, increment: 6 }, "sym": Bson::Symbol("s".into()),
            "nan": f64::NAN, "inf": f64::NEG_INFINITY, "tiny": 5e-324, "zero": -0.0,
        };
        let base = doc! {
            "_id": {"_data": "82AC"},
            "clusterTime": Timestamp { time: 1_700_000_000, increment: 3 },
            "wallTime": DateTime::from_millis(1_700_000_000_123),
            "ns": {"db": "shop", "coll": "orders"},
            "documentKey": {"_id": oid},
        };
        let with = |extra: Document| {
            let mut e = base.clone();
            e.extend(extra);
            e
        };
        let events = vec![
            (
                "insert",
                with(doc! {"operationType": "insert", "fullDocument": order.clone()}),
            ),
            (
                "update",
                with(doc! {
                    "operationType": "update", "fullDocument": order.clone(),
                    "updateDescription": {"updatedFields": {"n": 6, "at": DateTime::from_millis(0)}, "removedFields": ["old"], "truncatedArrays": []},
                }),
            ),
            (
                "update without the document",
                with(doc! {
                    "operationType": "update", "fullDocument": Bson::Null,
                    "updateDescription": {"updatedFields": {"n": 6}, "removedFields": []},
                }),
            ),
            (
                "replace",
                with(doc! {"operationType": "replace", "fullDocument": order.clone()}),
            ),
            ("delete", with(doc! {"operationType": "delete"})),
            (
                "delete with its pre-image",
                with(doc! {"operationType": "delete", "fullDocumentBeforeChange": order.clone()}),
            ),
            (
                "delete with a null pre-image",
                with(
                    doc! {"operationType": "delete", "fullDocument": Bson::Null, "fullDocumentBeforeChange": Bson::Null},
                ),
            ),
            (
                "in a transaction",
                with(doc! {
                    "operationType": "insert", "fullDocument": order.clone(),
                    "lsid": {"id": Binary { subtype: BinarySubtype::Uuid, bytes: vec![7; 16] }, "uid": Binary { subtype: BinarySubtype::Generic, bytes: vec![1; 32] }},
                    "txnNumber": 4i64,
                }),
            ),
            (
                "lsid without txnNumber",
                with(
                    doc! {"operationType": "insert", "fullDocument": order.clone(), "lsid": {"id": 1}, "txnNumber": Bson::Null},
                ),
            ),
            (
                "composite key",
                with(
                    doc! {"operationType": "insert", "documentKey": {"_id": 1, "shard": "a"}, "fullDocument": {"_id": 1, "store": "n2"}},
                ),
            ),
            (
                "rename",
                with(doc! {"operationType": "rename", "to": {"db": "shop", "coll": "orders2"}}),
            ),
            ("drop", with(doc! {"operationType": "drop"})),
            (
                "dropDatabase",
                doc! {"_id": {"_data": "82AD"}, "operationType": "dropDatabase", "ns": {"db": "shop"}},
            ),
            (
                "invalidate",
                doc! {"_id": {"_data": "82AE"}, "operationType": "invalidate", "clusterTime": Timestamp { time: 1, increment: 1 }},
            ),
            (
                "no operationType",
                doc! {"_id": {"_data": "82AF"}, "documentKey": {"_id": 1}},
            ),
            (
                "routing fields",
                with(
                    doc! {"operationType": "insert", "fullDocument": order.clone(), "_channel": "p:1", "_name": "order.created", "_headers": {"v": 2, "at": DateTime::from_millis(7), "n": 1}},
                ),
            ),
            (
                "routing fields null",
                with(
                    doc! {"operationType": "insert", "_channel": "p:1", "_name": Bson::Null, "_headers": Bson::Null},
                ),
            ),
            (
                "_channel not a string",
                with(doc! {"operationType": "insert", "_channel": 5}),
            ),
            (
                "_channel null",
                with(doc! {"operationType": "insert", "_channel": Bson::Null}),
            ),
            (
                "_name not a string",
                with(doc! {"operationType": "insert", "_channel": "p:1", "_name": ["x"]}),
            ),
            (
                "_headers not a document",
                with(doc! {"operationType": "insert", "_channel": "p:1", "_headers": "v=2"}),
            ),
        ];
        let templates = [
            None,
            Some("store:{fullDocument.store}"),
            Some("c:{ns.db}-{ns.coll}"),
            Some("k:{documentKey._id}"),
            Some("k:{documentKey._id.$oid}"),
            Some("o:{fullDocument.owner.$oid}"),
            Some("n:{fullDocument.n}-{fullDocument.big}-{fullDocument.ratio}-{fullDocument.whole}-{fullDocument.paid}"),
            Some("x:{fullDocument.none}"),
            Some("x:{fullDocument.nested}"),
            Some("x:{fullDocument.nested.deep.er}"),
            Some("x:{fullDocument.nested.deep.er.more}"),
            Some("x:{fullDocument.tags}"),
            Some("x:{fullDocument.tags.0}"),
            Some("x:{fullDocument.at.$date}"),
            Some("x:{fullDocument.old.$date.$numberLong}"),
            Some("x:{fullDocument.price.$numberDecimal}"),
            Some("x:{fullDocument.nan.$numberDouble}"),
            Some("x:{fullDocument.ts.$timestamp.t}"),
            Some("x:{fullDocument.n.more}"),
            Some("t:{operationType}"),
            Some("x:{_channel}"),
            Some("x:{wallTime.$date}"),
            Some("x:{to.coll}"),
        ];
        let token = Bson::Document(doc! {"_data": "82AC"});
        let mut cases = 0;
        for template in templates {
            for payload in [Payload::Normalized, Payload::Raw] {
                for json in [JsonMode::Relaxed, JsonMode::Canonical] {
                    for on_poison in [OnPoison::DeadLetter, OnPoison::Stop] {
                        let mut r = router(template);
                        (r.payload, r.json, r.on_poison) = (payload, json, on_poison);
                        for (what, event) in &events {
                            let what =
                                format!("{what}, {template:?} {payload:?} {json:?} {on_poison:?}");
                            same_as_the_reference(&r, event, &token, &what);
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 23 * 8 * 21);
    }

    #[test]
    fn scalars_convert_exactly_as_bson_does() {
        let mut values = vec![
            Bson::Int32(i32::MIN),
            Bson::Int32(0),
            Bson::Int32(i32::MAX),
            Bson::Int64(i64::MIN),
            Bson::Int64(-1),
            Bson::Int64(i64::MAX),
            Bson::Boolean(true),
            Bson::Null,
            Bson::String("\"quoted\" \u{e9}\n".into()),
            Bson::ObjectId(ObjectId::parse_str("00ff10a0b1c2d3e4f5060708").unwrap()),
            Bson::Timestamp(Timestamp {
                time: u32::MAX,
                increment: 0,
            }),
            Bson::Undefined,
            Bson::MinKey,
            Bson::MaxKey,
            Bson::RegularExpression(bson::Regex {
                pattern: "^a".into(),
                options: "mi".into(),
            }),
            Bson::JavaScriptCode("f()".into()),
            Bson::Binary(Binary {
                subtype: BinarySubtype::UserDefined(0x80),
                bytes: vec![0xff; 5],
            }),
        ];
        for f in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            24.0,
            1e16,
            1e300,
            -1e-300,
            1e21,
            123_456_789.123,
            9_007_199_254_740_993.0,
            f64::MIN_POSITIVE,
            5e-324,
            f64::MAX,
            f64::MIN,
            f64::NAN,
            -f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            values.push(Bson::Double(f));
        }
        // Dates: the edges of the range written as text, and a spread of others.
        for ms in [
            0,
            1,
            10,
            100,
            120,
            999,
            1000,
            59_999,
            86_399_999,
            86_400_000,
            951_782_400_000,
            951_868_799_999,
            1_700_000_000_100,
            253_402_300_799_999,
            253_402_300_800_000,
            -1,
            -86_400_001,
            i64::MIN,
            i64::MAX,
        ] {
            values.push(Bson::DateTime(DateTime::from_millis(ms)));
        }
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            // xorshift: dates from 1970 to past 9999, millisecond parts of every shape.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ms = i64::try_from(x % 260_000_000_000_000).unwrap();
            values.push(Bson::DateTime(DateTime::from_millis(
                ms - ms % [1, 10, 100, 1000][(x >> 60) as usize % 4],
            )));
        }
        for v in values {
            let raw = RawDocumentBuf::from_document(&doc! {"v": v.clone()}).unwrap();
            let at = raw.get("v").unwrap().unwrap();
            assert_eq!(
                to_json(at, false).unwrap(),
                v.clone().into_relaxed_extjson(),
                "relaxed {v:?}"
            );
            assert_eq!(
                to_json(at, true).unwrap(),
                v.clone().into_canonical_extjson(),
                "canonical {v:?}"
            );
            assert_eq!(
                to_json(at, false).unwrap().to_string(),
                v.clone().into_relaxed_extjson().to_string(),
                "relaxed text {v:?}"
            );
        }
        assert_eq!(
            rfc3339_millis(1_700_000_000_120).unwrap(),
            "2023-11-14T22:13:20.12Z"
        );
        assert_eq!(rfc3339_millis(253_402_300_800_000), None);
    }

    #[test]
    fn elements_are_counted_for_every_type() {
        let oid = ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap();
        let every = doc! {
            "double": 1.5, "string": "s", "doc": {"a": 1}, "array": [1, 2], "binary": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2] },
            "undefined": Bson::Undefined, "oid": oid, "bool": true, "date": DateTime::from_millis(1), "null": Bson::Null,
            "regex": bson::Regex { pattern: "^a".into(), options: "i".into() },
            "dbpointer": Bson::try_from(json!({"$dbPointer": {"$ref": "c", "$id": {"$oid": "65a1b2c3d4e5f60718293a4b"}}})).unwrap(),
            "code": Bson::JavaScriptCode("f()".into()), "symbol": Bson::Symbol("s".into()),
            "scope": Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope { code: "f()".into(), scope: doc! {"x": 1} }),
            "int32": 1, "ts": Timestamp { time: 1, increment: 2 }, "int64": 1i64,
            "decimal": Decimal128::from_bytes([0; 16]), "min": Bson::MinKey, "max": Bson::MaxKey,
        };
        assert!(matches!(every.get("dbpointer"), Some(Bson::DbPointer(_))));
        assert_eq!(elements(&bytes(&every)), every.len());
        assert_eq!(elements(&bytes(&doc! {})), 0);
        let raw = RawDocumentBuf::from_document(&doc! {"a": [1, "x", {"b": 2}]}).unwrap();
        let a = raw.get_array("a").unwrap();
        assert_eq!(elements(a.as_bytes()), 3);
        // Cut short: no count, no panic.
        let cut = bytes(&every);
        for len in 0..cut.len() - 1 {
            assert!(elements(&cut[..len]) < every.len());
        }
    }

    fn bytes(d: &Document) -> Vec<u8> {
        let mut out = Vec::new();
        d.to_writer(&mut out).unwrap();
        out
    }

    #[test]
    fn event_ids_sort_by_cluster_time_and_differ_within_one() {
        let at = |time, increment| Some(bson::Timestamp { time, increment });
        let ids = [
            event_id(at(9, 0xffff_ffff), "a"),
            event_id(at(10, 1), "b"),
            event_id(at(10, 2), "c"),
            event_id(at(0x1_0000, 0), "d"),
        ];
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // One transaction: one cluster time, told apart by the resume token.
        assert_ne!(event_id(at(10, 1), "t1"), event_id(at(10, 1), "t2"));
        // Without a cluster time the token's digest alone names the event, as before.
        assert_eq!(event_id(None, "t"), format!("mdb:{}", digest(&[b"t"])));
    }

    #[test]
    fn snapshot_ids_sort_as_the_snapshot_reads() {
        let id = |k: Bson| snapshot_id("{}", "shop", "orders", &k);
        let oids = [
            "65a1b2c3d4e5f60718293a4b",
            "65a1b2c3d4e5f60718293a4c",
            "75a1b2c3d4e5f60718293a00",
        ];
        let ids: Vec<String> = oids
            .iter()
            .map(|h| id(Bson::ObjectId(bson::oid::ObjectId::parse_str(h).unwrap())))
            .collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        let ints = [
            Bson::Int64(-5),
            Bson::Int32(-1),
            Bson::Int32(0),
            Bson::Int32(9),
            Bson::Int64(10),
            Bson::Int64(1 << 40),
        ];
        let ids: Vec<String> = ints.into_iter().map(id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        // One value, one id, whatever its integer width; other scopes differ.
        assert_eq!(id(Bson::Int32(7)), id(Bson::Int64(7)));
        assert_ne!(
            id(Bson::Int32(7)),
            snapshot_id("{}", "shop", "other", &Bson::Int32(7))
        );
        assert_eq!(
            id(Bson::String("sku-1".into())).rsplit(':').next(),
            Some("ssku-1")
        );
        // Long strings and other types by digest, within the id limit.
        let long = id(Bson::String("x".repeat(300)));
        assert!(long.len() <= 255 && long.contains(":h"), "{long}");
        assert_ne!(id(Bson::Double(1.5)), id(Bson::Double(2.5)));
    }
}
