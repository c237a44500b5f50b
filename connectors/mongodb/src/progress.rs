//! A snapshot's visible progress: a bar when stderr is a terminal (someone is watching), counts
//! in the log otherwise (a service, a container), with done/total, the rate and the time left.
//!
//! The total is MongoDB's estimate (`estimatedDocumentCount`, read from collection metadata, no
//! scan), so the bar may end a little short of or past it when documents come and go meanwhile.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Log a progress line at least this often while a snapshot runs...
pub const LOG_EVERY: Duration = Duration::from_secs(10);
/// ...and each time another this-many-th of the estimated total is read.
pub const LOG_STEPS: u64 = 10;

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Display {
    /// A progress bar on stderr.
    Bar,
    /// `tracing` info lines.
    Log,
}

impl Display {
    /// A bar when stderr is a terminal, the log otherwise.
    pub fn detect() -> Display {
        if std::io::stderr().is_terminal() {
            Display::Bar
        } else {
            Display::Log
        }
    }
}

/// Progress of one snapshot run.
#[derive(Debug)]
pub struct SnapshotMeter {
    source: String,
    total: u64,
    done: u64,
    /// Documents counted as done before this run (collections finished before a restart).
    resumed_at: u64,
    started: Instant,
    last_log: Instant,
    logged_done: u64,
    bar: Option<ProgressBar>,
}

/// Documents per second over `elapsed`.
fn rate(docs: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        docs as f64 / secs
    } else {
        0.0
    }
}

impl SnapshotMeter {
    /// Start metering: `total` documents estimated, `done` of them already published before
    /// this run (a snapshot resumed after a restart).
    pub fn new(source: &str, total: u64, done: u64, display: Display) -> Self {
        let bar = (display == Display::Bar).then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix} snapshot [{bar:25}] {human_pos}/{human_len}  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(source.to_owned());
            bar.set_position(done);
            bar
        });
        let now = Instant::now();
        tracing::info!(source = %source, total_estimated = total, done, "snapshot starting");
        SnapshotMeter {
            source: source.to_owned(),
            total,
            done,
            resumed_at: done,
            started: now,
            last_log: now,
            logged_done: done,
            bar,
        }
    }

    /// Documents read so far, in this run and before it.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// `n` more documents of `ns` were read.
    pub fn add(&mut self, n: u64, ns: &str) {
        self.done += n;
        if self.done > self.total {
            // More documents than estimated: keep the bar honest rather than past 100 %.
            self.total = self.done;
            if let Some(bar) = &self.bar {
                bar.set_length(self.total);
            }
        }
        if let Some(bar) = &self.bar {
            let (per_sec, eta_s) = self.pace();
            bar.set_position(self.done);
            bar.set_message(format!("{per_sec:.0}/s  ETA {eta_s}s  {ns}"));
            return;
        }
        let step = |n: u64| n * LOG_STEPS / self.total.max(1);
        if self.last_log.elapsed() >= LOG_EVERY || step(self.done) > step(self.logged_done) {
            self.log(ns);
        }
    }

    /// Documents per second in this run, and the seconds left at that pace.
    fn pace(&self) -> (f64, u64) {
        let per_sec = rate(self.done - self.resumed_at, self.started.elapsed());
        let left = self.total.saturating_sub(self.done);
        let eta_s = if per_sec > 0.0 {
            (left as f64 / per_sec).round() as u64
        } else {
            0
        };
        (per_sec, eta_s)
    }

    fn log(&mut self, ns: &str) {
        let (per_sec, eta_s) = self.pace();
        let percent = if self.total > 0 {
            (self.done as f64 * 100.0 / self.total as f64).min(100.0)
        } else {
            100.0
        };
        tracing::info!(
            source = %self.source,
            ns = %ns,
            done = self.done,
            total_estimated = self.total,
            percent = format!("{percent:.1}"),
            docs_per_s = per_sec.round() as u64,
            eta_s,
            "snapshot progress"
        );
        self.last_log = Instant::now();
        self.logged_done = self.done;
    }

    /// The snapshot is done: clear the bar and log the totals.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let elapsed = self.started.elapsed();
        tracing::info!(
            source = %self.source,
            documents = self.done,
            elapsed_ms = elapsed.as_millis() as u64,
            docs_per_s = rate(self.done - self.resumed_at, elapsed).round() as u64,
            "snapshot done"
        );
    }
}

impl Drop for SnapshotMeter {
    fn drop(&mut self) {
        // An abandoned run (a restart) leaves no half-drawn bar behind.
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_grow_the_total_when_the_estimate_was_low() {
        let mut m = SnapshotMeter::new("shop", 10, 4, Display::Log);
        m.add(5, "shop.orders");
        assert_eq!((m.done(), m.total), (9, 10));
        m.add(3, "shop.orders");
        assert_eq!((m.done(), m.total), (12, 12));
        assert_eq!(m.resumed_at, 4);
    }

    #[test]
    fn a_line_is_logged_each_tenth_of_the_total() {
        let mut m = SnapshotMeter::new("shop", 1_000, 0, Display::Log);
        m.add(99, "shop.orders");
        assert_eq!(m.logged_done, 0);
        m.add(1, "shop.orders");
        assert_eq!(m.logged_done, 100);
        m.add(150, "shop.orders");
        assert_eq!(m.logged_done, 250);
        m.add(10, "shop.orders");
        assert_eq!(m.logged_done, 250, "not before the next tenth");
    }

    #[test]
    fn a_hidden_bar_tracks_the_counts() {
        let mut m = SnapshotMeter::new("shop", 100, 0, Display::Log);
        m.bar = Some(ProgressBar::hidden());
        m.bar.as_ref().unwrap().set_length(100);
        m.add(40, "shop.orders");
        assert_eq!(m.bar.as_ref().unwrap().position(), 40);
        m.add(80, "shop.items");
        assert_eq!(m.bar.as_ref().unwrap().length(), Some(120));
        m.finish();
        assert!(m.bar.is_none());
    }
}
