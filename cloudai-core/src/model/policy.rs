//! What a task asks of its attempts: [`AttemptPolicy`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ValidationError, MAX_ATTEMPTS};

/// Longest time limit a task may ask for (a year).
const MAX_TIME_LIMIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// What a task asks of its attempts. The defaults follow the peers: a lost
/// worker's task runs again (Slurm `JobRequeue=1`, Nomad, Kubernetes),
/// up to 5 losses (HyperQueue's `--crash-limit`); a task that fails on its
/// own is not retried unless it asks; no time limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptPolicy {
    /// Further attempts after a task-caused failure (non-zero exit, signal,
    /// OOM kill, a start failure).
    #[serde(default)]
    pub retries: u32,
    /// Delay before the first retry; it doubles with every retry, up to
    /// [`AttemptPolicy::MAX_RETRY_DELAY`], jitter taking up to half of
    /// each off (so many retries spread out).
    #[serde(with = "super::task::duration_ms", default = "default_retry_delay")]
    pub retry_delay: Duration,
    /// Worker losses after which the task fails (0: no limit).
    #[serde(default = "default_crash_limit")]
    pub crash_limit: u32,
    /// Whether a lost worker's task goes back to the queue (else it fails
    /// at the first loss).
    #[serde(default)]
    pub requeue: bool,
    /// Longest one attempt may run, from its start.
    #[serde(default, with = "optional_ms", skip_serializing_if = "Option::is_none")]
    pub time_limit: Option<Duration>,
    /// Whether a timeout counts as a task-caused failure that may be
    /// retried (else it is final).
    #[serde(default)]
    pub retry_on_timeout: bool,
}

fn default_retry_delay() -> Duration {
    AttemptPolicy::DEFAULT_RETRY_DELAY
}

fn default_crash_limit() -> u32 {
    AttemptPolicy::DEFAULT_CRASH_LIMIT
}

impl Default for AttemptPolicy {
    fn default() -> Self {
        AttemptPolicy {
            retries: 0,
            retry_delay: Self::DEFAULT_RETRY_DELAY,
            crash_limit: Self::DEFAULT_CRASH_LIMIT,
            requeue: true,
            time_limit: None,
            retry_on_timeout: false,
        }
    }
}

impl AttemptPolicy {
    /// Default delay before the first retry (10 s).
    pub const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(10);
    /// Longest delay between two attempts (5 min).
    pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);
    /// Default number of worker losses a task survives.
    pub const DEFAULT_CRASH_LIMIT: u32 = 5;

    /// The policy of a task stored before tasks had one: no retries, and a
    /// lost worker's task fails, as it always did.
    pub fn legacy() -> Self {
        AttemptPolicy {
            requeue: false,
            ..AttemptPolicy::default()
        }
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.retries >= MAX_ATTEMPTS {
            return Err(ValidationError::too_large(
                "retries",
                self.retries,
                MAX_ATTEMPTS - 1,
            ));
        }
        if self.retry_delay > Self::MAX_RETRY_DELAY {
            return Err(ValidationError::too_large(
                "retry delay",
                format!("{:?}", self.retry_delay),
                format!("{:?}", Self::MAX_RETRY_DELAY),
            ));
        }
        match self.time_limit {
            Some(l) if l.is_zero() => Err(ValidationError::Invalid {
                field: "time limit",
                reason: "must be longer than zero".into(),
            }),
            Some(l) if l > MAX_TIME_LIMIT => Err(ValidationError::too_large(
                "time limit",
                format!("{l:?}"),
                format!("{MAX_TIME_LIMIT:?}"),
            )),
            _ => Ok(()),
        }
    }
}

mod optional_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_without_a_policy_keeps_the_old_behaviour() {
        let p: AttemptPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(
            p,
            AttemptPolicy {
                requeue: false,
                ..AttemptPolicy::default()
            }
        );
        assert_eq!(p, AttemptPolicy::legacy());
    }

    #[test]
    fn policies_round_trip() {
        let p = AttemptPolicy {
            retries: 3,
            time_limit: Some(Duration::from_millis(2500)),
            ..AttemptPolicy::default()
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<AttemptPolicy>(&json).unwrap(), p);
    }

    #[test]
    fn out_of_range_policies_are_refused() {
        let bad = [
            AttemptPolicy {
                retries: MAX_ATTEMPTS,
                ..AttemptPolicy::default()
            },
            AttemptPolicy {
                retry_delay: Duration::from_secs(301),
                ..AttemptPolicy::default()
            },
            AttemptPolicy {
                time_limit: Some(Duration::ZERO),
                ..AttemptPolicy::default()
            },
        ];
        for p in bad {
            assert!(p.validate().is_err(), "{p:?}");
        }
        assert_eq!(AttemptPolicy::default().validate(), Ok(()));
    }
}
