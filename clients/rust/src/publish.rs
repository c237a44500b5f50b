//! A message to publish: as the application writes it ([`Publish`]), and checked and encoded as
//! the server will measure it ([`Encoded`]), before it goes out over WebSocket or REST.

use serde_json::value::RawValue;

use crate::error::Error;

/// Longest message id, in bytes.
const MAX_ID_BYTES: usize = 255;

/// A message to publish. At least one of `name` and `data` is needed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Publish {
    /// Idempotency key (1–255 bytes): publishing the same id again appends nothing and answers
    /// the existing serial. With an id, the client retries a publish interrupted by a dropped
    /// connection; without one, it reports [`Error::PublishInterrupted`] instead.
    pub id: Option<String>,
    /// Event name, for the application's dispatch.
    pub name: Option<String>,
    /// Any JSON value.
    pub data: Option<serde_json::Value>,
    /// A JSON object of headers.
    pub headers: Option<serde_json::Value>,
}

impl Publish {
    /// A message with this data.
    pub fn data(data: serde_json::Value) -> Publish {
        Publish {
            data: Some(data),
            ..Publish::default()
        }
    }

    /// Set the event name.
    pub fn name(mut self, name: impl Into<String>) -> Publish {
        self.name = Some(name.into());
        self
    }

    /// Set the idempotency key.
    pub fn id(mut self, id: impl Into<String>) -> Publish {
        self.id = Some(id.into());
        self
    }

    /// Set the headers (a JSON object).
    pub fn headers(mut self, headers: serde_json::Value) -> Publish {
        self.headers = Some(headers);
        self
    }
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

    /// The REST publish body: the fields present, as JSON.
    pub fn body(&self) -> serde_json::Value {
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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
