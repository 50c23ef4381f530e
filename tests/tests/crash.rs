//! SIGKILL at random moments during concurrent ingests and label updates:
//! after every restart, each acknowledged write is there, nothing
//! half-committed is visible, and `cortend verify` passes.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use corten_api::containerd::services::content::v1::{
    content_client::ContentClient, Info, InfoRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use corten_tests::{bin, Daemon};
use tonic::transport::Channel;

const ROUNDS: usize = 50;
const WRITERS: usize = 3;

/// Automatic collection would legitimately remove unreferenced blobs.
const NO_AUTO_GC: &str = r#"[plugins."io.containerd.gc.v1.scheduler"]
startup_delay = "1000h"
mutation_threshold = 0
deletion_threshold = 1000000000
"#;

/// A small deterministic generator: the seed is printed, so a failure replays.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn namespaced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("containerd-namespace", "crash".parse().unwrap());
    request
}

async fn connect(d: &Daemon) -> ContentClient<Channel> {
    ContentClient::new(corten_tests::grpc::channel(&d.socket).await)
}

/// One blob in two writes and a commit; Ok(digest) only when acknowledged.
async fn ingest(
    client: &mut ContentClient<Channel>,
    reference: String,
    data: Vec<u8>,
) -> Result<String, tonic::Status> {
    let half = data.len() / 2;
    let messages = vec![
        WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.clone(),
            data: data[..half].to_vec(),
            ..Default::default()
        },
        WriteContentRequest {
            action: WriteAction::Commit as i32,
            offset: half as i64,
            total: data.len() as i64,
            data: data[half..].to_vec(),
            labels: [("containerd.io/gc.root".to_string(), "crash".to_string())].into(),
            ..Default::default()
        },
    ];
    let mut responses = client
        .write(namespaced(tokio_stream::iter(messages)))
        .await?
        .into_inner();
    while let Some(response) = responses.message().await? {
        if response.action == WriteAction::Commit as i32 {
            return Ok(response.digest);
        }
    }
    Err(tonic::Status::unknown(
        "stream ended before the commit was acknowledged",
    ))
}

#[derive(Default)]
struct Acknowledged {
    /// digest -> size
    blobs: BTreeMap<String, usize>,
    /// (digest, label key) whose update was acknowledged
    labels: BTreeSet<(String, String)>,
}

#[test]
fn sigkill_during_ingests_and_label_updates() {
    let seed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 | 1;
    println!("seed {seed}");
    let mut rng = Rng(seed);
    let mut d = Daemon::start_with(NO_AUTO_GC);
    let acked = Arc::new(Mutex::new(Acknowledged::default()));
    let rt = tokio::runtime::Runtime::new().unwrap();

    for round in 0..ROUNDS {
        let kill_after = Duration::from_micros(5_000 + rng.next() % 100_000);
        let sizes: Vec<usize> = (0..WRITERS).map(|_| 1 + (rng.next() % (256 << 10)) as usize).collect();
        rt.block_on(async {
            let mut tasks = Vec::new();
            for (w, size) in sizes.into_iter().enumerate() {
                let mut client = connect(&d).await;
                let acked = acked.clone();
                tasks.push(tokio::spawn(async move {
                    for i in 0.. {
                        let data: Vec<u8> = (0..size)
                            .map(|b| (b as u64 * 7 + (round * 131 + w * 17 + i) as u64) as u8)
                            .collect();
                        let reference = format!("r{round}-{w}-{i}");
                        match ingest(&mut client, reference, data).await {
                            Ok(digest) => {
                                acked.lock().unwrap().blobs.insert(digest.clone(), size);
                                // A label update on the blob just written.
                                let key = format!("round-{round}-{w}-{i}");
                                let info = Info {
                                    digest: digest.clone(),
                                    labels: [(key.clone(), "x".into())].into(),
                                    ..Default::default()
                                };
                                let request = UpdateRequest {
                                    info: Some(info),
                                    update_mask: Some(prost_types::FieldMask {
                                        paths: vec![format!("labels.{key}")],
                                    }),
                                };
                                if client.update(namespaced(request)).await.is_ok() {
                                    acked.lock().unwrap().labels.insert((digest, key));
                                } else {
                                    return;
                                }
                            }
                            Err(_) => return,
                        }
                    }
                }));
            }
            tokio::time::sleep(kill_after).await;
            d.kill();
            for t in tasks {
                let _ = t.await;
            }
        });

        let verify = Command::new(bin("cortend"))
            .arg("--config")
            .arg(&d.config)
            .arg("verify")
            .output()
            .unwrap();
        assert!(
            verify.status.success(),
            "round {round} (seed {seed}): verify failed:\n{}{}",
            String::from_utf8_lossy(&verify.stdout),
            String::from_utf8_lossy(&verify.stderr)
        );
        d.spawn()
            .unwrap_or_else(|log| panic!("round {round}: restart failed:\n{log}"));

        let acked = acked.lock().unwrap();
        rt.block_on(async {
            let mut client = connect(&d).await;
            for (digest, size) in &acked.blobs {
                let info = client
                    .info(namespaced(InfoRequest { digest: digest.clone() }))
                    .await
                    .unwrap_or_else(|e| panic!("round {round} (seed {seed}): acknowledged {digest} lost: {e}"))
                    .into_inner()
                    .info
                    .unwrap();
                assert_eq!(info.size as usize, *size, "round {round}: {digest}");
                for (_, key) in acked.labels.iter().filter(|(d, _)| d == digest) {
                    assert!(
                        info.labels.contains_key(key),
                        "round {round} (seed {seed}): label {key} on {digest} lost"
                    );
                }
            }
        });
    }
    assert!(
        acked.lock().unwrap().blobs.len() >= ROUNDS,
        "the rounds acknowledged too few writes to mean anything"
    );
}
