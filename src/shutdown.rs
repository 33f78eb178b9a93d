//! The shutdown signal: resolves on SIGTERM or SIGINT (Ctrl-C).

/// Waits for SIGTERM or SIGINT, whichever comes first.
///
/// # Panics
/// If the signal handlers cannot be installed, which only happens when the process has no
/// signal support at all; the binary cannot run correctly then.
pub async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = terminate.recv() => tracing::info!("SIGTERM received"),
        result = tokio::signal::ctrl_c() => {
            result.expect("install SIGINT handler");
            tracing::info!("SIGINT received");
        }
    }
}
