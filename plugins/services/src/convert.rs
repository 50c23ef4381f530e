//! Conversions between protobuf messages and domain types shared by
//! several services.

use std::collections::BTreeMap;

use corten_api::containerd::types::{Descriptor as DescriptorMsg, Mount as MountMsg};
use corten_core::{diff::Descriptor, mount::Mount};
use tonic::Status;

pub fn mount_msg(m: Mount) -> MountMsg {
    MountMsg {
        r#type: m.kind,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

pub fn mount(m: MountMsg) -> Mount {
    Mount {
        kind: m.r#type,
        source: m.source,
        target: m.target,
        options: m.options,
    }
}

pub fn descriptor_msg(d: Descriptor) -> DescriptorMsg {
    DescriptorMsg {
        media_type: d.media_type,
        digest: d.digest.to_string(),
        size: d.size as i64,
        annotations: d.annotations.into_iter().collect(),
    }
}

pub fn descriptor(d: Option<DescriptorMsg>) -> Result<Descriptor, Status> {
    let d = d.ok_or_else(|| Status::invalid_argument("a descriptor is required"))?;
    Ok(Descriptor {
        media_type: d.media_type,
        digest: crate::request::digest(&d.digest)?,
        size: d.size.max(0) as u64,
        annotations: d.annotations.into_iter().collect::<BTreeMap<_, _>>(),
    })
}
