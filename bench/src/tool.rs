//! External programs the benchmarks drive (`ctr`, `corten`, the registry):
//! their versions, running them to completion, and reading `ctr images check`.

use std::{
    io::ErrorKind,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context as _};

/// Where Debian's `docker-registry` package installs the registry that
/// `corten_tests::registry::Registry` starts.
const REGISTRY: &str = "/usr/bin/docker-registry";
/// Where Debian's `busybox-static` package installs the binary that the
/// fixture images are made of.
const BUSYBOX: &str = "/bin/busybox";

/// The local registry's version. corten-tests would panic on a missing
/// registry; this says what to install first.
pub fn registry_version() -> anyhow::Result<String> {
    version(
        Path::new(REGISTRY),
        "install Debian's docker-registry package (apt-get install -y docker-registry)",
    )
}

/// Fails with what to install when the busybox the fixture images are built
/// from is missing (corten-tests would panic).
pub fn require_busybox() -> anyhow::Result<()> {
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: install Debian's busybox-static package (apt-get install -y busybox-static)");
    }
    Ok(())
}

/// `BINARY --version`, trimmed. A missing binary fails with `hint`, which
/// says what to install or build.
pub fn version(binary: &Path, hint: &str) -> anyhow::Result<String> {
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

/// Runs `command` to its end with no input and its output piped (so no
/// client draws progress for a terminal); its standard output on success,
/// else an error quoting what it printed.
pub fn output(command: &mut Command) -> anyhow::Result<String> {
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

/// Checks the output of `ctr images check`: `reference` must be listed as
/// complete (every blob present) and unpacked, as a pull by ctr leaves it.
pub fn image_checked(stdout: &str, reference: &str) -> anyhow::Result<()> {
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

/// A check row's `complete (N/N)`, with every blob there.
fn complete(row: &str) -> bool {
    let Some(rest) = row.split("complete (").nth(1) else {
        return false;
    };
    let counts = rest.split(')').next().unwrap_or_default();
    matches!(counts.split_once('/'), Some((have, want)) if have == want && !have.is_empty())
}

#[cfg(test)]
mod tests {
    use super::{complete, image_checked};

    #[test]
    fn complete_needs_every_blob() {
        assert!(complete("r  application/x  complete (6/6)  100.0 MiB/100.0 MiB  true"));
        assert!(!complete("r  application/x  incomplete (5/6)  1 MiB/2 MiB  false"));
        assert!(!complete("r  application/x  complete (5/6)  1 MiB/2 MiB  false"));
    }

    #[test]
    fn a_checked_image_is_listed_complete_and_unpacked() {
        let out = "REF TYPE DIGEST STATUS SIZE UNPACKED\n\
                   r  application/x  sha256:ab  complete (3/3)  1 MiB/1 MiB  true\n\
                   s  application/x  sha256:cd  complete (3/3)  1 MiB/1 MiB  false\n";
        assert!(image_checked(out, "r").is_ok());
        assert!(image_checked(out, "s").is_err());
        assert!(image_checked(out, "t").is_err());
    }
}
