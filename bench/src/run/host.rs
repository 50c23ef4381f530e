//! What runs beside the daemons: the shim and runc that both use, the state
//! they keep at fixed paths, and the sweep that removes whatever a failed
//! run left behind.
//!
//! Debian's shim and runc keep state outside the daemons' directories:
//! runc under `/run/containerd/runc/<namespace>`, the shims' sockets under
//! `/run/containerd/s/`. Each daemon therefore gets a namespace of its own,
//! and a run refuses to start where another run's containers still are.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use nix::{
    errno::Errno,
    fcntl::{Flock, FlockArg},
    mount::{umount2, MntFlags},
    sys::signal::{kill, Signal},
    unistd::Pid,
};

use super::jobs::{run_one_with, OnStop};
use crate::{proc_status, workdir::parse_mount_line};

/// The runtime both daemons resolve `io.containerd.runc.v2` to.
pub const SHIM: &str = "containerd-shim-runc-v2";
const RUNC: &str = "runc";
/// Where Debian's shim has runc keep its state, one directory per namespace.
pub const RUNC_ROOT: &str = "/run/containerd/runc";
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// The shim and runc found on PATH, which both daemons inherit.
pub struct Runtime {
    pub shim: PathBuf,
    pub shim_version: String,
    pub runc: PathBuf,
    pub runc_version: String,
}

impl Runtime {
    pub fn locate() -> anyhow::Result<Runtime> {
        let shim = on_path(SHIM).with_context(|| {
            format!(
                "{SHIM} is not on PATH: install Debian's containerd package (apt-get install -y containerd), \
                 which ships it; both daemons start it for `ctr run`"
            )
        })?;
        let runc =
            on_path(RUNC).context("runc is not on PATH: install Debian's runc package (apt-get install -y runc)")?;
        let shim_version = first_line_with(&shim, "-v", "Version:")?
            .trim_start_matches("Version:")
            .trim()
            .to_string();
        let runc_version = first_line_with(&runc, "--version", "runc version")?;
        Ok(Runtime {
            shim: canonical(&shim),
            shim_version,
            runc: canonical(&runc),
            runc_version,
        })
    }
}

/// The line of `BINARY FLAG`'s output that contains `marker`, trimmed,
/// else its first line.
fn first_line_with(binary: &Path, flag: &str, marker: &str) -> anyhow::Result<String> {
    let out = Command::new(binary)
        .arg(flag)
        .output()
        .with_context(|| format!("run {} {flag}", binary.display()))?;
    if !out.status.success() {
        bail!("{} {flag} failed ({})", binary.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains(marker))
        .or_else(|| text.lines().next())
        .unwrap_or_default();
    Ok(line.trim().to_string())
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
}

/// Locks runc's state directory (a lock on the directory itself, which
/// runc and the shims ignore) for the whole benchmark, so that two runs
/// never share the namespaces' runc state. Fails at once if another
/// `corten-bench run` holds it; the kernel releases it however the process
/// ends, and no lock file is left behind.
pub fn lock() -> anyhow::Result<Flock<File>> {
    std::fs::create_dir_all(RUNC_ROOT).with_context(|| format!("create {RUNC_ROOT}"))?;
    let dir = File::open(RUNC_ROOT).with_context(|| format!("open {RUNC_ROOT}"))?;
    match Flock::lock(dir, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(lock),
        Err((_, Errno::EWOULDBLOCK)) => bail!(
            "another `corten-bench run` is going on (it holds a lock on {RUNC_ROOT}): the two would \
             share the namespaces' runc state; wait for it to end"
        ),
        Err((_, e)) => Err(e).with_context(|| format!("lock {RUNC_ROOT}")),
    }
}

fn runc_state(namespace: &str) -> PathBuf {
    Path::new(RUNC_ROOT).join(namespace)
}

/// Fails if runc has containers in `namespace`: a run of this benchmark
/// was killed before it could clean up (with the lock held, no other run
/// is going on).
pub fn check_namespace_free(namespace: &str) -> anyhow::Result<()> {
    let ids = runc_containers(namespace);
    if !ids.is_empty() {
        bail!(
            "runc has containers in namespace {namespace} ({}) under {}: an earlier `corten-bench run` \
             was killed before it cleaned up. Remove them with `runc --root {} delete --force ID` for \
             each",
            ids.join(", "),
            runc_state(namespace).display(),
            runc_state(namespace).display(),
        );
    }
    Ok(())
}

/// The container ids runc keeps state for in `namespace`.
pub fn runc_containers(namespace: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(runc_state(namespace)) else {
        return Vec::new();
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    ids.sort();
    ids
}

/// A shim process serving one daemon.
#[derive(Debug, Clone)]
pub struct Shim {
    pub pid: u32,
    pub exe: PathBuf,
}

/// The processes started with `-address SOCKET`: the shims of the daemon on
/// that socket (a daemon passes its own gRPC address to every shim it
/// starts). Socket paths are unique to one run, so these are this run's.
pub fn shims_of(socket: &Path) -> Vec<Shim> {
    let wanted = socket.as_os_str().as_encoded_bytes();
    let mut shims = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return shims;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        if !args.windows(2).any(|w| w[0] == b"-address" && w[1] == wanted) {
            continue;
        }
        let exe = std::fs::read_link(entry.path().join("exe")).unwrap_or_default();
        shims.push(Shim { pid, exe });
    }
    shims.sort_by_key(|s| s.pid);
    shims
}

/// Resident memory of `shims` together, in KiB; those that exited in the
/// meantime count nothing.
pub fn rss_kib(shims: &[Shim]) -> u64 {
    shims.iter().filter_map(|s| proc_status::vm_rss_kib(s.pid).ok()).sum()
}

/// Waits until no shim of the daemon on `socket` is left; a shim exits on
/// its own shortly after its last task is deleted.
pub fn wait_shims_gone(socket: &Path, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let shims = shims_of(socket);
        if shims.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} shim process(es) still running {timeout:?} after their containers were removed: pids {}",
                shims.len(),
                shims.iter().map(|s| s.pid.to_string()).collect::<Vec<_>>().join(", ")
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Mount points at or under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<PathBuf> = text
        .lines()
        .filter_map(parse_mount_line)
        .map(|(point, _, _)| PathBuf::from(point))
        .filter(|point| point.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    points
}

/// Removes by force what a failed run left of one daemon's containers,
/// without the daemon's help (it may be gone): runc's containers in
/// `namespace` (their processes killed, their cgroups removed), then the
/// shims on `socket` and any process still under them, then mounts under
/// `dirs`. Returns what it had to do, for a warning; empty when nothing was
/// left.
pub fn sweep(namespace: &str, socket: &Path, dirs: &[&Path], runc: &Path) -> Vec<String> {
    let mut done = Vec::new();
    let root = runc_state(namespace);
    for id in runc_containers(namespace) {
        let mut command = Command::new(runc);
        command.arg("--root").arg(&root).args(["delete", "--force", &id]);
        match run_one_with(command, Duration::from_secs(10), OnStop::Finish) {
            Ok(_) => done.push(format!("runc delete --force {id}")),
            Err(e) => done.push(format!("runc delete --force {id} failed: {e:#}")),
        }
    }
    let shims = shims_of(socket);
    if !shims.is_empty() {
        let under: Vec<u32> = shims.iter().flat_map(|s| children_of(s.pid)).collect();
        for pid in under.iter().chain(shims.iter().map(|s| &s.pid)) {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
        done.push(format!(
            "killed {} shim(s) and {} process(es) under them",
            shims.len(),
            under.len()
        ));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !shims_of(socket).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for dir in dirs {
        for point in mounts_under(dir) {
            match umount2(&point, MntFlags::MNT_DETACH) {
                Ok(()) => done.push(format!("unmounted {}", point.display())),
                Err(e) => done.push(format!("unmount {} failed: {e}", point.display())),
            }
        }
    }
    remove_namespace_dirs(namespace);
    done
}

/// What `sweep` needs for one daemon, and what else to remove, kept for
/// the panic hook.
struct Target {
    namespace: String,
    socket: PathBuf,
    dirs: Vec<PathBuf>,
    runc: PathBuf,
    daemon: u32,
}

static TARGETS: Mutex<Vec<Target>> = Mutex::new(Vec::new());
/// Temporary directories to remove after a panic, once the daemons are
/// gone.
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Release builds abort on a panic, so no Drop guard runs: a panic hook
/// does their work instead, after the panic message. It sweeps every daemon
/// registered with `guard` by force, as `sweep` does, kills the daemon,
/// and removes the directories registered with `guard_dir`.
pub fn install_panic_sweep() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let targets = std::mem::take(&mut *TARGETS.lock().unwrap_or_else(|e| e.into_inner()));
        for t in targets {
            let dirs: Vec<&Path> = t.dirs.iter().map(PathBuf::as_path).collect();
            let mut done = sweep(&t.namespace, &t.socket, &dirs, &t.runc);
            if kill(Pid::from_raw(t.daemon as i32), Signal::SIGKILL).is_ok() {
                done.push(format!("killed the daemon (pid {})", t.daemon));
            }
            eprintln!(
                "corten-bench run: cleaning up namespace {} after the panic:\n  {}",
                t.namespace,
                done.join("\n  ")
            );
        }
        for dir in std::mem::take(&mut *DIRS.lock().unwrap_or_else(|e| e.into_inner())) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }));
}

/// Registers a daemon (its namespace, socket, directories and pid) for the
/// panic hook until `unguard`.
pub fn guard(namespace: &str, socket: &Path, dirs: &[&Path], runc: &Path, daemon: u32) {
    TARGETS.lock().unwrap_or_else(|e| e.into_inner()).push(Target {
        namespace: namespace.to_string(),
        socket: socket.to_path_buf(),
        dirs: dirs.iter().map(|d| d.to_path_buf()).collect(),
        runc: runc.to_path_buf(),
        daemon,
    });
}

pub fn unguard(namespace: &str) {
    TARGETS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|t| t.namespace != namespace);
}

/// Registers a temporary directory for removal after a panic. The
/// directories stay registered: after a normal end they are gone already,
/// and the hook ignores what it cannot remove.
pub fn guard_dir(dir: &Path) {
    DIRS.lock().unwrap_or_else(|e| e.into_inner()).push(dir.to_path_buf());
}

/// The directories runc leaves behind for a namespace once its last
/// container is gone: its state directory and the namespace's cgroup in
/// every hierarchy (ctr puts containers in `/<namespace>/<id>`). Only empty
/// ones go: removing a directory that is not empty fails, and a cgroup
/// with processes or children cannot be removed.
pub fn remove_namespace_dirs(namespace: &str) {
    let _ = std::fs::remove_dir(runc_state(namespace));
    let cgroups = Path::new(CGROUP_ROOT);
    // cgroup v2 alone: the namespace's cgroup is right under the root.
    let _ = std::fs::remove_dir(cgroups.join(namespace));
    // cgroup v1 (and hybrid): one hierarchy per directory.
    if let Ok(hierarchies) = std::fs::read_dir(cgroups) {
        for hierarchy in hierarchies.flatten() {
            let _ = std::fs::remove_dir(hierarchy.path().join(namespace));
        }
    }
}

/// The pids whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            (parent_pid(&stat)? == parent).then_some(pid)
        })
        .collect()
}

/// Field 4 of /proc/PID/stat, after the command name in parentheses.
fn parent_pid(stat: &str) -> Option<u32> {
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::parent_pid;

    #[test]
    fn parent_is_the_fourth_field_even_with_odd_names() {
        assert_eq!(parent_pid("77 (a) b (c)) S 12 77 77 0"), Some(12));
        assert_eq!(parent_pid("77 (sleep) S 1 77"), Some(1));
    }
}
