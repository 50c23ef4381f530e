//! The OCI runtime spec (the bundle's `config.json`) of a container that
//! `corten run` creates.
//!
//! Three layers, in order: the defaults `ctr run` gives a Linux container
//! (observed from containerd 1.6's ctr, see the test fixtures), the image's
//! config (command, environment, working directory, user), then what the
//! user asked for on the command line.

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    path::{Component, Path, PathBuf},
};

use anyhow::{bail, Context as _};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilities, LinuxCpu, LinuxDeviceCgroup, LinuxDeviceType, LinuxNamespace,
    LinuxNamespaceType, LinuxResources, Mount, PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User,
};
use serde::Deserialize;

/// The type URL of a spec carried in a container's `spec` Any; the value is
/// the spec as JSON.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// The spec version ctr writes.
const OCI_VERSION: &str = "1.0.2-dev";

/// The environment of an image that sets none.
pub const DEFAULT_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Container label naming the signal that stops the container gracefully.
pub const STOP_SIGNAL_LABEL: &str = "io.containerd.image.config.stop-signal";
const DEFAULT_STOP_SIGNAL: &str = "SIGTERM";

/// The CPU shares `ctr run` sets unless told otherwise (`ctr containers
/// create` sets none).
pub const DEFAULT_CPU_SHARES: u64 = 1024;

/// The capabilities a container's process keeps, in the order ctr lists them.
const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

const MASKED_PATHS: [&str; 10] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/sys/firmware",
    "/proc/scsi",
];

const READONLY_PATHS: [&str; 5] = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// Character devices the device cgroup lets a container use, as
/// (major, minor): null, random, full, tty, zero, urandom, console, every
/// pty (no minor), ptmx.
const ALLOWED_CHAR_DEVICES: [(i64, Option<i64>); 9] = [
    (1, Some(3)),
    (1, Some(8)),
    (1, Some(7)),
    (5, Some(0)),
    (1, Some(5)),
    (1, Some(9)),
    (5, Some(1)),
    (136, None),
    (5, Some(2)),
];

/// The parts of an OCI (or Docker) image config a container is built from.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImageConfig {
    pub user: String,
    pub env: Vec<String>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub working_dir: String,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: String,
}

#[derive(Deserialize)]
struct RawImage {
    #[serde(default)]
    config: Option<RawConfig>,
}

/// Docker writes `null` for unset lists, hence the options.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct RawConfig {
    user: Option<String>,
    env: Option<Vec<String>>,
    entrypoint: Option<Vec<String>>,
    cmd: Option<Vec<String>>,
    working_dir: Option<String>,
    labels: Option<BTreeMap<String, String>>,
    stop_signal: Option<String>,
}

impl ImageConfig {
    /// Parses an image config blob; fields it does not know are ignored.
    pub fn from_json(bytes: &[u8]) -> anyhow::Result<Self> {
        let raw: RawImage = serde_json::from_slice(bytes).context("parsing the image config")?;
        let Some(c) = raw.config else {
            return Ok(ImageConfig::default());
        };
        Ok(ImageConfig {
            user: c.user.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            working_dir: c.working_dir.unwrap_or_default(),
            labels: c.labels.unwrap_or_default(),
            stop_signal: c.stop_signal.unwrap_or_default(),
        })
    }
}

/// The container's `/etc/passwd` and `/etc/group`, as text; `None` for a
/// file the image does not have.
#[derive(Debug, Default, Clone)]
pub struct AccountFiles {
    pub passwd: Option<String>,
    pub group: Option<String>,
}

impl AccountFiles {
    /// Reads both files from a mounted root filesystem. Symlinks are
    /// followed inside `root` only, so an image cannot point them at the
    /// host's files.
    pub fn read_from(root: &Path) -> io::Result<Self> {
        Ok(AccountFiles {
            passwd: read_in_root(root, "etc/passwd")?,
            group: read_in_root(root, "etc/group")?,
        })
    }
}

/// Reads `path` below `root` as if `root` were `/`; `None` if it does not
/// exist there.
fn read_in_root(root: &Path, path: &str) -> io::Result<Option<String>> {
    let Some(resolved) = resolve_in_root(root, Path::new(path))? else {
        return Ok(None);
    };
    match fs::read(&resolved) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(err) if matches!(err.kind(), io::ErrorKind::NotFound) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Resolves `path` component by component under `root`, reading symlinks
/// and interpreting their targets relative to `root`; `..` never climbs
/// above it. `None` when a component is missing.
fn resolve_in_root(root: &Path, path: &Path) -> io::Result<Option<PathBuf>> {
    const MAX_LINKS: usize = 40;
    // Components still to walk, last first.
    let mut pending: Vec<PathBuf> = path.components().rev().map(|c| PathBuf::from(c.as_os_str())).collect();
    let mut current = PathBuf::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.components().next() {
            None | Some(Component::CurDir) | Some(Component::RootDir) | Some(Component::Prefix(_)) => continue,
            Some(Component::ParentDir) => {
                current.pop();
                continue;
            }
            Some(Component::Normal(_)) => {}
        }
        let candidate = current.join(&part);
        let meta = match fs::symlink_metadata(root.join(&candidate)) {
            Ok(meta) => meta,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        if meta.file_type().is_symlink() {
            links += 1;
            if links > MAX_LINKS {
                return Err(io::Error::other(format!(
                    "too many symbolic links resolving {}",
                    path.display()
                )));
            }
            let target = fs::read_link(root.join(&candidate))?;
            if target.is_absolute() {
                current.clear();
            }
            pending.extend(target.components().rev().map(|c| PathBuf::from(c.as_os_str())));
        } else {
            current = candidate;
        }
    }
    Ok(Some(root.join(current)))
}

/// The identity a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserError {
    #[error("invalid user {0:?}: expected name, uid, name:group or uid:gid")]
    Invalid(String),
    #[error("user {0:?} is not in the image's /etc/passwd")]
    NoSuchUser(String),
    #[error("group {0:?} is not in the image's /etc/group")]
    NoSuchGroup(String),
    #[error("cannot resolve {name:?}: the image has no {file}")]
    MissingFile { name: String, file: &'static str },
}

struct PasswdEntry<'a> {
    name: &'a str,
    uid: u32,
    gid: u32,
}

struct GroupEntry<'a> {
    name: &'a str,
    gid: u32,
    members: Vec<&'a str>,
}

/// `/etc/passwd` lines with a name and numeric ids; others are skipped.
fn passwd_entries(text: &str) -> impl Iterator<Item = PasswdEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.trim().split(':');
        let name = fields.next().filter(|n| !n.is_empty())?;
        let _password = fields.next()?;
        let uid = fields.next()?.trim().parse().ok()?;
        let gid = fields.next()?.trim().parse().ok()?;
        Some(PasswdEntry { name, uid, gid })
    })
}

/// `/etc/group` lines with a name and a numeric id; others are skipped.
fn group_entries(text: &str) -> impl Iterator<Item = GroupEntry<'_>> {
    text.lines().filter_map(|line| {
        let mut fields = line.trim().split(':');
        let name = fields.next().filter(|n| !n.is_empty())?;
        let _password = fields.next()?;
        let gid = fields.next()?.trim().parse().ok()?;
        let members = fields
            .next()
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        Some(GroupEntry { name, gid, members })
    })
}

fn numeric(s: &str) -> Option<u32> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Resolves an image's `User` (`name`, `uid`, `name:group`, `uid:gid`, any
/// mix; empty means root) against the container's account files, the way
/// ctr does:
///
/// - a name must be in the file it is looked up in (or it is an error);
///   numbers are taken as they are;
/// - a lone user takes its primary group from `/etc/passwd` (a uid that is
///   not listed gets group 0); an empty part of `a:b` means 0;
/// - the additional groups are the groups listing the user (found by uid in
///   `/etc/passwd`; root when no user is set) as a member, in file order,
///   leaving out a group named like the user; the primary gid is put first
///   unless it is among them already.
pub fn resolve_user(user: &str, files: &AccountFiles) -> Result<ResolvedUser, UserError> {
    let passwd = files.passwd.as_deref();
    let group = files.group.as_deref();
    fn need<'a>(file: Option<&'a str>, name: &str, which: &'static str) -> Result<&'a str, UserError> {
        file.ok_or_else(|| UserError::MissingFile {
            name: name.to_string(),
            file: which,
        })
    }
    let by_name = |name: &str| -> Result<(u32, u32), UserError> {
        let text = need(passwd, name, "/etc/passwd")?;
        passwd_entries(text)
            .find(|e| e.name == name)
            .map(|e| (e.uid, e.gid))
            .ok_or_else(|| UserError::NoSuchUser(name.to_string()))
    };

    let parts: Vec<&str> = user.split(':').collect();
    let (uid, gid) = match parts.as_slice() {
        [""] => (0, 0),
        [one] => match numeric(one) {
            Some(uid) => {
                let gid = passwd
                    .and_then(|text| passwd_entries(text).find(|e| e.uid == uid))
                    .map_or(0, |e| e.gid);
                (uid, gid)
            }
            None => by_name(one)?,
        },
        [u, g] => {
            let uid = match (u.is_empty(), numeric(u)) {
                (true, _) => 0,
                (false, Some(uid)) => uid,
                (false, None) => by_name(u)?.0,
            };
            let gid = match (g.is_empty(), numeric(g)) {
                (true, _) => 0,
                (false, Some(gid)) => gid,
                (false, None) => {
                    let text = need(group, g, "/etc/group")?;
                    group_entries(text)
                        .find(|e| e.name == *g)
                        .map(|e| e.gid)
                        .ok_or_else(|| UserError::NoSuchGroup(g.to_string()))?
                }
            };
            (uid, gid)
        }
        _ => return Err(UserError::Invalid(user.to_string())),
    };

    let member: Option<&str> = if user.is_empty() {
        Some("root")
    } else {
        passwd.and_then(|text| passwd_entries(text).find(|e| e.uid == uid).map(|e| e.name))
    };
    let mut additional_gids: Vec<u32> = match (member, group) {
        (Some(name), Some(text)) => group_entries(text)
            .filter(|g| g.name != name && g.members.contains(&name))
            .map(|g| g.gid)
            .collect(),
        _ => Vec::new(),
    };
    if !additional_gids.contains(&gid) {
        additional_gids.insert(0, gid);
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

/// What the command line adds to the image's defaults.
#[derive(Debug, Clone, Default)]
pub struct SpecOptions {
    /// The namespace and ID give the cgroup path, `/<namespace>/<id>`.
    pub namespace: String,
    pub id: String,
    /// Replaces the image's Entrypoint and Cmd both (as ctr does) when not
    /// empty.
    pub args: Vec<String>,
    pub terminal: bool,
    /// `KEY=value` entries; one whose key the image sets replaces it in
    /// place, others are appended; entries without `=` are ignored.
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub hostname: Option<String>,
    pub read_only: bool,
    /// Share the host's network namespace, hosts and resolv.conf.
    pub net_host: bool,
    /// The host's name, given to a `net_host` container as `HOSTNAME`.
    pub host_name: String,
    /// Added after the default mounts, in order.
    pub mounts: Vec<Mount>,
    pub cpu_shares: Option<u64>,
    pub annotations: BTreeMap<String, String>,
}

impl SpecOptions {
    /// Options for `id` in `namespace` with ctr run's defaults.
    pub fn new(namespace: &str, id: &str) -> Self {
        SpecOptions {
            namespace: namespace.to_string(),
            id: id.to_string(),
            cpu_shares: Some(DEFAULT_CPU_SHARES),
            host_name: nix::unistd::gethostname()
                .map(|name| name.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ..SpecOptions::default()
        }
    }
}

/// Builds the spec for a container from its image's config, the image's
/// account files (for the user) and the command line's options.
pub fn build(image: &ImageConfig, accounts: &AccountFiles, opts: &SpecOptions) -> anyhow::Result<Spec> {
    let user = resolve_user(&image.user, accounts)?;

    let args: Vec<String> = if opts.args.is_empty() {
        image.entrypoint.iter().chain(&image.cmd).cloned().collect()
    } else {
        opts.args.clone()
    };
    if args.is_empty() {
        bail!("no command to run: the image has neither Entrypoint nor Cmd; give one after the container ID");
    }

    let mut env = if image.env.is_empty() {
        vec![DEFAULT_PATH_ENV.to_string()]
    } else {
        image.env.clone()
    };
    replace_or_append_env(&mut env, &opts.env);
    if opts.terminal {
        env.push("TERM=xterm".to_string());
    }
    if opts.net_host && !opts.host_name.is_empty() {
        replace_or_append_env(&mut env, &[format!("HOSTNAME={}", opts.host_name)]);
    }

    let cwd = opts
        .cwd
        .as_deref()
        .filter(|c| !c.is_empty())
        .or(Some(image.working_dir.as_str()).filter(|c| !c.is_empty()))
        .unwrap_or("/");

    let mut mounts = default_mounts();
    mounts.extend(opts.mounts.iter().cloned());
    if opts.net_host {
        for file in ["/etc/hosts", "/etc/resolv.conf"] {
            mounts.push(mount(file, "bind", file, &["rbind", "ro"]));
        }
    }

    let mut spec = Spec::default();
    spec.set_version(OCI_VERSION.to_string());
    spec.set_process(Some(process(user, args, env, cwd, opts.terminal)));
    spec.set_root(Some(root(opts.read_only)));
    spec.set_mounts(Some(mounts));
    spec.set_hostname(opts.hostname.clone().filter(|h| !h.is_empty()));
    spec.set_domainname(None);
    spec.set_hooks(None);
    spec.set_annotations(if opts.annotations.is_empty() {
        None
    } else {
        Some(opts.annotations.clone().into_iter().collect())
    });
    spec.set_linux(Some(linux(opts)?));
    spec.set_solaris(None);
    spec.set_windows(None);
    spec.set_vm(None);
    spec.set_zos(None);
    Ok(spec)
}

/// ctr's rule for overriding an environment: a `KEY=value` whose key is
/// already set replaces that entry (the last one with the key) in place, a
/// new key is appended, an entry without `=` changes nothing.
pub fn replace_or_append_env(env: &mut Vec<String>, overrides: &[String]) {
    let mut index: HashMap<String, usize> = HashMap::new();
    for (i, entry) in env.iter().enumerate() {
        let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
        index.insert(key.to_string(), i);
    }
    for entry in overrides {
        let Some((key, _)) = entry.split_once('=') else {
            continue;
        };
        match index.get(key) {
            Some(&i) => env[i] = entry.clone(),
            None => env.push(entry.clone()),
        }
    }
}

fn process(user: ResolvedUser, args: Vec<String>, env: Vec<String>, cwd: &str, terminal: bool) -> Process {
    let mut spec_user = User::default();
    spec_user.set_uid(user.uid);
    spec_user.set_gid(user.gid);
    spec_user.set_additional_gids(Some(user.additional_gids));
    spec_user.set_umask(None);
    spec_user.set_username(None);

    let caps: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);

    let nofile = PosixRlimitBuilder::default()
        .typ(PosixRlimitType::RlimitNofile)
        .hard(1024u64)
        .soft(1024u64)
        .build()
        .expect("every field is set");

    let mut p = Process::default();
    p.set_terminal(terminal.then_some(true));
    p.set_console_size(None);
    p.set_user(spec_user);
    p.set_args(Some(args));
    p.set_command_line(None);
    p.set_env(Some(env));
    p.set_cwd(PathBuf::from(cwd));
    p.set_capabilities(Some(capabilities));
    p.set_rlimits(Some(vec![nofile]));
    p.set_no_new_privileges(Some(true));
    p.set_apparmor_profile(None);
    p.set_oom_score_adj(None);
    p.set_selinux_label(None);
    p.set_io_priority(None);
    p.set_scheduler(None);
    p.set_exec_cpu_affinity(None);
    p
}

fn root(read_only: bool) -> Root {
    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(read_only.then_some(true));
    root
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(destination));
    m.set_typ(Some(kind.to_string()));
    m.set_source(Some(PathBuf::from(source)));
    m.set_options(Some(options.iter().map(|o| o.to_string()).collect()));
    m
}

fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
        mount(
            "/run",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
    ]
}

fn device_rule(allow: bool, typ: Option<LinuxDeviceType>, major: Option<i64>, minor: Option<i64>) -> LinuxDeviceCgroup {
    let mut rule = LinuxDeviceCgroup::default();
    rule.set_allow(allow);
    rule.set_typ(typ);
    rule.set_major(major);
    rule.set_minor(minor);
    rule.set_access(Some("rwm".to_string()));
    rule
}

fn linux(opts: &SpecOptions) -> anyhow::Result<oci_spec::runtime::Linux> {
    let mut devices = vec![device_rule(false, None, None, None)];
    devices.extend(
        ALLOWED_CHAR_DEVICES
            .iter()
            .map(|&(major, minor)| device_rule(true, Some(LinuxDeviceType::C), Some(major), minor)),
    );
    let mut resources = LinuxResources::default();
    resources.set_devices(Some(devices));
    if let Some(shares) = opts.cpu_shares {
        let mut cpu = LinuxCpu::default();
        cpu.set_shares(Some(shares));
        resources.set_cpu(Some(cpu));
    }

    let mut kinds = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ];
    if !opts.net_host {
        kinds.push(LinuxNamespaceType::Network);
    }
    let namespaces: Vec<LinuxNamespace> = kinds
        .into_iter()
        .map(|kind| {
            let mut ns = LinuxNamespace::default();
            ns.set_typ(kind);
            ns
        })
        .collect();

    let linux = LinuxBuilder::default()
        .resources(resources)
        .cgroups_path(PathBuf::from(format!("/{}/{}", opts.namespace, opts.id)))
        .namespaces(namespaces)
        .masked_paths(MASKED_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        .readonly_paths(READONLY_PATHS.iter().map(|p| p.to_string()).collect::<Vec<_>>())
        .build()
        .context("building the spec's linux section")?;
    Ok(linux)
}

/// Parses a `--mount` value, ctr's syntax:
/// `type=bind,src=/host,dst=/in/container,options=rbind:ro`
/// (`source`/`src`, `destination`/`dst`; options separated by `:`).
pub fn parse_mount(text: &str) -> anyhow::Result<Mount> {
    let mut m = Mount::default();
    let mut destination = None;
    for field in text.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            bail!("invalid mount {text:?}: {field:?} is not key=value");
        };
        match key {
            "type" => {
                m.set_typ(Some(value.to_string()));
            }
            "source" | "src" => {
                m.set_source(Some(PathBuf::from(value)));
            }
            "destination" | "dst" => destination = Some(value.to_string()),
            "options" => {
                m.set_options(Some(
                    value.split(':').filter(|o| !o.is_empty()).map(str::to_string).collect(),
                ));
            }
            _ => bail!("invalid mount {text:?}: unknown key {key:?} (known: type, src, dst, options)"),
        }
    }
    match destination {
        Some(d) if !d.is_empty() => m.set_destination(PathBuf::from(d)),
        _ => bail!("invalid mount {text:?}: no destination (dst=...)"),
    };
    Ok(m)
}

/// The labels a container gets: the image's, its stop signal, then the
/// user's.
pub fn container_labels(image: &ImageConfig, user: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut labels: HashMap<String, String> = image.labels.clone().into_iter().collect();
    let stop = if image.stop_signal.is_empty() {
        DEFAULT_STOP_SIGNAL
    } else {
        image.stop_signal.as_str()
    };
    labels.insert(STOP_SIGNAL_LABEL.to_string(), stop.to_string());
    labels.extend(user.clone());
    labels
}

/// The spec as the JSON bytes of a container's spec Any. The output is
/// deterministic: object keys sorted, capability lists in ctr's order
/// (oci-spec keeps capabilities in hash sets).
pub fn to_json(spec: &Spec) -> anyhow::Result<Vec<u8>> {
    let mut value = serde_json::to_value(spec).context("encoding the spec")?;
    if let Some(caps) = value
        .pointer_mut("/process/capabilities")
        .and_then(|v| v.as_object_mut())
    {
        for list in caps.values_mut() {
            if let Some(items) = list.as_array_mut() {
                items.sort_by_key(|item| capability_rank(item.as_str().unwrap_or_default()));
            }
        }
    }
    Ok(serde_json::to_vec(&value)?)
}

/// Position of a capability in ctr's default list; others after them, by
/// name.
fn capability_rank(name: &str) -> (usize, String) {
    let known = DEFAULT_CAPABILITIES
        .iter()
        .position(|c| serde_json::to_value(c).ok().and_then(|v| v.as_str().map(|s| s == name)) == Some(true));
    (known.unwrap_or(DEFAULT_CAPABILITIES.len()), name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
                          alice:x:1234:2345:Alice:/home/alice:/bin/sh\n\
                          bob:x:1500:1600::/:/bin/sh\n\
                          carol:x:1700:2345::/:/bin/sh\n\
                          dave:x:1800:1800::/:/bin/sh\n";
    const GROUP: &str = "root:x:0:\n\
                         wheelr:x:11:root\n\
                         staff:x:2345:alice\n\
                         extra:x:3000:alice,dave\n\
                         wheel:x:10:alice,bob\n\
                         dave:x:1800:dave\n\
                         staff2:x:2345:dave\n";

    fn files(passwd: Option<&str>, group: Option<&str>) -> AccountFiles {
        AccountFiles {
            passwd: passwd.map(str::to_string),
            group: group.map(str::to_string),
        }
    }

    fn ids(user: &str, f: &AccountFiles) -> (u32, u32, Vec<u32>) {
        let u = resolve_user(user, f).unwrap_or_else(|e| panic!("{user:?}: {e}"));
        (u.uid, u.gid, u.additional_gids)
    }

    /// Every case here was run through `ctr containers create` (containerd
    /// 1.6.20) with these files in the image; the expected ids are what ctr
    /// put in the spec.
    #[test]
    fn user_resolution_matches_ctr() {
        let both = files(Some(PASSWD), Some(GROUP));
        assert_eq!(ids("", &both), (0, 0, vec![0, 11]));
        assert_eq!(ids("root", &both), (0, 0, vec![0, 11]));
        assert_eq!(ids("0:0", &both), (0, 0, vec![0, 11]));
        assert_eq!(ids("bob", &both), (1500, 1600, vec![1600, 10]));
        assert_eq!(ids("1500", &both), (1500, 1600, vec![1600, 10]));
        assert_eq!(ids("carol", &both), (1700, 2345, vec![2345]));
        assert_eq!(ids("bob:extra", &both), (1500, 3000, vec![3000, 10]));
        // A group named like the user is not a supplementary group.
        assert_eq!(ids("dave", &both), (1800, 1800, vec![1800, 3000, 2345]));
        assert_eq!(ids("1800:1800", &both), (1800, 1800, vec![1800, 3000, 2345]));
        // The primary gid stays where the member list has it.
        assert_eq!(ids("alice:3000", &both), (1234, 3000, vec![2345, 3000, 10]));
        assert_eq!(ids("1234:wheel", &both), (1234, 10, vec![2345, 3000, 10]));
        assert_eq!(ids("alice:9999", &both), (1234, 9999, vec![9999, 2345, 3000, 10]));
        // A uid nobody has: group 0, no supplementary groups.
        assert_eq!(ids("4242", &both), (4242, 0, vec![0]));
        assert_eq!(ids("4242:staff", &both), (4242, 2345, vec![2345]));
        // Empty halves mean 0.
        assert_eq!(ids("alice:", &both), (1234, 0, vec![0, 2345, 3000, 10]));
        assert_eq!(ids(":10", &both), (0, 10, vec![10, 11]));
    }

    #[test]
    fn user_resolution_without_account_files_matches_ctr() {
        let none = files(None, None);
        assert_eq!(ids("", &none), (0, 0, vec![0]));
        assert_eq!(ids("0", &none), (0, 0, vec![0]));
        assert_eq!(ids("4242", &none), (4242, 0, vec![0]));
        assert_eq!(ids("4242:4343", &none), (4242, 4343, vec![4343]));
        assert_eq!(ids("1234:", &none), (1234, 0, vec![0]));
        assert_eq!(ids("1000:1000", &none), (1000, 1000, vec![1000]));
        assert_eq!(ids("1234", &files(Some(PASSWD), None)), (1234, 2345, vec![2345]));
        assert_eq!(ids("alice", &files(Some(PASSWD), None)), (1234, 2345, vec![2345]));
        assert_eq!(ids("1234:staff", &files(None, Some(GROUP))), (1234, 2345, vec![2345]));
    }

    #[test]
    fn unresolvable_users_are_errors() {
        let both = files(Some(PASSWD), Some(GROUP));
        assert_eq!(
            resolve_user("nosuch", &both),
            Err(UserError::NoSuchUser("nosuch".into()))
        );
        assert_eq!(
            resolve_user("nosuch:0", &both),
            Err(UserError::NoSuchUser("nosuch".into()))
        );
        assert_eq!(
            resolve_user("bob:nosuch", &both),
            Err(UserError::NoSuchGroup("nosuch".into()))
        );
        assert!(matches!(
            resolve_user("root", &files(None, None)),
            Err(UserError::MissingFile {
                file: "/etc/passwd",
                ..
            })
        ));
        assert!(matches!(
            resolve_user("1234:staff", &files(Some(PASSWD), None)),
            Err(UserError::MissingFile { file: "/etc/group", .. })
        ));
        assert_eq!(resolve_user("a:b:c", &both), Err(UserError::Invalid("a:b:c".into())));
    }

    #[test]
    fn malformed_account_lines_are_skipped() {
        let f = files(
            Some("\n# comment\nbroken\nx:x:notanumber:1\nalice:x:1234:2345\n"),
            Some("g::10:alice\nbad:x:zz:alice\n"),
        );
        assert_eq!(ids("alice", &f), (1234, 2345, vec![2345, 10]));
    }

    fn fixture(name: &str) -> Value {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("src/run/testdata")
            .join(name);
        serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
    }

    fn json(spec: &Spec) -> Value {
        serde_json::from_slice(&to_json(spec).unwrap()).unwrap()
    }

    /// `ctr run -d IMAGE r5 sleep 100` in namespace obs, for an image whose
    /// config sets only `Cmd: ["sh"]`: the bundle's config.json.
    #[test]
    fn default_spec_matches_ctr_run() {
        let image =
            ImageConfig::from_json(br#"{"architecture":"amd64","os":"linux","config":{"Cmd":["sh"]}}"#).unwrap();
        let mut opts = SpecOptions::new("obs", "r5");
        opts.args = vec!["sleep".into(), "100".into()];
        let spec = build(&image, &AccountFiles::default(), &opts).unwrap();
        assert_eq!(json(&spec), fixture("ctr-run-default.json"));
    }

    /// `ctr containers create -t --env X=1 --env PATH=/x --cwd /tmp
    /// --read-only --net-host --label l1=v1 --mount
    /// type=bind,src=/tmp,dst=/mnt,options=rbind:ro IMAGE c-opts echo hi` on a
    /// host named "vm", for an image with Entrypoint, Cmd, Env, User and
    /// WorkingDir.
    #[test]
    fn options_spec_matches_ctr() {
        let image = ImageConfig::from_json(
            br#"{"config":{"Env":["PATH=/bin:/usr/bin","FOO=bar"],"Entrypoint":["/bin/sh","-c"],
                "Cmd":["id; pwd; env"],"WorkingDir":"/work","User":"alice","Labels":{"a":"b"}}}"#,
        )
        .unwrap();
        let accounts = files(
            Some("root:x:0:0:root:/root:/bin/sh\nalice:x:1234:2345:Alice:/home/alice:/bin/sh\n"),
            Some("root:x:0:\nstaff:x:2345:alice\nextra:x:3000:alice\nwheel:x:10:alice,bob\n"),
        );
        let opts = SpecOptions {
            namespace: "obs".into(),
            id: "c-opts".into(),
            args: vec!["echo".into(), "hi".into()],
            terminal: true,
            env: vec!["X=1".into(), "PATH=/x".into()],
            cwd: Some("/tmp".into()),
            read_only: true,
            net_host: true,
            host_name: "vm".into(),
            mounts: vec![parse_mount("type=bind,src=/tmp,dst=/mnt,options=rbind:ro").unwrap()],
            cpu_shares: None,
            annotations: [("l1".to_string(), "v1".to_string())].into(),
            ..SpecOptions::default()
        };
        let spec = build(&image, &accounts, &opts).unwrap();
        assert_eq!(json(&spec), fixture("ctr-create-options.json"));
        let labels = container_labels(&image, &opts.annotations);
        assert_eq!(
            labels,
            HashMap::from([
                ("a".to_string(), "b".to_string()),
                (STOP_SIGNAL_LABEL.to_string(), "SIGTERM".to_string()),
                ("l1".to_string(), "v1".to_string()),
            ])
        );
    }

    #[test]
    fn image_command_env_user_and_workdir_reach_the_process() {
        let image = ImageConfig::from_json(
            br#"{"config":{"Env":["A=1","PATH=/p"],"Entrypoint":["/bin/app"],"Cmd":["--flag"],
                "WorkingDir":"/srv","User":"bob","StopSignal":"SIGINT","Labels":null}}"#,
        )
        .unwrap();
        let spec = build(&image, &files(Some(PASSWD), Some(GROUP)), &SpecOptions::new("ns", "c1")).unwrap();
        let p = spec.process().as_ref().unwrap();
        assert_eq!(p.args().as_deref().unwrap(), ["/bin/app", "--flag"]);
        assert_eq!(p.env().as_deref().unwrap(), ["A=1", "PATH=/p"]);
        assert_eq!(p.cwd(), Path::new("/srv"));
        assert_eq!(
            (p.user().uid(), p.user().gid(), p.user().additional_gids().clone()),
            (1500, 1600, Some(vec![1600, 10]))
        );
        assert_eq!(p.terminal(), None);
        let linux = spec.linux().as_ref().unwrap();
        assert_eq!(linux.cgroups_path().as_deref(), Some(Path::new("/ns/c1")));
        let labels = container_labels(&image, &BTreeMap::new());
        assert_eq!(labels[STOP_SIGNAL_LABEL], "SIGINT");
    }

    #[test]
    fn args_replace_entrypoint_and_cmd() {
        let image = ImageConfig {
            entrypoint: vec!["/bin/sh".into(), "-c".into()],
            cmd: vec!["true".into()],
            ..ImageConfig::default()
        };
        let mut opts = SpecOptions::new("default", "x");
        opts.args = vec!["echo".into(), "hi".into()];
        let spec = build(&image, &AccountFiles::default(), &opts).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().args().as_deref().unwrap(),
            ["echo", "hi"]
        );
    }

    #[test]
    fn no_command_at_all_is_an_error() {
        let err = build(
            &ImageConfig::default(),
            &AccountFiles::default(),
            &SpecOptions::new("n", "x"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("no command"), "{err}");
    }

    #[test]
    fn image_user_errors_stop_the_build() {
        let image = ImageConfig {
            user: "nobody".into(),
            cmd: vec!["true".into()],
            ..ImageConfig::default()
        };
        let err = build(&image, &files(Some(PASSWD), None), &SpecOptions::new("n", "x")).unwrap_err();
        assert_eq!(err.to_string(), "user \"nobody\" is not in the image's /etc/passwd");
    }

    /// Observed with ctr: duplicates in the image stay, an override replaces
    /// the last entry with its key, new keys are appended even when repeated,
    /// key-only entries are ignored, TERM is appended for a terminal and
    /// HOSTNAME replaces in place for the host network.
    #[test]
    fn environment_merging_matches_ctr() {
        let mut env = vec!["FOO=bar".to_string(), "FOO=baz".into(), "PATH=/p".into()];
        replace_or_append_env(&mut env, &["FOO=q".into(), "X".into(), "A=1".into(), "A=2".into()]);
        assert_eq!(env, ["FOO=bar", "FOO=q", "PATH=/p", "A=1", "A=2"]);

        let mut opts = SpecOptions::new("n", "x");
        opts.args = vec!["sh".into()];
        opts.terminal = true;
        opts.net_host = true;
        opts.host_name = "vm".into();
        opts.env = vec!["HOSTNAME=zz".into(), "TERM=vt100".into()];
        let spec = build(&ImageConfig::default(), &AccountFiles::default(), &opts).unwrap();
        assert_eq!(
            spec.process().as_ref().unwrap().env().as_deref().unwrap(),
            [DEFAULT_PATH_ENV, "HOSTNAME=vm", "TERM=vt100", "TERM=xterm"]
        );
    }

    #[test]
    fn hostname_and_cwd_options() {
        let mut opts = SpecOptions::new("n", "x");
        opts.args = vec!["sh".into()];
        opts.hostname = Some("box".into());
        opts.cwd = Some("/data".into());
        let image = ImageConfig {
            working_dir: "/ignored".into(),
            ..ImageConfig::default()
        };
        let spec = build(&image, &AccountFiles::default(), &opts).unwrap();
        assert_eq!(spec.hostname().as_deref(), Some("box"));
        assert_eq!(spec.process().as_ref().unwrap().cwd(), Path::new("/data"));
        let json = json(&spec);
        assert_eq!(json["linux"]["resources"]["cpu"]["shares"], 1024);
        assert!(json.get("annotations").is_none());
    }

    #[test]
    fn mount_syntax() {
        let m = parse_mount("type=tmpfs,source=tmpfs,destination=/t").unwrap();
        assert_eq!(m.destination(), Path::new("/t"));
        assert_eq!(m.typ().as_deref(), Some("tmpfs"));
        assert_eq!(m.options(), &None);
        let m = parse_mount("type=bind,src=/a,dst=/b,options=rbind:ro").unwrap();
        assert_eq!(m.options().as_deref().unwrap(), ["rbind", "ro"]);
        assert!(parse_mount("type=bind,src=/a").is_err());
        assert!(parse_mount("type=bind,bogus=1,dst=/b").is_err());
        assert!(parse_mount("dst").is_err());
    }

    #[test]
    fn spec_json_is_deterministic() {
        let mut opts = SpecOptions::new("n", "x");
        opts.args = vec!["sh".into()];
        opts.annotations = (0..20).map(|i| (format!("k{i}"), "v".to_string())).collect();
        let spec = build(&ImageConfig::default(), &AccountFiles::default(), &opts).unwrap();
        let first = to_json(&spec).unwrap();
        for _ in 0..5 {
            let again = build(&ImageConfig::default(), &AccountFiles::default(), &opts).unwrap();
            assert_eq!(to_json(&again).unwrap(), first);
        }
        let text = String::from_utf8(first).unwrap();
        assert!(
            text.contains(r#""bounding":["CAP_CHOWN","CAP_DAC_OVERRIDE","#),
            "{text}"
        );
    }

    #[test]
    fn image_config_parsing_is_lenient() {
        assert_eq!(ImageConfig::from_json(b"{}").unwrap(), ImageConfig::default());
        let c = ImageConfig::from_json(br#"{"config":{"Env":null,"Cmd":null,"User":"","Volumes":{"/v":{}}}}"#).unwrap();
        assert_eq!(c, ImageConfig::default());
        assert!(ImageConfig::from_json(b"not json").is_err());
    }

    #[test]
    fn account_files_do_not_follow_links_out_of_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("rootfs");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("data")).unwrap();
        fs::write(root.join("data/passwd"), "inside:x:7:7::/:/bin/sh\n").unwrap();
        // Absolute and climbing links both land inside the root.
        std::os::unix::fs::symlink("/data/passwd", root.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc/hostname", root.join("etc/group")).unwrap();
        let files = AccountFiles::read_from(&root).unwrap();
        assert_eq!(files.passwd.as_deref(), Some("inside:x:7:7::/:/bin/sh\n"));
        assert_eq!(files.group, None);

        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        assert!(read_in_root(&root, "loop").is_err());
        assert_eq!(
            AccountFiles::read_from(dir.path().join("absent").as_path())
                .unwrap()
                .passwd,
            None
        );
    }
}
