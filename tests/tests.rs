//! Integration tests: one binary (ripgrep's layout), each module with one purpose.

/// Thousands of malformed requests over real gRPC, then screening still works.
mod adversarial;
/// Supervisors: filtered, resumable Subscribe streams, heartbeats, lag, Acknowledge.
mod alerts;
/// docs/api.md, generated from the .proto comments, is current.
mod api_doc;
/// TLS and mutual TLS, bearer tokens, the exposure rule, `token new`, subscriber and
/// message-size limits.
mod auth;
/// The supervisor console over HTTP, and end to end in a headless Chromium.
mod console;
/// The evidence log through a real server, `audit verify` and `audit export`.
mod evidence;
/// Streaming conversations in and reading verdicts; ScreenText; bad input.
mod ingest;
/// Tenant isolation: every role of tenant A against every RPC and console endpoint of B.
mod isolation;
/// Admission limits: duplicate live ids, open conversations, segment floods.
mod limits;
/// The load generator against a real server: counts and report shape, not speed.
mod loadgen;
/// Metrics, health, reflection and the operator commands.
mod ops;
/// Per-tenant lexicon overlays: added and disabled entries, refused bad overlays.
mod overlays;
/// The dev corpus scored through gRPC, against quality floors.
mod regression;
/// Hot reload of lexicons and policy by RPC and SIGHUP while conversations stream.
mod reload;
/// Several nodes sharing Redis, as real processes: cross-node alerts, cursors, Redis restart.
mod scaleout;
/// Graceful shutdown with open streams.
mod shutdown;
mod util;
