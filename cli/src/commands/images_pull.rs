//! `corten images pull`: a server-side pull through containerd 2.x's
//! Transfer service. The daemon resolves, fetches, verifies and unpacks;
//! this client opens a progress stream (and, when it has credentials, an
//! auth stream) through the Streaming service, draws a bar per blob from
//! the progress events, and prints one summary line.

use std::{
    collections::BTreeMap,
    io::{self, BufRead, IsTerminal},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use corten_api::{
    containerd::{
        services::{streaming::v1::StreamInit, transfer::v1::TransferOptions, transfer::v1::TransferRequest},
        types::{
            transfer::{
                AuthRequest, AuthResponse, AuthType, ImageStore, OciRegistry, Progress as ProgressMsg,
                RegistryResolver, UnpackConfiguration,
            },
            Platform,
        },
    },
    pack_any,
};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use prost::Message as _;
use prost_types::Any;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Context;
use crate::{client::Connection, error::rpc, labels, progress::Mode};

const STREAM_INIT: &str = "containerd.services.streaming.v1.StreamInit";
const OCI_REGISTRY: &str = "containerd.types.transfer.OCIRegistry";
const IMAGE_STORE: &str = "containerd.types.transfer.ImageStore";
const PROGRESS: &str = "containerd.types.transfer.Progress";
const AUTH_REQUEST: &str = "containerd.types.transfer.AuthRequest";
const AUTH_RESPONSE: &str = "containerd.types.transfer.AuthResponse";
/// How long the last progress events may take after the pull returned.
const DRAIN: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image to pull: `busybox`, `docker.io/library/busybox:1.36`, `host:5000/repo@sha256:...`
    reference: String,
    /// Speak plain HTTP to the registry (loopback registries always are)
    #[arg(long)]
    plain_http: bool,
    /// Platform to pull from an index, e.g. linux/arm64 (repeatable; default: this machine's)
    #[arg(long = "platform", value_name = "PLATFORM")]
    platforms: Vec<String>,
    /// Pull every platform of an index (this machine's is unpacked)
    #[arg(long, conflicts_with = "platforms")]
    all_platforms: bool,
    /// Snapshotter to unpack into (default: the daemon's, overlayfs)
    #[arg(long)]
    snapshotter: Option<String>,
    /// Fetch only; do not unpack
    #[arg(long)]
    skip_unpack: bool,
    /// Registry credentials: USER:PASSWORD, or USER with the password on stdin
    #[arg(short, long, value_name = "USER[:PASSWORD]")]
    user: Option<String>,
    /// Docker config with registry credentials [default: $DOCKER_CONFIG/config.json or ~/.docker/config.json]
    #[arg(long, value_name = "FILE")]
    docker_config: Option<PathBuf>,
    /// Label for the image record, KEY=VALUE (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Show progress even when stderr is not a terminal (a line per step)
    #[arg(long)]
    progress: bool,
    /// Never show progress bars
    #[arg(long)]
    no_progress: bool,
}

/// `os/arch[/variant]`; the daemon normalises aliases.
fn parse_platform(text: &str) -> anyhow::Result<Platform> {
    let parts: Vec<&str> = text.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) || parts.len() > 3 {
        bail!("invalid platform {text:?}: expected os/architecture[/variant]");
    }
    Ok(match parts.as_slice() {
        [arch] => Platform {
            os: "linux".into(),
            architecture: arch.to_string(),
            variant: String::new(),
        },
        [os, arch] => Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: String::new(),
        },
        [os, arch, variant] => Platform {
            os: os.to_string(),
            architecture: arch.to_string(),
            variant: variant.to_string(),
        },
        _ => unreachable!("checked above"),
    })
}

/// The platform this client runs on, in OCI spelling.
fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform {
        os: std::env::consts::OS.into(),
        architecture: architecture.into(),
        variant: String::new(),
    }
}

/// Where registry credentials come from, as docker and ctr look for them.
#[derive(Debug, Clone, Default)]
struct Credentials {
    /// From `--user`: used for every registry the daemon asks about.
    user: Option<(String, String)>,
    /// `auths` of a docker config.json.
    docker: BTreeMap<String, DockerAuth>,
}

#[derive(Debug, Clone, Default, serde::Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    identitytoken: String,
}

#[derive(Debug, Default, serde::Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

impl Credentials {
    fn load(args: &Args) -> anyhow::Result<Credentials> {
        let user = match &args.user {
            None => None,
            Some(u) => Some(match u.split_once(':') {
                Some((user, password)) => (user.to_string(), password.to_string()),
                None => {
                    let mut password = String::new();
                    io::stdin()
                        .lock()
                        .read_line(&mut password)
                        .context("reading the password from stdin")?;
                    (u.clone(), password.trim_end_matches(['\r', '\n']).to_string())
                }
            }),
        };
        let path = args.docker_config.clone().or_else(default_docker_config);
        let docker = match path {
            Some(path) if path.exists() => read_docker_config(&path)?,
            Some(path) if args.docker_config.is_some() => bail!("docker config {}: not found", path.display()),
            _ => BTreeMap::new(),
        };
        Ok(Credentials { user, docker })
    }

    fn any(&self) -> bool {
        self.user.is_some() || !self.docker.is_empty()
    }

    /// The answer for `host`: `--user`, else the config's entry for the host
    /// (docker keys Docker Hub as `https://index.docker.io/v1/`).
    fn answer(&self, host: &str) -> AuthResponse {
        if let Some((username, secret)) = &self.user {
            return AuthResponse {
                auth_type: AuthType::Credentials as i32,
                username: username.clone(),
                secret: secret.clone(),
                expire_at: None,
            };
        }
        let hub = matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io");
        let entry = self.docker.iter().find(|(key, _)| {
            let key = key
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            let key = key
                .strip_suffix("/v1")
                .or_else(|| key.strip_suffix("/v2"))
                .unwrap_or(key);
            key == host || (hub && matches!(key, "docker.io" | "index.docker.io" | "registry-1.docker.io"))
        });
        let none = AuthResponse {
            auth_type: AuthType::None as i32,
            ..Default::default()
        };
        let Some((_, auth)) = entry else {
            return none;
        };
        if !auth.identitytoken.is_empty() {
            return AuthResponse {
                auth_type: AuthType::Refresh as i32,
                secret: auth.identitytoken.clone(),
                ..Default::default()
            };
        }
        let (username, password) = if !auth.auth.is_empty() {
            match decode_base64(&auth.auth)
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|t| t.split_once(':').map(|(u, p)| (u.to_string(), p.to_string())))
            {
                Some(pair) => pair,
                None => return none,
            }
        } else {
            (auth.username.clone(), auth.password.clone())
        };
        if username.is_empty() {
            return none;
        }
        AuthResponse {
            auth_type: AuthType::Credentials as i32,
            username,
            secret: password,
            expire_at: None,
        }
    }
}

fn default_docker_config() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(dir).join("config.json"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".docker/config.json"))
}

fn read_docker_config(path: &Path) -> anyhow::Result<BTreeMap<String, DockerAuth>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let config: DockerConfig =
        serde_json::from_str(&text).with_context(|| format!("{} is not a docker config", path.display()))?;
    Ok(config.auths)
}

/// Standard base64 with or without padding, as docker writes `auth`.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.trim().trim_end_matches('=').bytes().collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = match chunk.len() {
            4 => 3,
            3 => 2,
            2 => 1,
            _ => return None,
        };
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// A side stream opened through the Streaming service and acknowledged.
struct SideStream {
    /// Kept open (not half-closed) while the daemon may still use it.
    to_daemon: mpsc::Sender<Any>,
    from_daemon: tonic::Streaming<Any>,
}

async fn open_stream(conn: &Connection, kind: &str) -> anyhow::Result<(String, SideStream)> {
    let id = format!("{kind}-{}", uuid::Uuid::new_v4().simple());
    let (to_daemon, outgoing) = mpsc::channel(16);
    to_daemon
        .send(pack_any(STREAM_INIT, &StreamInit { id: id.clone() }))
        .await
        .context("opening a stream")?;
    let mut from_daemon = conn
        .streaming()
        .stream(ReceiverStream::new(outgoing))
        .await
        .map_err(rpc)
        .context("opening a stream (does the daemon have the streaming service?)")?
        .into_inner();
    from_daemon
        .message()
        .await
        .map_err(rpc)?
        .context("the daemon closed the stream before acknowledging it")?;
    Ok((id, SideStream { to_daemon, from_daemon }))
}

/// Answers the daemon's credential requests until the stream ends.
async fn answer_auth(mut stream: SideStream, credentials: Credentials) {
    while let Ok(Some(message)) = stream.from_daemon.message().await {
        if message.type_url.rsplit('/').next() != Some(AUTH_REQUEST) {
            continue;
        }
        let Ok(request) = AuthRequest::decode(message.value.as_slice()) else {
            continue;
        };
        let answer = credentials.answer(&request.host);
        if stream.to_daemon.send(pack_any(AUTH_RESPONSE, &answer)).await.is_err() {
            return;
        }
    }
}

/// One blob as the progress events tell it.
#[derive(Default)]
struct Blob {
    total: u64,
    done: u64,
    resumed: u64,
    existed: bool,
    complete: bool,
    bar: Option<ProgressBar>,
}

/// What the progress events add up to, drawn as it goes.
struct View {
    bars: Option<MultiProgress>,
    /// Without bars, notable events are printed as lines (for logs).
    lines: bool,
    blobs: BTreeMap<String, Blob>,
    order: Vec<String>,
    unpacked: usize,
    saved: Vec<(String, String)>,
}

const BAR_TEMPLATE: &str =
    "{msg:<34} [{bar:30}] {binary_bytes:>10}/{binary_total_bytes:<10} {binary_bytes_per_sec:>12} ETA {eta}";

fn short(name: &str) -> String {
    // `layer-sha256:0123456789ab...` -> `layer 0123456789ab`
    match name.split_once("-sha256:") {
        Some((kind, hex)) => format!("{kind} {}", &hex[..hex.len().min(12)]),
        None => name.to_string(),
    }
}

impl View {
    fn new(mode: Mode) -> View {
        // Bars need a terminal to redraw on; elsewhere progress is a line
        // per step (what logs want), unless it is turned off.
        let terminal = io::stderr().is_terminal();
        let bars = (terminal && mode != Mode::Never)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10)));
        View {
            lines: bars.is_none() && mode != Mode::Never,
            bars,
            blobs: BTreeMap::new(),
            order: Vec::new(),
            unpacked: 0,
            saved: Vec::new(),
        }
    }

    fn style() -> ProgressStyle {
        ProgressStyle::with_template(BAR_TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }

    fn blob(&mut self, name: &str, total: u64) -> &mut Blob {
        if !self.blobs.contains_key(name) {
            let bar = self.bars.as_ref().map(|m| {
                let bar = m.add(ProgressBar::new(total).with_style(Self::style()));
                bar.set_message(format!("{} waiting", short(name)));
                bar
            });
            self.order.push(name.to_string());
            self.blobs.insert(
                name.to_string(),
                Blob {
                    total,
                    bar,
                    ..Blob::default()
                },
            );
        }
        let blob = self.blobs.get_mut(name).expect("inserted above");
        if total > 0 && blob.total != total {
            blob.total = total;
            if let Some(bar) = &blob.bar {
                bar.set_length(total);
            }
        }
        blob
    }

    fn line(&self, text: String) {
        if self.lines {
            eprintln!("{text}");
        } else if let Some(bars) = &self.bars {
            let _ = bars.println(text);
        }
    }

    fn handle(&mut self, any: Any) {
        if any.type_url.rsplit('/').next() != Some(PROGRESS) {
            return;
        }
        let Ok(p) = ProgressMsg::decode(any.value.as_slice()) else {
            return;
        };
        let (progress, total) = (p.progress.max(0) as u64, p.total.max(0) as u64);
        let is_blob = p.name.contains("-sha256:") || p.name.contains("-sha512:");
        if !is_blob {
            match p.event.as_str() {
                "saved" => {
                    let digest = p.desc.map(|d| d.digest).unwrap_or_default();
                    self.saved.push((p.name, digest));
                }
                // The summary line says it better.
                "resolved" => {}
                event if event.starts_with("Completed pull") => {}
                event => self.line(event.to_string()),
            }
            return;
        }
        let name = p.name.clone();
        let lines = self.lines;
        let blob = self.blob(&name, total);
        let status = match p.event.as_str() {
            "waiting" => None,
            "resuming" => {
                blob.resumed = progress;
                blob.done = progress;
                if let Some(bar) = &blob.bar {
                    bar.set_position(progress);
                    bar.reset_eta();
                }
                Some(format!("resuming at {progress} bytes"))
            }
            "downloading" => {
                blob.done = progress;
                if let Some(bar) = &blob.bar {
                    bar.set_position(progress);
                    bar.set_message(format!("{} downloading", short(&name)));
                }
                None
            }
            "complete" => {
                blob.complete = true;
                blob.done = blob.total;
                Some("complete".to_string())
            }
            "already exists" => {
                blob.existed = true;
                blob.done = blob.total;
                Some("already exists".to_string())
            }
            "unpacking" => Some("unpacking".to_string()),
            "unpacked" => {
                self.unpacked += 1;
                Some("unpacked".to_string())
            }
            "already unpacked" => Some("already unpacked".to_string()),
            other => Some(other.to_string()),
        };
        let Some(status) = status else {
            return;
        };
        let blob = self.blobs.get_mut(&name).expect("made above");
        if let Some(bar) = &blob.bar {
            if matches!(
                status.as_str(),
                "complete" | "already exists" | "unpacked" | "already unpacked"
            ) {
                bar.set_position(blob.total);
                bar.finish_with_message(format!("{} {status}", short(&name)));
            } else {
                bar.set_message(format!("{} {status}", short(&name)));
            }
        }
        if lines {
            eprintln!("{name}: {status}");
        }
    }

    fn finish(&self, ok: bool) {
        for blob in self.blobs.values() {
            if let Some(bar) = &blob.bar {
                if ok {
                    bar.finish();
                } else {
                    bar.abandon();
                }
            }
        }
    }
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    if args.reference.trim().is_empty() {
        bail!("an image reference is required");
    }
    let platforms: Vec<Platform> = if args.all_platforms {
        Vec::new()
    } else if args.platforms.is_empty() {
        vec![host_platform()]
    } else {
        args.platforms
            .iter()
            .map(|p| parse_platform(p))
            .collect::<anyhow::Result<_>>()?
    };
    let unpacks = if args.skip_unpack {
        Vec::new()
    } else {
        let unpack_platforms = if args.all_platforms {
            vec![host_platform()]
        } else {
            platforms.clone()
        };
        unpack_platforms
            .into_iter()
            .map(|p| UnpackConfiguration {
                platform: Some(p),
                snapshotter: args.snapshotter.clone().unwrap_or_default(),
            })
            .collect()
    };
    let image_labels = labels::parse(&args.labels)?;
    let credentials = Credentials::load(&args)?;

    let conn = ctx.connect().await?;
    let (progress_id, mut progress) = open_stream(&conn, "progress").await?;
    let mut auth_stream_id = String::new();
    let mut auth_task = None;
    if credentials.any() {
        let (id, stream) = open_stream(&conn, "creds").await?;
        auth_stream_id = id;
        auth_task = Some(tokio::spawn(answer_auth(stream, credentials)));
    }

    let source = OciRegistry {
        reference: args.reference.clone(),
        resolver: Some(RegistryResolver {
            auth_stream: auth_stream_id,
            default_scheme: if args.plain_http { "http".into() } else { String::new() },
            ..Default::default()
        }),
    };
    let destination = ImageStore {
        labels: image_labels.into_iter().collect(),
        platforms,
        unpacks,
        ..Default::default()
    };
    let request = TransferRequest {
        source: Some(pack_any(OCI_REGISTRY, &source)),
        destination: Some(pack_any(IMAGE_STORE, &destination)),
        options: Some(TransferOptions {
            progress_stream: progress_id,
        }),
    };

    let started = Instant::now();
    let mut view = View::new(Mode::from_flags(args.progress, args.no_progress));
    let mut client = conn.transfer();
    let mut call = Box::pin(client.transfer(request));
    let mut result = None;
    let mut progress_open = true;
    while result.is_none() {
        tokio::select! {
            message = progress.from_daemon.message(), if progress_open => match message {
                Ok(Some(any)) => view.handle(any),
                _ => progress_open = false,
            },
            done = &mut call => result = Some(done),
        }
    }
    // The daemon closes the progress stream once its last events are out.
    while progress_open {
        match tokio::time::timeout(DRAIN, progress.from_daemon.message()).await {
            Ok(Ok(Some(any))) => view.handle(any),
            _ => progress_open = false,
        }
    }
    drop(progress);
    if let Some(task) = auth_task {
        task.abort();
    }
    let elapsed = started.elapsed();
    let result = result.expect("loop ends with a result");
    view.finish(result.is_ok());
    result.map_err(rpc)?;

    let (mut fetched, mut fetched_bytes, mut existed, mut resumed) = (0usize, 0u64, 0usize, 0u64);
    for blob in view.blobs.values() {
        if blob.existed {
            existed += 1;
        } else if blob.complete {
            fetched += 1;
            fetched_bytes += blob.total.saturating_sub(blob.resumed);
            resumed += blob.resumed;
        }
    }
    let (name, digest) = view
        .saved
        .first()
        .cloned()
        .unwrap_or_else(|| (args.reference.clone(), String::new()));
    let rate = fetched_bytes as f64 / elapsed.as_secs_f64().max(0.001);
    let mut summary = format!(
        "{name} {digest}: fetched {fetched} blob(s), {} in {:.1}s ({}/s); {existed} already present",
        human(fetched_bytes),
        elapsed.as_secs_f64(),
        human(rate as u64)
    );
    if resumed > 0 {
        summary.push_str(&format!("; resumed {} from an earlier pull", human(resumed)));
    }
    summary.push_str(&format!("; unpacked {} layer(s)", view.unpacked));
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_parse() {
        let p = parse_platform("linux/arm64/v8").unwrap();
        assert_eq!(
            (p.os.as_str(), p.architecture.as_str(), p.variant.as_str()),
            ("linux", "arm64", "v8")
        );
        assert_eq!(parse_platform("arm64").unwrap().os, "linux");
        assert!(parse_platform("linux/").is_err());
        assert!(parse_platform("a/b/c/d").is_err());
    }

    #[test]
    fn base64_as_docker_writes_it() {
        assert_eq!(decode_base64("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(decode_base64("dXNlcjpwYXM=").unwrap(), b"user:pas");
        assert_eq!(decode_base64("dXNlcjpwYQ==").unwrap(), b"user:pa");
        assert!(decode_base64("!!").is_none());
    }

    #[test]
    fn docker_config_entries_by_host() {
        let config: DockerConfig = serde_json::from_str(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"a","password":"b"},"ghcr.io":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        let creds = Credentials {
            user: None,
            docker: config.auths,
        };
        let hub = creds.answer("docker.io");
        assert_eq!(hub.auth_type, AuthType::Credentials as i32);
        assert_eq!((hub.username.as_str(), hub.secret.as_str()), ("user", "pass"));
        let local = creds.answer("127.0.0.1:5000");
        assert_eq!((local.username.as_str(), local.secret.as_str()), ("a", "b"));
        assert_eq!(creds.answer("ghcr.io").auth_type, AuthType::Refresh as i32);
        assert_eq!(creds.answer("quay.io").auth_type, AuthType::None as i32);
        let flagged = Credentials {
            user: Some(("u".into(), "p".into())),
            docker: BTreeMap::new(),
        };
        assert_eq!(flagged.answer("quay.io").username, "u");
    }

    #[test]
    fn short_names() {
        assert_eq!(
            short(&format!("layer-sha256:{}", "ab".repeat(32))),
            "layer abababababab"
        );
        assert_eq!(human(512), "512 B");
        assert_eq!(human(3 << 20), "3.0 MiB");
    }
}
