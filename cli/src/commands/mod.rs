//! One module per command family; each exposes clap `Args` and `run`.
//! Adding a family means a new file here, a variant in [`Command`] and an
//! arm in [`run`].

pub mod containers;
pub mod content;
pub mod events;
pub mod images;
pub mod images_pull;
pub mod leases;
pub mod namespaces;
pub mod plugins;
pub mod run;
pub mod snapshots;
pub mod tasks;
pub mod version;

use clap::Subcommand;

use crate::{
    client::{ConnectOptions, Connection},
    output::Format,
};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the client and server versions
    Version(version::Args),
    /// Inspect the daemon's plugins
    #[command(visible_alias = "plugin")]
    Plugins(plugins::Args),
    /// Manage namespaces
    #[command(visible_aliases = ["namespace", "ns"])]
    Namespaces(namespaces::Args),
    /// Manage blobs in the content store
    Content(content::Args),
    /// Manage leases, which keep resources from garbage collection
    #[command(visible_alias = "lease")]
    Leases(leases::Args),
    /// Manage snapshots: the filesystems containers run on
    #[command(visible_aliases = ["snapshot", "snap"])]
    Snapshots(snapshots::Args),
    /// Manage images: list, tag, remove, import, export, mount and check them
    #[command(visible_aliases = ["image", "i"])]
    Images(images::Args),
    /// Create a container from an image and run it
    Run(run::Args),
    /// Manage containers: the records tasks run from
    #[command(visible_aliases = ["container", "c"])]
    Containers(containers::Args),
    /// Manage tasks: containers' running processes
    #[command(visible_aliases = ["task", "t"])]
    Tasks(tasks::Args),
    /// Print the daemon's events as they happen
    #[command(visible_alias = "event")]
    Events(events::Args),
}

/// What every command may need from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    pub connect: ConnectOptions,
    pub format: Format,
}

impl Context {
    pub async fn connect(&self) -> anyhow::Result<Connection> {
        Connection::connect(&self.connect).await
    }
}

pub async fn run(command: Command, ctx: &Context) -> anyhow::Result<()> {
    match command {
        Command::Version(args) => version::run(args, ctx).await,
        Command::Plugins(args) => plugins::run(args, ctx).await,
        Command::Namespaces(args) => namespaces::run(args, ctx).await,
        Command::Content(args) => content::run(args, ctx).await,
        Command::Leases(args) => leases::run(args, ctx).await,
        Command::Snapshots(args) => snapshots::run(args, ctx).await,
        Command::Images(args) => images::run(args, ctx).await,
        Command::Run(args) => run::run(args, ctx).await,
        Command::Containers(args) => containers::run(args, ctx).await,
        Command::Tasks(args) => tasks::run(args, ctx).await,
        Command::Events(args) => events::run(args, ctx).await,
    }
}
