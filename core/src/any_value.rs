//! A protobuf `Any` kept as its type URL and bytes, so records and runtime
//! calls can carry client-owned payloads (specs, runtime options, stats)
//! without the core knowing their types.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AnyValue {
    pub type_url: String,
    pub value: Vec<u8>,
}

impl AnyValue {
    pub fn new(type_url: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        AnyValue {
            type_url: type_url.into(),
            value: value.into(),
        }
    }
}
