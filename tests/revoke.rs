//! Revoking tokens (`POST /v1/tokens/revoke`): open connections close within a second with
//! `token_revoked`, the old token is refused everywhere, a new one works, and revocations
//! survive a restart and a `kill -9`.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tidings_testkit::process::Process;
use tidings_testkit::rest::{metric, publish};
use tidings_testkit::server::TestServer;
use tidings_testkit::sse::SseClient;
use tidings_testkit::ws::Client;
use tidings_testkit::{tidings_exe, KEY, WAIT};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Open connections must be closed within this of the revocation's answer.
const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// `POST /v1/tokens` for `subject` with every capability on `rev:*`: (token, jti).
async fn issue(base: &str, subject: &str) -> (String, String) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(KEY)
        .json(&json!({"subject": subject, "ttl": "10m",
            "caps": {"rev:*": ["subscribe", "publish", "history"]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body: Value = resp.json().await.unwrap();
    let jti = body["jti"].as_str().expect("the answer names the jti");
    assert_eq!(jti.len(), 32, "{body}");
    (body["token"].as_str().unwrap().to_owned(), jti.to_owned())
}

/// `POST /v1/tokens/revoke` with `body` and `credential`: (status, body).
async fn revoke_as(base: &str, credential: Option<&str>, body: &str) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/tokens/revoke"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(c) = credential {
        req = req.bearer_auth(c);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn revoke(base: &str, body: Value) -> Value {
    let (status, answer) = revoke_as(base, Some(KEY), &body.to_string()).await;
    assert_eq!(status, 200, "{answer}");
    answer["revocation"].clone()
}

/// Status and error code of a history request with `token`.
async fn history_as(base: &str, token: &str) -> (u16, Option<String>) {
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/channels/rev:1/messages"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().map(str::to_owned))
}

fn revoked() -> (u16, Option<String>) {
    (401, Some("token_revoked".into()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_subject_closes_its_connections_and_refuses_its_old_tokens() {
    let t = TestServer::start().await;
    let (base, http) = (t.http(), reqwest::Client::new());
    let (token, _) = issue(&base, "device-1").await;
    let (bystander, _) = issue(&base, "device-2").await;
    publish(&http, &base, "rev:1", json!({"data": 1})).await;

    // One connection of each transport with the token, and one of another subject.
    let mut ws = Client::connect(&format!("{}?access_token={token}", t.ws_url()), None).await;
    ws.attach("rev:1", json!({})).await;
    let mut other =
        Client::connect(&format!("{}?access_token={bystander}", t.ws_url()), None).await;
    other.attach("rev:1", json!({})).await;
    let mut sse =
        SseClient::open_anonymous(&format!("{base}/v1/sse?channel=rev:1&access_token={token}"))
            .await;
    assert_eq!(sse.next().await.unwrap().event, "connected");
    assert_eq!(sse.next().await.unwrap().event, "attached");
    let first: Value = http
        .get(format!("{base}/v1/poll?channel=rev:1"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let next = first["next"].as_str().unwrap().to_owned();
    // A long-poll waiting at the head, for far longer than the test.
    let waiting = tokio::spawn({
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let resp = http
                .get(format!("{base}/v1/poll?channel=rev:1&from={next}&wait=60s"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            (
                Instant::now(),
                resp.status().as_u16(),
                resp.json::<Value>().await.unwrap(),
            )
        }
    });
    // Give the poll time to reach its wait.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the poll waits for messages");

    let revocation = revoke(&base, json!({"subject": "device-1"})).await;
    let answered = Instant::now();
    assert_eq!(revocation["subject"], "device-1", "{revocation}");
    let revoked_at = revocation["revoked_at"].as_u64().unwrap();
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(revoked_at <= now_ms && now_ms - revoked_at < 10_000);
    assert_eq!(
        revocation["expires_at"].as_u64().unwrap(),
        revoked_at + (24 * 3600 + 5) * 1000,
        "kept for the longest token lifetime and the clock leeway"
    );

    // WebSocket: closed with 4002.
    let (_, code) = ws.drain_until_closed().await;
    assert_eq!(code, Some(CloseCode::Library(4002)));
    assert!(
        answered.elapsed() < CLOSE_WITHIN,
        "{:?}",
        answered.elapsed()
    );
    // SSE: an `error` event with `token_revoked`, then the end of the stream.
    let event = sse.next().await.expect("an error event");
    assert_eq!(event.event, "error");
    assert_eq!(event.json()["code"], "token_revoked", "{}", event.data);
    assert!(sse.next().await.is_none(), "the stream ends");
    assert!(
        answered.elapsed() < CLOSE_WITHIN,
        "{:?}",
        answered.elapsed()
    );
    // Long-poll: answered 401 token_revoked at once.
    let (at, status, body) = tokio::time::timeout(WAIT, waiting).await.unwrap().unwrap();
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("token_revoked"))
    );
    assert!(at.duration_since(answered) < CLOSE_WITHIN);

    // The other subject's connection goes on.
    publish(&http, &base, "rev:1", json!({"data": 2})).await;
    assert_eq!(other.messages(1).await[0]["serial"], 2);

    // The old token is refused everywhere: REST, every transport, issuing tokens.
    assert_eq!(history_as(&base, &token).await, revoked());
    let resp = http
        .post(format!("{base}/v1/channels/rev:1/messages"))
        .bearer_auth(&token)
        .json(&json!({"data": 3}))
        .send()
        .await
        .unwrap();
    expect_revoked(resp, "").await;
    for path in ["/v1/sse?channel=rev:1", "/v1/poll?channel=rev:1"] {
        let resp = http
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        expect_revoked(resp, path).await;
    }
    let refused = Client::try_connect(&format!("{}?access_token={token}", t.ws_url()), None).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401);
            let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
            assert_eq!(body["error"]["code"], "token_revoked");
        }
        other => panic!("the upgrade must be refused: {:?}", other.map(|_| ())),
    }
    let resp = http
        .post(format!("{base}/v1/tokens"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    expect_revoked(resp, "").await;

    // A token issued after the revocation, at once, works: that is what "fetch a new token" is.
    let (fresh, _) = issue(&base, "device-1").await;
    assert_eq!(history_as(&base, &fresh).await, (200, None));
    let mut ws = Client::connect(&format!("{}?access_token={fresh}", t.ws_url()), None).await;
    ws.attach("rev:1", json!({})).await;

    // Counted: one revocation, one connection closed per transport.
    for (series, value) in [
        (r#"tidings_token_revocations_total{kind="subject"}"#, 1.0),
        (
            r#"tidings_revoked_connections_closed_total{transport="websocket"}"#,
            1.0,
        ),
        (
            r#"tidings_revoked_connections_closed_total{transport="sse"}"#,
            1.0,
        ),
        (
            r#"tidings_revoked_connections_closed_total{transport="poll"}"#,
            1.0,
        ),
        (
            r#"tidings_sessions_closed_total{reason="token_revoked"}"#,
            2.0,
        ),
    ] {
        assert_eq!(metric(&http, &base, series).await, value, "{series}");
    }
}

fn hs256(claims: Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test".into());
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(b"test-secret-1"),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_jti_refuses_that_token_alone() {
    let t = TestServer::start().await;
    let base = t.http();
    let (a, a_jti) = issue(&base, "device-1").await;
    let (b, b_jti) = issue(&base, "device-1").await;
    assert_ne!(a_jti, b_jti);
    let mut ws_a = Client::connect(&format!("{}?access_token={a}", t.ws_url()), None).await;
    ws_a.attach("rev:1", json!({})).await;
    let mut ws_b = Client::connect(&format!("{}?access_token={b}", t.ws_url()), None).await;
    ws_b.attach("rev:1", json!({})).await;

    let revocation = revoke(&base, json!({"jti": a_jti})).await;
    assert_eq!(revocation["jti"], a_jti.as_str());
    let (_, code) = ws_a.drain_until_closed().await;
    assert_eq!(code, Some(CloseCode::Library(4002)));
    assert_eq!(history_as(&base, &a).await, revoked());
    // The subject's other token is untouched, and its connection stays open.
    assert_eq!(history_as(&base, &b).await, (200, None));
    publish(&reqwest::Client::new(), &base, "rev:1", json!({"data": 1})).await;
    assert_eq!(ws_b.messages(1).await[0]["serial"], 1);
    // Renewing in-band with the revoked token is refused; the connection keeps its own.
    ws_b.send(json!({"type": "auth", "token": a, "ref": "r1"}))
        .await;
    let refused = ws_b.recv().await;
    assert_eq!(
        (
            refused["type"].as_str(),
            refused["code"].as_str(),
            refused["ref"].as_str()
        ),
        (Some("error"), Some("token_revoked"), Some("r1")),
        "{refused}"
    );
    publish(&reqwest::Client::new(), &base, "rev:1", json!({"data": 2})).await;
    assert_eq!(ws_b.messages(1).await[0]["serial"], 2);

    // Tokens signed elsewhere are revoked by their own jti, and by subject whatever their
    // `iat`: one without `iat` counts as issued before the revocation.
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let caps = json!({"rev:*": ["history"]});
    let outside = hs256(json!({"sub": "app-7", "exp": exp, "jti": "outside-1", "caps": caps}));
    let no_iat = hs256(json!({"sub": "app-8", "exp": exp, "caps": caps}));
    let later = hs256(json!({"sub": "app-8", "exp": exp, "iat": exp, "caps": caps}));
    assert_eq!(history_as(&base, &outside).await, (200, None));
    revoke(&base, json!({"jti": "outside-1"})).await;
    assert_eq!(history_as(&base, &outside).await, revoked());
    assert_eq!(history_as(&base, &no_iat).await, (200, None));
    revoke(&base, json!({"subject": "app-8"})).await;
    assert_eq!(history_as(&base, &no_iat).await, revoked());
    assert_eq!(history_as(&base, &later).await, (200, None), "issued after");

    // Revoking the same jti again answers the revocation in force.
    let again = revoke(&base, json!({"jti": a_jti})).await;
    assert_eq!(again, revocation);

    // Operators can list what is in force, oldest first; tokens cannot.
    let listed: Value = reqwest::Client::new()
        .get(format!("{base}/v1/tokens/revocations"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let targets: Vec<String> = listed["revocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r["jti"]
                .as_str()
                .or(r["subject"].as_str())
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(targets, [a_jti.as_str(), "outside-1", "app-8"]);
    assert_eq!(listed["max"], 10_000);
    let resp = reqwest::Client::new()
        .get(format!("{base}/v1/tokens/revocations"))
        .bearer_auth(&b)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_revocations_are_refused_saying_what_to_send() {
    let t = TestServer::start_with(|c| c.auth.max_revocations = 2).await;
    let base = t.http();
    let (token, _) = issue(&base, "device-1").await;
    for (body, status, code, says) in [
        ("{}", 400, "invalid_request", r#"{"subject": "...""#),
        (
            r#"{"subject":"a","jti":"b"}"#,
            400,
            "invalid_request",
            "not both",
        ),
        (
            r#"{"subject":""}"#,
            400,
            "invalid_request",
            "1 to 255 bytes",
        ),
        (
            &format!(r#"{{"jti":"{}"}}"#, "x".repeat(256)),
            400,
            "invalid_request",
            "1 to 255 bytes",
        ),
        (
            r#"{"sub":"a"}"#,
            400,
            "malformed_frame",
            "unknown field `sub`",
        ),
        (
            r#"{"subject":7}"#,
            400,
            "malformed_frame",
            r#"{"jti": "..."}"#,
        ),
        ("subject=a", 400, "malformed_frame", r#"{"subject": "...""#),
        ("", 400, "malformed_frame", r#"{"subject": "...""#),
    ] {
        let (got, answer) = revoke_as(&base, Some(KEY), body).await;
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code)),
            "{body}: {answer}"
        );
        assert!(message.contains(says), "{body}: {message}");
    }
    // Only an API key may revoke.
    let (got, answer) = revoke_as(&base, None, r#"{"subject":"a"}"#).await;
    assert_eq!(
        (got, answer["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("needs an API key"));
    let (got, _) = revoke_as(&base, Some(&token), r#"{"subject":"a"}"#).await;
    assert_eq!(got, 401);
    let (got, _) = revoke_as(&base, Some("test:wrong"), r#"{"subject":"a"}"#).await;
    assert_eq!(got, 401);
    assert_eq!(
        history_as(&base, &token).await,
        (200, None),
        "nothing was revoked"
    );

    // The cap: two in force, a third refused saying what to do; the same again is fine.
    revoke(&base, json!({"subject": "a"})).await;
    revoke(&base, json!({"jti": "b"})).await;
    let (got, answer) = revoke_as(&base, Some(KEY), r#"{"subject":"c"}"#).await;
    assert_eq!(
        (got, answer["error"]["code"].as_str()),
        (429, Some("too_many_revocations"))
    );
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("auth.max_revocations"), "{message}");
    assert!(message.contains("the next lapses in 1day"), "{message}");
    revoke(&base, json!({"subject": "a"})).await;
}

/// Revocations answered 200 are on disk: a `kill -9` right after, or a graceful restart,
/// keeps them in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocations_survive_kill_9_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mut proc = Process::serve(tidings_exe!(), dir.path(), &[]).await;
    let (by_subject, _) = issue(&proc.http(), "device-1").await;
    let (by_jti, jti) = issue(&proc.http(), "device-2").await;
    let (kept, _) = issue(&proc.http(), "device-2").await;
    revoke(&proc.http(), json!({"subject": "device-1"})).await;
    revoke(&proc.http(), json!({"jti": jti})).await;
    proc.kill9().await;

    let mut proc = Process::serve(tidings_exe!(), dir.path(), &[]).await;
    let base = proc.http();
    assert_eq!(history_as(&base, &by_subject).await, revoked());
    assert_eq!(history_as(&base, &by_jti).await, revoked());
    assert_eq!(history_as(&base, &kept).await, (200, None));
    let (fresh, _) = issue(&base, "device-1").await;
    assert_eq!(history_as(&base, &fresh).await, (200, None));

    // A graceful stop and start keeps them too.
    let pid = proc.pid().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, proc.child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let proc = Process::serve(tidings_exe!(), dir.path(), &[]).await;
    assert_eq!(history_as(&proc.http(), &by_subject).await, revoked());
    assert_eq!(history_as(&proc.http(), &fresh).await, (200, None));
    let listed: Value = reqwest::Client::new()
        .get(format!("{}/v1/tokens/revocations", proc.http()))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["revocations"].as_array().unwrap().len(),
        2,
        "{listed}"
    );
}

/// A refusal of a revoked token: 401 with the code `token_revoked`.
async fn expect_revoked(resp: reqwest::Response, what: &str) {
    assert_eq!(resp.status(), 401, "{what}");
    assert_eq!(
        resp.json::<Value>().await.unwrap()["error"]["code"],
        "token_revoked",
        "{what}"
    );
}
