//! Byte streams measured as they pass: the digest and size of an
//! uncompressed layer, and the bounds that stop a hostile one.
//!
//! The tar crate buffers a PAX or GNU long-name record whole before it hands
//! out the entry it describes, so a single 60 GiB "header" would be read
//! into memory. Rather than parse tar a second time, the reader is given a
//! window: while an entry is being handled, the stream may advance to the end
//! of that entry's data plus a small allowance for the headers of the next
//! one. Anything the tar crate reads past that is a header too large to hold.

use std::{
    cell::Cell,
    io::{self, Read, Write},
    rc::Rc,
};

use corten_core::digest::{Algorithm, Digest};
use sha2::{Digest as _, Sha256};

/// Metadata the tar crate may buffer between two entries: the PAX, GNU long
/// name and long link records and their headers. Go's archive/tar (and so
/// containerd) refuses any one such record over 1 MiB.
pub const MAX_HEADER_BYTES: u64 = 4 << 20;

/// Which bound a stream ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// The whole stream grew past this many bytes.
    Total(u64),
    /// The metadata before one entry grew past this many bytes.
    Headers(u64),
}

impl Overrun {
    pub fn describe(self) -> String {
        match self {
            Overrun::Total(max) => format!("layer is larger than {max} uncompressed bytes (max_uncompressed_bytes)"),
            Overrun::Headers(max) => format!("tar header records before an entry exceed {max} bytes"),
        }
    }
}

/// The position and bounds of a [`MeteredReader`], shared with the code
/// driving the tar reader (which owns the reader meanwhile).
#[derive(Debug)]
pub struct Meter {
    pos: Cell<u64>,
    max_total: u64,
    window_end: Cell<u64>,
    overrun: Cell<Option<Overrun>>,
}

impl Meter {
    pub fn new(max_total: u64) -> Rc<Meter> {
        Rc::new(Meter {
            pos: Cell::new(0),
            max_total,
            window_end: Cell::new(MAX_HEADER_BYTES),
            overrun: Cell::new(None),
        })
    }

    /// Bytes read so far.
    pub fn position(&self) -> u64 {
        self.pos.get()
    }

    /// Lets the stream run `data_len` bytes past the current position, plus
    /// the header allowance.
    pub fn open_window(&self, data_len: u64) {
        let end = self.pos.get().saturating_add(data_len).saturating_add(MAX_HEADER_BYTES);
        self.window_end.set(end);
    }

    /// Lifts the per-entry window (for draining what follows the archive).
    pub fn close_window(&self) {
        self.window_end.set(u64::MAX);
    }

    /// The bound the stream ran into, if it did.
    pub fn overrun(&self) -> Option<Overrun> {
        self.overrun.get()
    }
}

/// Counts and hashes what is read through it and fails a read that would go
/// past the [`Meter`]'s bounds.
pub struct MeteredReader<R> {
    inner: R,
    meter: Rc<Meter>,
    hasher: Sha256,
}

impl<R: Read> MeteredReader<R> {
    pub fn new(inner: R, meter: Rc<Meter>) -> Self {
        MeteredReader {
            inner,
            meter,
            hasher: Sha256::new(),
        }
    }

    /// The sha256 of everything read.
    pub fn digest(&self) -> Digest {
        sha256_digest(self.hasher.clone())
    }
}

impl<R: Read> Read for MeteredReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.meter.pos.get();
        let (limit, overrun) = if self.meter.window_end.get() < self.meter.max_total {
            (self.meter.window_end.get(), Overrun::Headers(MAX_HEADER_BYTES))
        } else {
            (self.meter.max_total, Overrun::Total(self.meter.max_total))
        };
        let allowed = limit.saturating_sub(pos);
        if buf.is_empty() {
            return Ok(0);
        }
        if allowed == 0 {
            // At the bound only a stream that really goes on is an overrun.
            let mut probe = [0u8; 1];
            if self.inner.read(&mut probe)? == 0 {
                return Ok(0);
            }
            self.meter.overrun.set(Some(overrun));
            return Err(io::Error::new(io::ErrorKind::InvalidData, overrun.describe()));
        }
        let want = buf.len().min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.hasher.update(&buf[..n]);
        self.meter.pos.set(pos + n as u64);
        Ok(n)
    }
}

/// Counts and hashes what is written through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }

    /// The sha256 and size of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (sha256_digest(self.hasher), self.written, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn sha256_digest(hasher: Sha256) -> Digest {
    Digest::new(Algorithm::Sha256, hex::encode(hasher.finalize())).expect("sha256 output is a valid digest")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_and_bounds() {
        let meter = Meter::new(10);
        meter.close_window();
        let mut r = MeteredReader::new(&b"hello"[..], meter.clone());
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(
            r.digest().to_string(),
            "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(meter.position(), 5);

        // Exactly at the bound is fine; one byte more is not.
        let meter = Meter::new(5);
        meter.close_window();
        let mut r = MeteredReader::new(&b"hello"[..], meter.clone());
        assert_eq!(r.read_to_end(&mut Vec::new()).unwrap(), 5);
        let meter = Meter::new(4);
        meter.close_window();
        let mut r = MeteredReader::new(&b"hello"[..], meter.clone());
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert_eq!(meter.overrun(), Some(Overrun::Total(4)));
    }

    #[test]
    fn window_bounds_headers() {
        let data = vec![0u8; (MAX_HEADER_BYTES + 10) as usize];
        let meter = Meter::new(u64::MAX);
        let mut r = MeteredReader::new(&data[..], meter.clone());
        assert!(r.read_to_end(&mut Vec::new()).is_err());
        assert_eq!(meter.overrun(), Some(Overrun::Headers(MAX_HEADER_BYTES)));

        let meter = Meter::new(u64::MAX);
        meter.open_window(10);
        let mut r = MeteredReader::new(&data[..], meter.clone());
        assert_eq!(r.read_to_end(&mut Vec::new()).unwrap(), data.len());
    }
}
