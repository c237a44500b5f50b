//! What every request handler and session shares: the server's state, one reference count away.

use std::sync::Arc;

use axum::http::HeaderMap;
use tidings_protocol::ErrorCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{bearer, AuthError, Authenticator};
use crate::config::Config;
use crate::error::ApiError;
use crate::grant::Principal;
use crate::hub::Hub;
use crate::limits::Admission;
use crate::log::ChannelLog;
use crate::metrics::Metrics;
use crate::token::TokenError;

/// Everything a request handler or a session needs: one shared allocation, so the clone every
/// request takes is a single reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    /// Share `shared` with every request and session.
    pub fn new(shared: Shared) -> Self {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] shares.
pub struct Shared {
    pub config: Arc<Config>,
    pub log: Arc<dyn ChannelLog>,
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown; sessions watch it and close with a "resume elsewhere" reason.
    pub shutdown: CancellationToken,
    /// Tracks WebSocket sessions so shutdown can wait for them to close.
    pub sessions: TaskTracker,
    /// Connection limits.
    pub admission: Arc<Admission>,
}

impl AppState {
    /// The caller of a request: from `Authorization: Bearer`, else the `access_token` query
    /// parameter, else anonymous. Wrong credentials are an error, never anonymous.
    pub fn principal(
        &self,
        headers: &HeaderMap,
        access_token: Option<&str>,
    ) -> Result<Principal, ApiError> {
        let credential = match headers.get(axum::http::header::AUTHORIZATION) {
            Some(value) => Some(value.to_str().ok().and_then(bearer).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "the Authorization header must be `Bearer KEY_ID:SECRET`",
                )
            })?),
            None => access_token,
        };
        let principal = self.auth.authenticate(credential).map_err(auth_error)?;
        if credential.is_none() && !principal.has_grants() {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "credentials required: send `Authorization: Bearer KEY_ID:SECRET` (or `?access_token=` on WebSocket)",
            ));
        }
        Ok(principal)
    }
}

/// The client-facing error for refused credentials.
pub fn auth_error(e: AuthError) -> ApiError {
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

/// Refuse a browser request whose `Origin` is not allowed. Requests without `Origin` (servers,
/// native apps) pass: the check protects browsers' ambient credentials, not the API.
pub fn check_origin(config: &Config, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let allowed = &config.cors.allowed_origins;
    let ok = allowed
        .iter()
        .any(|a| a == "*" || a.as_bytes() == origin.as_bytes());
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::OriginNotAllowed,
            format!(
                "origin {:?} is not allowed; add it to cors.allowed_origins",
                origin.to_str().unwrap_or("?")
            ),
        ))
    }
}
