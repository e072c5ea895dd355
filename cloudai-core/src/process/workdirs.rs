//! The directories supervised runs start in (`<run>.wd`, see `record`).
//! Making a directory and removing it again allocates and frees an inode
//! and a block on the file system each time: on the short-task path that
//! was a seventh of the worker's CPU. So the empty directory a run leaves
//! is kept, renamed, for the next run, and a run that left files has its
//! directory removed with them.

use std::fs::Permissions;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sync::lock;

/// Most empty directories kept for the next runs.
const SPARE: usize = 32;
/// The extension of a kept directory (not a run's: run names have no dot).
const SPARE_EXT: &str = "spare";
/// The mode a run's directory starts with.
const MODE: u32 = 0o755;

#[derive(Debug)]
pub(super) struct Workdirs {
    runs: PathBuf,
    spare: Mutex<Vec<PathBuf>>,
    next: AtomicU64,
}

impl Workdirs {
    /// The run directories of `runs`; those an earlier runtime kept go.
    pub(super) fn new(runs: &Path) -> Self {
        if let Ok(entries) = std::fs::read_dir(runs) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == SPARE_EXT) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        Workdirs {
            runs: runs.to_path_buf(),
            spare: Mutex::new(Vec::new()),
            next: AtomicU64::new(0),
        }
    }

    /// Makes `dir`, empty: a kept directory renamed, else a new one.
    pub(super) fn make(&self, dir: &Path) -> io::Result<()> {
        let spare = lock(&self.spare).pop();
        match spare {
            Some(s) if std::fs::rename(&s, dir).is_ok() => Ok(()),
            _ => std::fs::create_dir(dir),
        }
    }

    /// Keeps `dir`, the directory of a run that ended, for a next run if
    /// it is empty, ours and there is room; otherwise leaves it (the run's
    /// removal removes it with what is in it).
    pub(super) fn keep(&self, dir: &Path) {
        if lock(&self.spare).len() >= SPARE {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(dir) else {
            return;
        };
        let ours = meta.is_dir() && meta.uid() == rustix::process::geteuid().as_raw();
        let empty = || std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_none());
        if !ours || !empty() {
            return;
        }
        if meta.mode() & 0o7777 != MODE
            && std::fs::set_permissions(dir, Permissions::from_mode(MODE)).is_err()
        {
            return;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let spare = self.runs.join(format!("{n}.{SPARE_EXT}"));
        if std::fs::rename(dir, &spare).is_ok() {
            lock(&self.spare).push(spare);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_is_kept_for_the_next_run_and_one_with_files_is_not() {
        let runs = std::env::temp_dir().join(format!("cloudai-workdirs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&runs);
        std::fs::create_dir_all(&runs).unwrap();
        let w = Workdirs::new(&runs);
        let (a, b, c) = (runs.join("a.wd"), runs.join("b.wd"), runs.join("c.wd"));
        w.make(&a).unwrap();
        std::fs::set_permissions(&a, Permissions::from_mode(0o700)).unwrap();
        w.keep(&a);
        assert!(!a.exists(), "kept under another name");
        w.make(&b).unwrap();
        let meta = std::fs::metadata(&b).unwrap();
        assert_eq!(meta.mode() & 0o7777, MODE, "with its mode back");
        assert!(lock(&w.spare).is_empty(), "the kept one was used");
        std::fs::write(b.join("left"), "x").unwrap();
        w.keep(&b);
        assert!(
            b.join("left").exists(),
            "a directory with files is not kept"
        );
        w.make(&c).unwrap();
        w.keep(&c);
        assert_eq!(lock(&w.spare).len(), 1);
        // A new runtime removes what an earlier one kept.
        let again = Workdirs::new(&runs);
        assert!(lock(&again.spare).is_empty());
        let left: Vec<_> = std::fs::read_dir(&runs).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only b.wd: {left:?}");
        let _ = std::fs::remove_dir_all(&runs);
    }
}
