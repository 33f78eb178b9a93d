//! kasuhara-guard: real-time screening of contact-centre transcripts for customer harassment
//! (カスタマーハラスメント).
//!
//! Platforms stream transcript segments in over gRPC; every customer segment is normalised,
//! tokenised and matched against lexicons mapped to the policy's ten categories; alerts go
//! back on the stream and out to supervisors who subscribe.
//!
//! # Layout (in data-flow order)
//!
//! ```text
//! grpc::screening  ── Screen / ScreenText: decode, validate ─┐
//! conversation     ── per-conversation state, segment → alerts
//! pipeline         ── normalize → segment (lindera) → matcher (Aho-Corasick) → detections
//! alert            ── AlertHub: per-tenant streams with history, acks ──▶ grpc::alerts ── Subscribe
//!                                                                   └──▶ console ── SSE page
//! ```
//!
//! - [`policy`]: category and severity codes, policy words and the response ladder.
//! - [`dictionary`]: lexicon files (`dictionaries/**/*.tsv`) parsed and validated.
//! - [`pipeline`]: the synchronous screening pipeline (no tokio inside).
//! - [`conversation`]: one conversation's state and limits; [`limits`]: admission limits.
//! - [`alert`]: alerts, ids, filters, the hub, its resumable bus and acknowledgement ledger.
//! - [`evidence`]: the hash-chained evidence log of alerts and acknowledgements, its check
//!   and incident report.
//! - [`console`]: the supervisor web page (server-sent events, JSON), on its own port.
//! - [`auth`]: bearer tokens, roles and tenant scoping, checked first in every handler.
//! - [`grpc`]: thin tonic services; [`error`]: the one error-to-status mapping.
//! - [`reload`]: hot reload of the lexicons and policy (SIGHUP, `AdminService`).
//! - [`server`]: wiring, health, reflection and graceful shutdown; [`config`], [`shutdown`].
//! - [`telemetry`]: logs, traces and Prometheus metrics.
//! - [`eval`]: scoring a labelled corpus; [`client`]: replaying one through the gRPC API.
//! - [`loadgen`]: the load generator (`kasuhara-guard loadgen`).
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod alert;
pub mod auth;
pub mod callers;
pub mod client;
pub mod config;
pub mod console;
pub mod conversation;
pub mod dictionary;
pub mod error;
pub mod eval;
pub mod evidence;
pub mod grpc;
pub mod limits;
pub mod loadgen;
pub mod pipeline;
pub mod policy;
pub mod redis;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod telemetry;

/// Code generated from `proto/kasuhara/v1/*.proto` (package `kasuhara.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("kasuhara.v1");

    /// The encoded descriptors of the API, for the reflection service.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("kasuhara_descriptor");
}
