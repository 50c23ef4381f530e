//! A runtime over temporary directories, driven directly (no daemon), with
//! Debian's `containerd-shim-runc-v2` and runc, and a busybox root
//! filesystem bind-mounted by the shim.
//!
//! Each test uses its own namespace: runc keeps its state under
//! /run/containerd/runc/<ns> and the shim its socket in /run/containerd/s/
//! keyed by address, namespace and id, and tests run in parallel.

#![allow(dead_code)]

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use corten_core::{
    any_value::AnyValue,
    events::{Envelope, Exchange, Subscription},
    mount::Mount,
    runtime::{CreateOpts, Stdio, SPEC_TYPE_URL},
};
use corten_events::Broadcast;
use corten_runtime::{binary::Resolver, Options, ShimRuntime, Timeouts};

pub const RUNC_SHIM: &str = "io.containerd.runc.v2";
pub const SHIM_BINARY: &str = "/usr/bin/containerd-shim-runc-v2";

/// Whether this machine has what the tests need (root, the shim, runc,
/// busybox); without them each test says so and passes.
pub fn available() -> bool {
    let root = rustix::process::geteuid().is_root();
    let tools = [SHIM_BINARY, "/usr/sbin/runc", "/bin/busybox"]
        .iter()
        .all(|p| Path::new(p).exists());
    if !(root && tools) {
        eprintln!("skipped: needs root, {SHIM_BINARY}, runc and busybox-static");
    }
    root && tools
}

pub struct Env {
    pub dir: tempfile::TempDir,
    pub namespace: String,
    pub exchange: Arc<dyn Exchange>,
}

impl Env {
    /// `name` becomes part of the namespace, with this process's pid so
    /// runs never meet.
    pub fn new(name: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
            .with_test_writer()
            .try_init();
        let dir = tempfile::Builder::new().prefix("corten-rt-").tempdir().unwrap();
        let rootfs = dir.path().join("rootfs-src");
        for d in ["bin", "proc", "dev", "sys", "tmp"] {
            std::fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
        for tool in ["sh", "echo", "sleep", "true", "cat", "ls"] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(tool)).unwrap();
        }
        Env {
            dir,
            namespace: format!("rt-{name}-{}", std::process::id()),
            exchange: Arc::new(Broadcast::new(4096)),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn options(&self) -> Options {
        Options {
            root: self.path("root"),
            state: self.path("state"),
            grpc_address: self.path("grpc.sock").display().to_string(),
            ttrpc_address: self.path("ttrpc.sock").display().to_string(),
            ttrpc_uid: 0,
            ttrpc_gid: 0,
            exchange: self.exchange.clone(),
            timeouts: Timeouts::default(),
            sched_core: false,
            resolver: Resolver::from_env(),
            publish_binary: std::env::current_exe().unwrap(),
        }
    }

    pub async fn runtime(&self) -> Arc<ShimRuntime> {
        ShimRuntime::start(self.options()).await.unwrap()
    }

    pub fn subscribe(&self) -> Subscription {
        self.exchange.subscribe()
    }

    pub fn bundle(&self, id: &str) -> PathBuf {
        self.path("state").join(&self.namespace).join(id)
    }

    pub fn work(&self, id: &str) -> PathBuf {
        self.path("root").join(&self.namespace).join(id)
    }

    /// The spec for `args`, its output appended to `out` (a file).
    pub fn opts(&self, id: &str, args: &[&str], out: &str) -> CreateOpts {
        CreateOpts {
            spec: AnyValue::new(SPEC_TYPE_URL, spec(&self.namespace, id, args)),
            rootfs: vec![Mount {
                kind: "bind".into(),
                source: self.path("rootfs-src").display().to_string(),
                target: String::new(),
                options: vec!["rbind".into(), "rw".into()],
            }],
            io: self.file_io(out),
            runtime: RUNC_SHIM.into(),
            ..CreateOpts::default()
        }
    }

    /// Both streams to the file `out`. (containerd 1.6's shim dereferences
    /// a nil stderr pipe and crashes when only stdout is a file:// URI.)
    pub fn file_io(&self, out: &str) -> Stdio {
        let uri = format!("file://{}", self.path(out).display());
        Stdio {
            stdout: uri.clone(),
            stderr: uri,
            ..Stdio::default()
        }
    }

    /// Waits until `out` holds `text`.
    pub fn wait_output(&self, out: &str, text: &str) {
        let path = self.path(out);
        until(Duration::from_secs(10), &format!("{text:?} in {out}"), || {
            std::fs::read_to_string(&path).is_ok_and(|s| s.contains(text))
        });
    }

    /// Publishes a marker, then returns this namespace's events up to it:
    /// everything published before the call, in order.
    pub async fn drain(&self, sub: &mut Subscription) -> Vec<Arc<Envelope>> {
        self.exchange
            .publish(Envelope {
                timestamp: std::time::SystemTime::now(),
                namespace: self.namespace.clone(),
                topic: "/test/marker".into(),
                type_url: "marker".into(),
                value: vec![],
            })
            .unwrap();
        let mut out = Vec::new();
        loop {
            let e = tokio::time::timeout(Duration::from_secs(10), sub.recv())
                .await
                .expect("the marker arrives")
                .unwrap();
            if e.namespace != self.namespace {
                continue;
            }
            if e.topic == "/test/marker" {
                return out;
            }
            out.push(e);
        }
    }

    /// Waits for the next event of this namespace on `topic`.
    pub async fn next(&self, sub: &mut Subscription, topic: &str) -> Arc<Envelope> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let e = tokio::time::timeout_at(deadline, sub.recv())
                .await
                .unwrap_or_else(|_| panic!("no {topic} event"))
                .unwrap();
            if e.namespace == self.namespace && e.topic == topic {
                return e;
            }
        }
    }
}

impl Drop for Env {
    /// Whatever a failed test left: shims of this namespace, mounts under
    /// the temporary directory, runc state, cgroups.
    fn drop(&mut self) {
        for pid in shim_pids(&self.namespace, None) {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
        }
        if let Ok(entries) = std::fs::read_dir(self.path("state").join(&self.namespace)) {
            for e in entries.flatten() {
                let _ = rustix::mount::unmount(e.path().join("rootfs"), rustix::mount::UnmountFlags::DETACH);
            }
        }
        let runc = Path::new("/run/containerd/runc").join(&self.namespace);
        if let Ok(entries) = std::fs::read_dir(&runc) {
            for e in entries.flatten() {
                let _ = std::process::Command::new("runc")
                    .args(["--root", &runc.display().to_string(), "delete", "--force"])
                    .arg(e.file_name())
                    .output();
            }
        }
        let _ = std::fs::remove_dir(&runc);
        if let Ok(controllers) = std::fs::read_dir("/sys/fs/cgroup") {
            for c in controllers.flatten() {
                let _ = std::fs::remove_dir(c.path().join(&self.namespace));
            }
        }
    }
}

/// A minimal OCI runtime spec running `args` as root in new namespaces.
pub fn spec(namespace: &str, id: &str, args: &[&str]) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_KILL", "CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_KILL", "CAP_AUDIT_WRITE", "CAP_NET_BIND_SERVICE"]
            },
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": id,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}
        ],
        "linux": {
            "cgroupsPath": format!("/{namespace}/{id}"),
            "namespaces": [
                {"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "network"}
            ],
            "maskedPaths": ["/proc/kcore"],
            "readonlyPaths": ["/proc/sys"]
        }
    }))
    .unwrap()
}

/// A JSON OCI process spec for an exec.
pub fn process(args: &[&str]) -> AnyValue {
    let json = serde_json::json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/"
    });
    AnyValue::new(
        corten_core::runtime::PROCESS_TYPE_URL,
        serde_json::to_vec(&json).unwrap(),
    )
}

/// Polls `check` until it holds, failing after `limit`.
pub fn until(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pids of the shim daemons serving `namespace` (and `id`, if given).
pub fn shim_pids(namespace: &str, id: Option<&str>) -> Vec<u32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_shim = args.first().is_some_and(|a| a.ends_with(b"containerd-shim-runc-v2"));
        let flag = |name: &str, value: &str| {
            args.windows(2)
                .any(|w| w[0] == name.as_bytes() && w[1] == value.as_bytes())
        };
        if is_shim && flag("-namespace", namespace) && id.is_none_or(|id| flag("-id", id)) && alive(pid) {
            pids.push(pid);
        }
    }
    pids
}

/// A process that exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Whether anything is mounted at `path`.
pub fn mounted(path: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let path = path.display().to_string();
    mounts
        .lines()
        .any(|l| l.split_whitespace().nth(4) == Some(path.as_str()))
}
