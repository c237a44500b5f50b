//! TLS to Postgres: every sslmode behaves as libpq's, and a wrong CA is refused.

use std::time::{Duration, Instant};

use tidings_connector_postgres::ConnectionUrl;
use tidings_testkit::postgres::{Cluster, PASSWORD, USER};
use tidings_testkit::process::Process;
use tidings_testkit::tidings_exe;

use crate::in_process::InProcess;
use crate::outbox::{expect_messages, write_txns, Outbox};
use crate::status::{terminate, wait_stopped};
use crate::CATCH_UP;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_verify_full_streams_and_a_wrong_ca_is_refused() {
    let pg = Cluster::start_tls();
    pg.migrate().await;
    let url = pg.tls_url("verify-full");
    let t = InProcess::start(&pg, |c| c.url = ConnectionUrl::new(url.clone())).await;
    write_txns(&pg.url(), "tls:1", 0, 3, 1).await;
    expect_messages(&t.http(), "tls:1", 3).await;
    // Both of the connector's sessions are encrypted: the walsender and the SQL session.
    let c = pg.sql().await;
    let row = c
        .query_one(
            "SELECT count(*) FILTER (WHERE a.backend_type = 'walsender'), bool_and(s.ssl) \
             FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.application_name = 'tidings'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 1, "one walsender for the connector");
    assert_eq!(
        row.get::<_, Option<bool>>(1),
        Some(true),
        "every connector session uses TLS"
    );
    t.server.shutdown();
    t.server.wait().await;

    // A CA that did not sign the server's certificate: the connector stops, saying why.
    let other = tempfile::tempdir().unwrap();
    let ca = other.path().join("other-ca.pem");
    let status = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout"])
        .arg(other.path().join("k"))
        .arg("-out")
        .arg(&ca)
        .args(["-days", "2", "-subj", "/CN=someone else"])
        .output()
        .unwrap();
    assert!(status.status.success());
    let bad = format!(
        "postgres://{}:{}@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
        USER,
        PASSWORD,
        pg.port,
        ca.display()
    );
    let data = tempfile::tempdir().unwrap();
    let tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &bad]).await;
    let reason = wait_stopped(&tidings.http(), "postgres").await;
    assert!(reason.contains("sslrootcert"), "{reason}");
    let lines = terminate(tidings).await;
    assert!(lines.contains("sslrootcert"), "{lines}");
}

/// Whether every session of the connector (application_name `tidings`) uses TLS, and how
/// many there are.
async fn connector_sessions_tls(c: &tokio_postgres::Client) -> (i64, Option<bool>) {
    let row = c
        .query_one(
            "SELECT count(*), bool_and(s.ssl) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
             WHERE a.application_name = 'tidings'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// `prefer`, `require` and `verify-ca` against a server with TLS: each streams, encrypted.
/// `verify-ca` checks the chain but not the name (the certificate names `localhost`, the URL
/// says 127.0.0.1), which `verify-full` refuses. Against a server without TLS, `prefer` falls
/// back to plain and `require` stops with the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sslmodes_prefer_require_and_verify_ca_behave_as_libpq() {
    let pg = Cluster::start_tls();
    pg.migrate().await;
    let admin = pg.sql().await;
    let by_ip = |mode: &str| {
        format!(
            "postgres://{}:{}@127.0.0.1:{}/postgres?sslmode={mode}&sslrootcert={}",
            USER,
            PASSWORD,
            pg.port,
            pg.ca_pem().display()
        )
    };
    for (n, mode) in ["prefer", "require", "verify-ca"].into_iter().enumerate() {
        let url = by_ip(mode);
        let t = InProcess::start(&pg, |c| c.url = ConnectionUrl::new(url.clone())).await;
        let channel = format!("ssl:{n}");
        write_txns(&pg.url(), &channel, 0, 2, 1).await;
        expect_messages(&t.http(), &channel, 2).await;
        let (sessions, all_tls) = connector_sessions_tls(&admin).await;
        assert!(sessions >= 2, "{mode}: {sessions} sessions");
        assert_eq!(
            all_tls,
            Some(true),
            "{mode}: every connector session uses TLS"
        );
        t.server.shutdown();
        t.server.wait().await;
        // Let the sessions of this run end before the next mode counts its own.
        let deadline = Instant::now() + CATCH_UP;
        while connector_sessions_tls(&admin).await.0 > 0 {
            assert!(Instant::now() < deadline, "{mode}: sessions linger");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // verify-full checks the host name: 127.0.0.1 is not in the certificate.
    let data = tempfile::tempdir().unwrap();
    let tidings = Process::serve(
        tidings_exe!(),
        data.path(),
        &["--postgres", &by_ip("verify-full")],
    )
    .await;
    let reason = wait_stopped(&tidings.http(), "postgres").await;
    assert!(reason.contains("sslrootcert"), "{reason}");
    let lines = terminate(tidings).await;
    assert!(lines.contains("sslrootcert"), "{lines}");

    // A server without TLS.
    let plain = Cluster::start();
    plain.migrate().await;
    let prefer = plain.url().replace("sslmode=disable", "sslmode=prefer");
    let t = InProcess::start(&plain, |c| c.url = ConnectionUrl::new(prefer.clone())).await;
    write_txns(&plain.url(), "plain:1", 0, 2, 1).await;
    expect_messages(&t.http(), "plain:1", 2).await;
    let (sessions, all_tls) = connector_sessions_tls(&plain.sql().await).await;
    assert!(sessions >= 2);
    assert_eq!(all_tls, Some(false), "prefer falls back to plain");
    t.server.shutdown();
    t.server.wait().await;
    let require = plain.url().replace("sslmode=disable", "sslmode=require");
    let data = tempfile::tempdir().unwrap();
    let tidings = Process::serve(tidings_exe!(), data.path(), &["--postgres", &require]).await;
    let reason = wait_stopped(&tidings.http(), "postgres").await;
    assert!(reason.contains("server does not support TLS"), "{reason}");
    assert!(reason.contains("ssl = on"), "{reason}");
    let lines = terminate(tidings).await;
    assert!(lines.contains("server does not support TLS"), "{lines}");
    assert!(lines.contains("ssl = on"), "{lines}");
}
