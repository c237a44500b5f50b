//! Plain table capture: the publication's tables become normalized row changes.

use tidings_testkit::postgres::Cluster;

use crate::in_process::InProcess;
use crate::outbox::{expect_messages, Outbox};

/// Plain table capture: every table of the publication becomes normalized row-change
/// messages routed by a template over its columns; Postgres types map to JSON without loss;
/// an unchanged TOASTed value is marked, never nulled; REPLICA IDENTITY FULL gives `before`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tables_of_the_publication_become_normalized_row_changes() {
    let pg = Cluster::start();
    pg.migrate().await;
    let c = pg.sql().await;
    c.batch_execute(
        "CREATE TABLE public.products (
             id bigint PRIMARY KEY, store_id int NOT NULL, name text, price numeric(10,2),
             tags text[], sizes int[], attrs jsonb, photo bytea, updated timestamptz, made timestamp,
             big int8, small int8, flag bool, ratio float8, day date, uid uuid, note text, blob text);
         ALTER TABLE public.products REPLICA IDENTITY FULL;
         CREATE TABLE public.lines (id int PRIMARY KEY, store_id int NOT NULL, qty int);
         CREATE PUBLICATION shop FOR TABLE public.products, public.lines, tidings.outbox;
         ALTER ROLE tidings SET TimeZone = 'Asia/Kolkata';
         ALTER ROLE tidings SET DateStyle = 'SQL, DMY';
         ALTER ROLE tidings SET bytea_output = 'escape';",
    )
    .await
    .unwrap();
    let t = InProcess::start(&pg, |cfg| {
        cfg.publication = "shop".into();
        cfg.channel = Some("products:{store_id}".into());
    })
    .await;
    // The writer's time zone is not UTC: the connector's own session settings decide how
    // timestamptz values read (UTC), whatever the server or the writer use.
    c.batch_execute(
        "SET TIME ZONE 'Asia/Kolkata';
         SET DateStyle = 'SQL, DMY';
         SET search_path = public;
         BEGIN;
         INSERT INTO products VALUES (1, 7, 'Lamp', 12.50, '{\"a b\",NULL,\"c\\\"d\"}', '{{1,2},{3,4}}',
             '{\"color\": \"red\", \"n\": [1, 2]}', '\\x00ff10', '2024-01-02 03:04:05.123456+00',
             '2024-01-02 03:04:05', 9007199254740991, 9007199254740993, true, 0.25, '2024-02-29',
             'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', NULL,
             (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1000) g));
         INSERT INTO tidings.outbox (channel, name, data) VALUES ('products:7', 'outbox', '{}');
         COMMIT;
         UPDATE products SET price = 13.00 WHERE id = 1;
         DELETE FROM products WHERE id = 1;
         INSERT INTO lines VALUES (10, 7, 2);
         DELETE FROM lines WHERE id = 10;
         TRUNCATE lines;",
    )
    .await
    .unwrap();
    let items = expect_messages(&t.http(), "products:7", 5).await;
    let names: Vec<&str> = items.iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["insert", "outbox", "update", "delete", "insert"]);

    let insert = &items[0]["data"];
    assert_eq!(insert["op"], "insert");
    assert_eq!(
        insert["ns"],
        serde_json::json!({"schema": "public", "table": "products"})
    );
    assert_eq!(
        insert["key"],
        serde_json::json!({"id": 1}),
        "the primary key, not every column"
    );
    let doc = &insert["document"];
    assert_eq!(doc["id"], 1);
    assert_eq!(doc["store_id"], 7);
    assert_eq!(doc["name"], "Lamp");
    assert_eq!(doc["price"], "12.50", "numeric as a string");
    assert_eq!(doc["tags"], serde_json::json!(["a b", null, "c\"d"]));
    assert_eq!(doc["sizes"], serde_json::json!([[1, 2], [3, 4]]));
    assert_eq!(
        doc["attrs"],
        serde_json::json!({"color": "red", "n": [1, 2]})
    );
    assert_eq!(doc["photo"], "AP8Q", "bytea as base64");
    assert_eq!(doc["updated"], "2024-01-02T03:04:05.123456+00:00");
    assert_eq!(doc["made"], "2024-01-02T03:04:05");
    assert_eq!(doc["big"], 9007199254740991_i64);
    assert_eq!(doc["small"], "9007199254740993", "beyond 2^53 as a string");
    assert_eq!(doc["flag"], true);
    assert_eq!(doc["ratio"], 0.25);
    assert_eq!(doc["day"], "2024-02-29");
    assert_eq!(doc["uid"], "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11");
    assert!(
        doc["note"].is_null() && doc.get("note").is_some(),
        "NULL stays null"
    );
    assert_eq!(doc["blob"].as_str().unwrap().len(), 32_000);
    assert!(insert["before"].is_null());
    assert!(insert["commit_time"].as_str().unwrap().ends_with('Z'));

    // The update left the TOASTed `blob` alone: no document, the other columns as updated
    // fields, `blob` marked unchanged; never a null.
    let update = &items[2]["data"];
    assert_eq!(update["op"], "update");
    assert!(update["document"].is_null(), "{update}");
    assert_eq!(update["updated_fields"]["price"], "13.00");
    assert!(update["updated_fields"].get("blob").is_none(), "{update}");
    assert_eq!(update["unchanged_toast"], serde_json::json!(["blob"]));
    assert_eq!(update["key"], serde_json::json!({"id": 1}));
    assert_eq!(
        update["before"]["price"], "12.50",
        "FULL identity gives the old row"
    );

    let delete = &items[3]["data"];
    assert_eq!(delete["op"], "delete");
    assert_eq!(delete["key"], serde_json::json!({"id": 1}));
    assert!(delete["document"].is_null());
    assert_eq!(delete["before"]["name"], "Lamp");

    // `lines` has the default identity: an insert routes, a delete carries only the key, so
    // `{store_id}` does not resolve and the delete goes to the dead letter, saying why.
    assert_eq!(items[4]["data"]["ns"]["table"], "lines");
    assert_eq!(items[4]["data"]["key"], serde_json::json!({"id": 10}));
    let dead = expect_messages(&t.http(), "dead:pg", 1).await;
    let error = dead[0]["data"]["error"].as_str().unwrap();
    assert!(error.contains("REPLICA IDENTITY FULL"), "{error}");
    let control = expect_messages(&t.http(), "postgres:pg", 1).await;
    assert_eq!(control[0]["name"], "truncate");
    assert_eq!(control[0]["data"]["ns"]["table"], "lines");
    t.server.shutdown();
    t.server.wait().await;
}
