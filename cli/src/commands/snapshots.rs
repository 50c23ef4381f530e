//! `corten snapshots ...`: the layered filesystems a snapshotter keeps.
//! Prepare, view and commit snapshots, show how to mount them, list, label,
//! measure and remove them, draw their parent tree, and diff two of them
//! into a layer blob.

use std::{
    cell::RefCell,
    collections::{BTreeMap, HashMap, HashSet},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use corten_api::containerd::{
    services::{
        diff::v1::DiffRequest,
        leases::v1::{CreateRequest as CreateLeaseRequest, DeleteRequest as DeleteLeaseRequest},
        snapshots::v1::{
            CommitSnapshotRequest, Info, Kind, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
            RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, UsageRequest, ViewSnapshotRequest,
        },
    },
    types::Mount,
};
use prost_types::FieldMask;
use serde::Serialize;
use tonic::{
    metadata::{Ascii, MetadataValue},
    Code,
};

use super::{
    leases::{self, rfc3339, system_time},
    Context,
};
use crate::{
    client::{Channel, Connection},
    error::{self, rpc, AlreadyReported, Removals},
    labels, mounts,
    output::{self, human_size, Format, Table},
    signals::interruption,
};

type SnapshotsClient = corten_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient<Channel>;

/// The snapshotter used when none is named, as in containerd.
const DEFAULT_SNAPSHOTTER: &str = "overlayfs";
/// Label that keeps a snapshot (or blob) from garbage collection on its
/// own; ctr sets it, to the creation time, on what it prepares and commits.
const GC_ROOT_LABEL: &str = "containerd.io/gc.root";
/// What `diff` produces unless told otherwise: a gzipped OCI layer.
const DEFAULT_DIFF_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// How long the temporary lease of a `diff` protects its views if this
/// process dies before removing it.
const DIFF_LEASE_TTL: Duration = Duration::from_secs(3600);
/// How long cleanup may hold up the exit.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Snapshotter to act on; empty means the default (overlayfs)
    #[arg(
        long,
        global = true,
        env = "CONTAINERD_SNAPSHOTTER",
        default_value = DEFAULT_SNAPSHOTTER,
        value_name = "NAME"
    )]
    snapshotter: String,
    #[command(subcommand)]
    command: SnapshotsCommand,
}

#[derive(Debug, Subcommand)]
enum SnapshotsCommand {
    /// Create an active (writable) snapshot, empty or on top of a committed PARENT
    Prepare(CreateArgs),
    /// Create a read-only view of a committed PARENT
    View(CreateArgs),
    /// Print the shell commands that mount a snapshot at TARGET (pipe them to sh)
    #[command(visible_aliases = ["mount", "m"])]
    Mounts {
        #[arg(value_name = "TARGET")]
        target: String,
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Commit the active snapshot KEY under the name NAME
    Commit {
        #[arg(value_name = "NAME")]
        name: String,
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Remove snapshots (children must go first)
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        #[arg(required = true, value_name = "KEY")]
        keys: Vec<String>,
    },
    /// List snapshots
    #[command(visible_alias = "list")]
    Ls {
        /// Only snapshots matching any one filter, e.g. `kind==active` (or view, committed) or `parent==base`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Show a snapshot's details as JSON
    Info {
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Show the disk space and inodes snapshots use; all snapshots when no KEY is given
    Usage {
        /// Show sizes in bytes
        #[arg(short = 'b')]
        bytes: bool,
        #[arg(value_name = "KEY")]
        keys: Vec<String>,
    },
    /// Show a snapshot's labels, or change them first; `KEY=` clears KEY
    Label {
        #[arg(value_name = "KEY")]
        key: String,
        #[arg(value_name = "LABEL=VALUE")]
        labels: Vec<String>,
    },
    /// Show snapshots as a tree of parents and children
    Tree {
        /// Only snapshots matching any one filter; parents left out appear as roots
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Store the changes between two snapshots as a layer blob and print its digest
    ///
    /// The changes lead from IDA to IDB or, when IDB is left out, from IDA's parent to IDA.
    /// Committed snapshots are read through temporary views, held by a temporary lease,
    /// that are removed afterwards.
    Diff(DiffArgs),
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// Print the commands that mount the new snapshot at DIR
    #[arg(short, long, value_name = "DIR")]
    target: Option<String>,
    /// Print the new snapshot's mounts as JSON
    #[arg(long)]
    mounts: bool,
    #[arg(value_name = "KEY")]
    key: String,
    #[arg(value_name = "PARENT")]
    parent: Option<String>,
}

#[derive(Debug, clap::Args)]
struct DiffArgs {
    /// Media type of the blob to create
    #[arg(long, value_name = "TYPE", default_value = DEFAULT_DIFF_MEDIA_TYPE)]
    media_type: String,
    /// Name of the content write (a generated one when absent)
    #[arg(long = "ref", value_name = "REF")]
    reference: Option<String>,
    /// Keep the blob from garbage collection (labels it as a GC root); otherwise it is only
    /// protected while this command runs
    #[arg(long)]
    keep: bool,
    /// Label for the blob; a bare KEY means KEY=true (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The snapshot the changes start from (or, alone, the one whose changes to show)
    #[arg(value_name = "IDA")]
    from: String,
    /// The snapshot the changes lead to
    #[arg(value_name = "IDB")]
    to: Option<String>,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    let snapshotter = snapshotter_name(&args.snapshotter).to_string();
    let sn = snapshotter.as_str();
    match args.command {
        SnapshotsCommand::Prepare(args) => create(ctx, sn, args, CreateMode::Prepare).await,
        SnapshotsCommand::View(args) => create(ctx, sn, args, CreateMode::View).await,
        SnapshotsCommand::Mounts { target, key } => show_mounts(ctx, sn, target, key).await,
        SnapshotsCommand::Commit { name, key } => commit(ctx, sn, name, key).await,
        SnapshotsCommand::Rm { keys } => rm(ctx, sn, keys).await,
        SnapshotsCommand::Ls { filters } => ls(ctx, sn, filters).await,
        SnapshotsCommand::Info { key } => info(ctx, sn, key).await,
        SnapshotsCommand::Usage { bytes, keys } => usage(ctx, sn, bytes, keys).await,
        SnapshotsCommand::Label { key, labels } => label(ctx, sn, key, &labels).await,
        SnapshotsCommand::Tree { filters } => tree(ctx, sn, filters).await,
        SnapshotsCommand::Diff(args) => diff(ctx, sn, args).await,
    }
}

/// An empty name (say `CONTAINERD_SNAPSHOTTER=`) stands for the default,
/// as it does for ctr.
fn snapshotter_name(given: &str) -> &str {
    if given.is_empty() {
        DEFAULT_SNAPSHOTTER
    } else {
        given
    }
}

/// `KEY=now` for the GC root label, in whole UTC seconds as ctr writes it.
fn gc_root_label(now: SystemTime) -> HashMap<String, String> {
    HashMap::from([(
        GC_ROOT_LABEL.to_string(),
        humantime::format_rfc3339_seconds(now).to_string(),
    )])
}

/// How ctr names kinds, in tables and JSON alike.
fn kind_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Unknown => "Unknown",
        Kind::View => "View",
        Kind::Active => "Active",
        Kind::Committed => "Committed",
    }
}

/// Text in the JSON layout ctr prints (four-space indent), for the outputs
/// scripts written against ctr parse.
fn ctr_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut bytes, serde_json::ser::PrettyFormatter::with_indent(b"    "));
    value.serialize(&mut serializer)?;
    bytes.push(b'\n');
    Ok(String::from_utf8(bytes)?)
}

// ---------------------------------------------------------------- prepare / view / mounts

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CreateMode {
    Prepare,
    View,
}

async fn create(ctx: &Context, snapshotter: &str, args: CreateArgs, mode: CreateMode) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut client = conn.snapshots();
    let parent = args.parent.unwrap_or_default();
    let mounts = match mode {
        // Both are GC roots from birth, so they stay until removed. ctr
        // marks only active snapshots; its views vanish at the next
        // collection, which is rarely what whoever asked for one wants.
        CreateMode::Prepare => {
            client
                .prepare(PrepareSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: args.key,
                    parent,
                    labels: gc_root_label(SystemTime::now()),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .mounts
        }
        CreateMode::View => {
            client
                .view(ViewSnapshotRequest {
                    snapshotter: snapshotter.to_string(),
                    key: args.key,
                    parent,
                    labels: gc_root_label(SystemTime::now()),
                })
                .await
                .map_err(rpc)?
                .into_inner()
                .mounts
        }
    };
    Ok(output::print(&created_output(
        args.target.as_deref(),
        args.mounts,
        &mounts,
    )?)?)
}

/// What prepare and view print: the mount commands when a target was
/// given, then the mounts as JSON when asked; nothing otherwise.
fn created_output(target: Option<&str>, as_json: bool, mounts: &[Mount]) -> anyhow::Result<String> {
    let mut text = String::new();
    if let Some(target) = target {
        text.push_str(&mounts::shell_commands(target, mounts));
    }
    if as_json {
        text.push_str(&ctr_json(&mounts::views(mounts))?);
    }
    Ok(text)
}

async fn show_mounts(ctx: &Context, snapshotter: &str, target: String, key: String) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mounts = conn
        .snapshots()
        .mounts(MountsRequest {
            snapshotter: snapshotter.to_string(),
            key,
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .mounts;
    Ok(output::print(&mounts::shell_commands(&target, &mounts))?)
}

// ---------------------------------------------------------------- commit / rm

async fn commit(ctx: &Context, snapshotter: &str, name: String, key: String) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    conn.snapshots()
        .commit(CommitSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            name,
            key,
            labels: gc_root_label(SystemTime::now()),
        })
        .await
        .map_err(rpc)?;
    Ok(())
}

/// Keeps going past a failed key, one error line apiece; the exit status
/// says whether all went.
async fn rm(ctx: &Context, snapshotter: &str, keys: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut client = conn.snapshots();
    let mut removals = Removals::default();
    for key in keys {
        let request = RemoveSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
        };
        match client.remove(request).await {
            Ok(_) => removals.removed(&key),
            Err(status) => removals.failed(&rpc(status).context(format!("removing {key:?}"))),
        }
    }
    removals.finish()
}

// ---------------------------------------------------------------- ls / info

async fn list(client: &mut SnapshotsClient, snapshotter: &str, filters: Vec<String>) -> anyhow::Result<Vec<Info>> {
    let mut stream = client
        .list(ListSnapshotsRequest {
            snapshotter: snapshotter.to_string(),
            filters,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut infos = Vec::new();
    while let Some(batch) = stream.message().await.map_err(rpc)? {
        infos.extend(batch.info);
    }
    Ok(infos)
}

/// A snapshot as `ls --format json` shows it, in the shape the other
/// listings use.
#[derive(Debug, Serialize)]
struct SnapshotView {
    name: String,
    parent: String,
    kind: &'static str,
    created_at: Option<String>,
    updated_at: Option<String>,
    labels: BTreeMap<String, String>,
}

async fn ls(ctx: &Context, snapshotter: &str, filters: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let infos = list(&mut conn.snapshots(), snapshotter, filters).await?;
    match ctx.format {
        Format::Json => {
            let views: Vec<SnapshotView> = infos
                .into_iter()
                .map(|i| SnapshotView {
                    kind: kind_name(i.kind()),
                    created_at: rfc3339(i.created_at.as_ref()),
                    updated_at: rfc3339(i.updated_at.as_ref()),
                    name: i.name,
                    parent: i.parent,
                    labels: i.labels.into_iter().collect(),
                })
                .collect();
            output::print_json(&views)
        }
        Format::Table => Ok(snapshot_table(&infos).print()?),
    }
}

fn snapshot_table(infos: &[Info]) -> Table {
    let mut table = Table::new(&["KEY", "PARENT", "KIND"]);
    for info in infos {
        table.row([
            info.name.clone(),
            info.parent.clone(),
            kind_name(info.kind()).to_string(),
        ]);
    }
    table
}

/// A snapshot in the JSON shape `ctr snapshots info` prints: field names,
/// order and omissions as there, times with Go's trimmed nanoseconds.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct CtrInfo {
    kind: &'static str,
    name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    parent: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    created: Option<String>,
    updated: Option<String>,
}

impl From<Info> for CtrInfo {
    fn from(info: Info) -> Self {
        CtrInfo {
            kind: kind_name(info.kind()),
            created: go_time(info.created_at.as_ref()),
            updated: go_time(info.updated_at.as_ref()),
            name: info.name,
            parent: info.parent,
            labels: info.labels.into_iter().collect(),
        }
    }
}

/// RFC 3339 in UTC with the fraction cut after its last non-zero digit
/// (and dropped when zero), the way Go writes times in JSON.
fn go_time(ts: Option<&prost_types::Timestamp>) -> Option<String> {
    let full = humantime::format_rfc3339_nanos(system_time(ts)?).to_string();
    let Some((seconds, fraction)) = full.strip_suffix('Z').and_then(|t| t.split_once('.')) else {
        return Some(full);
    };
    let fraction = fraction.trim_end_matches('0');
    Some(if fraction.is_empty() {
        format!("{seconds}Z")
    } else {
        format!("{seconds}.{fraction}Z")
    })
}

async fn info(ctx: &Context, snapshotter: &str, key: String) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let info = stat(&mut conn.snapshots(), snapshotter, &key).await?;
    Ok(output::print(&ctr_json(&CtrInfo::from(info))?)?)
}

async fn stat(client: &mut SnapshotsClient, snapshotter: &str, key: &str) -> anyhow::Result<Info> {
    client
        .stat(StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        })
        .await
        .map_err(rpc)?
        .into_inner()
        .info
        .with_context(|| format!("the daemon sent no details for snapshot {key:?}"))
}

// ---------------------------------------------------------------- usage

#[derive(Debug, Serialize)]
struct UsageView {
    key: String,
    size: i64,
    inodes: i64,
}

/// Measures the named snapshots, or every one. A named snapshot that
/// cannot be measured gets an error line and fails the command after the
/// others are shown; one that vanished between listing and measuring is
/// simply left out.
async fn usage(ctx: &Context, snapshotter: &str, bytes: bool, keys: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut client = conn.snapshots();
    let named = !keys.is_empty();
    let keys = if named {
        keys
    } else {
        list(&mut client, snapshotter, Vec::new())
            .await?
            .into_iter()
            .map(|i| i.name)
            .collect()
    };
    let mut rows = Vec::new();
    let mut failed = 0;
    for key in keys {
        let request = UsageRequest {
            snapshotter: snapshotter.to_string(),
            key: key.clone(),
        };
        match client.usage(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                rows.push(UsageView {
                    key,
                    size: reply.size,
                    inodes: reply.inodes,
                });
            }
            Err(status) if !named && status.code() == Code::NotFound => {}
            Err(status) => {
                failed += 1;
                error::report(&rpc(status).context(format!("measuring {key:?}")));
            }
        }
    }
    match ctx.format {
        Format::Json => output::print_json(&rows)?,
        Format::Table => usage_table(&rows, bytes).print()?,
    }
    if failed > 0 {
        return Err(AlreadyReported(failed).into());
    }
    Ok(())
}

fn usage_table(rows: &[UsageView], bytes: bool) -> Table {
    let mut table = Table::new(&["KEY", "SIZE", "INODES"]);
    for row in rows {
        let size = if bytes {
            row.size.to_string()
        } else {
            human_size(row.size)
        };
        table.row([row.key.clone(), size, row.inodes.to_string()]);
    }
    table
}

// ---------------------------------------------------------------- label

async fn label(ctx: &Context, snapshotter: &str, key: String, label_args: &[String]) -> anyhow::Result<()> {
    let labels = labels::parse(label_args)?;
    let conn = ctx.connect().await?;
    let mut client = conn.snapshots();
    let info = if labels.is_empty() {
        stat(&mut client, snapshotter, &key).await?
    } else {
        client
            .update(label_update(snapshotter, key.clone(), labels))
            .await
            .map_err(rpc)?
            .into_inner()
            .info
            .with_context(|| format!("the daemon sent no details for snapshot {key:?}"))?
    };
    let current = info.labels;
    match ctx.format {
        Format::Json => output::print_json(&current.into_iter().collect::<BTreeMap<_, _>>()),
        Format::Table if current.is_empty() => Ok(()),
        Format::Table => Ok(output::print(&format!("{}\n", labels::format(&current)))?),
    }
}

/// One Update touching only the named keys. A cleared key is named in the
/// mask but left out of the labels sent, which is how removal is asked for.
fn label_update(snapshotter: &str, key: String, labels: BTreeMap<String, String>) -> UpdateSnapshotRequest {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let kept: HashMap<String, String> = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    UpdateSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        info: Some(Info {
            name: key,
            labels: kept,
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths }),
    }
}

// ---------------------------------------------------------------- tree

async fn tree(ctx: &Context, snapshotter: &str, filters: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let infos = list(&mut conn.snapshots(), snapshotter, filters).await?;
    let pairs: Vec<(&str, &str)> = infos.iter().map(|i| (i.name.as_str(), i.parent.as_str())).collect();
    Ok(output::print(&render_tree(&pairs))?)
}

/// Draws `(name, parent)` pairs as ctr does: each root on a line of its
/// own after one space, each child two spaces deeper than its parent
/// behind `\_`. Snapshots keep the order they were listed in; a parent
/// that was not listed is drawn as a root of its own.
fn render_tree(snapshots: &[(&str, &str)]) -> String {
    let mut order: Vec<&str> = Vec::new();
    let mut parent_of: HashMap<&str, &str> = HashMap::new();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for &(name, parent) in snapshots {
        if !parent_of.contains_key(name) {
            order.push(name);
        }
        parent_of.insert(name, parent);
        if parent.is_empty() {
            continue;
        }
        if !parent_of.contains_key(parent) {
            order.push(parent);
            parent_of.insert(parent, "");
        }
        children.entry(parent).or_default().push(name);
    }

    let mut text = String::new();
    let mut drawn = HashSet::new();
    for root in order.iter().filter(|n| parent_of[*n].is_empty()) {
        // Depth-first, by hand so a deep chain cannot overflow the stack;
        // `drawn` also stops a (corrupt) cycle from looping forever.
        let mut pending = vec![(*root, 0usize)];
        while let Some((name, depth)) = pending.pop() {
            if !drawn.insert(name) {
                continue;
            }
            text.push_str(&"  ".repeat(depth));
            if depth > 0 {
                text.push_str("\\_");
            }
            text.push(' ');
            text.push_str(name);
            text.push('\n');
            if let Some(kids) = children.get(name) {
                pending.extend(kids.iter().rev().map(|kid| (*kid, depth + 1)));
            }
        }
    }
    text
}

// ---------------------------------------------------------------- diff

async fn diff(ctx: &Context, snapshotter: &str, args: DiffArgs) -> anyhow::Result<()> {
    let mut blob_labels: HashMap<String, String> = labels::parse(&args.labels)?.into_iter().collect();
    if args.keep {
        blob_labels.extend(gc_root_label(SystemTime::now()));
    }
    let conn = ctx.connect().await?;
    // Everything made along the way (views, the blob) is held by a lease
    // that lapses by itself should this process die before cleaning up.
    let lease = create_diff_lease(&conn).await?;
    let header = MetadataValue::try_from(lease.as_str())
        .ok()
        .with_context(|| format!("lease id {lease:?} is not sendable as a header"))?;
    let job = DiffJob {
        conn: &conn,
        snapshotter,
        lease: header,
        views: RefCell::new(Vec::new()),
    };
    let request = DiffRequest {
        left: Vec::new(),
        right: Vec::new(),
        media_type: args.media_type,
        r#ref: args.reference.unwrap_or_default(),
        labels: blob_labels,
    };
    let outcome = tokio::select! {
        outcome = job.run(&args.from, args.to.as_deref(), request) => outcome,
        signal = interruption() => Err(anyhow::anyhow!("diff interrupted by {signal}")),
    };
    job.remove_views().await;
    release_lease(&conn, &lease).await;
    let digest = outcome?;
    Ok(output::print(&format!("{digest}\n"))?)
}

/// Takes out the lease a diff works under; returns its id.
async fn create_diff_lease(conn: &Connection) -> anyhow::Result<String> {
    let now = SystemTime::now();
    let request = CreateLeaseRequest {
        id: leases::random_id(now),
        labels: HashMap::from([(
            leases::EXPIRE_LABEL.to_string(),
            humantime::format_rfc3339_seconds(now + DIFF_LEASE_TTL).to_string(),
        )]),
    };
    let requested = request.id.clone();
    let lease = conn
        .leases()
        .create(request)
        .await
        .map_err(rpc)
        .context("creating a temporary lease")?
        .into_inner()
        .lease;
    Ok(lease.map(|l| l.id).filter(|id| !id.is_empty()).unwrap_or(requested))
}

/// One diff in progress: the views it made, to remove afterwards.
struct DiffJob<'a> {
    conn: &'a Connection,
    snapshotter: &'a str,
    lease: MetadataValue<Ascii>,
    views: RefCell<Vec<String>>,
}

impl DiffJob<'_> {
    /// Mounts both sides and asks the differ for the blob; returns its
    /// digest. Alone, `from` is compared with its own parent.
    async fn run(&self, from: &str, to: Option<&str>, mut request: DiffRequest) -> anyhow::Result<String> {
        let mut client = self.conn.snapshots();
        let (left, right) = match to {
            Some(to) => {
                let from = stat(&mut client, self.snapshotter, from).await?;
                let to = stat(&mut client, self.snapshotter, to).await?;
                let left = self.mounts_of(&mut client, &from).await?;
                let right = self.mounts_of(&mut client, &to).await?;
                (left, right)
            }
            None => {
                let info = stat(&mut client, self.snapshotter, from).await?;
                // A snapshot without a parent is compared with an empty view.
                let base = if info.parent.is_empty() {
                    &info.name
                } else {
                    &info.parent
                };
                let key = temporary_key(base, "parent-view");
                let left = self.view(&mut client, key, &info.parent).await?;
                let right = self.mounts_of(&mut client, &info).await?;
                (left, right)
            }
        };
        request.left = left;
        request.right = right;
        let mut call = tonic::Request::new(request);
        call.metadata_mut().insert(leases::LEASE_HEADER, self.lease.clone());
        let blob = self
            .conn
            .diff()
            .diff(call)
            .await
            .map_err(rpc)
            .context("computing the diff")?
            .into_inner()
            .diff;
        match blob {
            Some(d) if !d.digest.is_empty() => Ok(d.digest),
            _ => bail!("the daemon computed the diff without naming the stored blob"),
        }
    }

    /// Mounts showing a snapshot's contents: its own for one that is not
    /// committed, a temporary view of a committed one.
    async fn mounts_of(&self, client: &mut SnapshotsClient, info: &Info) -> anyhow::Result<Vec<Mount>> {
        if info.kind() == Kind::Committed {
            return self.view(client, temporary_key(&info.name, "view"), &info.name).await;
        }
        Ok(client
            .mounts(MountsRequest {
                snapshotter: self.snapshotter.to_string(),
                key: info.name.clone(),
            })
            .await
            .map_err(rpc)
            .with_context(|| format!("mounting {:?}", info.name))?
            .into_inner()
            .mounts)
    }

    async fn view(&self, client: &mut SnapshotsClient, key: String, parent: &str) -> anyhow::Result<Vec<Mount>> {
        let mut call = tonic::Request::new(ViewSnapshotRequest {
            snapshotter: self.snapshotter.to_string(),
            key: key.clone(),
            parent: parent.to_string(),
            labels: HashMap::new(),
        });
        call.metadata_mut().insert(leases::LEASE_HEADER, self.lease.clone());
        let reply = client
            .view(call)
            .await
            .map_err(rpc)
            .with_context(|| format!("creating a temporary view of {parent:?}"))?;
        self.views.borrow_mut().push(key);
        Ok(reply.into_inner().mounts)
    }

    /// Removes the temporary views, warning (not failing) when one will
    /// not go: the lease held it, so it is collected once the lease is.
    async fn remove_views(&self) {
        let keys = self.views.take();
        let mut client = self.conn.snapshots();
        for key in keys.into_iter().rev() {
            let request = RemoveSnapshotRequest {
                snapshotter: self.snapshotter.to_string(),
                key: key.clone(),
            };
            let err = match tokio::time::timeout(CLEANUP_TIMEOUT, client.remove(request)).await {
                Ok(Ok(_)) => continue,
                Ok(Err(status)) if status.code() == Code::NotFound => continue,
                Ok(Err(status)) => rpc(status),
                Err(_) => anyhow::anyhow!("no answer within {CLEANUP_TIMEOUT:?}"),
            };
            let err = err.context(format!("removing temporary view {key:?}"));
            eprintln!("corten: warning: {}", error::one_line(&err));
        }
    }
}

/// A fresh key for a temporary snapshot made from `base`, e.g.
/// `app-view-123456789-1a2b3c4d`.
fn temporary_key(base: &str, what: &str) -> String {
    format!("{base}-{what}-{}", leases::random_id(SystemTime::now()))
}

/// Removes the diff's lease, warning (not failing) when that does not
/// work: the lease expires by itself.
async fn release_lease(conn: &Connection, lease: &str) {
    let mut client = conn.leases();
    let release = client.delete(DeleteLeaseRequest {
        id: lease.to_string(),
        sync: false,
    });
    let err = match tokio::time::timeout(CLEANUP_TIMEOUT, release).await {
        Ok(Ok(_)) => return,
        Ok(Err(status)) if status.code() == Code::NotFound => return,
        Ok(Err(status)) => rpc(status),
        Err(_) => anyhow::anyhow!("no answer within {CLEANUP_TIMEOUT:?}"),
    };
    let err = err.context(format!("removing temporary lease {lease:?} (it expires by itself)"));
    eprintln!("corten: warning: {}", error::one_line(&err));
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Probe {
        #[command(flatten)]
        args: Args,
    }

    fn parse(args: &[&str]) -> Result<Args, clap::Error> {
        Probe::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|p| p.args)
    }

    fn info(name: &str, parent: &str, kind: Kind) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind: kind as i32,
            ..Default::default()
        }
    }

    #[test]
    fn snapshotter_flag_goes_before_or_after_the_subcommand() {
        let before = parse(&["--snapshotter", "native", "ls"]).unwrap();
        assert_eq!(before.snapshotter, "native");
        let after = parse(&["ls", "--snapshotter", "native"]).unwrap();
        assert_eq!(after.snapshotter, "native");
        assert_eq!(snapshotter_name(""), "overlayfs");
        assert_eq!(snapshotter_name("btrfs"), "btrfs");
    }

    #[test]
    fn prepare_takes_key_optional_parent_and_flags() {
        let args = parse(&["prepare", "-t", "/mnt/x", "--mounts", "k", "p"]).unwrap();
        match args.command {
            SnapshotsCommand::Prepare(c) => {
                assert_eq!(c.target.as_deref(), Some("/mnt/x"));
                assert!(c.mounts);
                assert_eq!((c.key.as_str(), c.parent.as_deref()), ("k", Some("p")));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["view", "v"]).unwrap().command {
            SnapshotsCommand::View(c) => assert_eq!((c.key.as_str(), c.parent), ("v", None)),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["prepare"]).is_err());
        assert!(parse(&["prepare", "a", "b", "c"]).is_err());
    }

    #[test]
    fn commands_take_ctrs_arguments_and_aliases() {
        match parse(&["m", "/mnt", "k"]).unwrap().command {
            SnapshotsCommand::Mounts { target, key } => assert_eq!((target.as_str(), key.as_str()), ("/mnt", "k")),
            other => panic!("{other:?}"),
        }
        match parse(&["commit", "name", "active"]).unwrap().command {
            SnapshotsCommand::Commit { name, key } => assert_eq!((name.as_str(), key.as_str()), ("name", "active")),
            other => panic!("{other:?}"),
        }
        for alias in ["rm", "remove", "delete", "del"] {
            assert!(
                matches!(parse(&[alias, "a", "b"]).unwrap().command, SnapshotsCommand::Rm { keys } if keys.len() == 2)
            );
        }
        assert!(parse(&["rm"]).is_err());
        assert!(parse(&["commit", "only-one"]).is_err());
        match parse(&["usage", "-b"]).unwrap().command {
            SnapshotsCommand::Usage { bytes, keys } => assert!(bytes && keys.is_empty()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn diff_defaults_and_flags() {
        match parse(&["diff", "a"]).unwrap().command {
            SnapshotsCommand::Diff(d) => {
                assert_eq!(d.media_type, DEFAULT_DIFF_MEDIA_TYPE);
                assert_eq!((d.from.as_str(), d.to.as_deref()), ("a", None));
                assert!(!d.keep && d.reference.is_none() && d.labels.is_empty());
            }
            other => panic!("{other:?}"),
        }
        let args = [
            "diff",
            "--media-type",
            "t",
            "--ref",
            "r",
            "--keep",
            "--label",
            "x=1",
            "--label",
            "y",
            "a",
            "b",
        ];
        match parse(&args).unwrap().command {
            SnapshotsCommand::Diff(d) => {
                assert_eq!((d.media_type.as_str(), d.reference.as_deref()), ("t", Some("r")));
                assert!(d.keep);
                assert_eq!(d.labels, ["x=1", "y"]);
                assert_eq!((d.from.as_str(), d.to.as_deref()), ("a", Some("b")));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&["diff"]).is_err());
    }

    #[test]
    fn tree_is_drawn_like_ctr() {
        let snapshots = [
            ("base", ""),
            ("child", "base"),
            ("gc", "base"),
            ("ggc", "gc"),
            ("lonely", ""),
            ("v", "base"),
        ];
        assert_eq!(
            render_tree(&snapshots),
            " base\n  \\_ child\n  \\_ gc\n    \\_ ggc\n  \\_ v\n lonely\n"
        );
        assert_eq!(render_tree(&[]), "");
    }

    #[test]
    fn tree_keeps_listing_order_and_draws_missing_parents_as_roots() {
        // Children listed before their parent still hang below it, and a
        // parent filtered out of the listing becomes a root.
        let snapshots = [("c2", "p"), ("c1", "p"), ("p", "gone"), ("x", "")];
        assert_eq!(render_tree(&snapshots), " gone\n  \\_ p\n    \\_ c2\n    \\_ c1\n x\n");
    }

    #[test]
    fn tree_survives_a_cycle() {
        let snapshots = [("a", "b"), ("b", "a"), ("r", "")];
        assert_eq!(render_tree(&snapshots), " r\n");
    }

    #[test]
    fn table_names_kinds_like_ctr() {
        let infos = [
            info("base", "", Kind::Committed),
            info("child", "base", Kind::Active),
            info("v", "base", Kind::View),
        ];
        assert_eq!(
            snapshot_table(&infos).render(),
            "KEY     PARENT   KIND\n\
             base             Committed\n\
             child   base     Active\n\
             v       base     View\n"
        );
    }

    #[test]
    fn info_json_matches_ctrs_shape() {
        let mut child = info("child", "base", Kind::Active);
        child.labels.insert("b".into(), "2".into());
        child.labels.insert("a".into(), "1".into());
        child.created_at = Some(prost_types::Timestamp {
            seconds: 1_609_459_200,
            nanos: 646_957_460,
        });
        child.updated_at = Some(prost_types::Timestamp {
            seconds: 1_609_459_200,
            nanos: 0,
        });
        assert_eq!(
            ctr_json(&CtrInfo::from(child)).unwrap(),
            "{\n    \"Kind\": \"Active\",\n    \"Name\": \"child\",\n    \"Parent\": \"base\",\n    \
             \"Labels\": {\n        \"a\": \"1\",\n        \"b\": \"2\"\n    },\n    \
             \"Created\": \"2021-01-01T00:00:00.64695746Z\",\n    \"Updated\": \"2021-01-01T00:00:00Z\"\n}\n"
        );
        let bare = ctr_json(&CtrInfo::from(info("base", "", Kind::Committed))).unwrap();
        assert_eq!(
            bare,
            "{\n    \"Kind\": \"Committed\",\n    \"Name\": \"base\",\n    \"Created\": null,\n    \"Updated\": null\n}\n"
        );
    }

    #[test]
    fn created_output_prints_commands_then_json() {
        let mounts = [Mount {
            r#type: "bind".into(),
            source: "/s/fs".into(),
            target: String::new(),
            options: vec!["rw".into(), "rbind".into()],
        }];
        assert_eq!(created_output(None, false, &mounts).unwrap(), "");
        assert_eq!(
            created_output(Some("/mnt/x"), false, &mounts).unwrap(),
            "mount -t bind /s/fs /mnt/x -o rw,rbind\n"
        );
        assert_eq!(
            created_output(Some("/mnt/x"), true, &mounts).unwrap(),
            "mount -t bind /s/fs /mnt/x -o rw,rbind\n\
             [\n    {\n        \"Type\": \"bind\",\n        \"Source\": \"/s/fs\",\n        \"Options\": [\n            \
             \"rw\",\n            \"rbind\"\n        ]\n    }\n]\n"
        );
    }

    #[test]
    fn usage_table_in_human_units_or_bytes() {
        let rows = [
            UsageView {
                key: "base".into(),
                size: 8192,
                inodes: 2,
            },
            UsageView {
                key: "v".into(),
                size: 0,
                inodes: 0,
            },
        ];
        assert_eq!(
            usage_table(&rows, false).render(),
            "KEY    SIZE      INODES\nbase   8.0 KiB   2\nv      0 B       0\n"
        );
        assert_eq!(
            usage_table(&rows, true).render(),
            "KEY    SIZE   INODES\nbase   8192   2\nv      0      0\n"
        );
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_size(-1), "-");
    }

    #[test]
    fn label_update_names_cleared_keys_without_values() {
        let labels = labels::parse(&["b=2".into(), "a=".into()]).unwrap();
        let request = label_update("native", "snap".into(), labels);
        assert_eq!(request.snapshotter, "native");
        assert_eq!(request.update_mask.unwrap().paths, ["labels.a", "labels.b"]);
        let info = request.info.unwrap();
        assert_eq!(info.name, "snap");
        assert_eq!(info.labels, HashMap::from([("b".to_string(), "2".to_string())]));
    }

    #[test]
    fn gc_root_is_whole_utc_seconds() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_609_459_200_700);
        assert_eq!(gc_root_label(at)[GC_ROOT_LABEL], "2021-01-01T00:00:00Z");
    }

    #[test]
    fn go_times_trim_the_fraction() {
        let ts = |seconds, nanos| Some(prost_types::Timestamp { seconds, nanos });
        assert_eq!(
            go_time(ts(1_609_459_200, 500_000_000).as_ref()).unwrap(),
            "2021-01-01T00:00:00.5Z"
        );
        assert_eq!(
            go_time(ts(1_609_459_200, 1).as_ref()).unwrap(),
            "2021-01-01T00:00:00.000000001Z"
        );
        assert_eq!(go_time(ts(1_609_459_200, 0).as_ref()).unwrap(), "2021-01-01T00:00:00Z");
        assert_eq!(go_time(None), None);
    }

    #[test]
    fn temporary_keys_are_distinct_and_name_their_source() {
        let a = temporary_key("app", "view");
        let b = temporary_key("app", "view");
        assert!(a.starts_with("app-view-"), "{a}");
        assert_ne!(a, b);
    }
}
