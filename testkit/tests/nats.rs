//! The NATS cluster part itself: it starts, survives losing a member, and the member comes back.

use tidings_testkit::nats::Cluster;

async fn answers(url: &str) -> bool {
    let addr = url.trim_start_matches("nats://");
    tokio::net::TcpStream::connect(addr).await.is_ok()
}

#[tokio::test]
async fn three_members_elect_a_leader_and_a_killed_member_rejoins() {
    let mut cluster = Cluster::start().await.expect("a NATS cluster");
    assert_eq!(cluster.urls().split(',').count(), 3);
    cluster.kill9(0).await;
    assert!(!answers(&cluster.url(0)).await, "a killed member is gone");
    // The other two keep a quorum; the killed one comes back on its ports and store.
    cluster.ready().await.expect("two members stay ready");
    cluster.restart(0).await.expect("the member restarts");
    assert!(
        answers(&cluster.url(0)).await,
        "the restarted member answers"
    );
}
