//! The event exchange interface: envelopes published by services and runtimes,
//! delivered to every subscriber.

use std::{sync::Arc, time::SystemTime};

use crate::{identifiers, Error};

/// One event as containerd frames it. The payload is an `Any` kept as its type
/// URL and bytes, so the exchange needs no protobuf knowledge.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub timestamp: SystemTime,
    pub namespace: String,
    pub topic: String,
    pub type_url: String,
    pub value: Vec<u8>,
}

/// A subscription; `Lagged` items were dropped because the subscriber fell behind.
pub type Subscription = tokio::sync::broadcast::Receiver<Arc<Envelope>>;

pub trait Exchange: Send + Sync + 'static {
    /// Delivers to the current subscribers; never blocks on a slow one.
    fn publish(&self, envelope: Envelope) -> Result<(), Error>;
    fn subscribe(&self) -> Subscription;
}

/// containerd's topic rule: `/`-separated identifiers, starting with `/`.
pub fn validate_topic(topic: &str) -> Result<(), Error> {
    let rest = topic
        .strip_prefix('/')
        .ok_or_else(|| Error::InvalidArgument(format!("topic {topic:?} must start with '/'")))?;
    for part in rest.split('/') {
        identifiers::validate(part)
            .map_err(|_| Error::InvalidArgument(format!("topic {topic:?} has an invalid component {part:?}")))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics() {
        assert!(validate_topic("/namespaces/create").is_ok());
        assert!(validate_topic("/tasks/exec-added").is_ok());
        for bad in ["", "/", "tasks", "/a//b", "/a/"] {
            assert!(validate_topic(bad).is_err(), "{bad}");
        }
    }
}
