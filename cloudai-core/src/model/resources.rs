use std::fmt;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// Largest amount of any one resource, in thousandths of its unit
/// (about a billion cores or GB). Keeps sums over any realistic number of
/// tasks far from `u64` overflow.
const MAX_MILLI: u64 = 1 << 40;
/// Largest GPU count accepted.
const MAX_GPUS: u32 = 1 << 16;

/// A bundle of resources: a worker's capacity or a task's request.
///
/// Amounts are kept as integers in thousandths of their unit (millicores,
/// MB for GB), not as `f64`. Integer sums are exact, so the ledger's
/// `allocated + available = capacity` holds to the last unit after any
/// sequence of allocations and releases; the float counters of the original
/// system drifted and needed clamping.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resources {
    /// CPU in millicores (1000 = one core).
    pub cpu_millis: u64,
    /// Memory in MB (1000 = one GB).
    pub memory_mb: u64,
    /// Storage in MB (1000 = one GB).
    pub storage_mb: u64,
    /// Whole GPUs.
    pub gpus: u32,
}

fn to_milli(field: &'static str, value: f64) -> Result<u64, ValidationError> {
    if !value.is_finite() {
        return Err(ValidationError::NotFinite { field });
    }
    if value < 0.0 {
        return Err(ValidationError::Negative {
            field,
            value: value.to_string(),
        });
    }
    let milli = (value * 1000.0).round();
    if milli > MAX_MILLI as f64 {
        return Err(ValidationError::too_large(field, value, MAX_MILLI / 1000));
    }
    // In range and non-negative, so the cast is exact.
    Ok(milli as u64)
}

impl Resources {
    /// No resources at all.
    pub const ZERO: Resources = Resources {
        cpu_millis: 0,
        memory_mb: 0,
        storage_mb: 0,
        gpus: 0,
    };

    /// Builds resources from the units people use (cores, GB, GB, GPUs),
    /// refusing NaN, infinities, negatives and absurdly large values.
    pub fn new(
        cpu_cores: f64,
        memory_gb: f64,
        storage_gb: f64,
        gpus: u32,
    ) -> Result<Self, ValidationError> {
        if gpus > MAX_GPUS {
            return Err(ValidationError::too_large("gpus", gpus, MAX_GPUS));
        }
        Ok(Resources {
            cpu_millis: to_milli("cpu cores", cpu_cores)?,
            memory_mb: to_milli("memory GB", memory_gb)?,
            storage_mb: to_milli("storage GB", storage_gb)?,
            gpus,
        })
    }

    /// Checks amounts that arrived already in integer units (from a store or
    /// the wire) against the same limits as [`Resources::new`].
    pub fn validate(&self) -> Result<(), ValidationError> {
        for (field, v) in [
            ("cpu millicores", self.cpu_millis),
            ("memory MB", self.memory_mb),
            ("storage MB", self.storage_mb),
        ] {
            if v > MAX_MILLI {
                return Err(ValidationError::too_large(field, v, MAX_MILLI));
            }
        }
        if self.gpus > MAX_GPUS {
            return Err(ValidationError::too_large("gpus", self.gpus, MAX_GPUS));
        }
        Ok(())
    }

    /// CPU in cores.
    pub fn cpu_cores(&self) -> f64 {
        self.cpu_millis as f64 / 1000.0
    }

    /// Memory in GB.
    pub fn memory_gb(&self) -> f64 {
        self.memory_mb as f64 / 1000.0
    }

    /// Storage in GB.
    pub fn storage_gb(&self) -> f64 {
        self.storage_mb as f64 / 1000.0
    }

    /// Whether every amount in `self` is at most the one in `other`.
    pub fn fits_within(&self, other: &Resources) -> bool {
        self.cpu_millis <= other.cpu_millis
            && self.memory_mb <= other.memory_mb
            && self.storage_mb <= other.storage_mb
            && self.gpus <= other.gpus
    }

    /// Component-wise sum, `None` on overflow.
    pub fn checked_add(&self, other: &Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_add(other.cpu_millis)?,
            memory_mb: self.memory_mb.checked_add(other.memory_mb)?,
            storage_mb: self.storage_mb.checked_add(other.storage_mb)?,
            gpus: self.gpus.checked_add(other.gpus)?,
        })
    }

    /// Component-wise difference, `None` if any amount would go below zero.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        Some(Resources {
            cpu_millis: self.cpu_millis.checked_sub(other.cpu_millis)?,
            memory_mb: self.memory_mb.checked_sub(other.memory_mb)?,
            storage_mb: self.storage_mb.checked_sub(other.storage_mb)?,
            gpus: self.gpus.checked_sub(other.gpus)?,
        })
    }

    /// Component-wise difference clamped at zero.
    pub fn saturating_sub(&self, other: &Resources) -> Resources {
        Resources {
            cpu_millis: self.cpu_millis.saturating_sub(other.cpu_millis),
            memory_mb: self.memory_mb.saturating_sub(other.memory_mb),
            storage_mb: self.storage_mb.saturating_sub(other.storage_mb),
            gpus: self.gpus.saturating_sub(other.gpus),
        }
    }

    /// Whether every amount is zero.
    pub fn is_zero(&self) -> bool {
        *self == Resources::ZERO
    }
}

impl fmt::Display for Resources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cpu={} mem={}GB disk={}GB gpu={}",
            self.cpu_cores(),
            self.memory_gb(),
            self.storage_gb(),
            self.gpus
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_converts_to_integer_units() {
        let r = Resources::new(1.5, 0.5, 10.0, 1).unwrap();
        assert_eq!(
            (r.cpu_millis, r.memory_mb, r.storage_mb, r.gpus),
            (1500, 500, 10_000, 1)
        );
        assert_eq!(r.cpu_cores(), 1.5);
    }

    #[test]
    fn new_refuses_nan_infinite_negative_and_huge() {
        assert_eq!(
            Resources::new(f64::NAN, 1.0, 1.0, 0),
            Err(ValidationError::NotFinite { field: "cpu cores" })
        );
        assert!(matches!(
            Resources::new(1.0, f64::INFINITY, 1.0, 0),
            Err(ValidationError::NotFinite { .. })
        ));
        assert!(matches!(
            Resources::new(1.0, 1.0, -0.1, 0),
            Err(ValidationError::Negative { .. })
        ));
        assert!(matches!(
            Resources::new(1e300, 1.0, 1.0, 0),
            Err(ValidationError::TooLarge { .. })
        ));
        assert!(matches!(
            Resources::new(1.0, 1.0, 1.0, u32::MAX),
            Err(ValidationError::TooLarge { .. })
        ));
    }

    #[test]
    fn arithmetic_is_exact_and_checked() {
        let a = Resources::new(0.1, 0.2, 0.3, 1).unwrap();
        let b = Resources::new(0.2, 0.1, 0.0, 0).unwrap();
        let sum = a.checked_add(&b).unwrap();
        assert_eq!(sum.checked_sub(&b), Some(a));
        assert_eq!(b.checked_sub(&a), None);
        assert_eq!(b.saturating_sub(&a).gpus, 0);
        assert!(a.fits_within(&sum) && !sum.fits_within(&a));
    }

    #[test]
    fn validate_catches_out_of_range_wire_values() {
        let r = Resources {
            cpu_millis: u64::MAX,
            ..Resources::ZERO
        };
        assert!(r.validate().is_err());
        assert!(Resources::new(4.0, 8.0, 100.0, 2)
            .unwrap()
            .validate()
            .is_ok());
    }
}
