//! `tidings tail`: a subscriber for operators. It prints the messages of one or more channels as
//! they arrive, built on the Rust client (`tidings-client`) like any application: it reconnects,
//! resumes without loss or duplicates, and says plainly on stderr when continuity was lost.

use std::io::Write;

use clap::Args;
use futures_util::StreamExt;
use tidings_client::{Client, ConnectionState, Event, Message, Position, Start};

/// Default server address, the one `tidings serve` listens on by default.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Flags of `tidings tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// Channels to follow.
    #[arg(required = true, value_name = "CHANNEL")]
    pub channels: Vec<String>,
    /// Print the messages after this serial first (0: from the oldest kept), then live ones.
    /// Without it, only messages published from now on.
    #[arg(long, value_name = "SERIAL")]
    pub from: Option<u64>,
    /// Print one JSON object per message and line (the `message` frame) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The server's base URL.
    #[arg(long, env = "TIDINGS_URL", default_value = DEFAULT_URL)]
    pub url: String,
    /// API key, KEY_ID:SECRET (needs `subscribe`, and `history` for --from).
    #[arg(long, env = "TIDINGS_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Signed token, used instead of an API key when both are given.
    #[arg(long, env = "TIDINGS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Why `tidings tail` stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailError {
    /// The URL or the credentials cannot be used.
    #[error("cannot connect to {url}: {source}")]
    Client {
        url: String,
        #[source]
        source: tidings_client::Error,
    },
    /// `--from` needs the channel's epoch, read from its history.
    #[error(
        "cannot read the epoch of {channel} for --from (the key needs `history` on it): {source}"
    )]
    Epoch {
        channel: String,
        #[source]
        source: tidings_client::Error,
    },
    /// The server refused the channel.
    #[error("cannot follow {channel}: {source}")]
    Attach {
        channel: String,
        #[source]
        source: tidings_client::Error,
    },
    /// A channel stopped being served (refused credentials, capabilities withdrawn).
    #[error("{channel}: {source}")]
    Stream {
        channel: String,
        #[source]
        source: tidings_client::Error,
    },
    /// Standard output failed.
    #[error("cannot write to standard output: {0}")]
    Output(#[source] std::io::Error),
}

/// Follow the channels until interrupted (Ctrl-C), the output closes, or the server refuses.
pub async fn run(args: TailArgs) -> Result<(), TailError> {
    let client_error = |source| TailError::Client {
        url: args.url.clone(),
        source,
    };
    let mut builder = Client::builder(&args.url);
    if let Some(token) = &args.token {
        builder = builder.token(token);
    } else if let Some(key) = &args.api_key {
        builder = builder.api_key(key);
    }
    let client = builder.build().map_err(client_error)?;
    let mut subscriptions = Vec::with_capacity(args.channels.len());
    for channel in &args.channels {
        let start = match args.from {
            None => Start::Now,
            Some(serial) => {
                let page =
                    client
                        .history(channel, 0, 1)
                        .await
                        .map_err(|source| TailError::Epoch {
                            channel: channel.clone(),
                            source,
                        })?;
                Start::From(Position {
                    epoch: page.epoch,
                    serial,
                })
            }
        };
        let subscription =
            client
                .attach(channel, start)
                .await
                .map_err(|source| TailError::Attach {
                    channel: channel.clone(),
                    source,
                })?;
        subscriptions.push(subscription);
    }
    let notes = tokio::spawn(report_connection(client.state()));
    let result = print(&args, subscriptions).await;
    notes.abort();
    client.close().await;
    result
}

/// Print every event until the end; a closed output (`tail | head`) is a normal end.
async fn print(
    args: &TailArgs,
    subscriptions: Vec<tidings_client::Subscription>,
) -> Result<(), TailError> {
    let with_channel = args.channels.len() > 1;
    let mut events = futures_util::stream::select_all(subscriptions.into_iter().map(|s| {
        let channel = s.channel().to_owned();
        s.map(move |event| (channel.clone(), event))
    }));
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut out = std::io::stdout();
    loop {
        let (channel, event) = tokio::select! {
            biased;
            _ = &mut interrupted => return Ok(()),
            next = events.next() => match next {
                Some(item) => item,
                None => return Ok(()),
            },
        };
        match event {
            Ok(Event::Message(m)) => {
                let line = if args.json {
                    serde_json::to_string(&m).expect("messages encode")
                } else {
                    human(&m, with_channel)
                };
                let written = writeln!(out, "{line}").and_then(|()| out.flush());
                match written {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                    Err(e) => return Err(TailError::Output(e)),
                }
            }
            Ok(Event::ContinuityLost {
                reason, position, ..
            }) => {
                let reason = serde_json::to_value(reason).expect("reasons encode");
                eprintln!(
                    "tidings: {channel}: continuity lost ({}): messages were missed; continuing after serial {} of epoch {}",
                    reason.as_str().unwrap_or_default(),
                    position.serial,
                    position.epoch
                );
            }
            Ok(_) => {}
            Err(source) => return Err(TailError::Stream { channel, source }),
        }
    }
}

/// `SERIAL NAME DATA` (`CHANNEL SERIAL NAME DATA` when following several channels), with `-`
/// for a missing name or data.
fn human(m: &Message, with_channel: bool) -> String {
    let name = m.name.as_deref().unwrap_or("-");
    let data = m
        .data
        .as_ref()
        .map_or_else(|| "-".to_owned(), |d| d.to_string());
    if with_channel {
        format!("{} {} {name} {data}", m.channel, m.serial)
    } else {
        format!("{} {name} {data}", m.serial)
    }
}

/// Tell the operator on stderr when the connection drops and when it is back.
async fn report_connection(mut state: tokio::sync::watch::Receiver<ConnectionState>) {
    let mut lost = false;
    while state.changed().await.is_ok() {
        let now = state.borrow_and_update().clone();
        match now {
            ConnectionState::Disconnected { error, .. } if !lost => {
                lost = true;
                eprintln!("tidings: connection lost ({error}); reconnecting");
            }
            ConnectionState::Connected { transport } if lost => {
                lost = false;
                eprintln!("tidings: reconnected ({transport}); resuming");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn human_lines_show_serial_name_and_data() {
        let m = Message {
            channel: "orders:1".into(),
            serial: 7,
            id: None,
            name: Some("created".into()),
            data: Some(serde_json::value::to_raw_value(&json!({"id": 1})).unwrap()),
            headers: None,
            timestamp: 0,
        };
        assert_eq!(human(&m, false), r#"7 created {"id":1}"#);
        assert_eq!(human(&m, true), r#"orders:1 7 created {"id":1}"#);
        let bare = Message {
            name: None,
            data: None,
            ..m
        };
        assert_eq!(human(&bare, false), "7 - -");
    }
}
