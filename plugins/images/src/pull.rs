//! A whole pull: resolve, walk the index and manifests, download in
//! parallel, unpack in layer order as the layers arrive, and record the
//! image last. Everything is written under one lease, so a pull that fails
//! leaves nothing an image points at, and garbage collection takes it.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::{atomic::Ordering, Arc},
    time::{Duration, SystemTime},
};

use corten_core::{
    content::ContentStore,
    diff::{Descriptor, Differ},
    digest::Digest,
    gc,
    images::{Image, Images},
    leases::{LeaseManager, EXPIRE_LABEL},
    snapshots::Snapshotter,
    transfer::{Platform, Progress, ProgressFn, PullRequest, Stored, Transferrer},
    Error,
};
use futures::{
    future::{BoxFuture, Shared},
    FutureExt,
};
use oci_client::secrets::RegistryAuth;
use tokio::{sync::Semaphore, task::AbortHandle};

use crate::{
    context,
    fetch::{blocking, check_document, Fetcher, Outcome},
    media::{self, Kind},
    oci::{self, MAX_DOCUMENT_SIZE},
    platform,
    reference::ImageRef,
    registry::{registry_auth, Bound, Remote},
    unpack::{chain_ids, Unpacker},
};

/// How deep indexes may nest inside indexes.
const MAX_INDEX_DEPTH: usize = 4;

/// The plugin's settings that shape a pull.
#[derive(Debug, Clone)]
pub struct Settings {
    pub max_concurrent_downloads: usize,
    /// The snapshotter an unpack without one uses.
    pub snapshotter: String,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// How long a failed pull's lease keeps partial downloads for a retry.
    pub lease_expiry: Duration,
}

struct Inner {
    content: Arc<dyn ContentStore>,
    leases: Arc<dyn LeaseManager>,
    images: Images,
    snapshotters: BTreeMap<String, Arc<dyn Snapshotter>>,
    differ: Arc<dyn Differ>,
    settings: Settings,
}

/// The `io.containerd.transfer.v1` implementation: pulls.
#[derive(Clone)]
pub struct Puller(Arc<Inner>);

impl Puller {
    pub fn new(
        content: Arc<dyn ContentStore>,
        leases: Arc<dyn LeaseManager>,
        images: Images,
        snapshotters: BTreeMap<String, Arc<dyn Snapshotter>>,
        differ: Arc<dyn Differ>,
        settings: Settings,
    ) -> Puller {
        Puller(Arc::new(Inner {
            content,
            leases,
            images,
            snapshotters,
            differ,
            settings,
        }))
    }
}

impl Transferrer for Puller {
    fn pull(
        &self,
        ns: &str,
        request: PullRequest,
        progress: ProgressFn,
    ) -> BoxFuture<'static, Result<Vec<Stored>, Error>> {
        let inner = self.0.clone();
        let ns = ns.to_string();
        Box::pin(async move { inner.pull(ns, request, progress).await })
    }
}

/// One manifest the pull selected, with what its config says.
struct Plan {
    manifest: Descriptor,
    /// The index entry's platform, or the config's.
    platform: Platform,
    config: Descriptor,
    layers: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
}

/// A snapshotter to unpack a platform into.
struct Target {
    platform: Platform,
    name: String,
    snapshotter: Arc<dyn Snapshotter>,
}

type Download = Shared<BoxFuture<'static, Result<Outcome, Error>>>;

/// The downloads of one pull, each started once; aborted when the pull
/// ends early (an error elsewhere, or the client went away).
#[derive(Default)]
struct Downloads {
    started: HashMap<Digest, Download>,
    aborts: Vec<AbortHandle>,
}

impl Downloads {
    fn start(&mut self, fetcher: &Arc<Fetcher>, desc: &Descriptor, what: String, parents: Vec<String>) {
        if self.started.contains_key(&desc.digest) {
            return;
        }
        fetcher.announce(desc, &parents);
        let (fetcher, desc2) = (fetcher.clone(), desc.clone());
        let task = tokio::spawn(async move { fetcher.fetch(&desc2, &what, &parents).await });
        self.aborts.push(task.abort_handle());
        let download = async move {
            task.await
                .map_err(|e| Error::Internal(format!("download task failed: {e}")))?
        }
        .boxed()
        .shared();
        self.started.insert(desc.digest.clone(), download);
    }

    fn all(&self) -> Vec<Download> {
        self.started.values().cloned().collect()
    }
}

impl Drop for Downloads {
    fn drop(&mut self) {
        for abort in &self.aborts {
            abort.abort();
        }
    }
}

fn emit(progress: &ProgressFn, event: impl Into<String>, name: &str, desc: Option<&Descriptor>) {
    progress(Progress {
        event: event.into(),
        name: name.to_string(),
        desc: desc.cloned(),
        ..Progress::default()
    });
}

impl Inner {
    async fn pull(
        self: Arc<Self>,
        ns: String,
        request: PullRequest,
        progress: ProgressFn,
    ) -> Result<Vec<Stored>, Error> {
        corten_core::identifiers::validate(&ns)?;
        let image = ImageRef::parse(&request.reference)?;
        let names = self.names(&request, &image)?;
        let targets = self.targets(&request)?;
        let plain_http = request.plain_http
            || image.is_loopback()
            || self.settings.insecure_registries.iter().any(|r| r == image.registry());
        emit(
            &progress,
            format!("Resolving from {}", image.name()),
            &image.name(),
            None,
        );

        let mut remote = Remote::new(&image, plain_http, RegistryAuth::Anonymous)?;
        let what = format!("image {}", image.name());
        let digest = match remote.resolve(&what).await {
            Ok(digest) => digest,
            Err(e) if e.is_unauthorized() && request.credentials.is_some() => {
                let source = request.credentials.as_ref().expect("checked above");
                let credentials = source.credentials(image.registry(), &image.name()).await?;
                remote = Remote::new(&image, plain_http, registry_auth(credentials)?)?;
                remote.resolve(&what).await.map_err(|e| remote.refused(e, &what))?
            }
            Err(e) => return Err(remote.refused(e, &what)),
        };

        let lease = self.create_lease(&ns).await?;
        let fetcher = Arc::new(Fetcher {
            ns: ns.clone(),
            lease: lease.clone(),
            content: self.content.clone(),
            leases: self.leases.clone(),
            remote,
            image: image.clone(),
            progress: progress.clone(),
            downloads: Arc::new(Semaphore::new(self.settings.max_concurrent_downloads.max(1))),
            wrote: Default::default(),
            fetched_bytes: Default::default(),
        });
        let result = self
            .clone()
            .pull_under_lease(&fetcher, &request, &image, digest, &names, &targets, &progress)
            .await;
        let keep = matches!(result, Err(Error::Unavailable(_))) && fetcher.wrote.load(Ordering::Relaxed);
        if keep {
            tracing::info!(%lease, "pull of {} interrupted: its partial downloads are kept for a retry", image.name());
        } else {
            let (leases, ns2, lease2) = (self.leases.clone(), ns.clone(), lease.clone());
            if let Err(e) = blocking(move || leases.delete(&ns2, &lease2)).await {
                tracing::warn!(%lease, "delete pull lease: {e}");
            }
        }
        if let Err(e) = &result {
            tracing::info!("pull of {} failed: {e}", image.name());
        }
        result
    }

    /// The image names to record: the requested one (or the normalised
    /// reference) and any extra ones.
    fn names(&self, request: &PullRequest, image: &ImageRef) -> Result<Vec<String>, Error> {
        let mut names = vec![if request.name.is_empty() {
            image.name()
        } else {
            request.name.clone()
        }];
        names.extend(request.extra_names.iter().cloned());
        for name in &names {
            if name.is_empty() || name.len() > corten_core::images::MAX_NAME_LEN || name.chars().any(char::is_control) {
                return Err(Error::InvalidArgument(format!("invalid image name {name:?}")));
            }
        }
        names.dedup();
        Ok(names)
    }

    fn targets(&self, request: &PullRequest) -> Result<Vec<Target>, Error> {
        let mut targets: Vec<Target> = Vec::new();
        for unpack in &request.unpacks {
            let name = if unpack.snapshotter.is_empty() {
                self.settings.snapshotter.clone()
            } else {
                unpack.snapshotter.clone()
            };
            let snapshotter = self.snapshotters.get(&name).cloned().ok_or_else(|| {
                let loaded: Vec<&str> = self.snapshotters.keys().map(String::as_str).collect();
                Error::NotFound(format!(
                    "snapshotter {name:?} (loaded: {})",
                    if loaded.is_empty() {
                        "none".to_string()
                    } else {
                        loaded.join(", ")
                    }
                ))
            })?;
            let platform = platform::normalize(&unpack.platform.clone().unwrap_or_else(platform::host));
            if !targets.iter().any(|t| t.name == name && t.platform == platform) {
                targets.push(Target {
                    platform,
                    name,
                    snapshotter,
                });
            }
        }
        Ok(targets)
    }

    async fn create_lease(&self, ns: &str) -> Result<String, Error> {
        let expires = SystemTime::now() + self.settings.lease_expiry;
        let labels = BTreeMap::from([(
            EXPIRE_LABEL.to_string(),
            humantime::format_rfc3339_seconds(expires).to_string(),
        )]);
        let id = format!("pull-{}", uuid::Uuid::new_v4().simple());
        let (leases, ns) = (self.leases.clone(), ns.to_string());
        blocking(move || leases.create(&ns, &id, labels).map(|l| l.id)).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn pull_under_lease(
        self: Arc<Self>,
        fetcher: &Arc<Fetcher>,
        request: &PullRequest,
        image: &ImageRef,
        digest: Digest,
        names: &[String],
        targets: &[Target],
        progress: &ProgressFn,
    ) -> Result<Vec<Stored>, Error> {
        let root = self.root(fetcher, image, digest).await?;
        emit(progress, "resolved", &image.name(), Some(&root.0));
        let root_desc = root.0.clone();

        let mut downloads = Downloads::default();
        let plans = self.walk(fetcher, request, image, root, &mut downloads).await?;

        let all = futures::future::try_join_all(downloads.all()).map(|r| r.map(drop));
        let unpack = self.clone().unpack_all(fetcher, &plans, targets, &downloads, progress);
        futures::future::try_join(unpack, all).await?;
        drop(downloads);

        let mut stored = Vec::new();
        for name in names {
            let record = Image {
                name: name.clone(),
                labels: request.labels.clone(),
                target: root_desc.clone(),
                created_at: SystemTime::UNIX_EPOCH,
                updated_at: SystemTime::UNIX_EPOCH,
            };
            let (images, ns) = (self.images.clone(), fetcher.ns.clone());
            let saved = blocking(move || match images.create(&ns, &record) {
                Ok(image) => Ok(Stored { image, created: true }),
                Err(Error::AlreadyExists(_)) => images
                    .update(&ns, &record.name, &record.labels, Some(&record.target), &[])
                    .map(|image| Stored { image, created: false }),
                Err(e) => Err(e),
            })
            .await?;
            emit(progress, "saved", &saved.image.name, Some(&saved.image.target));
            stored.push(saved);
        }
        emit(
            progress,
            format!(
                "Completed pull from {} ({} bytes fetched)",
                image.name(),
                fetcher.fetched_bytes.load(Ordering::Relaxed)
            ),
            &image.name(),
            None,
        );
        Ok(stored)
    }

    /// The document the reference resolves to, from the store or the
    /// registry: its descriptor (media type from the document itself) and
    /// its bytes.
    async fn root(
        &self,
        fetcher: &Arc<Fetcher>,
        image: &ImageRef,
        digest: Digest,
    ) -> Result<(Descriptor, Vec<u8>), Error> {
        let what = format!("manifest {digest} of {}", image.name());
        let mut desc = Descriptor {
            media_type: String::new(),
            digest: digest.clone(),
            size: 0,
            annotations: BTreeMap::new(),
        };
        let local = fetcher.existing(&desc).await?;
        let bytes = if local {
            fetcher.read(&digest, &what).await?
        } else {
            // Bounded by MAX_DOCUMENT_SIZE while it is read.
            fetcher.remote.manifest(&digest, &what, Bound::Largest).await?.to_vec()
        };
        desc.size = bytes.len() as u64;
        desc.media_type = oci::sniff_media_type(&bytes).map_err(|e| context(e, &what))?;
        media::require(&desc, &what, &[Kind::Index, Kind::Manifest])?;
        check_document(&bytes, &desc, &what)?;
        if local {
            fetcher.emit("already exists", &desc, &[], desc.size);
        } else {
            fetcher.announce(&desc, &[]);
            fetcher.store_bytes(&desc, bytes.clone()).await?;
            fetcher.fetched_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            fetcher.emit("complete", &desc, &[], desc.size);
        }
        Ok((desc, bytes))
    }

    /// Walks from the root: indexes narrowed to the wanted platforms,
    /// manifests and configs fetched, layer downloads started. Sets the
    /// garbage-collection labels on every index and manifest.
    async fn walk(
        &self,
        fetcher: &Arc<Fetcher>,
        request: &PullRequest,
        image: &ImageRef,
        root: (Descriptor, Vec<u8>),
        downloads: &mut Downloads,
    ) -> Result<Vec<Plan>, Error> {
        struct Node {
            desc: Descriptor,
            bytes: Option<Vec<u8>>,
            parents: Vec<String>,
            platform: Option<Platform>,
            depth: usize,
        }
        let mut queue = VecDeque::from([Node {
            desc: root.0,
            bytes: Some(root.1),
            parents: Vec::new(),
            platform: None,
            depth: 0,
        }]);
        let mut plans = Vec::new();
        let wanted: Vec<Platform> = request.platforms.iter().map(platform::normalize).collect();
        while let Some(node) = queue.pop_front() {
            let kind = media::require(
                &node.desc,
                &format!("manifest {} of {}", node.desc.digest, image.name()),
                &[Kind::Index, Kind::Manifest],
            )?;
            let what = format!(
                "{} {}",
                if kind == Kind::Index { "index" } else { "manifest" },
                node.desc.digest
            );
            let bytes = match node.bytes {
                Some(bytes) => bytes,
                None => fetcher.document(&node.desc, &what, &node.parents).await?,
            };
            let name = media::ref_key(&node.desc);
            if kind == Kind::Index {
                if node.depth >= MAX_INDEX_DEPTH {
                    return Err(Error::InvalidArgument(format!("{what}: indexes nest too deep")));
                }
                let index = oci::parse_index(&node.desc, &bytes)?;
                let children: Vec<Descriptor> = index.manifests.iter().map(|m| m.desc.clone()).collect();
                fetcher
                    .label(&node.desc.digest, oci::child_gc_labels(&children))
                    .await?;
                let selected = select(&index.manifests, &wanted, request.manifest_limit);
                if selected.is_empty() {
                    let available: Vec<String> = index
                        .manifests
                        .iter()
                        .filter_map(|m| m.platform.as_ref().map(ToString::to_string))
                        .collect();
                    let asked: Vec<String> = wanted.iter().map(ToString::to_string).collect();
                    return Err(Error::NotFound(format!(
                        "{what} of {}: no manifest for {} (it has {})",
                        image.name(),
                        asked.join(", "),
                        if available.is_empty() {
                            "none".into()
                        } else {
                            available.join(", ")
                        }
                    )));
                }
                for entry in selected {
                    queue.push_back(Node {
                        desc: entry.desc.clone(),
                        bytes: None,
                        parents: vec![name.clone()],
                        platform: entry.platform.clone(),
                        depth: node.depth + 1,
                    });
                }
                continue;
            }

            let manifest = oci::parse_manifest(&node.desc, &bytes)?;
            let config_what = format!("config {} of {what}", manifest.config.digest);
            media::require(&manifest.config, &config_what, &[Kind::Config])?;
            for (i, layer) in manifest.layers.iter().enumerate() {
                media::require(
                    layer,
                    &format!("layer {} ({i} of {what})", layer.digest),
                    &[Kind::Layer],
                )?;
            }
            let mut children = vec![manifest.config.clone()];
            children.extend(manifest.layers.iter().cloned());
            fetcher
                .label(&node.desc.digest, oci::child_gc_labels(&children))
                .await?;

            if manifest.config.size > MAX_DOCUMENT_SIZE {
                return Err(Error::InvalidArgument(format!(
                    "{config_what}: {} bytes is more than a config may have",
                    manifest.config.size
                )));
            }
            let parents = vec![name.clone()];
            fetcher.announce(&manifest.config, &parents);
            fetcher.fetch(&manifest.config, &config_what, &parents).await?;
            let config_bytes = fetcher.read(&manifest.config.digest, &config_what).await?;
            let config = oci::parse_config(&manifest.config, &config_bytes)?;
            if config.diff_ids.len() != manifest.layers.len() {
                return Err(Error::InvalidArgument(format!(
                    "{what}: {} layers, but its config lists {} diff IDs",
                    manifest.layers.len(),
                    config.diff_ids.len()
                )));
            }
            for (i, layer) in manifest.layers.iter().enumerate() {
                downloads.start(
                    fetcher,
                    layer,
                    format!("layer {} ({i} of {what})", layer.digest),
                    parents.clone(),
                );
            }
            plans.push(Plan {
                manifest: node.desc.clone(),
                platform: node.platform.unwrap_or(config.platform),
                config: manifest.config,
                layers: manifest.layers,
                diff_ids: config.diff_ids,
            });
        }
        Ok(plans)
    }

    /// Unpacks each target's manifest, layer by layer as downloads finish.
    async fn unpack_all(
        self: Arc<Self>,
        fetcher: &Arc<Fetcher>,
        plans: &[Plan],
        targets: &[Target],
        downloads: &Downloads,
        progress: &ProgressFn,
    ) -> Result<(), Error> {
        for target in targets {
            let Some(plan) = plans.iter().find(|p| platform::matches(&target.platform, &p.platform)) else {
                tracing::debug!("no manifest for {} to unpack", target.platform);
                continue;
            };
            let chain = chain_ids(&plan.diff_ids);
            let unpacker = Arc::new(Unpacker {
                ns: fetcher.ns.clone(),
                lease: fetcher.lease.clone(),
                content: self.content.clone(),
                snapshotter: target.snapshotter.clone(),
                differ: self.differ.clone(),
            });
            for (i, layer) in plan.layers.iter().enumerate() {
                if let Some(download) = downloads.started.get(&layer.digest) {
                    download.clone().await?;
                }
                let name = media::ref_key(layer);
                progress(Progress {
                    event: "unpacking".into(),
                    name: name.clone(),
                    parents: vec![media::ref_key(&plan.manifest)],
                    progress: 0,
                    total: layer.size,
                    desc: Some(layer.clone()),
                });
                let parent = if i == 0 {
                    String::new()
                } else {
                    chain[i - 1].to_string()
                };
                let (unpacker2, layer2, diff_id, chain_id) = (
                    unpacker.clone(),
                    layer.clone(),
                    plan.diff_ids[i].clone(),
                    chain[i].clone(),
                );
                let applied = blocking(move || unpacker2.layer(&layer2, &diff_id, &parent, &chain_id)).await?;
                progress(Progress {
                    event: if applied { "unpacked" } else { "already unpacked" }.into(),
                    name,
                    parents: vec![media::ref_key(&plan.manifest)],
                    progress: layer.size,
                    total: layer.size,
                    desc: Some(layer.clone()),
                });
            }
            if let Some(top) = chain.last() {
                let key = format!("{}{}", gc::SNAPSHOT_REF_PREFIX, target.name);
                fetcher
                    .label(&plan.config.digest, BTreeMap::from([(key, top.to_string())]))
                    .await?;
            }
        }
        Ok(())
    }
}

/// The entries of an index to fetch: those for the wanted platforms (all
/// when none is named; entries without a platform are kept, as containerd
/// keeps them), in the order the platforms were asked for, at most `limit`.
fn select<'a>(entries: &'a [oci::IndexEntry], wanted: &[Platform], limit: usize) -> Vec<&'a oci::IndexEntry> {
    let mut selected: Vec<(usize, &oci::IndexEntry)> = entries
        .iter()
        .filter(|e| matches!(media::kind(&e.desc.media_type), Kind::Index | Kind::Manifest))
        .filter_map(|e| match (&e.platform, wanted.is_empty()) {
            (_, true) => Some((0, e)),
            (None, false) => Some((wanted.len(), e)),
            (Some(p), false) => wanted
                .iter()
                .position(|w| platform::matches(w, p))
                .map(|rank| (rank, e)),
        })
        .collect();
    selected.sort_by_key(|(rank, _)| *rank);
    let mut out: Vec<&oci::IndexEntry> = selected.into_iter().map(|(_, e)| e).collect();
    if limit > 0 {
        out.truncate(limit);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(arch: &str, c: char) -> oci::IndexEntry {
        oci::IndexEntry {
            desc: Descriptor {
                media_type: media::OCI_MANIFEST.into(),
                digest: format!("sha256:{}", c.to_string().repeat(64)).parse().unwrap(),
                size: 1,
                annotations: BTreeMap::new(),
            },
            platform: Some(Platform {
                os: "linux".into(),
                architecture: arch.into(),
                variant: String::new(),
            }),
        }
    }

    #[test]
    fn selects_platforms_in_the_order_asked() {
        let entries = [entry("amd64", 'a'), entry("arm64", 'b'), entry("s390x", 'c')];
        let p = |a: &str| platform::parse(&format!("linux/{a}")).unwrap();
        let picked = select(&entries, &[p("arm64")], 0);
        assert_eq!(picked.len(), 1);
        assert_eq!(picked[0].desc.digest, entries[1].desc.digest);
        let both = select(&entries, &[p("s390x"), p("amd64")], 0);
        assert_eq!(both[0].desc.digest, entries[2].desc.digest);
        assert_eq!(select(&entries, &[], 0).len(), 3);
        assert_eq!(select(&entries, &[], 2).len(), 2);
        assert!(select(&entries, &[p("riscv64")], 0).is_empty());
    }
}
