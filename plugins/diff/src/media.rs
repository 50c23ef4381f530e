//! Layer media types: how a stored layer is read, and how a new one is written.

use std::io::{self, BufRead, BufReader, Read, Write};

use corten_core::Error;

pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
pub const OCI_LAYER_NONDIST: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
pub const OCI_LAYER_NONDIST_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
pub const OCI_LAYER_NONDIST_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar";
pub const DOCKER_FOREIGN_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// How a layer's bytes must be read before they are a tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// A plain tar.
    Tar,
    /// Said to be compressed: the stream's magic number tells which way. Like
    /// containerd, a `+gzip` layer that is in fact zstd (or plain) is read as
    /// what it is, since Docker pushed such mislabelled layers for years.
    Compressed,
}

/// How a layer of `media_type` is read. An unknown type is Unimplemented,
/// containerd's answer for a media type it has no decompressor for.
pub fn layer_encoding(media_type: &str) -> Result<Encoding, Error> {
    match media_type {
        OCI_LAYER | OCI_LAYER_NONDIST | DOCKER_LAYER | DOCKER_FOREIGN_LAYER => Ok(Encoding::Tar),
        OCI_LAYER_GZIP
        | OCI_LAYER_ZSTD
        | OCI_LAYER_NONDIST_GZIP
        | OCI_LAYER_NONDIST_ZSTD
        | DOCKER_LAYER_GZIP
        | DOCKER_FOREIGN_LAYER_GZIP => Ok(Encoding::Compressed),
        other => Err(Error::Unimplemented(format!(
            "unsupported layer media type {other:?}: not implemented"
        ))),
    }
}

/// The compression of a layer `compare` writes as `media_type` (empty: gzip).
pub fn diff_compression(media_type: &str) -> Result<Compression, Error> {
    match media_type {
        "" | OCI_LAYER_GZIP => Ok(Compression::Gzip),
        OCI_LAYER => Ok(Compression::None),
        OCI_LAYER_ZSTD => Ok(Compression::Zstd),
        other => Err(Error::Unimplemented(format!(
            "unsupported diff media type {other:?}: not implemented"
        ))),
    }
}

/// The uncompressed tar stream of a stored layer.
pub fn decompress<'a, R: Read + 'a>(raw: R, encoding: Encoding) -> io::Result<Box<dyn Read + 'a>> {
    let mut raw = BufReader::with_capacity(1 << 20, raw);
    if encoding == Encoding::Tar {
        return Ok(Box::new(raw));
    }
    let magic = raw.fill_buf()?;
    Ok(if magic.starts_with(&[0x1f, 0x8b]) {
        // Concatenated gzip members are one stream (pigz and Go write them).
        Box::new(flate2::bufread::MultiGzDecoder::new(raw))
    } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(raw)?)
    } else {
        Box::new(raw)
    })
}

/// Like [`decompress`], on a thread of its own: inflating then overlaps with
/// writing the files, which matters for layers of many small files (GNU tar
/// gets the same from its gzip child). The thread stays at most a few MiB
/// ahead, and stops as soon as the reader is dropped.
pub fn decompress_in_background<R: Read + Send + 'static>(raw: R, encoding: Encoding) -> io::Result<ChannelReader> {
    const CHUNK: usize = 1 << 20;
    let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(4);
    std::thread::Builder::new()
        .name("layer-inflate".into())
        .spawn(move || {
            let mut stream = match decompress(raw, encoding) {
                Ok(s) => s,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            loop {
                let mut chunk = vec![0u8; CHUNK];
                let n = match crate::fsutil::read_up_to(&mut stream, &mut chunk) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                chunk.truncate(n);
                // A send fails once the reader is gone: nobody wants the rest.
                if tx.send(Ok(chunk)).is_err() || n == 0 {
                    return;
                }
            }
        })?;
    Ok(ChannelReader {
        rx,
        chunk: Vec::new(),
        pos: 0,
        done: false,
    })
}

/// The reading end of [`decompress_in_background`].
pub struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.chunk.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv() {
                Ok(Ok(chunk)) => {
                    self.done = chunk.is_empty();
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Err(io::Error::other("layer decompression stopped"));
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A compressing writer that must be finished (to write the trailer).
pub enum Compressor<W: Write> {
    None(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Compressor<W> {
    pub fn new(inner: W, compression: Compression) -> io::Result<Self> {
        Ok(match compression {
            Compression::None => Compressor::None(inner),
            Compression::Gzip => Compressor::Gzip(flate2::write::GzEncoder::new(inner, flate2::Compression::default())),
            Compression::Zstd => Compressor::Zstd(zstd::stream::write::Encoder::new(inner, 3)?),
        })
    }

    pub fn finish(self) -> io::Result<W> {
        match self {
            Compressor::None(w) => Ok(w),
            Compressor::Gzip(w) => w.finish(),
            Compressor::Zstd(w) => w.finish(),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::None(w) => w.write(buf),
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::None(w) => w.flush(),
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types() {
        assert_eq!(layer_encoding(OCI_LAYER).unwrap(), Encoding::Tar);
        assert_eq!(layer_encoding(DOCKER_LAYER).unwrap(), Encoding::Tar);
        assert_eq!(layer_encoding(DOCKER_LAYER_GZIP).unwrap(), Encoding::Compressed);
        assert_eq!(layer_encoding(OCI_LAYER_NONDIST_ZSTD).unwrap(), Encoding::Compressed);
        assert!(matches!(
            layer_encoding("application/vnd.oci.image.layer.v1.tar+encrypted"),
            Err(Error::Unimplemented(_))
        ));
        assert!(matches!(layer_encoding("text/plain"), Err(Error::Unimplemented(_))));
        assert_eq!(diff_compression("").unwrap(), Compression::Gzip);
        assert_eq!(diff_compression(OCI_LAYER).unwrap(), Compression::None);
        assert!(matches!(
            diff_compression(DOCKER_LAYER_GZIP),
            Err(Error::Unimplemented(_))
        ));
    }

    #[test]
    fn sniffs_what_a_compressed_layer_really_is() {
        let plain = b"not compressed at all".to_vec();
        let mut gz = Compressor::new(Vec::new(), Compression::Gzip).unwrap();
        gz.write_all(&plain).unwrap();
        let gz = gz.finish().unwrap();
        let mut zs = Compressor::new(Vec::new(), Compression::Zstd).unwrap();
        zs.write_all(&plain).unwrap();
        let zs = zs.finish().unwrap();
        for bytes in [&plain, &gz, &zs] {
            let mut out = Vec::new();
            decompress_in_background(std::io::Cursor::new(bytes.clone()), Encoding::Compressed)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(&out, &plain);
            let mut out = Vec::new();
            decompress(&bytes[..], Encoding::Compressed)
                .unwrap()
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, plain);
        }
    }
}
