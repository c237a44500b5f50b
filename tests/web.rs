//! Static pages beside the API (`web_root`): the inventory demo's page is served this way.

use std::process::Command;

use serde_json::Value;
use tidings_testkit::server::TestServer;
use tidings_testkit::KEY;

#[tokio::test]
async fn a_web_root_serves_pages_while_the_api_keeps_its_routes() {
    let site = tempfile::tempdir().unwrap();
    std::fs::write(site.path().join("index.html"), "<h1>inventory</h1>").unwrap();
    std::fs::create_dir(site.path().join("js")).unwrap();
    std::fs::write(site.path().join("js/app.js"), "export const x = 1;").unwrap();
    let dir = site.path().to_path_buf();
    let server = TestServer::start_with(|c| c.web_root = Some(dir)).await;
    let http = reqwest::Client::new();
    let base = server.http();

    let page = http.get(format!("{base}/")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert_eq!(page.headers()["content-type"], "text/html");
    assert_eq!(page.text().await.unwrap(), "<h1>inventory</h1>");

    let script = http.get(format!("{base}/js/app.js")).send().await.unwrap();
    assert_eq!(script.status(), 200);
    let kind = script.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(kind.contains("javascript"), "{kind}");

    // The API is untouched: health, publish and history.
    assert_eq!(
        http.get(format!("{base}/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let published = http
        .post(format!("{base}/v1/channels/web:1/messages"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"data": {"a": 1}}))
        .send()
        .await
        .unwrap();
    assert!(published.status().is_success(), "{}", published.status());

    // Unknown paths, inside the API or not, answer the API's JSON 404.
    for path in ["/v1/no-such-route", "/missing.html", "/../Cargo.toml"] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_request", "{path}: {body}");
    }
}

#[tokio::test]
async fn without_a_web_root_no_files_are_served() {
    let server = TestServer::start().await;
    let r = reqwest::get(format!("{}/", server.http())).await.unwrap();
    assert_eq!(r.status(), 404);
}

#[test]
fn a_missing_web_root_is_refused_at_start_up() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidings"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--web-root",
            "/no/such/dir",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("web_root") && err.contains("/no/such/dir"),
        "{err}"
    );
}
