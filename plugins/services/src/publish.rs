//! Publishing events from the services: an envelope around an `Any`. (The
//! events service itself, which clients subscribe through, is `events`.)

use std::{sync::Arc, time::SystemTime};

use corten_core::events::{Envelope, Exchange};

/// Publishes without failing the RPC: an event that cannot be sent is logged.
pub fn publish<M: prost::Message>(
    exchange: &Arc<dyn Exchange>,
    namespace: &str,
    topic: &str,
    type_url: &str,
    event: &M,
) {
    let any = corten_api::pack_any(type_url, event);
    let envelope = Envelope {
        timestamp: SystemTime::now(),
        namespace: namespace.to_string(),
        topic: topic.to_string(),
        type_url: any.type_url,
        value: any.value,
    };
    if let Err(e) = exchange.publish(envelope) {
        tracing::warn!(topic, "publish event: {e}");
    }
}
