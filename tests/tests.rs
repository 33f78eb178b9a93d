//! Integration tests: one binary (ripgrep's layout), each module with one purpose.

/// Streaming conversations in and reading verdicts; ScreenText; bad input.
mod ingest;
/// Supervisors receiving alerts on Subscribe while a conversation streams.
mod alerts;
/// Graceful shutdown with open streams.
mod shutdown;
/// The dev corpus scored through gRPC, against quality floors.
mod regression;
mod util;
