//! What the service tells its operators: logs and traces (`tracing`), and metrics (`metrics`,
//! exported for Prometheus on a small HTTP endpoint).
//!
//! Instrumentation sits where things happen and stays one line there: the gRPC handlers, the
//! pipeline stages and the lexicon loader call the event types below, each of which knows its
//! metric names and labels (vector's `internal_events` shape). Labels come from closed sets
//! only (`category`, `severity`, `status`, `speaker`, `kind`, `stage`, `reason`, `result`,
//! `grpc_status`), never from a tenant, conversation, customer or agent id, and never from
//! transcript text: a metric series per caller would be unbounded, and a label is stored
//! wherever the metrics go.
//!
//! Without an installed recorder (unit tests, `screen`, `lexicon check`) every event is a
//! no-op costing an atomic load.

use std::convert::Infallible;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::alert::{Alert, AlertStatus};
use crate::conversation::Speaker;

/// Segments received, by `speaker` (customer|agent) and `kind` (final|interim|text).
pub const SEGMENTS_TOTAL: &str = "kasuhara_segments_total";
/// Segments received and not yet answered.
pub const SEGMENTS_IN_FLIGHT: &str = "kasuhara_segments_in_flight";
/// Conversations opened (a `Screen` stream's `ConversationStart` accepted).
pub const CONVERSATIONS_TOTAL: &str = "kasuhara_conversations_total";
/// Conversations open now.
pub const CONVERSATIONS_OPEN: &str = "kasuhara_conversations_open";
/// Conversations ended, by `reason` (end|closed|idle, or error: ended without a summary).
pub const CONVERSATIONS_ENDED_TOTAL: &str = "kasuhara_conversations_ended_total";
/// Alerts raised, by `category`, `severity` and `status` (confirmed|provisional|retracted).
pub const ALERTS_TOTAL: &str = "kasuhara_alerts_total";
/// Time spent in one pipeline stage, by `stage` (normalize|tokenize|match).
pub const STAGE_SECONDS: &str = "kasuhara_stage_duration_seconds";
/// Time from a segment's arrival to its verdict being queued for the client.
pub const SEGMENT_SECONDS: &str = "kasuhara_segment_duration_seconds";
/// Supervisor streams open now.
pub const SUBSCRIBERS_OPEN: &str = "kasuhara_subscribers_open";
/// Events the slowest supervisor stream has not read yet (sampled at each publish).
pub const ALERT_BACKLOG: &str = "kasuhara_alert_backlog";
/// Events a lagging supervisor stream skipped (it resumes with the newest).
pub const ALERTS_DROPPED_TOTAL: &str = "kasuhara_alerts_dropped_total";
/// Alert events waiting for Redis (scale-out mode): buffered while it is slow or down.
pub const REDIS_BUFFERED: &str = "kasuhara_redis_buffered_events";
/// Alert events dropped because the Redis buffer was full (the oldest go first).
pub const REDIS_DROPPED_TOTAL: &str = "kasuhara_redis_dropped_events_total";
/// Failed or timed-out Redis calls, by `op` (append|read|state).
pub const REDIS_ERRORS_TOTAL: &str = "kasuhara_redis_errors_total";
/// Entries in the loaded lexicon.
pub const LEXICON_ENTRIES: &str = "kasuhara_lexicon_entries";
/// Lexicon loads, by `result` (ok|error).
pub const LEXICON_LOADS_TOTAL: &str = "kasuhara_lexicon_loads_total";
/// Lexicon and policy reloads, by `result` (ok|error).
pub const LEXICON_RELOADS_TOTAL: &str = "kasuhara_lexicon_reloads_total";
/// Time a reload took, from reading the files to the swap (or the failure).
pub const LEXICON_RELOAD_SECONDS: &str = "kasuhara_lexicon_reload_duration_seconds";
/// Evidence log records dropped: the writer was behind (channel full) or the disk failed.
pub const EVIDENCE_DROPPED_TOTAL: &str = "kasuhara_evidence_dropped_total";
/// Requests refused with an error status, by `grpc_status` (e.g. InvalidArgument).
pub const REQUESTS_REJECTED_TOTAL: &str = "kasuhara_requests_rejected_total";

/// Reload time bucket bounds in seconds: building the full lexicon's automata takes about a
/// second, longer on a busy machine or with many tenant overlays.
const RELOAD_BUCKETS: &[f64] = &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Histogram bucket bounds in seconds: a pipeline stage takes microseconds, a segment tens of
/// microseconds; the upper buckets catch pathological inputs and a stalled runtime.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_005, 0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005,
    0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// How often histograms are folded and idle state trimmed; Prometheus scrapes every 15 s or so.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// Another metrics recorder is installed in this process.
    #[error("cannot install the metrics recorder")]
    Recorder(#[from] metrics_exporter_prometheus::BuildError),
    /// The log filter (`KASUHARA_LOG`) does not parse.
    #[error("invalid log filter {filter:?}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// The cause.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// A global tracing subscriber is already set.
    #[error("cannot install the tracing subscriber")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
    /// The OTLP exporter could not be built.
    #[cfg(feature = "otlp")]
    #[error("cannot build the OTLP exporter for {endpoint}")]
    Otlp {
        /// The collector endpoint.
        endpoint: String,
        /// The cause.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// How logs are written on stderr.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    clap::ValueEnum,
    serde::Deserialize,
    serde::Serialize,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per event, span fields included (for log shippers).
    Json,
}

/// Keeps trace export running; flushes buffered spans when dropped at exit.
#[derive(Debug)]
#[must_use = "dropping the guard stops trace export"]
pub struct TracingGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(provider) = self.provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("warning: cannot flush traces: {error}");
            }
        }
    }
}

/// Installs the global `tracing` subscriber: `filter` (`EnvFilter` syntax, e.g.
/// `info,kasuhara_guard=debug`) in `format` on stderr and, when `otlp_endpoint` is given (a
/// build with the `otlp` feature), every span exported over OTLP/gRPC as well.
///
/// Spans carry no personal data: a conversation's span names its conversation id, tenant and
/// queue, never the customer or agent, and no event records transcript text.
///
/// Call it inside the tokio runtime: the OTLP exporter's channel is a tonic one.
///
/// # Errors
/// A filter that does not parse, a subscriber already installed, or an OTLP exporter that
/// cannot be built.
pub fn init_tracing(
    format: LogFormat,
    filter: &str,
    otlp_endpoint: Option<&str>,
) -> Result<TracingGuard, TelemetryError> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let env_filter = tracing_subscriber::EnvFilter::builder()
        .parse(filter)
        .map_err(|source| TelemetryError::Filter { filter: filter.to_owned(), source })?;
    let (text, json) = match format {
        LogFormat::Text => {
            (Some(tracing_subscriber::fmt::layer().with_writer(std::io::stderr)), None)
        }
        LogFormat::Json => {
            (None, Some(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr)))
        }
    };
    let registry = tracing_subscriber::registry().with(env_filter).with(text).with(json);
    #[cfg(feature = "otlp")]
    {
        let (layer, provider) = match otlp_endpoint {
            Some(endpoint) => {
                let (layer, provider) = otlp_layer(endpoint)?;
                (Some(layer), Some(provider))
            }
            None => (None, None),
        };
        registry.with(layer).try_init()?;
        Ok(TracingGuard { provider })
    }
    #[cfg(not(feature = "otlp"))]
    {
        // Configuration refuses an endpoint in a build without the feature; see
        // `config::Settings::validate`.
        debug_assert!(otlp_endpoint.is_none(), "otlp endpoint in a build without otlp");
        registry.try_init()?;
        Ok(TracingGuard {})
    }
}

/// A layer that exports spans to an OTLP/gRPC collector, batched off the request path.
#[cfg(feature = "otlp")]
fn otlp_layer<S>(
    endpoint: &str,
) -> Result<
    (
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        opentelemetry_sdk::trace::SdkTracerProvider,
    ),
    TelemetryError,
>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig as _;

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|source| TelemetryError::Otlp { endpoint: endpoint.to_owned(), source })?;
    let resource =
        opentelemetry_sdk::Resource::builder().with_service_name(env!("CARGO_PKG_NAME")).build();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource)
        .build();
    let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
    Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
}

/// The process-wide Prometheus recorder, installed on first use.
///
/// Metrics are process-global by design of the `metrics` facade, so every server in one
/// process (tests start many) records into the same registry; installing once keeps that
/// harmless.
///
/// # Errors
/// When a different recorder was installed first.
pub fn metrics_handle() -> Result<PrometheusHandle, TelemetryError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets(LATENCY_BUCKETS)?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full(LEXICON_RELOAD_SECONDS.to_owned()),
            RELOAD_BUCKETS,
        )?
        .install_recorder()?;
    describe_metrics();
    // A second caller racing here lost `install_recorder` above and returned its error, so
    // the cell is still empty or holds this same handle.
    Ok(HANDLE.get_or_init(|| handle).clone())
}

fn describe_metrics() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(SEGMENTS_TOTAL, "Segments received, by speaker and kind.");
    describe_gauge!(SEGMENTS_IN_FLIGHT, "Segments received and not yet answered.");
    describe_gauge!(REDIS_BUFFERED, "Alert events waiting to be appended to Redis.");
    describe_counter!(REDIS_DROPPED_TOTAL, "Alert events dropped: the Redis buffer was full.");
    describe_counter!(REDIS_ERRORS_TOTAL, "Failed or timed-out Redis calls, by op.");
    describe_counter!(CONVERSATIONS_TOTAL, "Conversations opened.");
    describe_gauge!(CONVERSATIONS_OPEN, "Conversations open now.");
    describe_counter!(CONVERSATIONS_ENDED_TOTAL, "Conversations ended, by reason.");
    describe_counter!(ALERTS_TOTAL, "Alerts raised, by category, severity and status.");
    describe_histogram!(STAGE_SECONDS, Unit::Seconds, "Time in one pipeline stage.");
    describe_histogram!(SEGMENT_SECONDS, Unit::Seconds, "Segment arrival to verdict queued.");
    describe_gauge!(SUBSCRIBERS_OPEN, "Supervisor streams open now.");
    describe_gauge!(ALERT_BACKLOG, "Events the slowest supervisor stream has not read.");
    describe_counter!(ALERTS_DROPPED_TOTAL, "Events skipped by lagging supervisor streams.");
    describe_gauge!(LEXICON_ENTRIES, "Entries in the loaded lexicon.");
    describe_counter!(LEXICON_LOADS_TOTAL, "Lexicon loads, by result.");
    describe_counter!(LEXICON_RELOADS_TOTAL, "Lexicon and policy reloads, by result.");
    describe_histogram!(LEXICON_RELOAD_SECONDS, Unit::Seconds, "Time one reload took.");
    describe_counter!(EVIDENCE_DROPPED_TOTAL, "Evidence log records dropped.");
    describe_counter!(REQUESTS_REJECTED_TOTAL, "Requests refused, by gRPC status.");
}

/// Serves `GET /metrics` (Prometheus text format) on `listener` until `shutdown` is cancelled.
///
/// HTTP/1.1 only, no TLS: it is meant for a loopback or cluster-internal scrape address. Each
/// connection runs in its own task, so a slow scraper holds nobody else up.
pub async fn serve_metrics(
    listener: TcpListener,
    handle: PrometheusHandle,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics");
    }
    let upkeep = {
        let handle = handle.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(UPKEEP_INTERVAL);
            loop {
                tokio::select! {
                    _ = every.tick() => handle.run_upkeep(),
                    () = shutdown.cancelled() => return,
                }
            }
        })
    };
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, usually: back off instead of spinning.
                    tracing::warn!(%error, "metrics endpoint cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let response = metrics_response(&handle, &request);
                async move { Ok::<_, Infallible>(response) }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            if let Err(error) =
                hyper::server::conn::http1::Builder::new().serve_connection(io, service).await
            {
                tracing::debug!(%error, "metrics connection ended with an error");
            }
        });
    }
    upkeep.abort();
}

fn metrics_response(
    handle: &PrometheusHandle,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => {
            (StatusCode::OK, "text/plain; version=0.0.4; charset=utf-8", handle.render())
        }
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use GET\n".into()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "metrics are at /metrics\n".into()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(content_type));
    response
}

/// A pipeline stage, for [`STAGE_SECONDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// NFKC and the folds.
    Normalize,
    /// lindera and the token layers.
    Tokenize,
    /// The automaton and the context rules.
    Match,
}

impl Stage {
    fn label(self) -> &'static str {
        match self {
            Stage::Normalize => "normalize",
            Stage::Tokenize => "tokenize",
            Stage::Match => "match",
        }
    }

    /// Records the time since `started` as this stage's latency.
    pub fn record(self, started: Instant) {
        histogram!(STAGE_SECONDS, "stage" => self.label()).record(started.elapsed());
    }
}

/// A segment between arrival and verdict: counted in, in flight while it lives, and its
/// end-to-end latency recorded when dropped (so an error path is timed too).
#[derive(Debug)]
#[must_use = "the segment is timed until this is dropped"]
pub struct SegmentTimer {
    started: Instant,
}

impl SegmentTimer {
    /// Counts a segment in and starts its clock. `kind` is `final`, `interim` or `text`.
    pub fn start(speaker: Speaker, kind: &'static str) -> Self {
        let speaker = match speaker {
            Speaker::Customer => "customer",
            Speaker::Agent => "agent",
        };
        counter!(SEGMENTS_TOTAL, "speaker" => speaker, "kind" => kind).increment(1);
        gauge!(SEGMENTS_IN_FLIGHT).increment(1.0);
        Self { started: Instant::now() }
    }
}

impl Drop for SegmentTimer {
    fn drop(&mut self) {
        gauge!(SEGMENTS_IN_FLIGHT).decrement(1.0);
        histogram!(SEGMENT_SECONDS).record(self.started.elapsed());
    }
}

/// An open conversation: counted when opened, and closed with a reason, or as `error` when
/// dropped without one (the stream failed, the client left, or the server drained).
#[derive(Debug)]
#[must_use = "the conversation counts as open until this is dropped"]
pub struct ConversationGauge {
    reason: &'static str,
}

impl ConversationGauge {
    /// Counts a conversation opened.
    pub fn open() -> Self {
        counter!(CONVERSATIONS_TOTAL).increment(1);
        gauge!(CONVERSATIONS_OPEN).increment(1.0);
        Self { reason: "error" }
    }

    /// Records why the conversation ended (`end`, `closed` or `idle`).
    pub fn close(mut self, reason: &'static str) {
        self.reason = reason;
    }
}

impl Drop for ConversationGauge {
    fn drop(&mut self) {
        gauge!(CONVERSATIONS_OPEN).decrement(1.0);
        counter!(CONVERSATIONS_ENDED_TOTAL, "reason" => self.reason).increment(1);
    }
}

/// An open supervisor stream, counted while it lives.
#[derive(Debug)]
#[must_use = "the stream counts as open until this is dropped"]
pub struct SubscriberGauge(());

impl SubscriberGauge {
    /// Counts a stream opened.
    pub fn open() -> Self {
        gauge!(SUBSCRIBERS_OPEN).increment(1.0);
        Self(())
    }
}

impl Drop for SubscriberGauge {
    fn drop(&mut self) {
        gauge!(SUBSCRIBERS_OPEN).decrement(1.0);
    }
}

/// Counts an alert raised, confirmed or retracted.
pub fn alert_raised(alert: &Alert) {
    let status = match alert.status {
        AlertStatus::Confirmed => "confirmed",
        AlertStatus::Provisional => "provisional",
        AlertStatus::Retracted => "retracted",
    };
    counter!(
        ALERTS_TOTAL,
        "category" => alert.category.code(),
        "severity" => alert.severity.code(),
        "status" => status,
    )
    .increment(1);
}

/// Records how many events the slowest supervisor stream has yet to read.
pub fn alert_backlog(queued: usize) {
    gauge!(ALERT_BACKLOG).set(queued as f64);
}

/// Records how many alert events wait for Redis.
pub fn redis_buffered(events: usize) {
    gauge!(REDIS_BUFFERED).set(events as f64);
}

/// Counts alert events dropped from a full Redis buffer.
pub fn redis_dropped(events: u64) {
    counter!(REDIS_DROPPED_TOTAL).increment(events);
    tracing::error!(events, "redis buffer full: alert events dropped");
}

/// Counts a failed Redis call; `op` is append, read or state.
pub fn redis_error(op: &'static str, error: &dyn std::fmt::Display) {
    counter!(REDIS_ERRORS_TOTAL, "op" => op).increment(1);
    tracing::warn!(op, %error, "redis call failed");
}

/// Counts events a lagging supervisor stream skipped.
pub fn alerts_dropped(skipped: u64) {
    counter!(ALERTS_DROPPED_TOTAL).increment(skipped);
    tracing::warn!(skipped, "alert subscriber lagged");
}

/// Records a lexicon load: its size when it succeeded.
pub fn lexicon_loaded(entries: Option<usize>) {
    match entries {
        Some(n) => {
            gauge!(LEXICON_ENTRIES).set(n as f64);
            counter!(LEXICON_LOADS_TOTAL, "result" => "ok").increment(1);
        }
        None => counter!(LEXICON_LOADS_TOTAL, "result" => "error").increment(1),
    }
}

/// Records a lexicon and policy reload: whether it was swapped in, and how long it took.
pub fn lexicon_reloaded(ok: bool, elapsed: Duration) {
    let result = if ok { "ok" } else { "error" };
    counter!(LEXICON_RELOADS_TOTAL, "result" => result).increment(1);
    histogram!(LEXICON_RELOAD_SECONDS).record(elapsed.as_secs_f64());
}

/// Counts an evidence log record that was not written.
pub fn evidence_dropped() {
    counter!(EVIDENCE_DROPPED_TOTAL).increment(1);
}

/// Counts a request refused with `code`.
pub fn request_rejected(code: tonic::Code) {
    counter!(REQUESTS_REJECTED_TOTAL, "grpc_status" => grpc_status_label(code)).increment(1);
}

/// The label for a status code: the enum's name (`InvalidArgument`), a closed set of 17.
fn grpc_status_label(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "Ok",
        C::Cancelled => "Cancelled",
        C::Unknown => "Unknown",
        C::InvalidArgument => "InvalidArgument",
        C::DeadlineExceeded => "DeadlineExceeded",
        C::NotFound => "NotFound",
        C::AlreadyExists => "AlreadyExists",
        C::PermissionDenied => "PermissionDenied",
        C::ResourceExhausted => "ResourceExhausted",
        C::FailedPrecondition => "FailedPrecondition",
        C::Aborted => "Aborted",
        C::OutOfRange => "OutOfRange",
        C::Unimplemented => "Unimplemented",
        C::Internal => "Internal",
        C::Unavailable => "Unavailable",
        C::DataLoss => "DataLoss",
        C::Unauthenticated => "Unauthenticated",
    }
}
