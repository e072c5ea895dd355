use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Parses a duration as an operator writes one: seconds, fractions allowed
/// (`30`, `1.5`, at most 10⁹), or humantime (`30s`, `5m`, `1h30m`). The
/// one rule for the CLI's flags and the dashboard's parameters.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let Ok(v) = s.trim().parse::<f64>() else {
        return humantime::parse_duration(s.trim())
            .map_err(|e| format!("{s:?} is not a duration (30, 1.5, 30s, 5m, 1h30m): {e}"));
    };
    if !v.is_finite() || !(0.0..=1e9).contains(&v) {
        return Err(format!("{s:?} is not a valid number of seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// Milliseconds since the Unix epoch.
///
/// The pure core never reads a clock: callers pass `now` as a `Timestamp`,
/// which lets tests and the simulation run on virtual time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch itself.
    pub const ZERO: Timestamp = Timestamp(0);

    /// A timestamp `ms` milliseconds after the epoch.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds since the epoch.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating at the far future.
    pub fn saturating_add(self, d: Duration) -> Self {
        Timestamp(
            self.0
                .saturating_add(u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        )
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:03}s", self.0 / 1000, self.0 % 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_seconds_or_humantime() {
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration(" 5m "), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["-1", "NaN", "inf", "1e10", "soon", ""] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
