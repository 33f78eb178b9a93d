//! The load generator behind `kasuhara-guard loadgen`: many concurrent conversations over real
//! gRPC against one running server or several nodes sharing Redis, plus one supervisor on
//! `AlertService.Subscribe`, with latency histograms and the servers' CPU and memory.
//!
//! ```text
//! conversation tasks ── Screen streams (interims, then a final) ──▶ node 0, 1, … (i mod N)
//!        ▲ verdict latency: segment sent → its verdict back          │
//!        └── sent times per (conversation, seq) ◀── subscriber ◀──────┘ Subscribe (one node)
//!                                              alert latency: segment sent → alert seen
//! ```
//!
//! With several nodes, conversation `i` is screened by node `i mod N` (each HTTP/2 connection
//! goes to one node), and an alert of a conversation screened on another node than the
//! subscriber's is *cross-node*: it went through the shared Redis stream
//! (docs/scale-out.md), and its latency is also reported on its own.
//!
//! Each conversation speaks utterances from a corpus: an utterance goes out as a few growing
//! interim hypotheses (prefixes of its text) and then its final text, as a streaming ASR would
//! send it. Three modes:
//!
//! - **paced**: open loop, `rate` segments/s spread evenly over the conversations (with the
//!   default rate, 3.5 segments/s per conversation: 2–5 interims/s and a final every 2–6 s).
//!   A segment is sent on its tick whether or not earlier verdicts are back.
//! - **saturation**: closed loop, each conversation sends its next segment as soon as the
//!   verdict for the previous one arrives; the throughput is what the server sustains.
//! - **idle**: every conversation opens and sends one final segment, then holds the stream
//!   open for the duration; the server's RSS growth divided by the conversations is the
//!   memory of one idle stream.
//!
//! Latencies are recorded from the moment the segment is handed to the stream's send buffer,
//! so in paced mode a server that falls behind shows up as latency, not as a lower send rate
//! (no coordinated omission up to the buffer, which is one segment deep).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::pb;
use crate::pb::alert_service_client::AlertServiceClient;
use crate::pb::screening_service_client::ScreeningServiceClient;

/// Conversations multiplexed on one HTTP/2 connection. Servers cap concurrent streams per
/// connection (hyper's default is 200), and a platform with many calls opens several
/// connections, so we do too.
const CONVERSATIONS_PER_CONNECTION: usize = 100;
/// Sent times remembered per conversation for matching alerts; older ones are forgotten, so
/// a run's memory stays flat however long it lasts.
const SENT_TIMES_KEPT: usize = 256;
/// The tenant every generated conversation belongs to, and the subscriber listens to.
const TENANT: &str = "loadgen";
/// Slowest and fastest latency the histograms hold, in microseconds (1 µs to 60 s).
const LATENCY_RANGE_US: (u64, u64) = (1, 60_000_000);
/// Default segments per second per conversation in paced mode: a final plus 2–5 interims
/// every 2–6 s of speech comes to about this.
pub const DEFAULT_SEGMENTS_PER_CONVERSATION: f64 = 3.5;

/// How the load is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A fixed total rate, open loop.
    Paced,
    /// As fast as verdicts come back, closed loop per conversation.
    Saturation,
    /// Open the conversations and hold them.
    Idle,
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The nodes to screen on, e.g. `["http://127.0.0.1:50051"]`; at least one. Conversation
    /// `i` goes to `endpoints[i % endpoints.len()]`, so every node gets an equal share.
    pub endpoints: Vec<String>,
    /// The node the supervisor subscription connects to; `None` is `endpoints[0]`. Alerts of
    /// conversations on any other address are cross-node (they reach it through Redis).
    pub subscribe_endpoint: Option<String>,
    /// Concurrent conversations.
    pub conversations: usize,
    /// Total segments per second in paced mode.
    pub rate: f64,
    /// How long to apply load (or hold idle streams).
    pub duration: Duration,
    /// Paced, saturation or idle.
    pub mode: Mode,
    /// Utterance texts to speak, cycled.
    pub corpus: Arc<Vec<String>>,
    /// The servers' processes on this machine, for CPU and RSS (any number; empty when none
    /// is local). With several, [`Report::server`] sums them and [`Report::servers`] lists
    /// each.
    pub server_pids: Vec<u32>,
    /// Print progress on stderr once a second.
    pub progress: bool,
    /// Bearer token sent on every `Screen` stream, for a server with authentication on: a
    /// producer (or admin) token for the tenant `loadgen` (or `*`).
    pub token: Option<String>,
    /// Bearer token of the subscription: a supervisor (or admin) token for `loadgen`; `None`
    /// is [`token`](Self::token).
    pub subscribe_token: Option<String>,
}

/// Why a run could not take place.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The corpus file could not be read.
    #[error("cannot read the corpus {path}")]
    Corpus {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The corpus holds no text.
    #[error("the corpus {0} holds no text")]
    EmptyCorpus(PathBuf),
    /// A token cannot be sent as an `authorization` header.
    #[error("the token is not a valid header value (printable ASCII only)")]
    Token,
    /// [`LoadConfig::endpoints`] is empty.
    #[error("no server address to load: give at least one endpoint")]
    NoEndpoints,
    /// The server could not be reached.
    #[error("cannot connect to {endpoint}")]
    Connect {
        /// The address tried.
        endpoint: String,
        /// The cause.
        #[source]
        source: tonic::transport::Error,
    },
    /// `--spawn`: the server process could not be started or did not start serving.
    #[error("cannot start the server")]
    Spawn(#[source] std::io::Error),
    /// The address is not a valid URI.
    #[error("invalid address {0:?}")]
    Address(String),
    /// The supervisor subscription was refused.
    #[error("subscribe failed: {0}")]
    Subscribe(tonic::Status),
}

/// Reads utterance texts from a file: JSON Lines with a `"text"` field (the `../shared/eval`
/// format), or plain text, one utterance a line.
///
/// # Errors
/// An unreadable file, or one without any text.
pub fn load_corpus(path: &Path) -> Result<Vec<String>, LoadError> {
    let content = std::fs::read_to_string(path)
        .map_err(|source| LoadError::Corpus { path: path.to_owned(), source })?;
    let texts: Vec<String> = content
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("text").and_then(|t| t.as_str()).map(str::to_owned))
                .unwrap_or_else(|| line.to_owned())
        })
        .filter(|text| !text.is_empty() && text.len() <= crate::conversation::MAX_TEXT_BYTES)
        .collect();
    if texts.is_empty() {
        return Err(LoadError::EmptyCorpus(path.to_owned()));
    }
    Ok(texts)
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Slowest.
    pub max: f64,
    /// How many samples.
    pub count: u64,
}

impl Percentiles {
    fn of(histogram: &Histogram<u64>) -> Self {
        let ms = |us: u64| us as f64 / 1000.0;
        Self {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            count: histogram.len(),
        }
    }
}

/// Server resource use over the run, from `/proc/<pid>`: of one process, or summed over
/// several (see [`Report::server`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerUsage {
    /// CPU time used during the run divided by wall time, in percent of one core; summed
    /// over processes, so two nodes each busy on one full core report 200.
    pub cpu_percent: f64,
    /// Resident memory before the conversations opened, in bytes (summed over processes).
    pub rss_before_bytes: u64,
    /// Resident memory with the conversations open (at the end of the load), in bytes
    /// (summed over processes).
    pub rss_loaded_bytes: u64,
    /// Peak resident memory (VmHWM), in bytes; summed over processes, the sum of each one's
    /// own peak (an upper bound: the peaks need not coincide).
    pub rss_peak_bytes: u64,
    /// `(rss_loaded - rss_before) / conversations`: the memory of one open conversation
    /// (over all processes, as each conversation is open on one of them).
    pub rss_per_conversation_bytes: u64,
}

impl ServerUsage {
    /// One process's usage from its samples before, with the load on, and after the run;
    /// its memory growth is divided over all `conversations` of the run.
    fn of(
        before: ProcSample,
        loaded: ProcSample,
        after: ProcSample,
        elapsed: Duration,
        conversations: usize,
    ) -> Self {
        Self {
            cpu_percent: 100.0 * (after.cpu_seconds - before.cpu_seconds)
                / elapsed.as_secs_f64().max(1e-9),
            rss_before_bytes: before.rss_bytes,
            rss_loaded_bytes: loaded.rss_bytes,
            rss_peak_bytes: after.rss_peak_bytes,
            rss_per_conversation_bytes: loaded.rss_bytes.saturating_sub(before.rss_bytes)
                / conversations.max(1) as u64,
        }
    }

    /// The sum over processes, with the per-conversation memory worked out over `conversations`.
    fn total(usages: &[ServerUsage], conversations: usize) -> Self {
        let mut total = usages.iter().fold(Self::default(), |sum, u| Self {
            cpu_percent: sum.cpu_percent + u.cpu_percent,
            rss_before_bytes: sum.rss_before_bytes + u.rss_before_bytes,
            rss_loaded_bytes: sum.rss_loaded_bytes + u.rss_loaded_bytes,
            rss_peak_bytes: sum.rss_peak_bytes + u.rss_peak_bytes,
            rss_per_conversation_bytes: 0,
        });
        total.rss_per_conversation_bytes =
            total.rss_loaded_bytes.saturating_sub(total.rss_before_bytes)
                / conversations.max(1) as u64;
        total
    }
}

/// One server process's share of the load, in [`Report::servers`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ServerShare {
    /// The process id, as given in [`LoadConfig::server_pids`].
    pub pid: u32,
    /// Its own figures; its `rss_per_conversation_bytes` is its memory growth divided over
    /// all the run's conversations, i.e. its part of the total's figure. Absent when
    /// `/proc/<pid>` could not be read at the start, near the end or after the run (another
    /// machine, or the process exited).
    #[serde(flatten)]
    pub usage: Option<ServerUsage>,
}

/// What a run measured; printed as the last JSON line.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The mode.
    pub mode: Mode,
    /// Concurrent conversations.
    pub conversations: usize,
    /// Wall time of the load phase, in seconds.
    pub duration_s: f64,
    /// Segments sent.
    pub segments: u64,
    /// Segments sent to each node, in [`LoadConfig::endpoints`] order (one entry with one
    /// node), so a reader can see that the load was spread.
    pub segments_per_node: Vec<u64>,
    /// Segments sent per second of load.
    pub segments_per_s: f64,
    /// Customer text sent per second, in chars.
    pub chars_per_s: f64,
    /// Verdicts received.
    pub verdicts: u64,
    /// Alerts (new, confirmed or provisional) seen by the subscriber for our conversations.
    pub alerts: u64,
    /// Updates (confirmations, retractions) seen by the subscriber.
    pub alert_updates: u64,
    /// Subscriber events lost because the stream lagged, or alerts whose segment had been
    /// forgotten; counted, not timed.
    pub alerts_unmatched: u64,
    /// Streams that failed to open or ended with an error status.
    pub errors: u64,
    /// Segment sent → its verdict received.
    pub verdict_latency_ms: Percentiles,
    /// Segment sent → its alert on the subscriber stream, every matched alert.
    pub alert_latency_ms: Percentiles,
    /// The same for cross-node alerts only: those of conversations screened on another
    /// address than the subscriber's, delivered through Redis. `count` 0 (and zero figures)
    /// when every conversation ran on the subscriber's node, as with a single node.
    pub cross_node_alert_latency_ms: Percentiles,
    /// The servers' CPU and memory, when their pids are known: one process's figures, or
    /// with several pids the sum over all of them (CPU percent of one core added up, RSS
    /// added up; see [`ServerUsage`]); `None` unless every pid could be read.
    pub server: Option<ServerUsage>,
    /// One entry per pid in [`LoadConfig::server_pids`], in that order, so each node's share
    /// is visible; empty when no pid was given.
    pub servers: Vec<ServerShare>,
}

/// One conversation's sent segments, for matching verdicts and alerts to their send time.
#[derive(Debug, Default)]
struct SentTimes {
    recent: Mutex<VecDeque<(u64, Instant)>>,
}

impl SentTimes {
    fn record(&self, seq: u64, at: Instant) {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == SENT_TIMES_KEPT {
            recent.pop_front();
        }
        recent.push_back((seq, at));
    }

    fn get(&self, seq: u64) -> Option<Instant> {
        let recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        // Seqs are pushed in increasing order.
        recent.binary_search_by_key(&seq, |&(s, _)| s).ok().map(|i| recent[i].1)
    }
}

/// Counters and histograms shared by every task of a run.
struct Recorder {
    sent: Vec<SentTimes>,
    /// Per node (conversation `i` runs on node `i % len`): whether it has the subscriber's
    /// address. By address, not position, so a node listed twice is still the same node, and
    /// a subscriber on none of the nodes makes every alert cross-node.
    on_subscriber_node: Vec<bool>,
    segments: AtomicU64,
    segments_per_node: Vec<AtomicU64>,
    chars: AtomicU64,
    verdicts: AtomicU64,
    alerts: AtomicU64,
    alert_updates: AtomicU64,
    alerts_unmatched: AtomicU64,
    errors: AtomicU64,
    verdict_latency: Mutex<Histogram<u64>>,
    alert_latency: Mutex<Histogram<u64>>,
    cross_node_alert_latency: Mutex<Histogram<u64>>,
}

impl Recorder {
    fn new(conversations: usize, on_subscriber_node: Vec<bool>) -> Self {
        let histogram = || {
            // Invariant: the range constants are valid (low ≥ 1, high ≥ 2 × low, sigfig 3).
            Histogram::new_with_bounds(LATENCY_RANGE_US.0, LATENCY_RANGE_US.1, 3)
                .expect("valid histogram bounds")
        };
        Self {
            sent: (0..conversations).map(|_| SentTimes::default()).collect(),
            segments: AtomicU64::new(0),
            segments_per_node: on_subscriber_node.iter().map(|_| AtomicU64::new(0)).collect(),
            on_subscriber_node,
            chars: AtomicU64::new(0),
            verdicts: AtomicU64::new(0),
            alerts: AtomicU64::new(0),
            alert_updates: AtomicU64::new(0),
            alerts_unmatched: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            verdict_latency: Mutex::new(histogram()),
            alert_latency: Mutex::new(histogram()),
            cross_node_alert_latency: Mutex::new(histogram()),
        }
    }

    /// The node conversation `index` runs on.
    fn node_of(&self, index: usize) -> usize {
        index % self.on_subscriber_node.len()
    }

    /// Whether conversation `index`'s alerts reach the subscriber from another node.
    fn is_cross_node(&self, index: usize) -> bool {
        !self.on_subscriber_node[self.node_of(index)]
    }

    fn latency(histogram: &Mutex<Histogram<u64>>, since: Instant) {
        let us = (since.elapsed().as_micros() as u64).clamp(LATENCY_RANGE_US.0, LATENCY_RANGE_US.1);
        // saturating_record never fails: the value is clamped to the range anyway.
        histogram.lock().unwrap_or_else(|p| p.into_inner()).saturating_record(us);
    }

    fn error(&self) {
        self.errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// The conversation id of the conversation with index `index`; the subscriber parses it back.
fn conversation_id(index: usize) -> String {
    format!("lg-{index}")
}

fn conversation_index(id: &str) -> Option<usize> {
    id.strip_prefix("lg-")?.parse().ok()
}

/// A small deterministic generator (xorshift64*), so runs are repeatable without a crate.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

/// The segments of one utterance as an ASR would stream it: 2–5 growing interim prefixes,
/// then the final text. Texts of a few chars go out final only.
fn utterance_segments(text: &str, rng: &mut Rng) -> Vec<(String, bool)> {
    let chars: Vec<char> = text.chars().collect();
    let interims = if chars.len() < 6 { 0 } else { 2 + rng.below(4) as usize };
    let mut segments: Vec<(String, bool)> = (1..=interims)
        .map(|i| (chars[..chars.len() * i / (interims + 1)].iter().collect(), false))
        .collect();
    segments.push((text.to_owned(), true));
    segments
}

/// Whether two endpoints name the same server: the same scheme and authority (host and port
/// as written, host case-insensitive), so `http://node-b:50051` and `http://NODE-B:50051/`
/// match. Addresses that do not parse are compared as strings.
fn same_address(a: &str, b: &str) -> bool {
    match (a.parse::<tonic::transport::Uri>(), b.parse::<tonic::transport::Uri>()) {
        (Ok(a), Ok(b)) => a.scheme() == b.scheme() && a.authority() == b.authority(),
        _ => a == b,
    }
}

/// An `authorization` header value, ready to attach to requests.
type Authorization = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// `Bearer <token>` as a header value; `None` without a token.
fn authorization(token: Option<&str>) -> Result<Option<Authorization>, LoadError> {
    token.map(|t| crate::auth::bearer_header(t).map_err(|_| LoadError::Token)).transpose()
}

/// `message` as a request, with the `authorization` header when there is one.
fn authorized<T>(message: T, authorization: Option<Authorization>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Runs one load against `config.endpoints` and returns what it measured.
///
/// # Errors
/// No endpoint is given, a node cannot be reached, or the subscription is refused. Failures
/// of single streams are counted in [`Report::errors`], not returned.
pub async fn run(config: LoadConfig) -> Result<Report, LoadError> {
    if config.endpoints.is_empty() {
        return Err(LoadError::NoEndpoints);
    }
    let connect = |endpoint: String| async move {
        let channel = Channel::from_shared(endpoint.clone())
            .map_err(|_| LoadError::Address(endpoint.clone()))?
            .connect()
            .await
            .map_err(|source| LoadError::Connect { endpoint, source })?;
        Ok::<_, LoadError>(channel)
    };
    // channels[node][k] carries that node's conversations i with (i / nodes) / 100 == k: each
    // connection goes to one node, and every node is connected to (and so checked) even when
    // it gets no conversation.
    let nodes = config.endpoints.len();
    let mut channels = Vec::with_capacity(nodes);
    for (node, endpoint) in config.endpoints.iter().enumerate() {
        let conversations = (config.conversations + nodes - 1 - node) / nodes;
        let mut node_channels = Vec::new();
        for _ in 0..conversations.div_ceil(CONVERSATIONS_PER_CONNECTION).max(1) {
            node_channels.push(connect(endpoint.clone()).await?);
        }
        channels.push(node_channels);
    }

    let subscribe_endpoint =
        config.subscribe_endpoint.clone().unwrap_or_else(|| config.endpoints[0].clone());
    let on_subscriber_node =
        config.endpoints.iter().map(|endpoint| same_address(endpoint, &subscribe_endpoint));
    let recorder = Arc::new(Recorder::new(config.conversations, on_subscriber_node.collect()));
    let screen_authorization = authorization(config.token.as_deref())?;
    let subscribe_authorization =
        authorization(config.subscribe_token.as_deref().or(config.token.as_deref()))?;
    let mut alerts_client = AlertServiceClient::new(connect(subscribe_endpoint).await?);
    let subscription = pb::SubscribeRequest { tenant_id: TENANT.into(), ..Default::default() };
    let events = alerts_client
        .subscribe(authorized(subscription, subscribe_authorization))
        .await
        .map_err(LoadError::Subscribe)?
        .into_inner();
    let subscriber = tokio::spawn(subscribe(events, Arc::clone(&recorder)));

    let sample_all = || -> Vec<Option<ProcSample>> {
        config.server_pids.iter().map(|&pid| ProcSample::read(pid)).collect()
    };
    let usage_before = sample_all();
    let started = Instant::now();
    let stop_at = tokio::time::Instant::now() + config.duration;
    let (opened_tx, mut opened_rx) = mpsc::channel::<()>(config.conversations.max(1));
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..config.conversations {
        let channel = &channels[index % nodes][index / nodes / CONVERSATIONS_PER_CONNECTION];
        tasks.spawn(converse(
            ScreeningServiceClient::new(channel.clone()),
            index,
            config.clone(),
            Arc::clone(&recorder),
            stop_at,
            opened_tx.clone(),
            screen_authorization.clone(),
        ));
    }
    drop(opened_tx);

    // Progress, and in idle mode the RSS once every conversation is open.
    let mut opened = 0usize;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    ticker.tick().await;
    let mut last_segments = 0;
    let mut loaded_rss: Vec<Option<ProcSample>> = vec![None; config.server_pids.len()];
    loop {
        tokio::select! {
            more = opened_rx.recv() => match more {
                Some(()) => opened += 1,
                None => break,
            },
            _ = ticker.tick() => {
                let segments = recorder.segments.load(Ordering::Relaxed);
                if config.progress {
                    eprintln!(
                        "[{:>4.0}s] open {opened}/{} · {} segments/s · verdicts {} · alerts {} · errors {}",
                        started.elapsed().as_secs_f64(),
                        config.conversations,
                        segments - last_segments,
                        recorder.verdicts.load(Ordering::Relaxed),
                        recorder.alerts.load(Ordering::Relaxed),
                        recorder.errors.load(Ordering::Relaxed),
                    );
                }
                last_segments = segments;
                // The loaded sample is taken near the end of the load, while every stream is
                // still open.
                if tokio::time::Instant::now() + Duration::from_millis(1500) >= stop_at {
                    for (loaded, &pid) in loaded_rss.iter_mut().zip(&config.server_pids) {
                        *loaded = loaded.or_else(|| ProcSample::read(pid));
                    }
                }
            }
        }
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    let usage_after = sample_all();
    // Give the subscriber a moment to receive the last alerts, then stop it.
    tokio::time::sleep(Duration::from_millis(200)).await;
    subscriber.abort();
    let _ = subscriber.await;

    let servers: Vec<ServerShare> = config
        .server_pids
        .iter()
        .zip(usage_before.into_iter().zip(loaded_rss).zip(usage_after))
        .map(|(&pid, ((before, loaded), after))| ServerShare {
            pid,
            usage: match (before, loaded.or(after), after) {
                (Some(before), Some(loaded), Some(after)) => {
                    Some(ServerUsage::of(before, loaded, after, elapsed, config.conversations))
                }
                _ => None,
            },
        })
        .collect();
    let usages: Option<Vec<ServerUsage>> = servers.iter().map(|share| share.usage).collect();
    let server = usages
        .filter(|usages| !usages.is_empty())
        .map(|usages| ServerUsage::total(&usages, config.conversations));
    let load_seconds = elapsed.as_secs_f64().max(1e-9);
    let segments = recorder.segments.load(Ordering::Relaxed);
    let percentiles = |histogram: &Mutex<Histogram<u64>>| {
        Percentiles::of(&histogram.lock().unwrap_or_else(|p| p.into_inner()))
    };
    let report = Report {
        mode: config.mode,
        conversations: config.conversations,
        duration_s: load_seconds,
        segments,
        segments_per_node: recorder
            .segments_per_node
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect(),
        segments_per_s: segments as f64 / load_seconds,
        chars_per_s: recorder.chars.load(Ordering::Relaxed) as f64 / load_seconds,
        verdicts: recorder.verdicts.load(Ordering::Relaxed),
        alerts: recorder.alerts.load(Ordering::Relaxed),
        alert_updates: recorder.alert_updates.load(Ordering::Relaxed),
        alerts_unmatched: recorder.alerts_unmatched.load(Ordering::Relaxed),
        errors: recorder.errors.load(Ordering::Relaxed),
        verdict_latency_ms: percentiles(&recorder.verdict_latency),
        alert_latency_ms: percentiles(&recorder.alert_latency),
        cross_node_alert_latency_ms: percentiles(&recorder.cross_node_alert_latency),
        server,
        servers,
    };
    Ok(report)
}

/// The supervisor: times every alert of our tenant against its segment's send time.
async fn subscribe(mut events: tonic::Streaming<pb::AlertEvent>, recorder: Arc<Recorder>) {
    while let Some(event) = events.next().await {
        let Ok(event) = event else {
            recorder.error();
            return;
        };
        match event.kind {
            Some(pb::alert_event::Kind::Alert(alert)) => {
                recorder.alerts.fetch_add(1, Ordering::Relaxed);
                let sent = conversation_index(&alert.conversation_id)
                    .and_then(|i| Some((i, recorder.sent.get(i)?.get(alert.seq)?)));
                match sent {
                    Some((index, at)) => {
                        Recorder::latency(&recorder.alert_latency, at);
                        if recorder.is_cross_node(index) {
                            Recorder::latency(&recorder.cross_node_alert_latency, at);
                        }
                    }
                    None => {
                        recorder.alerts_unmatched.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(pb::alert_event::Kind::Update(_)) => {
                recorder.alert_updates.fetch_add(1, Ordering::Relaxed);
            }
            // Heartbeats, acknowledgements and summaries carry no latency; a gap notice means
            // this subscriber fell behind, which shows as fewer alerts than expected.
            Some(
                pb::alert_event::Kind::Summary(_)
                | pb::alert_event::Kind::Heartbeat(_)
                | pb::alert_event::Kind::Gap(_)
                | pb::alert_event::Kind::Acknowledgement(_),
            )
            | None => {}
        }
    }
}

/// One conversation: opens a `Screen` stream, speaks utterances until `stop_at`, ends it.
async fn converse(
    mut client: ScreeningServiceClient<Channel>,
    index: usize,
    config: LoadConfig,
    recorder: Arc<Recorder>,
    stop_at: tokio::time::Instant,
    opened: mpsc::Sender<()>,
    authorization: Option<Authorization>,
) {
    use pb::screen_request::Kind;

    // One request of buffer: a send that waits here is the server not reading, and counts in
    // the latency of the segment that waited.
    let (tx, rx) = mpsc::channel::<pb::ScreenRequest>(1);
    let start = pb::ScreenRequest {
        kind: Some(Kind::Start(pb::ConversationStart {
            conversation_id: conversation_id(index),
            tenant_id: TENANT.into(),
            channel: pb::Channel::Voice.into(),
            customer_id: format!("lg-customer-{index}"),
            queue: "loadgen".into(),
            agent_id: String::new(),
            started_at: None,
        })),
    };
    if tx.send(start).await.is_err() {
        return;
    }
    let responses = match client.screen(authorized(ReceiverStream::new(rx), authorization)).await {
        Ok(r) => r.into_inner(),
        Err(_) => {
            recorder.error();
            return;
        }
    };
    // Saturation mode: the sender may only run one verdict ahead.
    let window = Arc::new(Semaphore::new(1));
    let reader = tokio::spawn(read_verdicts(
        responses,
        index,
        Arc::clone(&recorder),
        (config.mode != Mode::Paced).then(|| Arc::clone(&window)),
    ));

    if config.mode != Mode::Idle {
        let _ = opened.send(()).await;
    }
    let mut rng = Rng::new(index as u64 + 1);
    let mut seq = 0u64;
    let mut speech_ms = 0u64;
    let send = |text: String, is_final: bool, seq: u64, speech_ms: u64| {
        recorder.sent[index].record(seq, Instant::now());
        recorder.segments.fetch_add(1, Ordering::Relaxed);
        recorder.segments_per_node[recorder.node_of(index)].fetch_add(1, Ordering::Relaxed);
        recorder.chars.fetch_add(text.chars().count() as u64, Ordering::Relaxed);
        pb::ScreenRequest {
            kind: Some(Kind::Segment(pb::Segment {
                seq,
                speaker: pb::Speaker::Customer.into(),
                text,
                is_final,
                start_ms: speech_ms,
                end_ms: speech_ms + 300,
            })),
        }
    };

    let period = Duration::from_secs_f64(config.conversations as f64 / config.rate.max(1e-3));
    // Spread the conversations' first ticks over one period, so the load is even.
    let first = tokio::time::Instant::now()
        + period.mul_f64(rng.below(1000) as f64 / 1000.0).min(config.duration);
    let mut ticks = tokio::time::interval_at(first, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);

    let mut corpus_position = rng.below(config.corpus.len() as u64) as usize;
    let mut announced = config.mode != Mode::Idle;
    'talk: while tokio::time::Instant::now() < stop_at {
        let text = &config.corpus[corpus_position % config.corpus.len()];
        corpus_position += 1;
        let segments = match config.mode {
            // An idle conversation says one thing, so its state really exists, then waits.
            Mode::Idle => vec![(text.clone(), true)],
            _ => utterance_segments(text, &mut rng),
        };
        for (text, is_final) in segments {
            match config.mode {
                Mode::Paced => {
                    tokio::select! {
                        _ = ticks.tick() => {}
                        () = tokio::time::sleep_until(stop_at) => break 'talk,
                    }
                }
                Mode::Saturation | Mode::Idle => match window.acquire().await {
                    Ok(permit) => permit.forget(),
                    // The reader closed the window: the stream failed.
                    Err(_) => break 'talk,
                },
            }
            if tokio::time::Instant::now() >= stop_at {
                break 'talk;
            }
            seq += 1;
            speech_ms += 400;
            if tx.send(send(text, is_final, seq, speech_ms)).await.is_err() {
                break 'talk;
            }
        }
        if config.mode == Mode::Idle {
            // Wait for the verdict of the one segment, then hold the stream.
            let _ = window.acquire().await.map(|p| p.forget());
            if !announced {
                let _ = opened.send(()).await;
                announced = true;
            }
            tokio::time::sleep_until(stop_at).await;
        }
    }
    if !announced {
        let _ = opened.send(()).await;
    }
    let _ = tx.send(pb::ScreenRequest { kind: Some(Kind::End(pb::ConversationEnd {})) }).await;
    drop(tx);
    let _ = reader.await;
}

/// Reads one conversation's responses: times each verdict, counts errors, and in closed-loop
/// modes releases the sender's next segment.
async fn read_verdicts(
    mut responses: tonic::Streaming<pb::ScreenResponse>,
    index: usize,
    recorder: Arc<Recorder>,
    window: Option<Arc<Semaphore>>,
) {
    while let Some(response) = responses.next().await {
        match response {
            Ok(pb::ScreenResponse { kind: Some(pb::screen_response::Kind::Verdict(v)) }) => {
                recorder.verdicts.fetch_add(1, Ordering::Relaxed);
                if let Some(at) = recorder.sent[index].get(v.seq) {
                    Recorder::latency(&recorder.verdict_latency, at);
                }
                if let Some(window) = &window {
                    window.add_permits(1);
                }
            }
            Ok(_) => {}
            Err(_) => {
                recorder.error();
                if let Some(window) = &window {
                    // Unblock the sender so the conversation can end.
                    window.close();
                }
                return;
            }
        }
    }
}

/// A server process started by the load generator (`loadgen --spawn`); killed when dropped.
#[derive(Debug)]
pub struct SpawnedServer {
    child: std::process::Child,
    /// Where it serves, e.g. `http://127.0.0.1:40123`.
    pub endpoint: String,
    /// Its process id, for CPU and RSS.
    pub pid: u32,
    /// From spawning the process to its health check answering SERVING.
    pub startup: Duration,
}

impl Drop for SpawnedServer {
    fn drop(&mut self) {
        // The server holds nothing worth draining after a load run.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `exe serve` on a free loopback port with the lexicon in `lexicon_dir`, and waits
/// (at most 30 s) until its health check answers SERVING.
///
/// # Errors
/// The process cannot start, or it is not serving in time.
pub async fn spawn_server(exe: &Path, lexicon_dir: &Path) -> Result<SpawnedServer, LoadError> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(LoadError::Spawn)?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let child = std::process::Command::new(exe)
        .args(["serve", "--addr", &addr, "--lexicon-dir"])
        .arg(lexicon_dir)
        .env("KASUHARA_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .spawn()
        .map_err(LoadError::Spawn)?;
    let mut server = SpawnedServer {
        pid: child.id(),
        child,
        endpoint: format!("http://{addr}"),
        startup: Duration::ZERO,
    };
    let deadline = started + Duration::from_secs(30);
    loop {
        let serving = async {
            let channel =
                Channel::from_shared(server.endpoint.clone()).ok()?.connect().await.ok()?;
            let mut health = HealthClient::new(channel);
            let response =
                health.check(HealthCheckRequest { service: String::new() }).await.ok()?;
            Some(response.into_inner().status == ServingStatus::Serving as i32)
        };
        if serving.await == Some(true) {
            server.startup = started.elapsed();
            return Ok(server);
        }
        if Instant::now() > deadline || matches!(server.child.try_wait(), Ok(Some(_))) {
            return Err(LoadError::Spawn(std::io::Error::other(
                "the server did not start serving",
            )));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// CPU time and memory of a process at one moment, from `/proc/<pid>/stat` and `status`.
#[derive(Debug, Clone, Copy)]
struct ProcSample {
    cpu_seconds: f64,
    rss_bytes: u64,
    rss_peak_bytes: u64,
}

impl ProcSample {
    /// Clock ticks per second of `/proc/<pid>/stat` times: USER_HZ, 100 on every Linux
    /// architecture we target (the kernel fixes it for user space).
    const TICKS_PER_SECOND: f64 = 100.0;

    fn read(pid: u32) -> Option<Self> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name (field 2) may hold spaces; fields after its closing ')' are fixed.
        let after_name = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the whole line, 11 and 12 after the name.
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kib = |key: &str| -> Option<u64> {
            let line = status.lines().find(|l| l.starts_with(key))?;
            line[key.len()..].trim().trim_end_matches("kB").trim().parse::<u64>().ok()
        };
        Some(Self {
            cpu_seconds: ticks as f64 / Self::TICKS_PER_SECOND,
            rss_bytes: kib("VmRSS:")? * 1024,
            rss_peak_bytes: kib("VmHWM:")? * 1024,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An utterance streams as growing interim prefixes and ends with its whole final text.
    #[test]
    fn utterance_streams_prefixes_then_final() {
        let mut rng = Rng::new(7);
        let segments = utterance_segments("テレビが映らないんですけど", &mut rng);
        let (last, is_final) = segments.last().expect("a final");
        assert!(is_final);
        assert_eq!(last, "テレビが映らないんですけど");
        assert!((3..=6).contains(&segments.len()), "help: 2–5 interims, got {segments:?}");
        for pair in segments.windows(2) {
            assert!(pair[1].0.starts_with(&pair[0].0), "help: interims must grow: {pair:?}");
        }
        assert_eq!(utterance_segments("はい", &mut rng), vec![("はい".to_owned(), true)]);
    }

    /// Sent times are found by seq, and the oldest are forgotten past the cap.
    #[test]
    fn sent_times_are_bounded() {
        let times = SentTimes::default();
        let now = Instant::now();
        for seq in 1..=(SENT_TIMES_KEPT as u64 + 10) {
            times.record(seq, now);
        }
        assert!(times.get(1).is_none());
        assert!(times.get(SENT_TIMES_KEPT as u64 + 10).is_some());
    }

    /// Our own process reads back sensible CPU and memory figures.
    #[test]
    fn proc_sample_of_self() {
        let sample = ProcSample::read(std::process::id()).expect("/proc is readable");
        assert!(sample.rss_bytes > 0 && sample.rss_peak_bytes >= sample.rss_bytes);
        assert!(sample.cpu_seconds >= 0.0);
    }

    /// Conversations go round-robin over the nodes, and only those on another node than the
    /// subscriber's count as cross-node; a subscriber on no producing node makes all of them so.
    #[test]
    fn conversations_spread_over_nodes_and_cross_node_is_relative_to_the_subscriber() {
        let on_b = Recorder::new(5, vec![false, true]);
        assert_eq!((0..5).map(|i| on_b.node_of(i)).collect::<Vec<_>>(), [0, 1, 0, 1, 0]);
        assert!(on_b.is_cross_node(0) && !on_b.is_cross_node(1));
        let single = Recorder::new(3, vec![true]);
        assert!((0..3).all(|i| !single.is_cross_node(i)), "help: one node has no cross-node");
        let elsewhere = Recorder::new(3, vec![false]);
        assert!((0..3).all(|i| elsewhere.is_cross_node(i)));
    }

    /// Addresses compare by scheme and authority, not by spelling.
    #[test]
    fn same_address_ignores_host_case_and_trailing_slash() {
        const CASES: &[(&str, &str, bool)] = &[
            ("http://127.0.0.1:50061", "http://127.0.0.1:50061/", true),
            ("http://Node-B:50051", "http://node-b:50051", true),
            ("http://127.0.0.1:50061", "http://127.0.0.1:50062", false),
            ("http://127.0.0.1:50061", "https://127.0.0.1:50061", false),
        ];
        for &(a, b, same) in CASES {
            assert_eq!(same_address(a, b), same, "help: {a} vs {b}");
        }
    }

    /// Several processes' usage adds up: CPU percent and every RSS figure are sums, and the
    /// per-conversation memory is the summed growth over all conversations.
    #[test]
    fn server_usage_total_sums_processes() {
        let usage = |cpu_percent, before, loaded, peak| ServerUsage {
            cpu_percent,
            rss_before_bytes: before,
            rss_loaded_bytes: loaded,
            rss_peak_bytes: peak,
            rss_per_conversation_bytes: (loaded - before) / 10,
        };
        let total =
            ServerUsage::total(&[usage(80.0, 100, 300, 400), usage(60.0, 100, 200, 250)], 10);
        assert_eq!(total, usage(140.0, 200, 500, 650));
        let one = usage(80.0, 100, 300, 400);
        assert_eq!(ServerUsage::total(&[one], 10), one, "help: one process is reported as is");
    }

    /// Conversation ids round-trip, and foreign ids are not mistaken for ours.
    #[test]
    fn conversation_ids_round_trip() {
        assert_eq!(conversation_index(&conversation_id(42)), Some(42));
        assert_eq!(conversation_index("conv-42"), None);
    }
}
