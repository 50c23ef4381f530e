//! Interruptions a long command cleans up after (temporary leases, views).

/// Resolves with the signal's name on SIGINT or SIGTERM; never, if the
/// handlers cannot be installed.
pub async fn interruption() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
        (Ok(mut int), Ok(mut term)) => tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        },
        _ => std::future::pending().await,
    }
}
