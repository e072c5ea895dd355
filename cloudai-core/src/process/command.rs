//! What both process runtimes and the supervisor share: building a task's
//! command, refusing one they cannot run, signalling a process group, and
//! reading an exit.

use std::collections::BTreeMap;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Stdio;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use super::BACKEND;
use crate::model::{ContainerOption, ContainerOptions, Gpu, User, ValidationError};
use crate::runtime::{ContainerSpec, ExitStatus};
use crate::{Error, Result};

/// A run's environment: the spec's, and which GPUs the run may use, which
/// wins over the spec's. CUDA numbers devices fastest first unless told to
/// follow the PCI order that `nvidia-smi` (and so the GPU indices) uses.
/// A run without GPUs gets the variables empty: unset, CUDA would show it
/// every GPU of the host.
pub(super) fn run_env(spec: &ContainerSpec) -> BTreeMap<String, String> {
    let devices = Gpu::device_ids(&spec.gpus).join(",");
    let mut env = spec.env.clone();
    env.insert("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into());
    env.insert("CUDA_VISIBLE_DEVICES".into(), devices.clone());
    env.insert("NVIDIA_VISIBLE_DEVICES".into(), devices);
    env
}

/// The command for a task: `program` with `args` as the leader of a new
/// process group, stdin closed, an environment of only `PATH` (the
/// worker's, unless `env` sets one) and `env`. The program is looked up in
/// that `PATH` here, so the standard library can start it with
/// `posix_spawn` (a vfork) rather than fork: a fork copies the page tables
/// of a large parent, which made every start slower as a `--dev` master
/// held more tasks.
pub(super) fn task_command(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    workdir: Option<&Path>,
    user: Option<User>,
) -> std::process::Command {
    let path = env
        .get("PATH")
        .map(std::ffi::OsString::from)
        .or_else(|| std::env::var_os("PATH"));
    let mut cmd = std::process::Command::new(resolve(program, path.as_deref()));
    // The program sees the name it was given as its `$0`, as with a shell.
    cmd.arg0(program)
        .args(args)
        .process_group(0)
        .stdin(Stdio::null())
        .env_clear();
    if let Some(path) = &path {
        cmd.env("PATH", path);
    }
    cmd.envs(env);
    if let Some(dir) = workdir {
        cmd.current_dir(dir);
    }
    if let Some(u) = user {
        // As root, the standard library also drops the supplementary groups.
        cmd.uid(u.uid).gid(u.gid);
    }
    cmd
}

/// `program` found in `path` (an executable file), or as given: a name
/// with a `/`, or one not found (starting it then fails as not found).
pub(super) fn resolve(program: &str, path: Option<&std::ffi::OsStr>) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    if program.contains('/') {
        return program.into();
    }
    path.into_iter()
        .flat_map(std::env::split_paths)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(program))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
        .unwrap_or_else(|| program.into())
}

/// Refuses a spec the process runtimes cannot run: no command (there is no
/// image default to fall back to), or an empty program name.
/// The options of `options` the process runtimes cannot apply: a process
/// has no mounts of its own and no `/dev/shm` of its own, and can run as
/// another user only when the worker runs as root.
pub(super) fn unsupported(options: &ContainerOptions) -> Vec<ContainerOption> {
    let root = rustix::process::geteuid().is_root();
    options
        .set()
        .into_iter()
        .filter(|o| match o {
            ContainerOption::Workdir => false,
            ContainerOption::User => !root,
            ContainerOption::Mount | ContainerOption::Tmpfs | ContainerOption::ShmSize => true,
        })
        .collect()
}

pub(super) fn check_command(spec: &ContainerSpec) -> Result<()> {
    match spec.command.first() {
        None => Err(invalid_command(format!(
            "the process runtime needs a command (the image {:?} is recorded, not run)",
            spec.image
        ))),
        Some(program) if program.is_empty() => Err(ValidationError::Empty {
            field: "command[0]",
        }
        .into()),
        Some(_) => Ok(()),
    }
}

pub(super) fn invalid_command(reason: String) -> Error {
    Error::InvalidInput(ValidationError::Invalid {
        field: "command",
        reason,
    })
}

pub(super) fn backend(source: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Backend {
        backend: BACKEND,
        source: Box::new(source),
    }
}

/// Sends `signal` to the process group led by `pid`. A group that no longer
/// exists is not an error.
pub(super) fn signal_group(pid: i32, signal: Signal) -> Result<()> {
    // Never signal group 0 (our own) or 1 (init's, or "all" on some systems).
    if pid <= 1 {
        return Ok(());
    }
    match killpg(Pid::from_raw(pid), signal) {
        Ok(()) | Err(Errno::ESRCH) => Ok(()),
        Err(e) => Err(backend(e)),
    }
}

pub(super) fn to_exit_status(status: std::process::ExitStatus) -> ExitStatus {
    ExitStatus {
        code: status.code(),
        signal: status.signal(),
        oom_killed: false,
        usage: None,
    }
}
