//! Generates the message and service types from `proto/`, and a table of every
//! RPC's streaming kind so the metrics layer can label calls without knowing
//! any service.

use std::{env, fmt::Write as _, fs, path::PathBuf};

use prost::Message as _;

const PROTOS: &[&str] = &[
    "google/rpc/status.proto",
    "containerd/types/platform.proto",
    "containerd/types/mount.proto",
    "containerd/types/descriptor.proto",
    "containerd/events/namespace.proto",
    "containerd/events/content.proto",
    "containerd/events/snapshot.proto",
    "containerd/services/version/v1/version.proto",
    "containerd/services/introspection/v1/introspection.proto",
    "containerd/services/namespaces/v1/namespace.proto",
    "containerd/services/content/v1/content.proto",
    "containerd/services/leases/v1/leases.proto",
    "containerd/services/snapshots/v1/snapshots.proto",
    "containerd/services/diff/v1/diff.proto",
    "containerd/services/images/v1/images.proto",
    "containerd/types/transfer/registry.proto",
    "containerd/types/transfer/imagestore.proto",
    "containerd/types/transfer/progress.proto",
    "containerd/services/streaming/v1/streaming.proto",
    "containerd/services/transfer/v1/transfer.proto",
    "containerd/types/task/task.proto",
    "containerd/types/metrics.proto",
    "containerd/events/container.proto",
    "containerd/events/task.proto",
    "containerd/services/containers/v1/containers.proto",
    "containerd/services/tasks/v1/tasks.proto",
    "containerd/services/events/v1/events.proto",
    // Messages of ttrpc services (the shim task API, event forwarding).
    "containerd/services/ttrpc/events/v1/events.proto",
    "containerd/runtime/task/v2/shim.proto",
    "io/containerd/cgroups/v1/metrics.proto",
    "io/containerd/cgroups/v2/metrics.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = out.join("descriptors.bin");
    tonic_prost_build::configure()
        .file_descriptor_set_path(&descriptors)
        .compile_protos(PROTOS, &["proto"])?;

    let set = prost_types::FileDescriptorSet::decode(fs::read(&descriptors)?.as_slice())?;
    let mut table = String::from(
        "/// Every RPC path in the API with its streaming kind.\npub static METHODS: &[(&str, MethodKind)] = &[\n",
    );
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                let kind = match (method.client_streaming(), method.server_streaming()) {
                    (false, false) => "Unary",
                    (true, false) => "ClientStream",
                    (false, true) => "ServerStream",
                    (true, true) => "BidiStream",
                };
                writeln!(
                    table,
                    "    (\"/{}.{}/{}\", MethodKind::{kind}),",
                    file.package(),
                    service.name(),
                    method.name()
                )?;
            }
        }
    }
    table.push_str("];\n");
    fs::write(out.join("methods.rs"), table)?;
    for proto in PROTOS {
        println!("cargo:rerun-if-changed=proto/{proto}");
    }
    Ok(())
}
