//! Support for the container and task tests: a daemon beside a registry
//! with the busybox image pulled into a containerd namespace of the test's
//! own, the real `ctr` in that namespace (with a deadline), `ctr events` or
//! `corten events` read line by line, and the checks that a container left
//! nothing behind.
//!
//! runc and Debian's shim keep state under fixed paths keyed by namespace
//! (`/run/containerd/runc/<ns>`), and ctr's default spec puts a container
//! in the cgroup `/<ns>/<id>`, so tests running side by side must never
//! share a namespace: [`namespace`] derives one from the test's name and
//! this process's id.
//!
//! [`Env`] cleans up on drop whatever a failed test left running (runc
//! containers, shims, mounts, cgroups of its namespace) so one failure does
//! not leak processes into the next run. Tests check for leftovers
//! themselves, before that.

use std::{
    io::{BufRead, BufReader, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use nix::{sys::signal, unistd::Pid};

use crate::{registry::Registry, system_tool, Daemon, DEADLINE};

/// How long one `ctr` command may take before the test fails: generous,
/// for a loaded machine, but a hung command must not hang the suite.
pub const CTR_DEADLINE: Duration = Duration::from_secs(60);

/// Where Debian's shim tells runc to keep its state: `<this>/<namespace>/<id>`.
pub const RUNC_STATE: &str = "/run/containerd/runc";

/// The runtime v2 plugin's directory name under the daemon's root and state.
pub const TASK_PLUGIN_DIR: &str = "io.containerd.runtime.v2.task";

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A containerd namespace no other test (nor another run of this suite)
/// uses: `<name>-<pid>`. `name` must be a valid identifier part
/// (alphanumerics, single `-`, `_` or `.` between them).
pub fn namespace(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// Whether the shim processes use cgroup v2 (a unified hierarchy mounted at
/// /sys/fs/cgroup) rather than v1 (hybrid or legacy), as containerd decides.
pub fn cgroup_v2() -> bool {
    Path::new(CGROUP_ROOT).join("cgroup.controllers").exists()
}

/// The last `lines` lines of `text`.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits for `child` (stdout and stderr piped) at most `deadline`; kills it
/// and panics with what it printed if it takes longer.
pub fn wait_output(mut child: Child, deadline: Duration, what: &str) -> Output {
    fn drain(stream: Option<impl Read + Send + 'static>) -> JoinHandle<Vec<u8>> {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut s) = stream {
                let _ = s.read_to_end(&mut bytes);
            }
            bytes
        })
    }
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll a child") {
            break status;
        }
        if start.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
            let err = String::from_utf8_lossy(&stderr.join().unwrap_or_default()).into_owned();
            panic!("{what} did not finish within {deadline:?}:\nstdout: {out}\nstderr: {err}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    }
}

/// One row of `ctr tasks ls`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub id: String,
    pub pid: u32,
    pub status: String,
}

/// Parses `ctr tasks ls`: a `TASK PID STATUS` header, then one row a task.
pub fn parse_tasks(listing: &str) -> Vec<Task> {
    listing
        .lines()
        .skip(1)
        .filter_map(|line| {
            let mut cols = line.split_whitespace();
            let id = cols.next()?.to_string();
            let pid = cols.next()?.parse().ok()?;
            let status = cols.next()?.to_string();
            Some(Task { id, pid, status })
        })
        .collect()
}

/// The shim processes of namespace `ns` (and of container `id`, if given):
/// any process whose program is a `containerd-shim*` binary and whose
/// arguments say `-namespace NS` (and `-id ID`), as the runtime v2 protocol
/// starts them.
pub fn shim_pids(ns: &str, id: Option<&str>) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let program = args.first().map(|a| a.rsplit('/').next().unwrap_or(a)).unwrap_or("");
        if !program.starts_with("containerd-shim") {
            continue;
        }
        let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].as_str());
        if flag("-namespace") == Some(ns) && id.is_none_or(|id| flag("-id") == Some(id)) {
            pids.push(pid);
        }
    }
    pids
}

/// A daemon and a registry, with the busybox image (`/bin/sh`, `echo`,
/// `sleep`, `ls`, `cat`, `true`) pulled into namespace `ns`.
pub struct Env {
    pub d: Daemon,
    pub registry: Registry,
    /// The image reference, as `ctr run` takes it.
    pub image: String,
    pub ns: String,
}

impl Env {
    /// `name` makes the namespace (see [`namespace`]).
    pub fn start(name: &str) -> Env {
        Env::start_with(name, "")
    }

    /// As [`Env::start`], with `extra` appended to the daemon's config.
    pub fn start_with(name: &str, extra: &str) -> Env {
        let registry = Registry::start();
        let image = registry.push_busybox("busybox", "1").reference;
        let d = Daemon::start_with(extra);
        let env = Env {
            d,
            registry,
            image,
            ns: namespace(name),
        };
        env.ctr_ok(
            "pull the busybox image",
            &["images", "pull", "--plain-http", &env.image],
        );
        env
    }

    /// `ctr --address SOCKET -n NS ARGS...`, stdin empty, within [`CTR_DEADLINE`].
    pub fn ctr(&self, args: &[&str]) -> Output {
        let child = self
            .ctr_command(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run ctr");
        wait_output(child, CTR_DEADLINE, &format!("ctr {}", args.join(" ")))
    }

    /// The `ctr` command line for this daemon and namespace, not started.
    pub fn ctr_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(system_tool("ctr", "containerd"));
        command
            .arg("--address")
            .arg(&self.d.socket)
            .arg("--namespace")
            .arg(&self.ns)
            .args(args);
        command
    }

    /// Asserts that `ctr ARGS` succeeds (the daemon's log in the message if
    /// not) and returns its stdout.
    pub fn ctr_ok(&self, what: &str, args: &[&str]) -> String {
        let out = self.ctr(args);
        if !out.status.success() {
            panic!(
                "{what}: ctr {} failed ({}):\nstdout: {}\nstderr: {}\ncortend log (tail):\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                tail(&self.d.log(), 60)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asserts that `ctr ARGS` fails and returns its stderr.
    pub fn ctr_fails(&self, what: &str, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            !out.status.success(),
            "{what}: ctr {} unexpectedly succeeded:\nstdout: {}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// `ctr tasks ls`, parsed.
    pub fn tasks(&self) -> Vec<Task> {
        parse_tasks(&self.ctr_ok("list tasks", &["tasks", "ls"]))
    }

    pub fn task(&self, id: &str) -> Option<Task> {
        self.tasks().into_iter().find(|t| t.id == id)
    }

    /// `ctr containers ls -q`.
    pub fn containers(&self) -> Vec<String> {
        self.ctr_ok("list containers", &["containers", "ls", "-q"])
            .lines()
            .map(|l| l.trim().to_string())
            .filter(|l| !l.is_empty())
            .collect()
    }

    /// Polls `ctr tasks ls` until task `id` shows `status`.
    pub fn wait_status(&self, id: &str, status: &str) -> Task {
        let start = Instant::now();
        loop {
            let tasks = self.tasks();
            if let Some(task) = tasks.iter().find(|t| t.id == id && t.status == status) {
                return task.clone();
            }
            assert!(
                start.elapsed() < DEADLINE,
                "task {id} not {status} after {DEADLINE:?}: {tasks:?}\ncortend log (tail):\n{}",
                tail(&self.d.log(), 60)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ctr run -d IMAGE ID ARGS...`; returns the task once it is RUNNING.
    pub fn run_detached(&self, id: &str, args: &[&str]) -> Task {
        let mut all = vec!["run", "-d", &self.image, id];
        all.extend_from_slice(args);
        self.ctr_ok(&format!("start container {id}"), &all);
        self.wait_status(id, "RUNNING")
    }

    /// SIGKILL, wait for STOPPED, `tasks rm` (asserting the exit code ctr
    /// reports, 137), `containers rm`.
    pub fn remove(&self, id: &str) {
        self.ctr_ok("kill", &["tasks", "kill", "-s", "SIGKILL", id]);
        self.wait_status(id, "STOPPED");
        let out = self.ctr(&["tasks", "rm", id]);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "ctr tasks rm {id}: {err}");
        assert!(err.contains("exit code 137"), "ctr tasks rm {id}: {err}");
        self.ctr_ok("remove the container", &["containers", "rm", id]);
    }

    /// `<state>/io.containerd.runtime.v2.task/<ns>/<id>`.
    pub fn bundle(&self, id: &str) -> PathBuf {
        self.d.state.join(TASK_PLUGIN_DIR).join(&self.ns).join(id)
    }

    /// `<root>/io.containerd.runtime.v2.task/<ns>/<id>`, the bundle's `work`.
    pub fn work_dir(&self, id: &str) -> PathBuf {
        self.d.root.join(TASK_PLUGIN_DIR).join(&self.ns).join(id)
    }

    /// The cgroup directories of container `id` (ctr's default spec puts it
    /// at `/<ns>/<id>`): one per v1 hierarchy, or the unified one.
    pub fn cgroup_dirs(&self, id: &str) -> Vec<PathBuf> {
        let mut dirs = Vec::new();
        let unified = Path::new(CGROUP_ROOT).join(&self.ns).join(id);
        if unified.exists() {
            dirs.push(unified);
        }
        if let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) {
            for entry in entries.flatten() {
                let dir = entry.path().join(&self.ns).join(id);
                if dir.exists() {
                    dirs.push(dir);
                }
            }
        }
        dirs
    }

    /// What container `id` left behind: shim processes, mounts under its
    /// bundle, its bundle and work directories, its cgroups, runc's state.
    pub fn leftovers(&self, id: &str) -> Vec<String> {
        let mut left = Vec::new();
        let shims = shim_pids(&self.ns, Some(id));
        if !shims.is_empty() {
            left.push(format!("shim processes {shims:?}"));
        }
        let bundle = self.bundle(id);
        let bundle_text = bundle.to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mountinfo.lines() {
            let mount_point = line.split(' ').nth(4).unwrap_or_default();
            if mount_point == bundle_text || mount_point.starts_with(&format!("{bundle_text}/")) {
                left.push(format!("mount {line}"));
            }
        }
        for dir in [bundle, self.work_dir(id)] {
            if dir.symlink_metadata().is_ok() {
                left.push(format!("directory {}", dir.display()));
            }
        }
        for dir in self.cgroup_dirs(id) {
            left.push(format!("cgroup {}", dir.display()));
        }
        let runc = Path::new(RUNC_STATE).join(&self.ns).join(id);
        if runc.exists() {
            left.push(format!("runc state {}", runc.display()));
        }
        left
    }

    /// Waits (shims exit asynchronously) until none of `ids` has anything
    /// left; panics with the list otherwise.
    pub fn assert_nothing_left(&self, ids: &[&str]) {
        let start = Instant::now();
        loop {
            let left: Vec<String> = ids.iter().flat_map(|id| self.leftovers(id)).collect();
            if left.is_empty() {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "left behind after {DEADLINE:?}:\n{}\ncortend log (tail):\n{}",
                left.join("\n"),
                tail(&self.d.log(), 60)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Best effort, never panics: removes what a failed test may have left
    /// in this namespace: runc containers (killed), shims, mounts under the
    /// daemon's directory, cgroups, runc's state directory.
    fn clean_up(&self) {
        let runc_root = Path::new(RUNC_STATE).join(&self.ns);
        let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
            .into_iter()
            .find(|p| Path::new(p).exists());
        if let (Some(runc), Ok(entries)) = (runc, std::fs::read_dir(&runc_root)) {
            for entry in entries.flatten() {
                let _ = Command::new(runc)
                    .arg("--root")
                    .arg(&runc_root)
                    .args(["delete", "--force"])
                    .arg(entry.file_name())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        for pid in shim_pids(&self.ns, None) {
            let _ = signal::kill(Pid::from_raw(pid), signal::Signal::SIGKILL);
        }
        let dir = self.d.dir.path().to_string_lossy().into_owned();
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut mounts: Vec<String> = mountinfo
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&format!("{dir}/")))
            .map(str::to_string)
            .collect();
        // Deepest first.
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for mount in mounts {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&mount)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let mut cgroup_parents = vec![Path::new(CGROUP_ROOT).join(&self.ns)];
        if let Ok(entries) = std::fs::read_dir(CGROUP_ROOT) {
            cgroup_parents.extend(entries.flatten().map(|e| e.path().join(&self.ns)));
        }
        for parent in cgroup_parents {
            if let Ok(children) = std::fs::read_dir(&parent) {
                for child in children.flatten() {
                    if child.path().is_dir() {
                        let _ = std::fs::remove_dir(child.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(&parent);
        }
        let _ = std::fs::remove_dir(&runc_root);
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        self.clean_up();
    }
}

/// One line of `ctr events`: `<date> <time> <zone offset> <zone> <namespace>
/// <topic> <event as JSON>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub namespace: String,
    pub topic: String,
    pub payload: String,
}

impl Event {
    pub fn parse(line: &str) -> Option<Event> {
        let mut parts = line.splitn(7, ' ');
        let _date = parts.next()?;
        let _time = parts.next()?;
        let _offset = parts.next()?;
        let _zone = parts.next()?;
        let namespace = parts.next()?.to_string();
        let topic = parts.next()?.to_string();
        if !topic.starts_with('/') {
            return None;
        }
        let payload = parts.next().unwrap_or_default().to_string();
        Some(Event {
            namespace,
            topic,
            payload,
        })
    }

    /// The payload as JSON (`null` if it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.payload).unwrap_or(serde_json::Value::Null)
    }
}

/// A running `ctr events [FILTERS...]` or `corten events [ARGS...]`, its
/// lines collected as they come.
pub struct Events {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    /// The CLI subscribed through, which also makes the markers of
    /// [`Events::sync`]: ctr and corten take the same arguments for both.
    program: PathBuf,
    /// `ctr` or `corten`, for messages.
    name: &'static str,
    socket: PathBuf,
    args: Vec<String>,
}

static MARKERS: AtomicUsize = AtomicUsize::new(0);

impl Events {
    /// Starts `ctr events FILTERS...` and returns once it is subscribed,
    /// which [`Events::sync`] proves with a marker in `marker_ns`. The
    /// filters must let `/namespaces/create` in `marker_ns` through.
    pub fn subscribe(d: &Daemon, marker_ns: &str, filters: &[&str]) -> Events {
        Events::start(system_tool("ctr", "containerd"), "ctr", d, marker_ns, filters)
    }

    /// As [`Events::subscribe`], through our own `corten events ARGS...`
    /// (filters, `--format json`), with the markers made by corten too.
    pub fn subscribe_corten(d: &Daemon, marker_ns: &str, args: &[&str]) -> Events {
        Events::start(crate::bin("corten"), "corten", d, marker_ns, args)
    }

    fn start(program: PathBuf, name: &'static str, d: &Daemon, marker_ns: &str, args: &[&str]) -> Events {
        let mut child = Command::new(&program)
            .arg("--address")
            .arg(&d.socket)
            .arg("events")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("run {name} events: {e}"));
        let stdout = child.stdout.take().expect("events stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        let events = Events {
            child,
            lines,
            reader: Some(reader),
            program,
            name,
            socket: d.socket.clone(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        events.sync(marker_ns);
        events
    }

    /// A barrier: creates (then removes) a namespace named after a fresh
    /// marker, from namespace `marker_ns`, until its `/namespaces/create`
    /// arrives. Events reach a subscriber in order, so everything published
    /// before has been delivered once this returns.
    pub fn sync(&self, marker_ns: &str) {
        let start = Instant::now();
        loop {
            let marker = format!(
                "sync-{}-{}",
                std::process::id(),
                MARKERS.fetch_add(1, Ordering::Relaxed)
            );
            let cli = |args: &[&str]| {
                let child = Command::new(&self.program)
                    .arg("--address")
                    .arg(&self.socket)
                    .arg("--namespace")
                    .arg(marker_ns)
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("run {}: {e}", self.name));
                wait_output(child, CTR_DEADLINE, &format!("{} namespaces", self.name))
            };
            let out = cli(&["namespaces", "create", &marker]);
            assert!(
                out.status.success(),
                "{} namespaces create {marker}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr)
            );
            // On the raw lines, so that it works for either output format
            // (ctr's table line or corten's JSON object).
            let quoted = format!("\"{marker}\"");
            let seen = |events: &Events| {
                events
                    .lines()
                    .iter()
                    .any(|l| l.contains("/namespaces/create") && l.contains(&quoted))
            };
            let round = Instant::now();
            while !seen(self) && round.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let found = seen(self);
            let _ = cli(&["namespaces", "rm", &marker]);
            if found {
                return;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} events {:?} never showed the /namespaces/create of a namespace created \
                 from namespace {marker_ns} (containerd's envelope carries the creating \
                 request's namespace); it printed:\n{}",
                self.name,
                self.args,
                self.lines().join("\n")
            );
        }
    }

    /// Every line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every parsed event so far.
    pub fn events(&self) -> Vec<Event> {
        self.lines().iter().filter_map(|l| Event::parse(l)).collect()
    }

    /// Waits until an event satisfies `matches`; returns it.
    pub fn wait_for(&self, what: &str, matches: impl Fn(&Event) -> bool) -> Event {
        let start = Instant::now();
        loop {
            if let Some(event) = self.events().into_iter().find(|e| matches(e)) {
                return event;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "no event {what} after {DEADLINE:?}; {} events printed:\n{}",
                self.name,
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Events {
    /// Waits (within [`DEADLINE`]) for the events command to end by itself,
    /// as it does when the daemon ends its stream.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll the events command") {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{} events still running after {DEADLINE:?}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Events {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
    }
}

/// Runs `command` (a shell command line) on a fresh pseudo-terminal with
/// util-linux's `script`, types `input` into it, keeps the terminal's input
/// open until the command exits, and returns the exit status and everything
/// the terminal showed (carriage returns removed).
pub fn in_terminal(command: &str, input: &[u8], deadline: Duration) -> (ExitStatus, String) {
    let mut child = Command::new(system_tool("script", "bsdutils"))
        .args(["--quiet", "--return", "--command", command, "/dev/null"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run script");
    let mut stdin = child.stdin.take().expect("script stdin");
    stdin.write_all(input).expect("type into the terminal");
    stdin.flush().expect("flush the terminal input");
    let out = wait_output(child, deadline, &format!("script -c {command:?}"));
    drop(stdin);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
    .replace('\r', "");
    (out.status, shown)
}
