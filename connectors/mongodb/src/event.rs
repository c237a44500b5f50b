//! One change event (or snapshot document) to messages: routing by template or by the
//! `_channel`/`_name`/`_headers` fields a pipeline sets, the payload (`normalized` or `raw`),
//! BSON to Extended JSON, and message ids derived from the resume token so that a replay
//! deduplicates in the log.

use bson::{Bson, Document, RawBsonRef, RawDocument};
use serde_json::{json, Map, Value};
use tidings_connectors_core::route::ChannelTemplate;
use tidings_connectors_core::{Publish, SourceError};

use crate::config::{JsonMode, OnPoison, Payload};

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

impl Router {
    /// BSON to JSON in the configured flavour.
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
                    Some(other) => return Err(format!("`_name` must be a string, not {other}")),
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
        let id = format!("mdb:{}", digest(&[token_text.as_bytes()]));
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
        let key_text = key.clone().into_canonical_extjson().to_string();
        let resume_text = resume.clone().into_canonical_extjson().to_string();
        let id = format!(
            "mdbs:{}",
            digest(&[
                resume_text.as_bytes(),
                db.as_bytes(),
                coll.as_bytes(),
                key_text.as_bytes()
            ])
        );
        let event = bson::doc! {
            "operationType": "snapshot",
            "ns": {"db": db, "coll": coll},
            "documentKey": {"_id": key},
            "fullDocument": doc,
        };
        self.messages(self.convert(event), "snapshot", &id, &resume_text)
    }

    /// [`Router::snapshot`] for a document as the driver received it, without decoding it to a
    /// [`Document`] first.
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
        let key = match doc.get("_id").map_err(unreadable)? {
            Some(k) => Bson::try_from(k).map_err(unreadable)?,
            None => Bson::Null,
        };
        let key_text = key.clone().into_canonical_extjson().to_string();
        let resume_text = resume.clone().into_canonical_extjson().to_string();
        let id = format!(
            "mdbs:{}",
            digest(&[
                resume_text.as_bytes(),
                db.as_bytes(),
                coll.as_bytes(),
                key_text.as_bytes()
            ])
        );
        let event = |canonical: bool| -> Result<Map<String, Value>, bson::raw::Error> {
            let key = if canonical {
                key.clone().into_canonical_extjson()
            } else {
                key.clone().into_relaxed_extjson()
            };
            let mut m = Map::new();
            m.insert("operationType".into(), json!("snapshot"));
            m.insert("ns".into(), json!({"db": db, "coll": coll}));
            m.insert("documentKey".into(), json!({"_id": key}));
            m.insert(
                "fullDocument".into(),
                Value::Object(raw_object(doc, canonical, &[])?),
            );
            Ok(m)
        };
        let converted = Converted {
            view: Value::Object(event(false).map_err(unreadable)?),
            exact: match self.json {
                JsonMode::Relaxed => None,
                JsonMode::Canonical => Some(event(true).map_err(unreadable)?),
            },
            fields: RoutingFields {
                channel: None,
                name: None,
                headers: None,
            },
            cluster_time: Value::Null,
        };
        self.messages(converted, "snapshot", &id, &resume_text)
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
            JsonMode::Canonical => match Bson::Document(event.clone()).into_canonical_extjson() {
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

    /// [`Router::convert`] straight from the bytes the driver received, without building a
    /// [`Document`] first (that decoding alone costs about as much as the conversion).
    fn convert_raw(&self, event: &RawDocument) -> Result<Converted, bson::raw::Error> {
        let field = |name: &str| -> Result<Option<Bson>, bson::raw::Error> {
            Ok(event.get(name)?.and_then(|v| Bson::try_from(v).ok()))
        };
        let fields = RoutingFields {
            channel: field("_channel")?,
            name: field("_name")?,
            headers: field("_headers")?,
        };
        let cluster_time = match event.get("clusterTime")? {
            Some(RawBsonRef::Timestamp(ts)) => json!({"t": ts.time, "i": ts.increment}),
            _ => Value::Null,
        };
        let exact = match self.json {
            JsonMode::Relaxed => None,
            JsonMode::Canonical => Some(raw_object(event, true, &ROUTING_FIELDS)?),
        };
        Ok(Converted {
            view: Value::Object(raw_object(event, false, &ROUTING_FIELDS)?),
            exact,
            fields,
            cluster_time,
        })
    }

    /// Messages for one change event as the driver received it, whose resume token is `token`.
    pub fn change_raw(
        &self,
        event: &RawDocument,
        token: &Bson,
    ) -> Result<Vec<Publish>, SourceError> {
        let op = event.get_str("operationType").unwrap_or("unknown");
        let token_text = Bson::clone(token).into_canonical_extjson().to_string();
        let id = format!("mdb:{}", digest(&[token_text.as_bytes()]));
        let converted = self.convert_raw(event).map_err(|e| SourceError::Fatal {
            what: format!(
                "connector {}: MongoDB sent a change event that is not valid BSON ({e}) at position {token_text}",
                self.connector
            ),
            fix: "check the MongoDB server and driver versions; report this with the position".into(),
        })?;
        self.messages(converted, op, &id, &token_text)
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

/// A raw BSON value as Extended JSON: containers walked here, scalars converted by `bson`
/// itself, so the result is exactly what converting a decoded [`Bson`] gives.
fn raw_value(v: RawBsonRef<'_>, canonical: bool) -> Result<Value, bson::raw::Error> {
    Ok(match v {
        RawBsonRef::Document(d) => Value::Object(raw_object(d, canonical, &[])?),
        RawBsonRef::Array(a) => {
            let mut out = Vec::new();
            for item in a {
                out.push(raw_value(item?, canonical)?);
            }
            Value::Array(out)
        }
        RawBsonRef::String(s) => Value::String(s.to_owned()),
        scalar => match Bson::try_from(scalar) {
            Ok(b) if canonical => b.into_canonical_extjson(),
            Ok(b) => b.into_relaxed_extjson(),
            Err(e) => return Err(e),
        },
    })
}

/// A raw document as a JSON object, leaving out the fields named in `skip`.
fn raw_object(
    d: &RawDocument,
    canonical: bool,
    skip: &[&str],
) -> Result<Map<String, Value>, bson::raw::Error> {
    let mut out = Map::new();
    for element in d {
        let (key, value) = element?;
        if !skip.contains(&key) {
            out.insert(key.to_owned(), raw_value(value, canonical)?);
        }
    }
    Ok(out)
}

/// The fields a pipeline sets to route an event, taken out of it before conversion.
struct RoutingFields {
    channel: Option<Bson>,
    name: Option<Bson>,
    headers: Option<Bson>,
}

/// The `(lsid, txnNumber)` of an event in a transaction.
pub fn txn_key(event: &RawDocument) -> Option<(Bson, Bson)> {
    let get = |k: &str| Bson::try_from(event.get(k).ok()??).ok();
    Some((get("lsid")?, get("txnNumber")?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId, spec::BinarySubtype, Binary, DateTime, Decimal128, Timestamp};

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
        assert!(m.id.as_ref().unwrap().starts_with("mdb:"));
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
                    let decoded = r.change(event.clone(), &token).unwrap();
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
                let decoded = r.snapshot("shop", "orders", full.clone(), &token).unwrap();
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
}
