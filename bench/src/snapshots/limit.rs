//! What the disk and the standard tools allow: `tar -xzf` of the layer into
//! a fresh directory on the same disk, a `syncfs` after it, and the cost of
//! one small write + fsync (what a metadata commit pays at least).

use std::{
    fs::File,
    io::{ErrorKind, Write as _},
    os::unix::fs::FileExt as _,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use serde::Serialize;

/// fsyncs timed per round for the fsync row; a few tenths of a second.
pub const FSYNCS: u32 = 200;

/// GNU tar and the gzip it runs for `-z`, with their versions.
#[derive(Debug, Clone, Serialize)]
pub struct Tools {
    pub tar: String,
    pub gzip: String,
}

impl Tools {
    /// Fails with what to install when either is missing: `tar -z` execs
    /// `gzip -d`, and without it the limit would be an error mid-run.
    pub fn locate() -> anyhow::Result<Tools> {
        Ok(Tools {
            tar: first_line(&run(Command::new("tar").arg("--version"), "tar")?),
            gzip: first_line(&run(Command::new("gzip").arg("--version"), "gzip")?),
        })
    }

    /// Wall time of `tar -xzf LAYER -C DIR` into a new, empty `dir`, exec to
    /// exit. As root, tar restores owners and modes as an apply does, and
    /// like an apply it syncs nothing.
    pub fn extract(&self, layer: &Path, dir: &Path) -> anyhow::Result<Duration> {
        std::fs::create_dir(dir).with_context(|| format!("create {}", dir.display()))?;
        let started = Instant::now();
        run(Command::new("tar").arg("-xzf").arg(layer).arg("-C").arg(dir), "tar")?;
        Ok(started.elapsed())
    }
}

/// Time of a `syncfs` of the filesystem holding `dir`: the write-back of
/// everything dirty on it, which includes other processes' writes to the
/// same filesystem.
pub fn syncfs(dir: &Path) -> anyhow::Result<Duration> {
    let handle = File::open(dir).with_context(|| format!("open {}", dir.display()))?;
    let started = Instant::now();
    nix::unistd::syncfs(&handle).with_context(|| format!("syncfs {}", dir.display()))?;
    Ok(started.elapsed())
}

/// Median time of `FSYNCS` rounds of a 4 KiB overwrite and an fsync of a
/// file in `dir`, in seconds.
pub fn fsync_cost(dir: &Path) -> anyhow::Result<f64> {
    let path = dir.join("fsync-probe");
    let mut file = File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let block = [0x5au8; 4096];
    file.write_all(&block)?;
    file.sync_all()?;
    let mut samples = Vec::with_capacity(FSYNCS as usize);
    for _ in 0..FSYNCS {
        let started = Instant::now();
        file.write_all_at(&block, 0)?;
        file.sync_all().with_context(|| format!("fsync {}", path.display()))?;
        samples.push(started.elapsed().as_secs_f64());
    }
    drop(file);
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    Ok(crate::stats::Summary::of(samples).median)
}

fn first_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// Runs a tool to completion; a missing tool or a failure is an error that
/// says which.
fn run(command: &mut Command, tool: &str) -> anyhow::Result<Output> {
    let out = match command.output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            bail!("{tool} is missing: install Debian's {tool} package (apt-get install -y {tool})")
        }
        Err(e) => return Err(e).with_context(|| format!("run {command:?}")),
    };
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}
