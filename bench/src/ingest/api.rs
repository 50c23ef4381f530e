//! An ingest through the Content service's Write stream, the way a client
//! library would do it: WRITE messages of one chunk each at increasing
//! offsets, then a COMMIT with the size and the expected digest.

use std::{fs::File, io::Read as _, path::Path, thread::JoinHandle, time::Instant};

use anyhow::{bail, ensure, Context as _};
use corten_api::containerd::services::content::v1::{
    content_client::ContentClient, WriteAction, WriteContentRequest, WriteContentResponse,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{metadata::MetadataValue, Request};

use super::measure::Timing;
use crate::probe;

/// Messages read ahead of the stream; enough to keep the socket busy while
/// the reader waits on the disk, small next to the file.
const READ_AHEAD: usize = 4;

pub struct Ingest<'a> {
    pub socket: &'a Path,
    pub file: &'a Path,
    pub size: u64,
    pub chunk: usize,
    pub namespace: &'a str,
    pub reference: String,
    /// `sha256:<hex>`, sent with the commit and compared with the answer.
    pub digest: &'a str,
}

impl Ingest<'_> {
    /// Wall time from the first message to the commit's answer, and the
    /// part of it after the last WRITE's answer (the commit: fsync, rename,
    /// record). The connection is made before the clock starts.
    ///
    /// Each call gets its own single-threaded runtime, dropped on return, so
    /// the connection closes before the daemon is stopped (see
    /// `probe::Prober::version`). A thread reads the file and queues the
    /// messages; the runtime sends them while reading the answers, since the
    /// daemon answers every message and would stall on a full stream.
    pub fn run(&self) -> anyhow::Result<Timing> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the ingest's async runtime")?;
        runtime.block_on(self.stream())
    }

    async fn stream(&self) -> anyhow::Result<Timing> {
        let mut client = ContentClient::new(probe::connect(self.socket.to_path_buf()).await?);
        let (tx, rx) = mpsc::channel(READ_AHEAD);
        let mut request = Request::new(ReceiverStream::new(rx));
        request
            .metadata_mut()
            .insert("containerd-namespace", MetadataValue::try_from(self.namespace)?);

        let started = Instant::now();
        let reader = self.spawn_reader(tx)?;
        let answered = async {
            let mut answers = client
                .write(request)
                .await
                .context("open the Write stream")?
                .into_inner();
            let mut checker = Answers::new(self.size, self.chunk);
            let mut last_write = started;
            while let Some(answer) = answers.message().await.context("Write stream")? {
                let now = Instant::now();
                if checker.check(&answer)? {
                    let timing = Timing {
                        total: now - started,
                        flush: Some(now - last_write),
                    };
                    return Ok((timing, answer));
                }
                last_write = now;
            }
            bail!("the Write stream ended before the commit was answered")
        }
        .await;
        let (timing, commit) = match answered {
            Ok(done) => done,
            // A failed read ends the stream early; its error explains the
            // daemon's. A reader still blocked on the queue is left to end
            // when the runtime, and with it the queue, is dropped.
            Err(e) if reader.is_finished() => return Err(join(reader).err().unwrap_or(e)),
            Err(e) => return Err(e),
        };
        join(reader)?;
        ensure!(
            commit.digest == self.digest,
            "the daemon committed {:?}, but the file's digest is {}",
            commit.digest,
            self.digest
        );
        Ok(timing)
    }

    fn spawn_reader(&self, tx: mpsc::Sender<WriteContentRequest>) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
        let (file, size, chunk) = (self.file.to_path_buf(), self.size, self.chunk);
        let (reference, digest) = (self.reference.clone(), self.digest.to_string());
        std::thread::Builder::new()
            .name("ingest-reader".into())
            .spawn(move || read_into(&file, size, chunk, reference, digest, &tx))
            .context("start the file reader")
    }
}

/// Queues one WRITE per chunk, the first naming the ref and the size, then
/// the COMMIT. Stops quietly if the stream is gone: its error is the one
/// to report.
fn read_into(
    path: &Path,
    size: u64,
    chunk: usize,
    reference: String,
    digest: String,
    tx: &mpsc::Sender<WriteContentRequest>,
) -> anyhow::Result<()> {
    let mut file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut offset = 0u64;
    let mut reference = Some(reference);
    while offset < size {
        let n = (size - offset).min(chunk as u64) as usize;
        let mut data = vec![0u8; n];
        file.read_exact(&mut data)
            .with_context(|| format!("read {} at {offset}", path.display()))?;
        let message = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.take().unwrap_or_default(),
            total: size as i64,
            offset: offset as i64,
            data,
            ..Default::default()
        };
        if tx.blocking_send(message).is_err() {
            return Ok(());
        }
        offset += n as u64;
    }
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference.unwrap_or_default(),
        total: size as i64,
        offset: size as i64,
        expected: digest,
        ..Default::default()
    };
    let _ = tx.blocking_send(commit);
    Ok(())
}

fn join(reader: JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    reader.join().map_err(|_| anyhow::anyhow!("the file reader panicked"))?
}

/// Checks that the answers follow the messages: one per WRITE, each
/// reporting the offset after it, then one for the COMMIT.
struct Answers {
    size: u64,
    chunk: u64,
    writes: u64,
}

impl Answers {
    fn new(size: u64, chunk: usize) -> Answers {
        Answers {
            size,
            chunk: chunk as u64,
            writes: 0,
        }
    }

    /// True once the commit is answered.
    fn check(&mut self, answer: &WriteContentResponse) -> anyhow::Result<bool> {
        match WriteAction::try_from(answer.action) {
            Ok(WriteAction::Write) => {
                self.writes += 1;
                let expected = (self.writes * self.chunk).min(self.size);
                ensure!(
                    answer.offset as u64 == expected,
                    "answer {} to a WRITE reports offset {}, expected {expected}",
                    self.writes,
                    answer.offset
                );
                Ok(false)
            }
            Ok(WriteAction::Commit) => {
                ensure!(
                    self.writes * self.chunk >= self.size,
                    "the commit was answered after {} of the writes",
                    self.writes
                );
                Ok(true)
            }
            _ => bail!("unexpected answer with action {}", answer.action),
        }
    }
}

#[cfg(test)]
mod tests {
    use corten_api::containerd::services::content::v1::{WriteAction, WriteContentResponse};

    use super::Answers;

    fn answer(action: WriteAction, offset: i64) -> WriteContentResponse {
        WriteContentResponse {
            action: action as i32,
            offset,
            ..Default::default()
        }
    }

    #[test]
    fn follows_writes_to_the_commit() {
        let mut answers = Answers::new(10, 4);
        assert!(!answers.check(&answer(WriteAction::Write, 4)).unwrap());
        assert!(!answers.check(&answer(WriteAction::Write, 8)).unwrap());
        assert!(!answers.check(&answer(WriteAction::Write, 10)).unwrap());
        assert!(answers.check(&answer(WriteAction::Commit, 10)).unwrap());
    }

    #[test]
    fn refuses_a_wrong_offset_or_an_early_commit() {
        let mut answers = Answers::new(10, 4);
        assert!(answers.check(&answer(WriteAction::Write, 3)).is_err());
        let mut answers = Answers::new(10, 4);
        assert!(answers.check(&answer(WriteAction::Commit, 0)).is_err());
    }
}
