//! A byte-count progress bar on stderr for long transfers.
//!
//! Shown by default only when stderr is a terminal, so logs and pipelines
//! stay free of redraw sequences; `--progress` forces it on anyway (for a
//! terminal the process cannot see, such as one behind `script`).

use std::{
    io::{self, IsTerminal, Write},
    time::Duration,
};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

/// What `--progress` / `--no-progress` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// On when stderr is a terminal.
    Auto,
    Always,
    Never,
}

impl Mode {
    /// `--no-progress` wins over `--progress` so a wrapper script can append
    /// it to whatever its caller passed.
    pub fn from_flags(progress: bool, no_progress: bool) -> Mode {
        match (progress, no_progress) {
            (_, true) => Mode::Never,
            (true, false) => Mode::Always,
            (false, false) => Mode::Auto,
        }
    }

    fn enabled(self, stderr_is_terminal: bool) -> bool {
        match self {
            Mode::Auto => stderr_is_terminal,
            Mode::Always => true,
            Mode::Never => false,
        }
    }
}

/// A bar counting bytes, or nothing at all when progress is off; the
/// transfer code calls it the same way either way.
pub struct Progress(Option<ProgressBar>);

/// Redraws per second: enough to look live, few enough to cost nothing.
const REFRESH_HZ: u8 = 10;

impl Progress {
    /// `total` is the size of the whole transfer when known, which adds a
    /// bar and an ETA; otherwise a spinner shows bytes and rate.
    pub fn new(mode: Mode, label: &str, total: Option<u64>) -> Progress {
        let stderr_is_terminal = io::stderr().is_terminal();
        if !mode.enabled(stderr_is_terminal) {
            return Progress(None);
        }
        let target = if stderr_is_terminal {
            ProgressDrawTarget::stderr_with_hz(REFRESH_HZ)
        } else {
            // indicatif hides itself on anything that is not a terminal;
            // forcing it on means drawing regardless.
            ProgressDrawTarget::term_like_with_hz(Box::new(ForcedStderr), REFRESH_HZ)
        };
        let bar = match total {
            Some(total) => ProgressBar::with_draw_target(Some(total), target).with_style(sized_style()),
            None => {
                let bar = ProgressBar::with_draw_target(None, target).with_style(unsized_style());
                bar.enable_steady_tick(Duration::from_millis(1000 / u64::from(REFRESH_HZ)));
                bar
            }
        };
        bar.set_message(label.to_string());
        Progress(Some(bar))
    }

    /// Starts the count at `position` without crediting those bytes to the
    /// rate, e.g. the part of a resumed transfer that was sent before.
    pub fn resume_at(&self, position: u64) {
        if let Some(bar) = &self.0 {
            bar.set_position(position);
            bar.reset_eta();
        }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.0 {
            bar.inc(bytes);
        }
    }

    /// Removes the bar so the command's own output starts on a clean line.
    pub fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }

    /// Leaves the bar where it stopped, so an error line below it shows
    /// how far the transfer got.
    pub fn abandon(&self) {
        if let Some(bar) = &self.0 {
            bar.abandon();
        }
    }
}

const SIZED_TEMPLATE: &str = "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} ETA {eta}";
const UNSIZED_TEMPLATE: &str = "{msg} {spinner} {binary_bytes} {binary_bytes_per_sec}";

fn sized_style() -> ProgressStyle {
    ProgressStyle::with_template(SIZED_TEMPLATE)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn unsized_style() -> ProgressStyle {
    ProgressStyle::with_template(UNSIZED_TEMPLATE).unwrap_or_else(|_| ProgressStyle::default_spinner())
}

/// stderr as a plain ANSI terminal, for when `--progress` insists.
#[derive(Debug)]
struct ForcedStderr;

/// Columns to lay the bar out in when there is no terminal to ask.
const FALLBACK_WIDTH: u16 = 80;

impl ForcedStderr {
    fn emit(&self, text: &str) -> io::Result<()> {
        io::stderr().lock().write_all(text.as_bytes())
    }
}

impl TermLike for ForcedStderr {
    fn width(&self) -> u16 {
        std::env::var("COLUMNS")
            .ok()
            .and_then(|c| c.parse().ok())
            .filter(|&w| w > 0)
            .unwrap_or(FALLBACK_WIDTH)
    }

    fn move_cursor_up(&self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.emit(&format!("\x1b[{n}A"))
    }

    fn move_cursor_down(&self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.emit(&format!("\x1b[{n}B"))
    }

    fn move_cursor_right(&self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.emit(&format!("\x1b[{n}C"))
    }

    fn move_cursor_left(&self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        self.emit(&format!("\x1b[{n}D"))
    }

    fn write_line(&self, s: &str) -> io::Result<()> {
        self.emit(&format!("{s}\n"))
    }

    fn write_str(&self, s: &str) -> io::Result<()> {
        self.emit(s)
    }

    fn clear_line(&self) -> io::Result<()> {
        self.emit("\r\x1b[2K")
    }

    fn flush(&self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_pick_the_mode() {
        assert_eq!(Mode::from_flags(false, false), Mode::Auto);
        assert_eq!(Mode::from_flags(true, false), Mode::Always);
        assert_eq!(Mode::from_flags(false, true), Mode::Never);
        assert_eq!(Mode::from_flags(true, true), Mode::Never);
    }

    #[test]
    fn auto_follows_the_terminal() {
        assert!(Mode::Auto.enabled(true));
        assert!(!Mode::Auto.enabled(false));
        assert!(Mode::Always.enabled(false));
        assert!(!Mode::Never.enabled(true));
    }

    #[test]
    fn templates_parse() {
        ProgressStyle::with_template(SIZED_TEMPLATE).unwrap();
        ProgressStyle::with_template(UNSIZED_TEMPLATE).unwrap();
    }

    #[test]
    fn disabled_progress_is_inert() {
        let progress = Progress::new(Mode::Never, "x", Some(10));
        assert!(progress.0.is_none());
        progress.resume_at(3);
        progress.advance(5);
        progress.finish();
    }
}
