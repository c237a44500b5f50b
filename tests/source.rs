//! The source runner against the real log: batches land atomically with their checkpoint, the
//! source hears `committed` only after that, and a restart resumes after the checkpoint.

use std::sync::{Arc, Mutex};

use serde_json::json;
use tidings::source::{PoisonPolicy, SourceOptions};
use tidings_connectors_core::{Batch, Publish, Source, SourceError, SourcePosition};
use tidings_testkit::rest::history;
use tidings_testkit::server::TestServer;
use tidings_testkit::ws::Client;
use tidings_testkit::KEY;

/// A change feed of numbered transactions, each of three messages, that fails once on purpose.
struct Feed {
    /// Next transaction to emit.
    next: u64,
    end: u64,
    fail_at: Option<u64>,
    events: Arc<Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl Source for Feed {
    async fn start(&mut self, from: Option<SourcePosition>) -> Result<(), SourceError> {
        self.next = match from {
            Some(SourcePosition::PostgresLsn(lsn)) => lsn + 1,
            _ => 1,
        };
        self.events
            .lock()
            .unwrap()
            .push(format!("start {}", self.next));
        Ok(())
    }

    async fn next_batch(&mut self) -> Result<Batch, SourceError> {
        if self.fail_at == Some(self.next) {
            self.fail_at = None;
            return Err(SourceError::Transient {
                what: "connection reset".into(),
                source: None,
            });
        }
        if self.next > self.end {
            std::future::pending::<()>().await;
        }
        let tx = self.next;
        self.next += 1;
        let messages = (0..3)
            .map(|k| Publish {
                channel: if tx == 4 && k == 1 {
                    "not a channel".into()
                } else {
                    format!("feed:{}", k % 2)
                },
                name: Some("row".into()),
                data: Some(tidings_connectors_core::json_text(
                    &json!({"tx": tx, "k": k}),
                )),
                headers: None,
                id: Some(format!("lsn-{tx}-{k}")),
                key: None,
            })
            .collect();
        Ok(Batch {
            messages,
            position: SourcePosition::PostgresLsn(tx),
        })
    }

    async fn committed(&mut self, position: &SourcePosition) -> Result<(), SourceError> {
        self.events
            .lock()
            .unwrap()
            .push(format!("committed {position:?}"));
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_appended_with_checkpoints_and_resume_after_failure() {
    let t = TestServer::start().await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let feed = Feed {
        next: 0,
        end: 10,
        fail_at: Some(6),
        events: events.clone(),
    };
    let opts = SourceOptions {
        name: "feed".into(),
        poison: PoisonPolicy::DeadLetter(
            tidings::channel::ChannelName::parse("dead:feed").unwrap(),
        ),
        max_message_bytes: 65536,
        status: Default::default(),
    };
    let mut watcher = Client::connect(&t.ws_url(), Some(KEY)).await;
    watcher.attach("feed:0", json!({})).await;
    let token = t.server.shutdown_token().child_token();
    let (log, stop) = (t.server.log().clone(), token.clone());
    let runner = tokio::spawn(async move {
        let mut feed = feed;
        tidings::source::run(&mut feed, &opts, log, stop).await
    });
    // 10 transactions, two messages each on feed:0 (k = 0 and 2), in commit order.
    let frames = watcher.messages(20).await;
    let order: Vec<(u64, u64)> = frames
        .iter()
        .map(|f| {
            (
                f["data"]["tx"].as_u64().unwrap(),
                f["data"]["k"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, u64)> = (1..=10).flat_map(|tx| [(tx, 0), (tx, 2)]).collect();
    assert_eq!(order, expected);
    token.cancel();
    assert!(runner.await.unwrap().is_none());

    let http = reqwest::Client::new();
    assert_eq!(
        history(&http, &t.http(), "feed:1").await.len(),
        9,
        "tx 4's k=1 went to the dead letter"
    );
    let dead = history(&http, &t.http(), "dead:feed").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0]["data"]["position"]["value"], 4);
    let cp = t.server.log().checkpoint("feed").await.unwrap();
    assert_eq!(cp, Some(SourcePosition::PostgresLsn(10)));
    let events = events.lock().unwrap().clone();
    // The failure at tx 6 restarted the feed right after the last durable checkpoint (tx 5).
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("start"))
            .cloned()
            .collect::<Vec<_>>(),
        vec!["start 1", "start 6"]
    );
    assert_eq!(
        events.iter().filter(|e| e.starts_with("committed")).count(),
        10
    );
}
