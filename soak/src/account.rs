//! The account at the end: what the log holds (REST history, read around the proxy), then per
//! subscriber per channel: serials strictly increasing within an epoch, each writer's sequence
//! increasing, no message twice (by id or by key), nothing that was never written, and every
//! committed row and acknowledged publish delivered, or covered by a continuity-lost signal the
//! subscriber got ("lost, told"); anything else missing is "lost, untold".

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use serde_json::Value;
use tidings_testkit::KEY;

use crate::ledger::{Key, Ledger, Record};

/// One channel as the log holds it.
#[derive(Default, Debug)]
pub struct ChannelLog {
    pub epoch: String,
    /// (serial, key) of each message, in serial order.
    pub items: Vec<(u64, Option<Key>)>,
}

impl ChannelLog {
    pub fn head(&self) -> u64 {
        self.items.last().map_or(0, |i| i.0)
    }

    /// Whether retention removed `serial`: it is below everything the history still holds.
    fn removed(&self, serial: u64) -> bool {
        self.items.first().is_none_or(|first| serial < first.0)
    }
}

/// Read every channel's whole history from Tidings at `base`.
pub async fn read_log(
    base: &str,
    channels: &[String],
) -> anyhow::Result<BTreeMap<String, ChannelLog>> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let mut out = BTreeMap::new();
    for channel in channels {
        let mut log = ChannelLog::default();
        let mut after = 0;
        loop {
            let page: Value = http
                .get(format!(
                    "{base}/v1/channels/{channel}/messages?after={after}&limit=1000"
                ))
                .bearer_auth(KEY)
                .send()
                .await
                .and_then(|r| r.error_for_status())
                .with_context(|| format!("reading the history of {channel}"))?
                .json()
                .await?;
            log.epoch = page["epoch"].as_str().unwrap_or_default().to_owned();
            for item in page["items"].as_array().into_iter().flatten() {
                log.items
                    .push((item["serial"].as_u64().unwrap_or(0), Key::of(&item["data"])));
            }
            match page["next"].as_u64() {
                Some(n) => after = n,
                None => break,
            }
        }
        out.insert(channel.clone(), log);
    }
    Ok(out)
}

/// What must reach every subscriber, what may (at most once), and where the log put each.
pub struct Truth {
    /// Committed outbox rows and acknowledged publishes: key to channel.
    pub expected: BTreeMap<Key, String>,
    /// Publishes never acknowledged: key to channel.
    pub unacked: BTreeMap<Key, String>,
    /// Where each key is in the log: (channel, serial).
    pub in_log: HashMap<Key, (String, u64)>,
}

impl Truth {
    /// `serials` are the acknowledged publishes' serials, for those retention removed.
    pub fn new(
        expected: BTreeMap<Key, String>,
        unacked: BTreeMap<Key, String>,
        serials: &HashMap<Key, u64>,
        log: &BTreeMap<String, ChannelLog>,
    ) -> (Truth, LogAccount) {
        let mut in_log = HashMap::new();
        let mut account = LogAccount::default();
        for (channel, l) in log {
            for (serial, key) in &l.items {
                let Some(key) = key else {
                    account.foreign.push(format!("{channel} serial {serial}"));
                    continue;
                };
                if let Some((c, s)) = in_log.insert(key.clone(), (channel.clone(), *serial)) {
                    account.duplicated.push(format!(
                        "{key} at {c} serial {s} and {channel} serial {serial}"
                    ));
                }
            }
        }
        let mut removed = Vec::new();
        for (key, channel) in &expected {
            let acked = serials.get(key);
            match in_log.get(key) {
                None => match acked {
                    Some(s) if log.get(channel).is_some_and(|l| l.removed(*s)) => {
                        removed.push((key.clone(), (channel.clone(), *s)))
                    }
                    _ => account.missing.push(format!("{key} ({channel})")),
                },
                Some((c, s)) if c != channel => account.misplaced.push(format!(
                    "{key} written to {channel}, logged on {c} serial {s}"
                )),
                Some((_, s)) if acked.is_some_and(|a| a != s) => account.misplaced.push(format!(
                    "{key} acknowledged with serial {}, logged at serial {s}",
                    acked.unwrap()
                )),
                Some(_) => {}
            }
        }
        account.removed = removed.len() as u64;
        in_log.extend(removed);
        (
            Truth {
                expected,
                unacked,
                in_log,
            },
            account,
        )
    }
}

/// What is wrong with the log itself.
#[derive(Default)]
pub struct LogAccount {
    /// Expected keys the log does not hold.
    pub missing: Vec<String>,
    /// Keys the log holds twice.
    pub duplicated: Vec<String>,
    /// Keys the log holds on another channel than they were written to.
    pub misplaced: Vec<String>,
    /// Messages on soak channels without a key.
    pub foreign: Vec<String>,
    /// Acknowledged publishes retention removed (found by their acknowledged serial).
    pub removed: u64,
}

/// One subscriber's account.
#[derive(Default)]
pub struct SubscriberAccount {
    pub name: String,
    pub delivered: u64,
    /// Continuity-lost signals received.
    pub signals: u64,
    /// The signals by reason.
    pub reasons: BTreeMap<String, u64>,
    pub lost_told: u64,
    pub lost_untold: Vec<String>,
    pub duplicated: Vec<String>,
    pub out_of_order: Vec<String>,
    /// Delivered messages that were never written (or on another channel).
    pub unexpected: Vec<String>,
    pub errors: Vec<String>,
}

/// A range of serials a continuity-lost signal covers: after `after` up to `upto`.
struct Covered {
    after: u64,
    upto: u64,
}

pub fn account(name: &str, ledger: &Ledger, truth: &Truth) -> SubscriberAccount {
    let mut a = SubscriberAccount {
        name: name.to_owned(),
        errors: ledger.errors.clone(),
        ..Default::default()
    };
    let mut last: HashMap<&str, (&str, u64)> = HashMap::new();
    let mut last_seq: HashMap<(&str, &str), u64> = HashMap::new();
    let mut keys: HashSet<&Key> = HashSet::new();
    let mut ids: HashSet<(&str, &str)> = HashSet::new();
    let mut covered: HashMap<&str, Vec<Covered>> = HashMap::new();
    for record in &ledger.records {
        match record {
            Record::Message(d) => {
                a.delivered += 1;
                let channel = d.channel.as_str();
                if let Some((epoch, serial)) = last.get(channel) {
                    if *epoch == d.epoch && d.serial <= *serial {
                        a.out_of_order.push(format!(
                            "{channel}: serial {} after {serial} (epoch {epoch})",
                            d.serial
                        ));
                    }
                }
                last.insert(channel, (d.epoch.as_str(), d.serial));
                let twice_by_id = d.id.as_deref().is_some_and(|id| !ids.insert((channel, id)));
                let Some(key) = &d.key else {
                    a.unexpected
                        .push(format!("{channel} serial {}: no key in its data", d.serial));
                    continue;
                };
                let written_to = truth.expected.get(key).or_else(|| truth.unacked.get(key));
                if written_to.map(String::as_str) != Some(channel) {
                    a.unexpected.push(format!(
                        "{channel} serial {}: {key}, written to {}",
                        d.serial,
                        written_to.map_or("no channel (never written)", |c| c.as_str())
                    ));
                }
                if !keys.insert(key) || twice_by_id {
                    a.duplicated
                        .push(format!("{channel} serial {}: {key} again", d.serial));
                }
                if let Some(prev) = last_seq.insert((channel, key.writer.as_str()), key.seq) {
                    if key.seq <= prev {
                        a.out_of_order
                            .push(format!("{channel}: {key} after {}#{prev}", key.writer));
                    }
                }
            }
            Record::Lost(l) => {
                a.signals += 1;
                *a.reasons.entry(l.reason.clone()).or_default() += 1;
                let after = match &l.previous {
                    Some(p) if p.epoch == l.position.epoch => p.serial,
                    _ => 0,
                };
                covered
                    .entry(l.channel.as_str())
                    .or_default()
                    .push(Covered {
                        after,
                        upto: l.position.serial,
                    });
            }
        }
    }
    for (key, channel) in &truth.expected {
        if keys.contains(key) {
            continue;
        }
        let told = truth.in_log.get(key).is_some_and(|(c, serial)| {
            covered
                .get(c.as_str())
                .is_some_and(|cs| cs.iter().any(|r| r.after < *serial && *serial <= r.upto))
        });
        if told {
            a.lost_told += 1;
        } else {
            let at = truth
                .in_log
                .get(key)
                .map_or("not in the log".to_owned(), |(_, s)| format!("serial {s}"));
            a.lost_untold.push(format!("{channel}: {key} ({at})"));
        }
    }
    a
}

/// Names of the channels whose serial a subscriber has not reached yet (`head` per channel).
pub fn behind(ledger: &Ledger, log: &BTreeMap<String, ChannelLog>) -> Vec<String> {
    log.iter()
        .filter_map(|(channel, l)| {
            let at = ledger.positions.get(channel);
            let reached = at.is_some_and(|p| p.epoch == l.epoch && p.serial >= l.head());
            (!reached).then(|| {
                format!(
                    "{channel} at {} of {}",
                    at.map_or("nothing".to_owned(), |p| p.serial.to_string()),
                    l.head()
                )
            })
        })
        .collect()
}

/// Up to `n` examples of a list, and how many more.
pub fn examples(list: &[String], n: usize) -> String {
    let mut s = list.iter().take(n).cloned().collect::<Vec<_>>().join("; ");
    if list.len() > n {
        s.push_str(&format!("; and {} more", list.len() - n));
    }
    s
}

#[cfg(test)]
mod tests {
    use tidings_protocol::Position;

    use super::*;
    use crate::ledger::Delivery;

    fn key(w: &str, s: u64) -> Key {
        Key {
            writer: w.into(),
            seq: s,
        }
    }

    /// Channel `a` holds db0#1..=db0#n at serials 1..=n, all expected.
    fn truth(n: u64) -> (Truth, LogAccount) {
        let expected: BTreeMap<Key, String> =
            (1..=n).map(|s| (key("db0", s), "a".into())).collect();
        let log = BTreeMap::from([(
            "a".to_owned(),
            ChannelLog {
                epoch: "e1".into(),
                items: (1..=n).map(|s| (s, Some(key("db0", s)))).collect(),
            },
        )]);
        Truth::new(expected, BTreeMap::new(), &HashMap::new(), &log)
    }

    fn deliver(ledger: &mut Ledger, serial: u64, k: Key) {
        ledger.message(Delivery {
            channel: "a".into(),
            epoch: "e1".into(),
            serial,
            id: Some(format!("{}-{}", k.writer, k.seq)),
            key: Some(k),
        });
    }

    #[test]
    fn everything_once_in_order_is_clean() {
        let (truth, log) = truth(3);
        assert!(log.missing.is_empty() && log.duplicated.is_empty());
        let mut l = Ledger::default();
        for s in 1..=3 {
            deliver(&mut l, s, key("db0", s));
        }
        let a = account("s", &l, &truth);
        assert_eq!(a.delivered, 3);
        assert!(a.lost_untold.is_empty() && a.duplicated.is_empty() && a.out_of_order.is_empty());
        assert!(a.unexpected.is_empty());
        let heads = BTreeMap::from([(
            "a".to_owned(),
            ChannelLog {
                epoch: "e1".into(),
                items: vec![(3, None)],
            },
        )]);
        assert!(behind(&l, &heads).is_empty());
    }

    #[test]
    fn a_gap_is_lost_untold_unless_a_signal_covers_it() {
        let (truth, _) = truth(4);
        let mut l = Ledger::default();
        deliver(&mut l, 1, key("db0", 1));
        deliver(&mut l, 4, key("db0", 4));
        let a = account("s", &l, &truth);
        assert_eq!(a.lost_untold.len(), 2, "{:?}", a.lost_untold);
        assert_eq!(a.lost_told, 0);

        let mut l = Ledger::default();
        deliver(&mut l, 1, key("db0", 1));
        let head = Position {
            epoch: "e1".into(),
            serial: 3,
        };
        l.lost("a", "HistoryExpired".into(), head);
        deliver(&mut l, 4, key("db0", 4));
        let a = account("s", &l, &truth);
        assert!(a.lost_untold.is_empty(), "{:?}", a.lost_untold);
        assert_eq!((a.lost_told, a.signals), (2, 1));

        // A signal covers only what lies between the position before it and the one after.
        let mut l = Ledger::default();
        deliver(&mut l, 1, key("db0", 1));
        deliver(&mut l, 2, key("db0", 2));
        let head = Position {
            epoch: "e1".into(),
            serial: 2,
        };
        l.lost("a", "HistoryExpired".into(), head);
        deliver(&mut l, 4, key("db0", 4));
        let a = account("s", &l, &truth);
        assert_eq!(a.lost_untold.len(), 1, "db0#3 was not covered");
    }

    #[test]
    fn duplicates_by_key_or_id_and_disorder_are_counted() {
        let (truth, _) = truth(3);
        let mut l = Ledger::default();
        deliver(&mut l, 1, key("db0", 1));
        deliver(&mut l, 2, key("db0", 2));
        deliver(&mut l, 2, key("db0", 2)); // the same serial again: a duplicate and disorder
        deliver(&mut l, 3, key("db0", 3));
        let a = account("s", &l, &truth);
        assert_eq!(a.duplicated.len(), 1, "{:?}", a.duplicated);
        assert_eq!(a.out_of_order.len(), 2, "{:?}", a.out_of_order);

        // Serials in order, but a writer's sequence backwards: commit order broken.
        let mut l = Ledger::default();
        deliver(&mut l, 1, key("db0", 2));
        deliver(&mut l, 2, key("db0", 1));
        deliver(&mut l, 3, key("db0", 3));
        let a = account("s", &l, &truth);
        assert_eq!(a.out_of_order.len(), 1, "{:?}", a.out_of_order);
        assert!(a.duplicated.is_empty());
    }

    #[test]
    fn messages_never_written_or_on_another_channel_are_unexpected() {
        let (truth, _) = truth(1);
        let mut l = Ledger::default();
        deliver(&mut l, 1, key("db0", 1));
        deliver(&mut l, 2, key("ghost", 1));
        l.message(Delivery {
            channel: "b".into(),
            epoch: "e1".into(),
            serial: 1,
            id: None,
            key: Some(key("db0", 1)),
        });
        let a = account("s", &l, &truth);
        assert_eq!(a.unexpected.len(), 2, "{:?}", a.unexpected);
    }

    #[test]
    fn the_log_itself_is_checked_and_a_subscriber_behind_is_named() {
        let expected = BTreeMap::from([
            (key("db0", 1), "a".to_owned()),
            (key("db0", 2), "a".to_owned()),
        ]);
        let log = BTreeMap::from([(
            "a".to_owned(),
            ChannelLog {
                epoch: "e1".into(),
                items: vec![(1, Some(key("db0", 1))), (2, Some(key("db0", 1)))],
            },
        )]);
        let (_, account) = Truth::new(expected, BTreeMap::new(), &HashMap::new(), &log);
        assert_eq!(account.missing, ["db0#2 (a)"]);
        assert_eq!(account.duplicated.len(), 1);
        let mut l = Ledger::default();
        deliver(&mut l, 1, key("db0", 1));
        assert_eq!(behind(&l, &log), ["a at 1 of 2"]);
    }
}
