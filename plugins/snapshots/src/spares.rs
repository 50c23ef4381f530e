//! Snapshot directories made ahead of need, so a creation moves a ready
//! set into place with one `rename` instead of making it.
//!
//! Making a directory is not cheap where snapshots come and go: ext4 looks
//! for a free inode past every recently freed one in the group (without a
//! journal it will not reuse them for a while), and snapshot directories
//! are freed as fast as they are made. Measured in the daemon, the two or
//! three `mkdir`s of a creation took more time than anything else in it. A
//! thread of its own makes them here instead, off the creation's path, at
//! a lower CPU priority ([`priority`](crate::priority)).
//!
//! Under the root, `spare/<batch>/<n>` holds a set: `<n>` itself (0700) and
//! the [`DirSpec`]s of one layout inside, with their modes. The thread
//! makes a batch of [`BATCH`] sets at a time and hands them out only once
//! the batch is complete: a `rename` out of a directory waits for any
//! `mkdir` in it, and the thread's are slow, so creations never take from
//! the batch the thread is making. A batch directory whose sets are all
//! taken becomes a husk (below).
//!
//! A set is only made here and only ever handed out once, by a `rename` to
//! `snapshots/<id>`: nothing else names a spare, no mount or client has
//! seen one, so a spare is as new as a directory made on the spot.
//!
//! Fewer directories made is fewer freed, and so cheaper to make the rest:
//! empty directories of ours that nothing outside ever saw are kept as
//! *husks* (`spare/husk/<n>`) and become batch directories and the top
//! directories of sets, by a `rename`. They come from drained batches and
//! from the top directories of removed snapshots, once emptied
//! ([`Spares::recycle`]): `snapshots/<id>` itself is never mounted or
//! handed out, only what is inside it. What is inside a set (`fs`, `work`)
//! is always made new, never taken from a removed snapshot: that one's may
//! still be mounted somewhere, and a new snapshot must never show up there.
//!
//! The backend's crash argument holds as it is: a `rename` that a crash
//! loses leaves the snapshot's directory missing, as a lost `mkdir` does,
//! and the set back in `spare/`, where the next open finds it; what the
//! thread was making when the crash came is removed then, as anything in
//! `spare/` that is not exactly a set or a husk is.

use std::{
    collections::{HashMap, HashSet},
    fs::{self, DirBuilder},
    io::ErrorKind,
    os::unix::fs::{DirBuilderExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread::JoinHandle,
    time::Duration,
};

use corten_core::Error;
use nix::{
    errno::Errno,
    fcntl::{renameat2, RenameFlags, AT_FDCWD},
};
use tracing::warn;

use crate::backend::DirSpec;

/// Sets kept ready per layout: enough for a burst of creations while the
/// thread catches up, few enough that an idle daemon keeps little.
pub const READY: usize = 32;

/// Sets the thread makes in one batch directory.
pub const BATCH: usize = 8;

/// The thread makes a batch once a pool holds fewer sets than this.
const REFILL_BELOW: usize = READY - BATCH + 1;

/// Husks kept at most; more are removed.
pub const HUSKS: usize = 256;

/// After a failure to make a set, the thread waits this long before it
/// tries again, rather than spin on a full or read-only disk.
const BACKOFF: Duration = Duration::from_secs(1);

pub struct Spares {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    dir: PathBuf,
    umask: Option<u32>,
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// One pool per layout: those named at open, whose sets an earlier run
    /// left are kept, and those creations asked for since.
    pools: Vec<Pool>,
    /// Sets of each batch not taken yet, by batch.
    batches: HashMap<u64, usize>,
    /// Batches whose sets are all taken, for the thread to recycle.
    drained: Vec<u64>,
    /// `spare/husk/<n>`.
    husks: Vec<u64>,
    /// The next number for a batch, a set or a husk.
    next: u64,
    /// Whether the thread has looked at what an earlier run left. Until
    /// then it makes nothing, there is nothing to take, and nothing is
    /// recycled, as the numbers in use are not known.
    adopted: bool,
    stop: bool,
}

struct Pool {
    layout: &'static [DirSpec],
    /// `(batch, set)`.
    ready: Vec<(u64, u64)>,
    /// Kept full once a creation has asked for this layout: a daemon that
    /// makes no snapshots makes no spares either.
    wanted: bool,
}

fn io_err(context: impl std::fmt::Display) -> impl Fn(std::io::Error) -> Error {
    move |e| Error::internal(&context.to_string(), e)
}

/// Makes `dir` (0700) and the directories of `layout` in it. The umask
/// must not narrow what overlayfs and the runtime see: modes it would
/// clear bits of are set again. Fails without touching `dir` if it exists,
/// and leaves nothing when it fails after making it.
pub fn make_set(dir: &Path, layout: &[DirSpec], umask: Option<u32>) -> Result<(), Error> {
    DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io_err(format!("create {}", dir.display())))?;
    let inside = make_inside(dir, layout, umask);
    if inside.is_err() {
        let _ = fs::remove_dir_all(dir);
    }
    inside
}

fn make_inside(dir: &Path, layout: &[DirSpec], umask: Option<u32>) -> Result<(), Error> {
    for (name, mode) in layout {
        let path = dir.join(name);
        DirBuilder::new()
            .mode(*mode)
            .create(&path)
            .map_err(io_err(format!("create {}", path.display())))?;
        if umask.is_none_or(|umask| mode & umask != 0) {
            fs::set_permissions(&path, fs::Permissions::from_mode(*mode))
                .map_err(io_err(format!("chmod {}", path.display())))?;
        }
    }
    Ok(())
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Spares {
    /// Starts keeping sets ready under `<root>/spare`. Sets an earlier run
    /// left are kept when they are exactly one of `layouts`, empty; anything
    /// else there is removed. Both happen on the thread, so as not to slow
    /// the daemon's start.
    pub fn open(root: &Path, umask: Option<u32>, layouts: &[&'static [DirSpec]]) -> Result<Spares, Error> {
        let dir = root.join("spare");
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err(format!("create {}", dir.display())))?;
        let state = State {
            pools: layouts
                .iter()
                .map(|layout| Pool {
                    layout,
                    ready: Vec::new(),
                    wanted: false,
                })
                .collect(),
            ..State::default()
        };
        let shared = Arc::new(Shared {
            dir,
            umask,
            state: Mutex::new(state),
            wake: Condvar::new(),
        });
        let worker = shared.clone();
        let thread = std::thread::Builder::new()
            .name("snapshot-spares".into())
            .spawn(move || worker.run())
            .map_err(|e| Error::internal("start the spare directory thread", e))?;
        Ok(Spares {
            shared,
            thread: Some(thread),
        })
    }

    /// Keeps `dir`, an empty directory of ours (0700) that nothing outside
    /// ever saw, as a husk; false, leaving it where it is, when there are
    /// enough already or it cannot be moved.
    pub fn recycle(&self, dir: &Path) -> bool {
        self.shared.recycle(dir)
    }

    /// Moves a ready set of `layout` to `target` (which must not exist).
    /// False when none is ready: the caller makes the directories itself.
    pub fn take(&self, layout: &'static [DirSpec], target: &Path) -> bool {
        let taken = {
            let mut state = lock(&self.shared.state);
            let pool = match state.pools.iter().position(|p| p.layout == layout) {
                Some(i) => &mut state.pools[i],
                None => {
                    state.pools.push(Pool {
                        layout,
                        ready: Vec::new(),
                        wanted: true,
                    });
                    state.pools.last_mut().expect("just pushed")
                }
            };
            let newly_wanted = !pool.wanted;
            pool.wanted = true;
            let taken = pool.ready.pop();
            // Woken only when there is a batch to make: a wake-up per
            // creation would cost a context switch each.
            if newly_wanted || pool.ready.len() == REFILL_BELOW - 1 || taken.is_none() {
                self.shared.wake.notify_one();
            }
            taken
        };
        let Some((batch, n)) = taken else {
            return false;
        };
        let spare = self.shared.dir.join(batch.to_string()).join(n.to_string());
        // Never onto something there already: a plain rename would replace
        // an empty directory.
        let moved = renameat2(AT_FDCWD, &spare, AT_FDCWD, target, RenameFlags::RENAME_NOREPLACE);
        let mut state = lock(&self.shared.state);
        match moved {
            Ok(()) => {
                let left = state.batches.entry(batch).or_insert(1);
                *left -= 1;
                if *left == 0 {
                    state.batches.remove(&batch);
                    state.drained.push(batch);
                    self.shared.wake.notify_one();
                }
                true
            }
            Err(e) => {
                if e == Errno::EINVAL {
                    // The filesystem cannot rename without replacing: make
                    // no more spares, and let the ones made stay unused.
                    warn!("{}: no spare snapshot directories: {e}", self.shared.dir.display());
                    state.stop = true;
                } else if let Some(pool) = state.pools.iter_mut().find(|p| p.layout == layout) {
                    pool.ready.push((batch, n));
                }
                false
            }
        }
    }
}

impl Drop for Spares {
    fn drop(&mut self) {
        lock(&self.shared.state).stop = true;
        self.shared.wake.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// What [`adopt`] found: the sets of each layout, the sets in each batch,
/// and the next number.
type Adopted = (Vec<Vec<(u64, u64)>>, HashMap<u64, usize>, u64);

/// Under `spare/`: the husks.
const HUSK_DIR: &str = "husk";

/// The husks an earlier run left in `dir`: empty directories (0700) named
/// by numbers, at most [`HUSKS`]; the rest is removed.
fn adopt_husks(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut husks = Vec::new();
    for (path, n) in numbered(dir)? {
        let husk = n.filter(|_| {
            husks.len() < HUSKS
                && fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o7777 == 0o700)
                && fs::read_dir(&path).is_ok_and(|mut inner| inner.next().is_none())
        });
        match husk {
            Some(n) => husks.push(n),
            None => remove(&path),
        }
    }
    Ok(husks)
}

/// Finds the sets an earlier run left in `dir` and sorts the ones that are
/// exactly one of `layouts`, empty, by layout; removes the rest, and batch
/// directories left empty. Numbers go on above the highest seen.
fn adopt(dir: &Path, layouts: &[&'static [DirSpec]]) -> Result<Adopted, Error> {
    let mut found = vec![Vec::new(); layouts.len()];
    let mut batches = HashMap::new();
    let mut next = 0;
    for (batch_dir, batch) in numbered(dir)? {
        if batch_dir.file_name().is_some_and(|n| n == HUSK_DIR) {
            continue;
        }
        let Some(batch) = batch.filter(|_| batch_dir.is_dir() && !batch_dir.is_symlink()) else {
            remove(&batch_dir);
            continue;
        };
        next = u64::max(next, batch + 1);
        let mut kept = 0;
        for (path, n) in numbered(&batch_dir)? {
            if let Some(n) = n {
                next = u64::max(next, n + 1);
                if let Some(i) = layouts.iter().position(|layout| is_set(&path, layout)) {
                    found[i].push((batch, n));
                    kept += 1;
                    continue;
                }
            }
            remove(&path);
        }
        if kept == 0 {
            remove(&batch_dir);
        } else {
            batches.insert(batch, kept);
        }
    }
    Ok((found, batches, next))
}

/// The entries of `dir`, with their numbers when they are numbers.
fn numbered(dir: &Path) -> Result<Vec<(PathBuf, Option<u64>)>, Error> {
    let list = fs::read_dir(dir).map_err(io_err(format!("list {}", dir.display())))?;
    let mut out = Vec::new();
    for entry in list {
        let entry = entry.map_err(io_err(format!("list {}", dir.display())))?;
        let n = entry.file_name().to_str().and_then(|n| n.parse::<u64>().ok());
        out.push((entry.path(), n));
    }
    Ok(out)
}

fn remove(path: &Path) {
    let removed = if path.is_dir() && !path.is_symlink() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    if let Err(e) = removed {
        warn!("remove {}: {e}", path.display());
    }
}

/// Whether `dir` holds exactly the empty directories of `layout`, with
/// their modes (a crash may have come between a `mkdir` and its `chmod`).
fn is_set(dir: &Path, layout: &[DirSpec]) -> bool {
    let Ok(list) = fs::read_dir(dir) else {
        return false;
    };
    let mut seen = HashSet::new();
    for entry in list {
        let Ok(entry) = entry else {
            return false;
        };
        let name = entry.file_name();
        let Some((name, mode)) = layout.iter().find(|(n, _)| name.to_str() == Some(*n)) else {
            return false;
        };
        let fits = fs::symlink_metadata(entry.path())
            .is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o7777 == *mode)
            && fs::read_dir(entry.path()).is_ok_and(|mut inner| inner.next().is_none());
        if !fits {
            return false;
        }
        seen.insert(*name);
    }
    seen.len() == layout.len()
}

impl Shared {
    /// The thread: takes over what an earlier run left, then tops up the
    /// emptiest wanted pool, a batch at a time, until every one holds at
    /// least `READY - BATCH + 1` sets (at most [`READY`]), recycles drained
    /// batches, and sleeps until it is needed again.
    fn run(&self) {
        let layouts: Vec<_> = lock(&self.state).pools.iter().map(|p| p.layout).collect();
        let adopted = adopt(&self.dir, &layouts).and_then(|found| {
            let husks = self.husk_dir();
            DirBuilder::new()
                .mode(0o700)
                .create(&husks)
                .or_else(|e| {
                    if e.kind() == ErrorKind::AlreadyExists {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })
                .map_err(io_err(format!("create {}", husks.display())))?;
            Ok((found, adopt_husks(&husks)?))
        });
        let mut state = lock(&self.state);
        match adopted {
            Ok(((found, batches, next), husks)) => {
                for (pool, found) in state.pools.iter_mut().zip(found) {
                    pool.ready.extend(found);
                }
                state.batches = batches;
                state.next = u64::max(next, husks.iter().max().map_or(0, |h| h + 1));
                state.husks.extend(husks);
                state.adopted = true;
            }
            // Numbers the earlier run used are unknown: make no spares.
            Err(e) => {
                warn!("look at spare snapshot directories: {e}");
                return;
            }
        }
        loop {
            if state.stop {
                return;
            }
            if let Some(batch) = state.drained.pop() {
                drop(state);
                // Empty unless a set could not be moved out, which is then
                // lost with it.
                let dir = self.dir.join(batch.to_string());
                let empty = fs::read_dir(&dir).is_ok_and(|mut inner| inner.next().is_none());
                if !(empty && self.recycle(&dir)) {
                    remove(&dir);
                }
                state = lock(&self.state);
                continue;
            }
            let Some(pool) = (0..state.pools.len())
                .filter(|&i| state.pools[i].wanted && state.pools[i].ready.len() < REFILL_BELOW)
                .min_by_key(|&i| state.pools[i].ready.len())
            else {
                state = self.wake.wait(state).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            let layout = state.pools[pool].layout;
            let batch = state.next;
            state.next += 1 + BATCH as u64;
            drop(state);

            let made = self.make_batch(batch, layout);
            state = lock(&self.state);
            match made {
                Ok(sets) => {
                    state.batches.insert(batch, sets.len());
                    state.pools[pool].ready.extend(sets.into_iter().map(|n| (batch, n)));
                }
                Err(e) => {
                    warn!("make spare snapshot directories: {e}");
                    state = self
                        .wake
                        .wait_timeout_while(state, BACKOFF, |s| !s.stop)
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
            }
        }
    }

    /// Makes batch `batch` of [`BATCH`] sets of `layout`, numbered after it;
    /// returns their numbers. Nothing is left of a batch that fails.
    fn make_batch(&self, batch: u64, layout: &'static [DirSpec]) -> Result<Vec<u64>, Error> {
        let dir = self.dir.join(batch.to_string());
        self.empty_dir(&dir)?;
        let sets: Vec<u64> = (batch + 1..=batch + BATCH as u64).collect();
        for n in &sets {
            let set = dir.join(n.to_string());
            let made = self.empty_dir(&set).and_then(|()| {
                // Only the `mkdir`s run lowered; the renames that move husks
                // do not (see `priority`).
                let _lowered = crate::priority::lower_for_now();
                make_inside(&set, layout, self.umask)
            });
            if let Err(e) = made {
                remove(&dir);
                return Err(e);
            }
        }
        Ok(sets)
    }

    fn husk_dir(&self) -> PathBuf {
        self.dir.join(HUSK_DIR)
    }

    /// Makes `target` an empty directory (0700): a husk moved there, when
    /// there is one.
    fn empty_dir(&self, target: &Path) -> Result<(), Error> {
        let husk = lock(&self.state).husks.pop();
        if let Some(husk) = husk {
            let from = self.husk_dir().join(husk.to_string());
            if renameat2(AT_FDCWD, &from, AT_FDCWD, target, RenameFlags::RENAME_NOREPLACE).is_ok() {
                return Ok(());
            }
            remove(&from);
        }
        DirBuilder::new()
            .mode(0o700)
            .create(target)
            .map_err(io_err(format!("create {}", target.display())))
    }

    fn recycle(&self, dir: &Path) -> bool {
        let number = {
            let mut state = lock(&self.state);
            (state.adopted && state.husks.len() < HUSKS).then(|| {
                state.next += 1;
                state.next - 1
            })
        };
        if let Some(n) = number {
            let to = self.husk_dir().join(n.to_string());
            if renameat2(AT_FDCWD, dir, AT_FDCWD, &to, RenameFlags::RENAME_NOREPLACE).is_ok() {
                lock(&self.state).husks.push(n);
                return true;
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    const LAYOUT: &[DirSpec] = &[("fs", 0o755), ("work", 0o711)];
    const OTHER: &[DirSpec] = &[("fs", 0o755)];

    fn wait_ready(spares: &Spares, layout: &'static [DirSpec], n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let ready = lock(&spares.shared.state)
                .pools
                .iter()
                .find(|p| p.layout == layout)
                .map_or(0, |p| p.ready.len());
            if ready >= n {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{ready} spares ready");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn hands_out_new_sets_and_makes_more() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::open(dir.path(), None, &[LAYOUT, OTHER]).unwrap();
        // Nothing is made before a creation asks.
        assert!(!spares.take(LAYOUT, &dir.path().join("first")));
        wait_ready(&spares, LAYOUT, READY);
        for i in 0..READY + 5 {
            let target = dir.path().join(format!("t{i}"));
            if !spares.take(LAYOUT, &target) {
                make_set(&target, LAYOUT, None).unwrap();
            }
            assert!(is_set(&target, LAYOUT));
            let mode = |p: PathBuf| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
            assert_eq!((mode(target.join("fs")), mode(target.join("work"))), (0o755, 0o711));
        }
        wait_ready(&spares, LAYOUT, REFILL_BELOW);
        assert!(lock(&spares.shared.state).pools[1].ready.is_empty());
        // Never onto something there already.
        fs::create_dir(dir.path().join("taken")).unwrap();
        assert!(!spares.take(LAYOUT, &dir.path().join("taken")));
        assert!(fs::read_dir(dir.path().join("taken")).unwrap().next().is_none());
        wait_ready(&spares, LAYOUT, REFILL_BELOW);
        // A layout not named at open gets a pool of its own once asked for.
        const THIRD: &[DirSpec] = &[("fs", 0o700)];
        assert!(!spares.take(THIRD, &dir.path().join("o")));
        wait_ready(&spares, THIRD, READY);
        assert!(spares.take(THIRD, &dir.path().join("o")));
        assert!(is_set(&dir.path().join("o"), THIRD));
    }

    #[test]
    fn a_restart_keeps_clean_sets_only() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spares = Spares::open(dir.path(), None, &[LAYOUT]).unwrap();
            assert!(!spares.take(LAYOUT, &dir.path().join("first")));
            wait_ready(&spares, LAYOUT, READY);
        }
        let spare = dir.path().join("spare");
        let mut made: Vec<PathBuf> = Vec::new();
        for (batch, _) in numbered(&spare).unwrap() {
            made.extend(numbered(&batch).unwrap().into_iter().map(|(p, _)| p));
        }
        made.sort();
        assert_eq!(made.len(), READY);
        fs::write(made[0].join("fs/file"), b"x").unwrap();
        fs::remove_dir(made[1].join("fs")).unwrap();
        fs::create_dir(made[2].join("extra")).unwrap();
        // A crash between a `mkdir` and its `chmod` leaves a narrower mode.
        fs::set_permissions(made[4].join("work"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::create_dir(made[3].parent().unwrap().join("junk")).unwrap();
        fs::create_dir(spare.join("junk")).unwrap();
        // A batch with nothing usable left goes as a whole.
        let lone_batch = spare.join("1000000");
        fs::create_dir_all(lone_batch.join("1000001/fs")).unwrap();
        fs::write(lone_batch.join("1000001/fs/file"), b"x").unwrap();

        let (found, batches, next) = adopt(&spare, &[OTHER, LAYOUT]).unwrap();
        assert!(found[0].is_empty());
        assert_eq!(found[1].len(), READY - 4);
        assert_eq!(batches.values().sum::<usize>(), READY - 4);
        assert_eq!(next, 1_000_002);
        for gone in [&made[0], &made[1], &made[2], &made[4]] {
            assert!(!gone.exists(), "{}", gone.display());
        }
        assert!(!made[3].parent().unwrap().join("junk").exists());
        assert!(!spare.join("junk").exists() && !lone_batch.exists());

        // And the thread hands them out at once, before making any.
        let spares = Spares::open(dir.path(), None, &[LAYOUT]).unwrap();
        wait_ready(&spares, LAYOUT, READY - 4);
        for i in 0..READY - 4 {
            assert!(spares.take(LAYOUT, &dir.path().join(format!("t{i}"))));
        }
        // Batches whose sets are all taken go, to be husks.
        let batches = || numbered(&spare).unwrap().iter().filter(|(_, n)| n.is_some()).count();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while batches() > READY / BATCH {
            assert!(std::time::Instant::now() < deadline, "{} batches", batches());
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn husks_become_sets_and_batches() {
        let dir = tempfile::tempdir().unwrap();
        let spares = Spares::open(dir.path(), None, &[OTHER]).unwrap();
        let husks = || lock(&spares.shared.state).husks.len();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !lock(&spares.shared.state).adopted {
            assert!(std::time::Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut inodes = HashSet::new();
        for i in 0..2 * BATCH {
            let husk = dir.path().join(format!("h{i}"));
            DirBuilder::new().mode(0o700).create(&husk).unwrap();
            inodes.insert(fs::metadata(&husk).unwrap().ino());
            assert!(spares.recycle(&husk));
            assert!(!husk.exists());
        }
        assert_eq!(husks(), 2 * BATCH);
        // A batch and its sets are husks moved into place.
        assert!(!spares.take(OTHER, &dir.path().join("first")));
        wait_ready(&spares, OTHER, READY);
        assert!(spares.take(OTHER, &dir.path().join("t")));
        let reused = fs::metadata(dir.path().join("t")).unwrap().ino();
        assert!(is_set(&dir.path().join("t"), OTHER));
        let reused_any = lock(&spares.shared.state).husks.len() < 2 * BATCH;
        assert!(reused_any && (inodes.contains(&reused) || husks() == 0));
        wait_ready(&spares, OTHER, REFILL_BELOW);
        // At most HUSKS are kept; the rest go.
        for i in 0..HUSKS + 5 {
            let husk = dir.path().join(format!("x{i}"));
            DirBuilder::new().mode(0o700).create(&husk).unwrap();
            assert_eq!(spares.recycle(&husk), i < HUSKS, "{i}");
            assert_eq!(husk.exists(), i >= HUSKS, "{i}");
        }
        assert_eq!(husks(), HUSKS);
        drop(spares);
        // And a restart keeps them.
        let again = Spares::open(dir.path(), None, &[OTHER]).unwrap();
        while !lock(&again.shared.state).adopted {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(lock(&again.shared.state).husks.len(), HUSKS);
    }
}
