//! How many messages per second one client receives: a stand-in WebSocket server on loopback
//! sends `message` frames as fast as it can, the client delivers them through a subscription.
//! This measures the client alone (parsing, duplicate check, delivery), not the server. Both
//! run on one thread (a current-thread runtime), so the figure is the client's processing cost
//! plus the stand-in's; on a multi-thread runtime, cross-thread wake-ups cost about half of it.
//!
//! ```sh
//! cargo run --release -p tidings-client --example receive_rate -- 2000000
//! ```

use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use tidings_client::{Client, Event, Start};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let total: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(1_000_000);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
        let hello = r#"{"type":"connected","connection_id":"c","protocol":1,"max_message_bytes":65536,"heartbeat_ms":15000}"#;
        ws.send(Message::Text(hello.into())).await.unwrap();
        let _attach = ws.next().await;
        let attached =
            r#"{"type":"attached","channel":"bench","epoch":"e","serial":0,"resumed":false}"#;
        ws.send(Message::Text(attached.into())).await.unwrap();
        for serial in 1..=total {
            let frame = format!(
                r#"{{"type":"message","channel":"bench","serial":{serial},"id":null,"name":"tick","data":{{"sku":"A1","qty":{serial}}},"headers":null,"timestamp":1795815158849}}"#
            );
            ws.feed(Message::Text(frame.into())).await.unwrap();
            if serial % 256 == 0 {
                ws.flush().await.unwrap();
            }
        }
        ws.flush().await.unwrap();
        // Keep the connection open until the client is done.
        while ws.next().await.is_some() {}
    });
    let client = Client::builder(format!("http://{addr}")).build().unwrap();
    let mut sub = client.attach("bench", Start::Now).await.unwrap();
    let start = Instant::now();
    let mut received = 0u64;
    while received < total {
        match sub.next().await {
            Some(Ok(Event::Message(_))) => received += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    let took = start.elapsed();
    println!(
        "{received} messages in {took:.2?}: {:.0} msg/s",
        received as f64 / took.as_secs_f64()
    );
    client.close().await;
}
