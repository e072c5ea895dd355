//! Poison-tolerant locking, shared by every service in the crate.
//!
//! No lock here is held across a step that could leave its data half
//! changed, so a panic elsewhere under the lock must not take every later
//! caller down with it.

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data from a poisoned lock.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
