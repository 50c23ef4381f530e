//! The shim's log: it writes logrus lines to the `log` FIFO in its bundle,
//! and blocks once the pipe is full, so the daemon must keep reading. Each
//! line becomes a tracing event at the line's own level; lines that are
//! not logrus' (a Go panic's trace, written to the same stderr) are warnings.
//!
//! The FIFO is opened read-write: opening never waits for the writer, and
//! the shim's end closing never reads as end of file, so one reader serves
//! the shim's whole life, and a restarted daemon can open it again.

use std::path::Path;

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    net::unix::pipe,
    task::JoinHandle,
};

/// The read buffer. One lives per running shim, and at the default 8 KiB
/// it was the largest allocation the daemon kept per container; a shim
/// writes a few short lines in its life, and a longer one takes more reads.
const LINE_BUFFER: usize = 512;

/// Starts copying the FIFO at `path` into the daemon's log. Abort the
/// handle when the shim is gone.
pub fn follow(path: &Path, namespace: &str, id: &str) -> std::io::Result<JoinHandle<()>> {
    let receiver = pipe::OpenOptions::new().read_write(true).open_receiver(path)?;
    let (namespace, id) = (namespace.to_string(), id.to_string());
    Ok(tokio::spawn(async move {
        let mut lines = BufReader::with_capacity(LINE_BUFFER, receiver).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            emit(&namespace, &id, &line);
        }
    }))
}

fn emit(namespace: &str, id: &str, line: &str) {
    let line = line.trim_end();
    if line.is_empty() {
        return;
    }
    match level_of(line) {
        "error" | "fatal" | "panic" => tracing::error!(target: "shim", namespace, id, "{line}"),
        "warning" | "warn" => tracing::warn!(target: "shim", namespace, id, "{line}"),
        "info" => tracing::info!(target: "shim", namespace, id, "{line}"),
        "debug" | "trace" => tracing::debug!(target: "shim", namespace, id, "{line}"),
        // Not a logrus line: the Go runtime's own output (a panic, a crash).
        _ => tracing::warn!(target: "shim", namespace, id, "{line}"),
    }
}

/// The `level=` field of a logrus text line.
fn level_of(line: &str) -> &str {
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("level="))
        .map(|l| l.trim_matches('"'))
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels() {
        assert_eq!(
            level_of(r#"time="2024-01-01T00:00:00Z" level=warning msg="cleanup warnings""#),
            "warning"
        );
        assert_eq!(level_of("level=info msg=x"), "info");
        assert_eq!(level_of("no level here"), "");
    }
}
