//! The client under test as a subscriber: built with the test key and quick reconnects, and
//! the waits on its events and state every client test makes.
#![allow(dead_code)]

use std::time::Duration;

use futures_util::StreamExt;
use tidings_client::{Client, ClientBuilder, ConnectionState, Event, Message, Subscription};
use tidings_testkit::{KEY, WAIT};

/// A client for `url` with the test key and quick reconnects.
pub fn client(url: &str) -> ClientBuilder {
    Client::builder(url)
        .api_key(KEY)
        .backoff(Duration::from_millis(10), Duration::from_millis(100))
        .connect_timeout(Duration::from_secs(5))
}

/// The next event of a subscription, failing the test after [`WAIT`].
pub async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("an event within the wait")
        .expect("the subscription is open")
        .expect("no error")
}

/// The next `n` messages (failing on any other event).
pub async fn messages(sub: &mut Subscription, n: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        match next_event(sub).await {
            Event::Message(m) => out.push(m),
            other => panic!("expected a message, got {other:?}"),
        }
    }
    out
}

/// Assert nothing more arrives for a little while.
pub async fn assert_quiet(sub: &mut Subscription) {
    if let Ok(event) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("expected nothing more, got {event:?}");
    }
}

/// Wait until the client's state matches.
pub async fn wait_state(
    client: &Client,
    what: impl Fn(&ConnectionState) -> bool,
) -> ConnectionState {
    let mut state = client.state();
    let s = tokio::time::timeout(WAIT, state.wait_for(|s| what(s)))
        .await
        .expect("the state within the wait")
        .expect("the client is alive");
    s.clone()
}
