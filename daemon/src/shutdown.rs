//! SIGTERM and SIGINT both ask for a graceful stop.

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The stop signals, caught from the moment this exists: install them
/// before the socket appears, or a client that signals as soon as it can
/// connect kills the daemon outright.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn requested(mut self) {
        tokio::select! {
            _ = self.term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = self.int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}
