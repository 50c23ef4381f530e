//! `corten namespaces ...`: create, list, label and remove namespaces.

use std::collections::{BTreeMap, HashMap};

use clap::Subcommand;
use corten_api::containerd::services::namespaces::v1::{
    CreateNamespaceRequest, DeleteNamespaceRequest, GetNamespaceRequest, ListNamespacesRequest, Namespace,
    UpdateNamespaceRequest,
};
use prost_types::FieldMask;
use serde::Serialize;

use super::Context;
use crate::{
    error::{rpc, Removals},
    labels,
    output::{self, Format, Table},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: NamespacesCommand,
}

#[derive(Debug, Subcommand)]
enum NamespacesCommand {
    /// Create a namespace, optionally with labels
    Create {
        name: String,
        /// Labels to set; a bare KEY means KEY=true
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List namespaces
    #[command(visible_alias = "list")]
    Ls {
        /// Print only the names
        #[arg(short, long)]
        quiet: bool,
    },
    /// Set labels on a namespace; `KEY=` clears KEY
    Label {
        name: String,
        #[arg(value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// Remove namespaces, which must be empty
    #[command(visible_aliases = ["remove", "delete"])]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        NamespacesCommand::Create { name, labels } => create(ctx, name, &labels).await,
        NamespacesCommand::Ls { quiet } => ls(ctx, quiet).await,
        NamespacesCommand::Label { name, labels } => label(ctx, name, &labels).await,
        NamespacesCommand::Rm { names } => rm(ctx, names).await,
    }
}

async fn create(ctx: &Context, name: String, label_args: &[String]) -> anyhow::Result<()> {
    // Bad arguments are reported before touching the daemon.
    let labels = labels::parse(label_args)?;
    let conn = ctx.connect().await?;
    let namespace = Namespace {
        name,
        labels: labels.into_iter().collect(),
    };
    conn.namespaces()
        .create(CreateNamespaceRequest {
            namespace: Some(namespace),
        })
        .await
        .map_err(rpc)?;
    Ok(())
}

#[derive(Debug, Serialize)]
struct NamespaceView {
    name: String,
    labels: BTreeMap<String, String>,
}

async fn ls(ctx: &Context, quiet: bool) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let list = conn
        .namespaces()
        .list(ListNamespacesRequest::default())
        .await
        .map_err(rpc)?
        .into_inner()
        .namespaces;
    if quiet {
        let names: String = list.iter().map(|ns| format!("{}\n", ns.name)).collect();
        return Ok(output::print(&names)?);
    }
    match ctx.format {
        Format::Json => {
            let views: Vec<NamespaceView> = list
                .into_iter()
                .map(|ns| NamespaceView {
                    name: ns.name,
                    labels: ns.labels.into_iter().collect(),
                })
                .collect();
            output::print_json(&views)
        }
        Format::Table => Ok(namespace_table(&list).print()?),
    }
}

fn namespace_table(list: &[Namespace]) -> Table {
    let mut table = Table::new(&["NAME", "LABELS"]);
    for ns in list {
        table.row([ns.name.clone(), labels::format(&ns.labels)]);
    }
    table
}

async fn label(ctx: &Context, name: String, label_args: &[String]) -> anyhow::Result<()> {
    let labels = labels::parse(label_args)?;
    let conn = ctx.connect().await?;
    let mut client = conn.namespaces();
    if labels.is_empty() {
        // Nothing to change, but a mistyped name should still be reported.
        client.get(GetNamespaceRequest { name }).await.map_err(rpc)?;
        return Ok(());
    }
    client.update(label_update(name, labels)).await.map_err(rpc)?;
    Ok(())
}

/// One Update touching only the given keys, so labels set by others stay
/// and all changes land together. An empty value in the request, under a
/// `labels.KEY` path, is how the daemon is told to drop KEY.
fn label_update(name: String, labels: BTreeMap<String, String>) -> UpdateNamespaceRequest {
    let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
    UpdateNamespaceRequest {
        namespace: Some(Namespace {
            name,
            labels: labels.into_iter().collect::<HashMap<_, _>>(),
        }),
        update_mask: Some(FieldMask { paths }),
    }
}

/// Keeps going past a failed name so one bad argument does not leave the
/// rest in place; each failure gets its own line and the exit status says
/// whether all went.
async fn rm(ctx: &Context, names: Vec<String>) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let mut client = conn.namespaces();
    let mut removals = Removals::default();
    for name in names {
        let request = DeleteNamespaceRequest { name: name.clone() };
        match client.delete(request).await {
            Ok(_) => removals.removed(&name),
            Err(status) => removals.failed(&rpc(status)),
        }
    }
    removals.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_update_masks_only_named_keys() {
        let labels = labels::parse(&["b=2".into(), "a=".into()]).unwrap();
        let request = label_update("ns1".into(), labels);
        assert_eq!(request.update_mask.unwrap().paths, ["labels.a", "labels.b"]);
        let ns = request.namespace.unwrap();
        assert_eq!(ns.name, "ns1");
        assert_eq!(ns.labels["a"], "");
        assert_eq!(ns.labels["b"], "2");
    }

    #[test]
    fn table_shows_sorted_labels() {
        let list = vec![
            Namespace {
                name: "default".into(),
                labels: HashMap::new(),
            },
            Namespace {
                name: "prod".into(),
                labels: [("z", "1"), ("a", "2")]
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
        ];
        assert_eq!(
            namespace_table(&list).render(),
            "NAME      LABELS\n\
             default\n\
             prod      a=2,z=1\n"
        );
    }
}
