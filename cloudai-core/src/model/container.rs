//! How a task's container is set up beyond its command and environment:
//! its working directory, bind mounts, scratch space, user and
//! `/dev/shm`. A runtime applies each option a task sets or refuses the
//! task, naming the option; none is ever silently ignored.

use std::fmt;
use std::path::{Component, Path};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ValidationError;

/// Most bind mounts and tmpfs mounts a task may ask for, each.
pub const MAX_MOUNTS: usize = 32;
/// Longest path accepted in a mount or working directory.
const MAX_PATH_BYTES: usize = 4096;
/// Largest tmpfs or `/dev/shm` size accepted (1 TiB).
const MAX_SIZE: u64 = 1 << 40;

/// A task's container options; all unset by default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerOptions {
    /// The directory the command starts in (absolute, in the container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Host directories bound into the container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
    /// Memory-backed scratch directories.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tmpfs: Vec<Tmpfs>,
    /// Whom the command runs as.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// The size of `/dev/shm`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<u64>,
}

/// One option of [`ContainerOptions`], by the flag that sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerOption {
    /// `--workdir`.
    Workdir,
    /// `--mount`.
    Mount,
    /// `--tmpfs`.
    Tmpfs,
    /// `--user`.
    User,
    /// `--shm-size`.
    ShmSize,
}

impl ContainerOption {
    /// Every option.
    pub const ALL: [ContainerOption; 5] = [
        ContainerOption::Workdir,
        ContainerOption::Mount,
        ContainerOption::Tmpfs,
        ContainerOption::User,
        ContainerOption::ShmSize,
    ];

    /// The flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            ContainerOption::Workdir => "--workdir",
            ContainerOption::Mount => "--mount",
            ContainerOption::Tmpfs => "--tmpfs",
            ContainerOption::User => "--user",
            ContainerOption::ShmSize => "--shm-size",
        }
    }
}

impl fmt::Display for ContainerOption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.flag())
    }
}

impl ContainerOptions {
    /// Whether no option is set.
    pub fn is_default(&self) -> bool {
        *self == ContainerOptions::default()
    }

    /// The options set, in flag order.
    pub fn set(&self) -> Vec<ContainerOption> {
        let set = [
            self.workdir.is_some(),
            !self.mounts.is_empty(),
            !self.tmpfs.is_empty(),
            self.user.is_some(),
            self.shm_size.is_some(),
        ];
        ContainerOption::ALL
            .into_iter()
            .zip(set)
            .filter_map(|(o, on)| on.then_some(o))
            .collect()
    }

    /// The host directories the mounts bind, sorted, each once: what a
    /// worker must allow.
    pub fn sources(&self) -> Vec<String> {
        let mut s: Vec<String> = self.mounts.iter().map(|m| m.source.clone()).collect();
        s.sort();
        s.dedup();
        s
    }

    /// Checks every option: absolute paths without `..`, distinct
    /// targets, bounded counts and sizes.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if let Some(w) = &self.workdir {
            absolute("workdir", w)?;
        }
        if self.mounts.len() > MAX_MOUNTS || self.tmpfs.len() > MAX_MOUNTS {
            return Err(ValidationError::too_large(
                "mounts",
                self.mounts.len().max(self.tmpfs.len()),
                MAX_MOUNTS,
            ));
        }
        let mut targets = std::collections::BTreeSet::new();
        for m in &self.mounts {
            absolute("mount source", &m.source)?;
            absolute("mount target", &m.target)?;
            distinct(&mut targets, &m.target)?;
        }
        for t in &self.tmpfs {
            absolute("tmpfs target", &t.target)?;
            distinct(&mut targets, &t.target)?;
            size("tmpfs size", t.size_bytes)?;
        }
        size("shm size", self.shm_size)
    }
}

fn invalid(field: &'static str, reason: String) -> ValidationError {
    ValidationError::Invalid { field, reason }
}

/// `path` is absolute, not `/` itself, and names no `.` or `..`.
fn absolute(field: &'static str, path: &str) -> Result<(), ValidationError> {
    if path.len() > MAX_PATH_BYTES {
        return Err(ValidationError::too_large(
            field,
            format!("{} bytes", path.len()),
            MAX_PATH_BYTES,
        ));
    }
    if let Some(found) = path
        .chars()
        .find(|c| c.is_control() || *c == ':' || *c == ',')
    {
        return Err(ValidationError::BadCharacter { field, found });
    }
    let p = Path::new(path);
    let plain = p
        .components()
        .skip(1)
        .all(|c| matches!(c, Component::Normal(_)));
    if !p.is_absolute() || !plain || p.parent().is_none() {
        return Err(invalid(
            field,
            format!("{path:?} must be an absolute path below / without . or .."),
        ));
    }
    Ok(())
}

fn size(field: &'static str, bytes: Option<u64>) -> Result<(), ValidationError> {
    match bytes {
        Some(0) => Err(invalid(field, "must be more than 0".into())),
        Some(b) if b > MAX_SIZE => Err(ValidationError::too_large(field, b, MAX_SIZE)),
        _ => Ok(()),
    }
}

fn distinct(
    seen: &mut std::collections::BTreeSet<String>,
    target: &str,
) -> Result<(), ValidationError> {
    let t = target.trim_end_matches('/').to_string();
    if !seen.insert(t) {
        return Err(invalid(
            "mount target",
            format!("{target} is mounted twice"),
        ));
    }
    Ok(())
}

/// A host directory bound into the container: `SRC:DST[:ro]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Mount {
    /// The host path.
    pub source: String,
    /// Where it appears in the container.
    pub target: String,
    /// Mounted read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl Mount {
    /// Whether `source` lies under one of `prefixes` (whole path
    /// components: `/data` allows `/data/x`, not `/database`).
    pub fn allowed_by(source: &str, prefixes: &[String]) -> bool {
        prefixes
            .iter()
            .any(|p| Path::new(source).starts_with(Path::new(p)))
    }
}

impl FromStr for Mount {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split(':').collect();
        let (source, target, read_only) = match parts[..] {
            [src, dst] => (src, dst, false),
            [src, dst, "ro"] => (src, dst, true),
            [src, dst, "rw"] => (src, dst, false),
            _ => {
                return Err(invalid(
                    "mount",
                    format!("{s:?} is not SRC:DST or SRC:DST:ro"),
                ))
            }
        };
        let m = Mount {
            source: source.into(),
            target: target.into(),
            read_only,
        };
        absolute("mount source", &m.source)?;
        absolute("mount target", &m.target)?;
        Ok(m)
    }
}

impl fmt::Display for Mount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.source, self.target)?;
        if self.read_only {
            f.write_str(":ro")?;
        }
        Ok(())
    }
}

/// A memory-backed scratch directory: `DST[:SIZE]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Tmpfs {
    /// Where it appears in the container.
    pub target: String,
    /// Its size limit, bytes (`None`: the runtime's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
}

impl FromStr for Tmpfs {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (target, size) = match s.split_once(':') {
            Some((t, size)) => (t, Some(parse_size("tmpfs size", size)?)),
            None => (s, None),
        };
        absolute("tmpfs target", target)?;
        Ok(Tmpfs {
            target: target.into(),
            size_bytes: size,
        })
    }
}

impl fmt::Display for Tmpfs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.target)?;
        if let Some(s) = self.size_bytes {
            write!(f, ":{s}")?;
        }
        Ok(())
    }
}

/// A size such as `64MiB`, `1g` or `1000000` (bytes).
pub fn parse_size(field: &'static str, s: &str) -> Result<u64, ValidationError> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| invalid(field, format!("{s:?} is not a size: {e}")))
}

/// Whom a command runs as: `UID[:GID]`, numeric; the group is the user's
/// id when not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct User {
    /// The user id.
    pub uid: u32,
    /// The group id.
    pub gid: u32,
}

impl FromStr for User {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let id = |part: &str| {
            part.parse::<u32>()
                .map_err(|_| invalid("user", format!("{s:?} is not UID or UID:GID (numeric ids)")))
        };
        match s.split_once(':') {
            Some((u, g)) => Ok(User {
                uid: id(u)?,
                gid: id(g)?,
            }),
            None => {
                let uid = id(s)?;
                Ok(User { uid, gid: uid })
            }
        }
    }
}

impl fmt::Display for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.uid, self.gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_tmpfs_and_users_parse_and_bad_ones_are_refused() {
        assert_eq!(
            "/data/in:/in:ro".parse::<Mount>().unwrap(),
            Mount {
                source: "/data/in".into(),
                target: "/in".into(),
                read_only: true
            }
        );
        assert!(!"/a:/b".parse::<Mount>().unwrap().read_only);
        for bad in [
            "/a",
            "a:/b",
            "/a:b",
            "/a:/b:rx",
            "/a/../etc:/b",
            "/:/b",
            "/a:/",
        ] {
            assert!(bad.parse::<Mount>().is_err(), "{bad}");
        }
        assert_eq!(
            "/scratch:64MiB".parse::<Tmpfs>().unwrap().size_bytes,
            Some(64 << 20)
        );
        assert_eq!("/scratch".parse::<Tmpfs>().unwrap().size_bytes, None);
        assert!("/scratch:lots".parse::<Tmpfs>().is_err());
        assert_eq!(
            "1000".parse::<User>().unwrap(),
            User {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!("0:5".parse::<User>().unwrap(), User { uid: 0, gid: 5 });
        for bad in ["root", "1000:", "-1", "1:2:3"] {
            assert!(bad.parse::<User>().is_err(), "{bad}");
        }
    }

    #[test]
    fn validation_refuses_relative_paths_twice_mounted_targets_and_zero_sizes() {
        let ok = ContainerOptions {
            workdir: Some("/work".into()),
            mounts: vec!["/data:/in:ro".parse().unwrap()],
            tmpfs: vec!["/scratch:1MiB".parse().unwrap()],
            user: Some("1000".parse().unwrap()),
            shm_size: Some(1 << 20),
        };
        assert!(ok.validate().is_ok());
        assert_eq!(ok.set(), ContainerOption::ALL.to_vec());
        assert!(ContainerOptions::default().set().is_empty());
        let mut twice = ok.clone();
        twice.tmpfs[0].target = "/in/".into();
        assert!(twice.validate().is_err());
        let mut relative = ok.clone();
        relative.workdir = Some("work".into());
        assert!(relative.validate().is_err());
        let mut zero = ok;
        zero.shm_size = Some(0);
        assert!(zero.validate().is_err());
    }

    #[test]
    fn a_source_is_allowed_under_a_prefix_by_whole_components() {
        let allowed = vec!["/data".to_string(), "/scratch/".to_string()];
        assert!(Mount::allowed_by("/data", &allowed));
        assert!(Mount::allowed_by("/data/set/1", &allowed));
        assert!(Mount::allowed_by("/scratch/x", &allowed));
        assert!(!Mount::allowed_by("/database", &allowed));
        assert!(!Mount::allowed_by("/etc", &allowed));
        assert!(!Mount::allowed_by("/data", &[]));
    }
}
