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

use crate::auth::{bearer, AuthError, Authenticator, Principal};
use crate::config::Config;
use crate::error::ApiError;
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
    /// The status of this server's connectors, for `GET /v1/connectors`.
    pub connectors: Arc<crate::connector::ConnectorRegistry>,
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

/// The router with every route.
pub fn router(state: AppState) -> Router {
    let body_limit = state
        .config
        .limits
        .max_message_bytes
        .saturating_mul(2)
        .saturating_mul(state.config.limits.max_publish_batch)
        .clamp(1 << 20, 256 << 20);
    let router = Router::new()
        .route(
            "/v1/channels/{channel}/messages",
            post(rest::publish).get(rest::history),
        )
        .route("/v1/connect", get(ws::connect))
        .route("/v1/sse", get(sse::sse))
        .route("/v1/poll", get(poll::poll))
        .route("/v1/tokens", post(rest::issue_token))
        .route("/healthz", get(rest::healthz))
        .route("/readyz", get(rest::readyz))
        .route("/metrics", get(rest::metrics))
        .route("/v1/connectors", get(rest::connectors));
    // Static pages, when configured, answer every other GET; unknown paths still get the API's
    // JSON 404, so a mistyped `/v1/...` route is as plain with a web root as without.
    let router = match &state.config.web_root {
        Some(dir) => {
            router.fallback_service(tower_http::services::ServeDir::new(dir).not_found_service(
                axum::handler::HandlerWithoutStateExt::into_service(rest::not_found),
            ))
        }
        None => router.fallback(rest::not_found),
    };
    router
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(cors(&state.config))
        .with_state(state)
}

/// CORS for REST, SSE and long-poll: only the configured origins (none by default).
fn cors(config: &Config) -> tower_http::cors::CorsLayer {
    use axum::http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins = &config.cors.allowed_origins;
    let allow = if origins.iter().any(|o| o == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| o.parse::<HeaderValue>().ok()))
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .max_age(std::time::Duration::from_secs(600))
}
