//! The edge of every request: who is calling, decided once before a handler runs.
//!
//! [`Caller`] reads the credential (`Authorization: Bearer`, else the `access_token` query
//! parameter), authenticates it, and counts a refusal in `tidings_errors_total{code}`; every
//! route that serves channels takes it. [`AllowedOrigin`], [`Caller::admit`] and [`Signer`] are
//! the other rules some routes add at the same edge, each counting its refusals the same way.

use std::fmt;

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
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

/// A request whose `Origin`, if it has one, is allowed. WebSocket upgrades take it: CORS does
/// not cover them, and a browser would otherwise lend its ambient credentials to any page.
/// Requests without `Origin` (servers, native apps) pass.
pub(super) struct AllowedOrigin;

impl FromRequestParts<AppState> for AllowedOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Some(origin) = parts.headers.get(header::ORIGIN) else {
            return Ok(AllowedOrigin);
        };
        let ok = state
            .config
            .cors
            .allowed_origins
            .iter()
            .any(|a| a == "*" || a.as_bytes() == origin.as_bytes());
        if ok {
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
        .and_then(bearer)
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
}
