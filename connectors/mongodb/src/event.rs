//! One change event (or snapshot document) to messages: routing by template or by the
//! `_channel`/`_name`/`_headers` fields a pipeline sets, the payload (`normalized` or `raw`),
//! BSON to Extended JSON, and message ids derived from the resume token so that a replay
//! deduplicates in the log.

use bson::{Bson, Document};
use serde_json::{json, Value};
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

    fn get(&self, event: &Document, key: &str) -> Value {
        event
            .get(key)
            .cloned()
            .map_or(Value::Null, |b| self.json(b))
    }

    fn data(&self, event: &Document, op: &str) -> Value {
        match self.payload {
            Payload::Raw => {
                let mut raw = event.clone();
                for f in ROUTING_FIELDS {
                    raw.remove(f);
                }
                self.json(Bson::Document(raw))
            }
            Payload::Normalized => {
                let desc = event.get_document("updateDescription").ok();
                let field = |name: &str| {
                    desc.and_then(|d| d.get(name))
                        .cloned()
                        .map_or(Value::Null, |b| self.json(b))
                };
                let txn = match (event.get("lsid"), event.get("txnNumber")) {
                    (Some(lsid), Some(n)) => {
                        json!({"lsid": self.json(lsid.clone()), "txn_number": self.json(n.clone())})
                    }
                    _ => Value::Null,
                };
                let cluster_time = match event.get("clusterTime") {
                    Some(Bson::Timestamp(ts)) => json!({"t": ts.time, "i": ts.increment}),
                    _ => Value::Null,
                };
                let mut out = json!({
                    "op": op,
                    "ns": self.get(event, "ns"),
                    "key": self.get(event, "documentKey"),
                    "document": self.get(event, "fullDocument"),
                    "before": self.get(event, "fullDocumentBeforeChange"),
                    "updated_fields": field("updatedFields"),
                    "removed_fields": field("removedFields"),
                    "cluster_time": cluster_time,
                    "txn": txn,
                });
                if op == "rename" {
                    out["to"] = self.get(event, "to");
                }
                out
            }
        }
    }

    /// The channel (and name, headers) an event is routed to, or why it cannot be.
    fn route(
        &self,
        event: &Document,
        op: &str,
    ) -> Result<(String, Option<String>, Option<Value>), String> {
        match &self.template {
            Some(t) => {
                // Templates read the event as relaxed JSON. An event without a document
                // (a delete) is rendered against its pre-image when it carries one.
                let mut view = Bson::Document(event.clone()).into_relaxed_extjson();
                if view.get("fullDocument").is_none_or(Value::is_null) {
                    if let Some(before) = view
                        .get("fullDocumentBeforeChange")
                        .cloned()
                        .filter(|b| !b.is_null())
                    {
                        view["fullDocument"] = before;
                    }
                }
                let channel = t
                    .render(&view)
                    .map_err(|e| format!("channel template {:?}: {e}", t.as_str()))?;
                Ok((channel, Some(op.to_owned()), None))
            }
            None => {
                let channel = match event.get("_channel") {
                    Some(Bson::String(c)) => c.clone(),
                    None | Some(Bson::Null) => return Err("the event has no `_channel` field: set it in the connector's `pipeline` (for example with $addFields), or configure a `channel` template".into()),
                    Some(other) => return Err(format!("`_channel` must be a string, not {other}")),
                };
                let name = match event.get("_name") {
                    Some(Bson::String(n)) => Some(n.clone()),
                    None | Some(Bson::Null) => Some(op.to_owned()),
                    Some(other) => return Err(format!("`_name` must be a string, not {other}")),
                };
                let headers = match event.get("_headers") {
                    Some(Bson::Document(h)) => Some(self.json(Bson::Document(h.clone()))),
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
    pub fn change(&self, event: &Document, token: &Bson) -> Result<Vec<Publish>, SourceError> {
        let op = event
            .get_str("operationType")
            .unwrap_or("unknown")
            .to_owned();
        let token_text = Bson::clone(token).into_canonical_extjson().to_string();
        let id = format!("mdb:{}", digest(&[token_text.as_bytes()]));
        self.messages(event, &op, &id, &token_text)
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
        self.messages(&event, "snapshot", &id, &resume_text)
    }

    /// A control message on the control channel (lifecycle, resync).
    pub fn control(&self, name: &str, data: Value, id: String) -> Publish {
        Publish {
            channel: self.control_channel.clone(),
            name: Some(name.to_owned()),
            data: Some(data),
            headers: None,
            id: Some(id),
        }
    }

    fn messages(
        &self,
        event: &Document,
        op: &str,
        id: &str,
        position: &str,
    ) -> Result<Vec<Publish>, SourceError> {
        let data = self.data(event, op);
        if LIFECYCLE.contains(&op) {
            let mut out = vec![self.control(op, data.clone(), format!("{id}:c"))];
            // Also on the routed channel, when the event resolves to one.
            if let Ok((channel, name, headers)) = self.route(event, op) {
                if channel != self.control_channel {
                    out.push(Publish {
                        channel,
                        name,
                        data: Some(data),
                        headers,
                        id: Some(format!("{id}:r")),
                    });
                }
            }
            return Ok(out);
        }
        match self.route(event, op) {
            Ok((channel, name, headers)) => Ok(vec![Publish {
                channel,
                name,
                data: Some(data),
                headers,
                id: Some(id.to_owned()),
            }]),
            Err(problem) => {
                let key = self.get(event, "documentKey");
                let ns = self.get(event, "ns");
                tracing::warn!(source = %self.connector, %problem, key = %key, "poison change event");
                match self.on_poison {
                    OnPoison::Stop => Err(SourceError::Fatal {
                        what: format!("connector {}: the {op} of document {key} in {ns} cannot be routed: {problem} (position {position})", self.connector),
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
                    }]),
                }
            }
        }
    }
}

/// The `(lsid, txnNumber)` of an event in a transaction.
pub fn txn_key(event: &Document) -> Option<(Bson, Bson)> {
    Some((event.get("lsid")?.clone(), event.get("txnNumber")?.clone()))
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
            .change(&event, &Bson::Document(doc! {"_data": "82AA"}))
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
    fn routing_failures_go_to_the_dead_letter_with_the_key() {
        let event = doc! {"_id": {"_data": "82BB"}, "operationType": "insert", "ns": {"db": "s", "coll": "o"}, "documentKey": {"_id": 4}, "fullDocument": {"_id": 4}};
        let msgs = router(Some("store:{fullDocument.store}"))
            .change(&event, &Bson::Document(doc! {"_data": "82BB"}))
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
            stop.change(&event, &Bson::Null),
            Err(SourceError::Fatal { .. })
        ));
    }

    #[test]
    fn pipeline_fields_route_and_leave_the_payload() {
        let mut r = router(None);
        r.payload = Payload::Raw;
        let event = doc! {"_id": {"_data": "82CC"}, "operationType": "update", "_channel": "orders:7", "_name": "order.updated", "_headers": {"v": 2}, "documentKey": {"_id": 7}};
        let m = &r.change(&event, &Bson::Null).unwrap()[0];
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
            .change(&event, &Bson::Null)
            .unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(
            (msgs[0].channel.as_str(), msgs[0].name.as_deref()),
            ("mongodb:shop", Some("drop"))
        );
        let msgs = router(Some("coll:{ns.coll}"))
            .change(&event, &Bson::Null)
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
            .change(&e, &Bson::Document(doc! {"_data": "82EE"}))
            .unwrap();
        let b = r
            .change(&e, &Bson::Document(doc! {"_data": "82EE"}))
            .unwrap();
        let c = r
            .change(&e, &Bson::Document(doc! {"_data": "82EF"}))
            .unwrap();
        assert_eq!(a[0].id, b[0].id);
        assert_ne!(a[0].id, c[0].id);
    }
}
