//! The physical limit on this disk: hashing the file with `openssl dgst
//! -sha256`, and copying it followed by an fsync of the copy. An ingest
//! does both (hash, write, fsync at commit), so it can go no faster than
//! the slower of the two.

use std::{
    io::ErrorKind,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

use super::measure::Timing;

/// `openssl version`; fails with what to install when openssl is missing.
pub fn openssl_version() -> anyhow::Result<String> {
    let out = run(Command::new("openssl").arg("version"), "openssl")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Time of `openssl dgst -sha256 -r FILE`, and the digest it printed
/// (`sha256:<hex>`).
pub fn sha256(file: &Path) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let out = run(
        Command::new("openssl").args(["dgst", "-sha256", "-r"]).arg(file),
        "openssl",
    )?;
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let hex = parse_dgst(&stdout).with_context(|| format!("unexpected `openssl dgst` output: {stdout:?}"))?;
    Ok((elapsed, format!("sha256:{hex}")))
}

/// Time of `cp --reflink=never FILE COPY` then `sync COPY` (an fsync of the
/// copy, as a daemon does at commit), with the `sync` as the flush. The
/// copy is removed afterwards,
/// untimed. `--reflink=never` because a filesystem that shares extents
/// would otherwise copy nothing.
pub fn copy_and_sync(file: &Path, copy: &Path) -> anyhow::Result<Timing> {
    let started = Instant::now();
    run(Command::new("cp").arg("--reflink=never").arg(file).arg(copy), "cp")?;
    let copied = Instant::now();
    run(Command::new("sync").arg(copy), "sync")?;
    let done = Instant::now();
    std::fs::remove_file(copy).with_context(|| format!("remove {}", copy.display()))?;
    Ok(Timing {
        total: done - started,
        flush: Some(done - copied),
    })
}

/// Runs a tool to completion; a missing tool or a failure is an error that
/// says which.
fn run(command: &mut Command, tool: &str) -> anyhow::Result<Output> {
    let out = match command.output() {
        Ok(out) => out,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let package = if tool == "openssl" { "openssl" } else { "coreutils" };
            bail!("{tool} is missing: install Debian's {package} package (apt-get install -y {package})")
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

/// The hex digest from `openssl dgst -r` output (`<hex> *<file>`).
fn parse_dgst(stdout: &str) -> Option<&str> {
    let hex = stdout.split_whitespace().next()?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::parse_dgst;

    #[test]
    fn reads_the_coreutils_style_line() {
        let hex = "427f93cafd9cc19be6eec03e590c9c6cdf9f688a5eaf21fa8d72351e2b15fd05";
        assert_eq!(parse_dgst(&format!("{hex} */var/tmp/x\n")), Some(hex));
    }

    #[test]
    fn refuses_other_output() {
        assert_eq!(parse_dgst("SHA2-256(/x)= abc\n"), None);
        assert_eq!(parse_dgst(""), None);
    }
}
