//! The collector ([`Gc`]) and the task that runs its automatic collections
//! ([`SchedulerTask`]).
//!
//! The metadata store reports every committed write; the collector counts
//! them and wakes the task when a threshold is reached. Collections, whether
//! automatic or asked for through [`Collector::collect`], run one at a time.

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::{Duration, Instant, SystemTime},
};

use corten_core::{
    content::{self, ContentStore},
    gc::{Collector, Stats},
    metadata::MetaStore,
    snapshots::{self, Snapshotter},
    Error,
};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, Opts, Registry};
use tokio::{
    sync::{watch, Notify},
    task::JoinHandle,
};
use tracing::{debug, warn};

use crate::{
    kinds::Kind,
    sweep::{self, Removed},
};

/// When collections run, as the config sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The largest share of time collections may hold writers off, in (0, 0.5]:
    /// all of them while the sweep holds the database, and a snapshotter's
    /// creations while its cleanup works out what goes.
    pub pause_threshold: f64,
    /// Deletions that make a collection due; 0 = any deletion does (containerd's meaning).
    pub deletion_threshold: u64,
    /// Writes of any kind that make a collection due; 0 = never.
    pub mutation_threshold: u64,
    /// How long a due collection waits, so a burst of changes is collected once.
    pub schedule_delay: Duration,
    /// How long after start the first collection waits.
    pub startup_delay: Duration,
}

impl Settings {
    /// How long to wait after a collection that held writers off for `held`
    /// so that collections hold it at most `pause_threshold` of the time.
    pub(crate) fn pause_after(&self, held: Duration) -> Duration {
        let secs = held.as_secs_f64() * (1.0 / self.pause_threshold - 1.0);
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    }
}

/// The collector's Prometheus metrics.
#[derive(Clone)]
pub struct Metrics {
    collections: IntCounter,
    seconds: Histogram,
    removed: IntCounterVec,
}

/// The `kind` label of removed blobs, beside the metadata kinds.
const BLOBS: &str = "blobs";

impl Metrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let collections = IntCounter::new("containerd_gc_collections_total", "Garbage collections completed.")?;
        let seconds = Histogram::with_opts(HistogramOpts::new(
            "corten_gc_collection_seconds",
            "Time each garbage collection took, including removing blobs.",
        ))?;
        let removed = IntCounterVec::new(
            Opts::new(
                "corten_gc_removed_total",
                "Objects removed by garbage collection, by kind.",
            ),
            &["kind"],
        )?;
        // Every kind shows up from the start, at zero, rather than after its first removal.
        for kind in Kind::NAMES.into_iter().chain([BLOBS]) {
            removed.with_label_values(&[kind]);
        }
        registry.register(Box::new(collections.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(removed.clone()))?;
        Ok(Metrics {
            collections,
            seconds,
            removed,
        })
    }

    fn record(&self, removed: &Removed, blobs: u64, took: Duration) {
        self.collections.inc();
        self.seconds.observe(took.as_secs_f64());
        for kind in Kind::NAMES {
            self.removed.with_label_values(&[kind]).inc_by(removed.named(kind));
        }
        self.removed.with_label_values(&[BLOBS]).inc_by(blobs);
    }
}

/// Which backends may hold garbage: those of the metadata trees keys were
/// removed from (a content record's blob, a snapshot record's files).
#[derive(Default)]
struct Dirty {
    /// Every backend, whatever the trees say.
    everything: bool,
    trees: HashSet<String>,
}

impl Dirty {
    fn any(&self, trees: &[&str]) -> bool {
        self.everything || trees.iter().any(|t| self.trees.contains(*t))
    }

    fn merge(&mut self, other: Dirty) {
        self.everything |= other.everything;
        self.trees.extend(other.trees);
    }
}

/// The last collection, for the pause that bounds how often they run.
#[derive(Clone, Copy)]
struct Last {
    ended: Instant,
    held: Duration,
}

/// The garbage collector: the instance the plugin exports as `Arc<dyn Collector>`.
pub struct Gc {
    store: Arc<dyn MetaStore>,
    content: Vec<Arc<dyn ContentStore>>,
    snapshotters: Vec<(&'static str, Arc<dyn Snapshotter>)>,
    settings: Settings,
    metrics: Metrics,
    /// Since the last collection took the lock.
    mutations: AtomicU64,
    deletions: AtomicU64,
    /// Backends with garbage to remove since the last collection took the
    /// lock; see [`Dirty`].
    dirty: Mutex<Dirty>,
    /// Held for a whole collection, so there is never more than one.
    running: Mutex<()>,
    last: Mutex<Option<Last>>,
    /// Signalled when a collection becomes due.
    due: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Gc {
    /// A collector over `store`, whose blobs live in the `content` stores.
    /// It starts counting the store's writes at once.
    pub fn new(
        store: Arc<dyn MetaStore>,
        content: Vec<Arc<dyn ContentStore>>,
        settings: Settings,
        metrics: Metrics,
    ) -> Arc<Gc> {
        Gc::with_snapshotters(store, content, Vec::new(), settings, metrics)
    }

    /// The same, also collecting the snapshots of `snapshotters` (by plugin id).
    pub fn with_snapshotters(
        store: Arc<dyn MetaStore>,
        content: Vec<Arc<dyn ContentStore>>,
        snapshotters: Vec<(&'static str, Arc<dyn Snapshotter>)>,
        settings: Settings,
        metrics: Metrics,
    ) -> Arc<Gc> {
        let gc = Arc::new(Gc {
            store,
            content,
            snapshotters,
            settings,
            metrics,
            mutations: AtomicU64::new(0),
            deletions: AtomicU64::new(0),
            // What an earlier run left (a crash, a failed cleanup) is
            // looked for once.
            dirty: Mutex::new(Dirty {
                everything: true,
                ..Dirty::default()
            }),
            running: Mutex::new(()),
            last: Mutex::new(None),
            due: Notify::new(),
        });
        // Weak, or the store would keep the collector (and the collector the store) alive forever.
        let weak = Arc::downgrade(&gc);
        gc.store.on_mutation(Arc::new(move |removed: &[&str]| {
            if let Some(gc) = weak.upgrade() {
                lock(&gc.dirty).trees.extend(removed.iter().map(|t| t.to_string()));
                gc.mutated(!removed.is_empty());
            }
        }));
        gc
    }

    fn snapshotter_ids(&self) -> Vec<&'static str> {
        self.snapshotters.iter().map(|(id, _)| *id).collect()
    }

    fn is_due(&self) -> bool {
        let s = &self.settings;
        (s.mutation_threshold > 0 && self.mutations.load(Ordering::SeqCst) >= s.mutation_threshold)
            || self.deletions.load(Ordering::SeqCst) >= s.deletion_threshold.max(1)
    }

    /// What remains of the pause the last collection imposes.
    fn pause_left(&self) -> Duration {
        match *lock(&self.last) {
            Some(last) => self
                .settings
                .pause_after(last.held)
                .saturating_sub(last.ended.elapsed()),
            None => Duration::ZERO,
        }
    }

    #[cfg(test)]
    fn pending(&self) -> (u64, u64) {
        (
            self.mutations.load(Ordering::SeqCst),
            self.deletions.load(Ordering::SeqCst),
        )
    }

    /// One collection: mark and sweep under the exclusive lock, then the
    /// blobs, which need no lock because no record names them any more.
    fn run(&self) -> Result<Stats, Error> {
        let _only = lock(&self.running);
        let started = Instant::now();
        let mut held = Duration::ZERO;
        let mut removed = Removed::default();
        let mut dirty = Dirty::default();
        let swept = self.store.exclusive(&mut |db| {
            let locked = Instant::now();
            let outcome = sweep::mark_and_sweep(db, SystemTime::now(), &self.snapshotter_ids());
            // The scan saw every write made before the lock, and the sweep's
            // own removals are not new garbage: counting starts again here,
            // before the lock lets any other writer in. A failed collection
            // resets too, or it would be retried in a tight loop.
            self.mutations.store(0, Ordering::SeqCst);
            self.deletions.store(0, Ordering::SeqCst);
            dirty = std::mem::take(&mut *lock(&self.dirty));
            held = locked.elapsed();
            removed = outcome?;
            Ok(())
        });
        if let Err(e) = swept {
            lock(&self.dirty).merge(dirty);
            *lock(&self.last) = Some(Last {
                ended: Instant::now(),
                held,
            });
            return Err(e);
        }

        // Only backends whose records went, in the sweep or since the last
        // collection, can hold garbage: each cleanup lists its whole store.
        let mut blobs = 0;
        let content_trees = [content::TREE, content::INGESTS_TREE];
        if dirty.any(&content_trees) || removed.named(Kind::Content.name()) + removed.named(Kind::Ingest.name()) > 0 {
            for store in &self.content {
                match store.sweep_backend() {
                    Ok(n) => blobs += n,
                    // The metadata is consistent already; what stays on disk goes next time.
                    Err(e) => {
                        warn!("gc: removing unreferenced blobs: {e}");
                        lock(&self.dirty).trees.insert(content::TREE.to_string());
                    }
                }
            }
        }
        let swept_snapshots = removed.named(Kind::Snapshot("").name()) > 0;
        for (id, snapshotter) in &self.snapshotters {
            let tree = snapshots::tree(id);
            if !swept_snapshots && !dirty.any(&[&tree]) {
                continue;
            }
            match snapshotter.cleanup() {
                Ok(cleaned) => {
                    // Its creations waited while it worked out what goes, as
                    // every writer waited for the sweep: both are the pause.
                    held += cleaned.paused;
                    debug!(snapshotter = id, removed = cleaned.removed, "gc: cleaned up snapshots");
                }
                Err(e) => {
                    warn!("gc: cleaning up {id} snapshots: {e}");
                    lock(&self.dirty).trees.insert(tree);
                }
            }
        }
        *lock(&self.last) = Some(Last {
            ended: Instant::now(),
            held,
        });
        self.metrics.record(&removed, blobs, started.elapsed());
        let stats = Stats {
            removed: removed.total(),
            removed_blobs: blobs,
            duration: held,
        };
        debug!(
            removed = stats.removed,
            blobs,
            held = ?held,
            took = ?started.elapsed(),
            "gc: collected"
        );
        Ok(stats)
    }
}

impl Collector for Gc {
    fn mutated(&self, deletion: bool) {
        self.mutations.fetch_add(1, Ordering::SeqCst);
        if deletion {
            self.deletions.fetch_add(1, Ordering::SeqCst);
        }
        if self.is_due() {
            // Stores a permit if the task is not waiting yet, so no wake-up is lost.
            self.due.notify_one();
        }
    }

    fn collect(&self) -> Result<Stats, Error> {
        self.run()
    }
}

/// The task that runs automatic collections; stopping it (or dropping it)
/// ends the task after the collection in progress, if any.
pub struct SchedulerTask {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl SchedulerTask {
    /// Starts the automatic collections of `gc`; must be called within a tokio runtime.
    pub fn start(gc: Arc<Gc>) -> SchedulerTask {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(schedule(gc, stopped));
        SchedulerTask { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        if let Err(e) = self.task.await {
            warn!("gc scheduler ended badly: {e}");
        }
    }
}

/// Sleeps for `delay`; false when told to stop first.
async fn sleep(delay: Duration, stopped: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => true,
        _ = stopped.changed() => false,
    }
}

async fn schedule(gc: Arc<Gc>, mut stopped: watch::Receiver<bool>) {
    if !sleep(gc.settings.startup_delay, &mut stopped).await {
        return;
    }
    loop {
        let collector = gc.clone();
        // Not raced against `stopped`: a collection always runs to its end.
        match tokio::task::spawn_blocking(move || collector.run()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => warn!("gc: collection failed: {e}"),
            Err(e) => warn!("gc: collection did not finish: {e}"),
        }
        loop {
            while !gc.is_due() {
                tokio::select! {
                    _ = gc.due.notified() => {}
                    _ = stopped.changed() => return,
                }
            }
            let delay = gc.settings.schedule_delay.max(gc.pause_left());
            if !sleep(delay, &mut stopped).await {
                return;
            }
            // A `collect()` call during the delay may have done the work already.
            if gc.is_due() {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use corten_core::metadata;

    use super::*;
    use crate::testing::{digest, CountingContent, Db};

    fn settings() -> Settings {
        Settings {
            pause_threshold: 0.5,
            deletion_threshold: 0,
            mutation_threshold: 0,
            schedule_delay: Duration::ZERO,
            startup_delay: Duration::ZERO,
        }
    }

    fn gc(db: &Db, settings: Settings) -> (Arc<Gc>, Arc<CountingContent>, Registry) {
        let content = Arc::new(CountingContent::default());
        let registry = Registry::new();
        let metrics = Metrics::new(&registry).unwrap();
        let stores: Vec<Arc<dyn ContentStore>> = vec![content.clone()];
        (Gc::new(db.store.clone(), stores, settings, metrics), content, registry)
    }

    fn metric(registry: &Registry, name: &str, kind: Option<&str>) -> f64 {
        let family = registry.gather().into_iter().find(|f| f.name() == name).unwrap();
        let m = family
            .get_metric()
            .iter()
            .find(|m| kind.is_none_or(|k| m.get_label().iter().any(|l| l.value() == k)))
            .unwrap();
        if family.get_field_type() == prometheus::proto::MetricType::HISTOGRAM {
            m.get_histogram().get_sample_count() as f64
        } else {
            m.get_counter().value()
        }
    }

    /// Polls `condition` until it holds, failing the test after a generous deadline.
    async fn wait_for(what: &str, condition: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[test]
    fn the_pause_keeps_collections_to_their_share() {
        let s = Settings {
            pause_threshold: 0.02,
            ..settings()
        };
        assert_eq!(s.pause_after(Duration::from_secs(1)), Duration::from_secs(49));
        assert_eq!(
            settings().pause_after(Duration::from_millis(30)),
            Duration::from_millis(30)
        );
        let tiny = Settings {
            pause_threshold: f64::MIN_POSITIVE,
            ..settings()
        };
        assert_eq!(tiny.pause_after(Duration::from_secs(1)), Duration::MAX);
    }

    /// A snapshotter whose cleanup holds its creations off for `paused`.
    struct Pausing {
        paused: Duration,
    }

    impl Snapshotter for Pausing {
        fn stat(&self, _: &str, _: &str) -> Result<snapshots::Info, Error> {
            unimplemented!()
        }
        fn update(&self, _: &str, _: &snapshots::Info, _: &[String]) -> Result<snapshots::Info, Error> {
            unimplemented!()
        }
        fn usage(&self, _: &str, _: &str) -> Result<snapshots::Usage, Error> {
            unimplemented!()
        }
        fn mounts(&self, _: &str, _: &str) -> Result<Vec<corten_core::mount::Mount>, Error> {
            unimplemented!()
        }
        fn prepare(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: std::collections::BTreeMap<String, String>,
            _: Option<&str>,
        ) -> Result<Vec<corten_core::mount::Mount>, Error> {
            unimplemented!()
        }
        fn view(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: std::collections::BTreeMap<String, String>,
            _: Option<&str>,
        ) -> Result<Vec<corten_core::mount::Mount>, Error> {
            unimplemented!()
        }
        fn commit(
            &self,
            _: &str,
            _: &str,
            _: &str,
            _: std::collections::BTreeMap<String, String>,
            _: Option<&str>,
        ) -> Result<(), Error> {
            unimplemented!()
        }
        fn remove(&self, _: &str, _: &str, _: Option<&str>) -> Result<(), Error> {
            unimplemented!()
        }
        fn list(&self, _: &str) -> Result<Vec<snapshots::Info>, Error> {
            unimplemented!()
        }
        fn cleanup(&self) -> Result<snapshots::Cleaned, Error> {
            std::thread::sleep(self.paused);
            Ok(snapshots::Cleaned {
                removed: 0,
                paused: self.paused,
            })
        }
    }

    #[test]
    fn a_snapshotters_pause_counts_towards_the_next_wait() {
        let db = Db::new();
        let paused = Duration::from_millis(200);
        let gc = Gc::with_snapshotters(
            db.store.clone(),
            Vec::new(),
            vec![("pausing", Arc::new(Pausing { paused }) as Arc<dyn Snapshotter>)],
            settings(),
            Metrics::new(&Registry::new()).unwrap(),
        );
        // The first collection cleans every snapshotter up.
        let stats = gc.collect().unwrap();
        assert!(stats.duration >= paused, "{stats:?}");
        // At a threshold of 0.5 the wait is as long as the pause.
        let left = gc.pause_left();
        assert!(left > paused / 2 && left <= stats.duration, "{left:?}");
    }

    #[test]
    fn collect_runs_now_and_reports() {
        let db = Db::new();
        let (gc, content, registry) = gc(&db, settings());
        db.blob("ns", 1, vec![(corten_core::gc::ROOT_LABEL.into(), "y".into())]);
        db.blob("ns", 2, vec![]);
        db.ingest("ns", "r", None);
        assert_eq!(gc.pending(), (3, 0));

        let stats = gc.collect().unwrap();
        assert_eq!((stats.removed, stats.removed_blobs), (2, 1));
        assert!(db.has_blob("ns", 1) && !db.has_blob("ns", 2) && db.ingests("ns").is_empty());
        assert_eq!(content.sweeps(), 1);
        // The sweep's own removals do not count towards the next collection.
        assert_eq!(gc.pending(), (0, 0));

        assert_eq!(metric(&registry, "containerd_gc_collections_total", None), 1.0);
        assert_eq!(metric(&registry, "corten_gc_collection_seconds", None), 1.0);
        assert_eq!(metric(&registry, "corten_gc_removed_total", Some("content")), 1.0);
        assert_eq!(metric(&registry, "corten_gc_removed_total", Some("ingests")), 1.0);
        assert_eq!(metric(&registry, "corten_gc_removed_total", Some("leases")), 0.0);
        assert_eq!(metric(&registry, "corten_gc_removed_total", Some("blobs")), 1.0);
        for family in registry.gather() {
            assert!(!family.help().is_empty(), "{}", family.name());
            let counter = family.get_field_type() == prometheus::proto::MetricType::COUNTER;
            assert_eq!(family.name().ends_with("_total"), counter, "{}", family.name());
        }

        // Nothing removed since: the blob store is not listed again.
        let stats = gc.collect().unwrap();
        assert_eq!((stats.removed, stats.removed_blobs), (0, 0));
        assert_eq!(content.sweeps(), 1);

        // A content record removed outside the collector (the Content
        // service's Delete) leaves a blob only the next sweep finds.
        let key = metadata::key("ns", &digest(1));
        db.store
            .transact(&[content::TREE], &|t| t.remove(content::TREE, &key))
            .unwrap();
        let stats = gc.collect().unwrap();
        assert_eq!((stats.removed, stats.removed_blobs), (0, 1));
        assert_eq!(content.sweeps(), 2);
    }

    #[tokio::test]
    async fn collects_at_startup_and_when_mutations_reach_the_threshold() {
        let db = Db::new();
        let (gc, content, _) = gc(
            &db,
            Settings {
                mutation_threshold: 3,
                ..settings()
            },
        );
        let task = SchedulerTask::start(gc.clone());
        wait_for("the startup collection", || content.sweeps() == 1).await;

        db.blob("ns", 1, vec![]);
        db.blob("ns", 2, vec![]);
        assert_eq!(gc.pending(), (2, 0));
        assert_eq!(content.sweeps(), 1);
        db.blob("ns", 3, vec![]);
        wait_for("a collection after three writes", || content.sweeps() == 2).await;
        assert!(!db.has_blob("ns", 1) && !db.has_blob("ns", 2) && !db.has_blob("ns", 3));
        // The three removals were the collection's own: nothing is pending.
        assert_eq!(gc.pending(), (0, 0));

        // collect() runs synchronously beside the scheduler.
        db.blob("ns", 4, vec![]);
        let stats = tokio::task::spawn_blocking({
            let gc = gc.clone();
            move || gc.collect()
        })
        .await
        .unwrap()
        .unwrap();
        assert_eq!(stats.removed, 1);
        assert!(!db.has_blob("ns", 4));
        task.stop().await;
    }

    #[tokio::test]
    async fn deletions_reach_their_own_threshold() {
        let db = Db::new();
        let (gc, content, _) = gc(
            &db,
            Settings {
                deletion_threshold: 1,
                ..settings()
            },
        );
        let task = SchedulerTask::start(gc.clone());
        wait_for("the startup collection", || content.sweeps() == 1).await;
        db.blob("ns", 1, vec![]);
        assert_eq!(gc.pending(), (1, 0));
        let key = metadata::key("ns", &digest(1));
        db.store
            .transact(&[content::TREE], &|t| t.remove(content::TREE, &key))
            .unwrap();
        wait_for("a collection after a deletion", || content.sweeps() == 2).await;
        task.stop().await;
    }

    #[tokio::test]
    async fn stopping_does_not_wait_for_the_startup_delay() {
        let db = Db::new();
        let (gc, content, _) = gc(
            &db,
            Settings {
                startup_delay: Duration::from_secs(3600),
                ..settings()
            },
        );
        let task = SchedulerTask::start(gc);
        tokio::time::timeout(Duration::from_secs(20), task.stop())
            .await
            .expect("the scheduler stops promptly");
        assert_eq!(content.sweeps(), 0);
    }
}
