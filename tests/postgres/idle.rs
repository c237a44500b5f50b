//! Idle outbox, busy database: the slot's confirmed position still advances.

use std::time::{Duration, Instant};

use tidings_testkit::postgres::Cluster;

use crate::in_process::InProcess;
use crate::outbox::{expect_messages, write_txns, Outbox};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_outbox_on_a_busy_database_still_advances_confirmed_flush() {
    let pg = Cluster::start();
    pg.migrate().await;
    let t = InProcess::start(&pg, |_| {}).await;
    let c = pg.sql().await;
    c.batch_execute("CREATE TABLE other (x int)").await.unwrap();
    write_txns(&pg.url(), "idle:1", 0, 1, 1).await;
    expect_messages(&t.http(), "idle:1", 1).await;
    for i in 0..200 {
        c.execute("INSERT INTO other VALUES ($1)", &[&i])
            .await
            .unwrap();
    }
    let target: String = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    let target = tidings_connector_postgres::pgoutput::parse_lsn(&target).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let confirmed = pg.confirmed_flush(&c, "tidings").await;
        if confirmed >= target {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "confirmed_flush_lsn stayed at {confirmed:X} below {target:X} while only other tables wrote"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    t.server.shutdown();
    t.server.wait().await;
}
