//! The REST side of the protocol: publish and history over HTTP, and reading error answers.

use reqwest::{RequestBuilder, StatusCode, Url};
use serde_json::value::RawValue;
use tidings_protocol::{ErrorCode, HistoryPage, PublishResponse};

use crate::connection::Shared;
use crate::error::Error;
use crate::subscription::Publish;

/// Longest message id, in bytes.
const MAX_ID_BYTES: usize = 255;

/// `base` with path segments appended (each percent-encoded as needed).
pub(crate) fn endpoint(base: &Url, segments: &[&str]) -> Url {
    let mut url = base.clone();
    url.path_segments_mut()
        .expect("the base URL is checked to be http(s) when the client is built")
        .pop_if_empty()
        .extend(segments);
    url
}

/// A message checked and encoded as the server will measure it.
pub(crate) struct Encoded {
    pub id: Option<String>,
    pub name: Option<String>,
    pub data: Option<Box<RawValue>>,
    pub headers: Option<Box<RawValue>>,
}

impl Encoded {
    /// Check a message the way the server does (`invalid_message` rules), before sending it.
    pub fn new(m: &Publish) -> Result<Encoded, Error> {
        if m.name.is_none() && m.data.is_none() {
            return Err(Error::InvalidMessage(
                "a message needs `data` or `name` (or both)",
            ));
        }
        if let Some(id) = &m.id {
            if id.is_empty() || id.len() > MAX_ID_BYTES {
                return Err(Error::InvalidMessage("`id` must be 1 to 255 bytes"));
            }
        }
        if let Some(h) = &m.headers {
            if !h.is_object() {
                return Err(Error::InvalidMessage("`headers` must be a JSON object"));
            }
        }
        let raw = |v: &Option<serde_json::Value>| {
            v.as_ref()
                .map(|v| serde_json::value::to_raw_value(v).expect("JSON values encode"))
        };
        Ok(Encoded {
            id: m.id.clone(),
            name: m.name.clone(),
            data: raw(&m.data),
            headers: raw(&m.headers),
        })
    }

    /// Size as the server counts it: id + name + data + headers, as JSON text.
    pub fn size(&self) -> usize {
        self.id.as_ref().map_or(0, String::len)
            + self.name.as_ref().map_or(0, String::len)
            + self.data.as_ref().map_or(0, |d| d.get().len())
            + self.headers.as_ref().map_or(0, |h| h.get().len())
    }

    fn body(&self) -> serde_json::Value {
        let mut body = serde_json::Map::new();
        let raw = |r: &RawValue| serde_json::from_str(r.get()).expect("raw values are JSON");
        if let Some(id) = &self.id {
            body.insert("id".into(), id.clone().into());
        }
        if let Some(name) = &self.name {
            body.insert("name".into(), name.clone().into());
        }
        if let Some(d) = &self.data {
            body.insert("data".into(), raw(d));
        }
        if let Some(h) = &self.headers {
            body.insert("headers".into(), raw(h));
        }
        body.into()
    }
}

/// Send a request with the client's credentials; with a token source, a `token_expired` answer
/// is retried once with a fresh token. Returns the status and the body.
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
        if error.code() == Some(ErrorCode::TokenExpired) && shared.auth.renewable() && !fresh {
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
    let url = endpoint(&shared.base, &["v1", "channels", channel, "messages"]);
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
    let mut url = endpoint(&shared.base, &["v1", "channels", channel, "messages"]);
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
    use serde_json::json;

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

    #[test]
    fn messages_are_checked_and_sized_like_the_server_does() {
        assert!(matches!(
            Encoded::new(&Publish::default()),
            Err(Error::InvalidMessage(_))
        ));
        assert!(Encoded::new(&Publish::data(json!(1)).id("")).is_err());
        assert!(Encoded::new(&Publish::data(json!(1)).headers(json!([1]))).is_err());
        let m = Encoded::new(
            &Publish::data(json!({"a": [1, 2]}))
                .name("n")
                .id("id")
                .headers(json!({"h": "v"})),
        )
        .unwrap();
        assert_eq!(
            m.size(),
            2 + 1 + r#"{"a":[1,2]}"#.len() + r#"{"h":"v"}"#.len()
        );
        assert_eq!(
            m.body(),
            json!({"id": "id", "name": "n", "data": {"a": [1, 2]}, "headers": {"h": "v"}})
        );
    }
}
