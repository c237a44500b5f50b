//! `GET /v1/poll`: the long-polling transport, for proxies that break streaming. Each request
//! names its channels and positions and waits for messages; the next one resumes from what the
//! answer delivered, so nothing is lost between requests.

use std::time::Duration;

use reqwest::StatusCode;
use tidings_protocol::MessageFrame;

use crate::connection::{query, AttachedFrame, Connection, Handled};
use crate::error::Error;
use crate::outcome::{lost, refused, Ended, Failed, Outcome};
use crate::rest::{endpoint, with_credential};
use crate::transport::Transport;

/// Ask for the attached channels' messages, one request after the other, each resuming from
/// what the last answer delivered, until the connection ends.
pub(crate) async fn connect(conn: &mut Connection, credential: Option<String>) -> Outcome {
    let transport = Transport::LongPoll;
    let mut credential = credential;
    let mut connected = false;
    let mut refreshed = false;
    loop {
        if conn.attachments.is_empty() {
            return Outcome::Ended(Ended::Restart);
        }
        let request = conn.attachments.plan();
        // Come back at once when some channel waits for the next request, or for the
        // answer that confirms its attach (the application's `attach` waits for it).
        let wait = if conn.attachments.waiting() || conn.attachments.unconfirmed() {
            Duration::ZERO
        } else {
            conn.shared.settings.poll_wait
        };
        let mut url = endpoint(conn.shared.base(), &["v1", "poll"]);
        query(&mut url, &request);
        url.query_pairs_mut()
            .append_pair("wait", &format!("{}ms", wait.as_millis()));
        let limit = if connected {
            wait + conn.shared.settings.request_timeout
        } else {
            wait + conn.shared.settings.connect_timeout
        };
        let sending = with_credential(conn.shared.http.get(url), credential.as_deref())
            .timeout(limit)
            .send();
        let answer = async move {
            let response = sending.await?;
            let status = response.status();
            let body = response.bytes().await?;
            Ok::<_, reqwest::Error>((status, body))
        };
        tokio::pin!(answer);
        let answer = loop {
            tokio::select! {
                biased;
                command = conn.commands.recv() => match conn.handle(command) {
                    Handled::Close(done) => {
                        return if connected {
                            Outcome::Ended(Ended::Closed(done))
                        } else {
                            Outcome::Failed(Failed::Closed(done))
                        };
                    }
                    // A new channel: ask again at once with it (nothing is lost: positions
                    // only move with answers).
                    Handled::Attached(_) => break None,
                    Handled::Detached(_) | Handled::Done => {}
                },
                answer = &mut answer => break Some(answer),
            }
        };
        let Some(answer) = answer else { continue };
        let failure = match answer {
            Err(e) => Failed::Transport(Error::transport(
                transport,
                "the request failed",
                Some(Box::new(e)),
            )),
            Ok((status, body)) if status == StatusCode::OK => {
                let answer = match serde_json::from_slice::<PollAnswer>(&body) {
                    Ok(a) => a,
                    Err(e) => {
                        let error =
                            Error::transport(transport, format!("unreadable answer: {e}"), None);
                        return if connected {
                            Outcome::Ended(lost(error, true))
                        } else {
                            Outcome::Failed(Failed::Transport(error))
                        };
                    }
                };
                if !connected {
                    connected = true;
                    conn.connected(transport);
                }
                refreshed = false;
                for a in answer.attached {
                    conn.on_attached(a);
                }
                for m in answer.messages {
                    conn.attachments.on_message(m);
                }
                if let Some(done) = conn.drain_all().await {
                    return Outcome::Ended(Ended::Closed(done));
                }
                conn.attachments.take_gone();
                match conn.shared.auth.credential(false).await {
                    Ok(c) => credential = c,
                    Err(e) => return Outcome::Ended(lost(e, true)),
                }
                continue;
            }
            Ok((status, body)) => refused(transport, status, &body),
        };
        if !connected {
            return Outcome::Failed(failure);
        }
        return Outcome::Ended(match failure {
            // An expired token mid-way: fetch a fresh one and ask again, once.
            Failed::Auth(_) if conn.shared.auth.renewable() && !refreshed => {
                refreshed = true;
                match conn.shared.auth.credential(true).await {
                    Ok(c) => {
                        credential = c;
                        continue;
                    }
                    Err(e) => lost(e, true),
                }
            }
            Failed::Auth(e) => conn.token_expired(e, true),
            Failed::Channel(e) => {
                let channel = e.channel().unwrap_or_default().to_owned();
                conn.attachments.fail(&channel, e);
                continue;
            }
            Failed::Transport(e) | Failed::Later(e) => lost(e, true),
            Failed::Fatal(e) => Ended::Fatal(e),
            Failed::Closed(done) => Ended::Closed(done),
        });
    }
}

/// A long-poll answer.
#[derive(serde::Deserialize)]
struct PollAnswer {
    attached: Vec<AttachedFrame>,
    messages: Vec<MessageFrame>,
}
