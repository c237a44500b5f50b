//! Setting up: the migrate command, and a database that is not ready refused with the fix.

use tidings_testkit::postgres::Cluster;
use tidings_testkit::process::Process;
use tidings_testkit::tidings_exe;

use crate::outbox::Outbox;
use crate::status::{terminate, wait_stopped};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_wal_level_and_missing_replication_role_stop_the_connector_with_the_fix() {
    let pg = Cluster::start_with("wal_level = replica");
    pg.migrate_without_slot().await;
    let data = tempfile::tempdir().unwrap();
    let tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &pg.url()]).await;
    let reason = wait_stopped(&tidings.http(), "postgres").await;
    assert!(reason.contains("wal_level is \"replica\""), "{reason}");
    assert!(
        reason.contains("ALTER SYSTEM SET wal_level = logical"),
        "{reason}"
    );
    let lines = terminate(tidings).await;
    assert!(lines.contains("wal_level is \\\"replica\\\""), "{lines}");
    assert!(
        lines.contains("ALTER SYSTEM SET wal_level = logical"),
        "{lines}"
    );

    let pg = Cluster::start();
    pg.migrate().await;
    let admin = pg.sql().await;
    admin
        .batch_execute("CREATE ROLE app LOGIN PASSWORD 'app-password'")
        .await
        .unwrap();
    let url = format!(
        "postgres://app:app-password@127.0.0.1:{}/postgres?sslmode=disable",
        pg.port
    );
    let tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &url]).await;
    let reason = wait_stopped(&tidings.http(), "postgres").await;
    assert!(reason.contains("may not start replication"), "{reason}");
    assert!(
        reason.contains("ALTER ROLE \"app\" REPLICATION"),
        "{reason}"
    );
    let lines = terminate(tidings).await;
    assert!(lines.contains("may not start replication"), "{lines}");
    assert!(
        lines.contains("ALTER ROLE \\\"app\\\" REPLICATION"),
        "{lines}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migrate_command_is_idempotent_and_creates_the_slot() {
    let pg = Cluster::start();
    let run = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidings"))
            .args(["migrate", "--postgres", &pg.url()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let first = run();
    assert!(first.contains("applied migrations [1, 2]"), "{first}");
    assert!(
        first.contains("created replication slot tidings"),
        "{first}"
    );
    let second = run();
    assert!(second.contains("up to date (migration 2)"), "{second}");
    assert!(
        second.contains("replication slot tidings exists"),
        "{second}"
    );
    let c = pg.sql().await;
    let row = c
        .query_one(
            "SELECT (SELECT count(*) FROM tidings.outbox), (SELECT array_agg(pubinsert::text || pubupdate::text || pubdelete::text) FROM pg_publication WHERE pubname = 'tidings_outbox')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 0);
    assert_eq!(
        row.get::<_, Vec<String>>(1),
        vec!["truefalsefalse".to_string()],
        "the publication publishes inserts only"
    );
}
