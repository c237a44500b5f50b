//! The MongoDB connector end to end: the real server and binary, the unmodified `mongodb` driver,
//! and a MongoDB deployment chosen by [`Mongo::start`]: the wire-level test server, or a real
//! replica set when `TIDINGS_TEST_MONGODB_URI` is set (docker-compose.yml has one). Tests that
//! inject faults MongoDB cannot be asked for (history truncation, dropped `getMore`s) use the
//! test server with either setting, through [`Mongo::start_test_server`].

use std::collections::BTreeMap;
use std::time::Duration;

use mongodb::bson::{doc, Bson, Document};
use serde_json::{json, Value};
use tidings::config::Config;
use tidings::config::ConnectorConfig;
use tidings::runtime::Server;
use tidings_connector_mongodb::config::{OnHistoryLost, OnInvalidate, SnapshotMode};
use tidings_connector_mongodb::{MongoConfig, MongoSource, MongoUri};
use tidings_connectors_core::{Source, SourcePosition};
use tidings_mongo_testserver::MongoTestServer;
use tidings_testkit::process::Process;
use tidings_testkit::rest::{channel_epoch, connector_status, history};
use tidings_testkit::tidings_exe;
use tidings_testkit::ws::Client;
use tidings_testkit::{KEY, WAIT};

/// A message's payload (JSON text), parsed to look into.
fn data_of(m: &tidings_connectors_core::Publish) -> Value {
    serde_json::from_str(m.data.as_deref().unwrap().get()).unwrap()
}

/// A MongoDB deployment for one test, with a database of its own.
struct Mongo {
    test: Option<MongoTestServer>,
    client: mongodb::Client,
    uri: String,
    db: String,
}

fn unique_db() -> String {
    format!(
        "tidings_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000
    )
}

impl Mongo {
    /// The real replica set at `TIDINGS_TEST_MONGODB_URI`, else the test server.
    async fn start() -> Mongo {
        match std::env::var("TIDINGS_TEST_MONGODB_URI") {
            Ok(uri) if !uri.trim().is_empty() => {
                let client = mongodb::Client::with_uri_str(uri.trim()).await.unwrap();
                Mongo {
                    test: None,
                    client,
                    uri: uri.trim().to_owned(),
                    db: unique_db(),
                }
            }
            _ => Self::start_test_server().await,
        }
    }

    /// Always the test server: for faults a real deployment cannot be asked for.
    async fn start_test_server() -> Mongo {
        let server = MongoTestServer::start().await.unwrap();
        let uri = server.uri();
        let client = mongodb::Client::with_uri_str(&uri).await.unwrap();
        Mongo {
            test: Some(server),
            client,
            uri,
            db: "shop".into(),
        }
    }

    fn ts(&self) -> &MongoTestServer {
        self.test.as_ref().expect("this test needs the test server")
    }

    fn ns(&self, coll: &str) -> String {
        format!("{}.{coll}", self.db)
    }

    fn coll(&self, coll: &str) -> mongodb::Collection<Document> {
        self.client.database(&self.db).collection(coll)
    }

    async fn insert(&self, coll: &str, d: Document) {
        match &self.test {
            Some(t) => {
                t.insert(&self.ns(coll), d);
            }
            None => {
                self.coll(coll).insert_one(d).await.unwrap();
            }
        }
    }

    async fn update(&self, coll: &str, id: impl Into<Bson>, update: Document) {
        let id = id.into();
        match &self.test {
            Some(t) => t.update(&self.ns(coll), id, update),
            None => {
                self.coll(coll)
                    .update_one(doc! {"_id": id}, update)
                    .await
                    .unwrap();
            }
        }
    }

    async fn delete(&self, coll: &str, id: impl Into<Bson>) {
        let id = id.into();
        match &self.test {
            Some(t) => t.delete(&self.ns(coll), id),
            None => {
                self.coll(coll).delete_one(doc! {"_id": id}).await.unwrap();
            }
        }
    }

    /// Insert every document of `docs` into `coll` in one transaction.
    async fn transaction(&self, coll: &str, docs: Vec<Document>) {
        match &self.test {
            Some(t) => {
                let ns = self.ns(coll);
                t.transaction(|tx| {
                    for d in docs {
                        tx.insert(&ns, d);
                    }
                })
                .unwrap();
            }
            None => {
                let mut s = self.client.start_session().await.unwrap();
                s.start_transaction().await.unwrap();
                for d in docs {
                    self.coll(coll).insert_one(d).session(&mut s).await.unwrap();
                }
                s.commit_transaction().await.unwrap();
            }
        }
    }

    /// Record pre-images, so deletes carry the document they removed (real MongoDB needs
    /// `changeStreamPreAndPostImages` on the collection; the test server always has them).
    async fn record_pre_images(&self, coll: &str) {
        if self.test.is_none() {
            self.client
                .database(&self.db)
                .run_command(
                    doc! {"create": coll, "changeStreamPreAndPostImages": {"enabled": true}},
                )
                .await
                .unwrap();
        }
    }

    async fn drop_collection(&self, coll: &str) {
        match &self.test {
            Some(t) => t.drop_collection(&self.ns(coll)),
            None => self.coll(coll).drop().await.unwrap(),
        }
    }

    /// Connector settings for `coll`, routed by `channel`, snapshot off.
    fn config(&self, coll: &str, channel: &str) -> MongoConfig {
        let mut c = MongoConfig::for_collection(
            MongoUri::new(&self.uri),
            &self.ns(coll),
            Some(channel.into()),
        );
        c.snapshot = SnapshotMode::Never;
        c.max_await = Duration::from_millis(100);
        c
    }
}

/// The server in this process with one MongoDB connector named `name`.
async fn serve(dir: &std::path::Path, name: &str, mongo: MongoConfig) -> Server {
    serve_with(dir, name, mongo, |_| {}).await
}

/// [`serve`] with the server's configuration adjusted first.
async fn serve_with(
    dir: &std::path::Path,
    name: &str,
    mongo: MongoConfig,
    adjust: impl FnOnce(&mut Config),
) -> Server {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    adjust(&mut config);
    config.add_api_key(KEY).unwrap();
    config
        .connectors
        .insert(name.into(), ConnectorConfig::Mongodb(mongo));
    let server = Server::start(config).await.expect("server starts");
    // Writes before the stream took its position would not be seen: wait for it.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.log().checkpoint(name).await.unwrap().is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connector stores its start position"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server
}

/// The same data directory served without connectors: to read what a stopped connector left.
async fn reopen(server: Server, dir: &std::path::Path) -> Server {
    server.shutdown();
    server.wait().await;
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_path_buf(),
        ..Config::default()
    };
    config.add_api_key(KEY).unwrap();
    Server::start(config).await.expect("server starts")
}

fn base(server: &Server) -> String {
    format!("http://{}", server.addr())
}

/// Poll history until `f` accepts it (or fail after the wait).
async fn wait_for(base: &str, channel: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let http = reqwest::Client::new();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    loop {
        let items = history(&http, base, channel).await;
        if f(&items) {
            return items;
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "{channel} never reached the expected state; it holds {} messages: {:?}",
                items.len(),
                items.iter().rev().take(3).collect::<Vec<_>>()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How often each `_id` appears among messages named `op` (as relaxed JSON text).
fn keys(items: &[Value], op: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for m in items.iter().filter(|m| m["name"] == op) {
        *out.entry(m["data"]["key"]["_id"].to_string()).or_default() += 1;
    }
    out
}

async fn wait_failure(server: &Server) -> String {
    let failures = server.source_failures();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(f) = failures.lock().first() {
            return f.clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the connector did not stop"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_after_sigkill_delivers_every_change_exactly_once() {
    let mongo = Mongo::start().await;
    for i in 0..5 {
        mongo.insert("orders", doc! {"_id": i, "store": "n1"}).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--mongodb",
        &mongo.uri,
        "--collection",
        &mongo.ns("orders"),
        "--channel",
        "orders:{fullDocument.store}",
    ];
    let mut tidings = Process::serve(tidings_exe!(), dir.path(), &args).await;
    // The snapshot publishes what exists; the stream follows.
    wait_for(&tidings.http(), "orders:n1", |m| {
        keys(m, "snapshot").len() == 5
    })
    .await;
    for i in 5..105 {
        mongo.insert("orders", doc! {"_id": i, "store": "n1"}).await;
    }
    wait_for(&tidings.http(), "orders:n1", |m| {
        keys(m, "insert").len() >= 40
    })
    .await;
    tidings.child.start_kill().unwrap();
    tidings.child.wait().await.unwrap();
    // Written while tidings is down.
    for i in 105..130 {
        mongo.insert("orders", doc! {"_id": i, "store": "n1"}).await;
    }
    let tidings = Process::serve(tidings_exe!(), dir.path(), &args).await;
    let items = wait_for(&tidings.http(), "orders:n1", |m| {
        keys(m, "insert").len() == 125
    })
    .await;
    let inserts = keys(&items, "insert");
    assert!(
        inserts.values().all(|n| *n == 1),
        "every insert exactly once: {inserts:?}"
    );
    assert!(keys(&items, "snapshot").values().all(|n| *n == 1));
    assert_eq!(items.len(), 130, "no duplicates and nothing else");
    let serials: Vec<u64> = items
        .iter()
        .map(|m| m["serial"].as_u64().unwrap())
        .collect();
    assert!(serials.windows(2).all(|w| w[0] < w[1]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_driver_resumes_by_itself_after_a_dropped_connection() {
    let mongo = Mongo::start_test_server().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        "shop",
        mongo.config("orders", "orders:{fullDocument.store}"),
    )
    .await;
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    wait_for(&base(&server), "orders:n1", |m| m.len() == 1).await;
    mongo.ts().drop_next_get_more();
    mongo.insert("orders", doc! {"_id": 2, "store": "n1"}).await;
    wait_for(&base(&server), "orders:n1", |m| m.len() == 2).await;
    mongo.ts().fail_next_get_more(6, "HostUnreachable", true);
    mongo.insert("orders", doc! {"_id": 3, "store": "n1"}).await;
    let items = wait_for(&base(&server), "orders:n1", |m| m.len() == 3).await;
    assert_eq!(keys(&items, "insert").len(), 3);
    let opened = mongo.ts().change_streams_opened();
    assert_eq!(
        opened.len(),
        3,
        "one open and two resumes by the driver: {opened:?}"
    );
    assert!(
        opened[1..].iter().all(|s| s.contains_key("resumeAfter")),
        "{opened:?}"
    );
    assert!(server.source_failures().lock().is_empty());
}

/// A change stream connection that goes silent without being closed (a frozen peer, a NAT
/// that dropped its state): the driver sets no socket timeout and would wait forever, so the
/// connector gives the `getMore` up after `max_await + network_timeout`, opens the change
/// stream again from its checkpoint on a new connection, and the insert made meanwhile
/// arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_stream_connection_gone_silent_is_replaced() {
    let mongo = Mongo::start_test_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = mongo.config("orders", "orders:{fullDocument.store}");
    config.network_timeout = Duration::from_secs(1);
    // Its own name: connector status is process-wide, and other tests run a "shop".
    let server = serve(dir.path(), "silent", config).await;
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    wait_for(&base(&server), "orders:n1", |m| m.len() == 1).await;
    let opened_before = mongo.ts().change_streams_opened().len();
    mongo.ts().stall_next_get_more();
    let stalled_at = std::time::Instant::now();
    mongo.insert("orders", doc! {"_id": 2, "store": "n1"}).await;
    let items = wait_for(&base(&server), "orders:n1", |m| m.len() == 2).await;
    let took = stalled_at.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "delivered after {took:?}: the stalled getMore was not waited for"
    );
    let inserts = keys(&items, "insert");
    assert!(
        inserts.len() == 2 && inserts.values().all(|n| *n == 1),
        "{inserts:?}"
    );
    let opened = mongo.ts().change_streams_opened();
    assert_eq!(
        opened.len(),
        opened_before + 1,
        "one new change stream: {opened:?}"
    );
    assert!(
        opened.last().unwrap().contains_key("resumeAfter"),
        "{opened:?}"
    );
    let silent = connector_status(&base(&server), "silent").await;
    assert!(
        silent["last_error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not answer a getMore")),
        "{silent}"
    );
    assert_eq!(silent["reconnects"], 1, "{silent}");
    server.shutdown();
    server.wait().await;
}

/// Connector `shop` streams one change, then a change falls off the oplog while tidings is
/// down; the server comes back (its configuration changed by `adjust`, which may add
/// connectors) to a history that lost its position.
async fn history_lost_setup(
    policy: OnHistoryLost,
    adjust: impl FnOnce(&Mongo, &mut Config),
) -> (Mongo, tempfile::TempDir, Server) {
    let mongo = Mongo::start_test_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = mongo.config("orders", "orders:{fullDocument.store}");
    config.on_history_lost = policy;
    let server = serve(dir.path(), "shop", config.clone()).await;
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    wait_for(&base(&server), "orders:n1", |m| m.len() == 1).await;
    server.shutdown();
    server.wait().await;
    // While tidings is down the change falls off the oplog.
    mongo.insert("orders", doc! {"_id": 2, "store": "n1"}).await;
    mongo.truncate_and_settle();
    let server = serve_with(dir.path(), "shop", config, |c| adjust(&mongo, c)).await;
    (mongo, dir, server)
}

/// `/readyz`: its status and body.
async fn readyz(server: &Server) -> (u16, String) {
    let r = reqwest::get(format!("{}/readyz", base(server)))
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

impl Mongo {
    fn truncate_and_settle(&self) {
        self.ts().truncate_history();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lost_fails_naming_the_position_and_the_cure() {
    // A second connector on another collection, healthy.
    let (mongo, dir, server) = history_lost_setup(OnHistoryLost::Fail, |mongo, c| {
        c.connectors.insert(
            "stock".into(),
            ConnectorConfig::Mongodb(mongo.config("stock", "stock:{fullDocument.store}")),
        );
    })
    .await;
    let failure = wait_failure(&server).await;
    assert!(
        failure.contains("no longer has the change stream position"),
        "{failure}"
    );
    assert!(failure.contains("_data"), "names the lost token: {failure}");
    assert!(
        failure.contains("on_history_lost = \"resnapshot\""),
        "{failure}"
    );
    assert!(failure.contains("286"), "{failure}");
    // The connector stopped alone, saying why and what to do, where the operator looks.
    let shop = connector_status(&base(&server), "shop").await;
    assert_eq!(shop["state"], "stopped", "{shop}");
    let reason = shop["reason"].as_str().unwrap();
    assert!(
        reason.contains("no longer has the change stream position") && reason.contains("_data"),
        "{reason}"
    );
    assert!(
        reason.contains("to fix: ") && reason.contains("on_history_lost = \"resnapshot\""),
        "{reason}"
    );
    let (code, body) = readyz(&server).await;
    assert_eq!(
        code, 200,
        "by default a stopped connector leaves the node ready: {body}"
    );
    assert!(
        body.contains("stopped: shop;"),
        "names the stopped connector: {body}"
    );
    assert!(!body.contains("stock"), "{body}");
    assert!(
        !body.contains("_data"),
        "the reason stays behind the API key: {body}"
    );
    let http = reqwest::Client::new();
    assert_eq!(
        tidings_testkit::rest::metric(
            &http,
            &base(&server),
            "tidings_connectors_stopped_total{connector=\"shop\"}"
        )
        .await,
        1.0
    );
    // The rest keeps serving: the other connector streams, REST publishes reach subscribers.
    let deadline = tokio::time::Instant::now() + WAIT;
    while server.log().checkpoint("stock").await.unwrap().is_none() {
        assert!(tokio::time::Instant::now() < deadline, "stock starts");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    mongo.insert("stock", doc! {"_id": 7, "store": "n1"}).await;
    wait_for(&base(&server), "stock:n1", |m| m.len() == 1).await;
    assert_eq!(
        connector_status(&base(&server), "stock").await["state"],
        "running"
    );
    let mut ws = Client::connect(&format!("ws://{}/v1/connect", server.addr()), Some(KEY)).await;
    ws.attach("news:1", json!({})).await;
    tidings_testkit::rest::publish_data(&http, &base(&server), "news:1", &[json!("still up")])
        .await;
    assert_eq!(ws.messages(1).await[0]["data"], "still up");
    assert_eq!(
        server.source_failures().lock().len(),
        1,
        "only shop stopped"
    );
    // Nothing was skipped silently: insert 2 is not in the log, and no new checkpoint either.
    let server = reopen(server, dir.path()).await;
    assert_eq!(history(&http, &base(&server), "orders:n1").await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_connector_makes_the_node_unready_when_configured() {
    let (_mongo, _dir, server) = history_lost_setup(OnHistoryLost::Fail, |_, c| {
        c.health.unready_on_stopped_connector = true;
    })
    .await;
    wait_failure(&server).await;
    let (code, body) = readyz(&server).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("stopped: shop;"), "{body}");
    assert!(
        body.contains("GET /v1/connectors"),
        "says where the reason is: {body}"
    );
    // Unready, not down: it still answers.
    let r = reqwest::get(format!("{}/healthz", base(&server)))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown();
    server.wait().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lost_resnapshot_restarts_the_channels_under_a_new_epoch() {
    let mongo = Mongo::start_test_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = mongo.config("orders", "orders:{fullDocument.store}");
    config.on_history_lost = OnHistoryLost::Resnapshot;
    let server = serve(dir.path(), "shop", config.clone()).await;
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    let before = wait_for(&base(&server), "orders:n1", |m| m.len() == 1).await;
    let old_epoch = channel_epoch(&base(&server), "orders:n1").await;
    server.shutdown();
    server.wait().await;
    // While tidings is down a change falls off the oplog.
    mongo.insert("orders", doc! {"_id": 2, "store": "n1"}).await;
    mongo.truncate_and_settle();
    let server = serve(dir.path(), "shop", config).await;
    let items = wait_for(&base(&server), "orders:n1", |m| {
        m.iter().filter(|x| x["name"] == "snapshot").count() == 2
    })
    .await;
    // The old history is gone with its epoch; the channel holds the current documents.
    let names: Vec<&str> = items.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["snapshot", "snapshot"]);
    assert_eq!(keys(&items, "snapshot").len(), 2);
    let new_epoch = channel_epoch(&base(&server), "orders:n1").await;
    assert_ne!(
        new_epoch, old_epoch,
        "the channel restarted under a new epoch"
    );
    assert!(
        items[0]["serial"].as_u64() > before[0]["serial"].as_u64(),
        "serials keep increasing across epochs"
    );
    // A client coming back with its old position is told continuity was lost.
    let mut c = Client::connect(&format!("ws://{}/v1/connect", server.addr()), Some(KEY)).await;
    let a = c
        .attach(
            "orders:n1",
            serde_json::json!({"from": {"epoch": old_epoch, "serial": before[0]["serial"]}}),
        )
        .await;
    assert_eq!(
        (a["resumed"].as_bool(), a["reason"].as_str()),
        (Some(false), Some("epoch_changed")),
        "{a}"
    );
    // The control channel says why.
    let control = wait_for(&base(&server), "mongodb:shop", |m| !m.is_empty()).await;
    assert_eq!(control[0]["name"], "resync");
    assert_eq!(control[0]["data"]["reason"], "history_lost");
    // And the stream goes on in the new epoch, from the position taken before the snapshot.
    mongo.insert("orders", doc! {"_id": 3, "store": "n1"}).await;
    wait_for(&base(&server), "orders:n1", |m| {
        m.last()
            .is_some_and(|x| x["name"] == "insert" && x["data"]["key"]["_id"] == 3)
    })
    .await;
    assert_eq!(channel_epoch(&base(&server), "orders:n1").await, new_epoch);
    assert!(server.source_failures().lock().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_lost_while_attached_announces_the_new_epoch_then_the_documents() {
    let mongo = Mongo::start_test_server().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = mongo.config("orders", "orders:{fullDocument.store}");
    config.on_history_lost = OnHistoryLost::Resnapshot;
    let server = serve(dir.path(), "shop", config).await;
    let mut c = Client::connect(&format!("ws://{}/v1/connect", server.addr()), Some(KEY)).await;
    let attached = c
        .attach("orders:n1", serde_json::json!({"rewind": 100}))
        .await;
    let old_epoch = attached["epoch"].as_str().unwrap().to_owned();
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    let first = c.messages(1).await;
    assert_eq!(first[0]["name"], "insert");
    // The running stream falls behind the oplog: two writes roll off before it reads them,
    // and its next getMore fails with 286.
    let ns = mongo.ns("orders");
    mongo.ts().truncate_history_after(|t| {
        t.insert(&ns, doc! {"_id": 2, "store": "n1"});
        t.insert(&ns, doc! {"_id": 3, "store": "n2"});
    });
    // The client is told continuity was lost, under a new epoch...
    let v = c.recv().await;
    assert_eq!(
        (
            v["type"].as_str(),
            v["resumed"].as_bool(),
            v["reason"].as_str()
        ),
        (Some("attached"), Some(false), Some("epoch_changed")),
        "{v}"
    );
    assert_ne!(v["epoch"].as_str().unwrap(), old_epoch);
    assert_eq!(
        v["serial"], first[0]["serial"],
        "delivery continues after the old head"
    );
    // ...then receives the channel's current documents, nothing of the other store.
    let docs = c.messages(2).await;
    let got: Vec<(&str, i64)> = docs
        .iter()
        .map(|m| {
            (
                m["name"].as_str().unwrap(),
                m["data"]["key"]["_id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, vec![("snapshot", 1), ("snapshot", 2)]);
    let other = wait_for(&base(&server), "orders:n2", |m| m.len() == 1).await;
    assert_eq!(other[0]["name"], "snapshot");
    // Changes after the re-read follow in the same new epoch.
    mongo.insert("orders", doc! {"_id": 4, "store": "n1"}).await;
    let next = c.messages(1).await;
    assert_eq!(
        (
            next[0]["name"].as_str(),
            next[0]["data"]["key"]["_id"].as_i64()
        ),
        (Some("insert"), Some(4))
    );
    assert!(server.source_failures().lock().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_is_a_control_message_then_a_stop_or_start_after() {
    // Policy fail.
    let mongo = Mongo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        "shop",
        mongo.config("orders", "orders:{fullDocument.store}"),
    )
    .await;
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    wait_for(&base(&server), "orders:n1", |m| m.len() == 1).await;
    mongo.drop_collection("orders").await;
    assert!(wait_failure(&server).await.contains("invalidated"));
    // The control messages were appended before the connector stopped.
    let server = reopen(server, dir.path()).await;
    let http = reqwest::Client::new();
    let control = history(&http, &base(&server), "mongodb:shop").await;
    let names: Vec<&str> = control
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["drop", "invalidate"]);
    assert_eq!(control[0]["data"]["ns"]["coll"], "orders");
    server.shutdown();
    server.wait().await;

    // Policy start_after: the recreated collection's changes keep coming.
    let mut config = mongo.config("items", "items:{fullDocument.store}");
    config.on_invalidate = OnInvalidate::StartAfter;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), "items", config).await;
    mongo.insert("items", doc! {"_id": 1, "store": "n1"}).await;
    wait_for(&base(&server), "items:n1", |m| m.len() == 1).await;
    mongo.drop_collection("items").await;
    wait_for(&base(&server), "mongodb:items", |m| m.len() == 2).await;
    mongo.insert("items", doc! {"_id": 2, "store": "n1"}).await;
    wait_for(&base(&server), "items:n1", |m| m.len() == 2).await;
    assert!(server.source_failures().lock().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_collection_keeps_its_checkpoint_fresh() {
    let mongo = Mongo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = mongo.config("quiet", "quiet:{fullDocument.store}");
    config.checkpoint_interval = Duration::from_millis(200);
    let server = serve(dir.path(), "shop", config).await;
    let checkpoint = || async { server.log().checkpoint("shop").await.unwrap() };
    let deadline = tokio::time::Instant::now() + WAIT;
    while checkpoint().await.is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the start position is stored at once"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let first = checkpoint().await.unwrap();
    // Writes elsewhere move the cluster time; the quiet collection's token follows.
    let mut advanced = None;
    for i in 0..100 {
        mongo.insert("busy", doc! {"_id": i}).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = checkpoint().await.unwrap();
        if now != first {
            advanced = Some(now);
            break;
        }
    }
    let advanced = advanced.expect("the checkpoint advanced without any event on the collection");
    assert!(
        matches!(advanced, SourcePosition::MongoResumeToken(ref v) if v.get("_data").is_some())
    );
    let http = reqwest::Client::new();
    assert!(history(&http, &base(&server), "quiet:n1").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_changes_go_to_the_dead_letter_with_their_key() {
    let mongo = Mongo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(
        dir.path(),
        "shop",
        mongo.config("orders", "orders:{fullDocument.store}"),
    )
    .await;
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    mongo.insert("orders", doc! {"_id": 2}).await;
    mongo
        .insert("orders", doc! {"_id": 3, "store": "bad value"})
        .await;
    // Resolves, but to a name past the 255-byte limit: refused by the server's own check.
    mongo
        .insert("orders", doc! {"_id": "long", "store": "x".repeat(300)})
        .await;
    mongo.insert("orders", doc! {"_id": 4, "store": "n1"}).await;
    let ok = wait_for(&base(&server), "orders:n1", |m| m.len() == 2).await;
    assert_eq!(
        keys(&ok, "insert").keys().cloned().collect::<Vec<_>>(),
        vec!["1", "4"]
    );
    let dead = wait_for(&base(&server), "dead:shop", |m| m.len() == 3).await;
    let expected = [
        (json!(2), "field `fullDocument.store` is missing"),
        (json!(3), "cannot be part of a channel name"),
        (json!("long"), "the limit is 255"),
    ];
    for (m, (key, error)) in dead.iter().zip(expected) {
        assert_eq!(m["name"], "dead_letter", "{m}");
        assert_eq!(m["data"]["key"], json!({ "_id": key }), "{m}");
        assert!(
            m["data"]["error"].as_str().unwrap().contains(error),
            "{error}: {m}"
        );
    }
    assert!(
        server.source_failures().lock().is_empty(),
        "the stream goes on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_routing_without_a_valid_channel_goes_to_the_dead_letter_with_the_key() {
    let mongo = Mongo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = mongo.config("orders", "unused");
    config.channel = None;
    config.pipeline = vec![json!({"$addFields": {"_channel": "$fullDocument.ch"}})];
    let server = serve(dir.path(), "shop", config).await;
    mongo.insert("orders", doc! {"_id": 1, "ch": "p:1"}).await;
    mongo.insert("orders", doc! {"_id": 2}).await;
    mongo
        .insert("orders", doc! {"_id": 3, "ch": "not a channel"})
        .await;
    mongo.insert("orders", doc! {"_id": 4, "ch": "p:1"}).await;
    let ok = wait_for(&base(&server), "p:1", |m| m.len() == 2).await;
    assert_eq!(
        keys(&ok, "insert").keys().cloned().collect::<Vec<_>>(),
        vec!["1", "4"],
        "the stream goes on after the poison events"
    );
    let dead = wait_for(&base(&server), "dead:shop", |m| m.len() == 2).await;
    assert_eq!(dead[0]["data"]["key"], json!({"_id": 2}), "{}", dead[0]);
    assert!(
        dead[0]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("no `_channel` field"),
        "{}",
        dead[0]
    );
    assert_eq!(dead[1]["data"]["key"], json!({"_id": 3}), "{}", dead[1]);
    assert_eq!(dead[1]["data"]["channel"], "not a channel");
    assert!(
        dead[1]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("invalid channel"),
        "{}",
        dead[1]
    );
    assert!(server.source_failures().lock().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_is_one_batch_even_past_the_batch_limit() {
    let mongo = Mongo::start().await;
    let mut config = mongo.config("orders", "orders:{fullDocument.store}");
    config.max_batch_events = 2;
    let mut source = MongoSource::new("shop", config, "dead:shop", "mongodb:shop").unwrap();
    source.start(None).await.unwrap();
    let first = source.next_batch().await.unwrap();
    assert!(first.messages.is_empty(), "the start position comes first");
    mongo.insert("orders", doc! {"_id": 0, "store": "n1"}).await;
    mongo
        .transaction(
            "orders",
            (1..=5).map(|i| doc! {"_id": i, "store": "n1"}).collect(),
        )
        .await;
    mongo.insert("orders", doc! {"_id": 6, "store": "n1"}).await;
    let mut batches = Vec::new();
    let mut seen = 0;
    while seen < 7 {
        let b = tokio::time::timeout(WAIT, source.next_batch())
            .await
            .unwrap()
            .unwrap();
        let ids: Vec<i64> = b
            .messages
            .iter()
            .map(|m| data_of(m)["key"]["_id"].as_i64().unwrap())
            .collect();
        seen += ids.len();
        if !ids.is_empty() {
            batches.push(ids);
        }
    }
    let txn = batches.iter().find(|b| b.contains(&1)).unwrap();
    for i in 1..=5 {
        assert!(
            txn.contains(&i),
            "the whole transaction in one batch: {batches:?}"
        );
    }
    assert!(
        batches
            .iter()
            .all(|b| b.len() <= 2 || b.iter().filter(|i| (1..=5).contains(*i)).count() == 5),
        "{batches:?}"
    );
    assert!(txn.len() <= 6 || !txn.contains(&0), "{batches:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_with_concurrent_writes_misses_nothing() {
    let mongo = Mongo::start().await;
    let n = 1500;
    mongo.record_pre_images("orders").await;
    for i in 0..n {
        mongo
            .insert("orders", doc! {"_id": i, "store": "n1", "v": 0})
            .await;
    }
    let mut config = mongo.config("orders", "orders:{fullDocument.store}");
    config.snapshot = SnapshotMode::Initial;
    config.snapshot_batch_size = 50;
    // Deletes are routed by the document they removed.
    config.full_document_before_change =
        tidings_connector_mongodb::config::BeforeChange::WhenAvailable;
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path(), "shop", config).await;
    // Write while the snapshot runs: update early and late documents, delete some, add some.
    let mut expected: BTreeMap<i64, Option<i64>> = (0..n as i64).map(|i| (i, Some(0))).collect();
    for round in 1..=5i64 {
        for i in [round, n as i64 - round, n as i64 / 2 + round] {
            mongo
                .update("orders", i as i32, doc! {"$set": {"v": round}})
                .await;
            expected.insert(i, Some(round));
        }
        mongo.delete("orders", (100 + round) as i32).await;
        expected.insert(100 + round, None);
        mongo
            .insert(
                "orders",
                doc! {"_id": (n as i64 + round) as i32, "store": "n1", "v": round},
            )
            .await;
        expected.insert(n as i64 + round, Some(round));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = n as i64 + 5;
    let items = wait_for(&base(&server), "orders:n1", |m| {
        m.iter()
            .any(|x| x["name"] == "insert" && x["data"]["key"]["_id"] == last)
    })
    .await;
    // Replay the channel: the latest message per key must be the document's final state.
    let mut state: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    for m in &items {
        let id = m["data"]["key"]["_id"].as_i64().unwrap();
        match m["name"].as_str().unwrap() {
            "delete" => {
                state.insert(id, None);
            }
            "snapshot" | "insert" | "update" | "replace" => {
                let doc = &m["data"]["document"];
                if !doc.is_null() {
                    state.insert(id, Some(doc["v"].as_i64().unwrap()));
                }
            }
            other => panic!("unexpected message {other}"),
        }
    }
    let missing: Vec<_> = expected
        .iter()
        .filter(|(k, v)| state.get(k).cloned().flatten() != **v)
        .collect();
    assert!(
        missing.is_empty(),
        "final states differ for {} keys, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

/// The channels of a batch's messages, in order of first appearance.
fn channels_of(batch: &tidings_connectors_core::Batch) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for m in &batch.messages {
        if !out.contains(&m.channel) {
            out.push(m.channel.clone());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resnapshot_resets_each_channel_once_before_its_first_document() {
    use tidings_connector_mongodb::position::{Position, SnapshotProgress, SnapshotReason};
    let mongo = Mongo::start_test_server().await;
    let stores = ["a", "a", "b", "b", "c"];
    for (i, store) in stores.iter().enumerate() {
        mongo
            .insert("orders", doc! {"_id": i as i32, "store": *store})
            .await;
    }
    let mut config = mongo.config("orders", "orders:{fullDocument.store}");
    config.on_history_lost = OnHistoryLost::Resnapshot;
    config.snapshot_batch_size = 2;
    // A resume token to hang the re-snapshot on.
    let mut probe = MongoSource::new("shop", config.clone(), "dead:shop", "mongodb:shop").unwrap();
    probe.start(None).await.unwrap();
    let Position::Token(resume) =
        Position::from_source(&probe.next_batch().await.unwrap().position).unwrap()
    else {
        panic!("the start position is a token");
    };
    // A re-snapshot interrupted after `_id` 1, as a crashed process left it.
    let interrupted = Position::Snapshot(SnapshotProgress {
        resume,
        ns: Some((mongo.db.clone(), "orders".into())),
        after: Some(Bson::Int32(1)),
        reason: SnapshotReason::HistoryLost,
    })
    .to_source();
    let ids = |b: &tidings_connectors_core::Batch| -> Vec<i64> {
        b.messages
            .iter()
            .map(|m| data_of(m)["key"]["_id"].as_i64().unwrap())
            .collect()
    };
    let mut source = MongoSource::new("shop", config.clone(), "dead:shop", "mongodb:shop").unwrap();
    source.start(Some(interrupted.clone())).await.unwrap();
    // A new process cannot know which channels were reset: it starts over, resetting again.
    let b1 = source.next_batch().await.unwrap();
    assert_eq!(ids(&b1), vec![0, 1], "the re-snapshot starts over");
    assert_eq!(source.take_resets(), vec!["orders:a"]);
    source.committed(&b1.position).await.unwrap();
    let b2 = source.next_batch().await.unwrap();
    assert_eq!(ids(&b2), vec![2, 3]);
    assert_eq!(source.take_resets(), channels_of(&b2));
    // The batch fails before it is durable: started again from the last checkpoint in the same
    // process, the snapshot goes on where it was and resets `b` again (its reset may not have
    // happened), but not `a`.
    source.start(Some(b1.position.clone())).await.unwrap();
    let b2 = source.next_batch().await.unwrap();
    assert_eq!(ids(&b2), vec![2, 3], "goes on after the checkpoint");
    assert_eq!(source.take_resets(), vec!["orders:b"]);
    source.committed(&b2.position).await.unwrap();
    let b3 = source.next_batch().await.unwrap();
    assert_eq!(ids(&b3), vec![4]);
    assert_eq!(source.take_resets(), vec!["orders:c"]);
    source.committed(&b3.position).await.unwrap();
    assert!(
        matches!(
            Position::from_source(&b3.position).unwrap(),
            Position::Token(_)
        ),
        "the snapshot is done: streaming resumes from its token"
    );
    // An initial snapshot resets nothing: there is no old history to leave.
    let mut fresh = config.clone();
    fresh.snapshot = SnapshotMode::Initial;
    let mut initial = MongoSource::new("shop", fresh, "dead:shop", "mongodb:shop").unwrap();
    initial.start(None).await.unwrap();
    let b = initial.next_batch().await.unwrap();
    assert_eq!(ids(&b), vec![0, 1]);
    assert!(initial.take_resets().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_pages_across_mixed_id_types() {
    use mongodb::bson::{oid::ObjectId, spec::BinarySubtype, Binary, DateTime};
    let mongo = Mongo::start().await;
    // Three of each `_id` type, inserted out of order: numbers < strings < documents <
    // binaries < ObjectIds < booleans < dates, in MongoDB's sort order.
    let ids: Vec<Bson> = vec![
        Bson::String("m".into()),
        Bson::Int32(3),
        Bson::ObjectId(ObjectId::parse_str("65a1b2c3d4e5f60718293a4b").unwrap()),
        Bson::DateTime(DateTime::from_millis(1_700_000_000_000)),
        Bson::Document(doc! {"a": 1}),
        Bson::Int64(5_000_000_000),
        Bson::Double(-1.5),
        Bson::String("a".into()),
        Bson::Boolean(false),
        Bson::Binary(Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![1, 2],
        }),
        Bson::ObjectId(ObjectId::parse_str("65a1b2c3d4e5f60718293a4c").unwrap()),
        Bson::Document(doc! {"a": "x"}),
        Bson::String("z".into()),
        Bson::DateTime(DateTime::from_millis(-5)),
        Bson::Boolean(true),
        Bson::Document(doc! {"b": 1}),
        Bson::ObjectId(ObjectId::parse_str("000000000000000000000001").unwrap()),
        Bson::Null,
    ];
    for id in &ids {
        mongo
            .insert("mixed", doc! {"_id": id.clone(), "store": "n1"})
            .await;
    }
    // MongoDB's order: by type, then within the type; documents compare field by field by
    // the value's type, then the name, then the value.
    let order = [17, 6, 1, 5, 7, 0, 12, 4, 15, 11, 9, 16, 2, 10, 8, 14, 13, 3];
    let expected: Vec<String> = order
        .iter()
        .map(|i| ids[*i].clone().into_relaxed_extjson().to_string())
        .collect();
    // Every page size, so pages end on every kind of type boundary.
    for page in 1..=4u32 {
        let mut config = mongo.config("mixed", "mixed:{fullDocument.store}");
        config.snapshot = SnapshotMode::Initial;
        config.snapshot_batch_size = page;
        let mut source = MongoSource::new("shop", config, "dead:shop", "mongodb:shop").unwrap();
        source.start(None).await.unwrap();
        let mut seen = Vec::new();
        loop {
            let b = tokio::time::timeout(WAIT, source.next_batch())
                .await
                .unwrap()
                .unwrap();
            for m in &b.messages {
                seen.push(data_of(m)["key"]["_id"].to_string());
            }
            source.committed(&b.position).await.unwrap();
            if let SourcePosition::MongoResumeToken(v) = &b.position {
                if v.get("_data").is_some() {
                    break;
                }
            }
        }
        assert_eq!(
            seen, expected,
            "page size {page}: each once, in `_id` order"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_progress_is_counted_in_the_log_when_stderr_is_not_a_terminal() {
    use tokio::io::AsyncBufReadExt;
    let mongo = Mongo::start().await;
    let n = 2000;
    for i in 0..n {
        mongo.insert("orders", doc! {"_id": i, "store": "n1"}).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--api-key", KEY, "--data-dir"])
        .arg(dir.path())
        .args(["--mongodb", &mongo.uri, "--collection", &mongo.ns("orders")])
        .args(["--channel", "orders:{fullDocument.store}"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen: Vec<Value> = Vec::new();
    tokio::time::timeout(WAIT * 2, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let done = v["message"] == "snapshot done";
            if v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("snapshot"))
            {
                seen.push(v);
            }
            if done {
                return;
            }
        }
        panic!("tidings exited before the snapshot was done: {seen:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no `snapshot done` line: {seen:?}"));
    let find = |m: &str| seen.iter().find(|v| v["message"] == m).cloned();
    let start = find("snapshot starting").expect("a start line");
    assert_eq!(
        start["total_estimated"], n,
        "the total is the server's count"
    );
    // Default pages of 1000: a line at each tenth crossed, so one at half-way.
    let progress: Vec<&Value> = seen
        .iter()
        .filter(|v| v["message"] == "snapshot progress")
        .collect();
    assert!(
        progress.iter().any(|v| v["done"] == 1000
            && v["total_estimated"] == n
            && v["percent"] == "50.0"
            && v["docs_per_s"].is_u64()
            && v["ns"] == mongo.ns("orders")),
        "{seen:?}"
    );
    let done = find("snapshot done").unwrap();
    assert_eq!(done["documents"], n, "{done}");
    assert!(done["docs_per_s"].as_u64().unwrap() > 0, "{done}");
    child.start_kill().unwrap();
    child.wait().await.unwrap();
}

/// Read `source` until a message named `op` about `_id` `last` arrives; returns every message
/// before it too.
async fn read_until(
    source: &mut MongoSource,
    op: &str,
    last: i32,
) -> Vec<tidings_connectors_core::Publish> {
    let mut out = Vec::new();
    loop {
        let b = tokio::time::timeout(WAIT, source.next_batch())
            .await
            .expect("the marker arrives")
            .unwrap();
        let done = b
            .messages
            .iter()
            .any(|m| data_of(m)["key"]["_id"] == last && data_of(m)["op"] == op);
        out.extend(b.messages);
        if done {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_pipeline_routing_and_full_document_off() {
    let mongo = Mongo::start().await;
    let other = format!("{}_b", mongo.db);
    let (a, b) = (mongo.db.clone(), other.clone());
    type Adjust = Box<dyn Fn(&mut MongoConfig)>;
    let scopes: Vec<(&str, Adjust, Vec<String>)> = vec![
        ("collection", Box::new(|_| {}), vec![format!("{a}-orders")]),
        (
            "collections in one database",
            {
                let a = a.clone();
                Box::new(move |c| {
                    c.collection = None;
                    c.collections = vec![format!("{a}.orders"), format!("{a}.items")];
                })
            },
            vec![format!("{a}-orders"), format!("{a}-items")],
        ),
        (
            "collections across databases",
            {
                let (a, b) = (a.clone(), b.clone());
                Box::new(move |c| {
                    c.collection = None;
                    c.collections = vec![format!("{a}.orders"), format!("{b}.orders")];
                })
            },
            vec![format!("{a}-orders"), format!("{b}-orders")],
        ),
        (
            "database",
            {
                let a = a.clone();
                Box::new(move |c| {
                    c.collection = None;
                    c.database = Some(a.clone());
                })
            },
            vec![
                format!("{a}-orders"),
                format!("{a}-items"),
                format!("{a}-other"),
            ],
        ),
        (
            "deployment",
            Box::new(|c| {
                c.collection = None;
                c.deployment = true;
            }),
            vec![
                format!("{a}-orders"),
                format!("{a}-items"),
                format!("{a}-other"),
                format!("{b}-orders"),
            ],
        ),
    ];
    let mut sources = Vec::new();
    for (name, adjust, expected) in scopes {
        let mut config = mongo.config("orders", "ch:{ns.db}-{ns.coll}");
        adjust(&mut config);
        let mut s = MongoSource::new("shop", config, "dead:shop", "mongodb:shop")
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        s.start(None).await.unwrap();
        assert!(
            s.next_batch().await.unwrap().messages.is_empty(),
            "{name}: start position"
        );
        sources.push((name, s, expected));
    }
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    mongo.insert("items", doc! {"_id": 2}).await;
    mongo.insert("other", doc! {"_id": 3}).await;
    let other_db = Mongo {
        test: None,
        client: mongo.client.clone(),
        uri: mongo.uri.clone(),
        db: other.clone(),
    };
    match &mongo.test {
        Some(t) => {
            t.insert(&format!("{other}.orders"), doc! {"_id": 4});
        }
        None => other_db.insert("orders", doc! {"_id": 4}).await,
    }
    mongo.insert("orders", doc! {"_id": 5, "store": "n1"}).await;
    for (name, source, expected) in &mut sources {
        let got: std::collections::BTreeSet<String> = read_until(source, "insert", 5)
            .await
            .into_iter()
            .map(|m| m.channel)
            // A real deployment may carry other tests' databases.
            .filter(|c| c.starts_with(&format!("ch:{a}-")) || c.starts_with(&format!("ch:{b}-")))
            .collect();
        let expected: std::collections::BTreeSet<String> =
            expected.iter().map(|c| format!("ch:{c}")).collect();
        assert_eq!(got, expected, "scope {name}");
    }

    // Routing by the fields a pipeline sets; the pipeline also filters.
    let mut config = mongo.config("orders", "unused");
    config.channel = None;
    config.pipeline = vec![
        serde_json::json!({"$match": {"operationType": "update"}}),
        serde_json::json!({"$addFields": {
            "_channel": {"$concat": ["p:", "$fullDocument.store"]},
            "_name": "order.changed",
            "_headers": {"src": "pipeline"},
        }}),
    ];
    let mut routed = MongoSource::new("shop", config, "dead:shop", "mongodb:shop").unwrap();
    routed.start(None).await.unwrap();
    routed.next_batch().await.unwrap();
    // And updates without the looked-up document.
    let mut config = mongo.config("orders", "off:{ns.coll}");
    config.full_document = tidings_connector_mongodb::config::FullDocument::Off;
    let mut off = MongoSource::new("shop", config, "dead:shop", "mongodb:shop").unwrap();
    off.start(None).await.unwrap();
    off.next_batch().await.unwrap();
    mongo.insert("orders", doc! {"_id": 6, "store": "n2"}).await;
    mongo.update("orders", 6, doc! {"$set": {"qty": 3}}).await;
    let m = read_until(&mut routed, "update", 6).await;
    assert_eq!(
        m.len(),
        1,
        "the insert was filtered out by the pipeline: {m:?}"
    );
    assert_eq!(
        (m[0].channel.as_str(), m[0].name.as_deref()),
        ("p:n2", Some("order.changed"))
    );
    assert_eq!(
        m[0].headers.as_deref().map(|h| h.get()),
        Some(r#"{"src":"pipeline"}"#)
    );
    let data = &data_of(&m[0]);
    assert_eq!(data["op"], "update");
    assert_eq!(data["updated_fields"], serde_json::json!({"qty": 3}));
    assert!(data.get("_channel").is_none());
    let m = read_until(&mut off, "update", 6).await;
    let update = m
        .iter()
        .find(|m| m.name.as_deref() == Some("update"))
        .unwrap();
    let data = &data_of(update);
    assert!(data["document"].is_null(), "full_document = off: {data}");
    assert_eq!(data["updated_fields"], serde_json::json!({"qty": 3}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_and_drop_database_are_control_messages() {
    // Renames and database drops are asked of the test server (the helpers write through it).
    let mongo = Mongo::start_test_server().await;
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    mongo.insert("items", doc! {"_id": 1}).await;
    let names = |msgs: &[tidings_connectors_core::Publish]| -> Vec<(String, String)> {
        msgs.iter()
            .map(|m| (m.channel.clone(), m.name.clone().unwrap_or_default()))
            .collect()
    };
    async fn until_invalidate(s: &mut MongoSource) -> Vec<tidings_connectors_core::Publish> {
        let mut out = Vec::new();
        loop {
            let b = tokio::time::timeout(WAIT, s.next_batch())
                .await
                .unwrap()
                .unwrap();
            let done = b
                .messages
                .iter()
                .any(|m| m.name.as_deref() == Some("invalidate"));
            out.extend(b.messages);
            if done {
                return out;
            }
        }
    }
    // A collection renamed away: `rename` (with where to), then the stream is invalidated.
    let mut coll = MongoSource::new(
        "shop",
        mongo.config("orders", "orders:{ns.coll}"),
        "dead:shop",
        "mongodb:shop",
    )
    .unwrap();
    coll.start(None).await.unwrap();
    coll.next_batch().await.unwrap();
    // A database-wide stream on the same database.
    let mut config = mongo.config("orders", "db:{ns.coll}");
    config.collection = None;
    config.database = Some(mongo.db.clone());
    let mut db = MongoSource::new("shopdb", config, "dead:shopdb", "mongodb:shopdb").unwrap();
    db.start(None).await.unwrap();
    db.next_batch().await.unwrap();
    mongo
        .ts()
        .rename_collection(&mongo.ns("orders"), &mongo.ns("archive"));
    let msgs = until_invalidate(&mut coll).await;
    assert_eq!(
        names(&msgs),
        vec![
            ("mongodb:shop".into(), "rename".into()),
            ("orders:orders".into(), "rename".into()),
            ("mongodb:shop".into(), "invalidate".into()),
        ],
        "{msgs:?}"
    );
    let rename = &data_of(&msgs[0]);
    assert_eq!(rename["to"]["coll"], "archive", "{rename}");
    assert_eq!(rename["ns"]["coll"], "orders");
    // The database stream saw the rename and goes on; dropping the database ends it.
    mongo.ts().drop_database(&mongo.db);
    let msgs = until_invalidate(&mut db).await;
    let control: Vec<String> = msgs
        .iter()
        .filter(|m| m.channel == "mongodb:shopdb")
        .map(|m| m.name.clone().unwrap())
        .collect();
    assert_eq!(
        control,
        vec!["rename", "drop", "drop", "dropDatabase", "invalidate"],
        "{msgs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_document_goes_to_the_dead_letter_and_the_stream_goes_on() {
    let mongo = Mongo::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = serve_with(
        dir.path(),
        "shop",
        mongo.config("orders", "orders:{fullDocument.store}"),
        |c| c.limits.max_message_bytes = 4096,
    )
    .await;
    mongo.insert("orders", doc! {"_id": 1, "store": "n1"}).await;
    mongo
        .insert(
            "orders",
            doc! {"_id": 2, "store": "n1", "blob": "x".repeat(10_000)},
        )
        .await;
    mongo.insert("orders", doc! {"_id": 3, "store": "n1"}).await;
    let ok = wait_for(&base(&server), "orders:n1", |m| m.len() == 2).await;
    assert_eq!(
        keys(&ok, "insert").keys().cloned().collect::<Vec<_>>(),
        vec!["1", "3"]
    );
    let dead = wait_for(&base(&server), "dead:shop", |m| m.len() == 1).await;
    let error = dead[0]["data"]["error"].as_str().unwrap();
    assert!(error.contains("the limit is 4096"), "{}", dead[0]);
    assert_eq!(dead[0]["data"]["channel"], "orders:n1");
    assert_eq!(dead[0]["data"]["key"], json!({"_id": 2}), "{}", dead[0]);
    assert!(server.source_failures().lock().is_empty());
}
