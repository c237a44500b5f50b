//! A MongoDB stand-in for tests and benchmarks, spoken to by the unmodified `mongodb` driver over
//! a TCP socket.
//!
//! MongoDB cannot be installed on our build machines, so the MongoDB connector is tested against
//! this: a single replica-set primary (`hello` with `setName`, `hosts`, `isWritablePrimary`,
//! wire version 21) that serves the handshake (OP_MSG `hello`, and the legacy OP_QUERY
//! `isMaster`), change streams (`aggregate` with `$changeStream`, `getMore`, `killCursors`),
//! `endSessions`, and `find` (with `min` + `hint` index bounds)/`count`/`listCollections`/
//! `listDatabases` for snapshots. Values compare in MongoDB's order across BSON types, and range
//! filters within one type bracket, as MongoDB does.
//!
//! Tests write through the Rust API ([`MongoTestServer::insert`], [`MongoTestServer::transaction`],
//! ...): every write appends to an in-memory oplog with strictly increasing cluster times, and
//! change streams turn the oplog into events shaped as MongoDB documents them. Faults are
//! injected on purpose: [`MongoTestServer::truncate_history`] (resuming from before it fails
//! with error 286 ChangeStreamHistoryLost), [`MongoTestServer::drop_next_get_more`] (the
//! connection closes mid-`getMore`), [`MongoTestServer::fail_next_get_more`] (an error with the
//! `ResumableChangeStreamError` label).
//!
//! Connect with `directConnection=true` (see [`MongoTestServer::uri`]).

mod order;
mod pipeline;
mod server;
mod store;
mod stream;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use bson::{Bson, Document, Timestamp};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub use pipeline::CommandError;
use server::Shared;
pub use server::MAX_WIRE_VERSION;
use store::{split_ns, Write};

/// A running test server. Stops when dropped.
pub struct MongoTestServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// Writes staged for one transaction; see [`MongoTestServer::transaction`].
#[derive(Debug, Default)]
pub struct Transaction {
    writes: Vec<(String, String, Write)>,
}

impl Transaction {
    /// Insert `doc` into `ns` (`db.coll`); an ObjectId `_id` is added when missing.
    pub fn insert(&mut self, ns: &str, doc: Document) -> &mut Self {
        let (db, coll) = split_ns(ns);
        self.writes.push((db, coll, Write::Insert(doc)));
        self
    }

    /// Apply `$set`/`$unset`/`$inc` to the document with this `_id`.
    pub fn update(&mut self, ns: &str, id: impl Into<Bson>, update: Document) -> &mut Self {
        let (db, coll) = split_ns(ns);
        self.writes
            .push((db, coll, Write::Update(id.into(), update)));
        self
    }

    /// Replace the document with this `_id`.
    pub fn replace(&mut self, ns: &str, id: impl Into<Bson>, doc: Document) -> &mut Self {
        let (db, coll) = split_ns(ns);
        self.writes.push((db, coll, Write::Replace(id.into(), doc)));
        self
    }

    /// Delete the document with this `_id`.
    pub fn delete(&mut self, ns: &str, id: impl Into<Bson>) -> &mut Self {
        let (db, coll) = split_ns(ns);
        self.writes.push((db, coll, Write::Delete(id.into())));
        self
    }
}

impl MongoTestServer {
    /// Listen on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(addr.to_string()));
        let task = tokio::spawn(server::accept(listener, shared.clone()));
        Ok(MongoTestServer { addr, shared, task })
    }

    /// The address listened on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A connection string for the driver.
    pub fn uri(&self) -> String {
        format!("mongodb://{}/?directConnection=true", self.addr)
    }

    fn write<T>(&self, f: impl FnOnce(&mut store::Store) -> T) -> T {
        let (out, head) = {
            let mut state = self.shared.state.lock();
            let out = f(&mut state.store);
            (out, state.store.head_seq())
        };
        self.shared.notify(head);
        out
    }

    /// Insert into `ns` (`db.coll`); returns the `_id` (an ObjectId is added when missing).
    ///
    /// # Panics
    /// On a duplicate `_id`: tests should not do that by accident.
    pub fn insert(&self, ns: &str, doc: Document) -> Bson {
        let (db, coll) = split_ns(ns);
        self.write(|s| s.write(&db, &coll, Write::Insert(doc)))
            .unwrap_or_else(|e| panic!("insert into {ns}: {}", e.message))
    }

    /// Apply `$set`/`$unset`/`$inc` to one document. Panics if it does not exist.
    pub fn update(&self, ns: &str, id: impl Into<Bson>, update: Document) {
        let (db, coll) = split_ns(ns);
        let id = id.into();
        self.write(|s| s.write(&db, &coll, Write::Update(id, update)))
            .unwrap_or_else(|e| panic!("update in {ns}: {}", e.message));
    }

    /// Replace one document. Panics if it does not exist.
    pub fn replace(&self, ns: &str, id: impl Into<Bson>, doc: Document) {
        let (db, coll) = split_ns(ns);
        let id = id.into();
        self.write(|s| s.write(&db, &coll, Write::Replace(id, doc)))
            .unwrap_or_else(|e| panic!("replace in {ns}: {}", e.message));
    }

    /// Delete one document. Panics if it does not exist.
    pub fn delete(&self, ns: &str, id: impl Into<Bson>) {
        let (db, coll) = split_ns(ns);
        let id = id.into();
        self.write(|s| s.write(&db, &coll, Write::Delete(id)))
            .unwrap_or_else(|e| panic!("delete in {ns}: {}", e.message));
    }

    /// Run the writes `f` stages as one transaction: one cluster time, one `lsid` +
    /// `txnNumber` on every event, all or nothing. Returns the `_id`s written.
    pub fn transaction(&self, f: impl FnOnce(&mut Transaction)) -> Result<Vec<Bson>, CommandError> {
        let mut t = Transaction::default();
        f(&mut t);
        self.write(|s| s.transaction(t.writes))
    }

    /// Drop a collection: a `drop` event, and an `invalidate` for streams on that collection.
    pub fn drop_collection(&self, ns: &str) {
        let (db, coll) = split_ns(ns);
        self.write(|s| s.drop_collection(&db, &coll));
    }

    /// Rename a collection: a `rename` event, and an `invalidate` for streams on the old name.
    pub fn rename_collection(&self, from: &str, to: &str) {
        let (db, coll) = split_ns(from);
        let (to_db, to_coll) = split_ns(to);
        self.write(|s| s.rename_collection(&db, &coll, &to_db, &to_coll));
    }

    /// Drop a database: `drop` per collection, `dropDatabase`, and `invalidate` for streams on it.
    pub fn drop_database(&self, db: &str) {
        self.write(|s| s.drop_database(db));
    }

    /// Forget all history so far: a stream resuming from a point before now gets error 286.
    pub fn truncate_history(&self) {
        self.write(|s| s.truncate_history());
    }

    /// Apply the writes `f` stages, one by one (not as a transaction), and forget all history,
    /// in one step: no change stream sees them as events, and the next `getMore` of a stream
    /// that had not read past them fails with error 286, as for a stream that fell behind the
    /// oplog. Returns the `_id`s written.
    ///
    /// # Panics
    /// When a write fails (a duplicate `_id`, a missing document).
    pub fn truncate_history_after(&self, f: impl FnOnce(&mut Transaction)) -> Vec<Bson> {
        let mut t = Transaction::default();
        f(&mut t);
        self.write(|s| {
            let ids = t
                .writes
                .into_iter()
                .map(|(db, coll, w)| {
                    s.write(&db, &coll, w)
                        .unwrap_or_else(|e| panic!("write to {db}.{coll}: {}", e.message))
                })
                .collect();
            s.truncate_history();
            ids
        })
    }

    /// Close the connection of the next change stream `getMore` without answering.
    pub fn drop_next_get_more(&self) {
        self.shared.state.lock().faults.drop_get_mores += 1;
    }

    /// Never answer the next change stream `getMore`, and keep its connection open without
    /// reading from it again: the connection went silent (a frozen peer, a NAT that dropped
    /// its state). Other connections go on as before.
    pub fn stall_next_get_more(&self) {
        self.shared.state.lock().faults.stall_get_mores += 1;
    }

    /// Answer the next change stream `getMore` with this error; `resumable` adds the
    /// `ResumableChangeStreamError` label (drivers resume on it), otherwise none.
    pub fn fail_next_get_more(&self, code: i32, code_name: &'static str, resumable: bool) {
        let mut e = CommandError::new(code, code_name, format!("injected failure {code_name}"));
        if resumable {
            e.labels.push("ResumableChangeStreamError".into());
        }
        self.shared.state.lock().faults.fail_get_mores.push_back(e);
    }

    /// How many commands named `name` were received (`aggregate`, `getMore`, `hello`, ...).
    pub fn command_count(&self, name: &str) -> u64 {
        self.shared
            .state
            .lock()
            .commands
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Every `$changeStream` stage received, oldest first: shows `resumeAfter`/`startAfter`.
    pub fn change_streams_opened(&self) -> Vec<Document> {
        self.shared.state.lock().change_streams.clone()
    }

    /// Current documents of `ns`, in `_id` order.
    pub fn documents(&self, ns: &str) -> Vec<Document> {
        let (db, coll) = split_ns(ns);
        self.shared.state.lock().store.documents(&db, &coll)
    }

    /// Cluster time of the newest write.
    pub fn cluster_time(&self) -> Timestamp {
        self.shared.state.lock().store.last_ts()
    }

    /// Open server-side cursors.
    pub fn open_cursors(&self) -> usize {
        self.shared.state.lock().cursors.len()
    }
}

impl Drop for MongoTestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
