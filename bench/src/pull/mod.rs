//! `pull`: the ~100 MiB multi-layer fixture image pulled from a local
//! registry by `corten images pull`, beside `ctr images pull` on containerd
//! 1.6, each on a freshly started daemon.

mod measure;
mod report;
mod tools;

use std::{io::IsTerminal as _, path::PathBuf, time::Instant};

use corten_tests::registry::Registry;

use crate::{daemon::DaemonArgs, machine::Watch, Format};

/// The repository and tag the image is pushed as.
const NAME: &str = "bench/multilayer";
const TAG: &str = "v1";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub daemons: DaemonArgs,
    /// Rough size of the image's data layer (four layers in all)
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub image_mib: u64,
    /// Pulls per daemon, each on a freshly started daemon
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Directory on the disk the daemons' roots go under (in a temporary
    /// directory). RAM-backed filesystems are refused [default: the first
    /// disk-backed of /var/tmp, /tmp]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// `corten` client [default: `corten` next to this executable]
    #[arg(long, value_name = "PATH")]
    pub corten: Option<PathBuf>,
    /// `ctr` from containerd 1.6: pulls on the reference, checks on both
    #[arg(long, value_name = "PATH", default_value = tools::DEFAULT_CTR)]
    pub ctr: PathBuf,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    // Every tool is checked before the image is built.
    let subjects = args.daemons.subjects()?;
    let tools = tools::Tools::locate(args.corten.as_deref(), &args.ctr)?;
    let plan = measure::Plan {
        image_mib: args.image_mib,
        runs: args.runs,
    };
    // A daemon's root holds the blobs and their unpacked tree; one at a time.
    // One daemon root with the image pulled and unpacked at a time, and headroom.
    let workdir = crate::workdir::Workdir::create(
        args.dir.as_deref(),
        3 * (args.image_mib << 20) + (256 << 20),
        "pull",
        "--image-mib",
    )?;
    let progress = std::io::stderr().is_terminal();
    if progress {
        eprintln!("pull: starting the registry and pushing the image (not timed)");
    }
    let registry = Registry::start();
    let image = registry.push_multilayer(NAME, TAG, args.image_mib as usize);

    let watch = Watch::start();
    let registry_cpu = RegistryCpu::start();
    let measured = measure::run(&plan, &subjects, &tools, &workdir, &image)?;
    // The registry is reaped only after the watch ends: reaping it earlier
    // would count its whole life (the push too) as this process's CPU.
    let registry_share = registry_cpu.finish(machine_cpus());
    let machine = watch.finish();
    drop(registry);
    let context = report::Context {
        plan: &plan,
        machine,
        filesystem: workdir.filesystem.clone(),
        subjects: &subjects,
        tools: &tools,
        image: &image,
        registry_share,
    };
    let report = report::Report::new(context, measured);
    match args.format {
        Format::Table => print!("{}", report.table()),
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    Ok(())
}

fn machine_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The registry's CPU while measuring, as a share of all CPUs: the shared
/// machine watch counts it as other work, since it is reaped only at the end.
/// `None` where /proc does not show it.
struct RegistryCpu {
    pid: Option<u32>,
    ticks: Option<u64>,
    started: Instant,
}

impl RegistryCpu {
    fn start() -> RegistryCpu {
        let pid = registry_pid();
        RegistryCpu {
            ticks: pid.and_then(process_ticks),
            pid,
            started: Instant::now(),
        }
    }

    fn finish(self, cpus: usize) -> Option<f64> {
        let used = self.pid.and_then(process_ticks)?.checked_sub(self.ticks?)?;
        // /proc counts in USER_HZ, 100 per second on Linux.
        let available = self.started.elapsed().as_secs_f64() * 100.0 * cpus as f64;
        (available > 0.0).then(|| used as f64 / available)
    }
}

/// This process's child named `docker-registry`.
fn registry_pid() -> Option<u32> {
    let tasks = std::fs::read_dir("/proc/self/task").ok()?;
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|children| {
            children
                .split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "docker-registry"))
}

/// utime + stime of a process, in USER_HZ ticks.
fn process_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces; fields after its last ')' start at 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields.get(11..13)?.iter().map(|f| f.parse::<u64>().ok()).sum()
}
