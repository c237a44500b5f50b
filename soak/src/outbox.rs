//! Outbox writers: each commits transactions of a few rows across the database channels, every
//! row carrying `{"w": WRITER, "s": SEQ}`. A sequence number is never reused, even when a
//! COMMIT's answer was lost (it may or may not have happened): what was committed is what the
//! outbox table holds at the end, read by [`committed`].

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

use crate::ledger::Key;
use crate::topology::connect;

/// Bytes of filler in each message's data, so a subscriber that stops reading fills its
/// socket's buffers within seconds.
pub const PAD: usize = 512;

/// One outbox writer.
pub struct Writer {
    pub name: String,
    pub url: String,
    pub channels: Vec<String>,
    /// Transactions per second it aims at.
    pub rate: f64,
    pub seed: u64,
    /// Rows of the commits Postgres answered OK.
    pub rows: Arc<AtomicU64>,
}

impl Writer {
    /// Write until `stop`; reconnects (with a short pause) whenever Postgres goes away.
    pub async fn run(self, stop: CancellationToken) {
        let mut rng = StdRng::seed_from_u64(self.seed);
        let mut seq = 0u64;
        let mut client = None;
        let pause = Duration::from_secs_f64(1.0 / self.rate);
        let pad = "x".repeat(PAD);
        while !stop.is_cancelled() {
            if client.is_none() {
                match connect(&self.url).await {
                    Ok(c) => client = Some(c),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                }
            }
            let rows: u64 = rng.random_range(1..=4);
            let mut sql = String::from("BEGIN;");
            for _ in 0..rows {
                seq += 1;
                let channel = &self.channels[rng.random_range(0..self.channels.len())];
                sql.push_str(&format!(
                    "INSERT INTO tidings.outbox (channel, name, data) VALUES ('{channel}', 'soak', '{{\"w\":\"{}\",\"s\":{seq},\"pad\":\"{pad}\"}}');",
                    self.name
                ));
            }
            sql.push_str("COMMIT;");
            let c = client.as_ref().expect("connected above");
            match tokio::time::timeout(Duration::from_secs(10), c.batch_execute(&sql)).await {
                Ok(Ok(())) => {
                    self.rows.fetch_add(rows, Ordering::Relaxed);
                }
                // Committed or not, we learn at the end from the table.
                _ => client = None,
            }
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(pause.mul_f64(rng.random_range(0.5..1.5))) => {}
            }
        }
    }
}

/// Every soak row in the outbox: its key and channel, in id order.
pub async fn committed(url: &str) -> anyhow::Result<BTreeMap<Key, String>> {
    let sql = connect(url).await?;
    let rows = sql
        .query(
            "SELECT channel, data->>'w', (data->>'s')::bigint FROM tidings.outbox WHERE name = 'soak' ORDER BY id",
            &[],
        )
        .await?;
    let mut out = BTreeMap::new();
    for r in rows {
        let key = Key {
            writer: r.get(1),
            seq: r.get::<_, i64>(2) as u64,
        };
        let channel: String = r.get(0);
        if let Some(before) = out.insert(key.clone(), channel) {
            anyhow::bail!("the outbox holds {key} twice (on {before} too): the writer reused a sequence number");
        }
    }
    Ok(out)
}
