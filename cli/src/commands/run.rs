//! `corten run IMAGE ID [COMMAND...]`: create a container from an image and
//! run it, the way `ctr run` does it from the client:
//!
//! 1. under a temporary lease: look the image up and make sure it is
//!    unpacked (unpacking it if not), prepare a snapshot named after the
//!    container on its chain ID, read the image's accounts from it, build
//!    the spec, create the container record;
//! 2. make the stdio FIFOs, create the task on the snapshot's mounts, ask
//!    for its exit, start it, relay stdio, terminal size and signals;
//! 3. remove the task once it has exited (the container stays, unless
//!    `--rm`) and exit with the task's status.
//!
//! With `--detach` the command returns once the task runs; unlike ctr it
//! then passes no FIFOs (the task's output is discarded), since nobody
//! would read them and a task writing more than a pipe holds would stall.

use std::{collections::HashMap, path::PathBuf};

use anyhow::{bail, Context as _};
use corten_api::containerd::{
    services::{
        containers::v1::{container::Runtime, Container, CreateContainerRequest, GetContainerRequest},
        snapshots::v1::{PrepareSnapshotRequest, RemoveSnapshotRequest},
        tasks::v1::{CreateTaskRequest, StartRequest},
    },
    types::Mount,
};
use prost_types::Any;
use tonic::Code;

use super::{
    containers::remove_container,
    images::{self, Lease},
    tasks::delete_task_quietly,
    Context,
};
use crate::{
    client::Connection,
    error::{self, rpc, ExitStatus},
    labels,
    run::{
        process::start_and_wait,
        rootfs,
        spec::{self, ImageConfig, SpecOptions, SPEC_TYPE_URL},
        stdio::{self, StdioPaths, FIFO_ROOT},
    },
};

const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
const DEFAULT_RUNTIME: &str = "io.containerd.runc.v2";
/// The (empty) runc options ctr sends with runc runtimes.
const RUNC_OPTIONS_TYPE_URL: &str = "containerd.runc.v1.Options";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Remove the container and its snapshot when the task has exited
    #[arg(long, conflicts_with = "detach")]
    rm: bool,
    /// Return once the task runs (its output is discarded)
    #[arg(short, long)]
    detach: bool,
    /// Give the container a terminal (the local one goes into raw mode)
    #[arg(short = 't', long = "tty", conflicts_with_all = ["detach", "null_io"])]
    tty: bool,
    /// Snapshotter for the container's root filesystem; empty means the default (overlayfs)
    #[arg(long, env = "CONTAINERD_SNAPSHOTTER", default_value = DEFAULT_SNAPSHOTTER, value_name = "NAME")]
    snapshotter: String,
    /// Runtime (shim) to run the container with
    #[arg(long, default_value = DEFAULT_RUNTIME, value_name = "NAME")]
    runtime: String,
    /// Set an environment variable (repeatable)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Working directory of the process (the image's by default)
    #[arg(long, value_name = "DIR")]
    cwd: Option<String>,
    /// The container's host name (the host's by default)
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Mount the container's root filesystem read-only
    #[arg(long)]
    read_only: bool,
    /// Use the host's network namespace, /etc/hosts and /etc/resolv.conf
    #[arg(long)]
    net_host: bool,
    /// Add a mount, e.g. type=bind,src=/host/dir,dst=/dir,options=rbind:ro (repeatable)
    #[arg(long = "mount", value_name = "SPEC")]
    mounts: Vec<String>,
    /// Label the container, also an annotation of its spec (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Run the image's content for this platform (os/arch[/variant])
    #[arg(long)]
    platform: Option<String>,
    /// Connect the task to no stdio at all
    #[arg(long)]
    null_io: bool,
    /// Directory to make the stdio FIFOs in
    #[arg(long, value_name = "DIR", default_value = FIFO_ROOT)]
    fifo_dir: PathBuf,
    #[arg(value_name = "IMAGE")]
    image: String,
    #[arg(value_name = "ID")]
    id: String,
    /// Command and arguments, replacing the image's entrypoint and command
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    args: Vec<String>,
}

impl Args {
    fn snapshotter(&self) -> &str {
        if self.snapshotter.is_empty() {
            DEFAULT_SNAPSHOTTER
        } else {
            &self.snapshotter
        }
    }
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let user_mounts = args
        .mounts
        .iter()
        .map(|m| spec::parse_mount(m))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let conn = ctx.connect().await?;

    let lease = images::create_temporary_lease(&conn).await?;
    let created = create_container(&conn, &lease, &args, &ctx.connect.namespace, user_mounts).await;
    images::release_lease(&conn, &lease.id).await;
    let rootfs = created?;

    let outcome = run_task(&conn, &args, rootfs).await;
    if args.rm {
        delete_task_quietly(&conn, &args.id).await;
        if let Err(err) = remove_container(&conn, &args.id, false).await {
            eprintln!("corten: warning: {}", error::one_line(&err));
        }
    }
    match outcome? {
        None | Some(0) => Ok(()),
        Some(code) => Err(ExitStatus(code).into()),
    }
}

/// Everything up to the container record; returns the mounts of its root
/// filesystem. What it made is undone if a later step fails.
async fn create_container(
    conn: &Connection,
    lease: &Lease,
    args: &Args,
    namespace: &str,
    user_mounts: Vec<oci_spec::runtime::Mount>,
) -> anyhow::Result<Vec<Mount>> {
    let id = args.id.as_str();
    let snapshotter = args.snapshotter();
    // Said plainly, rather than as the snapshot that would clash first.
    match conn.containers().get(GetContainerRequest { id: id.to_string() }).await {
        Ok(_) => bail!("container {id:?} already exists"),
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => return Err(rpc(status).context(format!("looking up container {id:?}"))),
    }
    let image = images::runnable_image(conn, lease, snapshotter, &args.image, args.platform.as_deref()).await?;
    let config = ImageConfig::from_json(&image.config)?;

    let request = PrepareSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: id.to_string(),
        parent: image.chain_id.clone(),
        labels: HashMap::new(),
    };
    let mounts = conn
        .snapshots()
        .prepare(lease.request(request))
        .await
        .map_err(rpc)
        .with_context(|| format!("preparing snapshot {id:?} in {snapshotter}"))?
        .into_inner()
        .mounts;

    let record = async {
        let accounts = rootfs::read_accounts(&mounts)?;
        let mut opts = SpecOptions::new(namespace, id);
        opts.args = args.args.clone();
        opts.terminal = args.tty;
        opts.env = args.env.clone();
        opts.cwd = args.cwd.clone();
        opts.hostname = args.hostname.clone();
        opts.read_only = args.read_only;
        opts.net_host = args.net_host;
        opts.mounts = user_mounts;
        opts.annotations = labels::parse(&args.labels)?;
        let spec = spec::build(&config, &accounts, &opts)?;
        let container = Container {
            id: id.to_string(),
            labels: spec::container_labels(&config, &opts.annotations),
            image: image.name.clone(),
            runtime: Some(Runtime {
                name: args.runtime.clone(),
                options: args.runtime.starts_with("io.containerd.runc.").then(|| Any {
                    type_url: RUNC_OPTIONS_TYPE_URL.to_string(),
                    value: Vec::new(),
                }),
            }),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec::to_json(&spec)?,
            }),
            snapshotter: snapshotter.to_string(),
            snapshot_key: id.to_string(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
        };
        let request = CreateContainerRequest {
            container: Some(container),
        };
        conn.containers()
            .create(lease.request(request))
            .await
            .map_err(rpc)
            .with_context(|| format!("creating container {id:?}"))?;
        anyhow::Ok(())
    }
    .await;
    if let Err(err) = record {
        let request = RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: id.to_string(),
        };
        let _ = conn.snapshots().remove(request).await;
        return Err(err);
    }
    Ok(mounts)
}

/// Creates and starts the task; unless detached, stays with it until it
/// has exited, removes it and returns its exit status.
async fn run_task(conn: &Connection, args: &Args, rootfs: Vec<Mount>) -> anyhow::Result<Option<u32>> {
    let id = args.id.as_str();
    let (paths, mut copier) = if args.detach || args.null_io {
        (
            StdioPaths {
                terminal: args.tty,
                ..StdioPaths::default()
            },
            None,
        )
    } else {
        let (paths, copier) = stdio::create(&args.fifo_dir, id, args.tty, true)?;
        (paths, Some(copier))
    };
    let mut tasks = conn.tasks();
    let request = CreateTaskRequest {
        container_id: id.to_string(),
        rootfs,
        stdin: paths.stdin,
        stdout: paths.stdout,
        stderr: paths.stderr,
        terminal: paths.terminal,
        checkpoint: None,
        options: None,
        runtime_path: String::new(),
    };
    tasks
        .create(request)
        .await
        .map_err(rpc)
        .with_context(|| format!("creating task {id:?}"))?;

    let outcome = if args.detach {
        let request = StartRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        tasks
            .start(request)
            .await
            .map(|_| None)
            .map_err(rpc)
            .with_context(|| format!("starting task {id:?}"))
    } else {
        start_and_wait(&tasks, id, "", copier.as_mut()).await.map(Some)
    };
    // The terminal is itself again and the FIFOs are gone before anything
    // else is said.
    drop(copier);
    if !matches!(outcome, Ok(None)) {
        delete_task_quietly(conn, id).await;
    }
    outcome
}
