//! Integration tests: one binary (ripgrep's layout), each module with one purpose.

/// Supervisors: filtered, resumable Subscribe streams, heartbeats, lag, Acknowledge.
mod alerts;
/// The supervisor console over HTTP, and end to end in a headless Chromium.
mod console;
/// Streaming conversations in and reading verdicts; ScreenText; bad input.
mod ingest;
/// Per-tenant lexicon overlays: added and disabled entries, refused bad overlays.
mod overlays;
/// The dev corpus scored through gRPC, against quality floors.
mod regression;
/// Graceful shutdown with open streams.
mod shutdown;
mod util;
