//! Wall-clock timestamps that follow tokio's clock.
//!
//! The services read time only through [`Clock`]: a wall-clock origin plus
//! the elapsed `tokio::time::Instant`. Under `tokio::time::pause` the
//! elapsed part is virtual, so the same services run on simulated time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::model::Timestamp;

/// A monotonic clock giving [`Timestamp`]s.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Timestamp,
    start: Instant,
}

impl Clock {
    /// A clock that starts at the current wall-clock time.
    pub fn system() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis();
        Self::starting_at(Timestamp::from_millis(
            u64::try_from(ms).unwrap_or(u64::MAX),
        ))
    }

    /// A clock that reads `origin` now (simulations use a fixed origin).
    pub fn starting_at(origin: Timestamp) -> Self {
        Clock {
            origin,
            start: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        self.origin.saturating_add(self.start.elapsed())
    }

    /// The tokio instant at which this clock will read `t`.
    pub fn instant_at(&self, t: Timestamp) -> Instant {
        self.start + t.saturating_since(self.origin)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}
