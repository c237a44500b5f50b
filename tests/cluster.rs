//! Cluster mode against real servers: a three-member NATS JetStream cluster (R3) on loopback
//! and real `tidings` binaries started with `--nats`, talking to real WebSocket, SSE and
//! long-poll clients.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tidings_testkit::nats::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::rest::{history, publish, serials};
use tidings_testkit::sse::SseClient;
use tidings_testkit::ws::Client;
use tidings_testkit::{tidings_exe, KEY};

/// A Tidings node on `nats`, with its own (unused) data directory.
async fn node(nats: &Cluster, id: &str) -> (Process, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let urls = nats.urls();
    let p = Process::serve(
        tidings_exe!(),
        dir.path(),
        &["--nats", &urls, "--node-id", id],
    )
    .await;
    (p, dir)
}

async fn poll(http: &reqwest::Client, base: &str, query: &str) -> Value {
    let resp = http
        .get(format!("{base}/v1/poll?{query}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_on_other_nodes_see_the_same_messages_serials_and_order() {
    let nats = Cluster::start().await.expect("a NATS cluster");
    let (n1, _d1) = node(&nats, "n1").await;
    let (n2, _d2) = node(&nats, "n2").await;
    let (n3, _d3) = node(&nats, "n3").await;
    let http = reqwest::Client::new();

    // Subscribers on node 2 (WebSocket, SSE, long-poll) and node 3 (WebSocket), attached
    // before anything exists.
    let mut on3 = Client::connect(&n3.ws_url(), Some(KEY)).await;
    on3.attach("orders:7", json!({})).await;
    let mut ws = Client::connect(&n2.ws_url(), Some(KEY)).await;
    let attached = ws.attach("orders:7", json!({})).await;
    let epoch = attached["epoch"].as_str().unwrap().to_owned();
    assert_eq!(attached["serial"], 0);
    let mut sse = SseClient::open(&format!("{}/v1/sse?channel=orders:7", n2.http()), None).await;
    assert_eq!(sse.next().await.unwrap().event, "connected");
    let sse_attached = sse.next().await.unwrap();
    assert_eq!(sse_attached.event, "attached");
    assert_eq!(sse_attached.json()["epoch"], epoch.as_str());
    let first = poll(&http, &n2.http(), "channel=orders:7").await;
    let mut next = first["next"].as_str().unwrap().to_owned();

    // Node 1 takes the publishes: single messages and batches, interleaved with another
    // channel so that serials (stream sequences) have gaps.
    let mut acked = Vec::new();
    for i in 0..20 {
        let body = if i % 4 == 0 {
            json!([{"data": {"i": i, "k": 0}}, {"data": {"i": i, "k": 1}}])
        } else {
            json!({"data": {"i": i}})
        };
        acked.extend(publish(&http, &n1.http(), "orders:7", body).await);
        publish(&http, &n1.http(), "other:1", json!({"data": i})).await;
    }
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "{acked:?}");
    assert!(
        acked.windows(2).any(|w| w[1] > w[0] + 1),
        "serials are stream sequences, with gaps: {acked:?}"
    );

    let over_ws = ws.messages(acked.len()).await;
    assert_eq!(serials(&over_ws), acked, "WebSocket on node 2");
    assert_eq!(
        on3.messages(acked.len()).await,
        over_ws,
        "the same frames on node 3"
    );
    let over_sse = sse.messages(acked.len()).await;
    let sse_serials: Vec<u64> = over_sse
        .iter()
        .map(|e| e.json()["serial"].as_u64().unwrap())
        .collect();
    assert_eq!(sse_serials, acked, "SSE on node 2");
    let mut polled = Vec::new();
    while polled.len() < acked.len() {
        let r = poll(
            &http,
            &n2.http(),
            &format!("channel=orders:7&from={next}&wait=5s"),
        )
        .await;
        polled.extend(serials(r["messages"].as_array().unwrap()));
        next = r["next"].as_str().unwrap().to_owned();
    }
    assert_eq!(polled, acked, "long-poll on node 2");
    // The same data, in the same order, on both nodes' history.
    let h1 = history(&http, &n1.http(), "orders:7").await;
    let h2 = history(&http, &n2.http(), "orders:7").await;
    assert_eq!(serials(&h1), acked);
    assert_eq!(h1, h2, "both nodes read the same history");
    let data: Vec<&Value> = over_ws.iter().map(|m| &m["data"]).collect();
    let stored: Vec<&Value> = h1.iter().map(|m| &m["data"]).collect();
    assert_eq!(data, stored);

    // A position node 1 gave resumes exactly on node 3.
    let mut on1 = Client::connect(&n1.ws_url(), Some(KEY)).await;
    let a1 = on1.attach("orders:7", json!({})).await;
    assert_eq!(a1["epoch"], epoch.as_str(), "one epoch on every node");
    assert_eq!(
        a1["serial"],
        *acked.last().unwrap(),
        "node 1's position: its head"
    );
    let at = acked[9];
    let mut resumed = Client::connect(&n3.ws_url(), Some(KEY)).await;
    let a2 = resumed
        .attach("orders:7", json!({"from": {"epoch": epoch, "serial": at}}))
        .await;
    assert_eq!(a2["resumed"], true, "{a2}");
    let rest = resumed.messages(acked.len() - 10).await;
    assert_eq!(serials(&rest), acked[10..].to_vec());
    // And live messages published on node 1 keep coming to every node.
    let more = publish(&http, &n1.http(), "orders:7", json!({"data": "late"})).await;
    assert_eq!(serials(&resumed.messages(1).await), more);
    assert_eq!(serials(&on3.messages(1).await), more);
    assert_eq!(serials(&ws.messages(1).await), more);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_publish_id_sent_to_two_nodes_lands_once() {
    let nats = Cluster::start().await.expect("a NATS cluster");
    let (n1, _d1) = node(&nats, "n1").await;
    let (n2, _d2) = node(&nats, "n2").await;
    let http = reqwest::Client::new();

    let first = publish(
        &http,
        &n1.http(),
        "idem:1",
        json!({"id": "order-1", "data": 1}),
    )
    .await;
    let again = publish(
        &http,
        &n2.http(),
        "idem:1",
        json!({"id": "order-1", "data": 1}),
    )
    .await;
    assert_eq!(
        first, again,
        "the retry on node 2 answers the stored serial"
    );
    // A batch retried on the other node: the repeated id answers its serial, the new one lands.
    let batch = publish(
        &http,
        &n2.http(),
        "idem:1",
        json!([{"id": "order-1", "data": 1}, {"id": "order-2", "data": 2}]),
    )
    .await;
    assert_eq!(batch[0], first[0]);
    assert!(batch[1] > first[0]);
    let retried = publish(
        &http,
        &n1.http(),
        "idem:1",
        json!([{"id": "order-1", "data": 1}, {"id": "order-2", "data": 2}]),
    )
    .await;
    assert_eq!(retried, batch);
    // The same id on another channel is another message.
    let elsewhere = publish(
        &http,
        &n1.http(),
        "idem:2",
        json!({"id": "order-1", "data": 1}),
    )
    .await;
    assert!(elsewhere[0] > batch[1]);
    let h = history(&http, &n2.http(), "idem:1").await;
    let ids: Vec<&str> = h.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec!["order-1", "order-2"], "each id once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_nats_member_mid_stream_loses_no_acknowledged_message() {
    let mut nats = Cluster::start().await.expect("a NATS cluster");
    let (n1, _d1) = node(&nats, "n1").await;
    let (n2, _d2) = node(&nats, "n2").await;
    let acked: Arc<Mutex<HashMap<String, u64>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();

    // One publisher per node, with ids, as fast as acks come back; a failed request (while the
    // stream elects a new leader) is retried with the same id, as a client would.
    let mut publishers = Vec::new();
    for (p, base) in [(0, n1.http()), (1, n2.http())] {
        let (acked, stop) = (acked.clone(), stop.clone());
        publishers.push(tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                let id = format!("p{p}-{i}");
                let resp = http
                    .post(format!("{base}/v1/channels/crash:1/messages"))
                    .bearer_auth(KEY)
                    .json(&json!({"id": id, "data": {"p": p, "i": i}}))
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await;
                let Ok(resp) = resp else { continue };
                if resp.status() != 201 {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let body: Value = resp.json().await.unwrap();
                acked
                    .lock()
                    .unwrap()
                    .insert(id, body["serials"][0].as_u64().unwrap());
                i += 1;
            }
        }));
    }
    let count = || acked.lock().unwrap().len();
    while count() < 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Kill the member that leads the stream: the hardest one to lose.
    let leader = nats
        .stream_leader("TIDINGS")
        .await
        .expect("the stream has a leader");
    nats.kill9(leader).await;
    let at_kill = count();
    // The cluster keeps serving: acknowledgements resume on the two members left.
    let resumed = tidings_testkit::wait_for(Duration::from_secs(30), || {
        (count() >= at_kill + 300).then_some(())
    })
    .await;
    assert!(
        resumed.is_some(),
        "publishing resumed after the leader died ({} acked)",
        count()
    );
    nats.restart(leader).await.expect("the member comes back");
    let at_restart = count();
    let more = tidings_testkit::wait_for(Duration::from_secs(30), || {
        (count() >= at_restart + 100).then_some(())
    })
    .await;
    assert!(
        more.is_some(),
        "publishing goes on after the member rejoined"
    );
    stop.cancel();
    for p in publishers {
        p.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let http = reqwest::Client::new();
    let stored = history(&http, &n2.http(), "crash:1").await;
    let mut by_id: HashMap<&str, Vec<u64>> = HashMap::new();
    for m in &stored {
        by_id
            .entry(m["id"].as_str().unwrap())
            .or_default()
            .push(m["serial"].as_u64().unwrap());
    }
    let lost: Vec<&String> = acked
        .keys()
        .filter(|id| !by_id.contains_key(id.as_str()))
        .collect();
    let twice: Vec<_> = by_id.iter().filter(|(_, s)| s.len() > 1).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged messages lost: {lost:?}",
        lost.len()
    );
    assert!(twice.is_empty(), "stored twice: {twice:?}");
    for (id, serial) in &acked {
        assert_eq!(
            by_id[id.as_str()],
            vec![*serial],
            "{id} stored at its acknowledged serial"
        );
    }
    assert_eq!(
        serials(&stored).windows(2).filter(|w| w[0] >= w[1]).count(),
        0
    );
    // Node 1 reads the very same history.
    assert_eq!(history(&http, &n1.http(), "crash:1").await, stored);
    eprintln!(
        "{} acknowledged ({at_kill} before the kill of member {leader}), {} stored, 0 lost, 0 twice",
        acked.len(),
        stored.len()
    );
}

/// Start a node with `args` and expect it to exit before listening; its log.
async fn refused(args: &[&str]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let mut p = Process::try_spawn(Process::command(tidings_exe!(), dir.path(), args)).unwrap();
    match p.try_listening(Duration::from_secs(20)).await {
        Err(tidings_testkit::process::ProcessError::Exited { log }) => {
            let status = p.child.wait().await.unwrap();
            assert!(!status.success(), "exits non-zero");
            log
        }
        other => panic!("expected the node to refuse to start: {other:?}"),
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_to_start_on_nats_it_cannot_use() {
    // Not a URL: the configuration names the field.
    let log = refused(&["--nats", "h1:4222"]).await;
    assert!(
        log.contains("cluster.servers[0]") && log.contains("nats://HOST:PORT"),
        "{log}"
    );
    // Nobody listens there.
    let nowhere = format!("nats://127.0.0.1:{}", free_port());
    let log = refused(&["--nats", &nowhere]).await;
    assert!(log.contains("cannot reach any NATS server"), "{log}");
    assert!(log.contains("check that they run"), "{log}");
    // One server cannot hold three replicas.
    let single = Cluster::start_n(1).await.expect("one NATS server");
    let log = refused(&["--nats", &single.urls()]).await;
    assert!(log.contains("cannot keep 3 replicas"), "{log}");
    assert!(log.contains("lower cluster.replicas"), "{log}");
    // NATS takes 1 MB messages by default; Tidings may be configured for more.
    let log = refused(&[
        "--nats",
        &single.urls(),
        "--nats-replicas",
        "1",
        "--max-message-bytes",
        "4194304",
    ])
    .await;
    assert!(
        log.contains("max_payload") && log.contains("lower limits.max_message_bytes"),
        "{log}"
    );
    // ...but it can hold one.
    let dir = tempfile::tempdir().unwrap();
    let urls = single.urls();
    let _ok = Process::serve(
        tidings_exe!(),
        dir.path(),
        &["--nats", &urls, "--nats-replicas", "1"],
    )
    .await;
    // Debian's nats-server 2.9 (the benchmark peer, which scripts/test installs) has no
    // atomic batches.
    assert!(
        std::path::Path::new("/usr/sbin/nats-server").exists(),
        "Debian's nats-server 2.9 is missing: apt-get install nats-server (scripts/test does)"
    );
    {
        let port = free_port();
        let store = tempfile::tempdir().unwrap();
        let mut old = tokio::process::Command::new("/usr/sbin/nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(store.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let up = tidings_testkit::wait_for(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        })
        .await;
        assert!(up.is_some(), "the old nats-server listens");
        let log = refused(&["--nats", &format!("nats://127.0.0.1:{port}")]).await;
        assert!(log.contains("needs nats-server 2.12 or newer"), "{log}");
        let _ = old.start_kill();
    }
}

/// The cluster log opened in this process, as a node opens it, feeding a real hub.
async fn open_log(nats: &Cluster, node: &str) -> tidings::log::jetstream::JetStreamLog {
    open_with_hub(nats, node).await.0
}

/// [`open_log`], and the hub it feeds.
async fn open_with_hub(
    nats: &Cluster,
    node: &str,
) -> (
    tidings::log::jetstream::JetStreamLog,
    Arc<tidings::hub::Hub>,
) {
    let hub = Arc::new(tidings::hub::Hub::new(
        64,
        Arc::new(tidings::metrics::Metrics::new()),
    ));
    let log = tidings::log::jetstream::JetStreamLog::open(
        tidings::log::jetstream::JetStreamOptions {
            servers: nats.urls().split(',').map(str::to_owned).collect(),
            node: node.into(),
            replicas: 3,
            max_message_bytes: 64 * 1024,
            dedup_window: Duration::from_secs(120),
        },
        hub.clone(),
    )
    .await
    .expect("the cluster log opens");
    (log, hub)
}

fn messages(channel: &str, n: usize, tag: &str) -> Vec<tidings::log::NewMessage> {
    (0..n)
        .map(|i| tidings::log::NewMessage {
            channel: tidings::channel::ChannelName::parse(channel).unwrap(),
            id: None,
            name: Some(tag.into()),
            data: Some(serde_json::value::to_raw_value(&i).unwrap()),
            headers: None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connector_batch_commits_with_its_checkpoint_and_a_stale_writer_stores_nothing() {
    use tidings::log::{ChannelLog, LogError};
    use tidings_connectors_core::{Checkpoint, SourcePosition};
    let nats = Cluster::start().await.expect("a NATS cluster");
    let (a, b) = (open_log(&nats, "a").await, open_log(&nats, "b").await);
    let ch = tidings::channel::ChannelName::parse("feed:1").unwrap();
    let cp = |lsn| Checkpoint {
        source: "pg".into(),
        position: SourcePosition::PostgresLsn(lsn),
    };

    // Both writers start from the same (empty) checkpoint, as two nodes running one connector.
    assert_eq!(a.checkpoint("pg").await.unwrap(), None);
    assert_eq!(b.checkpoint("pg").await.unwrap(), None);
    let first = a
        .append(messages("feed:1", 3, "a1"), Some(cp(10)))
        .await
        .unwrap();
    let serials: Vec<u64> = first.iter().map(|x| x.serial).collect();
    assert!(
        serials.windows(2).all(|w| w[1] == w[0] + 1),
        "one atomic batch: {serials:?}"
    );
    // The stale writer is refused and stores nothing, not even part of its batch.
    match b.append(messages("feed:1", 3, "b1"), Some(cp(10))).await {
        Err(LogError::Fenced { connector }) => assert_eq!(connector, "pg"),
        other => panic!("expected Fenced, got {other:?}"),
    }
    let page = a.read(&ch, 0, 100).await.unwrap();
    let names: Vec<&str> = page
        .messages
        .iter()
        .map(|m| m.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, vec!["a1"; 3]);
    // Having re-read the checkpoint (as the runner does on restart), it goes on from there.
    assert_eq!(
        b.checkpoint("pg").await.unwrap(),
        Some(SourcePosition::PostgresLsn(10))
    );
    b.append(messages("feed:1", 2, "b2"), Some(cp(20)))
        .await
        .unwrap();
    // ...and now the first writer is the stale one.
    assert!(matches!(
        a.append(messages("feed:1", 1, "a2"), Some(cp(20))).await,
        Err(LogError::Fenced { .. })
    ));

    // A transaction larger than one atomic batch is written in parts, each with the checkpoint.
    b.append(messages("feed:1", 2500, "big"), Some(cp(30)))
        .await
        .unwrap();
    assert_eq!(
        a.checkpoint("pg").await.unwrap(),
        Some(SourcePosition::PostgresLsn(30))
    );
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let page = a.read(&ch, after, 1000).await.unwrap();
        let Some(last) = page.messages.last() else {
            break;
        };
        after = last.serial;
        all.extend(page.messages);
    }
    let count = |tag: &str| {
        all.iter()
            .filter(|m| m.name.as_deref() == Some(tag))
            .count()
    };
    assert_eq!(
        (
            count("a1"),
            count("b1"),
            count("b2"),
            count("a2"),
            count("big")
        ),
        (3, 0, 2, 0, 2500)
    );
    assert!(all.windows(2).all(|w| w[0].serial < w[1].serial));
    assert_eq!(a.state(&ch).await.unwrap().head, all.last().unwrap().serial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_starts_a_new_epoch_seen_by_every_node() {
    use tidings::log::ChannelLog;
    let nats = Cluster::start().await.expect("a NATS cluster");
    let a = open_log(&nats, "a").await;
    let (b, hub) = open_with_hub(&nats, "b").await;
    let ch = tidings::channel::ChannelName::parse("reset:1").unwrap();
    let mut live = hub.subscribe(&ch);
    let before = b.state(&ch).await.unwrap();
    let appended = a.append(messages("reset:1", 3, "old"), None).await.unwrap();
    a.reset(vec![ch.clone()]).await.unwrap();

    // Node b's hub hears the messages, then the reset, from the stream.
    let mut seen = Vec::new();
    let reset = loop {
        let l = tokio::time::timeout(tidings_testkit::WAIT, live.recv())
            .await
            .expect("the live feed delivers")
            .unwrap();
        match &l.reset {
            Some(epoch) => break (epoch.clone(), l.serial),
            None => seen.push(l.serial),
        }
    };
    assert_eq!(seen, appended.iter().map(|x| x.serial).collect::<Vec<_>>());
    let after = b.state(&ch).await.unwrap();
    assert_ne!(after.epoch, before.epoch, "a new epoch");
    assert_eq!(
        (after.epoch.clone(), after.head),
        reset,
        "the reset names the new epoch and head"
    );
    assert_eq!(
        after.trimmed, after.head,
        "nothing before the reset can be resumed"
    );
    assert!(b.read(&ch, 0, 100).await.unwrap().messages.is_empty());
    // The history goes on under the new epoch, on every node.
    let next = a.append(messages("reset:1", 1, "new"), None).await.unwrap();
    let page = b.read(&ch, after.head, 100).await.unwrap();
    assert_eq!(page.state.epoch, after.epoch);
    assert_eq!(
        page.messages.iter().map(|m| m.serial).collect::<Vec<_>>(),
        vec![next[0].serial]
    );
    assert_eq!(
        a.state(&ch).await.unwrap().epoch,
        after.epoch,
        "the same epoch on node a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_names_the_node_the_nats_server_and_the_stream() {
    let nats = Cluster::start().await.expect("a NATS cluster");
    let (n2, _d2) = node(&nats, "n2").await;
    let http = reqwest::Client::new();
    let serials = publish(&http, &n2.http(), "st:1", json!([{"data": 1}, {"data": 2}])).await;
    let get = |key: Option<&'static str>| {
        let (http, url) = (http.clone(), format!("{}/v1/cluster", n2.http()));
        async move {
            let mut req = http.get(url);
            if let Some(key) = key {
                req = req.bearer_auth(key);
            }
            req.send().await.unwrap()
        }
    };
    assert_eq!(get(None).await.status(), 401, "an API key is needed");
    let v: Value = get(Some(KEY)).await.json().await.unwrap();
    assert_eq!(v["mode"], "cluster", "{v}");
    assert_eq!(v["node"], "n2");
    assert_eq!(v["nats"]["version"], "2.15.1");
    assert_eq!(v["stream"]["name"], "TIDINGS");
    assert_eq!(v["stream"]["replicas"], 3);
    assert_eq!(v["stream"]["peers"].as_array().unwrap().len(), 2, "{v}");
    let leader = v["stream"]["leader"].as_str().unwrap();
    assert!(["n1", "n2", "n3"].contains(&leader), "{v}");
    assert!(v["stream"]["last_serial"].as_u64().unwrap() >= serials[1]);
    // Its metrics carry its node id.
    let metrics = http
        .get(format!("{}/metrics", n2.http()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tidings_messages_appended_total{node=\"n2\"} 2"),
        "{metrics}"
    );
    // A single node says so.
    let dir = tempfile::tempdir().unwrap();
    let single = Process::serve(tidings_exe!(), dir.path(), &[]).await;
    let v: Value = http
        .get(format!("{}/v1/cluster", single.http()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v, json!({"mode": "single"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_two_nodes_moves_on_when_its_node_is_killed() {
    use futures_util::StreamExt;
    use tidings_client::{Event, Start};
    let nats = Cluster::start().await.expect("a NATS cluster");
    let (mut n1, _d1) = node(&nats, "n1").await;
    let (n2, _d2) = node(&nats, "n2").await;
    // The Rust client, given both nodes, connects to the first.
    let client = tidings_client::Client::builder(n1.http())
        .server(n2.http())
        .api_key(KEY)
        .backoff(Duration::from_millis(10), Duration::from_millis(200))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut sub = client.attach("move:1", Start::Now).await.unwrap();
    let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    // Acknowledged publishes through node 2, one after another: their serials in order.
    let publisher = {
        let (acked, stop, base) = (acked.clone(), stop.clone(), n2.http());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut i = 0u64;
            while !stop.is_cancelled() {
                let s = publish(
                    &http,
                    &base,
                    "move:1",
                    json!({"id": format!("m{i}"), "data": i}),
                )
                .await;
                acked.lock().unwrap().push(s[0]);
                i += 1;
            }
        })
    };
    let mut received = Vec::new();
    async fn next(sub: &mut tidings_client::Subscription) -> u64 {
        match tokio::time::timeout(Duration::from_secs(30), sub.next()).await {
            Ok(Some(Ok(Event::Message(m)))) => m.serial,
            other => panic!("expected a message, got {other:?}"),
        }
    }
    while received.len() < 200 {
        received.push(next(&mut sub).await);
    }
    n1.kill9().await;
    let killed = acked.lock().unwrap().len();
    while acked.lock().unwrap().len() < killed + 300 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    publisher.await.unwrap();
    let acked = acked.lock().unwrap().clone();
    while received.len() < acked.len() {
        received.push(next(&mut sub).await);
    }
    assert_eq!(
        received, acked,
        "every acknowledged message once, in order, across the move"
    );
    assert!(
        client.stats().connections >= 2,
        "it reconnected (to node 2)"
    );
}
