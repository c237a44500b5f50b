//! Unit tests of the embedded log.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::value::RawValue;
use tidings_connectors_core::{Checkpoint, SourcePosition};

use super::{EmbeddedLog, EmbeddedOptions};
use crate::channel::ChannelName;
use crate::log::{
    AppendObserver, Appended, ChannelLog, NewMessage, Retention, RetentionPolicy, StoredMessage,
};

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, u64, Vec<u64>)>>);

impl AppendObserver for Recorder {
    fn appended(&self, channel: &ChannelName, prev: u64, messages: &[StoredMessage]) {
        self.0.lock().push((
            channel.to_string(),
            prev,
            messages.iter().map(|m| m.serial).collect(),
        ));
    }

    fn reset(&self, channel: &ChannelName, _epoch: &Arc<str>, head: u64) {
        self.0
            .lock()
            .push((format!("reset {channel}"), head, Vec::new()));
    }
}

fn msg(channel: &str, id: Option<&str>, data: &str) -> NewMessage {
    NewMessage {
        channel: ChannelName::parse(channel).unwrap(),
        id: id.map(str::to_owned),
        name: Some("n".into()),
        data: Some(RawValue::from_string(data.to_owned()).unwrap()),
        headers: None,
    }
}

fn open(dir: &Path) -> (EmbeddedLog, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let log = EmbeddedLog::open(dir, EmbeddedOptions::default(), rec.clone()).unwrap();
    (log, rec)
}

#[tokio::test]
async fn serials_increase_per_channel_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, rec) = open(dir.path());
    let a = log
        .append(
            vec![
                msg("a", None, "1"),
                msg("b", None, "2"),
                msg("a", None, "3"),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        a.iter().map(|x| x.serial).collect::<Vec<_>>(),
        vec![1, 1, 2]
    );
    let page = log
        .read(&ChannelName::parse("a").unwrap(), 0, 10)
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 2);
    assert_eq!(page.messages[1].data.as_ref().unwrap().get(), "3");
    assert_eq!(page.state.head, 2);
    let epoch = page.state.epoch.clone();
    assert!(!rec.0.lock().is_empty());
    log.close().await;
    drop(log);

    let (log, _) = open(dir.path());
    let a = log.append(vec![msg("a", None, "4")], None).await.unwrap();
    assert_eq!(a[0].serial, 3);
    let state = log.state(&ChannelName::parse("a").unwrap()).await.unwrap();
    assert_eq!((state.head, state.epoch), (3, epoch));
}

#[tokio::test]
async fn duplicate_ids_answer_the_existing_serial() {
    let dir = tempfile::tempdir().unwrap();
    let (log, rec) = open(dir.path());
    let first = log
        .append(vec![msg("a", Some("x"), "1")], None)
        .await
        .unwrap();
    let again = log
        .append(
            vec![
                msg("a", Some("x"), "1"),
                msg("a", Some("y"), "2"),
                msg("a", Some("y"), "2"),
            ],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        first[0],
        Appended {
            serial: 1,
            duplicate: false
        }
    );
    assert_eq!(
        again,
        vec![
            Appended {
                serial: 1,
                duplicate: true
            },
            Appended {
                serial: 2,
                duplicate: false
            },
            Appended {
                serial: 2,
                duplicate: true
            },
        ]
    );
    // Same id on another channel is a different message.
    let other = log
        .append(vec![msg("b", Some("x"), "1")], None)
        .await
        .unwrap();
    assert!(!other[0].duplicate);
    let heard: Vec<u64> = rec
        .0
        .lock()
        .iter()
        .flat_map(|(_, _, s)| s.clone())
        .collect();
    assert_eq!(
        heard,
        vec![1, 2, 1],
        "observers hear only what was appended"
    );
}

#[tokio::test]
async fn checkpoint_is_stored_with_the_batch() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path());
    assert_eq!(log.checkpoint("pg").await.unwrap(), None);
    let cp = Checkpoint {
        source: "pg".into(),
        position: SourcePosition::PostgresLsn(42),
    };
    log.append(vec![msg("a", None, "1")], Some(cp.clone()))
        .await
        .unwrap();
    assert_eq!(log.checkpoint("pg").await.unwrap(), Some(cp.position));
}

#[tokio::test]
async fn concurrent_appends_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (log, rec) = open(dir.path());
    let log = Arc::new(log);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            for j in 0..20 {
                log.append(vec![msg("c", None, &format!("{}", i * 100 + j))], None)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let commits = log.stats().commits.load(Ordering::Relaxed);
    assert_eq!(log.stats().messages.load(Ordering::Relaxed), 1280);
    assert!(
        commits < 1280,
        "64 concurrent appenders should share fsyncs, got {commits} commits"
    );
    // The observer saw one contiguous, strictly increasing sequence.
    let mut expected_prev = 0;
    for (_, prev, serials) in rec.0.lock().iter() {
        assert_eq!(*prev, expected_prev);
        for s in serials {
            assert_eq!(*s, expected_prev + 1);
            expected_prev = *s;
        }
    }
    assert_eq!(expected_prev, 1280);
}

#[tokio::test]
async fn retention_trims_by_count_per_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path());
    let batch: Vec<_> = (0..10)
        .map(|i| msg("short:1", None, &i.to_string()))
        .collect();
    log.append(batch, None).await.unwrap();
    let batch: Vec<_> = (0..10)
        .map(|i| msg("long:1", None, &i.to_string()))
        .collect();
    log.append(batch, None).await.unwrap();
    let policy = RetentionPolicy {
        default: Retention::default(),
        namespaces: vec![(
            "short".into(),
            Retention {
                max_age: None,
                max_messages: Some(3),
            },
        )],
    };
    let report = log.apply_retention(&policy).await.unwrap();
    assert_eq!(report.messages_removed, 7);
    let short = ChannelName::parse("short:1").unwrap();
    let page = log.read(&short, 0, 100).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.serial).collect::<Vec<_>>(),
        vec![8, 9, 10]
    );
    assert_eq!(page.state.trimmed, 7);
    let long = ChannelName::parse("long:1").unwrap();
    assert_eq!(log.read(&long, 0, 100).await.unwrap().messages.len(), 10);
}

#[tokio::test]
async fn reset_gives_a_new_epoch_and_keeps_serials_increasing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, rec) = open(dir.path());
    let a = ChannelName::parse("a").unwrap();
    log.append(vec![msg("a", None, "1"), msg("a", None, "2")], None)
        .await
        .unwrap();
    let before = log.state(&a).await.unwrap();
    log.reset(vec![a.clone(), ChannelName::parse("fresh").unwrap()])
        .await
        .unwrap();
    let after = log.state(&a).await.unwrap();
    assert_ne!(after.epoch, before.epoch);
    assert_eq!((after.head, after.trimmed), (2, 2));
    assert!(
        log.read(&a, 0, 10).await.unwrap().messages.is_empty(),
        "the old history is gone"
    );
    assert_eq!(
        log.append(vec![msg("a", None, "3")], None).await.unwrap()[0].serial,
        3
    );
    assert!(rec
        .0
        .lock()
        .iter()
        .any(|(c, head, _)| c == "reset a" && *head == 2));
    // The new epoch survives a restart.
    log.close().await;
    drop(log);
    let (log, _) = open(dir.path());
    assert_eq!(log.state(&a).await.unwrap().epoch, after.epoch);
}

#[tokio::test]
async fn retention_trims_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path());
    log.append(vec![msg("a", None, "1"), msg("a", None, "2")], None)
        .await
        .unwrap();
    let policy = RetentionPolicy {
        default: Retention {
            max_age: Some(Duration::from_millis(1)),
            max_messages: None,
        },
        namespaces: vec![],
    };
    std::thread::sleep(Duration::from_millis(5));
    log.apply_retention(&policy).await.unwrap();
    let a = ChannelName::parse("a").unwrap();
    let state = log.state(&a).await.unwrap();
    assert_eq!((state.head, state.trimmed), (2, 2));
    // Serials keep increasing after everything was trimmed.
    assert_eq!(
        log.append(vec![msg("a", None, "3")], None).await.unwrap()[0].serial,
        3
    );
}
