//! Hashing on a thread of its own, so an ingest's bytes are hashed while the
//! next ones are written: the two biggest costs of an ingest then run on
//! two cores instead of one after the other.

use std::{
    sync::mpsc::{sync_channel, SyncSender},
    thread::JoinHandle,
};

use corten_core::digest::Algorithm;

use crate::hasher::Hasher;

/// Chunks queued for hashing at most: bounds the memory a fast writer holds.
const QUEUE: usize = 4;

pub struct HashPipe {
    algorithm: Algorithm,
    sender: Option<SyncSender<Vec<u8>>>,
    worker: Option<JoinHandle<Hasher>>,
}

impl HashPipe {
    /// Continues from `hasher`'s state.
    pub fn new(hasher: Hasher) -> HashPipe {
        let algorithm = hasher.algorithm();
        let (sender, chunks) = sync_channel::<Vec<u8>>(QUEUE);
        let worker = std::thread::Builder::new()
            .name("corten-hash".into())
            .spawn(move || {
                let mut hasher = hasher;
                for chunk in chunks {
                    hasher.update(&chunk);
                }
                hasher
            })
            .expect("spawn a hashing thread");
        HashPipe {
            algorithm,
            sender: Some(sender),
            worker: Some(worker),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn push(&mut self, chunk: Vec<u8>) {
        if let Some(sender) = &self.sender {
            // The worker only stops when the sender is dropped, so a send cannot fail.
            let _ = sender.send(chunk);
        }
    }

    /// The state after every chunk pushed so far; hashing carries on from it.
    pub fn hasher(&mut self) -> Hasher {
        let done = self.stop();
        *self = HashPipe::new(done.clone());
        done
    }

    fn stop(&mut self) -> Hasher {
        self.sender = None;
        match self.worker.take().map(JoinHandle::join) {
            Some(Ok(hasher)) => hasher,
            // Hashing cannot panic; should it, the digest check at commit fails safe.
            _ => Hasher::new(self.algorithm),
        }
    }
}

impl Drop for HashPipe {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_digest_as_inline_hashing() {
        let mut inline = Hasher::new(Algorithm::Sha256);
        let mut pipe = HashPipe::new(Hasher::new(Algorithm::Sha256));
        for i in 0..20u8 {
            let chunk = vec![i; 100_000];
            inline.update(&chunk);
            pipe.push(chunk);
            if i == 7 {
                assert_eq!(pipe.hasher().digest(), inline.digest(), "mid-stream");
            }
        }
        assert_eq!(pipe.hasher().digest(), inline.digest());
    }
}
