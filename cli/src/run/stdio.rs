//! A task's stdio through named pipes, as ctr's "cio" does it: the client
//! makes a private directory of FIFOs, passes their paths in the task's
//! Create (or Exec) request, and copies between them and its own stdio
//! while the shim holds the other ends.
//!
//! - stdout and stderr: opened here for reading, without blocking, before
//!   the request goes out, so the shim's writers find a reader; copying
//!   ends at end of file, when the shim closes its side after the process
//!   exits.
//! - stdin: a thread reads the local input (a plain thread: tokio's
//!   blocking reads of a terminal cannot be cancelled and would hold up the
//!   runtime's shutdown; this one is simply left behind when the command
//!   ends); another opens the FIFO for writing, which blocks until the shim
//!   opens the read side during Create, so nothing typed early is lost; a
//!   task then copies from the one to the other. At the end of the local
//!   input the FIFO is closed and [`Copier::stdin_closed`] fires, the cue
//!   to send the task CloseIO; dropping the copier closes it in any case,
//!   so the shim is never left waiting for more input.
//! - a terminal (`-t`): stdin and stdout only (the pty merges stderr); the
//!   local terminal goes into raw mode until the copier is dropped, and
//!   window size changes are reported through [`Copier::on_resize`].

use std::{
    fs::{self, File, OpenOptions},
    future::Future,
    io::{self, Read},
    os::{
        fd::{AsFd, AsRawFd, OwnedFd},
        unix::fs::{DirBuilderExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    pin::Pin,
    thread,
};

use anyhow::Context as _;
use nix::{
    sys::{
        stat::Mode,
        termios::{self, SetArg, Termios},
    },
    unistd::mkfifo,
};
use tokio::{
    io::{AsyncWrite, AsyncWriteExt},
    net::unix::pipe,
    sync::oneshot,
    task::JoinHandle,
};

/// Where ctr (and so the shims' expectations) puts client FIFOs.
pub const FIFO_ROOT: &str = "/run/containerd/fifo";

/// The FIFO paths a task Create or Exec request carries; an empty path is a
/// stream the process does not get (the shim uses /dev/null).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StdioPaths {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

type Sink = Pin<Box<dyn AsyncWrite + Send>>;

/// The local ends the copier connects the FIFOs to.
pub struct LocalIo {
    /// `None`: the process gets no stdin.
    pub stdin: Option<Box<dyn Read + Send>>,
    pub stdout: Sink,
    pub stderr: Sink,
    /// A terminal to put in raw mode and watch for size changes (`-t`).
    pub tty: Option<OwnedFd>,
}

impl LocalIo {
    /// This process's stdio; the terminal is stdin when it is one.
    pub fn process(with_stdin: bool, terminal: bool) -> io::Result<Self> {
        let stdin = io::stdin();
        let input: Option<Box<dyn Read + Send>> = if with_stdin {
            // A file of our own on the descriptor: std's Stdin buffers and
            // locks, neither of which helps a byte pump.
            Some(Box::new(File::from(stdin.as_fd().try_clone_to_owned()?)))
        } else {
            None
        };
        let tty = if terminal && termios::tcgetattr(stdin.as_fd()).is_ok() {
            Some(stdin.as_fd().try_clone_to_owned()?)
        } else {
            None
        };
        Ok(LocalIo {
            stdin: input,
            stdout: Box::pin(tokio::io::stdout()),
            stderr: Box::pin(tokio::io::stderr()),
            tty,
        })
    }
}

/// Makes the FIFOs for process `id` in a new directory under `root`
/// (normally [`FIFO_ROOT`]) and starts copying between them and this
/// process's stdio. Must be called within a tokio runtime.
pub fn create(root: &Path, id: &str, terminal: bool, with_stdin: bool) -> anyhow::Result<(StdioPaths, Copier)> {
    let local = LocalIo::process(with_stdin, terminal).context("preparing local stdio")?;
    create_in(root, id, terminal, local)
}

/// [`create`] with the FIFO directory made under `root` and the given
/// local ends.
pub fn create_in(root: &Path, id: &str, terminal: bool, local: LocalIo) -> anyhow::Result<(StdioPaths, Copier)> {
    // The FIFOs are named after the process before the daemon has seen
    // (and validated) the ID: it must not lead out of their directory.
    if id.is_empty() || id.contains(['/', '\0']) {
        anyhow::bail!("invalid process ID {id:?}");
    }
    let dir = FifoDir::create(root).with_context(|| format!("creating a FIFO directory under {}", root.display()))?;
    let mut copier = Copier {
        dir: Some(dir),
        outputs: Vec::new(),
        stdin: None,
        stdin_done: None,
        resize: None,
        raw: None,
    };
    let dir_path = copier.dir.as_ref().map(|d| d.path.clone()).unwrap_or_default();
    let fifo = |name: &str| -> anyhow::Result<PathBuf> {
        let path = dir_path.join(format!("{id}-{name}"));
        mkfifo(&path, Mode::S_IRWXU).with_context(|| format!("creating FIFO {}", path.display()))?;
        Ok(path)
    };
    let mut paths = StdioPaths {
        terminal,
        ..StdioPaths::default()
    };

    if let Some(input) = local.stdin {
        let path = fifo("stdin")?;
        paths.stdin = path.display().to_string();
        let (pump, done) = StdinPump::start(path, input)?;
        copier.stdin = Some(pump);
        copier.stdin_done = Some(done);
    }

    let path = fifo("stdout")?;
    paths.stdout = path.display().to_string();
    copier.outputs.push(copy_out(&path, local.stdout)?);
    if !terminal {
        let path = fifo("stderr")?;
        paths.stderr = path.display().to_string();
        copier.outputs.push(copy_out(&path, local.stderr)?);
    }

    if terminal {
        if let Some(fd) = local.tty {
            copier.raw = Some(RawTerminal::enable(fd).context("putting the terminal in raw mode")?);
        }
    }
    Ok((paths, copier))
}

/// Opens `path` for reading now (so the shim's writer is not kept waiting)
/// and copies it to `sink` in a task until end of file.
fn copy_out(path: &Path, mut sink: Sink) -> anyhow::Result<JoinHandle<io::Result<()>>> {
    let mut source = pipe::OpenOptions::new()
        .open_receiver(path)
        .with_context(|| format!("opening FIFO {}", path.display()))?;
    Ok(tokio::spawn(async move {
        let copied = tokio::io::copy(&mut source, &mut sink).await;
        let flushed = sink.flush().await;
        copied.and(flushed)
    }))
}

/// Local input on its way into the stdin FIFO.
struct StdinPump {
    path: PathBuf,
    copy: JoinHandle<()>,
}

impl StdinPump {
    fn start(path: PathBuf, input: Box<dyn Read + Send>) -> anyhow::Result<(Self, oneshot::Receiver<()>)> {
        let (chunks_tx, mut chunks) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
        thread::Builder::new()
            .name("stdin".into())
            .spawn(move || read_input(input, &chunks_tx))
            .context("starting the stdin reader")?;

        let (opened_tx, opened) = oneshot::channel();
        let open_path = path.clone();
        thread::Builder::new()
            .name("stdin-fifo".into())
            .spawn(move || {
                let _ = opened_tx.send(OpenOptions::new().write(true).open(open_path));
            })
            .context("starting the stdin FIFO opener")?;

        let (done_tx, done) = oneshot::channel();
        let copy = tokio::spawn(async move {
            let Ok(Ok(file)) = opened.await else {
                return;
            };
            let Ok(mut fifo) = pipe::Sender::from_file(file) else {
                return;
            };
            while let Some(chunk) = chunks.recv().await {
                if fifo.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            drop(fifo);
            let _ = done_tx.send(());
        });
        Ok((StdinPump { path, copy }, done))
    }

    /// Closes the FIFO (the copying task owns it). An opener still waiting
    /// for the shim is released by opening, and at once closing, the read
    /// side ourselves.
    fn stop(&self) {
        self.copy.abort();
        let _ = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&self.path);
    }
}

/// The stdin reader thread: local input in chunks, until it ends or nobody
/// takes it any more.
fn read_input(mut input: Box<dyn Read + Send>, chunks: &tokio::sync::mpsc::Sender<Vec<u8>>) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match input.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if chunks.blocking_send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        }
    }
}

/// The private directory holding one process's FIFOs.
struct FifoDir {
    path: PathBuf,
}

impl FifoDir {
    /// `root/<random number>`, mode 0700, as ctr names them.
    fn create(root: &Path) -> io::Result<Self> {
        fs::DirBuilder::new().recursive(true).mode(0o700).create(root)?;
        let mut last = None;
        for _ in 0..16 {
            let name = u32::from_le_bytes(uuid::Uuid::new_v4().as_bytes()[..4].try_into().unwrap_or_default());
            let path = root.join(name.to_string());
            match fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(FifoDir { path }),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => last = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("no free FIFO directory name")))
    }
}

impl Drop for FifoDir {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Removes the FIFO directory a task's stdio paths live in, if it is one of
/// ctr's (directly under [`FIFO_ROOT`]): what is left to clean up after a
/// task started by another client, or detached, is deleted.
pub fn remove_fifo_dir(paths: &[&str]) {
    remove_fifo_dir_under(Path::new(FIFO_ROOT), paths)
}

fn remove_fifo_dir_under(root: &Path, paths: &[&str]) {
    for path in paths.iter().filter(|p| !p.is_empty()) {
        let Some(dir) = Path::new(path).parent() else {
            continue;
        };
        if dir.parent() == Some(root) && dir != root {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// A terminal in raw mode; its previous settings come back on drop.
struct RawTerminal {
    fd: OwnedFd,
    saved: Termios,
}

impl RawTerminal {
    fn enable(fd: OwnedFd) -> nix::Result<Self> {
        let saved = termios::tcgetattr(&fd)?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&fd, SetArg::TCSANOW, &raw)?;
        Ok(RawTerminal { fd, saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(&self.fd, SetArg::TCSANOW, &self.saved);
    }
}

/// The terminal's (width, height) in cells; `None` when it is not a
/// terminal or reports no size.
fn window_size(fd: &impl AsRawFd) -> Option<(u32, u32)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && (size.ws_col, size.ws_row) != (0, 0)).then_some((u32::from(size.ws_col), u32::from(size.ws_row)))
}

/// Copies between a process's FIFOs and the local stdio until dropped.
/// Dropping it stops the copying, restores the terminal and removes the
/// FIFOs.
pub struct Copier {
    dir: Option<FifoDir>,
    outputs: Vec<JoinHandle<io::Result<()>>>,
    stdin: Option<StdinPump>,
    stdin_done: Option<oneshot::Receiver<()>>,
    resize: Option<JoinHandle<()>>,
    raw: Option<RawTerminal>,
}

impl Copier {
    /// Resolves when stdout and stderr have reached end of file (the shim
    /// closes them once the process has exited and its output is out).
    /// Cancel safe.
    pub async fn wait_output(&mut self) -> io::Result<()> {
        while let Some(handle) = self.outputs.first_mut() {
            let result = handle.await;
            self.outputs.remove(0);
            match result {
                Ok(copied) => copied?,
                Err(join) if join.is_cancelled() => {}
                Err(join) => return Err(io::Error::other(join)),
            }
        }
        Ok(())
    }

    /// Resolves once, when the local input has ended and the stdin FIFO is
    /// closed: time to send the task CloseIO. Pending forever after that,
    /// or without stdin. Cancel safe.
    pub async fn stdin_closed(&mut self) {
        match self.stdin_done.as_mut() {
            Some(done) => {
                // An error means the thread ended without closing cleanly
                // (cancelled); either way stdin is over.
                let _ = done.await;
                self.stdin_done = None;
            }
            None => std::future::pending().await,
        }
    }

    /// Calls `resize(width, height)` now and whenever the local terminal's
    /// size changes (SIGWINCH), until the copier is dropped. Returns false,
    /// and never calls it, when there is no local terminal.
    pub fn on_resize<F, Fut>(&mut self, mut resize: F) -> io::Result<bool>
    where
        F: FnMut(u32, u32) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(raw) = &self.raw else {
            return Ok(false);
        };
        let fd = raw.fd.try_clone()?;
        let mut changes = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change())?;
        if let Some(old) = self.resize.take() {
            old.abort();
        }
        self.resize = Some(tokio::spawn(async move {
            let mut last = None;
            loop {
                let size = window_size(&fd);
                if let Some((width, height)) = size.filter(|s| Some(*s) != last) {
                    resize(width, height).await;
                    last = size;
                }
                if changes.recv().await.is_none() {
                    break;
                }
            }
        }));
        Ok(true)
    }

    fn stop(&mut self) {
        for handle in self.outputs.drain(..) {
            handle.abort();
        }
        if let Some(resize) = self.resize.take() {
            resize.abort();
        }
        if let Some(stdin) = self.stdin.take() {
            stdin.stop();
        }
        self.raw = None;
    }
}

impl Drop for Copier {
    fn drop(&mut self) {
        self.stop();
        // FifoDir's own drop removes the directory.
        self.dir = None;
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write, os::unix::fs::FileTypeExt, time::Duration};

    use tokio::io::{AsyncReadExt, DuplexStream};

    use super::*;

    const DEADLINE: Duration = Duration::from_secs(10);

    /// The local side of a copier under test: what the "user" types goes
    /// into `typed`, what the copier prints comes out of `out` and `err`.
    struct Harness {
        typed: Option<std::os::unix::net::UnixStream>,
        out: DuplexStream,
        err: DuplexStream,
    }

    fn local(with_stdin: bool) -> (LocalIo, Harness) {
        let (typed, input) = std::os::unix::net::UnixStream::pair().unwrap();
        let (out_w, out) = tokio::io::duplex(1 << 20);
        let (err_w, err) = tokio::io::duplex(1 << 20);
        let io = LocalIo {
            stdin: with_stdin.then(|| Box::new(input) as Box<dyn Read + Send>),
            stdout: Box::pin(out_w),
            stderr: Box::pin(err_w),
            tty: None,
        };
        (
            io,
            Harness {
                typed: with_stdin.then_some(typed),
                out,
                err,
            },
        )
    }

    /// Plays the shim: opens the other ends the way a shim does (stdin for
    /// reading, the outputs for writing) on a thread, echoes stdin to
    /// stdout upper-cased, writes a line to stderr, and closes.
    fn fake_shim(paths: StdioPaths) -> thread::JoinHandle<()> {
        thread::spawn(move || {
            let mut stdout = OpenOptions::new().write(true).open(&paths.stdout).unwrap();
            let mut stderr =
                (!paths.stderr.is_empty()).then(|| OpenOptions::new().write(true).open(&paths.stderr).unwrap());
            if !paths.stdin.is_empty() {
                let mut stdin = File::open(&paths.stdin).unwrap();
                let mut input = Vec::new();
                stdin.read_to_end(&mut input).unwrap();
                stdout.write_all(&input.to_ascii_uppercase()).unwrap();
            }
            if let Some(stderr) = stderr.as_mut() {
                stderr.write_all(b"to stderr\n").unwrap();
            }
        })
    }

    async fn read_all(stream: &mut DuplexStream) -> Vec<u8> {
        let mut data = Vec::new();
        tokio::time::timeout(DEADLINE, stream.read_to_end(&mut data))
            .await
            .expect("output did not end")
            .unwrap();
        data
    }

    #[tokio::test]
    async fn fifos_are_made_private_and_named_like_ctrs() {
        let root = tempfile::tempdir().unwrap();
        let (io, _h) = local(true);
        let (paths, copier) = create_in(root.path(), "c1", false, io).unwrap();
        let dir = Path::new(&paths.stdout).parent().unwrap().to_path_buf();
        assert_eq!(dir.parent(), Some(root.path()));
        assert!(dir.file_name().unwrap().to_str().unwrap().parse::<u32>().is_ok());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        for (path, name) in [
            (&paths.stdin, "c1-stdin"),
            (&paths.stdout, "c1-stdout"),
            (&paths.stderr, "c1-stderr"),
        ] {
            assert_eq!(Path::new(path), dir.join(name));
            let meta = fs::metadata(path).unwrap();
            assert!(meta.file_type().is_fifo());
            assert_eq!(meta.permissions().mode() & 0o777, 0o700);
        }
        assert!(!paths.terminal);
        drop(copier);
        assert!(!dir.exists(), "the FIFO directory is removed with the copier");
    }

    #[tokio::test]
    async fn ids_that_would_leave_the_directory_are_refused() {
        let root = tempfile::tempdir().unwrap();
        for id in ["", "../x", "a/b"] {
            let (io, _h) = local(false);
            assert!(create_in(root.path(), id, false, io).is_err(), "{id:?}");
        }
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn roundtrip_through_real_fifos() {
        let root = tempfile::tempdir().unwrap();
        let (io, mut h) = local(true);
        let (paths, mut copier) = create_in(root.path(), "t", false, io).unwrap();
        let shim = fake_shim(paths);

        let mut typed = h.typed.take().unwrap();
        typed.write_all(b"hello from stdin\n").unwrap();
        drop(typed);
        tokio::time::timeout(DEADLINE, copier.stdin_closed())
            .await
            .expect("stdin end was not reported");
        tokio::time::timeout(DEADLINE, copier.wait_output())
            .await
            .expect("outputs did not end")
            .unwrap();
        shim.join().unwrap();
        drop(copier);
        assert_eq!(read_all(&mut h.out).await, b"HELLO FROM STDIN\n");
        assert_eq!(read_all(&mut h.err).await, b"to stderr\n");
    }

    #[tokio::test]
    async fn input_written_before_the_shim_opens_stdin_is_not_lost() {
        let root = tempfile::tempdir().unwrap();
        let (io, mut h) = local(true);
        let (paths, mut copier) = create_in(root.path(), "t", false, io).unwrap();
        // All input is there, and ended, before any shim exists.
        let mut typed = h.typed.take().unwrap();
        let typist = thread::spawn(move || typed.write_all(&vec![b'x'; 200_000]).unwrap());
        // Without a reader the stdin thread waits rather than writes.
        assert!(tokio::time::timeout(Duration::from_millis(100), copier.stdin_closed())
            .await
            .is_err());
        let shim = fake_shim(paths);
        tokio::time::timeout(DEADLINE, copier.wait_output())
            .await
            .unwrap()
            .unwrap();
        shim.join().unwrap();
        typist.join().unwrap();
        drop(copier);
        let out = read_all(&mut h.out).await;
        assert_eq!(out.len(), 200_000);
        assert!(out.iter().all(|b| *b == b'X'));
    }

    #[tokio::test]
    async fn terminal_mode_has_no_stderr_and_no_stdin_when_not_asked() {
        let root = tempfile::tempdir().unwrap();
        let (io, mut h) = local(false);
        let (paths, mut copier) = create_in(root.path(), "t", true, io).unwrap();
        assert!(paths.terminal);
        assert_eq!(paths.stdin, "");
        assert_eq!(paths.stderr, "");
        let shim = fake_shim(paths.clone());
        tokio::time::timeout(DEADLINE, copier.wait_output())
            .await
            .unwrap()
            .unwrap();
        shim.join().unwrap();
        drop(copier);
        assert_eq!(read_all(&mut h.out).await, b"");
    }

    /// A task that is never created: dropping the copier ends the stdin
    /// thread blocked on opening the FIFO, and removes the directory.
    #[tokio::test]
    async fn dropping_without_a_shim_releases_everything() {
        let root = tempfile::tempdir().unwrap();
        let (io, h) = local(true);
        let (paths, copier) = create_in(root.path(), "t", false, io).unwrap();
        let dir = Path::new(&paths.stdin).parent().unwrap().to_path_buf();
        drop(copier);
        assert!(!dir.exists());
        drop(h);
    }

    #[tokio::test]
    async fn output_ends_only_when_every_writer_is_gone() {
        let root = tempfile::tempdir().unwrap();
        let (io, mut h) = local(false);
        let (paths, mut copier) = create_in(root.path(), "t", false, io).unwrap();
        let mut first = OpenOptions::new().write(true).open(&paths.stdout).unwrap();
        let second = OpenOptions::new().write(true).open(&paths.stdout).unwrap();
        let err = OpenOptions::new().write(true).open(&paths.stderr).unwrap();
        first.write_all(b"a").unwrap();
        drop(first);
        drop(err);
        let mut waiting = Box::pin(copier.wait_output());
        assert!(tokio::time::timeout(Duration::from_millis(100), waiting.as_mut())
            .await
            .is_err());
        drop(second);
        tokio::time::timeout(DEADLINE, waiting).await.unwrap().unwrap();
        drop(copier);
        assert_eq!(read_all(&mut h.out).await, b"a");
    }

    #[test]
    fn fifo_dirs_are_removed_only_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("123");
        fs::create_dir(&dir).unwrap();
        let other = tempfile::tempdir().unwrap();
        let stdout = dir.join("x-stdout");
        fs::write(&stdout, "").unwrap();
        let outside = other.path().join("x-stdout");
        fs::write(&outside, "").unwrap();
        remove_fifo_dir_under(root.path(), &["", outside.to_str().unwrap(), stdout.to_str().unwrap()]);
        assert!(!dir.exists());
        assert!(outside.exists());
        assert!(root.path().exists());
    }

    /// Raw mode on a pseudo-terminal: set while the copier lives, restored
    /// when it is dropped; the size is reported at once and after SIGWINCH.
    #[tokio::test]
    async fn terminal_is_raw_while_copying_and_resizes_are_reported() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let set_size = |cols: u16, rows: u16| {
            let size = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads one winsize.
            assert_eq!(
                unsafe { libc::ioctl(pty.slave.as_raw_fd(), libc::TIOCSWINSZ, &size) },
                0
            );
        };
        set_size(80, 24);
        let before = termios::tcgetattr(&pty.slave).unwrap();
        assert!(before.local_flags.contains(termios::LocalFlags::ICANON));

        let root = tempfile::tempdir().unwrap();
        let (mut io, _h) = local(false);
        io.tty = Some(pty.slave.try_clone().unwrap());
        let (_paths, mut copier) = create_in(root.path(), "t", true, io).unwrap();
        let during = termios::tcgetattr(&pty.slave).unwrap();
        assert!(!during.local_flags.contains(termios::LocalFlags::ICANON));
        assert!(!during.local_flags.contains(termios::LocalFlags::ECHO));

        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        assert!(copier
            .on_resize(move |w, h| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send((w, h));
                }
            })
            .unwrap());
        let first = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
        assert_eq!(first, Some((80, 24)));
        set_size(120, 40);
        nix::sys::signal::raise(nix::sys::signal::Signal::SIGWINCH).unwrap();
        let second = tokio::time::timeout(DEADLINE, rx.recv()).await.unwrap();
        assert_eq!(second, Some((120, 40)));

        drop(copier);
        let after = termios::tcgetattr(&pty.slave).unwrap();
        assert_eq!(after.local_flags, before.local_flags);
        assert_eq!(after.input_flags, before.input_flags);
        assert_eq!(after.output_flags, before.output_flags);
    }

    #[tokio::test]
    async fn no_resize_without_a_terminal() {
        let root = tempfile::tempdir().unwrap();
        let (io, _h) = local(false);
        let (_paths, mut copier) = create_in(root.path(), "t", true, io).unwrap();
        assert!(!copier.on_resize(|_, _| async {}).unwrap());
    }
}
