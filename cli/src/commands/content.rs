//! `corten content ...`: the blob store. List, read, write (resumably),
//! label and delete blobs, and watch or abandon writes in progress.

use std::{
    cell::Cell,
    collections::{BTreeMap, HashMap},
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use anyhow::{bail, Context as _};
use clap::Subcommand;
use corten_api::containerd::services::{
    content::v1::{
        AbortRequest, DeleteContentRequest, Info, InfoRequest, ListContentRequest, ListStatusesRequest,
        ReadContentRequest, Status as IngestStatus, UpdateRequest, WriteAction, WriteContentRequest,
        WriteContentResponse,
    },
    leases::v1::DeleteRequest as DeleteLeaseRequest,
};
use prost_types::FieldMask;
use serde::Serialize;
use sha2::{Digest as _, Sha256};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{metadata::MetadataValue, Code, Status};

use super::{
    leases::{self, labels_cell, rfc3339, system_time},
    Context,
};
use crate::{
    client::{Channel, Connection},
    content_write::WriteSession,
    error::{self, rpc, Removals},
    labels,
    output::{self, human_size, Format, Table},
    progress::{self, Progress},
    signals::interruption,
};

type ContentClient = corten_api::containerd::services::content::v1::content_client::ContentClient<Channel>;

/// Bytes per Write message: well under gRPC's default 4 MiB message cap.
const CHUNK_SIZE: usize = 1 << 20;
/// How long an ingest's temporary lease protects it if this process dies
/// without removing the lease.
const INGEST_LEASE_TTL: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ContentCommand,
}

#[derive(Debug, Subcommand)]
enum ContentCommand {
    /// List blobs in the store
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the digests
        #[arg(short, long)]
        quiet: bool,
        /// Only blobs matching any one filter, e.g. `labels.owner==ci`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Write a blob's bytes to stdout
    #[command(visible_alias = "cat")]
    Get {
        #[arg(value_name = "DIGEST")]
        digest: String,
    },
    /// Store data from a file or stdin and print its digest
    Ingest(IngestArgs),
    /// Delete blobs
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        #[arg(required = true, value_name = "DIGEST")]
        digests: Vec<String>,
    },
    /// Show a blob's labels, or change them first; `KEY=` clears KEY
    Label {
        #[arg(value_name = "DIGEST")]
        digest: String,
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List writes in progress
    Active {
        /// Only ingests matching any one filter, e.g. `ref~=^layer-`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Abandon a write in progress, discarding what it wrote
    Abort {
        #[arg(value_name = "REF")]
        reference: String,
    },
}

#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// Name of the write; an unfinished write of the same name is resumed
    #[arg(value_name = "REF")]
    reference: String,
    /// File to read; stdin when absent or `-`
    #[arg(value_name = "FILE")]
    file: Option<PathBuf>,
    /// Size the content must have (also sizes the progress bar)
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(i64).range(0..))]
    expected_size: Option<i64>,
    /// Digest the content must have
    #[arg(long, value_name = "DIGEST")]
    expected_digest: Option<String>,
    /// Label for the stored blob; a bare KEY means KEY=true (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// Show a progress bar even when stderr is not a terminal
    #[arg(long)]
    progress: bool,
    /// Never show a progress bar
    #[arg(long)]
    no_progress: bool,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        ContentCommand::Ls { quiet, filters } => ls(ctx, quiet, filters).await,
        ContentCommand::Get { digest } => get(ctx, digest).await,
        ContentCommand::Ingest(args) => ingest(ctx, args).await,
        ContentCommand::Rm { digests } => rm(ctx, digests).await,
        ContentCommand::Label { digest, labels } => label(ctx, digest, &labels).await,
        ContentCommand::Active { filters } => active(ctx, filters).await,
        ContentCommand::Abort { reference } => abort(ctx, reference).await,
    }
}

// ---------------------------------------------------------------- ls

/// A blob as this command shows it; also the JSON shape.
#[derive(Debug, Serialize)]
struct BlobView {
    digest: String,
    size: i64,
    created_at: Option<String>,
    updated_at: Option<String>,
    labels: BTreeMap<String, String>,
}

async fn ls(ctx: &Context, quiet: bool, filters: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut stream = conn
        .content()
        .list(ListContentRequest { filters })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut blobs = Vec::new();
    while let Some(batch) = stream.message().await.map_err(rpc)? {
        blobs.extend(batch.info);
    }
    if quiet {
        let digests: String = blobs.iter().map(|b| format!("{}\n", b.digest)).collect();
        return Ok(output::print(&digests)?);
    }
    match ctx.format {
        Format::Json => {
            let views: Vec<BlobView> = blobs
                .into_iter()
                .map(|b| BlobView {
                    created_at: rfc3339(b.created_at.as_ref()),
                    updated_at: rfc3339(b.updated_at.as_ref()),
                    digest: b.digest,
                    size: b.size,
                    labels: b.labels.into_iter().collect(),
                })
                .collect();
            output::print_json(&views)
        }
        Format::Table => Ok(blob_table(&blobs, SystemTime::now()).print()?),
    }
}

fn blob_table(blobs: &[Info], now: SystemTime) -> Table {
    let mut table = Table::new(&["DIGEST", "SIZE", "AGE", "LABELS"]);
    for blob in blobs {
        table.row([
            blob.digest.clone(),
            human_size(blob.size),
            age_cell(blob.created_at.as_ref(), now, ""),
            labels_cell(&blob.labels),
        ]);
    }
    table
}

/// How long ago `ts` was, or `-` when the daemon did not say.
fn age_cell(ts: Option<&prost_types::Timestamp>, now: SystemTime, suffix: &str) -> String {
    match system_time(ts) {
        // A timestamp ahead of this machine's clock counts as just now.
        Some(t) => human_age(now.duration_since(t).unwrap_or_default()) + suffix,
        None => "-".into(),
    }
}

/// A duration the way people say it: `Less than a second`, `1 minute`,
/// `5 hours`, `3 weeks`; rounded down to the largest unit that fits.
fn human_age(age: Duration) -> String {
    const MINUTE: u64 = 60;
    const HOUR: u64 = 60 * MINUTE;
    const DAY: u64 = 24 * HOUR;
    // Each unit is used until twice the next one up (or the next
    // boundary) is reached, so "36 hours" reads better than "1 day".
    const SCALE: [(u64, u64, &str); 7] = [
        (1, MINUTE, "second"),
        (MINUTE, HOUR, "minute"),
        (HOUR, 2 * DAY, "hour"),
        (DAY, 14 * DAY, "day"),
        (7 * DAY, 60 * DAY, "week"),
        (30 * DAY, 730 * DAY, "month"),
        (365 * DAY, u64::MAX, "year"),
    ];
    let secs = age.as_secs();
    if secs == 0 {
        return "Less than a second".into();
    }
    let (size, name) = SCALE
        .iter()
        .find(|(_, below, _)| secs < *below)
        .map(|(size, _, name)| (*size, *name))
        .unwrap_or((365 * DAY, "year"));
    let count = secs / size;
    if count == 1 {
        format!("1 {name}")
    } else {
        format!("{count} {name}s")
    }
}

// ---------------------------------------------------------------- get

async fn get(ctx: &Context, digest: String) -> anyhow::Result<()> {
    check_digest(&digest)?;
    let conn = ctx.connect().await?;
    let request = ReadContentRequest {
        digest,
        offset: 0,
        size: 0,
    };
    let mut stream = conn.content().read(request).await.map_err(rpc)?.into_inner();
    let mut out = io::stdout();
    let mut position: i64 = 0;
    while let Some(part) = stream.message().await.map_err(rpc)? {
        if part.offset != position {
            bail!(
                "the daemon sent data for offset {} when {position} was next; output is incomplete",
                part.offset
            );
        }
        out.write_all(&part.data)?;
        position += part.data.len() as i64;
    }
    out.flush()?;
    Ok(())
}

/// Refuses what cannot be a digest before bothering the daemon, as ctr
/// does: `algorithm:hex` with a known algorithm and lowercase hex of its
/// length.
fn check_digest(text: &str) -> anyhow::Result<()> {
    let Some((algorithm, hex)) = text.split_once(':') else {
        bail!("invalid digest {text:?}: expected ALGORITHM:HEX, e.g. sha256:...");
    };
    let length = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => bail!("invalid digest {text:?}: unsupported algorithm {algorithm:?}"),
    };
    if hex.len() != length || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        bail!("invalid digest {text:?}: {algorithm} needs {length} lowercase hex characters");
    }
    Ok(())
}

// ---------------------------------------------------------------- rm

/// Keeps going past a failed digest, one error line apiece; the exit
/// status says whether all went.
async fn rm(ctx: &Context, digests: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut client = conn.content();
    let mut removals = Removals::default();
    for digest in digests {
        let outcome = match check_digest(&digest) {
            Ok(()) => client
                .delete(DeleteContentRequest { digest: digest.clone() })
                .await
                .map_err(rpc),
            Err(err) => Err(err),
        };
        match outcome {
            Ok(_) => removals.removed(&digest),
            Err(err) => removals.failed(&err),
        }
    }
    removals.finish()
}

// ---------------------------------------------------------------- label

async fn label(ctx: &Context, digest: String, label_args: &[String]) -> anyhow::Result<()> {
    check_digest(&digest)?;
    let labels = labels::parse(label_args)?;
    let conn = ctx.connect().await?;
    let mut client = conn.content();
    let info = if labels.is_empty() {
        client
            .info(InfoRequest { digest })
            .await
            .map_err(rpc)?
            .into_inner()
            .info
    } else {
        client
            .update(label_update(digest, labels))
            .await
            .map_err(rpc)?
            .into_inner()
            .info
    };
    let current = info.map(|i| i.labels).unwrap_or_default();
    match ctx.format {
        Format::Json => output::print_json(&current.into_iter().collect::<BTreeMap<_, _>>()),
        Format::Table if current.is_empty() => Ok(()),
        Format::Table => Ok(output::print(&format!("{}\n", labels::format(&current)))?),
    }
}

/// One Update touching only the named keys. A cleared key is named in the
/// mask but left out of the labels sent, which is how ctr asks for removal.
fn label_update(digest: String, labels: BTreeMap<String, String>) -> UpdateRequest {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    let kept: HashMap<String, String> = labels.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    UpdateRequest {
        info: Some(Info {
            digest,
            labels: kept,
            ..Default::default()
        }),
        update_mask: Some(FieldMask { paths }),
    }
}

// ---------------------------------------------------------------- active / abort

/// A write in progress as this command shows it; also the JSON shape.
#[derive(Debug, Serialize)]
struct IngestView {
    #[serde(rename = "ref")]
    reference: String,
    offset: i64,
    total: i64,
    expected: String,
    started_at: Option<String>,
    updated_at: Option<String>,
}

async fn active(ctx: &Context, filters: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let statuses = conn
        .content()
        .list_statuses(ListStatusesRequest { filters })
        .await
        .map_err(rpc)?
        .into_inner()
        .statuses;
    match ctx.format {
        Format::Json => {
            let views: Vec<IngestView> = statuses
                .into_iter()
                .map(|s| IngestView {
                    started_at: rfc3339(s.started_at.as_ref()),
                    updated_at: rfc3339(s.updated_at.as_ref()),
                    reference: s.r#ref,
                    offset: s.offset,
                    total: s.total,
                    expected: s.expected,
                })
                .collect();
            output::print_json(&views)
        }
        Format::Table => Ok(ingest_table(&statuses, SystemTime::now()).print()?),
    }
}

fn ingest_table(statuses: &[IngestStatus], now: SystemTime) -> Table {
    let mut table = Table::new(&["REF", "SIZE", "TOTAL", "STARTED", "UPDATED"]);
    for s in statuses {
        let total = if s.total > 0 { human_size(s.total) } else { "-".into() };
        table.row([
            s.r#ref.clone(),
            human_size(s.offset),
            total,
            age_cell(s.started_at.as_ref(), now, " ago"),
            age_cell(s.updated_at.as_ref(), now, " ago"),
        ]);
    }
    table
}

async fn abort(ctx: &Context, reference: String) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    conn.content()
        .abort(AbortRequest { r#ref: reference })
        .await
        .map_err(rpc)?;
    Ok(())
}

// ---------------------------------------------------------------- ingest

/// What the write asks of the daemon, fixed before any byte is sent.
#[derive(Debug, Clone)]
struct IngestPlan {
    reference: String,
    /// Expected size; 0 when unknown.
    total: i64,
    /// Expected digest; empty when unknown.
    expected: String,
    labels: HashMap<String, String>,
}

impl IngestPlan {
    /// The opening message: names the write, creating or finding it, and
    /// asks how much of it the daemon already has.
    fn stat(&self) -> WriteContentRequest {
        WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            ..Default::default()
        }
    }

    fn write(&self, offset: u64, data: Vec<u8>) -> WriteContentRequest {
        WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.reference.clone(),
            offset: offset as i64,
            data,
            ..Default::default()
        }
    }

    fn commit(&self, offset: u64) -> WriteContentRequest {
        WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.reference.clone(),
            total: self.total,
            expected: self.expected.clone(),
            offset: offset as i64,
            labels: self.labels.clone(),
            ..Default::default()
        }
    }

    /// Where to pick up, given the offset the daemon reported for an
    /// existing write under this ref.
    fn resume_offset(&self, reported: i64) -> anyhow::Result<u64> {
        let Ok(offset) = u64::try_from(reported) else {
            bail!(
                "the daemon reported a negative offset ({reported}) for {:?}",
                self.reference
            );
        };
        if self.total > 0 && reported > self.total {
            bail!(
                "ingest {:?} already holds {reported} bytes, more than the expected size {}; \
                 abort it with `corten content abort {}`",
                self.reference,
                self.total,
                self.reference
            );
        }
        Ok(offset)
    }
}

async fn ingest(ctx: &Context, args: IngestArgs) -> anyhow::Result<()> {
    // Bad arguments and unreadable input are reported before touching the daemon.
    let labels = labels::parse(&args.labels)?;
    if let Some(digest) = &args.expected_digest {
        check_digest(digest)?;
    }
    let input = Input::open(args.file.as_deref())?;
    let plan = IngestPlan {
        reference: args.reference,
        total: args.expected_size.unwrap_or(0),
        expected: args.expected_digest.unwrap_or_default(),
        labels: labels.into_iter().collect(),
    };
    let mode = progress::Mode::from_flags(args.progress, args.no_progress);

    let conn = ctx.connect().await?;
    // The lease keeps a half-written ingest from being collected while
    // this runs; it lapses by itself if the process dies. A run resuming
    // an ingest takes over the lease an earlier, failed run left.
    let (lease, created) = match leases::find_ingest_lease(&conn, &plan.reference, SystemTime::now()).await? {
        Some(lease) => (lease, false),
        None => (
            leases::create_ingest_lease(&conn, &plan.reference, INGEST_LEASE_TTL).await?,
            true,
        ),
    };
    let stage = Cell::new(Stage::Opening);
    let outcome = tokio::select! {
        outcome = write_content(&conn, &lease, &plan, input, mode, &stage) => outcome,
        signal = interruption() => Err(anyhow::anyhow!("ingest {:?} interrupted by {signal}", plan.reference)),
    };
    match lease_disposal(stage.get(), created, outcome.is_ok()) {
        LeaseDisposal::Release => release_lease(&conn, &lease).await,
        LeaseDisposal::LeaveToOwner => {}
        LeaseDisposal::KeepForResume => eprintln!(
            "corten: note: lease {lease} keeps the partial ingest {reference:?} for {hours}h: run the same \
             command again to resume, or `corten content abort {reference}` to discard it",
            reference = plan.reference,
            hours = INGEST_LEASE_TTL.as_secs() / 3600,
        ),
    }
    let digest = outcome?;
    Ok(output::print(&format!("{digest}\n"))?)
}

/// How far a write got, which decides what becomes of its lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// The daemon has not yet accepted the ref: it may belong to another
    /// run still going.
    Opening,
    /// Bytes are moving; stopping here leaves a resumable ingest.
    Transferring,
    /// Everything was sent: what is left is to store it or refuse it.
    Committing,
}

#[derive(Debug, PartialEq, Eq)]
enum LeaseDisposal {
    Release,
    /// Keep it so the partial ingest survives for a rerun to resume.
    KeepForResume,
    /// Not this run's to remove: it was taken over from an earlier run but
    /// the ref was never ours, so its owner may still be writing.
    LeaveToOwner,
}

fn lease_disposal(stage: Stage, created: bool, succeeded: bool) -> LeaseDisposal {
    match stage {
        Stage::Opening if !created => LeaseDisposal::LeaveToOwner,
        Stage::Transferring if !succeeded => LeaseDisposal::KeepForResume,
        _ => LeaseDisposal::Release,
    }
}

/// Removes the ingest's lease, warning (not failing) when that does not
/// work: the lease expires by itself.
async fn release_lease(conn: &Connection, lease: &str) {
    let mut client = conn.leases();
    let release = client.delete(DeleteLeaseRequest {
        id: lease.to_string(),
        sync: false,
    });
    let err = match tokio::time::timeout(LEASE_RELEASE_TIMEOUT, release).await {
        Ok(Ok(_)) => return,
        // Already gone is as good as removed.
        Ok(Err(status)) if status.code() == Code::NotFound => return,
        Ok(Err(status)) => rpc(status),
        Err(_) => anyhow::anyhow!("no answer within {LEASE_RELEASE_TIMEOUT:?}"),
    };
    let err = err.context(format!("removing temporary lease {lease:?} (it expires by itself)"));
    eprintln!("corten: warning: {}", error::one_line(&err));
}

/// How long cleanup may hold up the exit, since by then the user may be
/// pressing Ctrl-C to no effect.
const LEASE_RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams `input` into the write named by `plan`, resuming where the
/// daemon left off, and commits it; returns the stored digest.
async fn write_content(
    conn: &Connection,
    lease: &str,
    plan: &IngestPlan,
    mut input: Input,
    mode: progress::Mode,
    stage: &Cell<Stage>,
) -> anyhow::Result<String> {
    let context = || format!("ingest {:?}", plan.reference);
    let opened = open_session(conn.content(), lease, plan.stat()).await;
    let (mut session, status) = match opened {
        Ok(opened) => opened,
        // With an expected digest the daemon can tell up front that the
        // blob is already stored: nothing to send.
        Err(status) if status.code() == Code::AlreadyExists && !plan.expected.is_empty() => {
            return Ok(plan.expected.clone())
        }
        Err(status) => return Err(rpc(status).context(context())),
    };
    // From here until the commit, a failure leaves a resumable ingest.
    stage.set(Stage::Transferring);
    let offset = plan.resume_offset(status.offset)?;

    let size = u64::try_from(plan.total).ok().filter(|&t| t > 0).or(input.len);
    let progress = Progress::new(mode, &plan.reference, size);
    progress.resume_at(offset);

    let result = send_all(&mut session, plan, &mut input, offset, &progress).await;
    let (position, local_digest) = match result {
        Ok(sent) => sent,
        Err(err) => {
            progress.abandon();
            return Err(err.context(context()));
        }
    };
    progress.finish();

    // A failed commit leaves nothing worth resuming: the bytes are all
    // there and the daemon refused them (wrong size or digest).
    stage.set(Stage::Committing);
    match session.exchange(plan.commit(position)).await {
        Ok(reply) => {
            if let Some(local) = local_digest.filter(|d| !reply.digest.is_empty() && *d != reply.digest) {
                eprintln!(
                    "corten: warning: stored {} but the input hashes to {local}: \
                     the earlier part of ingest {:?} did not match this input",
                    reply.digest, plan.reference
                );
            }
            if reply.digest.is_empty() {
                bail!("{}: the daemon committed without naming the digest", context());
            }
            Ok(reply.digest)
        }
        // Someone stored the same bytes first: the blob is there, which is
        // what was asked for.
        Err(status) if status.code() == Code::AlreadyExists => {
            if !plan.expected.is_empty() {
                return Ok(plan.expected.clone());
            }
            match local_digest {
                Some(digest) => Ok(digest),
                None => input
                    .digest_from_start()
                    .context("hashing the input to name the stored blob"),
            }
        }
        Err(status) => Err(rpc(status).context(format!("committing {}", context()))),
    }
}

/// Sends the input past `offset` in WRITE messages; returns the final
/// offset and, when every byte of the input went through this process,
/// its digest.
async fn send_all(
    session: &mut WriteSession,
    plan: &IngestPlan,
    input: &mut Input,
    offset: u64,
    progress: &Progress,
) -> anyhow::Result<(u64, Option<String>)> {
    // A thread of its own reads, so a slow source never stalls the
    // connection and reading overlaps sending. It is detached rather than
    // a runtime task: on failure nothing waits for a read that may never
    // finish (a quiet pipe), and process exit ends it.
    let (chunks_tx, mut chunks) = mpsc::channel::<io::Result<Vec<u8>>>(2);
    let (done_tx, done) = oneshot::channel();
    let mut owned = input.take();
    std::thread::Builder::new()
        .name("ingest-reader".into())
        .spawn(move || {
            let digest = owned.feed(offset, &chunks_tx);
            drop(chunks_tx);
            let _ = done_tx.send((owned, digest));
        })
        .context("starting the input reader")?;

    let mut position = offset;
    let mut failure = None;
    while let Some(chunk) = chunks.recv().await {
        let sent = match chunk {
            Ok(chunk) => send_chunk(session, plan, position, chunk).await,
            Err(err) => Err(anyhow::Error::from(err).context("reading the input")),
        };
        match sent {
            Ok(len) => {
                position += len;
                progress.advance(len);
            }
            Err(err) => {
                failure = Some(err);
                break;
            }
        }
    }
    if let Some(err) = failure {
        // Dropping the receiver stops the reader at its next chunk.
        return Err(err);
    }
    let (owned, digest) = done.await.context("the input reader stopped unexpectedly")?;
    *input = owned;
    Ok((position, digest.filter(|_| !input.skipped_by_seek)))
}

async fn send_chunk(
    session: &mut WriteSession,
    plan: &IngestPlan,
    position: u64,
    chunk: Vec<u8>,
) -> anyhow::Result<u64> {
    let len = chunk.len() as u64;
    let reply = session.exchange(plan.write(position, chunk)).await.map_err(rpc)?;
    let now_at = position + len;
    if reply.offset != now_at as i64 {
        bail!(
            "the daemon is at offset {} after a write that should end at {now_at}",
            reply.offset
        );
    }
    Ok(len)
}

/// Opens a Write call under `lease` with `first` as its first message,
/// returning the session and the reply to that message.
async fn open_session(
    mut client: ContentClient,
    lease: &str,
    first: WriteContentRequest,
) -> Result<(WriteSession, WriteContentResponse), Status> {
    let lease = MetadataValue::try_from(lease)
        .map_err(|_| Status::invalid_argument(format!("lease id {lease:?} is not sendable as a header")))?;
    let (requests, outgoing) = mpsc::channel(1);
    // Queued before the call, since a server may wait for the first
    // message before it answers the call at all.
    requests
        .send(first)
        .await
        .map_err(|_| Status::internal("write stream closed before it opened"))?;
    let mut request = tonic::Request::new(ReceiverStream::new(outgoing));
    request.metadata_mut().insert(leases::LEASE_HEADER, lease);
    let replies = client.write(request).await?.into_inner();
    let mut session = WriteSession::new(requests, replies);
    let reply = session.reply().await?;
    Ok((session, reply))
}

/// Where ingest reads from: a file or stdin, both held as a file handle so
/// a regular file behind stdin (`< blob`) can be sized and seeked too.
struct Input {
    file: Option<File>,
    /// Position the content starts at (non-zero if stdin was partly read).
    start: u64,
    /// Bytes from `start` to the end, when the input is a regular file.
    len: Option<u64>,
    /// Whether a resumed prefix was skipped by seeking (so never hashed).
    skipped_by_seek: bool,
    name: String,
}

impl Input {
    fn open(path: Option<&Path>) -> anyhow::Result<Input> {
        let (file, name) = match path {
            None => (stdin_file()?, "stdin".to_string()),
            Some(p) if p.as_os_str() == "-" => (stdin_file()?, "stdin".to_string()),
            Some(p) => {
                let file = File::open(p).with_context(|| format!("opening {}", p.display()))?;
                (file, p.display().to_string())
            }
        };
        let meta = file.metadata().with_context(|| format!("reading {name}"))?;
        if meta.is_dir() {
            bail!("{name} is a directory");
        }
        let (start, len) = if meta.is_file() {
            let mut handle = &file;
            let start = handle.stream_position().with_context(|| format!("reading {name}"))?;
            (start, Some(meta.len().saturating_sub(start)))
        } else {
            (0, None)
        };
        Ok(Input {
            file: Some(file),
            start,
            len,
            skipped_by_seek: false,
            name,
        })
    }

    fn seekable(&self) -> bool {
        self.len.is_some()
    }

    /// Moves the input out for the reader thread.
    fn take(&mut self) -> Input {
        Input {
            file: self.file.take(),
            start: self.start,
            len: self.len,
            skipped_by_seek: false,
            name: self.name.clone(),
        }
    }

    /// Skips `offset` bytes, then sends the rest in chunks until the end,
    /// an error, or the receiver going away; returns the digest of
    /// everything read (skipped bytes included).
    fn feed(&mut self, offset: u64, chunks: &mpsc::Sender<io::Result<Vec<u8>>>) -> Option<String> {
        let Some(file) = self.file.as_mut() else {
            let _ = chunks.blocking_send(Err(io::Error::other("input already consumed")));
            return None;
        };
        let mut hasher = Sha256::new();
        let skipped = match self.len {
            Some(len) => seek_past(file, len, offset).map(|()| true),
            None => discard_prefix(file, offset, &mut hasher).map(|()| false),
        };
        match skipped {
            Ok(by_seek) => self.skipped_by_seek = by_seek && offset > 0,
            Err(err) => {
                let _ = chunks.blocking_send(Err(err));
                return None;
            }
        }
        loop {
            match read_chunk(file, CHUNK_SIZE) {
                Ok(chunk) if chunk.is_empty() => break,
                Ok(chunk) => {
                    hasher.update(&chunk);
                    if chunks.blocking_send(Ok(chunk)).is_err() {
                        return None;
                    }
                }
                Err(err) => {
                    let _ = chunks.blocking_send(Err(err));
                    return None;
                }
            }
        }
        Some(format!("sha256:{:x}", hasher.finalize()))
    }

    /// Hashes the whole input again from its start: only possible, and
    /// only needed, when a resumed prefix was skipped by seeking.
    fn digest_from_start(&mut self) -> anyhow::Result<String> {
        let Some(file) = self.file.as_mut().filter(|_| self.len.is_some()) else {
            bail!("{} cannot be read again", self.name);
        };
        file.seek(SeekFrom::Start(self.start))?;
        let mut hasher = Sha256::new();
        io::copy(file, &mut hasher)?;
        Ok(format!("sha256:{:x}", hasher.finalize()))
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input")
            .field("name", &self.name)
            .field("seekable", &self.seekable())
            .finish()
    }
}

/// stdin as a file handle of its own (a duplicate descriptor), so a
/// redirected regular file can be measured and seeked.
fn stdin_file() -> anyhow::Result<File> {
    let fd = io::stdin().as_fd().try_clone_to_owned().context("duplicating stdin")?;
    Ok(File::from(fd))
}

/// Skips `offset` bytes of a seekable input holding `len` bytes from its
/// current position.
fn seek_past<S: Seek>(input: &mut S, len: u64, offset: u64) -> io::Result<()> {
    if offset > len {
        return Err(short_input(offset, len));
    }
    let step = i64::try_from(offset).map_err(|_| short_input(offset, len))?;
    input.seek(SeekFrom::Current(step))?;
    Ok(())
}

/// Reads and drops the first `offset` bytes of a stream, feeding them to
/// `hasher`; fails if the stream ends first.
fn discard_prefix<R: Read, W: Write>(input: &mut R, offset: u64, hasher: &mut W) -> io::Result<()> {
    let copied = io::copy(&mut input.take(offset), hasher)?;
    if copied < offset {
        return Err(short_input(offset, copied));
    }
    Ok(())
}

fn short_input(offset: u64, available: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "the daemon already holds {offset} bytes of this ingest but the input has only {available}; \
             abort the ingest or use another ref"
        ),
    )
}

/// Reads until `size` bytes or the end: short reads from pipes are
/// gathered so every message but the last is full.
fn read_chunk<R: Read>(input: &mut R, size: usize) -> io::Result<Vec<u8>> {
    let mut chunk = Vec::with_capacity(size);
    input.take(size as u64).read_to_end(&mut chunk)?;
    Ok(chunk)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;

    fn plan(total: i64) -> IngestPlan {
        IngestPlan {
            reference: "ref-1".into(),
            total,
            expected: String::new(),
            labels: HashMap::new(),
        }
    }

    fn ts(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    /// A reader with no Seek, like a pipe, that also hands out at most a
    /// few bytes per read.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.0.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn what_becomes_of_the_lease() {
        use LeaseDisposal::*;
        // Success releases the lease, whoever created it, once the ref was ours.
        assert_eq!(lease_disposal(Stage::Committing, true, true), Release);
        assert_eq!(lease_disposal(Stage::Committing, false, true), Release);
        assert_eq!(lease_disposal(Stage::Opening, true, true), Release);
        // A refused commit leaves nothing worth resuming.
        assert_eq!(lease_disposal(Stage::Committing, true, false), Release);
        // A broken transfer keeps its data protected for a rerun.
        assert_eq!(lease_disposal(Stage::Transferring, true, false), KeepForResume);
        assert_eq!(lease_disposal(Stage::Transferring, false, false), KeepForResume);
        // A lease taken over from a run that may still hold the ref stays.
        assert_eq!(lease_disposal(Stage::Opening, false, false), LeaveToOwner);
        assert_eq!(lease_disposal(Stage::Opening, false, true), LeaveToOwner);
        // One this run made and never used goes.
        assert_eq!(lease_disposal(Stage::Opening, true, false), Release);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1_258_291), "1.2 MiB");
        assert_eq!(human_size(3_000_000), "2.9 MiB");
        assert_eq!(human_size(1024 * 1024 - 1), "1.0 MiB");
        assert_eq!(human_size(5 * 1024 * 1024 * 1024), "5.0 GiB");
        assert_eq!(human_size(i64::MAX), "8.0 EiB");
        assert_eq!(human_size(-1), "-");
    }

    #[test]
    fn human_ages() {
        let s = Duration::from_secs;
        assert_eq!(human_age(Duration::from_millis(300)), "Less than a second");
        assert_eq!(human_age(s(1)), "1 second");
        assert_eq!(human_age(s(59)), "59 seconds");
        assert_eq!(human_age(s(60)), "1 minute");
        assert_eq!(human_age(s(5 * 60 + 59)), "5 minutes");
        assert_eq!(human_age(s(3600)), "1 hour");
        assert_eq!(human_age(s(36 * 3600)), "36 hours");
        assert_eq!(human_age(s(2 * 86400)), "2 days");
        assert_eq!(human_age(s(20 * 86400)), "2 weeks");
        assert_eq!(human_age(s(90 * 86400)), "3 months");
        assert_eq!(human_age(s(3 * 365 * 86400)), "3 years");
    }

    #[test]
    fn digests_are_checked() {
        assert!(check_digest(&format!("sha256:{}", "0a".repeat(32))).is_ok());
        assert!(check_digest(&format!("sha512:{}", "f".repeat(128))).is_ok());
        for bad in [
            "abc".to_string(),
            "sha256:abc".to_string(),
            format!("md5:{}", "a".repeat(32)),
            format!("sha256:{}", "A".repeat(64)),
        ] {
            assert!(check_digest(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ingest_messages() {
        let mut p = plan(10);
        p.expected = format!("sha256:{}", "a".repeat(64));
        p.labels.insert("k".into(), "v".into());

        let stat = p.stat();
        assert_eq!(stat.action, WriteAction::Stat as i32);
        assert_eq!((stat.r#ref.as_str(), stat.total), ("ref-1", 10));
        assert_eq!(stat.expected, p.expected);
        assert!(stat.data.is_empty() && stat.labels.is_empty());

        let write = p.write(4, b"abc".to_vec());
        assert_eq!(write.action, WriteAction::Write as i32);
        assert_eq!((write.offset, write.data.as_slice()), (4, &b"abc"[..]));
        assert!(write.expected.is_empty() && write.labels.is_empty());

        let commit = p.commit(10);
        assert_eq!(commit.action, WriteAction::Commit as i32);
        assert_eq!((commit.offset, commit.total), (10, 10));
        assert_eq!(commit.expected, p.expected);
        assert_eq!(commit.labels["k"], "v");
        assert!(commit.data.is_empty());
    }

    #[test]
    fn resume_offsets() {
        assert_eq!(plan(0).resume_offset(0).unwrap(), 0);
        assert_eq!(plan(0).resume_offset(5_000).unwrap(), 5_000);
        assert_eq!(plan(10).resume_offset(10).unwrap(), 10);
        let err = plan(10).resume_offset(11).unwrap_err().to_string();
        assert!(err.contains("more than the expected size 10"), "{err}");
        assert!(plan(0).resume_offset(-1).is_err());
    }

    #[test]
    fn seekable_input_skips_by_seeking() {
        let mut input = Cursor::new(b"0123456789".to_vec());
        input.set_position(2);
        seek_past(&mut input, 8, 3).unwrap();
        assert_eq!(read_chunk(&mut input, 100).unwrap(), b"56789");

        let mut exact = Cursor::new(b"abc".to_vec());
        seek_past(&mut exact, 3, 3).unwrap();
        assert!(read_chunk(&mut exact, 100).unwrap().is_empty());

        let err = seek_past(&mut Cursor::new(b"abc".to_vec()), 3, 4).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn stream_input_skips_by_reading_and_hashes_the_prefix() {
        let data = b"hello, resumable world";
        let mut input = Trickle(data);
        let mut hasher = Sha256::new();
        discard_prefix(&mut input, 7, &mut hasher).unwrap();
        let rest = read_chunk(&mut input, 1 << 20).unwrap();
        assert_eq!(rest, b"resumable world");
        hasher.update(&rest);
        assert_eq!(hasher.finalize(), Sha256::digest(data));

        let err = discard_prefix(&mut Trickle(b"short"), 6, &mut io::sink()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
        assert!(err.to_string().contains("holds 6 bytes"), "{err}");
    }

    #[test]
    fn chunks_are_full_despite_short_reads() {
        let data: Vec<u8> = (0..20u8).collect();
        let mut input = Trickle(&data);
        assert_eq!(read_chunk(&mut input, 8).unwrap(), &data[..8]);
        assert_eq!(read_chunk(&mut input, 8).unwrap(), &data[8..16]);
        assert_eq!(read_chunk(&mut input, 8).unwrap(), &data[16..]);
        assert!(read_chunk(&mut input, 8).unwrap().is_empty());
    }

    #[test]
    fn feed_resumes_a_file_and_a_pipe() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..(CHUNK_SIZE + 100)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let whole = format!("sha256:{:x}", Sha256::digest(&data));

        let collect = |input: &mut Input, offset: u64| {
            let (tx, mut rx) = mpsc::channel(8);
            let digest = input.feed(offset, &tx);
            drop(tx);
            let mut got = Vec::new();
            while let Ok(chunk) = rx.try_recv() {
                got.push(chunk.unwrap());
            }
            (got, digest)
        };

        // A regular file: the resumed prefix is seeked over, not hashed.
        let mut file = Input::open(Some(&path)).unwrap();
        assert_eq!(file.len, Some(data.len() as u64));
        let (chunks, _) = collect(&mut file, 10);
        assert!(file.skipped_by_seek);
        assert_eq!(chunks.len(), 2);
        assert_eq!(chunks[0].len(), CHUNK_SIZE);
        assert_eq!(chunks.concat(), &data[10..]);
        assert_eq!(file.digest_from_start().unwrap(), whole);

        // From the start, every byte passes through and is hashed.
        let mut fresh = Input::open(Some(&path)).unwrap();
        let (chunks, digest) = collect(&mut fresh, 0);
        assert!(!fresh.skipped_by_seek);
        assert_eq!(chunks.concat(), data);
        assert_eq!(digest.unwrap(), whole);
    }

    #[test]
    fn blob_table_layout() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let digest = format!("sha256:{}", "a".repeat(64));
        let blobs = vec![
            Info {
                digest: digest.clone(),
                size: 1_258_291,
                created_at: Some(ts(1_000_000 - 300)),
                updated_at: None,
                labels: [("b", "2"), ("a", "1")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            Info {
                digest: "sha256:b".into(),
                size: 6,
                created_at: None,
                ..Default::default()
            },
        ];
        let pad = " ".repeat(digest.len() - "sha256:b".len());
        assert_eq!(
            blob_table(&blobs, now).render(),
            format!(
                "DIGEST{}   SIZE      AGE         LABELS\n\
                 {digest}   1.2 MiB   5 minutes   a=1,b=2\n\
                 sha256:b{pad}   6 B       -           -\n",
                " ".repeat(digest.len() - "DIGEST".len())
            )
        );
    }

    #[test]
    fn ingest_table_layout() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let statuses = vec![
            IngestStatus {
                r#ref: "layer-1".into(),
                offset: 2 * 1024 * 1024,
                total: 3 * 1024 * 1024,
                started_at: Some(ts(1_000 - 120)),
                updated_at: Some(ts(1_000 - 2)),
                ..Default::default()
            },
            IngestStatus {
                r#ref: "x".into(),
                offset: 10,
                ..Default::default()
            },
        ];
        assert_eq!(
            ingest_table(&statuses, now).render(),
            "REF       SIZE      TOTAL     STARTED         UPDATED\n\
             layer-1   2.0 MiB   3.0 MiB   2 minutes ago   2 seconds ago\n\
             x         10 B      -         -               -\n"
        );
    }

    #[test]
    fn label_update_names_cleared_keys_without_values() {
        let labels = labels::parse(&["b=2".into(), "a=".into()]).unwrap();
        let request = label_update("sha256:x".into(), labels);
        assert_eq!(request.update_mask.unwrap().paths, ["labels.a", "labels.b"]);
        let info = request.info.unwrap();
        assert_eq!(info.digest, "sha256:x");
        assert_eq!(info.labels.len(), 1);
        assert_eq!(info.labels["b"], "2");
    }
}
