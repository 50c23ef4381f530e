//! The containerd v1 wire contract as Rust types: messages, server traits and
//! client stubs, generated from this crate's own `.proto` files.
//!
//! Module paths mirror protobuf packages so the generated cross-references
//! (`super::super::types::Platform`) resolve.

pub mod google {
    pub mod rpc {
        tonic::include_proto!("google.rpc");
    }
}

pub mod containerd {
    pub mod types {
        tonic::include_proto!("containerd.types");

        pub mod transfer {
            tonic::include_proto!("containerd.types.transfer");
        }
    }

    pub mod v1 {
        pub mod types {
            tonic::include_proto!("containerd.v1.types");
        }
    }

    pub mod task {
        /// The shim task API (ttrpc), also used for version 3 shims.
        pub mod v2 {
            tonic::include_proto!("containerd.task.v2");
        }
    }

    pub mod events {
        tonic::include_proto!("containerd.events");
    }

    pub mod services {
        pub mod version {
            pub mod v1 {
                tonic::include_proto!("containerd.services.version.v1");
            }
        }
        pub mod introspection {
            pub mod v1 {
                tonic::include_proto!("containerd.services.introspection.v1");
            }
        }
        pub mod content {
            pub mod v1 {
                tonic::include_proto!("containerd.services.content.v1");
            }
        }
        pub mod leases {
            pub mod v1 {
                tonic::include_proto!("containerd.services.leases.v1");
            }
        }
        pub mod snapshots {
            pub mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
        pub mod diff {
            pub mod v1 {
                tonic::include_proto!("containerd.services.diff.v1");
            }
        }
        pub mod images {
            pub mod v1 {
                tonic::include_proto!("containerd.services.images.v1");
            }
        }
        pub mod namespaces {
            pub mod v1 {
                tonic::include_proto!("containerd.services.namespaces.v1");
            }
        }
        pub mod streaming {
            pub mod v1 {
                tonic::include_proto!("containerd.services.streaming.v1");
            }
        }
        pub mod transfer {
            pub mod v1 {
                tonic::include_proto!("containerd.services.transfer.v1");
            }
        }
        pub mod containers {
            pub mod v1 {
                tonic::include_proto!("containerd.services.containers.v1");
            }
        }
        pub mod tasks {
            pub mod v1 {
                tonic::include_proto!("containerd.services.tasks.v1");
            }
        }
        pub mod events {
            pub mod v1 {
                tonic::include_proto!("containerd.services.events.v1");
            }
            /// What shims call on the daemon's ttrpc socket.
            pub mod ttrpc {
                pub mod v1 {
                    tonic::include_proto!("containerd.services.events.ttrpc.v1");
                }
            }
        }
    }
}

/// Cgroup statistics as runc shims report them in `Stats`.
pub mod io {
    pub mod containerd {
        pub mod cgroups {
            pub mod v1 {
                tonic::include_proto!("io.containerd.cgroups.v1");
            }
            pub mod v2 {
                tonic::include_proto!("io.containerd.cgroups.v2");
            }
        }
    }
}

pub use prost_types;

/// How requests and responses flow for one RPC, as Prometheus' grpc_type label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    Unary,
    ClientStream,
    ServerStream,
    BidiStream,
}

impl MethodKind {
    pub fn label(self) -> &'static str {
        match self {
            MethodKind::Unary => "unary",
            MethodKind::ClientStream => "client_stream",
            MethodKind::ServerStream => "server_stream",
            MethodKind::BidiStream => "bidi_stream",
        }
    }
}

include!(concat!(env!("OUT_DIR"), "/methods.rs"));

/// The streaming kind of an RPC path such as `/containerd.services.version.v1.Version/Version`.
pub fn method_kind(path: &str) -> Option<MethodKind> {
    METHODS.iter().find(|(p, _)| *p == path).map(|(_, k)| *k)
}

/// Packs a message as an `Any` under `type_url`. containerd names its own
/// messages by their bare full name (`containerd.events.NamespaceCreate`).
pub fn pack_any<M: prost::Message>(type_url: &str, msg: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: type_url.to_string(),
        value: msg.encode_to_vec(),
    }
}
