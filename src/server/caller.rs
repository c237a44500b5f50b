//! The edge of every request: who is calling, decided once before a handler runs.
//!
//! [`Caller`] reads the credential (`Authorization: Bearer`, else the `access_token` query
//! parameter), authenticates it, and counts a refusal in `tidings_errors_total{code}`; every
//! route that serves channels takes it. [`AllowedOrigin`], [`Caller::admit`], [`Signer`] and
//! [`Revoker`] are the other rules some routes add at the same edge, each counting its
//! refusals the same way.

use std::fmt;
use std::net::Ipv6Addr;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use tidings_protocol::ErrorCode;

use super::state::AppState;
use crate::auth::{bearer, AuthError};
use crate::error::ApiError;
use crate::grant::{ApiKey, Principal};
use crate::limits::Permit;
use crate::token::TokenError;

/// The authenticated (or anonymous) caller of a request. Wrong credentials are refused, never
/// treated as anonymous.
pub(super) struct Caller(pub(super) Principal);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Query(AccessToken(token)) = Query::try_from_uri(&parts.uri).map_err(|e| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("cannot read the query string: {e}"),
            )
        })?;
        principal(state, &parts.headers, token.as_deref())
            .map(Caller)
            .map_err(|e| refused(state, e))
    }
}

impl Caller {
    /// Admit one connection (WebSocket, SSE stream, long-poll request) of this caller within
    /// the connection limits; the permit holds its slot until dropped.
    pub(super) fn admit(&self, state: &AppState) -> Result<Permit, ApiError> {
        state
            .admission
            .admit(&self.0.subject)
            .map_err(|e| refused(state, e))
    }
}

/// A request whose `Origin`, if it has one, is allowed: Tidings' own origin (the page was served
/// by the host the request is sent to), or one in `cors.allowed_origins`. WebSocket upgrades take
/// it: CORS does not cover them, and a browser would otherwise lend its ambient credentials to
/// any page. Requests without `Origin` (servers, native apps) pass.
pub(super) struct AllowedOrigin;

impl FromRequestParts<AppState> for AllowedOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(origin) = parts.headers.get(header::ORIGIN) else {
            return Ok(AllowedOrigin);
        };
        let listed = state
            .config
            .cors
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.as_bytes() == origin.as_bytes());
        if listed || is_own_origin(origin, parts) {
            return Ok(AllowedOrigin);
        }
        Err(refused(
            state,
            ApiError::new(
                ErrorCode::OriginNotAllowed,
                format!(
                    "origin {:?} is not allowed; add it to cors.allowed_origins",
                    origin.to_str().unwrap_or("?")
                ),
            ),
        ))
    }
}

/// Whether `origin` is the origin the request was sent to, as a browser decides it for a page
/// and the server it loaded from: the same scheme, host and port.
///
/// The host and port are the request's authority (the `Host` header, or the request target's
/// authority in HTTP/2 and absolute-form requests). The scheme is `http`, the only one Tidings
/// listens on, unless a proxy in front reports the client's in `X-Forwarded-Proto`. The scheme
/// is compared, not ignored: where a proxy terminates TLS, a plain-http page of the same host
/// name (one a network attacker injected, on a site without HSTS) is another origin to the
/// browser, which would not let it read REST or SSE answers without CORS, so it gets no
/// WebSocket either. Trusting `X-Forwarded-Proto` is safe here because a page cannot set it: the
/// browser's WebSocket API sends no headers of the page's choosing, and a client that is not a
/// browser can send any `Origin` anyway.
fn is_own_origin(origin: &HeaderValue, parts: &Parts) -> bool {
    let authority = match parts.uri.authority() {
        Some(authority) => Some(authority.as_str()),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()),
    };
    let scheme = match parts.headers.get("x-forwarded-proto") {
        // A chain of proxies lists the client's scheme first.
        Some(proto) => proto
            .to_str()
            .ok()
            .and_then(|p| Scheme::parse(p.split(',').next().unwrap_or_default().trim())),
        None => Some(Scheme::Http),
    };
    match (origin.to_str(), scheme, authority) {
        (Ok(origin), Some(scheme), Some(authority)) => same_origin(origin, scheme, authority),
        _ => false,
    }
}

/// Whether the serialized origin `origin` (`scheme://host[:port]`) names `scheme` and the request
/// authority `authority` (`host[:port]`). Host names compare ignoring ASCII case; a missing port
/// is its scheme's default. `null` and anything malformed are not the same origin.
fn same_origin(origin: &str, scheme: Scheme, authority: &str) -> bool {
    let Some((origin_scheme, origin_authority)) = origin.split_once("://") else {
        return false;
    };
    let (Some(origin_scheme), Some(theirs), Some(ours)) = (
        Scheme::parse(origin_scheme),
        Authority::parse(origin_authority),
        Authority::parse(authority),
    ) else {
        return false;
    };
    origin_scheme == scheme
        && theirs.host == ours.host
        && theirs.port.unwrap_or(scheme.default_port())
            == ours.port.unwrap_or(scheme.default_port())
}

/// The scheme of an origin the check can call Tidings' own; any other never is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn parse(s: &str) -> Option<Scheme> {
        if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// `host[:port]` of an origin or a request, read without copying.
struct Authority<'a> {
    host: Host<'a>,
    port: Option<u16>,
}

/// A host as the origin check compares it: a name (or IPv4 address) ignoring ASCII case, or an
/// IPv6 address, written in brackets.
#[derive(Debug)]
enum Host<'a> {
    Name(&'a str),
    V6(Ipv6Addr),
}

impl PartialEq for Host<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Host::Name(a), Host::Name(b)) => a.eq_ignore_ascii_case(b),
            (Host::V6(a), Host::V6(b)) => a == b,
            _ => false,
        }
    }
}

impl<'a> Authority<'a> {
    /// `None` for anything but a host name, IPv4 address or bracketed IPv6 address with an
    /// optional decimal port: user info, paths, empty parts and stray characters are refused.
    fn parse(s: &'a str) -> Option<Authority<'a>> {
        let (host, port) = match s.strip_prefix('[') {
            Some(bracketed) => {
                let (address, rest) = bracketed.split_once(']')?;
                let port = match rest {
                    "" => None,
                    _ => Some(rest.strip_prefix(':')?),
                };
                (Host::V6(address.parse().ok()?), port)
            }
            None => {
                let (name, port) = match s.split_once(':') {
                    Some((name, port)) => (name, Some(port)),
                    None => (s, None),
                };
                let name_byte =
                    |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_');
                if name.is_empty() || !name.bytes().all(name_byte) {
                    return None;
                }
                (Host::Name(name), port)
            }
        };
        let port = match port {
            None => None,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => {
                Some(p.parse().ok()?)
            }
            Some(_) => return None,
        };
        Some(Authority { host, port })
    }
}

/// The API key of a `POST /v1/tokens` request, which signs the token: only an API key in
/// `Authorization: Bearer KEY_ID:SECRET` may, never a token or the query string.
pub(super) struct Signer(pub(super) ApiKey);

impl FromRequestParts<AppState> for Signer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        api_key(
            state,
            &parts.headers,
            "issuing tokens needs an API key: `Authorization: Bearer KEY_ID:SECRET`",
        )
        .map(Signer)
        .map_err(|e| refused(state, e))
    }
}

/// The API key of a request that manages token revocations (`/v1/tokens/revoke`,
/// `/v1/tokens/revocations`): like [`Signer`], only an API key in `Authorization: Bearer
/// KEY_ID:SECRET`, never a token.
pub(super) struct Revoker(pub(super) ApiKey);

impl FromRequestParts<AppState> for Revoker {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        api_key(
            state,
            &parts.headers,
            "revoking tokens needs an API key: `Authorization: Bearer KEY_ID:SECRET`",
        )
        .map(Revoker)
        .map_err(|e| refused(state, e))
    }
}

/// Count a refusal at the edge, once, by its code.
fn refused(state: &AppState, e: ApiError) -> ApiError {
    state.metrics.error(e.code);
    e
}

/// The caller of a request: from `Authorization: Bearer`, else the `access_token` query
/// parameter, else anonymous. Wrong credentials are an error, never anonymous.
fn principal(
    state: &AppState,
    headers: &HeaderMap,
    access_token: Option<&str>,
) -> Result<Principal, ApiError> {
    let credential = match headers.get(header::AUTHORIZATION) {
        Some(value) => Some(value.to_str().ok().and_then(bearer).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "the Authorization header must be `Bearer KEY_ID:SECRET`",
            )
        })?),
        None => access_token,
    };
    let principal = state.auth.authenticate(credential).map_err(auth_error)?;
    if credential.is_none() && !principal.has_grants() {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "credentials required: send `Authorization: Bearer KEY_ID:SECRET` (or `?access_token=` on WebSocket)",
        ));
    }
    Ok(principal)
}

/// The API key in `Authorization: Bearer KEY_ID:SECRET`, for routes that tokens may not use;
/// `missing` says what to send when there is none.
pub(super) fn api_key(
    state: &AppState,
    headers: &HeaderMap,
    missing: &str,
) -> Result<ApiKey, ApiError> {
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer);
    // A revoked token is told so, as on every other route, before being told it is no key.
    if let Some(token) = credential.filter(|c| !c.contains(':')) {
        if let Err(AuthError::Token(TokenError::Revoked)) = state.auth.authenticate(Some(token)) {
            return Err(ApiError::token_revoked());
        }
    }
    let credential = credential
        .filter(|c| c.contains(':'))
        .ok_or_else(|| ApiError::new(ErrorCode::Unauthorized, missing))?;
    Ok(state.auth.api_key(credential).map_err(auth_error)?.clone())
}

/// The client-facing error for refused credentials.
pub(super) fn auth_error(e: AuthError) -> ApiError {
    match e {
        AuthError::Token(TokenError::Expired) => ApiError::new(
            ErrorCode::TokenExpired,
            "the token has expired: fetch a new one and retry with it",
        ),
        AuthError::Token(TokenError::Revoked) => ApiError::token_revoked(),
        AuthError::Token(t) => ApiError::new(ErrorCode::Unauthorized, t.to_string()),
        other => ApiError::new(
            ErrorCode::Unauthorized,
            format!("{other}; check the key id and secret the server was started with"),
        ),
    }
}

/// The `access_token` query parameter (the first, if repeated). The other parameters are the
/// handler's to read, so they are skipped here without being copied.
struct AccessToken(Option<String>);

impl<'de> Deserialize<'de> for AccessToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(Pairs)
    }
}

/// Walks the query pairs for [`AccessToken`].
struct Pairs;

impl<'de> Visitor<'de> for Pairs {
    type Value = AccessToken;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("query parameters")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut pairs: A) -> Result<AccessToken, A::Error> {
        let mut token = None;
        while let Some(IsAccessToken(is)) = pairs.next_key()? {
            if is && token.is_none() {
                token = Some(pairs.next_value::<String>()?);
            } else {
                pairs.next_value::<IgnoredAny>()?;
            }
        }
        Ok(AccessToken(token))
    }
}

/// Whether a query parameter's name is `access_token`, read without copying the name.
struct IsAccessToken(bool);

impl<'de> Deserialize<'de> for IsAccessToken {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl Visitor<'_> for Name {
            type Value = IsAccessToken;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a parameter name")
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<IsAccessToken, E> {
                Ok(IsAccessToken(v == "access_token"))
            }
        }
        d.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(query: &str) -> Option<String> {
        let uri: axum::http::Uri = format!("/v1/sse?{query}").parse().unwrap();
        Query::<AccessToken>::try_from_uri(&uri).unwrap().0 .0
    }

    #[test]
    fn the_access_token_is_read_among_other_parameters() {
        assert_eq!(
            token("channel=a&access_token=k%3As&from=x"),
            Some("k:s".into())
        );
        assert_eq!(
            token("access_token=one&access_token=two"),
            Some("one".into())
        );
        assert_eq!(token("channel=a&channel=b"), None);
        assert_eq!(token(""), None);
        let uri: axum::http::Uri = "/v1/sse".parse().unwrap();
        assert_eq!(Query::<AccessToken>::try_from_uri(&uri).unwrap().0 .0, None);
    }

    #[test]
    fn an_origin_is_our_own_when_scheme_host_and_port_match() {
        use Scheme::{Http, Https};
        let same = |origin, scheme, authority| same_origin(origin, scheme, authority);
        assert!(same("http://127.0.0.1:8080", Http, "127.0.0.1:8080"));
        assert!(same("http://Example.COM:8080", Http, "example.com:8080"));
        assert!(same("HTTP://example.com", Http, "EXAMPLE.com"));
        // A missing port is the scheme's default, on either side.
        assert!(same("http://example.com", Http, "example.com:80"));
        assert!(same("http://example.com:80", Http, "example.com"));
        assert!(same("https://example.com", Https, "example.com"));
        assert!(same("https://example.com", Https, "example.com:443"));
        assert!(!same("https://example.com", Https, "example.com:80"));
        assert!(!same("http://example.com", Http, "example.com:443"));
        // IPv6 literals in brackets, compared as addresses.
        assert!(same("http://[::1]:8080", Http, "[::1]:8080"));
        assert!(same("http://[::1]", Http, "[0:0::1]"));
        assert!(same("http://[FE80::1]:8080", Http, "[fe80::1]:8080"));
        assert!(!same("http://[::1]:8080", Http, "[::2]:8080"));
        assert!(!same("http://[::1]:8080", Http, "127.0.0.1:8080"));

        // Another port, host or scheme is another origin.
        assert!(!same("http://127.0.0.1:8081", Http, "127.0.0.1:8080"));
        assert!(!same("http://localhost:8080", Http, "127.0.0.1:8080"));
        assert!(!same("http://example.com.evil.org", Http, "example.com"));
        assert!(!same("https://example.com", Http, "example.com"));
        assert!(!same("http://example.com", Https, "example.com"));
        assert!(!same("https://example.com:8080", Http, "example.com:8080"));
        assert!(!same("ws://example.com", Http, "example.com"));

        // `null` and malformed origins or authorities are nobody's.
        for bad in [
            "null",
            "",
            "example.com",
            "http://",
            "http://example.com/",
            "http://example.com:8080/path",
            "http://user@example.com",
            "http://example.com:",
            "http://example.com:+80",
            "http://example.com:65536",
            "http://example.com:80:80",
            "http://::1",
            "http://[::1",
            "http://[::1]x",
            "http://[example.com]",
            "http://exa mple.com",
            "http://example.com\u{0}",
        ] {
            assert!(!same(bad, Http, "example.com"), "{bad:?}");
        }
        for bad in [
            "",
            "example.com:",
            "user@example.com",
            "example.com/x",
            ":80",
        ] {
            assert!(!same("http://example.com", Http, bad), "{bad:?}");
        }
    }

    #[test]
    fn the_request_says_its_scheme_and_authority() {
        let own = |uri: &str, headers: &[(&str, &str)]| {
            let mut req = axum::http::Request::get(uri);
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            let (parts, ()) = req.body(()).unwrap().into_parts();
            is_own_origin(&parts.headers[header::ORIGIN], &parts)
        };
        let https = ("origin", "https://example.com");
        let host = ("host", "example.com");
        assert!(!own("/v1/connect", &[https, host]));
        assert!(own(
            "/v1/connect",
            &[https, host, ("x-forwarded-proto", "https")]
        ));
        assert!(own(
            "/v1/connect",
            &[https, host, ("x-forwarded-proto", "HTTPS")]
        ));
        // Proxies in a chain append: the first is the client's.
        assert!(own(
            "/v1/connect",
            &[https, host, ("x-forwarded-proto", "https, http")]
        ));
        assert!(!own(
            "/v1/connect",
            &[https, host, ("x-forwarded-proto", "http, https")]
        ));
        let http = ("origin", "http://example.com");
        assert!(own("/v1/connect", &[http, host]));
        assert!(own(
            "/v1/connect",
            &[http, host, ("x-forwarded-proto", "http")]
        ));
        assert!(!own(
            "/v1/connect",
            &[http, host, ("x-forwarded-proto", "https")]
        ));
        assert!(!own(
            "/v1/connect",
            &[http, host, ("x-forwarded-proto", "wss")]
        ));
        assert!(!own(
            "/v1/connect",
            &[http, host, ("x-forwarded-proto", "")]
        ));
        assert!(!own("/v1/connect", &[http]), "no authority, no own origin");
        // An absolute-form target (and HTTP/2's `:authority`) names the authority over `Host`.
        let other = ("host", "other.example");
        assert!(own("http://example.com/v1/connect", &[http, other]));
        assert!(!own("/v1/connect", &[http, other]));
    }
}
