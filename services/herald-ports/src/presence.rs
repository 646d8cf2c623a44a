//! The presence bus: how gateways tell each other who is connected to them.
//!
//! Every gateway publishes its sessions (snapshots and changes, see `herald_gateway::presence`)
//! and reads every gateway's records from the moment it starts; each builds its own
//! eventually consistent view of the cluster. Records are small and short-lived: the view is
//! rebuilt from snapshots, so the bus keeps them only for a while (an hour on Kafka) and a
//! reader never needs history. A single-process deployment (the embedded log) has no bus.

use async_trait::async_trait;

use crate::log::LogError;

/// Largest presence record, in bytes.
pub const MAX_PRESENCE_RECORD_BYTES: usize = 256 * 1024;

#[async_trait]
pub trait PresenceBus: Send + Sync + 'static {
    /// Publishes one record of `gateway`; returns once the bus has it. Records of one gateway
    /// reach every reader in the order they were published.
    async fn publish(&self, gateway: &str, value: Vec<u8>) -> Result<(), LogError>;
    /// Every gateway's records published from now on (its own included; a broker may hand out
    /// a few from just before, which readers must tolerate: records are state, not changes).
    async fn feed(&self) -> Result<Box<dyn PresenceFeed>, LogError>;
}

#[async_trait]
pub trait PresenceFeed: Send {
    /// The next records, oldest first; waits until there are some. Cancel-safe.
    async fn next(&mut self) -> Result<Vec<Vec<u8>>, LogError>;
}
