//! The layer every apply unpacks: a gzip-compressed tar built the same way
//! on every run (fixed seed, fixed times and owners), so its digest, and
//! with it the work, is the same on every machine.
//!
//! Four fifths of every file are pseudo-random bytes, which gzip cannot
//! shrink; the last fifth is repetitive text, which it shrinks to almost
//! nothing. The tar is thus 1.25 times the size of its gzip, as is common for
//! binary-heavy image layers, and the inflater does real decoding work
//! rather than only copying stored blocks.

use std::{
    fs::File,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use anyhow::{ensure, Context as _};
use flate2::{write::GzEncoder, Compression};
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

pub const MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Files per MiB of gzip: several hundred at the default size.
const FILES_PER_MIB: u64 = 4;
const TOP_DIRS: usize = 24;
/// One file in this many gets a relative symlink beside it.
const SYMLINK_EVERY: usize = 16;
/// Entry times: the tar's bytes must not depend on when it was built.
const MTIME: u64 = 1_700_000_000;
const SEED: u64 = 0x636f_7274_656e_2d62;
/// Free space kept on top of what the benchmark writes at any one time.
const HEADROOM: u64 = 256 << 20;

/// How big the layer is and how many files it holds.
pub struct Shape {
    /// The gzip's rough size in MiB, as asked for.
    pub mib: u64,
    pub files: usize,
    /// File contents in the tar (headers and padding come on top).
    pub data_bytes: u64,
}

impl Shape {
    pub fn for_mib(mib: u64) -> Shape {
        Shape {
            mib,
            files: (mib * FILES_PER_MIB).clamp(16, 20_000) as usize,
            data_bytes: (mib << 20) * 5 / 4,
        }
    }

    /// The layer, plus at one time either tar's unpacked copy or a daemon's
    /// root (the blob and one unpacked snapshot), plus headroom.
    pub fn space_needed(&self) -> u64 {
        let gzip = self.mib << 20;
        // Headers, padding and block rounding on the disk.
        let unpacked = self.data_bytes + self.data_bytes / 8;
        2 * gzip + unpacked + HEADROOM
    }
}

/// The built layer, as the daemons and the report need it.
#[derive(Debug, Clone, Serialize)]
pub struct Layer {
    pub path: PathBuf,
    /// Bytes of the gzip.
    pub size: u64,
    /// `sha256:<hex>` of the gzip: the blob's digest.
    pub digest: String,
    /// Bytes of the tar inside.
    pub uncompressed: u64,
    /// `sha256:<hex>` of the tar: what an apply must report back.
    pub diff_id: String,
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
}

/// Writes the layer to `path` and fsyncs it, so that no later timed step
/// pays for its write-back.
pub fn build(path: &Path, shape: &Shape) -> anyhow::Result<Layer> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let gzip = Hashing::new(BufWriter::with_capacity(1 << 20, file));
    let tar = Hashing::new(GzEncoder::new(gzip, Compression::default()));
    let mut builder = tar::Builder::new(tar);
    let counts = append_entries(&mut builder, shape).context("build the layer's tar")?;
    let tar = builder.into_inner().context("finish the layer's tar")?;
    let (uncompressed, diff_id, encoder) = tar.finish();
    let gzip = encoder.finish().context("finish the layer's gzip")?;
    let (size, digest, buffered) = gzip.finish();
    let file = buffered.into_inner().map_err(|e| e.into_error())?;
    file.sync_all().with_context(|| format!("sync {}", path.display()))?;
    let (files, dirs, symlinks) = counts;
    ensure!(files == shape.files, "built {files} files, planned {}", shape.files);
    Ok(Layer {
        path: path.to_path_buf(),
        size,
        digest,
        uncompressed,
        diff_id,
        files,
        dirs,
        symlinks,
    })
}

/// Directories first, then the files spread over them, then the symlinks.
/// Returns (files, directories, symlinks).
fn append_entries<W: Write>(builder: &mut tar::Builder<W>, shape: &Shape) -> io::Result<(usize, usize, usize)> {
    let mut dirs = Vec::new();
    for i in 0..TOP_DIRS {
        dirs.push(format!("dir{i:02}"));
        if i % 2 == 0 {
            dirs.push(format!("dir{i:02}/sub"));
        }
    }
    for dir in &dirs {
        let mut header = header(EntryType::Directory, 0o755, 0);
        builder.append_data(&mut header, format!("{dir}/"), io::empty())?;
    }

    let mut rng = Rng::new(SEED);
    let sizes = file_sizes(&mut rng, shape.files, shape.data_bytes);
    let mut links = Vec::new();
    let mut data = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let dir = &dirs[i % dirs.len()];
        let name = format!("file{i:05}.bin");
        fill(&mut rng, i, size as usize, &mut data);
        let mode = if i % 7 == 0 { 0o755 } else { 0o644 };
        let mut header = header(EntryType::Regular, mode, size);
        builder.append_data(&mut header, format!("{dir}/{name}"), data.as_slice())?;
        if i % SYMLINK_EVERY == 0 {
            links.push((format!("{dir}/file{i:05}.link"), name));
        }
    }
    for i in (1..TOP_DIRS).step_by(2) {
        links.push((format!("dir{i:02}/to-sub"), "../dir00/sub".to_string()));
    }
    for (path, target) in &links {
        let mut header = header(EntryType::Symlink, 0o777, 0);
        builder.append_link(&mut header, path, target)?;
    }
    Ok((shape.files, dirs.len(), links.len()))
}

fn header(kind: EntryType, mode: u32, size: u64) -> Header {
    let mut header = Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(MTIME);
    header
}

/// Sizes from a few bytes to a few MiB (weights 1 to 512, drawn at random),
/// adding up to exactly `total`.
fn file_sizes(rng: &mut Rng, count: usize, total: u64) -> Vec<u64> {
    let weights: Vec<u64> = (0..count).map(|_| 1 << (rng.next() % 10)).collect();
    let sum: u64 = weights.iter().sum();
    let mut sizes: Vec<u64> = weights.iter().map(|w| total * w / sum).collect();
    let short = total - sizes.iter().sum::<u64>();
    *sizes.last_mut().expect("at least one file") += short;
    sizes
}

/// Four fifths random bytes, then lines of text up to `size`.
fn fill(rng: &mut Rng, file: usize, size: usize, out: &mut Vec<u8>) {
    out.clear();
    out.resize(size * 4 / 5, 0);
    rng.fill(out);
    let mut line = 0u64;
    while out.len() < size {
        let text = format!("{file:05} {line:08} corten-bench layer text, compressible by design\n");
        let take = text.len().min(size - out.len());
        out.extend_from_slice(&text.as_bytes()[..take]);
        line += 1;
    }
}

/// xorshift64*: fast and plenty random for data that only has to defeat
/// gzip; not for anything that needs real randomness.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, out: &mut [u8]) {
        let mut chunks = out.chunks_exact_mut(8);
        for chunk in &mut chunks {
            chunk.copy_from_slice(&self.next().to_le_bytes());
        }
        let rest = chunks.into_remainder();
        let last = self.next().to_le_bytes();
        rest.copy_from_slice(&last[..rest.len()]);
    }
}

/// Counts and hashes what passes through to `inner`.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    /// (bytes, `sha256:<hex>`, the inner writer).
    fn finish(self) -> (u64, String, W) {
        (self.bytes, format!("sha256:{:x}", self.hasher.finalize()), self.inner)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read as _;

    use super::{build, file_sizes, Rng, Shape};

    #[test]
    fn sizes_add_up_exactly() {
        let sizes = file_sizes(&mut Rng::new(1), 37, 1_000_003);
        assert_eq!(sizes.len(), 37);
        assert_eq!(sizes.iter().sum::<u64>(), 1_000_003);
    }

    #[test]
    fn the_layer_is_the_same_every_time_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let shape = Shape::for_mib(1);
        let a = build(&dir.path().join("a"), &shape).unwrap();
        let b = build(&dir.path().join("b"), &shape).unwrap();
        assert_eq!((&a.digest, &a.diff_id), (&b.digest, &b.diff_id));

        let gz = std::fs::File::open(&a.path).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        let (mut files, mut bytes) = (0, 0);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            if entry.header().entry_type().is_file() {
                files += 1;
                bytes += std::io::copy(&mut entry, &mut std::io::sink()).unwrap();
            }
        }
        assert_eq!((files, bytes), (shape.files, shape.data_bytes));
        // Mostly incompressible: the gzip is about four fifths of the tar.
        let ratio = a.size as f64 / a.uncompressed as f64;
        assert!((0.75..0.9).contains(&ratio), "gzip / tar = {ratio}");
        let mut rest = Vec::new();
        std::fs::File::open(&a.path).unwrap().read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len() as u64, a.size);
    }
}
