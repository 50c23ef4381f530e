//! What the disk and the standard tools allow: `tar -xzf` of the layer into
//! a fresh directory on the same disk, a `syncfs` after it, the cost of one
//! small write + fsync (what a metadata commit pays at least), and the
//! least a durable prepare + remove cycle does ([`cycles`]).

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

/// Sets of directories kept ready by the cycles limit's second thread.
const LIMIT_READY: usize = 32;
/// The limit's record log: preallocated, so a record's `fdatasync` writes
/// the record and flushes the disk's cache, and never the file's size.
const LIMIT_LOG_BYTES: u64 = 8 << 20;
const LIMIT_RECORD: usize = 512;

/// Wall time of `cycles` prepare + remove cycles reduced to what any
/// snapshotter that keeps its records durable and gives every snapshot a
/// new `fs` directory does at least (a snapshot without a parent needs no
/// `work`), in one process without gRPC or a database: a prepare renames a
/// ready directory into place and makes one record durable (a 512-byte
/// `pwrite` into a preallocated log, then `fdatasync`); a remove makes one
/// record durable and renames the directory out. A second thread does what
/// a daemon can do off the request path: it makes `fs` in every ready
/// directory, removes it from every removed one and reuses the emptied
/// directory as a ready one.
pub fn cycles(dir: &Path, cycles: u32) -> anyhow::Result<Duration> {
    use std::sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc, Arc,
    };

    for sub in ["ready", "live", "gone"] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).with_context(|| format!("create {}", path.display()))?;
    }
    let log_path = dir.join("log");
    let log = File::create(&log_path).with_context(|| format!("create {}", log_path.display()))?;
    log.write_all_at(&vec![0u8; LIMIT_LOG_BYTES as usize], 0)?;
    log.sync_all()
        .with_context(|| format!("fsync {}", log_path.display()))?;

    let (ready_tx, ready_rx) = mpsc::channel::<std::path::PathBuf>();
    let (gone_tx, gone_rx) = mpsc::channel::<std::path::PathBuf>();
    let queued = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let helper = {
        let (dir, queued, stop) = (dir.to_path_buf(), queued.clone(), stop.clone());
        std::thread::spawn(move || -> std::io::Result<()> {
            let mut emptied = Vec::new();
            let mut next = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let mut busy = false;
                if queued.load(Ordering::Relaxed) < LIMIT_READY {
                    let top = dir.join("ready").join(next.to_string());
                    next += 1;
                    match emptied.pop() {
                        Some(old) => std::fs::rename(old, &top)?,
                        None => std::fs::create_dir(&top)?,
                    }
                    std::fs::create_dir(top.join("fs"))?;
                    queued.fetch_add(1, Ordering::Relaxed);
                    if ready_tx.send(top).is_err() {
                        break;
                    }
                    busy = true;
                }
                if let Ok(top) = gone_rx.try_recv() {
                    std::fs::remove_dir(top.join("fs"))?;
                    emptied.push(top);
                    busy = true;
                }
                if !busy {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            Ok(())
        })
    };
    while queued.load(Ordering::Relaxed) < LIMIT_READY && !helper.is_finished() {
        std::thread::sleep(Duration::from_millis(1));
    }

    let record = [0x72u8; LIMIT_RECORD];
    let mut offset = 0u64;
    let mut durable = || -> anyhow::Result<()> {
        log.write_all_at(&record, offset)?;
        log.sync_data()
            .with_context(|| format!("fdatasync {}", log_path.display()))?;
        offset = (offset + LIMIT_RECORD as u64) % LIMIT_LOG_BYTES;
        Ok(())
    };
    let started = Instant::now();
    let timed = (|| -> anyhow::Result<()> {
        for i in 0..cycles {
            let ready = ready_rx.recv().context("the directory thread stopped")?;
            queued.fetch_sub(1, Ordering::Relaxed);
            let live = dir.join("live").join(i.to_string());
            std::fs::rename(&ready, &live).with_context(|| format!("rename {}", ready.display()))?;
            durable()?;
            durable()?;
            let gone = dir.join("gone").join(i.to_string());
            std::fs::rename(&live, &gone).with_context(|| format!("rename {}", live.display()))?;
            gone_tx.send(gone).context("the directory thread stopped")?;
        }
        Ok(())
    })();
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    drop(ready_rx);
    let helped = helper
        .join()
        .map_err(|_| anyhow::anyhow!("the directory thread panicked"))?;
    timed?;
    helped.context("the directory thread")?;
    Ok(elapsed)
}
