//! The clients that pull and check: `corten` (built by this workspace) and
//! containerd 1.6's `ctr`, plus the registry's version for the report.

use std::{
    io::ErrorKind,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

pub const DEFAULT_CTR: &str = "/usr/bin/ctr";
/// Where Debian's `docker-registry` package installs the registry.
const REGISTRY: &str = "/usr/bin/docker-registry";
const CORTEN_HINT: &str = "build it with `cargo build --release -p corten-cli` or pass --corten PATH";

pub struct Tools {
    pub corten: PathBuf,
    pub corten_version: String,
    pub ctr: PathBuf,
    pub ctr_version: String,
    pub registry_version: String,
}

impl Tools {
    /// Fails with what to build or install when a tool is missing. ctr is
    /// needed even with --no-reference: it checks corten's pull.
    pub fn locate(corten: Option<&Path>, ctr: &Path) -> anyhow::Result<Tools> {
        let corten = match corten {
            Some(p) => p.to_path_buf(),
            None => std::env::current_exe()
                .context("find this executable's path")?
                .parent()
                .context("this executable has no directory")?
                .join("corten"),
        };
        if !corten.is_file() {
            bail!("the corten client is missing at {}: {CORTEN_HINT}", corten.display());
        }
        let corten_version = version(&corten, CORTEN_HINT)?;
        let ctr_version = version(
            ctr,
            "install Debian's containerd package (apt-get install -y containerd), which ships it, or pass --ctr PATH",
        )?;
        // corten-tests would panic on a missing registry; say it here first.
        let registry_version = version(
            Path::new(REGISTRY),
            "install Debian's docker-registry package (apt-get install -y docker-registry)",
        )?;
        Ok(Tools {
            corten,
            corten_version,
            ctr: ctr.to_path_buf(),
            ctr_version,
            registry_version,
        })
    }

    /// `corten --address SOCK images pull --plain-http REF`, exec to exit.
    pub fn corten_pull(&self, socket: &Path, reference: &str) -> anyhow::Result<Duration> {
        let mut command = Command::new(&self.corten);
        command
            .arg("--address")
            .arg(socket)
            .args(["images", "pull", "--plain-http", reference]);
        timed(command)
    }

    /// `ctr --address SOCK images pull --plain-http REF`, exec to exit.
    pub fn ctr_pull(&self, socket: &Path, reference: &str) -> anyhow::Result<Duration> {
        let mut command = Command::new(&self.ctr);
        command
            .arg("--address")
            .arg(socket)
            .args(["images", "pull", "--plain-http", reference]);
        timed(command)
    }

    /// `ctr --address SOCK images check` must list `reference` as complete
    /// (every blob present) and unpacked, as a pull by ctr leaves it.
    pub fn check(&self, socket: &Path, reference: &str) -> anyhow::Result<()> {
        let mut command = Command::new(&self.ctr);
        command.arg("--address").arg(socket).args(["images", "check"]);
        let stdout = run(&mut command)?;
        let Some(row) = stdout.lines().find(|l| l.split_whitespace().next() == Some(reference)) else {
            bail!("`ctr images check` does not list {reference}:\n{stdout}");
        };
        if !complete(row) {
            bail!("`ctr images check` does not report {reference} complete:\n{stdout}");
        }
        if row.split_whitespace().last() != Some("true") {
            bail!("`ctr images check` does not report {reference} unpacked:\n{stdout}");
        }
        Ok(())
    }
}

/// A check row's `complete (N/N)`, with every blob there.
fn complete(row: &str) -> bool {
    let Some(rest) = row.split("complete (").nth(1) else {
        return false;
    };
    let counts = rest.split(')').next().unwrap_or_default();
    matches!(counts.split_once('/'), Some((have, want)) if have == want && !have.is_empty())
}

fn version(binary: &Path, hint: &str) -> anyhow::Result<String> {
    let out = match Command::new(binary).arg("--version").output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => bail!("{} is missing: {hint}", binary.display()),
        Err(e) => return Err(e).with_context(|| format!("run {} --version", binary.display())),
    };
    if !out.status.success() {
        bail!("{} --version failed ({})", binary.display(), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Output is piped, so neither client draws progress for a terminal.
fn timed(mut command: Command) -> anyhow::Result<Duration> {
    let started = Instant::now();
    run(&mut command)?;
    Ok(started.elapsed())
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let out = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("run {command:?}"))?;
    if !out.status.success() {
        bail!(
            "{command:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::complete;

    #[test]
    fn complete_needs_every_blob() {
        assert!(complete("r  application/x  complete (6/6)  100.0 MiB/100.0 MiB  true"));
        assert!(!complete("r  application/x  incomplete (5/6)  1 MiB/2 MiB  false"));
        assert!(!complete("r  application/x  complete (5/6)  1 MiB/2 MiB  false"));
    }
}
