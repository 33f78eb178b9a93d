//! The live supervisor console: a Japanese-first single page served by the same binary on its
//! own port (`serve --console-addr 127.0.0.1:8080`; off by default).
//!
//! It sits beside `grpc::alerts` at the end of the flow and talks to the same [`AlertHub`]:
//!
//! ```text
//! AlertHub ──▶ GET /api/events      server-sent events (one per delivery, `id:` = cursor)
//!          ◀── POST /api/acknowledge JSON, the same validation and errors as gRPC Acknowledge
//!          ──▶ GET /api/entry-stats  false alarms per lexicon entry
//! GET /, /console.js, /console.css   the page, compiled into the binary (no build step)
//! ```
//!
//! Server-sent events fit a browser exactly: `EventSource` reconnects by itself and sends the
//! last `id:` it saw as `Last-Event-ID`, which is our cursor, so a dropped connection resumes
//! with no gap and no duplicate without a line of client code.
//!
//! The console follows the gRPC rules ([`crate::auth`]): with tokens configured every `/api/`
//! request needs a supervisor (or admin) token for the tenant it asks about, in an
//! `Authorization: Bearer` header or, for `EventSource` (which cannot set headers), an
//! `access_token` query parameter; 401 without a valid token, 403 for another tenant. The page
//! asks for the token and keeps it in the tab's `sessionStorage` only. The console speaks plain
//! HTTP: off loopback, put it behind a TLS-terminating proxy so the token is not sent in clear.
//!
//! [`AlertHub`]: crate::alert::AlertHub

mod json;

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::alert::AlertFilter;
use crate::alert::ack::{AckOutcome, AckRequest};
use crate::alert::bus::Resume;
use crate::auth::Role;
use crate::conversation::require_id;
use crate::error::ScreenError;
use crate::grpc::alerts::{acknowledge, check_list, open_subscription};
use crate::server::Shared;

const INDEX_HTML: &str = include_str!("assets/index.html");
const CONSOLE_JS: &str = include_str!("assets/console.js");
const CONSOLE_CSS: &str = include_str!("assets/console.css");

/// Serves the console on `listener` until the server's shutdown token is cancelled.
///
/// # Errors
/// The listener failing.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "console serving");
    }
    let token = shared.shutdown.clone();
    // Alerts go out as small server-sent events; without TCP_NODELAY, Nagle's algorithm would
    // hold one back while the previous is unacknowledged (as for the gRPC listener).
    let listener = listener.tap_io(|stream| {
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "console connection: cannot set TCP_NODELAY");
        }
    });
    axum::serve(listener, router(shared)).with_graceful_shutdown(token.cancelled_owned()).await
}

/// The console's routes over the shared server state.
pub fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }))
        .route("/console.js", get(|| async { asset("text/javascript; charset=utf-8", CONSOLE_JS) }))
        .route("/console.css", get(|| async { asset("text/css; charset=utf-8", CONSOLE_CSS) }))
        .route("/api/events", get(events))
        .route("/api/acknowledge", post(acknowledge_json))
        .route("/api/entry-stats", get(entry_stats))
        .with_state(shared)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body)
        .into_response()
}

/// A request error as JSON: `{"error": message, "field": name}` with the status that gRPC
/// would have used.
fn error_response(error: ScreenError) -> Response {
    let (status, field) = match &error {
        ScreenError::InvalidArgument { field, .. } => (StatusCode::BAD_REQUEST, Some(*field)),
        ScreenError::NotFound(_) => (StatusCode::NOT_FOUND, None),
        ScreenError::FailedPrecondition(_) => (StatusCode::CONFLICT, None),
        ScreenError::AlreadyExists { field, .. } => (StatusCode::CONFLICT, Some(*field)),
        ScreenError::ResourceExhausted { field, .. } => {
            (StatusCode::TOO_MANY_REQUESTS, Some(*field))
        }
        ScreenError::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, None),
        ScreenError::PermissionDenied(_) => (StatusCode::FORBIDDEN, None),
        ScreenError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
        ScreenError::Internal(detail) => {
            tracing::error!(%detail, "internal console error");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({"error": "internal error"})),
            )
                .into_response();
        }
    };
    (status, Json(serde_json::json!({"error": error.to_string(), "field": field}))).into_response()
}

/// The query of `GET /api/events`: the Subscribe filter, lists comma-separated. Every field
/// defaults, so a missing one is reported by our validation, with its name.
#[derive(Debug, Default, Deserialize)]
struct EventsQuery {
    #[serde(default)]
    tenant_id: String,
    #[serde(default)]
    min_severity: String,
    #[serde(default)]
    categories: String,
    #[serde(default)]
    queues: String,
    #[serde(default)]
    conversation_ids: String,
    #[serde(default)]
    cursor: String,
    /// The bearer token, for `EventSource`, which cannot send headers.
    #[serde(default)]
    access_token: String,
}

/// Checks that the request's token may act as a supervisor for `tenant`.
fn authorize(
    shared: &Shared,
    headers: &HeaderMap,
    query_token: Option<&str>,
    tenant: &str,
) -> Result<(), ScreenError> {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    shared.access.http_principal(authorization, query_token)?.check(Role::Supervisor, tenant)
}

fn list(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}

impl EventsQuery {
    /// The filter and resume point; `Last-Event-ID` (a browser reconnecting) wins over the
    /// `cursor` parameter.
    fn decode(self, last_event_id: Option<&str>) -> Result<(AlertFilter, Resume), ScreenError> {
        require_id("tenant_id", &self.tenant_id, true)?;
        let min_severity = match self.min_severity.as_str() {
            "" => None,
            code => Some(code.parse().map_err(|_| {
                ScreenError::invalid(
                    "min_severity",
                    "unknown severity (LOW, MEDIUM, HIGH, CRITICAL)",
                )
            })?),
        };
        let categories = list(&self.categories)
            .iter()
            .map(|c| c.parse().map_err(|_| ScreenError::invalid("categories", "unknown category")))
            .collect::<Result<Vec<_>, _>>()?;
        let queues = list(&self.queues);
        check_list("queues", &queues)?;
        let conversation_ids = list(&self.conversation_ids);
        check_list("conversation_ids", &conversation_ids)?;
        let resume = Resume::parse(last_event_id.unwrap_or(&self.cursor))
            .map_err(|e| ScreenError::invalid("cursor", e))?;
        let filter = AlertFilter {
            tenant_id: self.tenant_id,
            min_severity,
            categories,
            queues,
            conversation_ids,
        };
        Ok((filter, resume))
    }
}

/// `GET /api/events`: the tenant's events as server-sent events.
async fn events(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Response {
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let token = query.access_token.clone();
    let subscription = authorize(&shared, &headers, Some(&token), &query.tenant_id)
        .and_then(|()| query.decode(last_event_id))
        .and_then(|(filter, resume)| open_subscription(&shared, filter, resume));
    let (mut subscription, slot) = match subscription {
        Ok(s) => s,
        Err(e) => return error_response(e),
    };
    // Between the subscription and the socket, as deep as a gRPC alert stream's hand-off.
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(crate::grpc::alerts::EVENT_BUFFER);
    let token = shared.shutdown.clone();
    let heartbeat = shared.heartbeat_interval;
    shared.tasks.spawn(async move {
        let _slot = slot;
        loop {
            let event = tokio::select! {
                next = tokio::time::timeout(heartbeat, subscription.next()) => match next {
                    Ok(Some(delivery)) => json::delivery_event(&delivery),
                    Ok(None) => return,
                    Err(_) => json::heartbeat_event(subscription.position()),
                },
                () = token.cancelled() => return,
                () = tx.closed() => return, // the browser went away
            };
            tokio::select! {
                sent = tx.send(Ok(event)) => if sent.is_err() { return },
                () = token.cancelled() => return,
            }
        }
    });
    Sse::new(ReceiverStream::new(rx)).into_response()
}

/// The body of `POST /api/acknowledge`; the same fields as `AcknowledgeRequest`, the outcome
/// as its code without the prefix (`FALSE_ALARM`; `SEEN` or absent for none). Missing fields
/// default, so validation names them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct AcknowledgeBody {
    tenant_id: String,
    alert_id: String,
    acknowledged_by: String,
    outcome: Option<String>,
    note: String,
}

/// `POST /api/acknowledge`.
async fn acknowledge_json(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Json(body): Json<AcknowledgeBody>,
) -> Response {
    if let Err(e) = authorize(&shared, &headers, None, &body.tenant_id) {
        return error_response(e);
    }
    let outcome = match body.outcome.as_deref() {
        None | Some("") => Some(AckOutcome::Seen),
        Some(code) => AckOutcome::from_code(code),
    };
    let Some(outcome) = outcome else {
        return error_response(ScreenError::invalid("outcome", "unknown outcome"));
    };
    let request = AckRequest {
        tenant_id: body.tenant_id,
        alert_id: body.alert_id,
        acknowledged_by: body.acknowledged_by,
        outcome,
        note: body.note,
    };
    match acknowledge(&shared, request) {
        Ok(ack) => Json(json::acknowledgement(&ack)).into_response(),
        Err(e) => error_response(e),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct StatsQuery {
    tenant_id: String,
    access_token: String,
}

/// `GET /api/entry-stats`: false alarms per lexicon entry, most first.
async fn entry_stats(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<StatsQuery>,
) -> Response {
    let checked = authorize(&shared, &headers, Some(&query.access_token), &query.tenant_id)
        .and_then(|()| require_id("tenant_id", &query.tenant_id, true));
    if let Err(e) = checked {
        return error_response(e);
    }
    let stats = shared.hub.entry_stats(&query.tenant_id);
    Json(stats.iter().map(json::entry_stat).collect::<Vec<_>>()).into_response()
}
