//! A minimal EventSource for tests: reads Server-Sent Events from a streaming response.

use serde_json::Value;

use crate::{KEY, WAIT};

/// One Server-Sent Event.
#[derive(Debug, Clone, Default)]
pub struct SseEvent {
    /// The `event:` field (`message` when the server named none).
    pub event: String,
    /// The `id:` field, the position a resume sends back as `Last-Event-ID`.
    pub id: Option<String>,
    /// The `data:` lines, joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// The data parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap()
    }
}

/// A minimal EventSource: reads events from a streaming response.
pub struct SseClient {
    response: reqwest::Response,
    buf: String,
}

impl SseClient {
    /// Open `url` with the test key, resuming after `last_event_id` when given.
    pub async fn open(url: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = reqwest::Client::new().get(url).bearer_auth(KEY);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        Self::from_request(req, url).await
    }

    /// Open without an Authorization header (credentials in the URL, as browsers do).
    pub async fn open_anonymous(url: &str) -> SseClient {
        Self::from_request(reqwest::Client::new().get(url), url).await
    }

    async fn from_request(req: reqwest::RequestBuilder, url: &str) -> SseClient {
        let response = req.send().await.unwrap();
        assert_eq!(response.status(), 200, "{url}");
        assert_eq!(
            response.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        SseClient {
            response,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped); None when the stream ends.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                match event(&block) {
                    Some(ev) => return Some(ev),
                    None => continue, // a comment (keep-alive)
                }
            }
            let chunk = tokio::time::timeout(WAIT, self.response.chunk())
                .await
                .expect("an event within the wait");
            match chunk {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// The next `n` message events.
    pub async fn messages(&mut self, n: usize) -> Vec<SseEvent> {
        let mut out = Vec::new();
        while out.len() < n {
            let ev = self.next().await.expect("the stream is open");
            assert_eq!(ev.event, "message", "{ev:?}");
            out.push(ev);
        }
        out
    }
}

/// The event one block (the lines before a blank line) holds; None for a comment.
fn event(block: &str) -> Option<SseEvent> {
    let mut ev = SseEvent::default();
    let mut data = Vec::new();
    for line in block.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            ev.event = v.trim().to_owned();
        } else if let Some(v) = line.strip_prefix("id:") {
            ev.id = Some(v.trim().to_owned());
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v).to_owned());
        }
    }
    if data.is_empty() && ev.event.is_empty() {
        return None;
    }
    ev.data = data.join("\n");
    if ev.event.is_empty() {
        ev.event = "message".into();
    }
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_become_events_and_comments_none() {
        let ev = event("id: 7\ndata: {\"a\":\ndata:1}\n\n").unwrap();
        assert_eq!(
            (ev.event.as_str(), ev.id.as_deref(), ev.data.as_str()),
            ("message", Some("7"), "{\"a\":\n1}")
        );
        assert_eq!(ev.json()["a"], 1);
        let named = event("event: continuity_lost\ndata: {}\n\n").unwrap();
        assert_eq!(named.event, "continuity_lost");
        assert!(event(": keep-alive\n\n").is_none());
    }
}
