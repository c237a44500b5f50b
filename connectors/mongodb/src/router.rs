//! The **Router** stage (docs/architecture.md): one change event (or snapshot document) to
//! messages, routed by the channel template or by the `_channel`/`_name`/`_headers` fields a
//! pipeline sets, with the payload of [`crate::payload`] and the ids of [`crate::message_id`];
//! lifecycle events become control messages, and events that cannot be routed go to the
//! dead-letter channel (or stop the connector).
//!
//! Events are read from the bytes the driver received, once ([`crate::event`]): the template
//! looks its fields up in the BSON itself, and only the parts the payload carries are converted
//! to JSON, in the configured flavour alone. (The test module keeps the straightforward version,
//! decode to a [`bson::Document`] and convert it whole with `bson`'s own conversions, and checks
//! that both give the same messages, byte for byte.)

use std::borrow::Cow;

use bson::{Bson, RawBson, RawBsonRef, RawDocument, RawDocumentBuf};
use serde_json::value::RawValue;
use serde_json::Value;
use tidings_connectors_core::route::ChannelTemplate;
use tidings_connectors_core::{json_text, Publish, SourceError};

use crate::config::{JsonMode, OnPoison, Payload};
use crate::event::{Failure, Parts, LIFECYCLE};
use crate::extjson::{self, Doc, Ext};
use crate::message_id::{event_id, extjson_text, snapshot_id};
use crate::payload::{self, DeadLetter};

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

/// Where an event was routed: channel, name, headers; or why it could not be.
type Route = Result<(String, Option<String>, Option<Box<RawValue>>), String>;

impl Router {
    fn canonical(&self) -> bool {
        matches!(self.json, JsonMode::Canonical)
    }

    /// A control message on the control channel (lifecycle, resync).
    pub fn control(&self, name: &str, data: Box<RawValue>, id: String) -> Publish {
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
        let unreadable = |e: &dyn std::fmt::Display| SourceError::Fatal {
            what: format!(
                "connector {}: MongoDB sent a document of {db}.{coll} that is not valid BSON ({e})",
                self.connector
            ),
            fix: "check the MongoDB server and driver versions; report this with the namespace"
                .into(),
        };
        let raw_key = doc.get("_id").map_err(|e| unreadable(&e))?;
        let key = match raw_key {
            Some(k) => Bson::try_from(k).map_err(|e| unreadable(&e))?,
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
        let parts = Parts::read(&event).map_err(|e| unreadable(&e))?;
        self.messages(&parts, "snapshot", &id, &resume_text)
            .map_err(|f| match f {
                Failure::Source(e) => e,
                Failure::Unreadable(e) => unreadable(&e),
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
            Some(value) => Some(extjson::text(&Ext {
                value,
                canonical: false,
            })?),
        };
        let data = payload::data(self.payload, self.canonical(), parts, op)?;
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
                // The payload's `ns`, in its flavour.
                let ns = extjson::text(&parts.ns.map(|value| Ext {
                    value,
                    canonical: self.canonical(),
                }))?;
                let key_text = key.as_deref().map_or("null", RawValue::get);
                tracing::warn!(source = %self.connector, %problem, key = %key_text, "poison change event");
                match self.on_poison {
                    OnPoison::Stop => Err(Failure::Source(SourceError::Fatal {
                        what: format!("connector {}: the {op} of document {key_text} in {ns} cannot be routed: {problem} (position {position})", self.connector),
                        fix: format!("fix the document or the routing (`connectors.{}.channel` or the pipeline's `_channel`), or set `connectors.{}.on_poison = \"dead_letter\"` to set such events aside", self.connector, self.connector),
                    })),
                    OnPoison::DeadLetter => {
                        let null = || json_text(&Value::Null);
                        let dead = DeadLetter {
                            error: &problem,
                            source: &self.connector,
                            op,
                            ns: &ns,
                            key: key.as_deref(),
                            position: &RawValue::from_string(position.to_owned())
                                .unwrap_or_else(|_| null()),
                            event: &data,
                        };
                        Ok(vec![Publish {
                            channel: self.dead_letter.clone(),
                            name: Some("dead_letter".into()),
                            data: Some(extjson::text(&dead)?),
                            headers: None,
                            id: Some(format!("{id}:dead")),
                            key,
                        }])
                    }
                }
            }
        }
    }

    /// The channel (and name, headers) an event is routed to, or why it cannot be.
    fn route(&self, parts: &Parts<'_>, op: &str) -> Result<Route, Failure> {
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
            Some(RawBsonRef::Document(doc)) => extjson::text(&Doc {
                doc,
                canonical: self.canonical(),
                skip: &[],
            })
            // Not decodable: absent, as above.
            .ok(),
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
}

#[cfg(test)]
/// The straightforward conversion this module replaced, kept as the reference the fast one is
/// checked against: decode the event to a [`Document`], convert it whole with `bson`'s own
/// `into_relaxed_extjson`/`into_canonical_extjson`, route on the relaxed JSON, then take the
/// payload out of it.
mod reference {
    use bson::{Bson, Document};
    use serde_json::{json, Map, Value};
    use tidings_connectors_core::{json_text, Publish, SourceError};

    use super::Router;
    use crate::config::{JsonMode, OnPoison, Payload};
    use crate::event::{LIFECYCLE, ROUTING_FIELDS};
    use crate::message_id::{event_id, snapshot_id};

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
            let id = event_id(event.get_timestamp("clusterTime").ok(), &token_text);
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
            let id = snapshot_id(&resume_text, db, coll, &key);
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
                let mut out = vec![self.control(op, json_text(&data), format!("{id}:c"))];
                // Also on the routed channel, when the event resolves to one.
                if let Ok((channel, name, headers)) = route {
                    if channel != self.control_channel {
                        out.push(Publish {
                            channel,
                            name,
                            data: Some(json_text(&data)),
                            headers: headers.as_ref().map(json_text),
                            id: Some(format!("{id}:r")),
                            key: key.as_ref().map(json_text),
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
                    data: Some(json_text(&data)),
                    headers: headers.as_ref().map(json_text),
                    id: Some(id.to_owned()),
                    key: key.as_ref().map(json_text),
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
                            data: Some(json_text(&json!({
                                "error": problem,
                                "source": self.connector,
                                "op": op,
                                "ns": ns,
                                "key": key,
                                "position": serde_json::from_str::<Value>(position).unwrap_or(Value::Null),
                                "event": data,
                            }))),
                            headers: None,
                            id: Some(format!("{id}:dead")),
                            key: key.as_ref().map(json_text),
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
    use crate::event::txn_key;
    use bson::{
        doc, oid::ObjectId, spec::BinarySubtype, Binary, DateTime, Decimal128, Document, Timestamp,
    };
    use serde_json::json;

    /// The connector's path: the event's bytes, as the driver hands them, to messages.
    trait Change {
        fn change(&self, event: Document, token: &Bson) -> Result<Vec<Publish>, SourceError>;
    }

    impl Change for Router {
        fn change(&self, event: Document, token: &Bson) -> Result<Vec<Publish>, SourceError> {
            self.change_raw(&RawDocumentBuf::from_document(&event).unwrap(), token)
        }
    }

    /// A message's JSON text, parsed to look into.
    fn value(text: &Option<Box<RawValue>>) -> Value {
        serde_json::from_str(text.as_deref().unwrap().get()).unwrap()
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
        let data = value(&m.data);
        let d = &data["document"];
        assert_eq!(d["_id"], json!({"$oid": "65a1b2c3d4e5f60718293a4b"}));
        assert_eq!(d["at"], json!({"$date": "2023-11-14T22:13:20.123Z"}));
        assert_eq!(d["count"], json!(5_000_000_000i64));
        assert_eq!(d["small"], json!(7));
        assert!(d["price"]["$numberDecimal"].is_string());
        assert_eq!(
            d["blob"],
            json!({"$binary": {"base64": "AQID", "subType": "00"}})
        );
        assert_eq!(data["cluster_time"], json!({"t": 1_700_000_000u32, "i": 3}));
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
        let data = value(&msgs[0].data);
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
        assert_eq!(m.headers.as_deref().map(RawValue::get), Some(r#"{"v":2}"#));
        assert!(value(&m.data).get("_channel").is_none());
        assert_eq!(value(&m.data)["operationType"], "update");
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
}
