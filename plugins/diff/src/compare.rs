//! The difference between two trees, as a layer tar stream.
//!
//! Both trees are walked together in name order. A name only in the upper
//! tree is added, with everything under it; a name only in the lower tree
//! becomes a `.wh.<name>` whiteout; a name in both is written again if its
//! metadata or content differ, and directories present in both are compared
//! inside. Walking two mounted trees sees each as its merged view, so an
//! overlay's whiteouts never show; a 0/0 character device that does show
//! (an upper directory walked raw) is read as the deletion it stands for.
//!
//! Every entry's parent directories are written before it, once, so that
//! applying the layer onto an overlay recreates them with their real owner
//! and mode rather than defaults. Files with several links in the upper
//! tree are written once and then as hardlinks. Times are whole seconds
//! without access or change times, so the same change gives the same layer.
//!
//! The walk goes through directory descriptors and never follows a symlink,
//! so a container changing its files while they are diffed cannot make the
//! differ read anything outside the trees.

use std::{
    collections::HashMap,
    ffi::{OsStr, OsString},
    io::{self, Read, Write},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use nix::sys::stat::{FileStat, SFlag};
use tar::{EntryType, Header};

use crate::fsutil::{self, Kind, Xattrs};

/// One node of a tree as the comparison sees it.
struct Node {
    st: FileStat,
    kind: Kind,
    xattrs: Xattrs,
    link: Option<OsString>,
}

impl Node {
    fn read(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Node>> {
        let Some(st) = fsutil::stat_at(dir, name)? else {
            return Ok(None);
        };
        let kind = fsutil::kind(&st);
        let link = match kind {
            Kind::Symlink => Some(fsutil::read_link_at(dir, name)?),
            _ => None,
        };
        let xattrs = match kind {
            Kind::Whiteout => Vec::new(),
            _ => {
                let mut x = fsutil::xattrs_at(dir, name)?;
                x.sort();
                x
            }
        };
        Ok(Some(Node { st, kind, xattrs, link }))
    }
}

/// A directory on the way down whose header is written only if something
/// under it is.
struct Ancestor {
    path: Vec<u8>,
    node: Node,
    written: bool,
}

struct ChangeWriter<W: Write> {
    tar: tar::Builder<W>,
    ancestors: Vec<Ancestor>,
    /// (device, inode) of multiply-linked files written, and the path written.
    links: HashMap<(u64, u64), Vec<u8>>,
}

/// Writes the changes from `lower` to `upper` as a tar stream into `out`
/// and returns `out`.
pub fn write_changes<W: Write>(lower: &Path, upper: &Path, out: W) -> io::Result<W> {
    let lower = fsutil::open_root(lower)?;
    let upper = fsutil::open_root(upper)?;
    let mut writer = ChangeWriter {
        tar: tar::Builder::new(out),
        ancestors: Vec::new(),
        links: HashMap::new(),
    };
    writer.dir(Some(lower.as_fd()), upper.as_fd(), b"")?;
    writer.tar.into_inner()
}

fn join(prefix: &[u8], name: &OsStr) -> Vec<u8> {
    let mut path = prefix.to_vec();
    if !path.is_empty() {
        path.push(b'/');
    }
    path.extend_from_slice(name.as_bytes());
    path
}

/// Whether two nodes are the same file as far as a layer can tell.
fn same(
    lower: &Node,
    upper: &Node,
    lower_dir: BorrowedFd<'_>,
    upper_dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<bool> {
    let (l, u) = (&lower.st, &upper.st);
    if l.st_mode != u.st_mode || l.st_uid != u.st_uid || l.st_gid != u.st_gid {
        return Ok(false);
    }
    if matches!(lower.kind, Kind::Special) && l.st_rdev != u.st_rdev {
        return Ok(false);
    }
    // Directory sizes are the filesystem's business, not content.
    if lower.kind != Kind::Dir && l.st_size != u.st_size {
        return Ok(false);
    }
    if lower.link != upper.link || lower.xattrs != upper.xattrs {
        return Ok(false);
    }
    if l.st_mtime != u.st_mtime {
        return Ok(false);
    }
    if l.st_mtime_nsec == u.st_mtime_nsec {
        return Ok(true);
    }
    // A layer keeps whole seconds: if one side came from one, only the
    // content can tell a change from the truncation.
    if (l.st_mtime_nsec == 0 || u.st_mtime_nsec == 0) && lower.kind == Kind::Regular {
        return same_content(lower_dir, upper_dir, name);
    }
    Ok(false)
}

fn same_content(lower_dir: BorrowedFd<'_>, upper_dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    let mut a = fsutil::open_file_at(lower_dir, name)?;
    let mut b = fsutil::open_file_at(upper_dir, name)?;
    let (mut x, mut y) = (vec![0u8; 64 * 1024], vec![0u8; 64 * 1024]);
    loop {
        let n = fsutil::read_up_to(&mut a, &mut x)?;
        let m = fsutil::read_up_to(&mut b, &mut y)?;
        if x[..n] != y[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

impl<W: Write> ChangeWriter<W> {
    /// Compares the directories `lower` (absent: everything is new) and
    /// `upper`, both at `prefix`.
    fn dir(&mut self, lower: Option<BorrowedFd<'_>>, upper: BorrowedFd<'_>, prefix: &[u8]) -> io::Result<()> {
        let upper_names = fsutil::list_dir(upper)?;
        let lower_names = match lower {
            Some(l) => fsutil::list_dir(l)?,
            None => Vec::new(),
        };
        let (mut i, mut j) = (0, 0);
        while i < lower_names.len() || j < upper_names.len() {
            let order = match (lower_names.get(i), upper_names.get(j)) {
                (Some(l), Some(u)) => l.as_bytes().cmp(u.as_bytes()),
                (Some(_), None) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match order {
                std::cmp::Ordering::Less => {
                    let path = join(prefix, &lower_names[i]);
                    self.whiteout(&path)?;
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    let name = &upper_names[j];
                    if let Some(node) = Node::read(upper, name)? {
                        if node.kind != Kind::Whiteout {
                            self.changed(None, upper, name, node, &join(prefix, name))?;
                        }
                    }
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    let name = &upper_names[j];
                    let lower = lower.expect("a name from the lower listing");
                    let path = join(prefix, name);
                    match (Node::read(lower, name)?, Node::read(upper, name)?) {
                        (Some(_), Some(u)) if u.kind == Kind::Whiteout => self.whiteout(&path)?,
                        (Some(l), Some(u)) => {
                            if same(&l, &u, lower, upper, name)? {
                                if u.kind == Kind::Dir {
                                    let ld = fsutil::open_dir_at(lower, name)?;
                                    let ud = fsutil::open_dir_at(upper, name)?;
                                    self.descend(Some(ld), ud, path, u, false)?;
                                }
                            } else {
                                self.changed(Some((lower, &l)), upper, name, u, &path)?;
                            }
                        }
                        (Some(_), None) => self.whiteout(&path)?,
                        (None, Some(u)) if u.kind != Kind::Whiteout => self.changed(None, upper, name, u, &path)?,
                        _ => {}
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        Ok(())
    }

    /// Writes a new or changed node; a directory's contents are compared
    /// with the lower directory if there was one.
    fn changed(
        &mut self,
        lower: Option<(BorrowedFd<'_>, &Node)>,
        upper: BorrowedFd<'_>,
        name: &OsStr,
        node: Node,
        path: &[u8],
    ) -> io::Result<()> {
        if node.kind == Kind::Dir {
            self.write_parents()?;
            self.write_node(upper, name, &node, path)?;
            let ud = fsutil::open_dir_at(upper, name)?;
            let ld = match lower {
                Some((l, n)) if n.kind == Kind::Dir => Some(fsutil::open_dir_at(l, name)?),
                _ => None,
            };
            return self.descend(ld, ud, path.to_vec(), node, true);
        }
        if file_type(&node.st) == SFlag::S_IFSOCK {
            // Sockets cannot be carried in a tar; containerd skips them too.
            return Ok(());
        }
        self.write_parents()?;
        self.write_node(upper, name, &node, path)
    }

    fn descend(
        &mut self,
        lower: Option<OwnedFd>,
        upper: OwnedFd,
        path: Vec<u8>,
        node: Node,
        written: bool,
    ) -> io::Result<()> {
        self.ancestors.push(Ancestor { path, node, written });
        let prefix = self.ancestors.last().expect("just pushed").path.clone();
        let result = self.dir(lower.as_ref().map(|l| l.as_fd()), upper.as_fd(), &prefix);
        self.ancestors.pop();
        result
    }

    /// Writes the headers of the directories above the next entry that are
    /// not written yet.
    fn write_parents(&mut self) -> io::Result<()> {
        for i in 0..self.ancestors.len() {
            if self.ancestors[i].written {
                continue;
            }
            let mut header = base_header(&self.ancestors[i].node.st);
            header.set_entry_type(EntryType::Directory);
            let path = dir_name(&self.ancestors[i].path);
            let xattrs = self.ancestors[i].node.xattrs.clone();
            self.append(header, &path, None, &xattrs, io::empty())?;
            self.ancestors[i].written = true;
        }
        Ok(())
    }

    fn whiteout(&mut self, path: &[u8]) -> io::Result<()> {
        self.write_parents()?;
        let (dir, name) = match path.iter().rposition(|b| *b == b'/') {
            Some(i) => (&path[..=i], &path[i + 1..]),
            None => (&b""[..], path),
        };
        let mut wh = dir.to_vec();
        wh.extend_from_slice(b".wh.");
        wh.extend_from_slice(name);
        let mut header = Header::new_ustar();
        header.set_entry_type(EntryType::Regular);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mode(0o644);
        header.set_size(0);
        header.set_mtime(0);
        self.append(header, &wh, None, &[], io::empty())
    }

    fn write_node(&mut self, dir: BorrowedFd<'_>, name: &OsStr, node: &Node, path: &[u8]) -> io::Result<()> {
        let st = &node.st;
        let mut header = base_header(st);
        match node.kind {
            Kind::Dir => {
                header.set_entry_type(EntryType::Directory);
                self.append(header, &dir_name(path), None, &node.xattrs, io::empty())
            }
            Kind::Symlink => {
                header.set_entry_type(EntryType::Symlink);
                let target = node.link.as_deref().unwrap_or_default().as_bytes().to_vec();
                self.append(header, path, Some(&target), &node.xattrs, io::empty())
            }
            Kind::Regular => {
                if st.st_nlink > 1 {
                    let key = (st.st_dev, st.st_ino);
                    if let Some(first) = self.links.get(&key).cloned() {
                        header.set_entry_type(EntryType::Link);
                        header.set_size(0);
                        return self.append(header, path, Some(&first), &[], io::empty());
                    }
                    self.links.insert(key, path.to_vec());
                }
                header.set_entry_type(EntryType::Regular);
                let size = st.st_size as u64;
                header.set_size(size);
                let file = fsutil::open_file_at(dir, name)?;
                if !file.metadata()?.is_file() {
                    // Swapped for something else since it was listed (a
                    // running container); reading a device could do anything.
                    return Err(io::Error::other(format!(
                        "{} changed while it was diffed",
                        String::from_utf8_lossy(path)
                    )));
                }
                // A file that shrinks while it is read (a running container)
                // is padded so the archive stays well-formed.
                let data = Read::take(file, size).chain(io::repeat(0)).take(size);
                self.append(header, path, None, &node.xattrs, data)
            }
            Kind::Special | Kind::Whiteout => {
                let ty = file_type(st);
                header.set_entry_type(match ty {
                    SFlag::S_IFCHR => EntryType::Char,
                    SFlag::S_IFBLK => EntryType::Block,
                    _ => EntryType::Fifo,
                });
                if ty == SFlag::S_IFCHR || ty == SFlag::S_IFBLK {
                    let (major, minor) = fsutil::device_numbers(st);
                    header.set_device_major(major)?;
                    header.set_device_minor(minor)?;
                }
                self.append(header, path, None, &node.xattrs, io::empty())
            }
        }
    }

    /// Appends one entry, with a PAX header first for what the ustar header
    /// cannot hold: a long path or link target, and xattrs.
    fn append(
        &mut self,
        mut header: Header,
        path: &[u8],
        link: Option<&[u8]>,
        xattrs: &[(Vec<u8>, Vec<u8>)],
        data: impl Read,
    ) -> io::Result<()> {
        let mut records: Vec<(&[u8], &[u8])> = Vec::new();
        if header.set_path(OsStr::from_bytes(path)).is_err() {
            records.push((b"path", path));
            set_truncated(&mut header.as_old_mut().name, path);
        }
        if let Some(link) = link {
            if link.len() <= 100 {
                header.set_link_name_literal(link)?;
            } else {
                records.push((b"linkpath", link));
                set_truncated(&mut header.as_old_mut().linkname, link);
            }
        }
        let keys: Vec<Vec<u8>> = xattrs
            .iter()
            .map(|(k, _)| [&b"SCHILY.xattr."[..], k].concat())
            .collect();
        for (key, (_, value)) in keys.iter().zip(xattrs) {
            records.push((key, value));
        }
        if !records.is_empty() {
            let pax = pax_data(&records);
            let mut ph = Header::new_ustar();
            ph.set_entry_type(EntryType::XHeader);
            ph.set_uid(0);
            ph.set_gid(0);
            ph.set_mode(0o644);
            ph.set_mtime(0);
            ph.set_size(pax.len() as u64);
            set_truncated(&mut ph.as_old_mut().name, b"PaxHeader");
            ph.set_cksum();
            self.tar.append(&ph, &pax[..])?;
        }
        header.set_cksum();
        self.tar.append(&header, data)
    }
}

fn file_type(st: &FileStat) -> SFlag {
    fsutil::file_type_bits(st)
}

fn base_header(st: &FileStat) -> Header {
    let mut h = Header::new_ustar();
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(u64::from(st.st_uid));
    h.set_gid(u64::from(st.st_gid));
    h.set_mtime(u64::try_from(st.st_mtime).unwrap_or(0));
    h.set_size(0);
    h
}

fn dir_name(path: &[u8]) -> Vec<u8> {
    let mut p = path.to_vec();
    p.push(b'/');
    p
}

fn set_truncated(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field.fill(0);
    field[..n].copy_from_slice(&value[..n]);
}

/// PAX records: "<length> <key>=<value>\n", the length counting itself.
fn pax_data(records: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        out.extend_from_slice(len.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(key);
        out.push(b'=');
        out.extend_from_slice(value);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_lengths_count_themselves() {
        let data = pax_data(&[(b"path", &[b'a'; 93][..]), (b"k", b"v")]);
        let text = String::from_utf8(data).unwrap();
        for record in text.split_inclusive('\n') {
            let (len, _) = record.split_once(' ').unwrap();
            assert_eq!(len.parse::<usize>().unwrap(), record.len(), "{record:?}");
        }
    }
}
