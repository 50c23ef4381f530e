//! SIGINT, SIGTERM and SIGHUP end the benchmark through its error path, so
//! that the cleanup of its containers runs instead of leaving shims and
//! containers behind.
//!
//! The handler only sets a flag, which the benchmark checks between steps
//! and while it waits for clients. Handlers are reset to the default in
//! every program this process executes, so the daemons and clients keep
//! their normal behaviour.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context as _};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

pub fn install() -> anyhow::Result<()> {
    let action = SigAction::new(SigHandler::Handler(on_signal), SaFlags::SA_RESTART, SigSet::empty());
    for signal in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe { sigaction(signal, &action) }.with_context(|| format!("handle {signal}"))?;
    }
    Ok(())
}

pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Fails once a stop was asked for.
pub fn check() -> anyhow::Result<()> {
    if requested() {
        bail!("interrupted");
    }
    Ok(())
}
