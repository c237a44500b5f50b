//! The snapshot: the stream's position taken first, then every existing document of the scope
//! read in `_id` order, a page per batch, each batch's position saying where the snapshot stands
//! so that a restart resumes it; then the change stream opens from the position taken before it.

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::error::Error as MongoError;
use mongodb::options::Hint;
use serde_json::json;
use tidings_connectors_core::{Batch, Publish, SourceError};

use super::{transient, Mode, MongoSource, OpenError};
use crate::config::Scope;
use crate::message_id::digest;
use crate::position::{Position, SnapshotProgress, SnapshotReason};
use crate::progress::SnapshotMeter;

impl MongoSource {
    /// Take the stream's position now, then read the existing documents.
    pub(super) async fn begin_snapshot(
        &mut self,
        reason: SnapshotReason,
    ) -> Result<(), SourceError> {
        let resume = match self.open(None).await {
            Ok(t) => t,
            Err(OpenError::Other(e)) => return Err(e),
            Err(OpenError::HistoryLost(e)) => {
                return Err(transient(
                    format!("connector {}: cannot open a change stream", self.name),
                    e,
                ))
            }
        };
        // The position is kept; the stream reopens from it once the snapshot is published.
        self.reader = None;
        let progress = SnapshotProgress {
            resume,
            ns: None,
            after: None,
            reason,
        };
        if reason == SnapshotReason::HistoryLost {
            let data = json!({"reason": "history_lost", "source": self.name, "detail": "the change stream's history was lost; every current document is published again, and each channel that holds one restarts under a new epoch first"});
            let id = format!(
                "mdbs-resync:{}",
                digest(&[progress
                    .resume
                    .clone()
                    .into_canonical_extjson()
                    .to_string()
                    .as_bytes()])
            );
            let message =
                self.router
                    .control("resync", tidings_connectors_core::json_text(&data), id);
            self.pending.push_back(Ok(Batch {
                messages: vec![message],
                position: Position::Snapshot(progress.clone()).to_source(),
            }));
        }
        if reason == SnapshotReason::HistoryLost {
            self.resnapshot = Some(progress.resume.clone());
            self.reset_seen.clear();
        }
        self.mode = Mode::Snapshot(Box::new(progress));
        self.snapshot_colls = None;
        Ok(())
    }

    async fn snapshot_collections(&mut self) -> Result<Vec<(String, String)>, SourceError> {
        if let Some(c) = &self.snapshot_colls {
            return Ok(c.clone());
        }
        let client = self.client().clone();
        let err = |s: &Self, e: MongoError| match s.classify(e, "list collections for the snapshot")
        {
            OpenError::Other(e) => e,
            OpenError::HistoryLost(e) => transient("listing collections".into(), e),
        };
        let mut out = match &self.scope {
            Scope::Collection { db, coll } => vec![(db.clone(), coll.clone())],
            Scope::Collections(list) => list.clone(),
            Scope::Database(db) => {
                let names = client
                    .database(db)
                    .list_collection_names()
                    .await
                    .map_err(|e| err(self, e))?;
                names
                    .into_iter()
                    .filter(|n| !n.starts_with("system."))
                    .map(|n| (db.clone(), n))
                    .collect()
            }
            Scope::Deployment => {
                let mut out = Vec::new();
                for db in client
                    .list_database_names()
                    .await
                    .map_err(|e| err(self, e))?
                {
                    if ["admin", "config", "local"].contains(&db.as_str()) {
                        continue;
                    }
                    for n in client
                        .database(&db)
                        .list_collection_names()
                        .await
                        .map_err(|e| err(self, e))?
                    {
                        if !n.starts_with("system.") {
                            out.push((db.clone(), n));
                        }
                    }
                }
                out
            }
        };
        out.sort();
        self.snapshot_colls = Some(out.clone());
        Ok(out)
    }

    /// Read the next batch of snapshot documents.
    pub(super) async fn snapshot_batch(
        &mut self,
        mut p: SnapshotProgress,
    ) -> Result<Batch, SourceError> {
        let colls = self.snapshot_collections().await?;
        // Continue with the collection in progress, or the first one sorting after it.
        let current = match &p.ns {
            None => colls.first().cloned(),
            Some(ns) => colls.iter().find(|c| *c >= ns).cloned(),
        };
        let Some((db, coll)) = current else {
            return Ok(self.finish_snapshot(p, Vec::new()));
        };
        if p.ns.as_ref() != Some(&(db.clone(), coll.clone())) {
            p.after = None;
        }
        if self.meter.is_none() {
            self.meter = Some(self.start_meter(&colls, &(db.clone(), coll.clone())).await);
        }
        // Documents stay as the driver received them: converted to JSON without decoding.
        let collection = self
            .client()
            .database(&db)
            .collection::<RawDocumentBuf>(&coll);
        if p.after.is_none() {
            tracing::debug!(source = %self.name, ns = %format!("{db}.{coll}"), "snapshot of collection starting");
        }
        let batch = self.config.snapshot_batch_size;
        // Page by an index bound on `_id`, not by `{_id: {$gt: last}}`: a range filter compares
        // within one BSON type bracket only, so after the last number it would never reach the
        // strings, ObjectIds or dates of a collection whose `_id`s mix types. The bound follows
        // the index's order, which is MongoDB's order across types. `min` is inclusive: the page
        // asks for one more document and drops the one it starts at.
        let find = collection.find(doc! {}).sort(doc! {"_id": 1});
        let find = match &p.after {
            Some(after) => find
                .min(doc! {"_id": after.clone()})
                .hint(Hint::Keys(doc! {"_id": 1}))
                .limit(i64::from(batch) + 1)
                .batch_size(batch.saturating_add(1)),
            None => find.limit(i64::from(batch)).batch_size(batch),
        };
        let mut cursor = find.await.map_err(|e| {
            transient(
                format!(
                    "connector {}: snapshot read of {db}.{coll} failed",
                    self.name
                ),
                e,
            )
        })?;
        let mut docs = Vec::new();
        while cursor.advance().await.map_err(|e| {
            transient(
                format!(
                    "connector {}: snapshot read of {db}.{coll} failed",
                    self.name
                ),
                e,
            )
        })? {
            docs.push(cursor.deserialize_current().map_err(|e| {
                transient(
                    format!(
                        "connector {}: snapshot document of {db}.{coll} unreadable",
                        self.name
                    ),
                    e,
                )
            })?);
        }
        let id_of = |d: &RawDocumentBuf| {
            d.get("_id")
                .ok()
                .flatten()
                .and_then(|v| Bson::try_from(v).ok())
        };
        if p.after.is_some() && docs.first().and_then(id_of).as_ref() == p.after.as_ref() {
            docs.remove(0);
        }
        docs.truncate(batch as usize);
        let full = docs.len() == batch as usize;
        let last_id = docs.last().and_then(id_of);
        let read = docs.len();
        let mut messages = Vec::with_capacity(docs.len());
        for d in docs {
            for m in self.router.snapshot_raw(&db, &coll, &d, &p.resume)? {
                self.note_reset(&m.channel, &p);
                messages.push(m);
            }
        }
        if let Some(meter) = &mut self.meter {
            meter.add(read as u64, &format!("{db}.{coll}"));
        }
        if full {
            p.ns = Some((db, coll));
            p.after = last_id;
            self.mode = Mode::Snapshot(Box::new(p.clone()));
            return Ok(Batch {
                messages,
                position: Position::Snapshot(p).to_source(),
            });
        }
        // This collection is done: on to the next, or to the stream.
        match colls.iter().find(|c| **c > (db.clone(), coll.clone())) {
            Some(next) => {
                p.ns = Some(next.clone());
                p.after = None;
                self.mode = Mode::Snapshot(Box::new(p.clone()));
                Ok(Batch {
                    messages,
                    position: Position::Snapshot(p).to_source(),
                })
            }
            None => Ok(self.finish_snapshot(p, messages)),
        }
    }

    /// After a history loss, each channel restarts under a new epoch just before its first
    /// re-published document: the runner resets it (see
    /// [`tidings_connectors_core::Source::take_resets`]) before appending the batch that holds
    /// that document.
    fn note_reset(&mut self, channel: &str, p: &SnapshotProgress) {
        if p.reason != SnapshotReason::HistoryLost
            || channel == self.router.control_channel
            || channel == self.router.dead_letter
            || !self.reset_seen.insert(channel.to_owned())
        {
            return;
        }
        self.reset_pending.push(channel.to_owned());
    }

    /// Meter a snapshot run: the estimated documents of every collection, those of the
    /// collections sorting before `current` counted as done (a run resumed after a restart).
    async fn start_meter(
        &self,
        colls: &[(String, String)],
        current: &(String, String),
    ) -> SnapshotMeter {
        let (mut total, mut done) = (0, 0);
        for (db, coll) in colls {
            // An estimate from collection metadata (no scan); progress is not worth failing for.
            let n = match self
                .client()
                .database(db)
                .collection::<Document>(coll)
                .estimated_document_count()
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(source = %self.name, ns = %format!("{db}.{coll}"), error = %e, "no document count estimate");
                    0
                }
            };
            total += n;
            if (db, coll) < (&current.0, &current.1) {
                done += n;
            }
        }
        SnapshotMeter::new(&self.name, total, done, self.display)
    }

    fn finish_snapshot(&mut self, p: SnapshotProgress, messages: Vec<Publish>) -> Batch {
        if let Some(mut meter) = self.meter.take() {
            meter.finish();
        }
        tracing::info!(source = %self.name, "snapshot done; streaming changes from the position taken before it");
        let position = Position::Token(p.resume);
        self.reopen = Some(position.clone());
        self.mode = Mode::Streaming;
        Batch {
            messages,
            position: position.to_source(),
        }
    }
}
