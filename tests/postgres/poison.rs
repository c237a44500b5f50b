//! Poison rows go to the dead-letter channel and the stream goes on.

use tidings_testkit::postgres::Cluster;

use crate::in_process::InProcess;
use crate::outbox::{expect_messages, Outbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_rows_go_to_the_dead_letter_channel_and_the_stream_goes_on() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start(&pg, |_| {}).await;
    let c = pg.sql().await;
    let big = "x".repeat(70 * 1024);
    c.execute(
        "INSERT INTO tidings.outbox (channel, name, data) VALUES ('ok:1', 'before', '1')",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO tidings.outbox (channel, name, data) VALUES ('has space', 'bad-channel', '2')",
        &[],
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO tidings.outbox (channel, name, data) VALUES ('ok:1', 'too-big', to_jsonb($1::text))",
        &[&big],
    )
    .await
    .unwrap();
    c.batch_execute(
        "BEGIN;
         SELECT pg_logical_emit_message(true, 'tidings', '{\"data\": 1}');
         SELECT pg_logical_emit_message(true, 'tidings', 'not json');
         SELECT pg_logical_emit_message(true, 'tidings', '{\"channel\": \"ok:1\", \"name\": \"emitted\", \"data\": {\"via\": \"message\"}}');
         SELECT pg_logical_emit_message(true, 'someone-else', '{\"channel\": \"ok:1\"}');
         COMMIT;",
    )
    .await
    .unwrap();
    c.execute(
        "INSERT INTO tidings.outbox (channel, name, data) VALUES ('ok:1', 'after', '3')",
        &[],
    )
    .await
    .unwrap();
    let ok = expect_messages(&t.http(), "ok:1", 3).await;
    let names: Vec<&str> = ok.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["before", "emitted", "after"]);
    assert_eq!(ok[1]["data"]["via"], "message");
    let dead = expect_messages(&t.http(), "dead:pg", 4).await;
    let errors: Vec<String> = dead
        .iter()
        .map(|m| m["data"]["error"].as_str().unwrap().to_owned())
        .collect();
    assert!(errors[0].contains("invalid channel"), "{errors:?}");
    assert!(errors[1].contains("bytes; the limit is"), "{errors:?}");
    assert!(errors[2].contains("no `channel`"), "{errors:?}");
    assert!(errors[3].contains("not a JSON object"), "{errors:?}");
    assert!(dead.iter().all(|m| m["name"] == "dead_letter"));
    t.server.shutdown();
    t.server.wait().await;
}
