//! What containerd clients put in request headers.

use corten_core::identifiers;
use tonic::{metadata::MetadataMap, Status};

/// The gRPC header containerd clients name the namespace in.
pub const NAMESPACE_HEADER: &str = "containerd-namespace";

/// The namespace a request acts in: missing is FailedPrecondition and
/// malformed is InvalidArgument, as containerd answers.
pub fn namespace(metadata: &MetadataMap) -> Result<String, Status> {
    let value = metadata
        .get(NAMESPACE_HEADER)
        .ok_or_else(|| Status::failed_precondition("namespace is required"))?;
    let ns = value
        .to_str()
        .map_err(|_| Status::invalid_argument("namespace header is not valid text"))?;
    // An empty header is how some clients say "no namespace": containerd
    // answers it as missing.
    if ns.is_empty() {
        return Err(Status::failed_precondition("namespace is required"));
    }
    identifiers::validate(ns).map_err(|e| Status::invalid_argument(format!("namespace validation: {e}")))?;
    Ok(ns.to_string())
}

/// The lease a request asks its new objects to be held by (`containerd-lease`).
pub fn lease(metadata: &MetadataMap) -> Result<Option<String>, Status> {
    let Some(value) = metadata.get(corten_core::leases::HEADER) else {
        return Ok(None);
    };
    let lease = value
        .to_str()
        .map_err(|_| Status::invalid_argument("lease header is not valid text"))?;
    corten_core::leases::validate_id(lease).map_err(|e| Status::invalid_argument(format!("lease validation: {e}")))?;
    Ok(Some(lease.to_string()))
}

/// A digest from a request field, as InvalidArgument when malformed.
pub fn digest(text: &str) -> Result<corten_core::digest::Digest, Status> {
    text.parse().map_err(crate::status::to_status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_header() {
        let mut md = MetadataMap::new();
        assert_eq!(namespace(&md).unwrap_err().code(), tonic::Code::FailedPrecondition);
        md.insert(NAMESPACE_HEADER, "".parse().unwrap());
        assert_eq!(namespace(&md).unwrap_err().code(), tonic::Code::FailedPrecondition);
        md.insert(NAMESPACE_HEADER, "a..b".parse().unwrap());
        assert_eq!(namespace(&md).unwrap_err().code(), tonic::Code::InvalidArgument);
        md.insert(NAMESPACE_HEADER, "k8s.io".parse().unwrap());
        assert_eq!(namespace(&md).unwrap(), "k8s.io");
    }
}
