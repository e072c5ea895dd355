//! The master's settings.

use std::time::Duration;

use crate::backoff::Backoff;
use crate::fence::{self, NoFenceMargin};
use crate::liveness::LivenessConfig;
use crate::placement::Policy;

/// Timings that do not fit together, found by [`MasterConfig::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Workers would turn inactive between two heartbeats.
    #[error("the heartbeat interval ({interval:?}) must be shorter than the heartbeat timeout ({timeout:?}), or every worker turns inactive between two beats")]
    IntervalNotBelowTimeout {
        /// The heartbeat interval.
        interval: Duration,
        /// The heartbeat timeout.
        timeout: Duration,
    },
    /// The id is empty, too long, or holds more than letters, digits and
    /// `.`, `_`, `-` (it is sent in headers and names the event epoch).
    #[error("the master id must be 1 to 128 letters, digits, '.', '_' or '-'")]
    BadId,
    /// Workers would be lost before (or as) they turn inactive.
    #[error("the heartbeat timeout ({timeout:?}) must be shorter than the loss threshold ({lost_after:?}): a worker turns inactive before it is lost")]
    TimeoutNotBelowLoss {
        /// The heartbeat timeout.
        timeout: Duration,
        /// Silence after which a worker is lost.
        lost_after: Duration,
    },
    /// Not even a worker with no grace could stop its runs before it is
    /// declared lost (see [`crate::fence`]).
    #[error(transparent)]
    NoFenceMargin(#[from] NoFenceMargin),
    /// A leader lease too short to renew over a real network.
    #[error("the lease TTL ({0:?}) must be at least 1s: the leader renews every third of it")]
    LeaseTtlTooShort(Duration),
    /// Under a lease, a worker would stop its runs during a takeover: it
    /// keeps them without an answer for `stop_margin` (see
    /// [`crate::fence`]), and a takeover lasts up to 1.5 lease TTLs plus
    /// the new leader's load.
    #[error("a worker keeps its runs for {stop_margin:?} without an answer (the loss threshold {lost_after:?} less a margin), under two lease TTLs ({lease_ttl:?} each): every takeover would stop the running work")]
    NoTakeoverMargin {
        /// Silence after which a worker is lost.
        lost_after: Duration,
        /// How long a worker with no grace keeps its runs unanswered.
        stop_margin: Duration,
        /// The lease TTL.
        lease_ttl: Duration,
    },
    /// The default time limit exceeds the largest one allowed.
    #[error("the default time limit ({default:?}) exceeds the largest allowed ({max:?})")]
    DefaultAboveMaxTimeLimit {
        /// The default limit.
        default: Duration,
        /// The largest limit.
        max: Duration,
    },
}

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
    /// How long finished tasks and their results are kept (24 h; `None`:
    /// for ever). They are removed in sweeps a quarter of this apart (at
    /// most a minute, at least 100 ms).
    pub retention: Option<Duration>,
    /// Deadline for a worker to confirm a cancel (30 s).
    pub cancel_timeout: Duration,
    /// How long a cancel waits for that confirmation before answering
    /// that the stop is owed (1 s); the stop goes out either way.
    pub cancel_wait: Duration,
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
    /// How many recent events are kept for watchers resuming from a
    /// cursor (10,000).
    pub event_buffer: usize,
    /// Time limit of a task that names none (`None`: no limit), as a Slurm
    /// partition's DefaultTime.
    pub default_time_limit: Option<Duration>,
    /// Largest time limit a task may ask for; a larger request is refused
    /// at submit (`None`: any), as a Slurm partition's MaxTime.
    pub max_time_limit: Option<Duration>,
    /// How long a leader's lease renewal stands, for masters that share a
    /// store under a lease (15 s; at least 1 s). The leader renews every
    /// third of it and acts until two thirds past its last renewal's
    /// sending; a candidate takes over a lease left unchanged this long.
    pub lease_ttl: Duration,
}

impl Default for MasterConfig {
    fn default() -> Self {
        MasterConfig {
            id: "master".into(),
            advertise_address: "127.0.0.1:50051".into(),
            liveness: LivenessConfig::default(),
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_flush: Duration::from_secs(1),
            retention: Some(Duration::from_secs(24 * 3600)),
            reconcile_interval: Some(Duration::from_secs(300)),
            cancel_timeout: Duration::from_secs(30),
            cancel_wait: Duration::from_secs(1),
            assign_timeout: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(3),
            backoff: Backoff::default(),
            policy: Policy::default(),
            seed: 0x5eed,
            event_buffer: 10_000,
            default_time_limit: None,
            max_time_limit: None,
            lease_ttl: Duration::from_secs(15),
        }
    }
}

impl MasterConfig {
    /// How often finished tasks past the retention are swept.
    pub fn retention_sweep(&self) -> Option<Duration> {
        self.retention
            .map(|r| (r / 4).clamp(Duration::from_millis(100), Duration::from_secs(60)))
    }

    /// Checks that the liveness timings fit together; [`super::Master::start`]
    /// refuses a configuration that fails.
    pub fn check(&self) -> Result<(), ConfigError> {
        let id_ok = (1..=128).contains(&self.id.len())
            && self
                .id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !id_ok {
            return Err(ConfigError::BadId);
        }
        let (interval, timeout, lost_after) = (
            self.heartbeat_interval,
            self.liveness.timeout,
            self.liveness.lost_after,
        );
        if timeout >= lost_after {
            return Err(ConfigError::TimeoutNotBelowLoss {
                timeout,
                lost_after,
            });
        }
        if interval >= timeout {
            return Err(ConfigError::IntervalNotBelowTimeout { interval, timeout });
        }
        fence::fence_after(lost_after, interval, Duration::ZERO)?;
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::LeaseTtlTooShort(self.lease_ttl));
        }
        if let (Some(default), Some(max)) = (self.default_time_limit, self.max_time_limit) {
            if default > max {
                return Err(ConfigError::DefaultAboveMaxTimeLimit { default, max });
            }
        }
        Ok(())
    }

    /// How long a worker with no grace keeps its runs while its heartbeats
    /// go unanswered (the master cannot know the workers' graces, which
    /// shorten it).
    pub fn stop_margin(&self) -> Duration {
        let lost_after = self.liveness.lost_after;
        lost_after.saturating_sub(fence::margin(lost_after))
    }

    /// [`MasterConfig::check`], and for masters under a lease: a takeover
    /// must not stop running work, so workers keep their runs unanswered
    /// for at least two lease TTLs. (Each takeover's load time comes on
    /// top; [`super::Leadership`] warns when it eats the rest.)
    pub fn check_lease(&self) -> Result<(), ConfigError> {
        self.check()?;
        let stop_margin = self.stop_margin();
        if stop_margin < self.lease_ttl * 2 {
            return Err(ConfigError::NoTakeoverMargin {
                lost_after: self.liveness.lost_after,
                stop_margin,
                lease_ttl: self.lease_ttl,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_fit_together() {
        assert_eq!(MasterConfig::default().check(), Ok(()));
    }

    #[test]
    fn under_a_lease_workers_keep_their_runs_through_a_takeover() {
        assert_eq!(MasterConfig::default().check_lease(), Ok(()));
        let mut c = MasterConfig {
            lease_ttl: Duration::from_secs(60),
            ..MasterConfig::default()
        };
        assert!(matches!(
            c.check_lease(),
            Err(ConfigError::NoTakeoverMargin { .. })
        ));
        c.lease_ttl = Duration::from_secs(50);
        assert_eq!(c.check_lease(), Ok(()), "120 s less 6.5 s covers 100 s");
    }

    #[test]
    fn an_id_that_cannot_travel_in_a_header_is_refused() {
        for bad in ["", "a b", "line\nbreak", &"x".repeat(129)] {
            let c = MasterConfig {
                id: bad.to_string(),
                ..MasterConfig::default()
            };
            assert_eq!(c.check(), Err(ConfigError::BadId), "{bad:?}");
        }
    }

    #[test]
    fn an_interval_not_below_the_timeout_is_refused() {
        let mut c = MasterConfig {
            heartbeat_interval: Duration::from_secs(10),
            ..MasterConfig::default()
        };
        c.liveness.timeout = Duration::from_secs(3);
        assert!(matches!(
            c.check(),
            Err(ConfigError::IntervalNotBelowTimeout { .. })
        ));
        c.heartbeat_interval = c.liveness.timeout;
        assert!(c.check().is_err(), "equal is refused too");
    }

    #[test]
    fn a_loss_threshold_no_worker_could_fence_itself_within_is_refused() {
        let mut c = MasterConfig {
            heartbeat_interval: Duration::from_millis(900),
            ..MasterConfig::default()
        };
        c.liveness.timeout = Duration::from_secs(1);
        c.liveness.lost_after = Duration::from_secs(2);
        assert!(matches!(c.check(), Err(ConfigError::NoFenceMargin(_))));
    }

    #[test]
    fn a_lease_ttl_under_a_second_is_refused() {
        let c = MasterConfig {
            lease_ttl: Duration::from_millis(999),
            ..MasterConfig::default()
        };
        assert!(matches!(c.check(), Err(ConfigError::LeaseTtlTooShort(_))));
    }

    #[test]
    fn a_default_time_limit_above_the_largest_is_refused() {
        let c = MasterConfig {
            default_time_limit: Some(Duration::from_secs(7200)),
            max_time_limit: Some(Duration::from_secs(3600)),
            ..MasterConfig::default()
        };
        assert!(matches!(
            c.check(),
            Err(ConfigError::DefaultAboveMaxTimeLimit { .. })
        ));
    }

    #[test]
    fn a_timeout_not_below_the_loss_threshold_is_refused() {
        let mut c = MasterConfig::default();
        c.liveness.timeout = Duration::from_secs(200);
        assert!(matches!(
            c.check(),
            Err(ConfigError::TimeoutNotBelowLoss { .. })
        ));
        c.liveness.timeout = c.liveness.lost_after;
        assert!(c.check().is_err(), "equal is refused too");
    }
}
