//! The server: loads the lexicon, wires the gRPC services, serves until shutdown, then drains.
//!
//! Before anything is loaded, [`crate::auth::check_exposure`] refuses a non-loopback listener
//! without authentication. With `[tls]`, the gRPC listener speaks TLS (rustls), with client
//! certificates required when a client CA is configured.
//!
//! `run` takes a bound listener and a shutdown future, so tests bind `127.0.0.1:0`, learn the
//! port before the server starts, and stop it with a oneshot or token (mini-redis's shape).
//!
//! Shutdown sequence: the shutdown future resolves → health turns NOT_SERVING → the root token
//! is cancelled (open streams end with UNAVAILABLE, the listener stops accepting) → wait for
//! the connections to close and the stream tasks to finish, all within `shutdown_grace`; a
//! timeout is logged, not hung on (an open health Watch would otherwise hold the process
//! forever, tonic#1820).

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::server::TcpIncoming;

use crate::alert::ack::AckLedger;
use crate::alert::redis_bus::{RedisBus, RedisBusConfig};
use crate::alert::{AlertHub, AlertIds};
use crate::callers::redis::RedisCallState;
use crate::callers::{CallState, CallerHistory};
use crate::config::Config;
use crate::dictionary::{DictionaryError, Lexicon};
use crate::evidence::EvidenceLog;
use crate::grpc::admin::Admin;
use crate::grpc::alerts::Alerts;
use crate::grpc::screening::Screening;
use crate::pb;
use crate::pb::admin_service_server::AdminServiceServer;
use crate::pb::alert_service_server::AlertServiceServer;
use crate::pb::screening_service_server::ScreeningServiceServer;
use crate::pipeline::matcher::Matcher;
use crate::pipeline::segment::JapaneseSegmenter;
use crate::pipeline::{Pipeline, Pipelines};
use crate::redis::RedisTarget;
use crate::reload::{LiveRules, Rules};
use crate::telemetry;

/// State shared by every handler.
#[derive(Debug)]
pub struct Shared {
    /// The pipelines and policy in use, swapped whole by a reload ([`crate::reload`]).
    pub rules: LiveRules,
    /// Alert streams, history and acknowledgements for supervisors.
    pub hub: AlertHub,
    /// Silence after which a supervisor stream gets a heartbeat.
    pub heartbeat_interval: std::time::Duration,
    /// Alert id source.
    pub alert_ids: AlertIds,
    /// Repeat-caller history across conversations, and conversation snapshots: in memory,
    /// or shared through Redis.
    pub callers: Box<dyn CallState>,
    /// Open conversations, for the admission limits.
    pub live: Arc<crate::limits::LiveConversations>,
    /// Open alert subscriptions per tenant, for their limit.
    pub subscribers: Arc<crate::limits::SubscriberSlots>,
    /// Who may call: the console checks its requests against it (gRPC requests are checked
    /// by the [`AccessInterceptor`](crate::auth::AccessInterceptor) layer).
    pub access: crate::auth::Access,
    /// Cancelled when the server starts draining.
    pub shutdown: CancellationToken,
    /// Every stream task, so shutdown can wait for them.
    pub tasks: TaskTracker,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The lexicon failed to load or compile.
    #[error("cannot load the lexicon")]
    Dictionary(#[from] DictionaryError),
    /// The tokeniser's dictionary failed to load.
    #[error("cannot load the tokeniser dictionary")]
    Segmenter(#[from] crate::pipeline::segment::SegmentError),
    /// The listener or the transport failed.
    #[error("transport error")]
    Transport(#[from] tonic::transport::Error),
    /// The Redis URL was refused by the client (validated config should prevent this).
    #[error("invalid redis url")]
    Redis(#[from] redis::RedisError),
    /// The evidence log could not be opened.
    #[error("cannot open the evidence log")]
    Evidence(#[from] crate::evidence::EvidenceError),
    /// The reflection service could not read our descriptors (a build problem).
    #[error("cannot build the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A listener is exposed beyond loopback with authentication off.
    #[error(transparent)]
    Exposed(#[from] crate::auth::ExposureError),
}

/// Loads the lexicon in `config` and builds the pipelines: the shared one (with the policy's
/// `[default]` overlay, if any) and one per tenant whose overlay differs.
///
/// # Errors
/// Lexicon files that are missing or invalid (each problem with file:line), a bad overlay, or
/// a tokeniser failure.
pub fn load_pipelines(config: &Config) -> Result<Pipelines, ServerError> {
    let started = Instant::now();
    let pipelines = build_pipelines(config).inspect_err(|_| telemetry::lexicon_loaded(None))?;
    let shared = pipelines.shared().matcher();
    telemetry::lexicon_loaded(Some(shared.entries().len()));
    tracing::info!(
        entries = shared.entries().len(),
        patterns = shared.pattern_count(),
        tenant_overlays = pipelines.tenant_count(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "lexicon loaded"
    );
    Ok(pipelines)
}

/// The shared pipeline and the tenants' own, without logging or metrics (a reload reports
/// its own).
pub(crate) fn build_pipelines(config: &Config) -> Result<Pipelines, ServerError> {
    let lexicon = Lexicon::load_dir(&config.lexicon_dir)?;
    let build = |overlay: &crate::config::LexiconOverlay| -> Result<Pipeline, ServerError> {
        let matcher =
            Matcher::build(lexicon.with_overlay(overlay)?, JapaneseSegmenter::try_new()?)?;
        Ok(Pipeline::new(matcher))
    };
    let default = &config.policy.default;
    let shared = build(&default.lexicon)?.masking_personal_data(default.mask_personal_data);
    let mut tenants = std::collections::HashMap::new();
    for (tenant, policy) in &config.policy.tenants {
        let pipeline = if policy.lexicon != default.lexicon {
            build(&policy.lexicon)?
        } else if policy.mask_personal_data != default.mask_personal_data {
            shared.clone() // the same automaton; only the masking differs
        } else {
            continue;
        };
        tenants.insert(tenant.clone(), pipeline.masking_personal_data(policy.mask_personal_data));
    }
    Ok(Pipelines::new(shared, tenants))
}

/// The shared pipeline alone, for tools that screen without a tenant (benches, `lexicon
/// check`); tenant overlays are still loaded and validated.
///
/// # Errors
/// As [`load_pipelines`].
pub fn load_pipeline(config: &Config) -> Result<Pipeline, ServerError> {
    Ok(load_pipelines(config)?.shared().clone())
}

/// The alert hub: in memory for one node, or over Redis when configured. An unreachable Redis
/// does not stop the start: the node screens and delivers to its own supervisors, buffering
/// alert events until Redis answers (docs/scale-out.md, "Redis down").
///
/// # Errors
/// A Redis URL the client refuses.
async fn alert_hub(
    config: &Config,
    tasks: &TaskTracker,
    token: &CancellationToken,
) -> Result<AlertHub, ServerError> {
    let history = config.policy.alert_history();
    let Some(redis) = &config.redis else {
        return Ok(AlertHub::new(config.alert_buffer, history));
    };
    let target = RedisTarget::new(&redis.url, redis.timeout)?;
    let ledger = Arc::new(AckLedger::new(history.clone()));
    let bus_config = RedisBusConfig {
        queue: config.alert_buffer,
        history,
        stream_maxlen: redis.stream_maxlen,
        buffer: redis.buffer,
    };
    let bus = RedisBus::start(&target, bus_config, Arc::clone(&ledger), tasks, token.clone()).await;
    tracing::info!(node = bus.node(), "alert bus on redis");
    Ok(AlertHub::with_bus(Box::new(bus), ledger))
}

/// Serves the screening and alert services (plus health and reflection) on `listener` until
/// `shutdown` resolves, then drains.
///
/// # Errors
/// A lexicon that fails to load, or a transport failure.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    run_with_console(listener, None, config, shutdown).await
}

/// Like [`run`], and also serves the supervisor console on `console` when given; it stops and
/// drains with the gRPC services.
///
/// # Errors
/// A lexicon that fails to load, or a transport failure.
pub async fn run_with_console(
    listener: TcpListener,
    console: Option<TcpListener>,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let addrs: Vec<_> = std::iter::once(&listener)
        .chain(console.as_ref())
        .filter_map(|l| l.local_addr().ok())
        .collect();
    crate::auth::check_exposure(&config.access, &addrs)?;
    let pipelines = load_pipelines(&config)?;
    let token = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut hub = alert_hub(&config, &tasks, &token).await?;
    if let Some(evidence) = &config.evidence_log {
        hub = hub.with_evidence_log(EvidenceLog::open(evidence)?);
        tracing::info!(path = %evidence.path.display(), fsync = ?evidence.fsync, "evidence log open");
    }
    let callers: Box<dyn CallState> = match &config.redis {
        None => Box::new(CallerHistory::default()),
        Some(redis) => Box::new(RedisCallState::start(
            &RedisTarget::new(&redis.url, redis.timeout)?,
            &tasks,
            token.clone(),
        )),
    };
    let shared = Arc::new(Shared {
        rules: LiveRules::new(Rules { pipelines, policy: config.policy.clone() }, config.clone()),
        hub,
        heartbeat_interval: config.heartbeat_interval,
        alert_ids: AlertIds::default(),
        callers,
        live: crate::limits::LiveConversations::new(config.limits),
        subscribers: crate::limits::SubscriberSlots::new(config.limits),
        access: config.access.clone(),
        shutdown: token.clone(),
        tasks,
    });

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<ScreeningServiceServer<Screening>>().await;
    health.set_serving::<AlertServiceServer<Alerts>>().await;
    health.set_serving::<AdminServiceServer<Admin>>().await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let drain = {
        let token = token.clone();
        let health = health.clone();
        async move {
            shutdown.await;
            tracing::info!("shutting down: health NOT_SERVING, draining streams");
            health.set_not_serving::<ScreeningServiceServer<Screening>>().await;
            health.set_not_serving::<AlertServiceServer<Alerts>>().await;
            health.set_not_serving::<AdminServiceServer<Admin>>().await;
            token.cancel();
        }
    };
    tokio::spawn(drain);

    if config.reload_on_sighup {
        reload_on_sighup(&shared);
    }
    if let Some(console) = console {
        let shared = Arc::clone(&shared);
        shared.tasks.clone().spawn(async move {
            if let Err(error) = crate::console::serve(console, shared).await {
                tracing::error!(%error, "console stopped");
            }
        });
    }
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving");
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    let max_message = config.limits.max_message_bytes;
    let serve = builder
        // Every request is authenticated before it reaches a service; the handlers then check
        // role and tenant with `auth::authorize`.
        .layer(tonic::service::InterceptorLayer::new(crate::auth::AccessInterceptor(
            config.access.clone(),
        )))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            ScreeningServiceServer::new(Screening::new(Arc::clone(&shared)))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            AlertServiceServer::new(Alerts::new(Arc::clone(&shared)))
                .max_decoding_message_size(max_message),
        )
        .add_service(
            AdminServiceServer::new(Admin::new(Arc::clone(&shared)))
                .max_decoding_message_size(max_message),
        )
        .serve_with_incoming_shutdown(accepting(listener), token.clone().cancelled_owned());
    // Everything after the signal shares one grace period: connections closing (an open
    // health Watch or reflection stream never closes by itself, tonic#1820) and the stream
    // tasks finishing. Past it the server stops waiting and returns; the process exits.
    let drained = async {
        serve.await?;
        shared.tasks.close();
        shared.tasks.wait().await;
        Ok::<_, ServerError>(())
    };
    let grace_over = async {
        token.cancelled().await;
        tokio::time::sleep(config.shutdown_grace).await;
    };
    tokio::select! {
        drained = drained => drained?,
        () = grace_over => {
            tracing::warn!(grace = ?config.shutdown_grace, "connections still open after the grace period");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// The gRPC connections accepted on `listener`, with `TCP_NODELAY` set on each. Tonic sets
/// it only on listeners it binds itself; without it, Nagle's algorithm holds a small verdict
/// frame back while an earlier one is unacknowledged, which on loopback with delayed ACKs
/// shows as tens of milliseconds of tail latency.
fn accepting(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Reloads the lexicons and policy on every SIGHUP until shutdown; a failed reload is logged
/// (with every problem) and the rules in use stay.
fn reload_on_sighup(shared: &Arc<Shared>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGHUP; reload by RPC only");
                return;
            }
        };
        let shared = Arc::clone(shared);
        let token = shared.shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    hangup = hangups.recv() => {
                        if hangup.is_none() {
                            break;
                        }
                        tracing::info!("SIGHUP: reloading the lexicons and policy");
                        // The outcome is logged and counted inside `reload`.
                        let _ = shared.rules.reload().await;
                    }
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        let _ = shared;
        tracing::warn!("no SIGHUP on this platform; reload by RPC only");
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    /// Accepted gRPC connections have Nagle's algorithm off.
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let mut incoming = accepting(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming.next().await.expect("a connection").expect("accepted");
        assert!(accepted.nodelay().expect("read TCP_NODELAY"), "help: TCP_NODELAY is off");
    }
}
