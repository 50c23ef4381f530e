//! The files of the content store.
//!
//! A blob becomes visible under `blobs/<alg>/<hex>` only by a rename of a
//! fully written, fsynced and verified file, so a crash never leaves a
//! partial blob under a digest name. Ingests live in `ingest/<sha256 of
//! "<ns>/<ref>">/` so a client's ref never becomes a path.

use std::{
    fs::{self, File},
    io::{self, ErrorKind},
    path::{Path, PathBuf},
    time::SystemTime,
};

use corten_core::{
    digest::{Algorithm, Digest},
    Error,
};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

pub struct Backend {
    root: PathBuf,
}

/// What an ingest directory remembers besides its data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngestMeta {
    /// `<ns>/<ref>`, for whoever inspects the directory by hand.
    pub key: String,
    pub started_at: SystemTime,
    pub total: u64,
    pub expected: Option<String>,
}

pub fn io_err(context: impl std::fmt::Display) -> impl Fn(io::Error) -> Error {
    move |e| Error::internal(&context.to_string(), e)
}

/// Makes a rename or a new entry in `dir` durable.
pub fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("sync {}", dir.display())))
}

impl Backend {
    pub fn open(root: &Path) -> Result<Backend, Error> {
        for dir in ["blobs/sha256", "blobs/sha384", "blobs/sha512", "ingest"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err(format!("create {}", path.display())))?;
        }
        Ok(Backend {
            root: root.to_path_buf(),
        })
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    pub fn ingest_dir(&self, key: &str) -> PathBuf {
        self.root
            .join("ingest")
            .join(hex::encode(sha2::Sha256::digest(key.as_bytes())))
    }

    /// The blob's size, if it is stored.
    pub fn blob_size(&self, digest: &Digest) -> Option<u64> {
        fs::metadata(self.blob_path(digest)).ok().map(|m| m.len())
    }

    pub fn open_blob(&self, digest: &Digest) -> Result<(File, u64), Error> {
        let path = self.blob_path(digest);
        let file = File::open(&path).map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::NotFound(format!("content digest {digest}")),
            _ => Error::internal(&format!("open {}", path.display()), e),
        })?;
        let size = file.metadata().map_err(io_err("stat blob"))?.len();
        Ok((file, size))
    }

    /// Moves a verified, fsynced ingest file into place. Returns false when
    /// the blob was already stored (the ingest data is then dropped).
    pub fn commit(&self, data: &Path, digest: &Digest) -> Result<bool, Error> {
        let target = self.blob_path(digest);
        if target.exists() {
            return Ok(false);
        }
        fs::rename(data, &target).map_err(io_err(format!("rename into {}", target.display())))?;
        sync_dir(target.parent().expect("blob paths have a parent"))?;
        Ok(true)
    }

    pub fn remove_blob(&self, digest: &Digest) -> Result<(), Error> {
        match fs::remove_file(self.blob_path(digest)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::internal("remove blob", e)),
            _ => Ok(()),
        }
    }

    pub fn remove_ingest(&self, key: &str) -> Result<(), Error> {
        match fs::remove_dir_all(self.ingest_dir(key)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(Error::internal("remove ingest", e)),
            _ => Ok(()),
        }
    }

    /// Every stored blob; names that are not valid digests are skipped.
    pub fn blobs(&self) -> Result<Vec<Digest>, Error> {
        let mut out = Vec::new();
        for algorithm in [Algorithm::Sha256, Algorithm::Sha384, Algorithm::Sha512] {
            let dir = self.root.join("blobs").join(algorithm.name());
            for entry in fs::read_dir(&dir).map_err(io_err(format!("list {}", dir.display())))? {
                let entry = entry.map_err(io_err("list blobs"))?;
                if let Ok(d) = Digest::new(algorithm, entry.file_name().to_string_lossy().into_owned()) {
                    out.push(d);
                }
            }
        }
        Ok(out)
    }

    /// Every ingest directory.
    pub fn ingests(&self) -> Result<Vec<PathBuf>, Error> {
        let dir = self.root.join("ingest");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_err("list ingests"))? {
            out.push(entry.map_err(io_err("list ingests"))?.path());
        }
        Ok(out)
    }
}

pub fn read_meta(dir: &Path) -> Result<IngestMeta, Error> {
    let text = fs::read(dir.join("meta.json")).map_err(|e| match e.kind() {
        ErrorKind::NotFound => Error::NotFound("ingest".into()),
        _ => Error::internal("read ingest", e),
    })?;
    serde_json::from_slice(&text).map_err(|e| Error::internal("decode ingest", e))
}

/// Written aside and renamed, so the metadata is whole or absent.
pub fn write_meta(dir: &Path, meta: &IngestMeta) -> Result<(), Error> {
    let tmp = dir.join("meta.json.tmp");
    let bytes = serde_json::to_vec(meta).map_err(|e| Error::internal("encode ingest", e))?;
    fs::write(&tmp, bytes).map_err(io_err("write ingest"))?;
    File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(io_err("sync ingest"))?;
    fs::rename(&tmp, dir.join("meta.json")).map_err(io_err("write ingest"))
}
