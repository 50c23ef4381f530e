//! The daemon's life: start plugins, serve, stop in order.

use std::{os::unix::fs::DirBuilderExt, path::Path};

use anyhow::Context as _;
use corten_config::Loaded;
use corten_core::{plugin::Registration, registry::Registry};
use tracing::{info, warn};

use crate::{logging, metrics, server, shutdown, socket};

pub fn run(loaded: Loaded) -> anyhow::Result<()> {
    logging::init(&loaded.config.debug.level, &loaded.config.debug.format)?;
    for warning in &loaded.warnings {
        warn!("{warning}");
    }
    warn_unsupported(&loaded.config);
    // Two workers: the daemon mostly waits on sockets and disks, and every
    // extra thread costs memory.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("start the async runtime")?;
    runtime.block_on(serve(loaded))
}

async fn serve(loaded: Loaded) -> anyhow::Result<()> {
    // Caught from here on: a stop asked for during plugin init is served
    // once init is over, and plugins close in order.
    let signals = shutdown::Signals::install().context("installing signal handlers")?;
    let config = &loaded.config;
    set_oom_score(config.oom_score);
    make_dir(&config.root)?;
    make_dir(&config.state)?;
    let socket_path = socket::path_of(&config.grpc.address).to_path_buf();
    socket::claim(&socket_path)?;

    let (metrics_registry, grpc_metrics) = metrics::registry()?;
    let metrics_listener = match config.metrics.address.as_str() {
        "" => None,
        address => Some(metrics::bind_http(address).await?),
    };

    let mut plugins = Registry::start(&loaded, &Registration::all(), &metrics_registry).await?;
    let routes = server::routes(&plugins.plugins());
    let listener = socket::bind(&socket_path, config.grpc.uid, config.grpc.gid)?;
    info!(address = %socket_path.display(), "serving gRPC");
    let metrics_task = metrics_listener.map(|listener| {
        info!(address = %config.metrics.address, "serving metrics at /v1/metrics");
        tokio::spawn(metrics::serve(listener, metrics_registry))
    });

    let stop = async {
        signals.requested().await;
        plugins.begin_stop();
    };
    let served = server::serve(listener, routes, grpc_metrics, stop).await;
    if let Some(task) = metrics_task {
        task.abort();
    }
    plugins.close().await;
    if let Err(e) = std::fs::remove_file(&socket_path) {
        warn!("remove {}: {e}", socket_path.display());
    }
    info!("stopped");
    served
}

fn make_dir(path: &Path) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o711)
        .create(path)
        .with_context(|| format!("create {}", path.display()))
}

/// containerd's `oom_score`: how readily the kernel's OOM killer picks the daemon.
fn set_oom_score(score: i64) {
    if score == 0 {
        return;
    }
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", score.to_string()) {
        warn!("set oom_score_adj to {score}: {e}");
    }
}

/// Settings a containerd config may carry that corten accepts but does not
/// act on yet: said once at startup rather than silently ignored.
fn warn_unsupported(config: &corten_config::Config) {
    let unsupported = [
        ("[grpc] tcp_address", !config.grpc.tcp_address.is_empty()),
        ("[debug] address", !config.debug.address.is_empty()),
        ("[cgroup] path", !config.cgroup.path.is_empty()),
        ("[proxy_plugins]", !config.proxy_plugins.is_empty()),
        ("[stream_processors]", !config.stream_processors.is_empty()),
        ("plugin_dir", !config.plugin_dir.is_empty()),
    ];
    for (setting, set) in unsupported {
        if set {
            warn!("{setting} is not supported by corten yet; ignored");
        }
    }
}
