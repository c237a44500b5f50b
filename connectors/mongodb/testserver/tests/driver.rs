//! The unmodified `mongodb` driver against the test server: handshake, change streams with
//! resume tokens, the driver's own resume after a dropped connection or a resumable error,
//! history loss, invalidation, transactions, and `find` for snapshots.

use std::time::Duration;

use futures_util::TryStreamExt;
use mongodb::bson::{doc, Document};
use mongodb::change_stream::event::ResumeToken;
use mongodb::options::FullDocumentType;
use mongodb::{Client, Collection};
use tidings_mongo_testserver::{wire, MongoTestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WAIT: Duration = Duration::from_secs(10);

async fn client(server: &MongoTestServer) -> Client {
    Client::with_uri_str(server.uri()).await.unwrap()
}

async fn next_event(stream: &mut mongodb::change_stream::ChangeStream<Document>) -> Document {
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(e) = stream.next_if_any().await.unwrap() {
                return e;
            }
        }
    })
    .await
    .expect("an event within the wait")
}

#[tokio::test]
async fn handshake_presents_a_replica_set_primary() {
    let server = MongoTestServer::start().await.unwrap();
    let c = client(&server).await;
    let hello = c
        .database("admin")
        .run_command(doc! {"hello": 1})
        .await
        .unwrap();
    assert!(hello.get_bool("isWritablePrimary").unwrap());
    assert_eq!(hello.get_str("setName").unwrap(), "rs0");
    assert_eq!(hello.get_i32("maxWireVersion").unwrap(), 21);
    assert_eq!(hello.get_i32("logicalSessionTimeoutMinutes").unwrap(), 30);
    assert_eq!(
        hello.get_array("hosts").unwrap()[0].as_str().unwrap(),
        server.addr().to_string()
    );
    c.database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .unwrap();
    assert!(server.command_count("isMaster") + server.command_count("hello") >= 2);
    c.shutdown().await;
    assert!(server.command_count("endSessions") <= 1);
}

#[tokio::test]
async fn legacy_op_query_is_master_gets_an_op_reply() {
    let server = MongoTestServer::start().await.unwrap();
    let mut sock = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let q = wire::encode_query(42, "admin.$cmd", &doc! {"isMaster": 1});
    sock.write_all(&q).await.unwrap();
    let mut len = [0u8; 4];
    sock.read_exact(&mut len).await.unwrap();
    let mut msg = len.to_vec();
    msg.resize(i32::from_le_bytes(len) as usize, 0);
    sock.read_exact(&mut msg[4..]).await.unwrap();
    assert_eq!(
        i32::from_le_bytes(msg[8..12].try_into().unwrap()),
        42,
        "responseTo"
    );
    let reply = wire::decode_reply(&msg).expect("an OP_REPLY");
    assert!(reply.get_bool("ismaster").unwrap());
    assert_eq!(reply.get_str("setName").unwrap(), "rs0");
    assert_eq!(reply.get_f64("ok").unwrap(), 1.0);
}

#[tokio::test]
async fn change_stream_events_are_shaped_like_mongodb_and_resume() {
    let server = MongoTestServer::start().await.unwrap();
    let c = client(&server).await;
    let coll: Collection<Document> = c.database("shop").collection("orders");
    let mut stream = coll
        .watch()
        .full_document(FullDocumentType::UpdateLookup)
        .await
        .unwrap()
        .with_type::<Document>();
    let start_token = stream
        .resume_token()
        .expect("the initial reply's postBatchResumeToken");

    let id = server.insert("shop.orders", doc! {"_id": 1, "store": "n1", "qty": 2});
    server.update(
        "shop.orders",
        id.clone(),
        doc! {"$set": {"qty": 3}, "$unset": {"store": ""}},
    );
    server.delete("shop.orders", id);

    let ins = next_event(&mut stream).await;
    assert_eq!(ins.get_str("operationType").unwrap(), "insert");
    assert!(ins.get_document("_id").unwrap().get_str("_data").is_ok());
    assert!(ins.get_timestamp("clusterTime").is_ok());
    assert!(ins.get_datetime("wallTime").is_ok());
    assert_eq!(
        ins.get_document("ns").unwrap(),
        &doc! {"db": "shop", "coll": "orders"}
    );
    assert_eq!(ins.get_document("documentKey").unwrap(), &doc! {"_id": 1});
    assert_eq!(
        ins.get_document("fullDocument")
            .unwrap()
            .get_i32("qty")
            .unwrap(),
        2
    );
    let upd = next_event(&mut stream).await;
    assert_eq!(upd.get_str("operationType").unwrap(), "update");
    let desc = upd.get_document("updateDescription").unwrap();
    assert_eq!(
        desc.get_document("updatedFields").unwrap(),
        &doc! {"qty": 3}
    );
    assert_eq!(desc.get_array("removedFields").unwrap().len(), 1);
    // updateLookup reads the document now: it was deleted since.
    assert!(upd.is_null("fullDocument"));
    let del = next_event(&mut stream).await;
    assert_eq!(del.get_str("operationType").unwrap(), "delete");
    assert!(ins.get_timestamp("clusterTime").unwrap() < del.get_timestamp("clusterTime").unwrap());

    // Resuming after the insert replays the update and the delete, in order.
    let token: ResumeToken = mongodb::bson::from_bson(ins.get("_id").unwrap().clone()).unwrap();
    let mut resumed = coll
        .watch()
        .resume_after(token)
        .await
        .unwrap()
        .with_type::<Document>();
    assert_eq!(
        next_event(&mut resumed)
            .await
            .get_str("operationType")
            .unwrap(),
        "update"
    );
    assert_eq!(
        next_event(&mut resumed)
            .await
            .get_str("operationType")
            .unwrap(),
        "delete"
    );

    // A quiet stream still moves its token forward with postBatchResumeToken.
    let before = stream.resume_token().unwrap();
    server.insert("shop.other", doc! {"x": 1});
    let mut advanced = false;
    for _ in 0..20 {
        assert!(
            stream.next_if_any().await.unwrap().is_none(),
            "no event for another collection"
        );
        if stream.resume_token().unwrap() != before {
            advanced = true;
            break;
        }
    }
    assert!(
        advanced,
        "the post-batch resume token advanced on a quiet collection"
    );
    assert_ne!(start_token, before);
}

#[tokio::test]
async fn the_driver_resumes_by_itself_after_a_dropped_connection_and_a_resumable_error() {
    let server = MongoTestServer::start().await.unwrap();
    let c = client(&server).await;
    let coll: Collection<Document> = c.database("d").collection("c");
    let mut stream = coll.watch().await.unwrap().with_type::<Document>();
    for i in 0..3 {
        server.insert("d.c", doc! {"_id": i});
    }
    assert_eq!(
        next_event(&mut stream)
            .await
            .get_document("documentKey")
            .unwrap(),
        &doc! {"_id": 0}
    );
    // The buffered batch holds 1 and 2; the next getMore is the one that fails.
    assert_eq!(
        next_event(&mut stream)
            .await
            .get_document("documentKey")
            .unwrap(),
        &doc! {"_id": 1}
    );
    assert_eq!(
        next_event(&mut stream)
            .await
            .get_document("documentKey")
            .unwrap(),
        &doc! {"_id": 2}
    );
    server.drop_next_get_more();
    server.insert("d.c", doc! {"_id": 3});
    assert_eq!(
        next_event(&mut stream)
            .await
            .get_document("documentKey")
            .unwrap(),
        &doc! {"_id": 3}
    );
    server.fail_next_get_more(6, "HostUnreachable", true);
    server.insert("d.c", doc! {"_id": 4});
    assert_eq!(
        next_event(&mut stream)
            .await
            .get_document("documentKey")
            .unwrap(),
        &doc! {"_id": 4}
    );
    let opened = server.change_streams_opened();
    assert_eq!(opened.len(), 3, "one watch and two resumes: {opened:?}");
    assert!(opened[1].contains_key("resumeAfter"), "{opened:?}");
    assert!(opened[2].contains_key("resumeAfter"), "{opened:?}");

    // Without the label the error reaches the application.
    server.fail_next_get_more(8000, "AtlasError", false);
    let err = loop {
        match stream.next_if_any().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert!(
        err.to_string().contains("AtlasError") || err.to_string().contains("8000"),
        "{err}"
    );
}

#[tokio::test]
async fn history_lost_is_error_286_with_its_label() {
    let server = MongoTestServer::start().await.unwrap();
    let c = client(&server).await;
    let coll: Collection<Document> = c.database("d").collection("c");
    let mut stream = coll.watch().await.unwrap().with_type::<Document>();
    server.insert("d.c", doc! {"_id": 1});
    let ev = next_event(&mut stream).await;
    let token: ResumeToken = mongodb::bson::from_bson(ev.get("_id").unwrap().clone()).unwrap();
    server.insert("d.c", doc! {"_id": 2});
    server.truncate_history();
    let err = coll.watch().resume_after(token).await.unwrap_err();
    match *err.kind {
        mongodb::error::ErrorKind::Command(ref ce) => {
            assert_eq!(ce.code, 286);
            assert_eq!(ce.code_name, "ChangeStreamHistoryLost");
        }
        ref other => panic!("expected a command error, got {other:?}"),
    }
    assert!(err.contains_label("NonResumableChangeStreamError"));
}

#[tokio::test]
async fn drop_invalidates_and_start_after_continues() {
    let server = MongoTestServer::start().await.unwrap();
    let c = client(&server).await;
    let coll: Collection<Document> = c.database("d").collection("c");
    let mut stream = coll.watch().await.unwrap().with_type::<Document>();
    server.insert("d.c", doc! {"_id": 1});
    server.drop_collection("d.c");
    assert_eq!(
        next_event(&mut stream)
            .await
            .get_str("operationType")
            .unwrap(),
        "insert"
    );
    assert_eq!(
        next_event(&mut stream)
            .await
            .get_str("operationType")
            .unwrap(),
        "drop"
    );
    let inv = next_event(&mut stream).await;
    assert_eq!(inv.get_str("operationType").unwrap(), "invalidate");
    assert!(stream.next_if_any().await.unwrap().is_none());
    assert!(!stream.is_alive(), "an invalidate closes the cursor");

    let token: ResumeToken = mongodb::bson::from_bson(inv.get("_id").unwrap().clone()).unwrap();
    assert!(
        coll.watch().resume_after(token.clone()).await.is_err(),
        "resumeAfter an invalidate is refused"
    );
    let mut again = coll
        .watch()
        .start_after(token)
        .await
        .unwrap()
        .with_type::<Document>();
    server.insert("d.c", doc! {"_id": 2});
    let ev = next_event(&mut again).await;
    assert_eq!(ev.get_document("documentKey").unwrap(), &doc! {"_id": 2});
}

#[tokio::test]
async fn transactions_share_lsid_txn_number_and_cluster_time() {
    let server = MongoTestServer::start().await.unwrap();
    let c = client(&server).await;
    let mut stream = c
        .database("d")
        .watch()
        .await
        .unwrap()
        .with_type::<Document>();
    server.insert("d.a", doc! {"_id": 1, "n": 0});
    server
        .transaction(|t| {
            t.insert("d.a", doc! {"_id": 2});
            t.update("d.a", 1, doc! {"$inc": {"n": 1}});
            t.insert("d.b", doc! {"_id": 3});
        })
        .unwrap();
    let plain = next_event(&mut stream).await;
    assert!(!plain.contains_key("lsid"));
    let txn: Vec<Document> = vec![
        next_event(&mut stream).await,
        next_event(&mut stream).await,
        next_event(&mut stream).await,
    ];
    for e in &txn {
        assert_eq!(e.get("lsid"), txn[0].get("lsid"));
        assert_eq!(e.get_i64("txnNumber").unwrap(), 1);
        assert_eq!(e.get("clusterTime"), txn[0].get("clusterTime"));
    }
    assert_ne!(
        txn[0].get("_id"),
        txn[1].get("_id"),
        "each event has its own token"
    );
    // A failing transaction leaves nothing behind.
    assert!(server
        .transaction(|t| {
            t.insert("d.a", doc! {"_id": 9});
            t.insert("d.a", doc! {"_id": 1});
        })
        .is_err());
    assert_eq!(server.documents("d.a").len(), 2);
}

#[tokio::test]
async fn find_serves_snapshots_in_id_order_across_batches() {
    let server = MongoTestServer::start().await.unwrap();
    for i in (0..250).rev() {
        server.insert("d.c", doc! {"_id": i, "v": i * 2});
    }
    let c = client(&server).await;
    let coll: Collection<Document> = c.database("d").collection("c");
    let docs: Vec<Document> = coll
        .find(doc! {"_id": {"$gt": 99}})
        .sort(doc! {"_id": 1})
        .batch_size(40)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let ids: Vec<i32> = docs.iter().map(|d| d.get_i32("_id").unwrap()).collect();
    assert_eq!(ids, (100..250).collect::<Vec<_>>());
    assert!(server.command_count("getMore") >= 3);
    assert_eq!(coll.estimated_document_count().await.unwrap(), 250);
    assert_eq!(
        c.database("d").list_collection_names().await.unwrap(),
        vec!["c"]
    );
    assert_eq!(c.list_database_names().await.unwrap(), vec!["d"]);
}

#[tokio::test]
async fn pipelines_run_server_side_and_unknown_stages_are_refused() {
    let server = MongoTestServer::start().await.unwrap();
    let c = client(&server).await;
    let coll: Collection<Document> = c.database("d").collection("c");
    let mut stream = coll
        .watch()
        .pipeline(vec![
            doc! {"$match": {"operationType": "insert"}},
            doc! {"$addFields": {"_channel": {"$concat": ["store:", "$fullDocument.store"]}}},
        ])
        .await
        .unwrap()
        .with_type::<Document>();
    let id = server.insert("d.c", doc! {"store": "n1"});
    server.delete("d.c", id);
    server.insert("d.c", doc! {"store": "s2"});
    assert_eq!(
        next_event(&mut stream).await.get_str("_channel").unwrap(),
        "store:n1"
    );
    assert_eq!(
        next_event(&mut stream).await.get_str("_channel").unwrap(),
        "store:s2"
    );
    let err = coll
        .watch()
        .pipeline(vec![doc! {"$lookup": {}}])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("40324"), "{err}");
}
