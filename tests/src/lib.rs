//! The harness the end-to-end tests share: a real `cortend` process on its own
//! temporary root, state, socket and metrics port, driven by the real `ctr`
//! and by `corten`.
//!
//! Binaries come from the cargo target directory this test runs from, so
//! `cargo build --workspace` must run first (the project's test command does).
//! Anything missing fails the test with the reason: nothing is skipped.

use std::{
    io::{Read, Write},
    net::TcpStream,
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};

pub mod grpc;
pub mod registry;
pub mod tasks;

/// How long a daemon may take to come up or go down before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A binary built by this workspace, next to the test executable's directory.
pub fn bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        path.display()
    );
    path
}

/// A tool from the system the tests need, such as `ctr` or `promtool`.
pub fn system_tool(name: &str, package: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.exists() {
            return path;
        }
    }
    panic!("{name} is missing: install Debian's {package} package (the test command does this)");
}

/// A free loopback TCP port for a daemon's metrics.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// Polls `ready` until it holds or [`DEADLINE`] passes.
pub fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub metrics: String,
    child: Option<Child>,
}

impl Daemon {
    /// A daemon on the defaults plus its own directories and ports.
    pub fn start() -> Daemon {
        Daemon::start_with("")
    }

    /// `extra` is appended to the generated config file (top-level keys
    /// first, then tables). Panics if the daemon does not come up.
    pub fn start_with(extra: &str) -> Daemon {
        let mut d = Daemon::configure(extra);
        d.spawn().unwrap_or_else(|log| panic!("cortend did not start:\n{log}"));
        d
    }

    /// Writes the config without starting the daemon.
    pub fn configure(extra: &str) -> Daemon {
        let dir = tempfile::Builder::new().prefix("corten-").tempdir().expect("temp dir");
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("c.sock");
        let metrics = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("config.toml");
        // Top-level keys must come before the first table header.
        let (top, tables) = match extra.find("\n[").map(|i| i + 1).or(extra.starts_with('[').then_some(0)) {
            Some(i) => extra.split_at(i),
            None => (extra, ""),
        };
        let text = format!(
            "version = 2\nroot = {root:?}\nstate = {state:?}\n{top}\n[grpc]\naddress = {socket:?}\n\n[metrics]\naddress = {metrics:?}\n\n{tables}\n"
        );
        std::fs::write(&config, text).expect("write config");
        Daemon {
            dir,
            root,
            state,
            socket,
            config,
            metrics,
            child: None,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("cortend.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Starts the process and waits until its socket answers, or until it
    /// exits (`Err` with its log).
    pub fn spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open log");
        let child = Command::new(bin("cortend"))
            .arg("--config")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn cortend");
        self.child = Some(child);
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().expect("poll cortend")) {
                self.child = None;
                return Err(format!("exited with {status}\n{}", self.log()));
            }
            // The socket is bound only after every plugin has started.
            if UnixStream::connect(&self.socket).is_ok() {
                return Ok(());
            }
            if start.elapsed() > DEADLINE {
                return Err(format!("not serving after {DEADLINE:?}\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("daemon running").id() as i32)
    }

    /// SIGTERM, then wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal_and_wait(signal::Signal::SIGTERM)
    }

    /// SIGKILL, as a crash.
    pub fn kill(&mut self) -> ExitStatus {
        self.signal_and_wait(signal::Signal::SIGKILL)
    }

    fn signal_and_wait(&mut self, sig: signal::Signal) -> ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        signal::kill(Pid::from_raw(child.id() as i32), sig).expect("signal cortend");
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait().expect("wait for cortend") {
                return status;
            }
            assert!(start.elapsed() < DEADLINE, "cortend did not exit after {sig}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn()
            .unwrap_or_else(|log| panic!("cortend did not restart:\n{log}"));
    }

    /// Runs the real `ctr` against this daemon.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(system_tool("ctr", "containerd"))
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run ctr")
    }

    /// Runs the real `ctr` with `input` on its stdin.
    pub fn ctr_with_input(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = Command::new(system_tool("ctr", "containerd"))
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ctr");
        let mut stdin = child.stdin.take().expect("ctr stdin");
        let input = input.to_vec();
        // Written from a thread so a ctr that fails early cannot block us on a full pipe.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().expect("wait for ctr");
        let _ = writer.join();
        out
    }

    /// Runs `corten` against this daemon.
    pub fn corten(&self, args: &[&str]) -> Output {
        Command::new(bin("corten"))
            .arg("--address")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run corten")
    }

    /// GET `path` from the metrics endpoint: (status line, body).
    pub fn http_get(&self, path: &str) -> (String, String) {
        let mut stream = TcpStream::connect(&self.metrics).expect("connect to metrics");
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .expect("send request");
        let mut response = String::new();
        stream.read_to_string(&mut response).expect("read response");
        let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
        (head.lines().next().unwrap_or_default().to_string(), body.to_string())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Asserts the command succeeded and returns its stdout.
pub fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "command failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asserts the command failed and returns its stderr.
pub fn fails(out: Output) -> String {
    assert!(
        !out.status.success(),
        "command unexpectedly succeeded:\nstdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}
