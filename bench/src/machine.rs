//! What else the machine was doing, so a reader can tell a quiet run from
//! one that shared its CPUs with a build.

use std::time::Duration;

use serde::Serialize;

/// Long enough to catch a compiler between its bursts, short next to a run.
const SAMPLE: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpus: usize,
    /// Share of all CPU time that other work used just before measuring,
    /// 0 to 1. Taken from /proc/stat rather than the load average, which in
    /// a container can count tasks of the whole host. `None` where /proc
    /// cannot be read, which does not invalidate the numbers.
    pub busy_before: Option<f64>,
    /// The same while measuring, less this process and the daemons it ran.
    pub busy_during: Option<f64>,
}

/// Started before measuring; `finish` afterwards.
pub struct Watch {
    cpus: usize,
    busy_before: Option<f64>,
    start: Option<(CpuTimes, u64)>,
}

impl Watch {
    /// Blocks for a short sample of CPU use.
    pub fn start() -> Watch {
        let before = read_cpu_times();
        std::thread::sleep(SAMPLE);
        let after = read_cpu_times();
        Watch {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            busy_before: before.zip(after).and_then(|(b, a)| a.busy_since(&b)),
            start: after.zip(read_own_ticks()),
        }
    }

    /// Only daemons that were waited for count as this process's own, which
    /// every run does before the next one starts.
    pub fn finish(self) -> Machine {
        let busy_during =
            self.start
                .zip(read_cpu_times().zip(read_own_ticks()))
                .and_then(|((cpu0, own0), (cpu1, own1))| {
                    let own = own1.checked_sub(own0)?;
                    let others = CpuTimes {
                        busy: cpu1.busy.checked_sub(own)?,
                        total: cpu1.total,
                    };
                    Some(others.busy_since(&cpu0)?.max(0.0))
                });
        Machine {
            cpus: self.cpus,
            busy_before: self.busy_before,
            busy_during,
        }
    }
}

impl Machine {
    /// A note when other work held more than a quarter of the CPUs: spreads
    /// widen and single runs mislead, though alternating the daemons keeps
    /// the ratios usable.
    pub fn busy_note(&self) -> Option<String> {
        let busiest = self.busy_before.into_iter().chain(self.busy_during).reduce(f64::max)?;
        (busiest > 0.25).then(|| {
            format!(
                "other work used up to {:.0}% of the {} CPUs before or while measuring: expect \
                 wide min-max spreads; rerun on a quiet machine for raw numbers",
                busiest * 100.0,
                self.cpus
            )
        })
    }
}

/// Aggregate jiffies from the first line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq)]
struct CpuTimes {
    busy: u64,
    total: u64,
}

impl CpuTimes {
    fn busy_since(&self, earlier: &CpuTimes) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total).filter(|&t| t > 0)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        Some(busy as f64 / total as f64)
    }
}

/// CPU time used up to one moment: every CPU's busy time together, and one
/// process's own (its threads, not its children), in /proc's ticks.
#[derive(Debug, Clone, Copy)]
pub struct CpuSample {
    all_busy: u64,
    process: u64,
}

impl CpuSample {
    pub fn take(pid: u32) -> anyhow::Result<CpuSample> {
        use anyhow::Context as _;
        let all_busy = read_cpu_times().context("read /proc/stat")?.busy;
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
        let process = parse_process_ticks(&stat).with_context(|| format!("parse {path}"))?;
        Ok(CpuSample { all_busy, process })
    }

    /// Milliseconds of CPU since `earlier`: `(every CPU's busy time, the
    /// process's own)`.
    pub fn since(&self, earlier: &CpuSample) -> (f64, f64) {
        let ms_per_tick = 1e3 / ticks_per_second();
        let ms = |now: u64, then: u64| now.saturating_sub(then) as f64 * ms_per_tick;
        (ms(self.all_busy, earlier.all_busy), ms(self.process, earlier.process))
    }
}

/// The unit of /proc's CPU times (USER_HZ).
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) if hz > 0 => hz as f64,
        _ => 100.0,
    }
}

fn read_cpu_times() -> Option<CpuTimes> {
    parse_cpu_line(std::fs::read_to_string("/proc/stat").ok()?.lines().next()?)
}

/// `cpu user nice system idle iowait irq softirq steal ...`; guest time is
/// already inside user, so the columns after steal are not added.
fn parse_cpu_line(line: &str) -> Option<CpuTimes> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let values: Vec<u64> = fields.take(8).map(str::parse).collect::<Result<_, _>>().ok()?;
    let [user, nice, system, idle, iowait, irq, softirq, steal] = values.try_into().ok()?;
    let busy = user + nice + system + irq + softirq + steal;
    Some(CpuTimes {
        busy,
        total: busy + idle + iowait,
    })
}

/// User and system ticks of this process and its reaped children, from
/// /proc/self/stat (fields 14 to 17), in the same unit as /proc/stat.
fn read_own_ticks() -> Option<u64> {
    parse_own_ticks(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

fn parse_own_ticks(stat: &str) -> Option<u64> {
    stat_ticks(stat, 11..15)
}

/// User and system ticks of a process alone (fields 14 and 15).
fn parse_process_ticks(stat: &str) -> Option<u64> {
    stat_ticks(stat, 11..13)
}

fn stat_ticks(stat: &str, fields_after_name: std::ops::Range<usize>) -> Option<u64> {
    // The command name may contain spaces and parentheses; the fields
    // after its last ')' start at field 3.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields
        .get(fields_after_name)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::{parse_cpu_line, parse_own_ticks, parse_process_ticks, CpuTimes, Machine};

    #[test]
    fn parses_the_aggregate_line() {
        let t = parse_cpu_line("cpu  100 1 20 300 5 2 3 4 0 0").unwrap();
        assert_eq!(t, CpuTimes { busy: 130, total: 435 });
    }

    #[test]
    fn refuses_a_per_cpu_line() {
        assert!(parse_cpu_line("cpu0 1 2 3 4 5 6 7 8").is_none());
    }

    #[test]
    fn busy_share_is_relative_to_the_interval() {
        let a = CpuTimes { busy: 100, total: 1000 };
        let b = CpuTimes { busy: 150, total: 1200 };
        assert_eq!(b.busy_since(&a), Some(0.25));
    }

    #[test]
    fn quiet_machines_get_no_note() {
        let quiet = Machine {
            cpus: 2,
            busy_before: Some(0.05),
            busy_during: Some(0.1),
        };
        assert!(quiet.busy_note().is_none());
        let busy_during = Machine {
            busy_during: Some(0.9),
            ..quiet.clone()
        };
        assert!(busy_during.busy_note().is_some());
    }

    #[test]
    fn own_ticks_add_self_and_children() {
        let stat = "42 (a) b) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 20 10 20 0 1 0 5 0 0";
        assert_eq!(parse_own_ticks(stat), Some(40));
        assert_eq!(parse_process_ticks(stat), Some(10));
    }
}
