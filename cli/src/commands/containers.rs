//! `corten containers ...`: container records (what `corten run` creates
//! before it starts a task): list them, show one with its spec, remove
//! them together with their snapshots.

use std::collections::BTreeMap;

use anyhow::{bail, Context as _};
use clap::Subcommand;
use corten_api::containerd::{
    services::{
        containers::v1::{Container, DeleteContainerRequest, GetContainerRequest, ListContainersRequest},
        snapshots::v1::RemoveSnapshotRequest,
        tasks::v1::{DeleteTaskRequest, GetRequest},
    },
    v1::types::Status,
};
use prost_types::Any;
use serde::Serialize;
use serde_json::Value;
use tonic::Code;

use super::{leases::rfc3339, tasks::status_name, Context};
use crate::{
    client::Connection,
    error::{self, rpc, AlreadyReported},
    output::{self, Format, Table},
    run::{spec::SPEC_TYPE_URL, stdio},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: ContainersCommand,
}

#[derive(Debug, Subcommand)]
enum ContainersCommand {
    /// List containers
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the container IDs
        #[arg(short, long)]
        quiet: bool,
        /// Only containers matching any one filter, e.g. `image==docker.io/library/busybox:latest` or `labels.a==b`
        #[arg(value_name = "FILTER")]
        filters: Vec<String>,
    },
    /// Show a container's record, its spec decoded, as JSON
    Info {
        /// Show only the spec
        #[arg(long)]
        spec: bool,
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Remove containers and their snapshots; a stopped task is removed with its container
    #[command(visible_aliases = ["remove", "delete", "del"])]
    Rm {
        /// Leave the container's snapshot in place
        #[arg(long)]
        keep_snapshot: bool,
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        ContainersCommand::Ls { quiet, filters } => ls(ctx, quiet, filters).await,
        ContainersCommand::Info { spec, id } => info(ctx, spec, &id).await,
        ContainersCommand::Rm { keep_snapshot, ids } => rm(ctx, keep_snapshot, ids).await,
    }
}

#[derive(Debug, Serialize)]
struct ContainerView {
    id: String,
    image: String,
    runtime: String,
    snapshotter: String,
    snapshot_key: String,
    labels: BTreeMap<String, String>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

async fn ls(ctx: &Context, quiet: bool, filters: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut containers = conn
        .containers()
        .list(ListContainersRequest { filters })
        .await
        .map_err(rpc)
        .context("listing containers")?
        .into_inner()
        .containers;
    containers.sort_by(|a, b| a.id.cmp(&b.id));
    if quiet {
        let text: String = containers.iter().map(|c| format!("{}\n", c.id)).collect();
        return Ok(output::print(&text)?);
    }
    match ctx.format {
        Format::Json => {
            let views: Vec<ContainerView> = containers
                .into_iter()
                .map(|c| ContainerView {
                    runtime: runtime_name(&c).to_string(),
                    created_at: rfc3339(c.created_at.as_ref()),
                    updated_at: rfc3339(c.updated_at.as_ref()),
                    id: c.id,
                    image: c.image,
                    snapshotter: c.snapshotter,
                    snapshot_key: c.snapshot_key,
                    labels: c.labels.into_iter().collect(),
                })
                .collect();
            output::print_json(&views)
        }
        Format::Table => Ok(container_table(&containers).print()?),
    }
}

fn runtime_name(c: &Container) -> &str {
    c.runtime.as_ref().map_or("", |r| r.name.as_str())
}

fn container_table(containers: &[Container]) -> Table {
    let mut table = Table::new(&["CONTAINER", "IMAGE", "RUNTIME"]);
    for c in containers {
        let image = if c.image.is_empty() { "-" } else { c.image.as_str() };
        table.row([c.id.as_str(), image, runtime_name(c)]);
    }
    table
}

pub(crate) async fn get_container(conn: &Connection, id: &str) -> anyhow::Result<Container> {
    conn.containers()
        .get(GetContainerRequest { id: id.to_string() })
        .await
        .map_err(rpc)
        .with_context(|| format!("container {id:?}"))?
        .into_inner()
        .container
        .with_context(|| format!("container {id:?}: the daemon sent no record"))
}

/// The container's spec as JSON, when it carries one in the usual form.
pub(crate) fn spec_json(container: &Container) -> anyhow::Result<Value> {
    let Some(spec) = container.spec.as_ref() else {
        bail!("container {:?} has no spec", container.id);
    };
    if spec.type_url != SPEC_TYPE_URL {
        bail!("container {:?}: unexpected spec type {:?}", container.id, spec.type_url);
    }
    serde_json::from_slice(&spec.value).with_context(|| format!("container {:?}: parsing its spec", container.id))
}

/// An Any as ctr's JSON shows it: the type, and the bytes in base64 when
/// there are any.
#[derive(Debug, Serialize)]
struct AnyView {
    type_url: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    value: String,
}

impl From<&Any> for AnyView {
    fn from(any: &Any) -> Self {
        AnyView {
            type_url: any.type_url.clone(),
            value: base64(&any.value),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct RuntimeInfo {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    options: Option<AnyView>,
}

/// A container in the JSON shape `ctr containers info` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
struct CtrInfo {
    #[serde(rename = "ID")]
    id: String,
    labels: Option<BTreeMap<String, String>>,
    image: String,
    runtime: RuntimeInfo,
    snapshot_key: String,
    snapshotter: String,
    created_at: Option<String>,
    updated_at: Option<String>,
    extensions: Option<BTreeMap<String, AnyView>>,
    spec: Value,
}

async fn info(ctx: &Context, spec_only: bool, id: &str) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let container = get_container(&conn, id).await?;
    let spec = match &container.spec {
        Some(_) => spec_json(&container)?,
        None => Value::Null,
    };
    if spec_only {
        return output::print(&ctr_json(&spec)?).map_err(Into::into);
    }
    let view = CtrInfo {
        labels: (!container.labels.is_empty()).then(|| container.labels.clone().into_iter().collect()),
        image: container.image.clone(),
        runtime: RuntimeInfo {
            name: runtime_name(&container).to_string(),
            options: container
                .runtime
                .as_ref()
                .and_then(|r| r.options.as_ref())
                .map(AnyView::from),
        },
        snapshot_key: container.snapshot_key.clone(),
        snapshotter: container.snapshotter.clone(),
        created_at: rfc3339(container.created_at.as_ref()),
        updated_at: rfc3339(container.updated_at.as_ref()),
        extensions: (!container.extensions.is_empty()).then(|| {
            container
                .extensions
                .iter()
                .map(|(k, v)| (k.clone(), AnyView::from(v)))
                .collect()
        }),
        spec,
        id: container.id,
    };
    Ok(output::print(&ctr_json(&view)?)?)
}

/// JSON indented with four spaces, as ctr prints records.
fn ctr_json<T: Serialize>(value: &T) -> anyhow::Result<String> {
    let mut bytes = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut bytes, serde_json::ser::PrettyFormatter::with_indent(b"    "));
    value.serialize(&mut serializer)?;
    bytes.push(b'\n');
    Ok(String::from_utf8(bytes)?)
}

/// Standard base64 with padding, as Go encodes bytes in JSON.
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

async fn rm(ctx: &Context, keep_snapshot: bool, ids: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut failed = 0;
    for id in &ids {
        if let Err(err) = remove_container(&conn, id, keep_snapshot).await {
            error::report(&err);
            failed += 1;
        }
    }
    if failed > 0 {
        return Err(AlreadyReported(failed).into());
    }
    Ok(())
}

/// Removes container `id` as ctr does: a task it still has goes first if
/// it is stopped (or never started), a live one makes this an error; then
/// the record, then (unless kept) its snapshot.
pub(crate) async fn remove_container(conn: &Connection, id: &str, keep_snapshot: bool) -> anyhow::Result<()> {
    let container = get_container(conn, id).await?;
    let task = conn
        .tasks()
        .get(GetRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })
        .await;
    match task {
        Ok(reply) => {
            if let Some(process) = reply.into_inner().process {
                let status = process.status();
                if !matches!(status, Status::Stopped | Status::Created) {
                    bail!(
                        "cannot remove container {id:?}: its task is {} (kill it first)",
                        status_name(status)
                    );
                }
                match conn
                    .tasks()
                    .delete(DeleteTaskRequest {
                        container_id: id.to_string(),
                    })
                    .await
                {
                    Ok(_) => {}
                    Err(status) if status.code() == Code::NotFound => {}
                    Err(status) => return Err(rpc(status).context(format!("removing the task of {id:?}"))),
                }
                stdio::remove_fifo_dir(&[&process.stdin, &process.stdout, &process.stderr]);
            }
        }
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => return Err(rpc(status).context(format!("looking up the task of {id:?}"))),
    }
    conn.containers()
        .delete(DeleteContainerRequest { id: id.to_string() })
        .await
        .map_err(rpc)
        .with_context(|| format!("removing container {id:?}"))?;
    if !keep_snapshot && !container.snapshot_key.is_empty() && !container.snapshotter.is_empty() {
        let request = RemoveSnapshotRequest {
            snapshotter: container.snapshotter.clone(),
            key: container.snapshot_key.clone(),
        };
        match conn.snapshots().remove(request).await {
            Ok(_) => {}
            Err(status) if status.code() == Code::NotFound => {}
            Err(status) => {
                return Err(rpc(status).context(format!(
                    "removing snapshot {:?} of container {id:?}",
                    container.snapshot_key
                )))
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use corten_api::containerd::services::containers::v1::container::Runtime;

    #[test]
    fn base64_pads_like_the_standard() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(b"foob"), "Zm9vYg==");
    }

    #[test]
    fn table_shows_id_image_runtime() {
        let c = Container {
            id: "c1".into(),
            image: "docker.io/library/busybox:latest".into(),
            runtime: Some(Runtime {
                name: "io.containerd.runc.v2".into(),
                options: None,
            }),
            ..Default::default()
        };
        let bare = Container {
            id: "c2".into(),
            ..Default::default()
        };
        assert_eq!(
            container_table(&[c, bare]).render(),
            "CONTAINER   IMAGE                              RUNTIME\n\
             c1          docker.io/library/busybox:latest   io.containerd.runc.v2\n\
             c2          -\n"
        );
    }

    #[test]
    fn spec_is_read_from_its_any() {
        let mut c = Container {
            id: "c".into(),
            spec: Some(Any {
                type_url: SPEC_TYPE_URL.into(),
                value: br#"{"ociVersion":"1.0.2-dev"}"#.to_vec(),
            }),
            ..Default::default()
        };
        assert_eq!(spec_json(&c).unwrap()["ociVersion"], "1.0.2-dev");
        c.spec.as_mut().unwrap().type_url = "other".into();
        assert!(spec_json(&c).is_err());
        c.spec = None;
        assert!(spec_json(&c).is_err());
    }
}
