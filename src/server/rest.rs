//! REST routes: publish, history, tokens and their revocations, health, metrics, connector
//! status.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tidings_protocol::{ErrorCode, HistoryItem, HistoryPage, PublishResponse};

use super::caller::{api_key, Caller, Revoker, Signer};
use super::state::AppState;
use crate::error::ApiError;
use crate::grant::Operation;
use crate::publish::{self, MessageIn};

/// Default history page size.
const DEFAULT_HISTORY_LIMIT: usize = 100;

/// `POST /v1/channels/{channel}/messages`: one message or an array; 201 once durable.
pub(super) async fn publish(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    Caller(principal): Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let channel = publish::channel(&channel)?;
    publish::authorize(&principal, Operation::Publish, &channel)?;
    let body = body.map_err(|e| {
        let code = if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::RequestTooLarge
        } else {
            ErrorCode::MalformedFrame
        };
        state.metrics.error(code);
        ApiError::new(
            code,
            format!(
                "cannot read the request body ({e}); send fewer or smaller messages per request"
            ),
        )
        .on(channel.as_str())
    })?;
    let malformed = |e: serde_json::Error| {
        ApiError::new(
            ErrorCode::MalformedFrame,
            format!("the body must be a message object or an array of them: {e}"),
        )
        .on(channel.as_str())
    };
    let first = body.iter().find(|b| !b.is_ascii_whitespace()).copied();
    let items: Vec<MessageIn> = match first {
        Some(b'[') => serde_json::from_slice(&body).map_err(malformed)?,
        Some(b'{') => vec![serde_json::from_slice(&body).map_err(malformed)?],
        _ => {
            return Err(ApiError::new(
                ErrorCode::MalformedFrame,
                "the body must be a JSON message object or an array of them",
            )
            .on(channel.as_str()))
        }
    };
    let max_batch = state.config.limits.max_publish_batch;
    if items.is_empty() || items.len() > max_batch {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "send between 1 and {max_batch} messages per request (limits.max_publish_batch)"
            ),
        )
        .on(channel.as_str()));
    }
    let max_bytes = state.config.limits.max_message_bytes;
    let messages = items
        .into_iter()
        .map(|m| publish::validate(&channel, m, max_bytes))
        .collect::<Result<Vec<_>, _>>()?;
    let appended = publish::append(&state.log, &state.metrics, messages).await?;
    Ok((
        StatusCode::CREATED,
        Json(PublishResponse {
            channel: channel.to_string(),
            serials: appended.iter().map(|a| a.serial).collect(),
        }),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
pub(super) struct HistoryQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// `GET /v1/channels/{channel}/messages?after=&limit=`: history in serial order.
pub(super) async fn history(
    State(state): State<AppState>,
    Path(channel): Path<String>,
    Query(q): Query<HistoryQuery>,
    Caller(principal): Caller,
) -> Result<Json<HistoryPage>, ApiError> {
    let channel = publish::channel(&channel)?;
    publish::authorize(&principal, Operation::History, &channel)?;
    let max = state.config.limits.history_page_max;
    let after = parse_param(q.after.as_deref(), "after", 0, u64::MAX)?;
    let limit = parse_param(
        q.limit.as_deref(),
        "limit",
        DEFAULT_HISTORY_LIMIT as u64,
        max as u64,
    )?;
    if limit == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("`limit` must be between 1 and {max}"),
        ));
    }
    let page = state
        .log
        .read(&channel, after, limit as usize)
        .await
        .map_err(|e| ApiError::from_log(&e).on(channel.as_str()))?;
    let last = page.messages.last().map(|m| m.serial);
    let head = page.state.head.max(last.unwrap_or(0));
    let full = page.messages.len() == limit as usize;
    let items = page
        .messages
        .into_iter()
        .map(|m| HistoryItem {
            serial: m.serial,
            id: m.id,
            name: m.name,
            data: m.data,
            headers: m.headers,
            timestamp: m.timestamp,
        })
        .collect();
    Ok(Json(HistoryPage {
        channel: channel.to_string(),
        epoch: page.state.epoch.to_string(),
        items,
        next: match last {
            Some(last) if full && last < head => Some(last),
            _ => None,
        },
    }))
}

fn parse_param(value: Option<&str>, name: &str, default: u64, max: u64) -> Result<u64, ApiError> {
    match value {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("`{name}` must be a whole number between 0 and {max}, got {v:?}"),
            )),
        },
    }
}

/// `GET /healthz`: the process is up.
pub(super) async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: ready for traffic (not shutting down). Names the connectors stopped by an
/// error (their reasons are behind `GET /v1/connectors`, which needs an API key); they make the
/// node unready only with `health.unready_on_stopped_connector`.
pub(super) async fn readyz(State(state): State<AppState>) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response();
    }
    let stopped = state.connectors.stopped();
    if stopped.is_empty() {
        return "ready\n".into_response();
    }
    let names = stopped.join(", ");
    let see = "see GET /v1/connectors for the reason and the fix";
    if state.config.health.unready_on_stopped_connector {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: connector stopped: {names}; {see}\n"),
        )
            .into_response()
    } else {
        format!("ready; connector stopped: {names}; {see}\n").into_response()
    }
}

/// `GET /metrics`: Prometheus/OpenMetrics text.
pub(super) async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// `GET /v1/connectors`: each database connector's state, last error, last checkpoint and
/// counters (Postgres: slot lag too), for operators. Needs an API key: errors name hosts,
/// users and tables, which the devices holding tokens have no business reading.
pub(super) async fn connectors(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api_key(
        &state,
        &headers,
        "connector status needs an API key: `Authorization: Bearer KEY_ID:SECRET`",
    )?;
    Ok(Json(state.connectors.status()).into_response())
}

/// `GET /v1/cluster` (API key): this node, and where the log's storage stands: in cluster mode
/// the NATS server it is connected to and the stream's state, leader and replicas.
pub(super) async fn cluster(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    api_key(
        &state,
        &headers,
        "cluster status needs an API key: `Authorization: Bearer KEY_ID:SECRET`",
    )?;
    let status = state
        .log
        .status()
        .await
        .map_err(|e| ApiError::from_log(&e))?;
    Ok(Json(status).into_response())
}

/// Any other path.
pub(super) async fn not_found() -> Response {
    let e = ApiError::new(
        ErrorCode::InvalidRequest,
        "no such route; see docs/protocol.md for the API",
    );
    (
        StatusCode::NOT_FOUND,
        Json(serde_json::json!({ "error": e.body(None) })),
    )
        .into_response()
}

/// `POST /v1/tokens`: an API key signs a token for a client, with at most the key's capabilities.
pub(super) async fn issue_token(
    State(state): State<AppState>,
    Signer(key): Signer,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedFrame,
            format!("cannot read the request body: {e}"),
        )
    })?;
    let request: crate::token::TokenRequest = if body.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorCode::MalformedFrame,
                format!("the body must be {{\"subject\", \"ttl\", \"caps\"}} (all optional): {e}"),
            )
        })?
    };
    let issued = crate::token::issue(&key, request, &state.revocations).map_err(|e| match e {
        crate::token::IssueError::Escalation { .. } => {
            ApiError::new(ErrorCode::Forbidden, e.to_string())
        }
        crate::token::IssueError::Invalid(m) => ApiError::new(ErrorCode::InvalidRequest, m),
    })?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "token": issued.token,
            "expires_at": issued.expires_at * 1000,
            "jti": issued.jti,
        })),
    )
        .into_response())
}

/// What `POST /v1/tokens/revoke` is asked to revoke: exactly one of the two.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevokeRequest {
    subject: Option<String>,
    jti: Option<String>,
}

/// `POST /v1/tokens/revoke` with `{"subject": "..."}` or `{"jti": "..."}`: from the answer on,
/// the tokens it names are refused with `token_revoked`, and open connections using them are
/// closed. Answers only once the revocation is durable.
pub(super) async fn revoke_tokens(
    State(state): State<AppState>,
    Revoker(key): Revoker,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    const SHAPE: &str = r#"the body must be {"subject": "..."} (every token of that subject issued until now) or {"jti": "..."} (one token)"#;
    let body = body.map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedFrame,
            format!("cannot read the request body: {e}"),
        )
    })?;
    let request: RevokeRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::MalformedFrame, format!("{SHAPE}: {e}")))?;
    use crate::revocation::{RevokeError, Target};
    let target = match (request.subject, request.jti) {
        (Some(subject), None) => Target::Subject(subject),
        (None, Some(jti)) => Target::Jti(jti),
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("give `subject` or `jti`, not both; {SHAPE}"),
            ))
        }
        (None, None) => return Err(ApiError::new(ErrorCode::InvalidRequest, SHAPE)),
    };
    let kind = match target {
        Target::Subject(_) => crate::metrics::RevocationKind::subject,
        Target::Jti(_) => crate::metrics::RevocationKind::jti,
    };
    let revocation = state.revocations.revoke(target).await.map_err(|e| {
        let code = match &e {
            RevokeError::Invalid(_) => ErrorCode::InvalidRequest,
            RevokeError::Full { .. } => ErrorCode::TooManyRevocations,
            RevokeError::Store(_) => {
                tracing::error!(error = %e, "cannot store a token revocation");
                ErrorCode::Internal
            }
        };
        state.metrics.error(code);
        ApiError::new(code, e.to_string())
    })?;
    state.metrics.revoked(kind);
    tracing::info!(
        key = %key.id,
        target = %revocation.target.describe(),
        revoked_at = revocation.revoked_at,
        expires_at = revocation.expires_at,
        "tokens revoked"
    );
    Ok(Json(serde_json::json!({ "revocation": revocation })).into_response())
}

/// `GET /v1/tokens/revocations`: the revocations in force, oldest first, for operators.
pub(super) async fn revocations(State(state): State<AppState>, Revoker(_): Revoker) -> Response {
    Json(serde_json::json!({
        "revocations": state.revocations.list(),
        "max": state.config.auth.max_revocations,
    }))
    .into_response()
}
