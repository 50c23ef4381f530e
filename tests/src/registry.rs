//! A real local registry and the fixture images the pull tests use.
//!
//! [`Registry::start`] runs Debian's `docker-registry` (distribution 2.8) on
//! a free loopback port with its own temporary storage. The images are built
//! here, from Debian's static busybox and deterministic pseudo-random data,
//! as OCI image manifests, configs and tar+gzip layers, and pushed with the
//! registry HTTP API V2 (blob uploads, then manifests), exactly as a client
//! such as `docker push` would.
//!
//! Fixtures:
//! - [`Registry::push_busybox`]: one layer, a working busybox root.
//! - [`Registry::push_busybox_index`]: the same behind an OCI image index
//!   with linux/amd64 and linux/arm64 entries, for platform selection.
//! - [`Registry::push_multilayer`]: four layers with large incompressible
//!   files, whiteouts, an opaque directory, a hardlink and symlinks; the
//!   tree it unpacks to is described on the method.
//! - [`Registry::push_bad`]: images a correct client must refuse; see
//!   [`BadImage`].
//!
//! Everything is deterministic: the same call gives the same digests.
//!
//! [`Registry::start_with_auth`] runs the same registry behind a login:
//! [`AuthScheme::Basic`] is distribution's `htpasswd` (bcrypt entries,
//! basic auth on every request), [`AuthScheme::Token`] its `token` scheme,
//! with a [`TokenServer`] in this process as the realm: it checks the
//! user's basic credentials (or an OAuth2 password grant) and hands out
//! JWTs signed with a key whose certificate is the registry's root bundle,
//! so a client does the whole token dance. The fixture pushes authenticate
//! by themselves on such a registry.

use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine as _,
};

use flate2::{read::GzDecoder, write::GzEncoder, Compression};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::{free_port, system_tool, DEADLINE};

pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The `PATH` every fixture image's config sets.
pub const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where Debian's `busybox-static` installs its binary.
const BUSYBOX: &str = "/bin/busybox";

/// The applets linked to busybox in the fixture images' `bin/`.
pub const BUSYBOX_APPLETS: [&str; 6] = ["sh", "ls", "echo", "cat", "true", "sleep"];

/// How many large files [`Registry::push_multilayer`] writes into `data/`.
pub const MULTILAYER_DATA_FILES: usize = 8;

const MIB: usize = 1 << 20;

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut hex = String::with_capacity(64);
    for b in hash {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("sha256:{hex}")
}

/// `len` incompressible bytes from an xorshift64* generator, the same for
/// the same `seed`.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    // Never a zero state, which xorshift cannot leave.
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// One entry of a layer's tar stream. Whiteouts are ordinary empty files
/// with the OCI names; [`Entry::whiteout`] and [`Entry::opaque`] build them.
#[derive(Clone, Debug)]
pub enum Entry {
    Dir { path: String, mode: u32 },
    File { path: String, mode: u32, data: Vec<u8> },
    Symlink { path: String, target: String },
    Hardlink { path: String, target: String },
}

impl Entry {
    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::Dir {
            path: path.into(),
            mode,
        }
    }

    pub fn file(path: &str, mode: u32, data: impl Into<Vec<u8>>) -> Entry {
        Entry::File {
            path: path.into(),
            mode,
            data: data.into(),
        }
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::Symlink {
            path: path.into(),
            target: target.into(),
        }
    }

    /// `path` becomes another name of `target`, a path from the layer root.
    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::Hardlink {
            path: path.into(),
            target: target.into(),
        }
    }

    /// Deletes `path` (file or whole directory) of the layers below.
    pub fn whiteout(path: &str) -> Entry {
        let (dir, name) = match path.rsplit_once('/') {
            Some((dir, name)) => (format!("{dir}/"), name),
            None => (String::new(), path),
        };
        Entry::file(&format!("{dir}.wh.{name}"), 0o600, Vec::new())
    }

    /// Hides everything the layers below have in directory `dir`.
    pub fn opaque(dir: &str) -> Entry {
        Entry::file(&format!("{dir}/.wh..wh..opq"), 0o600, Vec::new())
    }
}

/// A layer: its uncompressed tar (whose digest is the diff ID) and the
/// gzip blob the registry stores (whose digest the manifest names).
#[derive(Clone, Debug)]
pub struct Layer {
    pub tar: Vec<u8>,
    pub blob: Vec<u8>,
    pub digest: String,
    pub diff_id: String,
}

impl Layer {
    /// Builds the tar (root-owned entries, a fixed mtime) and gzips it.
    /// `Compression::none()` suits incompressible data: the result is still
    /// gzip (stored deflate blocks), as a real compressor would emit there.
    pub fn build(entries: &[Entry], level: Compression) -> Layer {
        let mut builder = tar::Builder::new(Vec::new());
        for entry in entries {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(1_700_000_000);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(0);
            let appended = match entry {
                Entry::Dir { path, mode } => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*mode);
                    builder.append_data(&mut h, path, &[][..])
                }
                Entry::File { path, mode, data } => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*mode);
                    h.set_size(data.len() as u64);
                    builder.append_data(&mut h, path, &data[..])
                }
                Entry::Symlink { path, target } => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    builder.append_link(&mut h, path, target)
                }
                Entry::Hardlink { path, target } => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(0o644);
                    builder.append_link(&mut h, path, target)
                }
            };
            appended.unwrap_or_else(|e| panic!("tar entry {entry:?}: {e}"));
        }
        let tar = builder.into_inner().expect("finish tar");
        let mut gz = GzEncoder::new(Vec::with_capacity(tar.len() / 2 + 1024), level);
        gz.write_all(&tar).expect("gzip layer");
        let blob = gz.finish().expect("finish gzip");
        Layer {
            digest: sha256_digest(&blob),
            diff_id: sha256_digest(&tar),
            tar,
            blob,
        }
    }

    pub fn size(&self) -> u64 {
        self.blob.len() as u64
    }
}

/// A working busybox root: `bin/busybox` (the real static binary, 0755)
/// with [`BUSYBOX_APPLETS`] symlinked to it, `etc/passwd` with root, and
/// the directories a container expects (`tmp` is 1777).
pub fn busybox_layer() -> Layer {
    static LAYER: OnceLock<Layer> = OnceLock::new();
    LAYER.get_or_init(build_busybox_layer).clone()
}

fn build_busybox_layer() -> Layer {
    let busybox = std::fs::read(BUSYBOX).unwrap_or_else(|e| {
        panic!("{BUSYBOX} is unreadable ({e}): install Debian's busybox-static package (the test command does this)")
    });
    let mut entries = vec![Entry::dir("bin", 0o755), Entry::file("bin/busybox", 0o755, busybox)];
    for applet in BUSYBOX_APPLETS {
        entries.push(Entry::symlink(&format!("bin/{applet}"), "busybox"));
    }
    entries.extend([
        Entry::dir("dev", 0o755),
        Entry::dir("etc", 0o755),
        Entry::file("etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"),
        Entry::file("etc/group", 0o644, "root:x:0:\n"),
        Entry::dir("proc", 0o555),
        Entry::dir("root", 0o700),
        Entry::dir("sys", 0o555),
        Entry::dir("tmp", 0o1777),
    ]);
    Layer::build(&entries, Compression::fast())
}

/// The layers of [`Registry::push_multilayer`], bottom first.
pub fn multilayer_layers(approx_mib: usize) -> Vec<Layer> {
    let file_len = multilayer_file_len(approx_mib);
    let mut data = vec![Entry::dir("data", 0o755)];
    for i in 0..MULTILAYER_DATA_FILES {
        data.push(Entry::file(
            &format!("data/file-{i}"),
            0o644,
            pseudo_random(i as u64, file_len),
        ));
    }
    data.extend([
        Entry::file("data/doomed", 0o644, "deleted by the layer above\n"),
        Entry::dir("gone", 0o755),
        Entry::file("gone/a", 0o644, "a\n"),
        Entry::dir("gone/sub", 0o755),
        Entry::file("gone/sub/b", 0o644, "b\n"),
        Entry::dir("opaque", 0o755),
        Entry::file("opaque/old-1", 0o644, "old\n"),
        Entry::dir("opaque/old-sub", 0o755),
        Entry::file("opaque/old-sub/old-2", 0o644, "old\n"),
        Entry::dir("etc", 0o755),
        Entry::file("etc/motd", 0o644, "layer 2\n"),
    ]);
    let deletions = [
        Entry::dir("data", 0o755),
        Entry::whiteout(&format!("data/file-{}", MULTILAYER_DATA_FILES - 1)),
        Entry::whiteout("data/doomed"),
        Entry::whiteout("gone"),
        Entry::dir("opaque", 0o755),
        Entry::opaque("opaque"),
        Entry::file("opaque/new", 0o644, "new\n"),
        Entry::dir("etc", 0o755),
        Entry::file("etc/motd", 0o644, "layer 3\n"),
    ];
    let links = [
        Entry::dir("links", 0o755),
        Entry::file("links/target", 0o644, "linked\n"),
        Entry::hardlink("links/hard", "links/target"),
        Entry::symlink("links/soft", "target"),
        Entry::symlink("links/abs", "/bin/busybox"),
    ];
    vec![
        busybox_layer(),
        Layer::build(&data, Compression::none()),
        Layer::build(&deletions, Compression::fast()),
        Layer::build(&links, Compression::fast()),
    ]
}

/// The size of each `data/file-<i>` of a multi-layer image of `approx_mib`.
pub fn multilayer_file_len(approx_mib: usize) -> usize {
    (approx_mib.max(1) * MIB) / MULTILAYER_DATA_FILES
}

/// An OCI image config for `linux/<arch>` running `/bin/sh`.
pub fn config_json(arch: &str, diff_ids: &[String]) -> Vec<u8> {
    let config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": [PATH_ENV],
            "Cmd": ["/bin/sh"],
            "WorkingDir": "/",
        },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": diff_ids.iter().map(|_| json!({
            "created": "2024-01-01T00:00:00Z",
            "created_by": "corten-tests",
        })).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&config).expect("config JSON")
}

/// A content descriptor as JSON.
pub fn descriptor(media_type: &str, digest: &str, size: u64) -> Value {
    json!({ "mediaType": media_type, "digest": digest, "size": size })
}

/// An OCI image manifest over a config blob and layer descriptors.
pub fn manifest_json(config: &[u8], layers: &[Value]) -> Vec<u8> {
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor(OCI_CONFIG, &sha256_digest(config), config.len() as u64),
        "layers": layers,
    });
    serde_json::to_vec(&manifest).expect("manifest JSON")
}

/// An OCI image index over `(manifest, os, architecture)` entries.
pub fn index_json(manifests: &[(&[u8], &str, &str)]) -> Vec<u8> {
    let entries: Vec<Value> = manifests
        .iter()
        .map(|(body, os, arch)| {
            let mut d = descriptor(OCI_MANIFEST, &sha256_digest(body), body.len() as u64);
            d["platform"] = json!({ "os": os, "architecture": arch });
            d
        })
        .collect();
    let index = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries });
    serde_json::to_vec(&index).expect("index JSON")
}

/// The chain ID of layers with these diff IDs, bottom first: the name
/// containerd gives the committed snapshot of the topmost layer.
pub fn chain_id(diff_ids: &[String]) -> String {
    let mut ids = diff_ids.iter();
    let mut chain = ids.next().expect("at least one layer").clone();
    for diff_id in ids {
        chain = sha256_digest(format!("{chain} {diff_id}").as_bytes());
    }
    chain
}

/// What a push left in the registry.
#[derive(Clone, Debug)]
pub struct PushedImage {
    /// `127.0.0.1:PORT/name:tag`, what `ctr images pull --plain-http` takes.
    pub reference: String,
    /// The digest the tag resolves to: the manifest's, or the index's.
    pub manifest_digest: String,
    /// The media type of what the tag resolves to.
    pub media_type: &'static str,
    /// The image config (linux/amd64's behind an index).
    pub config_digest: String,
    /// `(digest, diff_id, size)` per layer, bottom first, as the manifest
    /// names them (so a bad fixture's wrong values are here too).
    pub layers: Vec<(String, String, u64)>,
    /// Behind an index: `(os/arch, manifest digest, config digest)` per entry.
    pub platforms: Vec<(String, String, String)>,
}

impl PushedImage {
    /// The chain ID of the whole image: its unpacked snapshot's name.
    pub fn chain_id(&self) -> String {
        let diff_ids: Vec<String> = self.layers.iter().map(|l| l.1.clone()).collect();
        chain_id(&diff_ids)
    }
}

/// Images a correct client must refuse to pull, each pushed so that the
/// registry accepts it (distribution verifies every uploaded blob's digest
/// and that a manifest's blobs exist at push time, so a plain wrong digest
/// cannot be uploaded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadImage {
    /// The busybox image, whose layer blob is deleted from the registry
    /// after the manifest was accepted: fetching the layer gets 404
    /// (`BLOB_UNKNOWN`), so the pull fails; containerd 1.6's ctr says
    /// "could not fetch content descriptor ... from remote: not found" and
    /// records no image.
    MissingBlob,
    /// The busybox image whose layer descriptor says one byte less than the
    /// blob has (digest and bytes are right). The client reads the whole
    /// blob and commits it with the descriptor's size, so it is the content
    /// store that must refuse the commit (containerd: "failed size
    /// validation: N != N-1: failed precondition"); no image is recorded.
    /// (One byte more would be caught by ctr itself, as a short read.)
    WrongSize,
    /// The layer descriptor names another real blob (a small layer with one
    /// file, with its right digest and size) while the config's diff_ids
    /// still name busybox's: every fetch verifies, but the unpacked tar's
    /// digest is not the diff ID the config promises, so unpacking must fail
    /// (ctr: "wrong diff id calculated on extraction"). ctr 1.6 records the
    /// image before it unpacks, so the image stays, not unpacked.
    ForeignLayer,
}

/// A `docker-registry` process with its own storage; killed on drop.
pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    agent: ureq::Agent,
    /// Set by [`Registry::start_with_auth`].
    auth: Option<AuthSetup>,
}

/// A registry's answer: status, headers and body.
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Registry {
    /// Starts the registry and waits until `GET /v2/` answers 200.
    pub fn start() -> Registry {
        Registry::launch(None)
    }

    /// Starts a registry that lets in only `user` with `password`, by
    /// `scheme`, and waits until `GET /v2/` answers (401 without a login).
    /// The fixture pushes and [`Registry::get`] log in by themselves.
    pub fn start_with_auth(scheme: AuthScheme, user: &str, password: &str) -> Registry {
        let token = match scheme {
            AuthScheme::Basic => None,
            AuthScheme::Token => Some(TokenServer::start(user, password)),
        };
        Registry::launch(Some(AuthSetup {
            scheme,
            user: user.to_string(),
            password: password.to_string(),
            token,
        }))
    }

    fn launch(auth: Option<AuthSetup>) -> Registry {
        let binary = system_tool("docker-registry", "docker-registry");
        let dir = tempfile::Builder::new()
            .prefix("corten-registry-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir(dir.path().join("storage")).expect("storage dir");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        let mut registry = Registry {
            dir,
            port: 0,
            child: None,
            agent,
            auth,
        };
        registry.write_auth_files();
        // The free port may be taken between our probe and the registry's
        // bind: then it exits at once, and another port is tried.
        for _ in 0..3 {
            registry.port = free_port();
            registry.spawn(&binary);
            match registry.wait_ready() {
                Ok(()) => return registry,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("{log}"),
            }
        }
        panic!("docker-registry found no free port:\n{}", registry.log());
    }

    fn spawn(&mut self, binary: &Path) {
        let config = self.dir.path().join("config.yml");
        let mut text = registry_config(&self.storage(), self.port);
        if let Some(auth) = &self.auth {
            text.push_str(&auth.config(self.dir.path()));
        }
        std::fs::write(&config, text).expect("write registry config");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("registry.log"))
            .expect("open registry log");
        let child = Command::new(binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn docker-registry");
        self.child = Some(child);
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let start = Instant::now();
        let url = format!("{}/v2/", self.base());
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("poll registry")) {
                self.child = None;
                return Err(format!("docker-registry exited with {status}:\n{}", self.log()));
            }
            if let Ok(resp) = self.agent.get(&url).call() {
                let status = resp.status().as_u16();
                // Behind a login, the challenge says it is up.
                if status == 200 || (status == 401 && self.auth.is_some()) {
                    return Ok(());
                }
            }
            if start.elapsed() > DEADLINE {
                return Err(format!(
                    "docker-registry not answering {url} after {DEADLINE:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// `127.0.0.1:PORT`, the registry host of the references it serves.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Where the registry keeps its blobs and repositories.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    fn base(&self) -> String {
        format!("http://{}", self.host())
    }

    fn answer(what: &str, resp: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Answer {
        let resp = resp.unwrap_or_else(|e| panic!("{what}: {e}"));
        let status = resp.status().as_u16();
        let headers: Vec<(String, String)> = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let content_type = resp
            .headers()
            .get("content-type")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .unwrap_or_default();
        let body = resp
            .into_body()
            .into_with_config()
            .limit(1 << 32)
            .read_to_vec()
            .unwrap_or_else(|e| panic!("{what}: reading the body: {e}"));
        Answer {
            status,
            content_type,
            headers,
            body,
        }
    }

    /// GET `path` with exactly `authorization` (none: anonymous), whatever
    /// the registry's login.
    pub fn get_as(&self, path: &str, accept: &str, authorization: Option<&str>) -> Answer {
        let url = format!("{}{path}", self.base());
        let request = self.agent.get(&url).header("accept", accept);
        let request = match authorization {
            Some(value) => request.header("authorization", value),
            None => request,
        };
        Self::answer(&format!("GET {url}"), request.call())
    }

    /// GET `path` (starting with `/v2/`), accepting `accept` media types.
    pub fn get(&self, path: &str, accept: &str) -> Answer {
        let url = format!("{}{path}", self.base());
        Self::answer(
            &format!("GET {url}"),
            self.authorize(self.agent.get(&url), path)
                .header("accept", accept)
                .call(),
        )
    }

    fn head(&self, path: &str) -> u16 {
        let url = format!("{}{path}", self.base());
        Self::answer(
            &format!("HEAD {url}"),
            self.authorize(self.agent.head(&url), path).call(),
        )
        .status
    }

    /// Uploads `bytes` into repository `name` (monolithic: POST, then PUT
    /// with the digest) unless it is there already; returns the digest.
    pub fn push_blob(&self, name: &str, bytes: &[u8]) -> String {
        let digest = sha256_digest(bytes);
        if self.head(&format!("/v2/{name}/blobs/{digest}")) == 200 {
            return digest;
        }
        let path = format!("/v2/{name}/blobs/uploads/");
        let url = format!("{}{path}", self.base());
        let started = Self::answer(
            &format!("POST {url}"),
            self.authorize(self.agent.post(&url), &path).send_empty(),
        );
        assert_eq!(started.status, 202, "POST {url}: {}", started.text());
        let location = started
            .header("location")
            .unwrap_or_else(|| panic!("POST {url}: no Location"))
            .to_string();
        let mut put = if location.starts_with('/') {
            format!("{}{location}", self.base())
        } else {
            location
        };
        put.push(if put.contains('?') { '&' } else { '?' });
        put.push_str("digest=");
        put.push_str(&digest);
        let done = Self::answer(
            &format!("PUT {put}"),
            self.authorize(self.agent.put(&put), &path)
                .content_type("application/octet-stream")
                .send(bytes),
        );
        assert_eq!(done.status, 201, "PUT {put}: {}", done.text());
        assert_eq!(done.header("docker-content-digest"), Some(digest.as_str()));
        digest
    }

    /// Deletes a blob from repository `name` (the registry has deletes on).
    pub fn delete_blob(&self, name: &str, digest: &str) {
        let path = format!("/v2/{name}/blobs/{digest}");
        let url = format!("{}{path}", self.base());
        let answer = Self::answer(
            &format!("DELETE {url}"),
            self.authorize(self.agent.delete(&url), &path).call(),
        );
        assert_eq!(answer.status, 202, "DELETE {url}: {}", answer.text());
    }

    /// PUTs a manifest or index under `reference` (a tag or its digest);
    /// returns its digest.
    pub fn push_manifest(&self, name: &str, reference: &str, media_type: &str, body: &[u8]) -> String {
        let digest = sha256_digest(body);
        let path = format!("/v2/{name}/manifests/{reference}");
        let url = format!("{}{path}", self.base());
        let answer = Self::answer(
            &format!("PUT {url}"),
            self.authorize(self.agent.put(&url), &path)
                .content_type(media_type)
                .send(body),
        );
        assert_eq!(answer.status, 201, "PUT {url}: {}", answer.text());
        assert_eq!(answer.header("docker-content-digest"), Some(digest.as_str()));
        digest
    }

    /// Pushes `layers` with a `linux/<arch>` config as `name:tag`.
    pub fn push_image(&self, name: &str, tag: &str, layers: &[Layer], arch: &str) -> PushedImage {
        let diff_ids: Vec<String> = layers.iter().map(|l| l.diff_id.clone()).collect();
        let descriptors: Vec<Value> = layers
            .iter()
            .map(|l| descriptor(OCI_LAYER_GZIP, &l.digest, l.size()))
            .collect();
        self.push_parts(name, tag, layers, &config_json(arch, &diff_ids), descriptors)
    }

    /// Uploads every blob of `layers` and `config`, then the manifest made
    /// of `config` and `descriptors` (which need not describe `layers`).
    fn push_parts(
        &self,
        name: &str,
        tag: &str,
        layers: &[Layer],
        config: &[u8],
        descriptors: Vec<Value>,
    ) -> PushedImage {
        for layer in layers {
            self.push_blob(name, &layer.blob);
        }
        let config_digest = self.push_blob(name, config);
        let manifest = manifest_json(config, &descriptors);
        let manifest_digest = self.push_manifest(name, tag, OCI_MANIFEST, &manifest);
        let config_value: Value = serde_json::from_slice(config).expect("config JSON");
        let diff_ids = config_value["rootfs"]["diff_ids"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let layers = descriptors
            .iter()
            .zip(diff_ids.iter().map(|d| d.as_str().unwrap_or_default().to_string()))
            .map(|(d, diff_id)| {
                let digest = d["digest"].as_str().unwrap_or_default().to_string();
                (digest, diff_id, d["size"].as_u64().unwrap_or_default())
            })
            .collect();
        PushedImage {
            reference: format!("{}/{name}:{tag}", self.host()),
            manifest_digest,
            media_type: OCI_MANIFEST,
            config_digest,
            layers,
            platforms: Vec::new(),
        }
    }

    /// The one-layer busybox image ([`busybox_layer`]) as `name:tag`.
    pub fn push_busybox(&self, name: &str, tag: &str) -> PushedImage {
        self.push_image(name, tag, &[busybox_layer()], "amd64")
    }

    /// An OCI image index as `name:tag` over two busybox manifests:
    /// linux/amd64 and linux/arm64. Both share the layer (the binary is
    /// amd64: this is for platform selection, not for running) and each has
    /// its own config, whose `architecture` says its platform.
    pub fn push_busybox_index(&self, name: &str, tag: &str) -> PushedImage {
        let layer = busybox_layer();
        self.push_blob(name, &layer.blob);
        let descriptors = [descriptor(OCI_LAYER_GZIP, &layer.digest, layer.size())];
        let mut manifests = Vec::new();
        let mut platforms = Vec::new();
        for arch in ["amd64", "arm64"] {
            let config = config_json(arch, std::slice::from_ref(&layer.diff_id));
            let config_digest = self.push_blob(name, &config);
            let manifest = manifest_json(&config, &descriptors);
            let manifest_digest = sha256_digest(&manifest);
            self.push_manifest(name, &manifest_digest, OCI_MANIFEST, &manifest);
            platforms.push((format!("linux/{arch}"), manifest_digest, config_digest));
            manifests.push((manifest, arch));
        }
        let entries: Vec<(&[u8], &str, &str)> = manifests.iter().map(|(m, a)| (&m[..], "linux", *a)).collect();
        let index = index_json(&entries);
        let index_digest = self.push_manifest(name, tag, OCI_INDEX, &index);
        PushedImage {
            reference: format!("{}/{name}:{tag}", self.host()),
            manifest_digest: index_digest,
            media_type: OCI_INDEX,
            config_digest: platforms[0].2.clone(),
            layers: vec![(layer.digest.clone(), layer.diff_id.clone(), layer.size())],
            platforms,
        }
    }

    /// A four-layer image as `name:tag` ([`multilayer_layers`]):
    /// 1. the busybox layer;
    /// 2. `data/file-0` .. `data/file-7` of pseudo-random bytes
    ///    ([`pseudo_random`] seeded with the index, [`multilayer_file_len`]
    ///    each, about `approx_mib` MiB in all), `data/doomed`, `gone/a`,
    ///    `gone/sub/b`, `opaque/old-1`, `opaque/old-sub/old-2`, `etc/motd`
    ///    ("layer 2\n");
    /// 3. whiteouts of `data/file-7`, `data/doomed` and the directory
    ///    `gone`; `opaque` made opaque with only `opaque/new` ("new\n");
    ///    `etc/motd` replaced by "layer 3\n";
    /// 4. `links/target` ("linked\n"), `links/hard` a hardlink to it,
    ///    `links/soft` -> `target`, `links/abs` -> `/bin/busybox`.
    ///
    /// So the unpacked tree has `data/file-0..6` only, no `data/doomed`, no
    /// `gone`, `opaque` holding just `new`, and the motd of layer 3.
    pub fn push_multilayer(&self, name: &str, tag: &str, approx_mib: usize) -> PushedImage {
        self.push_image(name, tag, &multilayer_layers(approx_mib), "amd64")
    }

    /// Pushes one of the [`BadImage`] fixtures as `name:tag`.
    pub fn push_bad(&self, name: &str, tag: &str, kind: BadImage) -> PushedImage {
        let busybox = busybox_layer();
        let config = config_json("amd64", std::slice::from_ref(&busybox.diff_id));
        match kind {
            BadImage::MissingBlob => {
                let image = self.push_image(name, tag, std::slice::from_ref(&busybox), "amd64");
                self.delete_blob(name, &busybox.digest);
                image
            }
            BadImage::WrongSize => {
                let wrong = descriptor(OCI_LAYER_GZIP, &busybox.digest, busybox.size() - 1);
                self.push_parts(name, tag, &[busybox], &config, vec![wrong])
            }
            BadImage::ForeignLayer => {
                let other = Layer::build(
                    &[Entry::file("not-busybox", 0o644, "another layer\n")],
                    Compression::fast(),
                );
                let foreign = descriptor(OCI_LAYER_GZIP, &other.digest, other.size());
                self.push_parts(name, tag, &[other], &config, vec![foreign])
            }
        }
    }
}

/// How a registry from [`Registry::start_with_auth`] checks its clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthScheme {
    /// distribution's `htpasswd`: basic auth on every request, checked
    /// against bcrypt entries.
    Basic,
    /// distribution's `token`: a bearer token from the [`TokenServer`] named
    /// as the realm in the registry's challenge.
    Token,
}

/// The login of a registry behind auth.
struct AuthSetup {
    scheme: AuthScheme,
    user: String,
    password: String,
    token: Option<TokenServer>,
}

/// The token server's issuer and the service (audience) the registry
/// expects in its tokens.
const TOKEN_ISSUER: &str = "corten-tests-token-issuer";
const TOKEN_SERVICE: &str = "corten-tests-registry";
/// How long a token lasts.
const TOKEN_LIFETIME: u64 = 300;

impl AuthSetup {
    /// The `auth:` section of the registry's config.
    fn config(&self, dir: &Path) -> String {
        match (&self.token, self.scheme) {
            (Some(token), AuthScheme::Token) => format!(
                "auth:
  token:
    realm: {realm}
    service: {TOKEN_SERVICE}
    issuer: {TOKEN_ISSUER}
    rootcertbundle: {bundle}
",
                realm = token.realm(),
                bundle = dir.join("token-root.pem").display()
            ),
            _ => format!(
                "auth:
  htpasswd:
    realm: corten-tests
    path: {}
",
                dir.join("htpasswd").display()
            ),
        }
    }
}

impl Registry {
    fn write_auth_files(&self) {
        let Some(auth) = &self.auth else {
            return;
        };
        match &auth.token {
            Some(token) => {
                std::fs::write(self.dir.path().join("token-root.pem"), token.certificate_pem())
                    .expect("write the token root bundle");
            }
            None => {
                // The lowest cost bcrypt allows: the registry checks every
                // request's password.
                let hash = bcrypt::hash(&auth.password, 4).expect("bcrypt");
                std::fs::write(self.dir.path().join("htpasswd"), format!("{}:{hash}\n", auth.user))
                    .expect("write htpasswd");
            }
        }
    }

    /// `(user, password)` a registry from [`Registry::start_with_auth`] lets in.
    pub fn login(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|a| (a.user.as_str(), a.password.as_str()))
    }

    /// The token server of an [`AuthScheme::Token`] registry.
    pub fn token_server(&self) -> Option<&TokenServer> {
        self.auth.as_ref().and_then(|a| a.token.as_ref())
    }

    /// The `Authorization` the fixture requests to `path` carry: the login
    /// as basic auth, or a token for the repository `path` names, minted
    /// directly (pull, push and delete).
    pub fn authorization(&self, path: &str) -> Option<String> {
        let auth = self.auth.as_ref()?;
        Some(match &auth.token {
            None => basic_authorization(&auth.user, &auth.password),
            Some(server) => {
                let access: Vec<(String, Vec<String>)> = repository_of(path)
                    .map(|name| {
                        (
                            name.to_string(),
                            vec!["pull".to_string(), "push".to_string(), "delete".to_string()],
                        )
                    })
                    .into_iter()
                    .collect();
                format!("Bearer {}", server.mint(&auth.user, &access))
            }
        })
    }

    fn authorize<B>(&self, request: ureq::RequestBuilder<B>, path: &str) -> ureq::RequestBuilder<B> {
        match self.authorization(path) {
            Some(value) => request.header("authorization", value),
            None => request,
        }
    }
}

/// `Basic <base64(user:password)>`.
pub fn basic_authorization(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

/// A docker `config.json` that logs in to `host` as `user`, the way
/// `docker login` writes it (`auths.<host>.auth` is base64 `user:password`).
pub fn docker_config_json(host: &str, user: &str, password: &str) -> String {
    json!({ "auths": { host: { "auth": STANDARD.encode(format!("{user}:{password}")) } } }).to_string()
}

/// The repository of a `/v2/<name>/{blobs,manifests,tags}/...` path.
fn repository_of(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/v2/")?;
    ["/blobs/", "/manifests/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.find(marker))
        .min()
        .map(|at| &rest[..at])
}

/// One request the [`TokenServer`] answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// `GET` (basic auth) or `POST` (an OAuth2 password grant).
    pub method: String,
    /// The user that asked, when it gave one.
    pub user: Option<String>,
    /// The scopes asked for, e.g. `repository:test/busybox:pull`.
    pub scopes: Vec<String>,
    /// Whether a token was handed out (anonymous clients get one without
    /// access, as Docker Hub's token server does for private repositories).
    pub granted: bool,
}

/// The key the tokens are signed with and its self-signed certificate.
struct Signer {
    key: ring::signature::EcdsaKeyPair,
    certificate_der: Vec<u8>,
    certificate_pem: String,
    user: String,
    password: String,
    serial: AtomicU64,
}

/// A token server (the realm of an [`AuthScheme::Token`] registry) on a
/// loopback port, served by a thread of this process: `GET /token` with
/// basic auth, or `POST /token` with a password grant, answers a JWT
/// (ES256, with the certificate in its `x5c` header) granting the scopes
/// asked for to the one user it knows. Stopped on drop.
pub struct TokenServer {
    addr: SocketAddr,
    signer: Arc<Signer>,
    requests: Arc<Mutex<Vec<TokenRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TokenServer {
    /// Starts a server that knows `user` with `password`.
    pub fn start(user: &str, password: &str) -> TokenServer {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("token signing key");
        let mut params =
            rcgen::CertificateParams::new(vec!["corten-tests-token-issuer".to_string()]).expect("certificate params");
        params.distinguished_name.push(rcgen::DnType::CommonName, TOKEN_ISSUER);
        let certificate = params.self_signed(&key).expect("self-signed certificate");
        let rng = ring::rand::SystemRandom::new();
        let signing = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .expect("ring signing key");
        let signer = Arc::new(Signer {
            key: signing,
            certificate_der: certificate.der().to_vec(),
            certificate_pem: certificate.pem(),
            user: user.to_string(),
            password: password.to_string(),
            serial: AtomicU64::new(0),
        });
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the token server");
        let addr = listener.local_addr().expect("token server address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (signer, requests, stop) = (signer.clone(), requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (signer, requests) = (signer.clone(), requests.clone());
                    std::thread::spawn(move || serve_token(stream, &signer, &requests));
                }
            })
        };
        TokenServer {
            addr,
            signer,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT/token`, the realm the registry names.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The certificate (PEM) the registry trusts tokens by.
    pub fn certificate_pem(&self) -> &str {
        &self.signer.certificate_pem
    }

    /// What the server was asked, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.requests.lock().expect("token log").clone()
    }

    /// A token for `subject` granting `(repository, actions)`.
    pub fn mint(&self, subject: &str, access: &[(String, Vec<String>)]) -> String {
        self.signer.mint(subject, access)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees the flag.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Signer {
    fn mint(&self, subject: &str, access: &[(String, Vec<String>)]) -> String {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
        let header = json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [STANDARD.encode(&self.certificate_der)],
        });
        let access: Vec<Value> = access
            .iter()
            .map(|(name, actions)| json!({ "type": "repository", "name": name, "actions": actions }))
            .collect();
        let claims = json!({
            "iss": TOKEN_ISSUER,
            "sub": subject,
            "aud": TOKEN_SERVICE,
            "exp": now + TOKEN_LIFETIME,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("corten-tests-{}", self.serial.fetch_add(1, Ordering::Relaxed)),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .key
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .expect("sign the token");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref()))
    }
}

/// `%XX` and (in forms) `+` decoded.
fn url_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `a=1&b=2` as pairs, decoded.
fn form_pairs(text: &str) -> Vec<(String, String)> {
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (url_decode(k), url_decode(v)),
            None => (url_decode(p), String::new()),
        })
        .collect()
}

/// Answers one token request on `stream` and closes it.
fn serve_token(stream: TcpStream, signer: &Signer, log: &Mutex<Vec<TokenRequest>>) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let mut reader = BufReader::new(match stream.try_clone() {
        Ok(s) => s,
        Err(_) => return,
    });
    let mut request_line = String::new();
    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
        return; // the wake-up connection of a stopping server
    }
    let mut parts = request_line.split_whitespace();
    let (method, target) = (
        parts.next().unwrap_or_default().to_string(),
        parts.next().unwrap_or("/"),
    );
    let mut authorization = None;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_string());
            } else if name.eq_ignore_ascii_case("content-length") {
                length = value.parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length.min(1 << 16)];
    if reader.read_exact(&mut body).is_err() {
        body.clear();
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut params = form_pairs(query);
    if method == "POST" {
        params.extend(form_pairs(&String::from_utf8_lossy(&body)));
    }
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .filter(|s| !s.is_empty())
        .collect();

    // Who asks: basic auth on a GET, a password grant on a POST.
    let login: Option<(String, String)> = match method.as_str() {
        "POST" if param("grant_type").as_deref() == Some("password") => Some((
            param("username").unwrap_or_default(),
            param("password").unwrap_or_default(),
        )),
        _ => authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic ").or_else(|| a.strip_prefix("basic ")))
            .and_then(|b| STANDARD.decode(b.trim()).ok())
            .and_then(|d| String::from_utf8(d).ok())
            .and_then(|t| t.split_once(':').map(|(u, p)| (u.to_string(), p.to_string()))),
    };
    let known = login
        .as_ref()
        .is_some_and(|(u, p)| *u == signer.user && *p == signer.password);
    let wrong_service = param("service").is_some_and(|s| s != TOKEN_SERVICE);
    let (status, answer) = if path != "/token" {
        (
            "404 Not Found",
            json!({ "errors": [{ "code": "NOT_FOUND", "message": "no such endpoint" }] }),
        )
    } else if wrong_service || (login.is_some() && !known) {
        (
            "401 Unauthorized",
            json!({ "errors": [{ "code": "UNAUTHORIZED", "message": "wrong user name or password" }] }),
        )
    } else {
        // The known user gets what it asks for; anonymous clients a token
        // that grants nothing.
        let access: Vec<(String, Vec<String>)> = if known {
            scopes
                .iter()
                .filter_map(|s| {
                    let mut parts = s.splitn(3, ':');
                    match (parts.next(), parts.next(), parts.next()) {
                        (Some("repository"), Some(name), Some(actions)) => {
                            Some((name.to_string(), actions.split(',').map(str::to_string).collect()))
                        }
                        _ => None,
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        let subject = login.as_ref().map(|l| l.0.as_str()).unwrap_or_default();
        let token = signer.mint(subject, &access);
        (
            "200 OK",
            json!({ "token": token, "access_token": token, "expires_in": TOKEN_LIFETIME }),
        )
    };
    log.lock().expect("token log").push(TokenRequest {
        method,
        user: login.map(|l| l.0),
        scopes,
        granted: status.starts_with("200"),
    });
    let body = answer.to_string();
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
}

fn registry_config(storage: &Path, port: u16) -> String {
    format!(
        "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: corten-tests-registry
",
        storage = storage.display()
    )
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The uncompressed bytes of a gzip blob.
pub fn gunzip(blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(blob).read_to_end(&mut out).expect("gunzip");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_paths(tar: &[u8]) -> Vec<(String, tar::EntryType)> {
        let mut archive = tar::Archive::new(tar);
        archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().to_string_lossy().into_owned(),
                    e.header().entry_type(),
                )
            })
            .collect()
    }

    #[test]
    fn digests_and_diff_ids_match_the_bytes() {
        for layer in multilayer_layers(1) {
            assert_eq!(layer.digest, sha256_digest(&layer.blob));
            assert_eq!(layer.diff_id, sha256_digest(&layer.tar));
            assert_eq!(gunzip(&layer.blob), layer.tar);
            assert_ne!(layer.digest, layer.diff_id);
        }
        // Deterministic: the same call gives the same digests.
        assert_eq!(busybox_layer().digest, busybox_layer().digest);
        assert_eq!(
            sha256_digest(b""),
            format!(
                "sha256:{}",
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            )
        );
    }

    #[test]
    fn busybox_layer_holds_the_real_binary() {
        let layer = busybox_layer();
        let mut archive = tar::Archive::new(&layer.tar[..]);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            if path == "bin/busybox" {
                assert_eq!(e.header().mode().unwrap(), 0o755);
                let mut bytes = Vec::new();
                e.read_to_end(&mut bytes).unwrap();
                assert_eq!(bytes, std::fs::read(BUSYBOX).unwrap());
            }
            if path == "tmp" {
                assert_eq!(e.header().mode().unwrap(), 0o1777);
            }
            if path == "bin/sh" {
                assert_eq!(e.header().entry_type(), tar::EntryType::Symlink);
                assert_eq!(e.link_name().unwrap().unwrap().to_str(), Some("busybox"));
            }
            seen.push(path);
        }
        for want in [
            "bin/busybox",
            "bin/sh",
            "bin/sleep",
            "etc/passwd",
            "tmp",
            "proc",
            "sys",
            "dev",
        ] {
            assert!(
                seen.iter().any(|p| p.trim_end_matches('/') == want),
                "{want} in {seen:?}"
            );
        }
    }

    #[test]
    fn multilayer_has_whiteouts_and_links() {
        let layers = multilayer_layers(1);
        assert_eq!(layers.len(), 4);
        let deletions = tar_paths(&layers[2].tar);
        for want in ["data/.wh.file-7", "data/.wh.doomed", ".wh.gone", "opaque/.wh..wh..opq"] {
            assert!(deletions.iter().any(|(p, _)| p == want), "{want} in {deletions:?}");
        }
        let links = tar_paths(&layers[3].tar);
        assert!(
            links.contains(&("links/hard".into(), tar::EntryType::Link)),
            "{links:?}"
        );
        assert!(
            links.contains(&("links/soft".into(), tar::EntryType::Symlink)),
            "{links:?}"
        );
        // Pseudo-random data does not compress, and is deterministic.
        assert!(layers[1].blob.len() >= MIB, "{}", layers[1].blob.len());
        assert_eq!(pseudo_random(3, 100), pseudo_random(3, 100));
        assert_ne!(pseudo_random(3, 100), pseudo_random(4, 100));
        assert_eq!(multilayer_file_len(8) * MULTILAYER_DATA_FILES, 8 * MIB);
    }

    #[test]
    fn manifest_config_and_index_are_valid_json() {
        let layer = busybox_layer();
        let config = config_json("arm64", std::slice::from_ref(&layer.diff_id));
        let c: Value = serde_json::from_slice(&config).unwrap();
        assert_eq!(c["architecture"], "arm64");
        assert_eq!(c["os"], "linux");
        assert_eq!(c["rootfs"]["type"], "layers");
        assert_eq!(c["rootfs"]["diff_ids"][0], layer.diff_id.as_str());
        assert_eq!(c["config"]["Cmd"][0], "/bin/sh");
        assert_eq!(c["config"]["Env"][0], PATH_ENV);

        let manifest = manifest_json(&config, &[descriptor(OCI_LAYER_GZIP, &layer.digest, layer.size())]);
        let m: Value = serde_json::from_slice(&manifest).unwrap();
        assert_eq!(m["schemaVersion"], 2);
        assert_eq!(m["mediaType"], OCI_MANIFEST);
        assert_eq!(m["config"]["mediaType"], OCI_CONFIG);
        assert_eq!(m["config"]["digest"], sha256_digest(&config).as_str());
        assert_eq!(m["config"]["size"], config.len() as u64);
        assert_eq!(m["layers"][0]["digest"], layer.digest.as_str());
        assert_eq!(m["layers"][0]["size"], layer.size());

        let index = index_json(&[(&manifest, "linux", "arm64")]);
        let i: Value = serde_json::from_slice(&index).unwrap();
        assert_eq!(i["mediaType"], OCI_INDEX);
        assert_eq!(i["manifests"][0]["digest"], sha256_digest(&manifest).as_str());
        assert_eq!(i["manifests"][0]["platform"]["architecture"], "arm64");
    }

    #[test]
    fn registry_serves_what_was_pushed() {
        let registry = Registry::start();
        let image = registry.push_busybox("test/busybox", "latest");
        assert_eq!(image.reference, format!("{}/test/busybox:latest", registry.host()));
        let got = registry.get("/v2/test/busybox/manifests/latest", OCI_MANIFEST);
        assert_eq!(got.status, 200, "{}", got.text());
        assert_eq!(got.content_type, OCI_MANIFEST);
        assert_eq!(sha256_digest(&got.body), image.manifest_digest);
        let (digest, diff_id, size) = &image.layers[0];
        let blob = registry.get(&format!("/v2/test/busybox/blobs/{digest}"), "*/*");
        assert_eq!(blob.status, 200);
        assert_eq!(blob.body.len() as u64, *size);
        assert_eq!(&sha256_digest(&blob.body), digest);
        assert_eq!(&sha256_digest(&gunzip(&blob.body)), diff_id);
        let config = registry.get(&format!("/v2/test/busybox/blobs/{}", image.config_digest), "*/*");
        let c: Value = serde_json::from_slice(&config.body).unwrap();
        assert_eq!(c["rootfs"]["diff_ids"][0], diff_id.as_str());
        // Pushing again is a no-op with the same digests.
        assert_eq!(
            registry.push_busybox("test/busybox", "latest").manifest_digest,
            image.manifest_digest
        );

        let index = registry.push_busybox_index("test/multi", "v1");
        let got = registry.get("/v2/test/multi/manifests/v1", &format!("{OCI_INDEX}, {OCI_MANIFEST}"));
        assert_eq!(got.content_type, OCI_INDEX);
        assert_eq!(sha256_digest(&got.body), index.manifest_digest);
        let platforms: Vec<&str> = index.platforms.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
        assert_ne!(index.platforms[0].2, index.platforms[1].2);
    }

    #[test]
    fn registries_behind_a_login_let_in_only_their_user() {
        let manifest = "/v2/private/busybox/manifests/v1";
        for scheme in [AuthScheme::Basic, AuthScheme::Token] {
            let registry = Registry::start_with_auth(scheme, "user", "pass:word");
            assert_eq!(registry.login(), Some(("user", "pass:word")));
            let image = registry.push_busybox("private/busybox", "v1");
            let got = registry.get(manifest, OCI_MANIFEST);
            assert_eq!(got.status, 200, "{scheme:?}: {}", got.text());
            assert_eq!(sha256_digest(&got.body), image.manifest_digest);

            let anonymous = registry.get_as(manifest, OCI_MANIFEST, None);
            assert_eq!(anonymous.status, 401, "{scheme:?}: {}", anonymous.text());
            let challenge = anonymous.header("www-authenticate").unwrap_or_default().to_string();
            let wrong = basic_authorization("user", "wrong");
            assert_eq!(registry.get_as(manifest, OCI_MANIFEST, Some(&wrong)).status, 401);
            match registry.token_server() {
                None => assert!(challenge.starts_with("Basic realm="), "{challenge}"),
                Some(tokens) => {
                    let realm = format!("realm=\"{}\"", tokens.realm());
                    assert!(
                        challenge.starts_with("Bearer ") && challenge.contains(&realm),
                        "{challenge}"
                    );
                    assert!(
                        challenge.contains(&format!("service=\"{TOKEN_SERVICE}\"")),
                        "{challenge}"
                    );
                    // A token for another repository grants nothing here.
                    let other = tokens.mint("user", &[("private/other".into(), vec!["pull".into()])]);
                    let denied = registry.get_as(manifest, OCI_MANIFEST, Some(&format!("Bearer {other}")));
                    assert_eq!(denied.status, 401, "{}", denied.text());
                }
            }
        }
    }

    #[test]
    fn token_server_grants_its_user_what_it_asks() {
        let tokens = TokenServer::start("user", "pass:word");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .build()
            .into();
        let scope = "repository:private/busybox:pull";
        let url = format!(
            "{}?service={TOKEN_SERVICE}&scope={}",
            tokens.realm(),
            scope.replace(':', "%3A")
        );
        let claims = |body: &str| -> Value {
            let answer: Value = serde_json::from_str(body).unwrap();
            let token = answer["token"].as_str().unwrap();
            let payload = token.split('.').nth(1).unwrap();
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
        };

        let mut ok = agent
            .get(&url)
            .header("authorization", basic_authorization("user", "pass:word"))
            .call()
            .unwrap();
        assert_eq!(ok.status().as_u16(), 200);
        let granted = claims(&ok.body_mut().read_to_string().unwrap());
        assert_eq!(granted["access"][0]["name"], "private/busybox");
        assert_eq!(granted["access"][0]["actions"][0], "pull");
        assert_eq!(granted["aud"], TOKEN_SERVICE);
        assert_eq!(granted["iss"], TOKEN_ISSUER);

        let wrong = agent
            .get(&url)
            .header("authorization", basic_authorization("user", "nope"))
            .call()
            .unwrap();
        assert_eq!(wrong.status().as_u16(), 401);

        // Anonymous: a token without access.
        let mut anonymous = agent.get(&url).call().unwrap();
        assert_eq!(anonymous.status().as_u16(), 200);
        let nothing = claims(&anonymous.body_mut().read_to_string().unwrap());
        assert_eq!(nothing["access"], json!([]));

        // The OAuth2 password grant containerd's clients try first.
        let form = format!(
            "grant_type=password&username=user&password=pass%3Aword&service={TOKEN_SERVICE}&scope={}",
            scope.replace(':', "%3A")
        );
        let mut posted = agent
            .post(&tokens.realm())
            .content_type("application/x-www-form-urlencoded")
            .send(form.as_bytes())
            .unwrap();
        assert_eq!(posted.status().as_u16(), 200);
        let body: Value = serde_json::from_str(&posted.body_mut().read_to_string().unwrap()).unwrap();
        assert!(body["access_token"].is_string(), "{body}");

        let log = tokens.requests();
        assert_eq!(log.len(), 4, "{log:?}");
        assert_eq!(
            log.iter().map(|r| r.granted).collect::<Vec<_>>(),
            [true, false, true, true]
        );
        assert_eq!(log[3].method, "POST");
        assert_eq!(log[3].scopes, [scope]);
        assert_eq!(url_decode("a%20b+c%3"), "a b c%3");
    }

    #[test]
    fn bad_fixtures_are_accepted_by_the_registry() {
        let registry = Registry::start();
        let missing = registry.push_bad("bad/missing", "v1", BadImage::MissingBlob);
        let blob = registry.get(&format!("/v2/bad/missing/blobs/{}", missing.layers[0].0), "*/*");
        assert_eq!(blob.status, 404, "{}", blob.text());
        let manifest = registry.get("/v2/bad/missing/manifests/v1", OCI_MANIFEST);
        assert_eq!(manifest.status, 200, "{}", manifest.text());

        let sized = registry.push_bad("bad/size", "v1", BadImage::WrongSize);
        let (digest, _, size) = &sized.layers[0];
        let blob = registry.get(&format!("/v2/bad/size/blobs/{digest}"), "*/*");
        assert_eq!(blob.body.len() as u64 - 1, *size);

        let foreign = registry.push_bad("bad/foreign", "v1", BadImage::ForeignLayer);
        let (digest, diff_id, _) = &foreign.layers[0];
        let blob = registry.get(&format!("/v2/bad/foreign/blobs/{digest}"), "*/*");
        assert_eq!(blob.status, 200);
        assert_eq!(&sha256_digest(&blob.body), digest);
        assert_ne!(&sha256_digest(&gunzip(&blob.body)), diff_id);
        assert_eq!(diff_id, &busybox_layer().diff_id);
    }
}
