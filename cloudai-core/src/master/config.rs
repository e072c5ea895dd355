//! The master's settings.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::liveness::LivenessConfig;
use crate::placement::Policy;

/// Master settings. Every timeout of the original system is here, with its
/// value as the default.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    /// The master's id, sent to workers.
    pub id: String,
    /// Where workers reach the master.
    pub advertise_address: String,
    /// Heartbeat timeout and loss threshold.
    pub liveness: LivenessConfig,
    /// Heartbeat interval workers are told to use (5 s).
    pub heartbeat_interval: Duration,
    /// How often coalesced heartbeats are written to the registry (1 s).
    pub heartbeat_flush: Duration,
    /// Periodic reconciliation interval (`None`: only on start and demand).
    pub reconcile_interval: Option<Duration>,
    /// Deadline for a worker to confirm a cancel (30 s).
    pub cancel_timeout: Duration,
    /// Deadline for a worker to accept an assignment (10 s).
    pub assign_timeout: Duration,
    /// Deadline for one reconnection attempt (3 s).
    pub reconnect_timeout: Duration,
    /// Reconnection backoff.
    pub backoff: Backoff,
    /// Placement policy.
    pub policy: Policy,
    /// Seed for backoff jitter.
    pub seed: u64,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            id: "master".into(),
            advertise_address: "127.0.0.1:50051".into(),
            liveness: LivenessConfig::default(),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_flush: Duration::from_secs(1),
            reconcile_interval: Some(Duration::from_secs(300)),
            cancel_timeout: Duration::from_secs(30),
            assign_timeout: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(3),
            backoff: Backoff::default(),
            policy: Policy::default(),
            seed: 0x5eed,
        }
    }
}
