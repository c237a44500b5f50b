//! The connector's checkpoint, stored by the log as [`SourcePosition::MongoResumeToken`].
//!
//! Stored shapes (JSON):
//! - a resume token, `{"_data": "8263..."}`: resume with `resumeAfter`;
//! - `{"start_after": TOKEN}`: the stream was invalidated at TOKEN; resume with `startAfter`;
//! - `{"snapshot": {"resume": TOKEN, "ns": "db.coll", "after": ID, "reason": "initial"}}`: a
//!   snapshot is in progress; the stream resumes from TOKEN (taken before the snapshot began)
//!   once every document after `after` in `ns` and the collections sorting after it are read.
//!
//! Tokens and `_id`s are canonical Extended JSON, so they round-trip to BSON exactly.

use bson::Bson;
use serde_json::{json, Value};
use tidings_connectors_core::SourcePosition;

/// Why a snapshot runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotReason {
    /// First start with `snapshot = "initial"`.
    Initial,
    /// The stored position fell off the oplog and `on_history_lost = "resnapshot"`.
    HistoryLost,
}

impl SnapshotReason {
    fn as_str(self) -> &'static str {
        match self {
            SnapshotReason::Initial => "initial",
            SnapshotReason::HistoryLost => "history_lost",
        }
    }
}

/// A snapshot's progress.
#[derive(Debug, Clone, PartialEq)]
pub struct SnapshotProgress {
    /// Where the stream resumes once the snapshot is done.
    pub resume: Bson,
    /// The collection being read (`None`: not started).
    pub ns: Option<(String, String)>,
    /// Last `_id` published in `ns`.
    pub after: Option<Bson>,
    pub reason: SnapshotReason,
}

/// Where the connector stands.
#[derive(Debug, Clone, PartialEq)]
pub enum Position {
    /// Resume after this token (`resumeAfter`).
    Token(Bson),
    /// Start after this invalidate token (`startAfter`).
    StartAfter(Bson),
    /// A snapshot in progress.
    Snapshot(SnapshotProgress),
}

fn canonical(b: &Bson) -> Value {
    b.clone().into_canonical_extjson()
}

fn bson(v: &Value) -> Result<Bson, String> {
    Bson::try_from(v.clone()).map_err(|e| format!("not Extended JSON: {e}"))
}

impl Position {
    /// As the log stores it.
    pub fn to_source(&self) -> SourcePosition {
        SourcePosition::MongoResumeToken(match self {
            Position::Token(t) => canonical(t),
            Position::StartAfter(t) => json!({"start_after": canonical(t)}),
            Position::Snapshot(s) => json!({"snapshot": {
                "resume": canonical(&s.resume),
                "ns": s.ns.as_ref().map(|(db, coll)| format!("{db}.{coll}")),
                "after": s.after.as_ref().map(canonical),
                "reason": s.reason.as_str(),
            }}),
        })
    }

    /// Read a stored position; `Err` says what is wrong with it.
    pub fn from_source(p: &SourcePosition) -> Result<Position, String> {
        let SourcePosition::MongoResumeToken(v) = p else {
            return Err(format!("{p:?} is not a MongoDB position"));
        };
        if let Some(t) = v.get("start_after") {
            return Ok(Position::StartAfter(bson(t)?));
        }
        if let Some(s) = v.get("snapshot") {
            let resume = bson(s.get("resume").ok_or("snapshot without resume token")?)?;
            let ns = match s.get("ns") {
                Some(Value::String(ns)) => Some(
                    ns.split_once('.')
                        .map(|(d, c)| (d.to_owned(), c.to_owned()))
                        .ok_or("snapshot ns is not db.coll")?,
                ),
                _ => None,
            };
            let after = match s.get("after") {
                Some(Value::Null) | None => None,
                Some(a) => Some(bson(a)?),
            };
            let reason = match s.get("reason").and_then(Value::as_str) {
                Some("history_lost") => SnapshotReason::HistoryLost,
                _ => SnapshotReason::Initial,
            };
            return Ok(Position::Snapshot(SnapshotProgress {
                resume,
                ns,
                after,
                reason,
            }));
        }
        Ok(Position::Token(bson(v)?))
    }

    /// The position as relaxed JSON for messages and errors.
    pub fn describe(&self) -> String {
        match self.to_source() {
            SourcePosition::MongoResumeToken(v) => v.to_string(),
            other => format!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, oid::ObjectId};

    #[test]
    fn positions_round_trip() {
        let token = Bson::Document(doc! {"_data": "82ABCDEF"});
        for p in [
            Position::Token(token.clone()),
            Position::StartAfter(token.clone()),
            Position::Snapshot(SnapshotProgress {
                resume: token.clone(),
                ns: Some(("shop".into(), "orders".into())),
                after: Some(Bson::ObjectId(ObjectId::new())),
                reason: SnapshotReason::HistoryLost,
            }),
            Position::Snapshot(SnapshotProgress {
                resume: token,
                ns: None,
                after: Some(Bson::Int64(7)),
                reason: SnapshotReason::Initial,
            }),
        ] {
            assert_eq!(Position::from_source(&p.to_source()).unwrap(), p);
        }
    }
}
