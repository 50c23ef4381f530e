//! `corten plugins ls`: what the daemon loaded, and why anything did not.

use std::collections::{BTreeMap, BTreeSet};

use clap::Subcommand;
use corten_api::{
    containerd::{services::introspection::v1::Plugin, types::Platform},
    google::rpc::Status as InitError,
};
use serde::Serialize;

use super::Context;
use crate::{
    error::rpc,
    output::{self, Format, Table},
};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: PluginsCommand,
}

#[derive(Debug, Subcommand)]
enum PluginsCommand {
    /// List plugins and their status
    #[command(visible_alias = "list")]
    Ls(ListArgs),
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    /// Show requirements, exports, capabilities and init errors
    #[arg(short, long)]
    detailed: bool,
    /// Only plugins matching any one filter, e.g. `type==io.containerd.grpc.v1` or `id==sled`
    #[arg(value_name = "FILTER")]
    filters: Vec<String>,
}

pub async fn run(args: Args, ctx: &Context) -> anyhow::Result<()> {
    match args.command {
        PluginsCommand::Ls(list) => ls(list, ctx).await,
    }
}

async fn ls(args: ListArgs, ctx: &Context) -> anyhow::Result<()> {
    let conn = ctx.connect().await?;
    let request = corten_api::containerd::services::introspection::v1::PluginsRequest { filters: args.filters };
    let plugins = conn
        .introspection()
        .plugins(request)
        .await
        .map_err(rpc)?
        .into_inner()
        .plugins;
    let views: Vec<PluginView> = plugins.into_iter().map(PluginView::from).collect();
    match (ctx.format, args.detailed) {
        (Format::Json, _) => output::print_json(&views),
        (Format::Table, false) => Ok(summary_table(&views).print()?),
        (Format::Table, true) => Ok(detailed_table(&views).print()?),
    }
}

/// A plugin as this command shows it; also the JSON shape.
#[derive(Debug, Serialize)]
struct PluginView {
    #[serde(rename = "type")]
    kind: String,
    id: String,
    requires: Vec<String>,
    platforms: Vec<String>,
    exports: BTreeMap<String, String>,
    capabilities: Vec<String>,
    status: PluginStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(skip)]
    error_code: Option<String>,
}

impl From<Plugin> for PluginView {
    fn from(plugin: Plugin) -> Self {
        let status = PluginStatus::of(plugin.init_err.as_ref());
        let error_code = plugin
            .init_err
            .as_ref()
            .map(|e| format!("{:?}", tonic::Code::from_i32(e.code)));
        PluginView {
            kind: plugin.r#type,
            id: plugin.id,
            requires: plugin.requires,
            platforms: platform_names(&plugin.platforms),
            exports: plugin.exports.into_iter().collect(),
            capabilities: plugin.capabilities,
            status,
            error: plugin.init_err.map(|e| e.message),
            error_code,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
enum PluginStatus {
    Ok,
    Skip,
    Error,
}

/// The marker the daemon puts in an init error when a plugin chose not to
/// run (missing hardware, disabled in config) rather than failed.
const SKIP_MARKER: &str = "skip plugin";

impl PluginStatus {
    fn of(init_err: Option<&InitError>) -> Self {
        match init_err {
            None => PluginStatus::Ok,
            Some(err) if err.message.contains(SKIP_MARKER) => PluginStatus::Skip,
            Some(_) => PluginStatus::Error,
        }
    }

    fn word(self) -> &'static str {
        match self {
            PluginStatus::Ok => "ok",
            PluginStatus::Skip => "skip",
            PluginStatus::Error => "error",
        }
    }
}

/// `os/arch[/variant]`, deduplicated and sorted: the daemon may list the
/// same platform more than once for plugins that support several variants.
fn platform_names(platforms: &[Platform]) -> Vec<String> {
    let names: BTreeSet<String> = platforms.iter().map(platform_name).collect();
    names.into_iter().collect()
}

fn platform_name(p: &Platform) -> String {
    let os = if p.os.is_empty() { "unknown" } else { &p.os };
    [os, p.architecture.as_str(), p.variant.as_str()]
        .into_iter()
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join("/")
}

fn summary_table(plugins: &[PluginView]) -> Table {
    let mut table = Table::new(&["TYPE", "ID", "PLATFORMS", "STATUS"]);
    for p in plugins {
        let platforms = if p.platforms.is_empty() {
            "-".to_string()
        } else {
            p.platforms.join(",")
        };
        table.row([p.kind.clone(), p.id.clone(), platforms, p.status.word().to_string()]);
    }
    table
}

/// One `Key:  value` block per plugin, blank line between blocks; list
/// values continue on following lines under the value column.
fn detailed_table(plugins: &[PluginView]) -> Table {
    let mut table = Table::headless();
    for (i, p) in plugins.iter().enumerate() {
        if i > 0 {
            table.row(["", ""]);
        }
        table.row(["Type:", &p.kind]);
        table.row(["ID:", &p.id]);
        list_rows(&mut table, "Requires:", p.requires.iter().cloned());
        if !p.platforms.is_empty() {
            table.row(["Platforms:".to_string(), p.platforms.join(",")]);
        }
        list_rows(
            &mut table,
            "Exports:",
            p.exports.iter().map(|(k, v)| format!("{k}={v}")),
        );
        if !p.capabilities.is_empty() {
            table.row(["Capabilities:".to_string(), p.capabilities.join(",")]);
        }
        table.row(["Status:", p.status.word()]);
        if let (Some(message), Some(code)) = (&p.error, &p.error_code) {
            table.row(["Error:".to_string(), format!("{message} ({code})")]);
        }
    }
    table
}

fn list_rows(table: &mut Table, key: &str, values: impl Iterator<Item = String>) {
    for (i, value) in values.enumerate() {
        table.row([if i == 0 { key } else { "" }.to_string(), value]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn init_err(message: &str) -> InitError {
        InitError {
            code: tonic::Code::FailedPrecondition as i32,
            message: message.into(),
            details: vec![],
        }
    }

    fn plugin(kind: &str, id: &str) -> Plugin {
        Plugin {
            r#type: kind.into(),
            id: id.into(),
            ..Default::default()
        }
    }

    #[test]
    fn status_word() {
        assert_eq!(PluginStatus::of(None).word(), "ok");
        let skip = init_err("no btrfs here: skip plugin");
        assert_eq!(PluginStatus::of(Some(&skip)).word(), "skip");
        let failed = init_err("open /dev/x: permission denied");
        assert_eq!(PluginStatus::of(Some(&failed)).word(), "error");
    }

    #[test]
    fn platforms_are_formatted_deduplicated_and_sorted() {
        let p = |os: &str, arch: &str, variant: &str| Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
        };
        let names = platform_names(&[
            p("linux", "arm", "v7"),
            p("linux", "amd64", ""),
            p("linux", "amd64", ""),
            p("", "riscv64", ""),
        ]);
        assert_eq!(names, ["linux/amd64", "linux/arm/v7", "unknown/riscv64"]);
    }

    #[test]
    fn summary_table_layout() {
        let mut failed = plugin("io.containerd.snapshotter.v1", "btrfs");
        failed.init_err = Some(init_err("skip plugin: not on btrfs"));
        failed.platforms = vec![Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            ..Default::default()
        }];
        let views: Vec<PluginView> = [plugin("io.containerd.grpc.v1", "version"), failed]
            .into_iter()
            .map(PluginView::from)
            .collect();
        assert_eq!(
            summary_table(&views).render(),
            "TYPE                           ID        PLATFORMS     STATUS\n\
             io.containerd.grpc.v1          version   -             ok\n\
             io.containerd.snapshotter.v1   btrfs     linux/amd64   skip\n"
        );
    }

    #[test]
    fn detailed_table_layout() {
        let mut p = plugin("io.containerd.grpc.v1", "namespaces");
        p.requires = vec!["io.containerd.metadata.v1".into(), "io.containerd.event.v1".into()];
        p.exports = [("root".to_string(), "/var/lib/x".to_string())].into();
        p.init_err = Some(init_err("boom"));
        let views = vec![
            PluginView::from(plugin("io.containerd.event.v1", "exchange")),
            PluginView::from(p),
        ];
        assert_eq!(
            detailed_table(&views).render(),
            "Type:       io.containerd.event.v1\n\
             ID:         exchange\n\
             Status:     ok\n\
             \n\
             Type:       io.containerd.grpc.v1\n\
             ID:         namespaces\n\
             Requires:   io.containerd.metadata.v1\n\
             \x20           io.containerd.event.v1\n\
             Exports:    root=/var/lib/x\n\
             Status:     error\n\
             Error:      boom (FailedPrecondition)\n"
        );
    }

    #[test]
    fn json_shape() {
        let mut p = plugin("io.containerd.grpc.v1", "x");
        p.init_err = Some(init_err("boom"));
        let json = serde_json::to_value(PluginView::from(p)).unwrap();
        assert_eq!(json["type"], "io.containerd.grpc.v1");
        assert_eq!(json["status"], "error");
        assert_eq!(json["error"], "boom");
        assert!(json.get("error_code").is_none());
        let ok = serde_json::to_value(PluginView::from(plugin("t", "y"))).unwrap();
        assert!(ok.get("error").is_none());
        assert_eq!(ok["platforms"], serde_json::json!([]));
        assert_eq!(ok["exports"], serde_json::json!({}));
    }
}
