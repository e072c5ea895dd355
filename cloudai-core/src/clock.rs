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
    /// How fast it runs against tokio's clock (1: exactly; a simulation
    /// slows one master's clock to break the lease's rate assumption).
    rate: f64,
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
            rate: 1.0,
        }
    }

    /// This clock, running `rate` times as fast from its origin on
    /// (simulations: a slow or fast host clock). `rate` must be positive.
    pub fn with_rate(self, rate: f64) -> Self {
        assert!(rate > 0.0, "a clock runs forward");
        Clock { rate, ..self }
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        let elapsed = self.start.elapsed();
        if self.rate == 1.0 {
            return self.origin.saturating_add(elapsed);
        }
        self.origin.saturating_add(elapsed.mul_f64(self.rate))
    }

    /// The tokio instant at which this clock will read `t`.
    pub fn instant_at(&self, t: Timestamp) -> Instant {
        let ahead = t.saturating_since(self.origin);
        if self.rate == 1.0 {
            return self.start + ahead;
        }
        self.start + ahead.div_f64(self.rate)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::system()
    }
}
