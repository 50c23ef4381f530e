//! Finding, and making, the directory a layer entry belongs in, without
//! ever leaving the tree.
//!
//! A layer may put a symlink anywhere and then write "through" it, and real
//! images do (`bin -> usr/bin` and a later layer adding `bin/tool`). Such
//! paths are resolved the way containerd does it, as if the tree's root were
//! `/`: an absolute target starts again at the root and `..` stops there.
//! The walk is done here, one name at a time, each opened relative to the
//! directory before it with `O_NOFOLLOW`, so the kernel never resolves a
//! symlink on our behalf and no race can take the walk outside.
//!
//! For an overlay upper directory the walk sees what the mounted overlay
//! would: a name absent from the upper directory is looked up in the lower
//! layers (honouring whiteouts and opaque directories), a directory found
//! only there is copied up (owner, mode, xattrs), and a symlink found only
//! there is followed like one in the upper directory.

use std::{
    collections::VecDeque,
    ffi::{OsStr, OsString},
    os::{
        fd::{AsFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::PathBuf,
    rc::Rc,
};

use corten_core::Error;
use nix::unistd::{unlinkat, UnlinkatFlags};

use crate::fsutil::{self, Kind};

/// Symlinks one path may pass through (Linux's own limit).
const MAX_LINKS: usize = 40;
/// Names one resolution may look at, symlink targets included; bounds the
/// work a hostile chain of `a/../a/../` targets can cause.
const MAX_STEPS: usize = 4096;
/// Directory depth below the root.
pub const MAX_DEPTH: usize = 1024;

/// A directory reached inside the tree.
pub struct DirHandle {
    pub fd: OwnedFd,
    /// Its names from the root: real directories, no symlinks.
    pub path: Vec<OsString>,
    /// Overlay: the lower directories merged under this one, top first.
    pub lowers: Vec<OwnedFd>,
}

impl DirHandle {
    /// The path of `name` in this directory, relative to the root.
    pub fn child_path(&self, name: &OsStr) -> PathBuf {
        let mut p: PathBuf = self.path.iter().collect();
        p.push(name);
        p
    }

    pub fn display(&self, name: &OsStr) -> String {
        self.child_path(name).display().to_string()
    }
}

/// What a name is in the lower layers of an overlay.
pub enum LowerTop {
    Dir,
    Link(OsString),
    /// Anything else, found in `DirHandle::lowers[layer]`.
    Other {
        layer: usize,
    },
}

pub struct LowerView {
    pub top: Option<LowerTop>,
    /// For a directory: every lower directory merged into it, top first.
    pub dirs: Vec<OwnedFd>,
}

enum Step {
    Dir(DirHandle),
    Link(OsString),
}

pub struct Resolver {
    root: OwnedFd,
    lower_roots: Vec<OwnedFd>,
    /// Overlay: the xattr that marks an opaque directory.
    opaque_xattr: Option<&'static str>,
    /// The last directory resolved and the names that led to it: layers
    /// list a directory's entries together, so this saves most walks.
    cache: Option<(Vec<OsString>, Rc<DirHandle>)>,
}

fn bad(msg: String) -> Error {
    Error::InvalidArgument(msg)
}

fn io_err(context: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::Internal(format!("{context}: {e}"))
}

fn show(names: &[OsString]) -> String {
    names.iter().collect::<PathBuf>().display().to_string()
}

impl Resolver {
    pub fn new(root: OwnedFd, lower_roots: Vec<OwnedFd>, opaque_xattr: Option<&'static str>) -> Self {
        Resolver {
            root,
            lower_roots,
            opaque_xattr,
            cache: None,
        }
    }

    pub fn is_overlay(&self) -> bool {
        self.opaque_xattr.is_some()
    }

    /// Forgets the cached directory; called after anything is removed,
    /// since a removal can change what a path resolves to.
    pub fn invalidate(&mut self) {
        self.cache = None;
    }

    /// The directory `names` lead to from the root, creating what is
    /// missing and following symlinks inside the tree.
    pub fn resolve(&mut self, names: &[OsString]) -> Result<Rc<DirHandle>, Error> {
        if let Some((key, handle)) = &self.cache {
            if key.as_slice() == names {
                return Ok(handle.clone());
            }
        }
        let handle = Rc::new(self.walk(names)?);
        self.cache = Some((names.to_vec(), handle.clone()));
        Ok(handle)
    }

    fn root_handle(&self) -> Result<DirHandle, Error> {
        let dup = |fd: &OwnedFd| {
            fd.try_clone()
                .map_err(io_err("duplicate a directory descriptor".into()))
        };
        Ok(DirHandle {
            fd: dup(&self.root)?,
            path: Vec::new(),
            lowers: self.lower_roots.iter().map(dup).collect::<Result<_, _>>()?,
        })
    }

    fn walk(&mut self, names: &[OsString]) -> Result<DirHandle, Error> {
        let mut pending: VecDeque<OsString> = names.iter().cloned().collect();
        // The directory reached so far; `None` after a `..` until the next
        // name needs it, when it is opened again from the root (keeping
        // every ancestor open would cost a descriptor per level and layer).
        let mut cur = Some(self.root_handle()?);
        let mut path: Vec<OsString> = Vec::new();
        let (mut links, mut steps) = (0, 0);
        while let Some(name) = pending.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                return Err(bad(format!(
                    "resolving {} takes more than {MAX_STEPS} steps",
                    show(names)
                )));
            }
            match name.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if path.pop().is_some() {
                        cur = None;
                    }
                    continue;
                }
                _ => {}
            }
            let dir = match cur.take() {
                Some(dir) => dir,
                None => self.reopen(&path, &mut steps)?,
            };
            match self.step(&dir, &name)? {
                Step::Dir(next) => {
                    path.push(name);
                    if path.len() > MAX_DEPTH {
                        return Err(bad(format!(
                            "{} is more than {MAX_DEPTH} directories deep",
                            show(names)
                        )));
                    }
                    cur = Some(next);
                }
                Step::Link(target) => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(bad(format!("{}: too many levels of symbolic links", show(names))));
                    }
                    let target = target.as_bytes();
                    if target.starts_with(b"/") {
                        path.clear();
                        cur = None;
                    } else {
                        cur = Some(dir);
                    }
                    for part in target.split(|b| *b == b'/').rev() {
                        pending.push_front(OsStr::from_bytes(part).to_os_string());
                    }
                }
            }
        }
        match cur {
            Some(dir) => Ok(dir),
            None => self.reopen(&path, &mut steps),
        }
    }

    /// Opens again a directory reached before; its path holds only directories.
    fn reopen(&mut self, path: &[OsString], steps: &mut usize) -> Result<DirHandle, Error> {
        let mut dir = self.root_handle()?;
        for name in path {
            *steps += 1;
            if *steps > MAX_STEPS {
                return Err(bad(format!(
                    "resolving {} takes more than {MAX_STEPS} steps",
                    show(path)
                )));
            }
            dir = match self.step(&dir, name)? {
                Step::Dir(next) => next,
                Step::Link(_) => {
                    return Err(Error::Internal(format!(
                        "{} changed while the layer was applied",
                        dir.display(name)
                    )))
                }
            };
        }
        Ok(dir)
    }

    /// Goes from `dir` to its entry `name`: into it if it is (or is made) a
    /// directory, or the target of the symlink it is.
    fn step(&mut self, dir: &DirHandle, name: &OsStr) -> Result<Step, Error> {
        let shown = || dir.display(name);
        let st = fsutil::stat_at(dir.fd.as_fd(), name).map_err(io_err(format!("stat {}", shown())))?;
        let child = |fd: OwnedFd, lowers: Vec<OwnedFd>| {
            let mut path = dir.path.clone();
            path.push(name.to_os_string());
            Step::Dir(DirHandle { fd, path, lowers })
        };
        match st.as_ref().map(fsutil::kind) {
            Some(Kind::Dir) => {
                let fd = fsutil::open_dir_at(dir.fd.as_fd(), name).map_err(io_err(format!("open {}", shown())))?;
                let lowers = match self.opaque_xattr {
                    Some(opaque) if !fsutil::has_xattr_fd(fd.as_fd(), opaque, b"y") => self.lower_view(dir, name)?.dirs,
                    _ => Vec::new(),
                };
                Ok(child(fd, lowers))
            }
            Some(Kind::Symlink) => Ok(Step::Link(
                fsutil::read_link_at(dir.fd.as_fd(), name).map_err(io_err(format!("read link {}", shown())))?,
            )),
            Some(Kind::Whiteout) if self.is_overlay() => {
                // Deleted by a lower layer: a directory made here must hide
                // whatever the layers below still hold, as overlayfs's own
                // mkdir over a whiteout does.
                unlinkat(dir.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir)
                    .map_err(|e| Error::Internal(format!("remove whiteout {}: {e}", shown())))?;
                let fd = self.new_dir(dir, name)?;
                self.set_opaque(&fd, &shown())?;
                Ok(child(fd, Vec::new()))
            }
            Some(_) => Err(bad(format!("{} is not a directory", shown()))),
            None if self.is_overlay() => {
                let view = self.lower_view(dir, name)?;
                match view.top {
                    Some(LowerTop::Dir) => {
                        let fd =
                            fsutil::mkdir_at(dir.fd.as_fd(), name).map_err(io_err(format!("create {}", shown())))?;
                        fsutil::copy_dir_meta(view.dirs[0].as_fd(), fd.as_fd())
                            .map_err(io_err(format!("copy up {}", shown())))?;
                        Ok(child(fd, view.dirs))
                    }
                    Some(LowerTop::Link(target)) => Ok(Step::Link(target)),
                    Some(LowerTop::Other { .. }) => Err(bad(format!("{} is not a directory", shown()))),
                    None => Ok(child(self.new_dir(dir, name)?, Vec::new())),
                }
            }
            None => Ok(child(self.new_dir(dir, name)?, Vec::new())),
        }
    }

    /// A parent the layer did not list: root's, mode 0755, like containerd's.
    fn new_dir(&self, dir: &DirHandle, name: &OsStr) -> Result<OwnedFd, Error> {
        let fd = fsutil::mkdir_at(dir.fd.as_fd(), name).map_err(io_err(format!("create {}", dir.display(name))))?;
        fsutil::chmod_fd(fd.as_fd(), 0o755).map_err(io_err(format!("chmod {}", dir.display(name))))?;
        Ok(fd)
    }

    pub fn set_opaque(&self, fd: &OwnedFd, shown: &str) -> Result<(), Error> {
        if let Some(opaque) = self.opaque_xattr {
            match fsutil::set_xattr_fd(fd.as_fd(), opaque.as_bytes(), b"y") {
                Ok(true) => {}
                Ok(false) => {
                    return Err(Error::Internal(format!(
                        "mark {shown} opaque: the filesystem does not support {opaque}"
                    )))
                }
                Err(e) => return Err(Error::Internal(format!("mark {shown} opaque: {e}"))),
            }
        }
        Ok(())
    }

    /// What `name` in `dir` is in the overlay's lower layers.
    pub fn lower_view(&self, dir: &DirHandle, name: &OsStr) -> Result<LowerView, Error> {
        let mut view = LowerView {
            top: None,
            dirs: Vec::new(),
        };
        for (layer, lower) in dir.lowers.iter().enumerate() {
            let context = || format!("look up {} in lower layer {layer}", dir.display(name));
            let Some(st) = fsutil::stat_at(lower.as_fd(), name).map_err(io_err(context()))? else {
                continue;
            };
            match fsutil::kind(&st) {
                Kind::Whiteout => break,
                Kind::Dir => {
                    let fd = fsutil::open_dir_at(lower.as_fd(), name).map_err(io_err(context()))?;
                    let opaque = self
                        .opaque_xattr
                        .is_some_and(|x| fsutil::has_xattr_fd(fd.as_fd(), x, b"y"));
                    view.top.get_or_insert(LowerTop::Dir);
                    view.dirs.push(fd);
                    if opaque {
                        break;
                    }
                }
                // Below a directory, a non-directory is not merged into it.
                _ if view.top.is_some() => break,
                Kind::Symlink => {
                    let target = fsutil::read_link_at(lower.as_fd(), name).map_err(io_err(context()))?;
                    view.top = Some(LowerTop::Link(target));
                    break;
                }
                _ => {
                    view.top = Some(LowerTop::Other { layer });
                    break;
                }
            }
        }
        Ok(view)
    }

    /// Opens a directory by its path from the root without creating or
    /// following anything; `None` if it is no longer a directory there.
    pub fn open_existing(&self, path: &[OsString]) -> Option<OwnedFd> {
        let mut fd = self.root.try_clone().ok()?;
        for name in path {
            fd = fsutil::open_dir_at(fd.as_fd(), name).ok()?;
        }
        Some(fd)
    }
}
