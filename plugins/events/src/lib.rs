//! Plugin `io.containerd.event.v1.exchange`: delivers every published
//! envelope to every subscriber, in publish order.
//!
//! A subscriber that falls more than `capacity` events behind loses the
//! oldest ones (and is told how many) instead of slowing publishers down:
//! a stuck `ctr events` must never stall container lifecycles.

use std::sync::Arc;

use corten_core::{
    events::{validate_topic, Envelope, Exchange, Subscription},
    identifiers,
    plugin::{InitContext, InitError, Instance, Plugin},
    register_plugin, Error,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// `[plugins."io.containerd.event.v1.exchange"]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ExchangeConfig {
    /// Events a subscriber may fall behind before it loses the oldest.
    pub capacity: usize,
}

impl Default for ExchangeConfig {
    fn default() -> Self {
        ExchangeConfig { capacity: 1024 }
    }
}

pub struct Broadcast {
    sender: broadcast::Sender<Arc<Envelope>>,
}

impl Broadcast {
    pub fn new(capacity: usize) -> Self {
        Broadcast {
            sender: broadcast::channel(capacity.max(1)).0,
        }
    }
}

impl Exchange for Broadcast {
    fn publish(&self, envelope: Envelope) -> Result<(), Error> {
        identifiers::validate(&envelope.namespace)?;
        validate_topic(&envelope.topic)?;
        // No subscriber is not an error: events are fire and forget.
        let _ = self.sender.send(Arc::new(envelope));
        Ok(())
    }

    fn subscribe(&self) -> Subscription {
        self.sender.subscribe()
    }
}

pub struct ExchangePlugin;

impl Plugin for ExchangePlugin {
    const TYPE: &'static str = "io.containerd.event.v1";
    const ID: &'static str = "exchange";
    type Config = ExchangeConfig;

    async fn init(_ctx: InitContext, config: ExchangeConfig) -> Result<Instance, InitError> {
        let exchange: Arc<dyn Exchange> = Arc::new(Broadcast::new(config.capacity));
        Ok(Instance::new(exchange))
    }
}

register_plugin!(ExchangePlugin);

/// Called by the daemon binary so the linker keeps this crate, and with it
/// the plugin registrations `inventory` collects from it.
pub fn link() {}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    fn envelope(ns: &str, topic: &str) -> Envelope {
        Envelope {
            timestamp: SystemTime::now(),
            namespace: ns.into(),
            topic: topic.into(),
            type_url: "containerd.events.NamespaceCreate".into(),
            value: vec![],
        }
    }

    #[tokio::test]
    async fn delivers_in_order_to_every_subscriber() {
        let x = Broadcast::new(8);
        let (mut a, mut b) = (x.subscribe(), x.subscribe());
        x.publish(envelope("n", "/namespaces/create")).unwrap();
        x.publish(envelope("n", "/namespaces/delete")).unwrap();
        for sub in [&mut a, &mut b] {
            assert_eq!(sub.recv().await.unwrap().topic, "/namespaces/create");
            assert_eq!(sub.recv().await.unwrap().topic, "/namespaces/delete");
        }
    }

    #[test]
    fn refuses_bad_envelopes() {
        let x = Broadcast::new(8);
        assert!(x.publish(envelope("", "/a")).is_err());
        assert!(x.publish(envelope("n", "a")).is_err());
    }
}
