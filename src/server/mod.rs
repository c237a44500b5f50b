//! The HTTP server: REST publish and history, the WebSocket endpoint, health and metrics.

mod poll;
mod rest;
mod sse;
mod ws;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::Router;
use tidings_protocol::ErrorCode;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{bearer, Authenticator, Principal};
use crate::config::Config;
use crate::error::ApiError;
use crate::hub::Hub;
use crate::log::ChannelLog;
use crate::metrics::Metrics;

/// Everything a request handler or a session needs.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub log: Arc<dyn ChannelLog>,
    pub hub: Arc<Hub>,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<Metrics>,
    /// Cancelled on shutdown; sessions watch it and close with a "resume elsewhere" reason.
    pub shutdown: CancellationToken,
    /// Tracks WebSocket sessions so shutdown can wait for them to close.
    pub sessions: TaskTracker,
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
        let principal = self.auth.authenticate(credential).map_err(|e| {
            ApiError::new(
                ErrorCode::Unauthorized,
                format!("{e}; check the key id and secret the server was started with"),
            )
        })?;
        if credential.is_none() && !principal.has_grants() {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "credentials required: send `Authorization: Bearer KEY_ID:SECRET` (or `?access_token=` on WebSocket)",
            ));
        }
        Ok(principal)
    }
}

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let body_limit = state
        .config
        .limits
        .max_message_bytes
        .saturating_mul(2)
        .saturating_mul(state.config.limits.max_publish_batch)
        .clamp(1 << 20, 256 << 20);
    Router::new()
        .route(
            "/v1/channels/{channel}/messages",
            post(rest::publish).get(rest::history),
        )
        .route("/v1/connect", get(ws::connect))
        .route("/v1/sse", get(sse::sse))
        .route("/v1/poll", get(poll::poll))
        .route("/healthz", get(rest::healthz))
        .route("/readyz", get(rest::readyz))
        .route("/metrics", get(rest::metrics))
        .fallback(rest::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}
