//! Signed tokens: what they allow, and the attacks they must withstand.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::{json, Value};
use tidings::config::PublicKeyConfig;
use tidings_testkit::rest::publish;
use tidings_testkit::server::TestServer;
use tidings_testkit::sse::SseClient;
use tidings_testkit::ws::Client;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

const SECRET: &str = "test-secret-1"; // the secret of KEY ("test:test-secret-1")

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("test".into());
    encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn signed(alg: Algorithm, private_pem: &str, claims: Value) -> String {
    let pem = std::fs::read(fixture(private_pem)).unwrap();
    let key = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem),
        _ => EncodingKey::from_ed_pem(&pem),
    }
    .unwrap();
    encode(&Header::new(alg), &claims, &key).unwrap()
}

fn claims(caps: Value, ttl: i64) -> Value {
    json!({"sub": "device-1", "exp": (now() as i64 + ttl), "caps": caps})
}

async fn server() -> TestServer {
    TestServer::start_with(|c| {
        for (alg, file) in [
            ("RS256", "rsa_public.pem"),
            ("ES256", "ec_public.pem"),
            ("EdDSA", "ed_public.pem"),
        ] {
            c.auth.public_keys.push(PublicKeyConfig {
                kid: None,
                algorithm: alg.into(),
                pem_file: fixture(file),
            });
        }
        c.auth.audience = None;
    })
    .await
}

/// Status and error code of a history request made with `token`.
async fn try_history(t: &TestServer, token: &str, channel: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(format!("{}/v1/channels/{channel}/messages", t.http()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signature_algorithm_verifies_and_caps_apply() {
    let t = server().await;
    let caps = json!({"store:*": ["subscribe", "history"]});
    for token in [
        hs256(claims(caps.clone(), 60)),
        signed(
            Algorithm::RS256,
            "rsa_private.pem",
            claims(caps.clone(), 60),
        ),
        signed(Algorithm::ES256, "ec_private.pem", claims(caps.clone(), 60)),
        signed(Algorithm::EdDSA, "ed_private.pem", claims(caps.clone(), 60)),
    ] {
        assert_eq!(try_history(&t, &token, "store:1").await.0, 200);
        let (status, body) = try_history(&t, &token, "other:1").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some("forbidden"))
        );
        // Publishing is not in the caps.
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/channels/store:1/messages", t.http()))
            .bearer_auth(&token)
            .json(&json!({"data": 1}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403);
        // The same token works on WebSocket, through the query parameter browsers use.
        let mut c = Client::connect(&format!("{}?access_token={token}", t.ws_url()), None).await;
        c.attach("store:9", json!({})).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_attacks_are_rejected() {
    let t = TestServer::start_with(|c| {
        c.auth.public_keys.push(PublicKeyConfig {
            kid: None,
            algorithm: "RS256".into(),
            pem_file: fixture("rsa_public.pem"),
        });
        c.auth.audience = Some("tidings".into());
        c.auth.issuer = Some("https://auth.example.com".into());
    })
    .await;
    let good = |extra: Value| {
        let mut c = json!({"sub": "d", "exp": now() + 60, "aud": "tidings", "iss": "https://auth.example.com", "caps": {"*": ["history"]}});
        c.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        c
    };
    assert_eq!(
        try_history(
            &t,
            &signed(Algorithm::RS256, "rsa_private.pem", good(json!({}))),
            "a"
        )
        .await
        .0,
        200
    );

    // alg: none, unsigned.
    let b64 = |v: Value| {
        use base64_like::encode_url;
        encode_url(v.to_string().as_bytes())
    };
    let none = format!(
        "{}.{}.",
        b64(json!({"alg": "none", "typ": "JWT"})),
        b64(good(json!({})))
    );
    // HS256 "signed" with the RSA public key as the HMAC secret (algorithm confusion).
    let public_pem = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let confused = encode(
        &Header::new(Algorithm::HS256),
        &good(json!({})),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let mut confused_kid = Header::new(Algorithm::HS256);
    confused_kid.kid = Some("test".into());
    let confused_with_kid = encode(
        &confused_kid,
        &good(json!({})),
        &EncodingKey::from_secret(&public_pem),
    )
    .unwrap();
    let expired = signed(
        Algorithm::RS256,
        "rsa_private.pem",
        good(json!({"exp": now() - 120})),
    );
    let not_yet = signed(
        Algorithm::RS256,
        "rsa_private.pem",
        good(json!({"nbf": now() + 600})),
    );
    let wrong_aud = signed(
        Algorithm::RS256,
        "rsa_private.pem",
        good(json!({"aud": "someone-else"})),
    );
    let wrong_iss = signed(
        Algorithm::RS256,
        "rsa_private.pem",
        good(json!({"iss": "https://evil.example.com"})),
    );
    let no_sub = {
        let mut c = good(json!({}));
        c.as_object_mut().unwrap().remove("sub");
        signed(Algorithm::RS256, "rsa_private.pem", c)
    };
    // Tampered payload: take a valid token and swap in wider caps.
    let valid = signed(
        Algorithm::RS256,
        "rsa_private.pem",
        good(json!({"caps": {"public:*": ["history"]}})),
    );
    let parts: Vec<&str> = valid.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(good(json!({"caps": {"*": ["history", "publish"]}}))),
        parts[2]
    );
    // Signed by a key the server does not know.
    let unknown_key = signed(Algorithm::ES256, "ec_private.pem", good(json!({})));
    // Caps with a pattern trick.
    let bad_pattern = signed(
        Algorithm::RS256,
        "rsa_private.pem",
        good(json!({"caps": {"st*re": ["history"]}})),
    );

    for (name, token, code) in [
        ("alg none", none, "unauthorized"),
        ("HS256 with the RSA public key", confused, "unauthorized"),
        (
            "HS256 with the RSA public key, kid of a key",
            confused_with_kid,
            "unauthorized",
        ),
        ("expired", expired, "token_expired"),
        ("not yet valid", not_yet, "unauthorized"),
        ("wrong audience", wrong_aud, "unauthorized"),
        ("wrong issuer", wrong_iss, "unauthorized"),
        ("no subject", no_sub, "unauthorized"),
        ("tampered payload", tampered, "unauthorized"),
        ("unknown key", unknown_key, "unauthorized"),
        ("bad caps pattern", bad_pattern, "unauthorized"),
        ("garbage", "not-a-token".into(), "unauthorized"),
    ] {
        let (status, body) = try_history(&t, &token, "a").await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (401, Some(code)),
            "{name}: {body}"
        );
        // WebSocket upgrades refuse it the same way.
        let refused =
            Client::try_connect(&format!("{}?access_token={token}", t.ws_url()), None).await;
        assert!(refused.is_err(), "{name} must not open a WebSocket");
    }
    // A token with narrower caps cannot reach beyond them.
    let (status, _) = try_history(&t, &valid, "private:1").await;
    assert_eq!(status, 403);
}

/// A tiny base64url encoder for hand-made tokens (no padding), kept local to the test.
mod base64_like {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

    pub fn encode_url(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..=chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            }
        }
        out
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_tokens_never_exceed_their_key() {
    let t = TestServer::start_with(|c| {
        c.api_keys.push(tidings::config::ApiKeyConfig {
            id: "shop".into(),
            secret: tidings::config::Secret::new("shop-secret-1"),
            capabilities: Some(std::collections::BTreeMap::from([(
                "store:*".to_string(),
                vec![
                    tidings::grant::Operation::Subscribe,
                    tidings::grant::Operation::History,
                ],
            )])),
        });
    })
    .await;
    let http = reqwest::Client::new();
    let issue = |body: Value| {
        http.post(format!("{}/v1/tokens", t.http()))
            .bearer_auth("shop:shop-secret-1")
            .json(&body)
            .send()
    };
    let resp =
        issue(json!({"subject": "alice", "ttl": "10m", "caps": {"store:42": ["subscribe"]}}))
            .await
            .unwrap();
    assert_eq!(resp.status(), 201);
    let v: Value = resp.json().await.unwrap();
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(v["expires_at"].as_u64().unwrap() > now() * 1000);
    let mut c = Client::connect(&format!("{}?access_token={token}", t.ws_url()), None).await;
    c.attach("store:42", json!({})).await;
    c.send(json!({"type": "attach", "channel": "store:43"}))
        .await;
    assert_eq!(c.recv().await["code"], "forbidden");

    for (what, body) in [
        (
            "publish the key lacks",
            json!({"caps": {"store:1": ["publish"]}}),
        ),
        ("a wider pattern", json!({"caps": {"*": ["subscribe"]}})),
        (
            "a sibling namespace",
            json!({"caps": {"storefront:*": ["subscribe"]}}),
        ),
        (
            "the bare namespace",
            json!({"caps": {"store": ["subscribe"]}}),
        ),
    ] {
        let resp = issue(body).await.unwrap();
        assert_eq!(resp.status(), 403, "{what}");
        assert_eq!(
            resp.json::<Value>().await.unwrap()["error"]["code"],
            "forbidden"
        );
    }
    let resp = issue(json!({"ttl": "30d"})).await.unwrap();
    assert_eq!(resp.status(), 400, "ttl beyond the maximum");
    // Only API keys issue tokens; a token cannot mint another.
    let resp = http
        .post(format!("{}/v1/tokens", t.http()))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    // A token signed by a key is capped by the key even if its caps claim more.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("shop".into());
    let greedy = encode(
        &header,
        &json!({"sub": "x", "exp": now() + 60, "caps": {"*": ["subscribe", "publish", "history"]}}),
        &EncodingKey::from_secret(b"shop-secret-1"),
    )
    .unwrap();
    assert_eq!(try_history(&t, &greedy, "store:1").await.0, 200);
    assert_eq!(try_history(&t, &greedy, "admin:1").await.0, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_renews_in_band_and_closes_on_expiry() {
    let t = TestServer::start().await;
    let caps = json!({"*": ["subscribe", "history"]});
    let short = hs256(claims(caps.clone(), 2));
    let mut c = Client::connect(&format!("{}?access_token={short}", t.ws_url()), None).await;
    let a = c.attach("renew", json!({})).await;
    // Renew with a longer token for the same subject.
    let long = hs256(claims(caps.clone(), 3600));
    c.send(json!({"type": "auth", "token": long, "ref": "r1"}))
        .await;
    let v = c.recv().await;
    assert_eq!(
        (v["type"].as_str(), v["ref"].as_str()),
        (Some("authorized"), Some("r1")),
        "{v}"
    );
    // Another subject cannot take over the connection.
    let other = hs256(json!({"sub": "intruder", "exp": now() + 60, "caps": caps}));
    c.send(json!({"type": "auth", "token": other})).await;
    assert_eq!(c.recv().await["code"], "unauthorized");
    // Past the first token's expiry the connection still delivers.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    publish(
        &reqwest::Client::new(),
        &t.http(),
        "renew",
        json!({"data": 1}),
    )
    .await;
    assert_eq!(
        c.messages(1).await[0]["serial"],
        a["serial"].as_u64().unwrap() + 1
    );

    // Without renewal, expiry closes the connection with 4001.
    let short = hs256(claims(json!({"*": ["subscribe"]}), 1));
    let mut c = Client::connect(&format!("{}?access_token={short}", t.ws_url()), None).await;
    c.attach("renew", json!({})).await;
    let (_, code) = c.drain_until_closed().await;
    assert_eq!(
        code,
        Some(CloseCode::from(tidings_protocol::CLOSE_TOKEN_EXPIRED))
    );

    // SSE streams end with a token_expired event.
    let short = hs256(claims(json!({"*": ["subscribe"]}), 1));
    let url = format!("{}/v1/sse?channel=renew&access_token={short}", t.http());
    let resp = reqwest::Client::new().get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    drop(resp);
    let mut sse = SseClient::open_anonymous(&url).await;
    loop {
        let ev = sse.next().await.expect("an error event before the end");
        if ev.event == "error" {
            assert_eq!(ev.json()["code"], "token_expired");
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_keys_verify_by_kid() {
    let t = TestServer::start_with(|c| c.auth.jwks_file = Some(fixture("jwks.json"))).await;
    let pem = std::fs::read(fixture("rsa_private.pem")).unwrap();
    let key = EncodingKey::from_rsa_pem(&pem).unwrap();
    let claims = claims(json!({"*": ["history"]}), 60);
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("jwks-rsa".into());
    let token = encode(&header, &claims, &key).unwrap();
    assert_eq!(try_history(&t, &token, "a").await.0, 200);
    // A kid the JWKS does not hold is refused.
    header.kid = Some("someone-else".into());
    let token = encode(&header, &claims, &key).unwrap();
    assert_eq!(try_history(&t, &token, "a").await.0, 401);
}
