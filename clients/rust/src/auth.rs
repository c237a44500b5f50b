//! Credentials: an API key, a static token, or a token source the client calls for fresh tokens
//! (on connect, after the server says the token expired, and before expiry to renew in-band).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::{BoxError, Error};

/// Renew at most this long before expiry (long-lived tokens).
const MAX_RENEW_MARGIN: Duration = Duration::from_secs(60);

/// A signed token and when it expires.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The token (a JWT), sent as `Authorization: Bearer` or in the `auth` frame.
    pub token: String,
    /// When it expires; `None` when unknown (the client then never renews it in-band).
    pub expires_at: Option<SystemTime>,
}

impl Token {
    /// A token whose expiry is read from its JWT `exp` claim (not verified: the server does).
    pub fn new(token: impl Into<String>) -> Token {
        let token = token.into();
        let expires_at = jwt_expiry(&token);
        Token { token, expires_at }
    }

    /// A token with a known expiry, such as `expires_at` from `POST /v1/tokens`.
    pub fn with_expiry(token: impl Into<String>, expires_at: SystemTime) -> Token {
        Token {
            token: token.into(),
            expires_at: Some(expires_at),
        }
    }

    /// A token with its expiry in milliseconds since the Unix epoch, as the server answers it.
    pub fn with_expiry_ms(token: impl Into<String>, expires_at_ms: u64) -> Token {
        Self::with_expiry(token, UNIX_EPOCH + Duration::from_millis(expires_at_ms))
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The future a token source returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<Token, BoxError>> + Send>>;

/// What the client presents to the server.
#[derive(Clone, Default)]
pub(crate) enum Credentials {
    /// Nothing: only public namespaces.
    #[default]
    Anonymous,
    /// `KEY_ID:SECRET`.
    ApiKey(String),
    /// A token used as is, never renewed.
    Token(Token),
    /// A callback returning fresh tokens.
    Source(Arc<dyn Fn() -> TokenFuture + Send + Sync>),
}

/// The credentials plus the token last fetched from a source.
pub(crate) struct Auth {
    credentials: Credentials,
    current: tokio::sync::Mutex<Option<Fetched>>,
}

#[derive(Clone)]
struct Fetched {
    token: Token,
    at: SystemTime,
}

impl Fetched {
    /// When to renew: a quarter of the lifetime before expiry, at most a minute before.
    fn renew_at(&self) -> Option<SystemTime> {
        let expires = self.token.expires_at?;
        let lifetime = expires.duration_since(self.at).unwrap_or(Duration::ZERO);
        Some(expires - (lifetime / 4).min(MAX_RENEW_MARGIN))
    }
}

impl Auth {
    pub fn new(credentials: Credentials) -> Auth {
        Auth {
            credentials,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether expired tokens can be replaced (a token source was given).
    pub fn renewable(&self) -> bool {
        matches!(self.credentials, Credentials::Source(_))
    }

    /// The credential to present now. With a token source: the token fetched last while it is
    /// not due for renewal, else a fresh one; `fresh` forces a new fetch (after `token_expired`).
    pub async fn credential(&self, fresh: bool) -> Result<Option<String>, Error> {
        match &self.credentials {
            Credentials::Anonymous => Ok(None),
            Credentials::ApiKey(key) => Ok(Some(key.clone())),
            Credentials::Token(t) => Ok(Some(t.token.clone())),
            Credentials::Source(source) => {
                let mut current = self.current.lock().await;
                if let Some(f) = current.as_ref() {
                    let due = f.renew_at().is_some_and(|at| SystemTime::now() >= at);
                    if !fresh && !due {
                        return Ok(Some(f.token.token.clone()));
                    }
                }
                let token = source().await.map_err(Error::TokenSource)?;
                let text = token.token.clone();
                *current = Some(Fetched {
                    token,
                    at: SystemTime::now(),
                });
                Ok(Some(text))
            }
        }
    }

    /// How long until the current token should be renewed in-band; `None` when it never needs
    /// to be (API key, static token, unknown expiry).
    pub async fn renew_in(&self) -> Option<Duration> {
        if !self.renewable() {
            return None;
        }
        let at = self.current.lock().await.as_ref()?.renew_at()?;
        Some(
            at.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO),
        )
    }
}

/// The `exp` claim of a JWT, without verifying anything.
fn jwt_expiry(token: &str) -> Option<SystemTime> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64url_decode(payload)?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let exp = claims.get("exp")?.as_u64()?;
    Some(UNIX_EPOCH + Duration::from_secs(exp))
}

/// Decode unpadded (or padded) base64url.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in text.bytes().take_while(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' | b'+' => 62,
            b'_' | b'/' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_decodes() {
        assert_eq!(base64url_decode("aGVsbG8").unwrap(), b"hello");
        assert_eq!(base64url_decode("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(base64url_decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(base64url_decode("a b").is_none());
    }

    #[test]
    fn jwt_expiry_is_read_from_the_payload() {
        // {"alg":"HS256"} . {"sub":"d","exp":2000000000} . sig
        let token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkIiwiZXhwIjoyMDAwMDAwMDAwfQ.c2ln";
        assert_eq!(
            Token::new(token).expires_at,
            Some(UNIX_EPOCH + Duration::from_secs(2_000_000_000))
        );
        assert_eq!(Token::new("not-a-jwt").expires_at, None);
    }

    #[test]
    fn renewal_comes_a_quarter_of_the_lifetime_early_at_most_a_minute() {
        let at = UNIX_EPOCH + Duration::from_secs(1000);
        let f = |ttl| Fetched {
            token: Token::with_expiry("t", at + Duration::from_secs(ttl)),
            at,
        };
        assert_eq!(f(4).renew_at(), Some(at + Duration::from_secs(3)));
        assert_eq!(f(3600).renew_at(), Some(at + Duration::from_secs(3540)));
    }

    #[test]
    fn tokens_do_not_print() {
        let t = Token::with_expiry_ms("secret-token", 1);
        assert!(!format!("{t:?}").contains("secret"));
    }

    #[tokio::test]
    async fn a_source_is_called_again_when_due_or_forced() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let calls = Arc::new(AtomicU64::new(0));
        let c = calls.clone();
        let auth = Auth::new(Credentials::Source(Arc::new(move || {
            let n = c.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                Ok(Token::with_expiry(
                    format!("t{n}"),
                    SystemTime::now() + Duration::from_secs(3600),
                ))
            })
        })));
        assert_eq!(auth.credential(false).await.unwrap().unwrap(), "t0");
        assert_eq!(auth.credential(false).await.unwrap().unwrap(), "t0");
        assert_eq!(auth.credential(true).await.unwrap().unwrap(), "t1");
        let renew = auth.renew_in().await.unwrap();
        assert!(renew > Duration::from_secs(3400) && renew <= Duration::from_secs(3540));
    }
}
