use std::sync::Arc;

use corten_core::{
    content::ContentStore,
    gc::Collector,
    metadata::MetaStore,
    plugin::{InitContext, InitError, Instance, Plugin},
    register_plugin,
    snapshots::{self, Snapshotter},
};
use serde::{Deserialize, Serialize};

use crate::scheduler::{Gc, Metrics, SchedulerTask, Settings};

const METADATA: &str = "io.containerd.metadata.v1";
const CONTENT: &str = "io.containerd.content.v1";

/// `[plugins."io.containerd.gc.v1.scheduler"]`, with containerd's keys and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GcConfig {
    /// The largest share of time collections may hold the metadata database.
    pub pause_threshold: f64,
    /// Deletions that make a collection due (0: any deletion, as in containerd).
    pub deletion_threshold: u64,
    /// Writes of any kind that make a collection due (0: never).
    pub mutation_threshold: u64,
    /// How long a due collection waits (Go duration).
    pub schedule_delay: String,
    /// How long after start the first collection waits (Go duration).
    pub startup_delay: String,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            pause_threshold: 0.02,
            deletion_threshold: 0,
            mutation_threshold: 100,
            schedule_delay: "0s".into(),
            startup_delay: "100ms".into(),
        }
    }
}

impl GcConfig {
    /// Checks the values and reads the durations.
    pub fn settings(&self) -> Result<Settings, InitError> {
        // Written so that NaN fails too.
        if !(self.pause_threshold > 0.0 && self.pause_threshold <= 0.5) {
            return Err(InitError::Failed(format!(
                "pause_threshold must be more than 0 and at most 0.5, not {}",
                self.pause_threshold
            )));
        }
        let duration = |key: &str, text: &str| {
            corten_config::parse_duration(text).ok_or_else(|| {
                InitError::Failed(format!(
                    "{key} {text:?} is not a duration such as \"100ms\" or \"1m30s\""
                ))
            })
        };
        Ok(Settings {
            pause_threshold: self.pause_threshold,
            deletion_threshold: self.deletion_threshold,
            mutation_threshold: self.mutation_threshold,
            schedule_delay: duration("schedule_delay", &self.schedule_delay)?,
            startup_delay: duration("startup_delay", &self.startup_delay)?,
        })
    }
}

pub struct GcPlugin;

impl Plugin for GcPlugin {
    const TYPE: &'static str = "io.containerd.gc.v1";
    const ID: &'static str = "scheduler";
    const REQUIRES: &'static [&'static str] = &[METADATA, CONTENT, snapshots::PLUGIN_TYPE];
    type Config = GcConfig;

    async fn init(ctx: InitContext, config: GcConfig) -> Result<Instance, InitError> {
        let settings = config.settings()?;
        let store: Arc<dyn MetaStore> = ctx.get(METADATA)?;
        let content: Vec<Arc<dyn ContentStore>> = ctx
            .plugins()
            .get_all::<Arc<dyn ContentStore>>(CONTENT)
            .into_iter()
            .map(|(_, store)| store)
            .collect();
        let metrics = Metrics::new(&ctx.metrics).map_err(|e| InitError::failed("register gc metrics", e))?;
        let snapshotters: Vec<(&'static str, Arc<dyn Snapshotter>)> =
            ctx.plugins().get_all::<Arc<dyn Snapshotter>>(snapshots::PLUGIN_TYPE);
        let gc = Gc::with_snapshotters(store, content, snapshotters, settings, metrics);
        let task = SchedulerTask::start(gc.clone());
        let collector: Arc<dyn Collector> = gc;
        Ok(Instance::new(collector).on_close(move || task.stop()))
    }
}

register_plugin!(GcPlugin);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn failure(config: GcConfig) -> String {
        match config.settings() {
            Err(InitError::Failed(m)) => m,
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_containerds() {
        let s = GcConfig::default().settings().unwrap();
        assert_eq!(
            s,
            Settings {
                pause_threshold: 0.02,
                deletion_threshold: 0,
                mutation_threshold: 100,
                schedule_delay: Duration::ZERO,
                startup_delay: Duration::from_millis(100),
            }
        );
    }

    #[test]
    fn refuses_bad_values_by_name() {
        for p in [0.0, -0.1, 0.51, f64::NAN] {
            let m = failure(GcConfig {
                pause_threshold: p,
                ..GcConfig::default()
            });
            assert!(m.contains("pause_threshold"), "{m}");
        }
        assert!(GcConfig {
            pause_threshold: 0.5,
            ..GcConfig::default()
        }
        .settings()
        .is_ok());
        let m = failure(GcConfig {
            schedule_delay: "5".into(),
            ..GcConfig::default()
        });
        assert!(m.contains("schedule_delay"), "{m}");
        let m = failure(GcConfig {
            startup_delay: "soon".into(),
            ..GcConfig::default()
        });
        assert!(m.contains("startup_delay"), "{m}");
    }
}
