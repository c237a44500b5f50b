//! `smoke`: every scenario at a tiny size against a running server, for CI. Fails when anything
//! was missing, duplicated, out of order or refused.

use anyhow::Result;
use serde_json::json;

use crate::catchup::{self, CatchupArgs, Mode};
use crate::channels::{self, ChannelsArgs};
use crate::common::{Report, Target};
use crate::fanout::{self, FanoutArgs, Transport};
use crate::idle::{self, IdleArgs};
use crate::publish::{self, PublishArgs};
use crate::storm::{self, StormArgs};
use crate::system::{System, SystemArgs};

/// Arguments of `smoke`.
#[derive(Debug, Clone, clap::Args)]
pub struct SmokeArgs {
    #[command(flatten)]
    pub target: Target,
    /// The system to exercise; peers run the scenarios they take part in (fanout, idle,
    /// channels, storm).
    #[command(flatten)]
    pub system: SystemArgs,
    /// Server process id (enables the RSS and CPU figures).
    #[arg(long)]
    pub pid: Option<String>,
    /// Subscribers of the fanout run.
    #[arg(long, default_value_t = 50)]
    pub subscribers: usize,
    /// Subscribers of the SSE and long-poll fanout runs.
    #[arg(long, default_value_t = 20)]
    pub http_subscribers: usize,
    /// API key of the fanout publisher (default: --key).
    #[arg(long, env = "TIDINGS_BENCH_PUBLISHER_KEY")]
    pub publisher_key: Option<String>,
    /// Seconds of each timed run.
    #[arg(long, default_value_t = 2.0)]
    pub duration: f64,
}

/// Run all scenarios; answers their reports.
pub async fn run(a: &SmokeArgs) -> Vec<Report> {
    let t = a.target.clone();
    let mut reports = Vec::new();
    let fan = FanoutArgs {
        target: t.clone(),
        system: a.system.clone(),
        subscribers: a.subscribers,
        transport: Transport::Websocket,
        rate: 100.0,
        duration: a.duration,
        size: 100,
        channel: None,
        connect_concurrency: 50,
        connect_timeout: 60.0,
        max_inflight: 1000,
        drain_timeout: 10.0,
        source_ips: 1,
        pid: a.pid.clone(),
        publisher_key: a.publisher_key.clone(),
    };
    reports.push(or_failed("fanout", fanout::run(&fan).await));
    let idl = IdleArgs {
        target: t.clone(),
        system: a.system.clone(),
        connections: a.subscribers,
        pid: a.pid.clone(),
        attach: true,
        distinct_channels: false,
        channel: None,
        settle: 1.0,
        connect_concurrency: 50,
        source_ips: 1,
    };
    reports.push(or_failed("idle", idle::run(&idl).await));
    let chans = ChannelsArgs {
        target: t.clone(),
        system: a.system.clone(),
        subscribers: a.subscribers,
        rate: 200.0,
        shared_every: 10,
        duration: a.duration,
        size: 100,
        connect_concurrency: 50,
        drain_timeout: 10.0,
        pid: a.pid.clone(),
        publisher_key: a.publisher_key.clone(),
    };
    reports.push(or_failed("channels", channels::run(&chans).await));
    let st = StormArgs {
        target: t.clone(),
        system: a.system.clone(),
        subscribers: a.subscribers,
        rate: 50.0,
        warmup: 1.0,
        duration: 10.0 + a.duration,
        size: 100,
        connect_concurrency: 50,
        pid: a.pid.clone(),
        publisher_key: a.publisher_key.clone(),
    };
    reports.push(or_failed("storm", storm::run(&st).await));
    if a.system.system != System::Tidings {
        return reports;
    }
    for transport in [Transport::Sse, Transport::Poll] {
        let f = FanoutArgs {
            subscribers: a.http_subscribers,
            transport,
            ..fan.clone()
        };
        reports.push(or_failed("fanout", fanout::run(&f).await));
    }
    let publ = PublishArgs {
        target: t.clone(),
        concurrency: 4,
        duration: a.duration,
        size: 100,
        batch: 1,
        channel: None,
        channels: 1,
        pid: a.pid.clone(),
    };
    reports.push(or_failed("publish", publish::run(&publ).await));
    let batch = PublishArgs {
        batch: 10,
        concurrency: 2,
        ..publ
    };
    reports.push(or_failed("publish", publish::run(&batch).await));
    for mode in [Mode::From, Mode::Rewind] {
        let cu = CatchupArgs {
            target: t.clone(),
            messages: 5000,
            size: 100,
            fill_batch: 1000,
            fill_concurrency: 2,
            mode,
            channel: None,
            timeout: 60.0,
            pid: a.pid.clone(),
        };
        reports.push(or_failed("catchup", catchup::run(&cu).await));
    }
    reports
}

fn or_failed(scenario: &str, r: Result<Report>) -> Report {
    r.unwrap_or_else(|e| {
        let mut rep = Report::new(scenario);
        rep.problem(format!("{e:#}"));
        rep
    })
}

/// Print the reports and the closing `N passed, N failed` line; answers whether all passed.
pub fn print(reports: &[Report], json_out: bool) -> bool {
    let failed = reports.iter().filter(|r| !r.problems.is_empty()).count();
    for r in reports {
        eprint!("{}", r.human());
    }
    if json_out {
        println!(
            "{}",
            json!({
                "scenario": "smoke",
                "ok": failed == 0,
                "runs": reports.iter().map(Report::to_json).collect::<Vec<_>>(),
            })
        );
    }
    eprintln!(
        "smoke: {} passed, {} failed",
        reports.len() - failed,
        failed
    );
    failed == 0
}
