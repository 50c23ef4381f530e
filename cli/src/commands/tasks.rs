//! `corten tasks ...`: the running side of containers. List tasks and
//! their processes, run more processes in them, signal, pause, resume and
//! remove them, and show their cgroup metrics.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use corten_api::{
    containerd::{
        services::tasks::v1::{
            DeleteProcessRequest, DeleteTaskRequest, ExecProcessRequest, GetRequest, KillRequest, ListPidsRequest,
            ListTasksRequest, MetricsRequest, PauseTaskRequest, ResumeTaskRequest, StartRequest, WaitRequest,
        },
        types::Metric,
        v1::types::{Process, Status},
    },
    io::containerd::cgroups,
};
use prost::Message as _;
use prost_types::Any;
use serde::Serialize;
use serde_json::Value;
use tonic::Code;

use super::{
    containers::{get_container, spec_json},
    leases::{self, rfc3339},
    Context,
};
use crate::{
    client::Connection,
    error::{self, rpc, AlreadyReported, ExitStatus},
    output::{self, Format, Table},
    run::{
        process::{parse_signal, start_and_wait},
        spec::{replace_or_append_env, STOP_SIGNAL_LABEL},
        stdio::{self, StdioPaths, FIFO_ROOT},
    },
};

/// The type URL of an exec'd process's spec: the `process` part of a
/// runtime spec, as JSON.
pub const PROCESS_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: TasksCommand,
}

#[derive(Debug, Subcommand)]
enum TasksCommand {
    /// List tasks
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the task IDs
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the processes of a task
    Ps {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Run another process in a running task
    Exec(ExecArgs),
    /// Send a signal to a task (its stop signal, SIGTERM unless the image says otherwise)
    Kill {
        /// Signal to send, by name or number
        #[arg(short, long)]
        signal: Option<String>,
        /// Send the signal to every process of the task
        #[arg(short, long, conflicts_with = "exec_id")]
        all: bool,
        /// Signal this exec'd process rather than the task's own
        #[arg(long, value_name = "EXEC_ID")]
        exec_id: Option<String>,
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Freeze every process of a task
    Pause {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Thaw a paused task
    Resume {
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Remove stopped tasks
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        /// Kill a task that is still running first
        #[arg(short, long)]
        force: bool,
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Show a task's cgroup metrics
    #[command(visible_alias = "metric")]
    Metrics {
        #[arg(value_name = "ID")]
        id: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct ExecArgs {
    /// ID of the new process (a random one when left out)
    #[arg(long, value_name = "EXEC_ID")]
    exec_id: Option<String>,
    /// Give the process a terminal
    #[arg(short = 't', long = "tty", conflicts_with = "detach")]
    tty: bool,
    /// Start the process and return at once (its output is discarded)
    #[arg(short, long)]
    detach: bool,
    /// Working directory of the process (the container's by default)
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// Set an environment variable (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Directory to make the stdio FIFOs in
    #[arg(long, value_name = "DIR", default_value = FIFO_ROOT)]
    fifo_dir: PathBuf,
    #[arg(value_name = "ID")]
    id: String,
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    args: Vec<String>,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        TasksCommand::Ls { quiet } => ls(ctx, quiet).await,
        TasksCommand::Ps { id } => ps(ctx, &id).await,
        TasksCommand::Exec(args) => exec(ctx, args).await,
        TasksCommand::Kill {
            signal,
            all,
            exec_id,
            id,
        } => kill(ctx, signal.as_deref(), all, exec_id.unwrap_or_default(), &id).await,
        TasksCommand::Pause { id } => {
            let conn = ctx.connect().await?;
            let request = PauseTaskRequest {
                container_id: id.clone(),
            };
            conn.tasks()
                .pause(request)
                .await
                .map_err(rpc)
                .with_context(|| format!("pausing task {id:?}"))?;
            Ok(())
        }
        TasksCommand::Resume { id } => {
            let conn = ctx.connect().await?;
            let request = ResumeTaskRequest {
                container_id: id.clone(),
            };
            conn.tasks()
                .resume(request)
                .await
                .map_err(rpc)
                .with_context(|| format!("resuming task {id:?}"))?;
            Ok(())
        }
        TasksCommand::Rm { force, ids } => rm(ctx, force, ids).await,
        TasksCommand::Metrics { id } => metrics(ctx, &id).await,
    }
}

/// A task's ID: containerd's List fills `id`, Get fills `container_id`.
fn task_id(p: &Process) -> &str {
    if p.id.is_empty() {
        &p.container_id
    } else {
        &p.id
    }
}

/// A task status as ctr prints it.
pub fn status_name(status: Status) -> &'static str {
    match status {
        Status::Unknown => "UNKNOWN",
        Status::Created => "CREATED",
        Status::Running => "RUNNING",
        Status::Stopped => "STOPPED",
        Status::Paused => "PAUSED",
        Status::Pausing => "PAUSING",
    }
}

// ---------------------------------------------------------------- ls, ps

#[derive(Debug, Serialize)]
struct TaskView {
    id: String,
    pid: u32,
    status: &'static str,
    #[serde(skip_serializing_if = "String::is_empty")]
    stdin: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    stdout: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    stderr: String,
    terminal: bool,
    exit_status: Option<u32>,
    exited_at: Option<String>,
}

impl From<Process> for TaskView {
    fn from(p: Process) -> Self {
        let status = p.status();
        let stopped = status == Status::Stopped;
        TaskView {
            id: task_id(&p).to_string(),
            pid: p.pid,
            status: status_name(status),
            stdin: p.stdin,
            stdout: p.stdout,
            stderr: p.stderr,
            terminal: p.terminal,
            exit_status: stopped.then_some(p.exit_status),
            exited_at: if stopped { rfc3339(p.exited_at.as_ref()) } else { None },
        }
    }
}

async fn ls(ctx: &Context, quiet: bool) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut tasks = conn
        .tasks()
        .list(ListTasksRequest { filter: String::new() })
        .await
        .map_err(rpc)
        .context("listing tasks")?
        .into_inner()
        .tasks;
    tasks.sort_by(|a, b| task_id(a).cmp(task_id(b)));
    if quiet {
        let text: String = tasks.iter().map(|t| format!("{}\n", task_id(t))).collect();
        return Ok(output::print(&text)?);
    }
    match ctx.format {
        Format::Json => output::print_json(&tasks.into_iter().map(TaskView::from).collect::<Vec<_>>()),
        Format::Table => Ok(task_table(&tasks).print()?),
    }
}

fn task_table(tasks: &[Process]) -> Table {
    let mut table = Table::new(&["TASK", "PID", "STATUS"]);
    for t in tasks {
        table.row([
            task_id(t).to_string(),
            t.pid.to_string(),
            status_name(t.status()).to_string(),
        ]);
    }
    table
}

/// The details a runc shim gives for each process of a task.
#[derive(Clone, PartialEq, prost::Message)]
struct ProcessDetails {
    #[prost(string, tag = "1")]
    exec_id: String,
}

/// The exec ID in a process's info, when the shim says.
fn exec_id_of(info: Option<&Any>) -> Option<String> {
    let info = info?;
    if !info.type_url.ends_with("ProcessDetails") {
        return None;
    }
    ProcessDetails::decode(info.value.as_slice())
        .ok()
        .map(|d| d.exec_id)
        .filter(|id| !id.is_empty())
}

#[derive(Debug, Serialize)]
struct PidView {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    exec_id: Option<String>,
}

async fn ps(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let processes = conn
        .tasks()
        .list_pids(ListPidsRequest {
            container_id: id.to_string(),
        })
        .await
        .map_err(rpc)
        .with_context(|| format!("listing the processes of task {id:?}"))?
        .into_inner()
        .processes;
    let views: Vec<PidView> = processes
        .iter()
        .map(|p| PidView {
            pid: p.pid,
            exec_id: exec_id_of(p.info.as_ref()),
        })
        .collect();
    match ctx.format {
        Format::Json => output::print_json(&views),
        Format::Table => {
            let mut table = Table::new(&["PID", "INFO"]);
            for v in &views {
                let info = v.exec_id.as_ref().map_or("-".to_string(), |e| format!("exec_id={e}"));
                table.row([v.pid.to_string(), info]);
            }
            Ok(table.print()?)
        }
    }
}

// ---------------------------------------------------------------- exec

/// The process spec an exec'd process gets: the container's own process
/// with the command, terminal, working directory and environment given.
fn exec_process(container_spec: &Value, args: &ExecArgs) -> anyhow::Result<Value> {
    let Some(process) = container_spec.get("process").and_then(Value::as_object) else {
        bail!("the container's spec has no process to start from");
    };
    let mut process = process.clone();
    process.insert("args".into(), Value::from(args.args.clone()));
    process.insert("terminal".into(), Value::Bool(args.tty));
    if let Some(cwd) = args.cwd.as_ref().filter(|c| !c.is_empty()) {
        process.insert("cwd".into(), Value::from(cwd.clone()));
    }
    if !args.env.is_empty() {
        let mut env: Vec<String> = process
            .get("env")
            .and_then(Value::as_array)
            .map(|list| list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        replace_or_append_env(&mut env, &args.env);
        process.insert("env".into(), Value::from(env));
    }
    Ok(Value::Object(process))
}

async fn exec(ctx: &Context, args: ExecArgs) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let id = args.id.clone();
    let container = get_container(&conn, &id).await?;
    let process = exec_process(&spec_json(&container)?, &args)?;
    let exec_id = args
        .exec_id
        .clone()
        .unwrap_or_else(|| format!("exec-{}", leases::random_id(std::time::SystemTime::now())));

    let (paths, mut copier) = if args.detach {
        (
            StdioPaths {
                terminal: args.tty,
                ..StdioPaths::default()
            },
            None,
        )
    } else {
        let (paths, copier) = stdio::create(&args.fifo_dir, &exec_id, args.tty, true)?;
        (paths, Some(copier))
    };
    let mut tasks = conn.tasks();
    let request = ExecProcessRequest {
        container_id: id.clone(),
        stdin: paths.stdin,
        stdout: paths.stdout,
        stderr: paths.stderr,
        terminal: paths.terminal,
        spec: Some(Any {
            type_url: PROCESS_TYPE_URL.to_string(),
            value: serde_json::to_vec(&process)?,
        }),
        exec_id: exec_id.clone(),
    };
    tasks
        .exec(request)
        .await
        .map_err(rpc)
        .with_context(|| format!("creating process {exec_id:?} in task {id:?}"))?;

    let outcome = if args.detach {
        let request = StartRequest {
            container_id: id.clone(),
            exec_id: exec_id.clone(),
        };
        tasks
            .start(request)
            .await
            .map(|_| None)
            .map_err(rpc)
            .with_context(|| format!("starting process {exec_id:?} of task {id:?}"))
    } else {
        start_and_wait(&tasks, &id, &exec_id, copier.as_mut()).await.map(Some)
    };
    drop(copier);
    // A detached process stays until it is waited for and removed by
    // whoever cares; one this command ran (or failed to start) goes now.
    if !matches!(outcome, Ok(None)) {
        let request = DeleteProcessRequest {
            container_id: id.clone(),
            exec_id: exec_id.clone(),
        };
        if let Err(status) = tasks.delete_process(request).await {
            if status.code() != Code::NotFound {
                let err = rpc(status).context(format!("removing process {exec_id:?}"));
                eprintln!("corten: warning: {}", error::one_line(&err));
            }
        }
    }
    match outcome? {
        None | Some(0) => Ok(()),
        Some(code) => Err(ExitStatus(code).into()),
    }
}

// ---------------------------------------------------------------- kill, rm

async fn kill(ctx: &Context, signal: Option<&str>, all: bool, exec_id: String, id: &str) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let signal = match signal {
        Some(text) => parse_signal(text)?,
        None => stop_signal(&conn, id).await?,
    };
    let request = KillRequest {
        container_id: id.to_string(),
        exec_id,
        signal: signal as u32,
        all,
    };
    conn.tasks()
        .kill(request)
        .await
        .map_err(rpc)
        .with_context(|| format!("signalling task {id:?}"))?;
    Ok(())
}

/// The signal that stops container `id` gracefully: its image's, recorded
/// in the container's labels, or SIGTERM.
async fn stop_signal(conn: &Connection, id: &str) -> anyhow::Result<i32> {
    let container = get_container(conn, id).await?;
    match container.labels.get(STOP_SIGNAL_LABEL) {
        Some(name) if !name.is_empty() => parse_signal(name).with_context(|| format!("container {id:?}'s stop signal")),
        _ => Ok(libc::SIGTERM),
    }
}

async fn rm(ctx: &Context, force: bool, ids: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut failed = 0;
    for id in &ids {
        match remove_task(&conn, id, force).await {
            Ok(Some(code)) if code != 0 => eprintln!("corten: task {id} exited with status {code}"),
            Ok(_) => {}
            Err(err) => {
                error::report(&err);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(AlreadyReported(failed).into());
    }
    Ok(())
}

/// Removes task `id` (killing it first when `force` and it still runs) and
/// the FIFO directory its stdio came through; returns its exit status.
async fn remove_task(conn: &Connection, id: &str, force: bool) -> anyhow::Result<Option<u32>> {
    let mut tasks = conn.tasks();
    let process = tasks
        .get(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })
        .await
        .map_err(rpc)
        .with_context(|| format!("task {id:?}"))?
        .into_inner()
        .process
        .unwrap_or_default();
    let live = !matches!(process.status(), Status::Stopped | Status::Created);
    if live && !force {
        bail!(
            "task {id:?} is {}: stop it first, or remove it with --force",
            status_name(process.status())
        );
    }
    if live {
        let request = KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: true,
        };
        match tasks.kill(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => return Err(rpc(status).context(format!("killing task {id:?}"))),
        }
        // Waiting after the kill is fine: an exited task keeps its status
        // until it is deleted.
        let request = WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        tasks
            .wait(request)
            .await
            .map_err(rpc)
            .with_context(|| format!("waiting for task {id:?} to exit"))?;
    }
    let deleted = tasks
        .delete(DeleteTaskRequest {
            container_id: id.to_string(),
        })
        .await
        .map_err(rpc)
        .with_context(|| format!("removing task {id:?}"))?
        .into_inner();
    stdio::remove_fifo_dir(&[&process.stdin, &process.stdout, &process.stderr]);
    Ok(Some(deleted.exit_status))
}

/// Removes task `id` whatever its state, for cleanup; errors other than
/// "not there" become warnings.
pub(crate) async fn delete_task_quietly(conn: &Connection, id: &str) -> Option<u32> {
    let request = DeleteTaskRequest {
        container_id: id.to_string(),
    };
    match conn.tasks().delete(request).await {
        Ok(reply) => Some(reply.into_inner().exit_status),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => {
            let err = rpc(status).context(format!("removing task {id:?}"));
            eprintln!("corten: warning: {}", error::one_line(&err));
            None
        }
    }
}

// ---------------------------------------------------------------- metrics

/// One metric's rows, in the order ctr shows them.
fn metric_rows(data: &Any) -> anyhow::Result<Vec<(&'static str, Value)>> {
    let kind = data.type_url.rsplit('/').next().unwrap_or_default();
    let per_cpu = |list: &[u64]| Value::from(list.to_vec());
    Ok(match kind {
        "io.containerd.cgroups.v1.Metrics" => {
            let m = cgroups::v1::Metrics::decode(data.value.as_slice()).context("decoding cgroup v1 metrics")?;
            let mem = m.memory.unwrap_or_default();
            let usage = mem.usage.unwrap_or_default();
            let cpu = m.cpu.unwrap_or_default().usage.unwrap_or_default();
            let pids = m.pids.unwrap_or_default();
            vec![
                ("memory.usage_in_bytes", usage.usage.into()),
                ("memory.limit_in_bytes", usage.limit.into()),
                ("memory.stat.cache", mem.cache.into()),
                ("cpuacct.usage", cpu.total.into()),
                ("cpuacct.usage_percpu", per_cpu(&cpu.per_cpu)),
                ("pids.current", pids.current.into()),
                ("pids.limit", pids.limit.into()),
            ]
        }
        "io.containerd.cgroups.v2.Metrics" => {
            let m = cgroups::v2::Metrics::decode(data.value.as_slice()).context("decoding cgroup v2 metrics")?;
            let pids = m.pids.unwrap_or_default();
            let cpu = m.cpu.unwrap_or_default();
            let mem = m.memory.unwrap_or_default();
            vec![
                ("pids.current", pids.current.into()),
                ("pids.limit", pids.limit.into()),
                ("cpu.usage_usec", cpu.usage_usec.into()),
                ("cpu.user_usec", cpu.user_usec.into()),
                ("cpu.system_usec", cpu.system_usec.into()),
                ("cpu.nr_periods", cpu.nr_periods.into()),
                ("cpu.nr_throttled", cpu.nr_throttled.into()),
                ("cpu.throttled_usec", cpu.throttled_usec.into()),
                ("memory.usage", mem.usage.into()),
                ("memory.usage_limit", mem.usage_limit.into()),
                ("memory.swap_usage", mem.swap_usage.into()),
                ("memory.swap_limit", mem.swap_limit.into()),
            ]
        }
        other => bail!("cannot show metrics of type {other:?}"),
    })
}

#[derive(Debug, Serialize)]
struct MetricView {
    id: String,
    timestamp: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    metrics: BTreeMap<&'static str, Value>,
}

/// ctr's spelling of a list of numbers: `[1 2 3]`.
fn cell(value: &Value) -> String {
    match value {
        Value::Array(items) => format!("[{}]", items.iter().map(Value::to_string).collect::<Vec<_>>().join(" ")),
        other => other.to_string(),
    }
}

async fn metrics(ctx: &Context, id: &str) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let request = MetricsRequest {
        filters: vec![format!("id=={id}")],
    };
    let metrics = conn
        .tasks()
        .metrics(request)
        .await
        .map_err(rpc)
        .with_context(|| format!("metrics of task {id:?}"))?
        .into_inner()
        .metrics;
    let Some(Metric { timestamp, id, data }) = metrics.into_iter().next() else {
        // The daemon filters a task that does not exist out silently: say
        // that it is not there rather than guess.
        let request = GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        conn.tasks()
            .get(request)
            .await
            .map_err(rpc)
            .with_context(|| format!("metrics of task {id:?}"))?;
        bail!("task {id:?}: no metrics (is it running?)");
    };
    let Some(data) = data else {
        bail!("task {id:?}: the metrics carry no data");
    };
    let rows = metric_rows(&data)?;
    match ctx.format {
        Format::Json => output::print_json(&MetricView {
            id,
            timestamp: rfc3339(timestamp.as_ref()),
            kind: data.type_url.clone(),
            metrics: rows.into_iter().collect(),
        }),
        Format::Table => {
            let mut head = Table::new(&["ID", "TIMESTAMP"]);
            head.row([id, rfc3339(timestamp.as_ref()).unwrap_or_default()]);
            let mut table = Table::new(&["METRIC", "VALUE"]);
            for (name, value) in &rows {
                table.row([name.to_string(), cell(value)]);
            }
            Ok(output::print(&format!("{}\n{}", head.render(), table.render()))?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec_args(args: &[&str]) -> ExecArgs {
        ExecArgs {
            exec_id: None,
            tty: false,
            detach: false,
            cwd: None,
            env: Vec::new(),
            fifo_dir: PathBuf::from(FIFO_ROOT),
            id: "c".into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }

    #[test]
    fn exec_process_starts_from_the_containers() {
        let spec = serde_json::json!({
            "process": {"args": ["sh"], "env": ["PATH=/bin", "A=1"], "cwd": "/", "user": {"uid": 5, "gid": 6}}
        });
        let mut args = exec_args(&["ls", "-l"]);
        args.tty = true;
        args.cwd = Some("/tmp".into());
        args.env = vec!["A=2".into(), "B=3".into()];
        let p = exec_process(&spec, &args).unwrap();
        assert_eq!(p["args"], serde_json::json!(["ls", "-l"]));
        assert_eq!(p["terminal"], true);
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["env"], serde_json::json!(["PATH=/bin", "A=2", "B=3"]));
        assert_eq!(p["user"]["uid"], 5);
        assert!(exec_process(&serde_json::json!({}), &args).is_err());
    }

    #[test]
    fn process_details_give_the_exec_id() {
        let details = ProcessDetails { exec_id: "e1".into() };
        let any = Any {
            type_url: "containerd.runc.v1.ProcessDetails".into(),
            value: details.encode_to_vec(),
        };
        assert_eq!(exec_id_of(Some(&any)), Some("e1".into()));
        assert_eq!(exec_id_of(None), None);
        let other = Any {
            type_url: "x".into(),
            value: vec![],
        };
        assert_eq!(exec_id_of(Some(&other)), None);
    }

    #[test]
    fn task_table_matches_ctr() {
        let task = Process {
            container_id: "m1".into(),
            pid: 21871,
            status: Status::Running as i32,
            ..Default::default()
        };
        assert_eq!(
            task_table(&[task]).render(),
            "TASK   PID     STATUS\nm1     21871   RUNNING\n"
        );
    }

    #[test]
    fn v1_metrics_rows() {
        let m = cgroups::v1::Metrics {
            pids: Some(cgroups::v1::PidsStat { current: 2, limit: 0 }),
            cpu: Some(cgroups::v1::CpuStat {
                usage: Some(cgroups::v1::CpuUsage {
                    total: 15,
                    per_cpu: vec![12, 3],
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let any = Any {
            type_url: "io.containerd.cgroups.v1.Metrics".into(),
            value: m.encode_to_vec(),
        };
        let rows = metric_rows(&any).unwrap();
        assert_eq!(rows[3], ("cpuacct.usage", Value::from(15)));
        assert_eq!(cell(&rows[4].1), "[12 3]");
        assert_eq!(rows[5], ("pids.current", Value::from(2)));
        assert!(metric_rows(&Any::default()).is_err());
    }
}
