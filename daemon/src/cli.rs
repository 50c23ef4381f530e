//! Command line: flags that override the config file, and the `config`
//! subcommands.

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use corten_config::Loaded;
use corten_core::plugin::Registration;

/// Where the config is read from when `--config` is not given; if it does not
/// exist the embedded defaults apply.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/corten/config.toml";

#[derive(Parser, Debug)]
#[command(
    name = "cortend",
    version,
    about = "corten: a containerd-compatible container daemon"
)]
pub struct Args {
    /// Config file (containerd's config.toml version 2 layout)
    #[arg(short, long, global = true)]
    pub config: Option<PathBuf>,
    /// gRPC socket address (overrides [grpc] address)
    #[arg(short, long, global = true)]
    pub address: Option<String>,
    /// Persistent data directory (overrides root)
    #[arg(long, global = true)]
    pub root: Option<PathBuf>,
    /// Volatile state directory (overrides state)
    #[arg(long, global = true)]
    pub state: Option<PathBuf>,
    /// trace, debug, info, warn or error (overrides [debug] level)
    #[arg(short, long, global = true)]
    pub log_level: Option<String>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check the stores offline (the daemon must be stopped): every blob's
    /// bytes match its digest and every record points at a blob
    Verify,
    /// Inspect the configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

#[derive(Subcommand, Debug)]
pub enum ConfigAction {
    /// Print the default config, with every built-in plugin's section
    Default,
    /// Print the effective config: the file, its imports and the flags
    Dump,
}

pub fn dispatch(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Config {
            action: ConfigAction::Default,
        }) => {
            let defaults: BTreeMap<String, toml::Value> = Registration::all()
                .into_iter()
                .map(|r| (r.uri(), (r.default_config)()))
                .filter(|(_, v)| v.as_table().is_none_or(|t| !t.is_empty()))
                .collect();
            print!("{}", corten_config::default_toml(&defaults));
            Ok(())
        }
        Some(Command::Config {
            action: ConfigAction::Dump,
        }) => {
            let mut loaded = load_config(&args)?;
            for r in Registration::all() {
                let uri = r.uri();
                let effective = (r.effective_config)(&loaded, &uri)?;
                if effective.as_table().is_none_or(|t| !t.is_empty()) {
                    loaded.config.plugins.insert(uri, effective);
                }
            }
            print!("{}", loaded.config.to_toml_string());
            Ok(())
        }
        Some(Command::Verify) => {
            let loaded = load_config(&args)?;
            crate::verify::run(loaded)
        }
        None => {
            let loaded = load_config(&args)?;
            crate::run::run(loaded)
        }
    }
}

/// The config file (or the embedded defaults), with the flags applied over it.
fn load_config(args: &Args) -> anyhow::Result<Loaded> {
    let mut loaded = match &args.config {
        Some(path) => corten_config::load(path)?,
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            corten_config::load(DEFAULT_CONFIG_PATH.as_ref())?
        }
        None => corten_config::from_str("<default>".as_ref(), &corten_config::default_toml(&BTreeMap::new()))
            .context("embedded default config")?,
    };
    let config = &mut loaded.config;
    if let Some(a) = &args.address {
        config.grpc.address = a.clone();
    }
    if let Some(r) = &args.root {
        config.root = r.clone();
    }
    if let Some(s) = &args.state {
        config.state = s.clone();
    }
    if let Some(l) = &args.log_level {
        config.debug.level = l.clone();
    }
    Ok(loaded)
}
