//! An ingest the way users run one: containerd's own `ctr content ingest`,
//! reading the file on stdin.

use std::{
    fs::File,
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

pub const DEFAULT_BINARY: &str = "/usr/bin/ctr";

/// A `ctr` binary known to run.
pub struct Ctr {
    pub binary: PathBuf,
    pub version: String,
}

impl Ctr {
    /// Fails with what to install when `ctr` is missing: the "via ctr" rows
    /// are part of the benchmark even without the reference daemon.
    pub fn locate(binary: &Path) -> anyhow::Result<Ctr> {
        let out = match Command::new(binary).arg("--version").output() {
            Ok(out) => out,
            Err(e) if e.kind() == ErrorKind::NotFound => bail!(
                "ctr is missing at {}: install Debian's containerd package (apt-get install -y containerd), \
                 which ships it, or pass --ctr PATH",
                binary.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("run {} --version", binary.display())),
        };
        if !out.status.success() {
            bail!("{} --version failed ({})", binary.display(), out.status);
        }
        Ok(Ctr {
            binary: binary.to_path_buf(),
            version: String::from_utf8_lossy(&out.stdout).trim().to_string(),
        })
    }

    /// Wall time of `ctr --address SOCK -n NS content ingest --expected-size
    /// N --expected-digest D REF < FILE`, exec to exit: ctr's own start-up,
    /// its lease and the whole ingest. The expected digest makes the daemon
    /// verify what it stored; ctr fails if it does not match.
    pub fn ingest(
        &self,
        socket: &Path,
        namespace: &str,
        reference: &str,
        file: &Path,
        size: u64,
        digest: &str,
    ) -> anyhow::Result<Duration> {
        let stdin = File::open(file).with_context(|| format!("open {}", file.display()))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("--address")
            .arg(socket)
            .args(["-n", namespace, "content", "ingest"])
            .args([
                "--expected-size",
                &size.to_string(),
                "--expected-digest",
                digest,
                reference,
            ])
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let out = command.output().with_context(|| format!("run {command:?}"))?;
        let elapsed = started.elapsed();
        if !out.status.success() {
            bail!(
                "{command:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(elapsed)
    }
}
