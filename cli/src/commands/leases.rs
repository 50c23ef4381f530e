//! `corten leases ...`: create, list, inspect and remove leases, the named
//! holds that keep resources safe from garbage collection. Also the
//! temporary lease other commands take out while they build something.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::Context as _;
use clap::Subcommand;
use corten_api::containerd::services::leases::v1::{
    CreateRequest, DeleteRequest, Lease, ListRequest, ListResourcesRequest, Resource,
};
use prost_types::Timestamp;
use serde::Serialize;

use super::Context;
use crate::{
    client::Connection,
    duration,
    error::{rpc, Removals},
    labels,
    output::{self, Format, Table},
};

/// The gRPC metadata key naming the lease a request works under.
pub const LEASE_HEADER: &str = "containerd-lease";
/// Label holding the RFC 3339 time after which a lease protects nothing.
pub const EXPIRE_LABEL: &str = "containerd.io/gc.expire";

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: LeasesCommand,
}

#[derive(Debug, Subcommand)]
enum LeasesCommand {
    /// List leases
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the ids
        #[arg(short, long)]
        quiet: bool,
        /// Only leases matching any one filter, e.g. `id==build-1` or `labels.owner==ci`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Create a lease and print its id
    Create {
        /// Id for the lease; a random one when absent
        #[arg(long)]
        id: Option<String>,
        /// Let the lease lapse after this long (e.g. 30m, 24h); 0 or absent never expires
        #[arg(short = 'x', long, value_parser = duration::parse, value_name = "DURATION")]
        expires: Option<Duration>,
        /// Label to set; a bare KEY means KEY=true (repeatable)
        #[arg(long = "label", value_name = "KEY=VALUE")]
        label_flags: Vec<String>,
        /// Labels given the way ctr takes them; same as --label
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove leases, letting go of what they held
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        /// Wait until the garbage collector has removed what only these leases held
        #[arg(long)]
        sync: bool,
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// List the resources a lease holds
    Resources {
        #[arg(value_name = "ID")]
        id: String,
    },
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        LeasesCommand::Ls { quiet, filters } => ls(ctx, quiet, filters).await,
        LeasesCommand::Create {
            id,
            expires,
            label_flags,
            labels,
        } => create(ctx, id, expires, &[label_flags, labels].concat()).await,
        LeasesCommand::Rm { sync, ids } => rm(ctx, sync, ids).await,
        LeasesCommand::Resources { id } => resources(ctx, id).await,
    }
}

/// A lease as this command shows it; also the JSON shape.
#[derive(Debug, Serialize)]
struct LeaseView {
    id: String,
    created_at: Option<String>,
    labels: BTreeMap<String, String>,
}

async fn ls(ctx: &Context, quiet: bool, filters: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let leases = conn
        .leases()
        .list(ListRequest { filters })
        .await
        .map_err(rpc)?
        .into_inner()
        .leases;
    if quiet {
        let ids: String = leases.iter().map(|l| format!("{}\n", l.id)).collect();
        return Ok(output::print(&ids)?);
    }
    match ctx.format {
        Format::Json => {
            let views: Vec<LeaseView> = leases
                .into_iter()
                .map(|l| LeaseView {
                    created_at: rfc3339(l.created_at.as_ref()),
                    id: l.id,
                    labels: l.labels.into_iter().collect(),
                })
                .collect();
            output::print_json(&views)
        }
        Format::Table => Ok(lease_table(&leases).print()?),
    }
}

fn lease_table(leases: &[Lease]) -> Table {
    let mut table = Table::new(&["ID", "CREATED AT", "LABELS"]);
    for lease in leases {
        table.row([
            lease.id.clone(),
            rfc3339_seconds(lease.created_at.as_ref()).unwrap_or_else(|| "-".into()),
            labels_cell(&lease.labels),
        ]);
    }
    table
}

/// Labels for a table cell; `-` when there are none, as ctr shows them.
pub fn labels_cell(labels: &std::collections::HashMap<String, String>) -> String {
    if labels.is_empty() {
        "-".into()
    } else {
        labels::format(labels)
    }
}

async fn create(
    ctx: &Context,
    id: Option<String>,
    expires: Option<Duration>,
    label_args: &[String],
) -> anyhow::Result<()> {
    let labels = labels::parse(label_args)?;
    let now = SystemTime::now();
    let request = create_request(id.unwrap_or_else(|| random_id(now)), expires, labels, now);
    let requested = request.id.clone();
    let conn = ctx.connect().await?;
    let lease = conn.leases().create(request).await.map_err(rpc)?.into_inner().lease;
    let id = lease.map(|l| l.id).filter(|id| !id.is_empty()).unwrap_or(requested);
    Ok(output::print(&format!("{id}\n"))?)
}

/// The Create call for a lease. An expiry becomes the label the garbage
/// collector reads, overriding one given among `labels`; a zero expiry
/// means none, as with ctr.
fn create_request(
    id: String,
    expires: Option<Duration>,
    mut labels: BTreeMap<String, String>,
    now: SystemTime,
) -> CreateRequest {
    if let Some(ttl) = expires.filter(|d| !d.is_zero()) {
        labels.insert(EXPIRE_LABEL.to_string(), expiry(now, ttl));
    }
    CreateRequest {
        id,
        labels: labels.into_iter().collect(),
    }
}

/// `now + ttl` in RFC 3339, UTC, whole seconds: what the GC compares to.
fn expiry(now: SystemTime, ttl: Duration) -> String {
    humantime::format_rfc3339_seconds(now + ttl).to_string()
}

/// A fresh lease id: the clock's nanoseconds plus random characters, so
/// ids made in the same instant by different processes still differ. Only
/// letters, digits and one `-`, which any identifier check accepts.
pub fn random_id(now: SystemTime) -> String {
    let nanos = now.duration_since(UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{nanos}-{}", &random[..8])
}

/// Label on the temporary lease an ingest works under, naming the ingest,
/// so a later run resuming it can take the lease over.
pub const INGEST_REF_LABEL: &str = "corten.io/ingest.ref";

/// Takes out a lease for the ingest `reference` that lapses by itself
/// after `ttl`, so work that crashes half-way is not protected forever;
/// returns its id.
pub async fn create_ingest_lease(conn: &Connection, reference: &str, ttl: Duration) -> anyhow::Result<String> {
    let now = SystemTime::now();
    let labels = BTreeMap::from([(INGEST_REF_LABEL.to_string(), reference.to_string())]);
    let request = create_request(random_id(now), Some(ttl), labels, now);
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

/// The lease an earlier run of the ingest `reference` left behind, if it
/// has not expired yet.
pub async fn find_ingest_lease(conn: &Connection, reference: &str, now: SystemTime) -> anyhow::Result<Option<String>> {
    // Filtering here rather than in the daemon spares quoting a ref that
    // may hold any character in filter syntax.
    let leases = conn
        .leases()
        .list(ListRequest::default())
        .await
        .map_err(rpc)
        .context("looking for the lease of an earlier ingest")?
        .into_inner()
        .leases;
    Ok(pick_ingest_lease(&leases, reference, now))
}

fn pick_ingest_lease(leases: &[Lease], reference: &str, now: SystemTime) -> Option<String> {
    leases
        .iter()
        .filter(|l| l.labels.get(INGEST_REF_LABEL).map(String::as_str) == Some(reference))
        .find(|l| !expired(l, now))
        .map(|l| l.id.clone())
}

/// Whether the lease's expiry label lies in the past. One that cannot be
/// read counts as expired: the daemon's view of it is unknown.
fn expired(lease: &Lease, now: SystemTime) -> bool {
    match lease.labels.get(EXPIRE_LABEL) {
        None => false,
        Some(text) => humantime::parse_rfc3339_weak(text).map_or(true, |at| at <= now),
    }
}

/// Keeps going past a failed id, one error line apiece; the exit status
/// says whether all went.
async fn rm(ctx: &Context, sync: bool, ids: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut client = conn.leases();
    let mut removals = Removals::default();
    for id in ids {
        match client.delete(DeleteRequest { id: id.clone(), sync }).await {
            Ok(_) => removals.removed(&id),
            Err(status) => removals.failed(&rpc(status)),
        }
    }
    removals.finish()
}

#[derive(Debug, Serialize)]
struct ResourceView {
    #[serde(rename = "type")]
    kind: String,
    id: String,
}

async fn resources(ctx: &Context, id: String) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let resources = conn
        .leases()
        .list_resources(ListResourcesRequest { id })
        .await
        .map_err(rpc)?
        .into_inner()
        .resources;
    match ctx.format {
        Format::Json => {
            let views: Vec<ResourceView> = resources
                .into_iter()
                .map(|r| ResourceView {
                    kind: r.r#type,
                    id: r.id,
                })
                .collect();
            output::print_json(&views)
        }
        Format::Table => Ok(resource_table(&resources).print()?),
    }
}

fn resource_table(resources: &[Resource]) -> Table {
    let mut table = Table::new(&["TYPE", "ID"]);
    for r in resources {
        table.row([r.r#type.clone(), r.id.clone()]);
    }
    table
}

/// Latest instant RFC 3339 can write with a four-digit year.
const LAST_RFC3339_SECOND: i64 = 253_402_300_799;

/// A protobuf timestamp as a point in time, when it is set and
/// representable. Go daemons send their zero time (year 1) for "never",
/// which, like anything before 1970, counts as unset here.
pub fn system_time(ts: Option<&Timestamp>) -> Option<SystemTime> {
    ts.filter(|t| (0..=LAST_RFC3339_SECOND).contains(&t.seconds))
        .and_then(|t| SystemTime::try_from(*t).ok())
}

/// Full precision, for JSON.
pub fn rfc3339(ts: Option<&Timestamp>) -> Option<String> {
    system_time(ts).map(|t| humantime::format_rfc3339(t).to_string())
}

/// Whole seconds, for tables.
pub fn rfc3339_seconds(ts: Option<&Timestamp>) -> Option<String> {
    system_time(ts).map(|t| humantime::format_rfc3339_seconds(t).to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn expiry_is_rfc3339_utc_seconds() {
        // 2021-01-01T00:00:00Z plus a day.
        assert_eq!(
            expiry(at(1_609_459_200), Duration::from_secs(24 * 3600)),
            "2021-01-02T00:00:00Z"
        );
        assert_eq!(
            expiry(at(1_609_459_200) + Duration::from_millis(700), Duration::from_secs(90)),
            "2021-01-01T00:01:30Z"
        );
    }

    #[test]
    fn create_request_adds_expiry_only_when_asked() {
        let now = at(1_609_459_200);
        let plain = create_request("a".into(), None, BTreeMap::new(), now);
        assert_eq!(plain.id, "a");
        assert!(plain.labels.is_empty());

        let never = create_request("a".into(), Some(Duration::ZERO), BTreeMap::new(), now);
        assert!(never.labels.is_empty());

        let given = labels::parse(&["owner=ci".into(), format!("{EXPIRE_LABEL}=stale")]).unwrap();
        let timed = create_request("b".into(), Some(Duration::from_secs(3600)), given, now);
        assert_eq!(timed.labels["owner"], "ci");
        assert_eq!(timed.labels[EXPIRE_LABEL], "2021-01-01T01:00:00Z");
    }

    #[test]
    fn random_ids_are_simple_and_distinct() {
        let now = at(5) + Duration::from_nanos(42);
        let a = random_id(now);
        let b = random_id(now);
        assert_ne!(a, b);
        let (nanos, rest) = a.split_once('-').unwrap();
        assert_eq!(nanos, "42");
        assert_eq!(rest.len(), 8);
        assert!(rest.chars().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn an_unexpired_lease_of_the_same_ingest_is_reused() {
        let now = at(1_609_459_200);
        let lease = |id: &str, reference: &str, expires: Option<&str>| {
            let mut labels = HashMap::from([(INGEST_REF_LABEL.to_string(), reference.to_string())]);
            if let Some(at) = expires {
                labels.insert(EXPIRE_LABEL.to_string(), at.to_string());
            }
            Lease {
                id: id.into(),
                created_at: None,
                labels,
            }
        };
        let leases = vec![
            lease("other", "ref-2", None),
            lease("stale", "ref-1", Some("2020-12-31T23:00:00Z")),
            lease("garbled", "ref-1", Some("tomorrow")),
            lease("live", "ref-1", Some("2021-01-02T00:00:00Z")),
        ];
        assert_eq!(pick_ingest_lease(&leases, "ref-1", now).as_deref(), Some("live"));
        assert_eq!(pick_ingest_lease(&leases, "ref-2", now).as_deref(), Some("other"));
        assert_eq!(pick_ingest_lease(&leases, "ref-3", now), None);
        assert_eq!(pick_ingest_lease(&leases[1..3], "ref-1", now), None);
    }

    #[test]
    fn table_layout() {
        let leases = vec![
            Lease {
                id: "build-1".into(),
                created_at: Some(Timestamp {
                    seconds: 1_609_459_200,
                    nanos: 5,
                }),
                labels: [(EXPIRE_LABEL.to_string(), "2021-01-02T00:00:00Z".to_string())].into(),
            },
            Lease {
                id: "x".into(),
                created_at: None,
                labels: HashMap::new(),
            },
        ];
        assert_eq!(
            lease_table(&leases).render(),
            "ID        CREATED AT             LABELS\n\
             build-1   2021-01-01T00:00:00Z   containerd.io/gc.expire=2021-01-02T00:00:00Z\n\
             x         -                      -\n"
        );
    }

    #[test]
    fn resource_table_layout() {
        let resources = vec![Resource {
            id: "sha256:ab".into(),
            r#type: "content".into(),
        }];
        assert_eq!(
            resource_table(&resources).render(),
            "TYPE      ID\n\
             content   sha256:ab\n"
        );
    }

    #[test]
    fn timestamps_render_both_ways() {
        let ts = Timestamp {
            seconds: 1_609_459_200,
            nanos: 500_000_000,
        };
        assert_eq!(rfc3339(Some(&ts)).unwrap(), "2021-01-01T00:00:00.500000000Z");
        assert_eq!(rfc3339_seconds(Some(&ts)).unwrap(), "2021-01-01T00:00:00Z");
        assert_eq!(rfc3339(None), None);
        // Go's zero time, and a year past 9999.
        let go_zero = Timestamp {
            seconds: -62_135_596_800,
            nanos: 0,
        };
        assert_eq!(rfc3339(Some(&go_zero)), None);
        let far = Timestamp {
            seconds: LAST_RFC3339_SECOND + 1,
            nanos: 0,
        };
        assert_eq!(rfc3339_seconds(Some(&far)), None);
    }

    #[test]
    fn create_accepts_labels_both_ways() {
        use clap::Parser;

        #[derive(Debug, Parser)]
        struct Probe {
            #[command(subcommand)]
            command: LeasesCommand,
        }
        let probe = Probe::try_parse_from(["x", "create", "--label", "a=1", "b=2", "-x", "24h", "--id", "l1"]).unwrap();
        match probe.command {
            LeasesCommand::Create {
                id,
                expires,
                label_flags,
                labels,
            } => {
                assert_eq!(id.as_deref(), Some("l1"));
                assert_eq!(expires, Some(Duration::from_secs(24 * 3600)));
                assert_eq!(label_flags, ["a=1"]);
                assert_eq!(labels, ["b=2"]);
            }
            other => panic!("{other:?}"),
        }
    }
}
