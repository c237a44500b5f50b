//! The HTTP server: REST publish and history, the WebSocket endpoint, SSE, long-polling,
//! health and metrics.

mod caller;
mod poll;
mod rest;
mod sse;
mod state;
mod subscription;
mod wanted;
mod ws;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::config::Config;

pub use state::{AppState, Shared};
/// The SSE and long-poll position parser (`from`, `Last-Event-ID`) and its writer, public only so
/// the fuzz targets in `fuzz/` can reach them.
#[doc(hidden)]
pub use subscription::{format_positions, parse_positions};

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
        .route("/v1/tokens/revoke", post(rest::revoke_tokens))
        .route("/v1/tokens/revocations", get(rest::revocations))
        .route("/healthz", get(rest::healthz))
        .route("/readyz", get(rest::readyz))
        .route("/metrics", get(rest::metrics))
        .route("/v1/connectors", get(rest::connectors))
        .route("/v1/cluster", get(rest::cluster));
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
