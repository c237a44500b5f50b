//! A WebSocket test client that speaks the protocol as raw JSON frames, so a test sees
//! exactly what the server sends.

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;

/// A WebSocket client speaking the protocol as raw JSON frames.
pub struct Client {
    /// The socket itself, for tests that read or write below the frame helpers.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// Frames read ahead while waiting for an ack; `recv` returns them first.
    stash: std::collections::VecDeque<Value>,
}

impl Client {
    /// Connect with an API key; waits for the `connected` frame.
    pub async fn connect(url: &str, key: Option<&str>) -> Client {
        Self::try_connect(url, key)
            .await
            .expect("websocket connects")
    }

    /// Connect like [`Client::connect`], answering the handshake's error (a refused upgrade
    /// carries its HTTP status) instead of failing the test.
    pub async fn try_connect(
        url: &str,
        key: Option<&str>,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request().unwrap();
        if let Some(key) = key {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {key}").parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        let mut c = Client {
            ws,
            stash: Default::default(),
        };
        let hello = c.recv().await;
        assert_eq!(hello["type"], "connected", "{hello}");
        Ok(c)
    }

    /// Send one frame as JSON text.
    pub async fn send(&mut self, frame: Value) {
        self.ws
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
    }

    /// Send, returning the error instead of failing: for frames the server may refuse by closing
    /// the connection while they are still being written.
    pub async fn try_send(
        &mut self,
        frame: Value,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::Text(frame.to_string().into())).await
    }

    /// Send raw text, for frames that are not valid JSON on purpose.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// Next frame that is not a heartbeat.
    pub async fn recv(&mut self) -> Value {
        loop {
            let v = self.recv_any().await;
            if v["type"] != "heartbeat" {
                return v;
            }
        }
    }

    /// Next frame, heartbeats included.
    pub async fn recv_any(&mut self) -> Value {
        if let Some(v) = self.stash.pop_front() {
            return v;
        }
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a frame within the wait")
                .expect("the connection is open")
                .expect("a valid websocket message");
            match msg {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                Message::Close(c) => panic!("connection closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Read until the connection closes; returns the frames seen and the close code (None if
    /// the socket ended without a close frame).
    pub async fn drain_until_closed(&mut self) -> (Vec<Value>, Option<CloseCode>) {
        let mut frames = Vec::new();
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Err(_) => panic!("connection did not close within the wait"),
                Ok(None) | Ok(Some(Err(_))) => return (frames, None),
                Ok(Some(Ok(Message::Text(t)))) => frames.push(serde_json::from_str(&t).unwrap()),
                Ok(Some(Ok(Message::Close(c)))) => return (frames, c.map(|c| c.code)),
                Ok(Some(Ok(_))) => {}
            }
        }
    }

    /// Attach and return the `attached` frame.
    pub async fn attach(&mut self, channel: &str, extra: Value) -> Value {
        let mut frame = json!({"type": "attach", "channel": channel});
        if let Value::Object(extra) = extra {
            frame.as_object_mut().unwrap().extend(extra);
        }
        self.send(frame).await;
        let v = self.recv().await;
        assert_eq!(v["type"], "attached", "{v}");
        v
    }

    /// Receive `n` message frames (failing on any other frame).
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let v = self.recv().await;
            assert_eq!(v["type"], "message", "expected a message, got {v}");
            out.push(v);
        }
        out
    }

    /// Publish over the socket and wait for the ack. Messages that arrive first (the client
    /// may be attached to the channel it publishes on) are kept for later `recv`s.
    pub async fn publish(&mut self, channel: &str, data: Value) -> u64 {
        self.send(json!({"type": "publish", "channel": channel, "data": data, "ref": "p"}))
            .await;
        let mut ahead = Vec::new();
        let ack = loop {
            let v = self.recv().await;
            match v["type"].as_str() {
                Some("ack") => break v,
                Some("message") => ahead.push(v),
                _ => panic!("expected an ack, got {v}"),
            }
        };
        self.stash.extend(ahead);
        ack["serial"].as_u64().unwrap()
    }
}
