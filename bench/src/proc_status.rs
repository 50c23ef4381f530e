//! Memory figures from `/proc/<pid>/status`.

use anyhow::{bail, Context as _};

/// Resident set size in KiB, as the kernel accounts it for `pid`.
pub fn vm_rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    field_kib(&status, "VmRSS").with_context(|| format!("{path} has no readable VmRSS"))
}

/// The resident set of `pid` and its two parts, in KiB.
pub struct Resident {
    pub total: u64,
    /// Private pages: heap, stacks, written data.
    pub anon: u64,
    /// Pages of mapped files, mostly code, shared with the page cache.
    pub file: u64,
}

/// [`Resident`] of `pid`, read at once.
pub fn resident_kib(pid: u32) -> anyhow::Result<Resident> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let field = |name| field_kib(&status, name).with_context(|| format!("{path} has no readable {name}"));
    Ok(Resident {
        total: field("VmRSS")?,
        anon: field("RssAnon")?,
        file: field("RssFile")?,
    })
}

fn field_kib(status: &str, name: &str) -> anyhow::Result<u64> {
    for line in status.lines() {
        let Some(rest) = line.strip_prefix(name).and_then(|r| r.strip_prefix(':')) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let value = words.next().context("empty value")?;
        if words.next() != Some("kB") {
            bail!("{name} is not in kB: {line:?}");
        }
        return value.parse().with_context(|| format!("parse {line:?}"));
    }
    bail!("no {name} line")
}

#[cfg(test)]
mod tests {
    use super::field_kib;

    const STATUS: &str = "Name:\tcortend\nVmHWM:\t    9000 kB\nVmRSS:\t    8123 kB\nRssAnon:\t    2000 kB\n";

    #[test]
    fn reads_the_named_field() {
        assert_eq!(field_kib(STATUS, "VmRSS").unwrap(), 8123);
    }

    #[test]
    fn does_not_match_a_longer_name_with_the_same_prefix() {
        assert!(field_kib("VmRSSx:\t 1 kB\n", "VmRSS").is_err());
    }

    #[test]
    fn a_missing_field_is_an_error() {
        assert!(field_kib(STATUS, "VmSwap").is_err());
    }
}
