//! The REST side of the protocol: publish and history over HTTP, and reading error answers.

use reqwest::{RequestBuilder, StatusCode, Url};
use tidings_protocol::{ErrorCode, HistoryPage, PublishResponse};

use crate::error::Error;
use crate::publish::Encoded;
use crate::settings::Shared;

/// `base` with path segments appended (each percent-encoded as needed).
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("the base URL is checked to be http(s) when the client is built")
        .pop_if_empty()
        .extend(segments);
    url
}

/// Send a request with the client's credentials; with a token source, a `token_expired` or
/// `token_revoked` answer is retried once with a fresh token. Returns the status and the body.
async fn send(
    shared: &Shared,
    url: &Url,
    build: impl Fn(Option<&str>) -> RequestBuilder,
) -> Result<(StatusCode, bytes::Bytes), Error> {
    let mut fresh = false;
    loop {
        let credential = shared.auth.credential(fresh).await?;
        let response = build(credential.as_deref())
            .timeout(shared.settings.request_timeout)
            .send()
            .await
            .map_err(|source| Error::Http {
                url: url.to_string(),
                source,
            })?;
        let status = response.status();
        let body = response.bytes().await.map_err(|source| Error::Http {
            url: url.to_string(),
            source,
        })?;
        if status.is_success() {
            return Ok((status, body));
        }
        let error = error_answer(status, &body);
        let renew = matches!(
            error.code(),
            Some(ErrorCode::TokenExpired | ErrorCode::TokenRevoked)
        );
        if renew && shared.auth.renewable() && !fresh {
            fresh = true;
            continue;
        }
        return Err(error);
    }
}

/// The error of a non-success answer: the server's own, or a description of what answered.
pub(crate) fn error_answer(status: StatusCode, body: &[u8]) -> Error {
    Error::from_rest(body).unwrap_or_else(|| {
        Error::Protocol(format!(
            "HTTP {status} without a Tidings error body: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })
}

/// `POST /v1/channels/{channel}/messages` with one message; its serial once it is durable.
pub(crate) async fn publish(shared: &Shared, channel: &str, m: &Encoded) -> Result<u64, Error> {
    let url = endpoint(shared.base(), &["v1", "channels", channel, "messages"]);
    let body = m.body();
    let (_, answer) = send(shared, &url, |credential| {
        with_credential(shared.http.post(url.clone()).json(&body), credential)
    })
    .await?;
    let answer: PublishResponse = serde_json::from_slice(&answer)
        .map_err(|e| Error::Protocol(format!("cannot read the publish answer: {e}")))?;
    answer
        .serials
        .first()
        .copied()
        .ok_or_else(|| Error::Protocol("the publish answer has no serial".into()))
}

/// `GET /v1/channels/{channel}/messages?after=..&limit=..`.
pub(crate) async fn history(
    shared: &Shared,
    channel: &str,
    after: u64,
    limit: usize,
) -> Result<HistoryPage, Error> {
    let mut url = endpoint(shared.base(), &["v1", "channels", channel, "messages"]);
    url.query_pairs_mut()
        .append_pair("after", &after.to_string())
        .append_pair("limit", &limit.to_string());
    let (_, answer) = send(shared, &url, |credential| {
        with_credential(shared.http.get(url.clone()), credential)
    })
    .await?;
    serde_json::from_slice(&answer)
        .map_err(|e| Error::Protocol(format!("cannot read the history answer: {e}")))
}

/// Add `Authorization: Bearer` when there is a credential.
pub(crate) fn with_credential(request: RequestBuilder, credential: Option<&str>) -> RequestBuilder {
    match credential {
        Some(c) => request.bearer_auth(c),
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_the_base_path_and_encode_segments() {
        let base = Url::parse("http://h:1/").unwrap();
        assert_eq!(
            endpoint(&base, &["v1", "channels", "a:b+c", "messages"]).as_str(),
            "http://h:1/v1/channels/a:b+c/messages"
        );
        let base = Url::parse("http://h/tidings/").unwrap();
        assert_eq!(
            endpoint(&base, &["v1", "sse"]).as_str(),
            "http://h/tidings/v1/sse"
        );
    }
}
