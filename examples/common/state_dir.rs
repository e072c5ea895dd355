//! A worker's state directory: its instance id, kept across restarts, and
//! a lock so that two processes never share it.
//!
//! The instance id is what lets the master tell a restart of this worker
//! (same directory, same instance: accepted at once) from a second process
//! given the same `--id` elsewhere (another instance: refused while this
//! one is live).

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cloudai_core::model::{InstanceId, WorkerId};

/// The file holding the instance id.
const INSTANCE_FILE: &str = "instance";
/// The file a running worker holds an exclusive lock on.
const LOCK_FILE: &str = "lock";

/// An opened state directory; the lock is held until this is dropped.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    instance: InstanceId,
    _lock: File,
}

impl StateDir {
    /// Opens (creating it if needed, mode 0700) the state directory at
    /// `path`, takes its lock, and reads its instance id (making one on
    /// first use). Fails if another process holds the lock.
    pub fn open(path: &Path) -> Result<StateDir, String> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(|e| format!("cannot create state directory {}: {e}", path.display()))?;
        let lock_path = path.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(|e| format!("cannot open {}: {e}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(format!(
                    "state directory {} is in use by another worker process; give each worker its own --state-dir",
                    path.display()
                ))
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("cannot lock {}: {e}", lock_path.display()))
            }
        }
        let instance = read_or_make_instance(path)?;
        Ok(StateDir {
            path: path.to_path_buf(),
            instance,
            _lock: lock,
        })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The worker instance it holds.
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }
}

/// The default state directory of worker `id`:
/// `$XDG_STATE_HOME/cloudai/worker-<id>`, else
/// `~/.local/state/cloudai/worker-<id>`, else under the temp directory.
pub fn default_path(id: &WorkerId) -> PathBuf {
    let base = std::env::var_os("XDG_STATE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|v| !v.is_empty())
                .map(|h| PathBuf::from(h).join(".local/state"))
        })
        .unwrap_or_else(std::env::temp_dir);
    base.join("cloudai").join(format!("worker-{id}"))
}

fn read_or_make_instance(dir: &Path) -> Result<InstanceId, String> {
    let path = dir.join(INSTANCE_FILE);
    match fs::read_to_string(&path) {
        Ok(text) => InstanceId::new(text.trim()).map_err(|e| {
            format!(
                "{} holds no valid instance id ({e}); remove it to make a new one",
                path.display()
            )
        }),
        Err(e) if e.kind() == ErrorKind::NotFound => {
            let instance = new_instance()?;
            // Written aside and renamed, so a crash never leaves half an id.
            let aside = dir.join(format!("{INSTANCE_FILE}.new"));
            let mut file = File::create(&aside)
                .map_err(|e| format!("cannot write {}: {e}", aside.display()))?;
            file.write_all(instance.as_str().as_bytes())
                .and_then(|()| file.sync_all())
                .and_then(|()| fs::rename(&aside, &path))
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
            Ok(instance)
        }
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// A fresh instance id from the OS random source.
fn new_instance() -> Result<InstanceId, String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes)
        .map_err(|e| format!("cannot make an instance id: the OS random source failed: {e}"))?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    InstanceId::new(hex).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cloudai-state-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn the_instance_survives_a_reopen_and_the_lock_excludes_a_second_process() {
        let dir = scratch("reopen");
        let first = StateDir::open(&dir).expect("opens");
        let err = StateDir::open(&dir).expect_err("locked while held");
        assert!(err.contains("in use"), "{err}");
        let instance = first.instance().clone();
        drop(first);
        let again = StateDir::open(&dir).expect("opens after release");
        assert_eq!(again.instance(), &instance, "kept across restarts");
        drop(again);
        let other = scratch("other");
        let fresh = StateDir::open(&other).expect("opens");
        assert_ne!(
            fresh.instance(),
            &instance,
            "another directory, another instance"
        );
        let _ = fs::remove_dir_all(&dir);
        let _ = fs::remove_dir_all(&other);
    }

    #[test]
    fn a_corrupt_instance_file_is_a_clear_error() {
        let dir = scratch("corrupt");
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join(INSTANCE_FILE), "not an id!").expect("write");
        let err = StateDir::open(&dir).expect_err("refused");
        assert!(err.contains("no valid instance id"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
