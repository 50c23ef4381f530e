//! The ingest benchmark's input.

use std::{
    fs::File,
    io::{Read as _, Write as _},
    path::Path,
};

use anyhow::Context as _;

/// `size` bytes from the kernel's random generator: incompressible, so no
/// layer (filesystem, transport) can make the ingest cheaper than it is.
pub fn write_random(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut random = File::open("/dev/urandom").context("open /dev/urandom")?;
    let mut out = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        random.read_exact(&mut buf[..n]).context("read /dev/urandom")?;
        out.write_all(&buf[..n])
            .with_context(|| format!("write {}", path.display()))?;
        left -= n as u64;
    }
    out.sync_all().with_context(|| format!("sync {}", path.display()))
}
