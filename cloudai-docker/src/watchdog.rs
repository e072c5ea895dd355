//! The Docker watchdog: a small process per worker that stops the worker's
//! containers once the worker stops renewing their lease, so a worker that
//! dies (`kill -9`) and stays down leaves nothing running by the time its
//! master may declare it lost and run its tasks elsewhere (see
//! `cloudai_core::fence`). It is to Docker runs what a supervised run's
//! supervisor is to a local process (`cloudai_core::process::supervisor`),
//! one for all of a worker's containers.
//!
//! - [`DockerRuntime`](crate::DockerRuntime) given a [`Watchdog`] reaches it
//!   on a Unix socket (by default `docker-watchdog.sock` in the worker's
//!   state directory) and starts it when none answers: the worker binary
//!   in a hidden mode, whose `main` hands its arguments to [`main`]. It
//!   leaves the worker's session (`setsid`), so neither a terminal's
//!   Ctrl-C nor the worker's death reaches it; a lock file next to the
//!   socket keeps it the only one there; it logs to the file next to the
//!   socket named `.log`.
//! - The runtime says `hello <worker id>`, then `lease <ms>` before every
//!   start (the spec's lease) and with every renewal
//!   ([`renew_lease`](cloudai_core::runtime::ContainerRuntime::renew_lease));
//!   each line is answered `ok` or `error <why>`. A runtime that finds its
//!   watchdog gone starts another and sends the lease to it.
//! - It guards the running containers labelled with its worker's id and
//!   with its own socket ([`LABEL_WATCHDOG`], which the runtime adds), so
//!   the containers of a worker on another state directory are none of its
//!   business.
//! - Once the lease runs out without a renewal, it stops every container it
//!   guards, all at once, each with the grace of its `cloudai.grace_ms`
//!   label ([`DEFAULT_GRACE`] without one): SIGTERM, then SIGKILL after the
//!   grace, to the millisecond. Until a lease comes again, it stops any
//!   such container it finds running.
//! - While no worker is connected it also stops a container at its time
//!   limit (label `cloudai.time_limit_ms`, counted from the container's
//!   creation, as a worker adopting it counts it).
//! - It exits once no worker has been connected for its idle time and
//!   nothing it guards runs (or, its lease run out, the daemon has not
//!   answered for that long), and at once if another watchdog took its
//!   socket's place. A worker restarted on the same state directory
//!   reaches the same watchdog and renews the lease.
//!
//! Nothing stops the containers if the watchdog and its worker die
//! together (a host's OOM killer taking both, say): the watchdog is small
//! and idle, but it is a process like any other.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ExitCode, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    KillContainerOptions, ListContainersOptions, WaitContainerOptions,
};
use bollard::Docker;
use cloudai_core::runtime::{LABEL_GRACE, LABEL_TIME_LIMIT, LABEL_WORKER};
use cloudai_core::{Error, Result};
use futures_util::StreamExt;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tracing::{info, warn};

/// The socket's file name in a worker's state directory.
pub const SOCKET_FILE: &str = "docker-watchdog.sock";
/// Label naming the watchdog (its socket's path) that guards a container.
pub const LABEL_WATCHDOG: &str = "cloudai.watchdog";
/// How long a watchdog waits, with no worker connected and nothing to
/// guard, before it exits, unless told otherwise.
pub const DEFAULT_IDLE_EXIT: Duration = Duration::from_secs(30);
/// The grace of a container whose grace label is missing or unreadable.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);

/// The longest grace a label may ask for.
const MAX_GRACE: Duration = Duration::from_secs(3600);
/// The longest lease a line may give (a year; longer is taken as that).
const MAX_LEASE: Duration = Duration::from_secs(365 * 24 * 3600);
/// The longest command line taken, newline included.
const MAX_LINE: u64 = 1024;
/// How often the containers are looked at once the lease ran out.
const POLL_EXPIRED: Duration = Duration::from_millis(250);
/// How often they are looked at while no worker is connected.
const POLL_ALONE: Duration = Duration::from_secs(1);
/// Bound on a call to the daemon (a stop adds its grace).
const DAEMON_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the runtime waits for an answer on the socket.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the runtime waits for a watchdog it started to answer.
const SPAWN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a new watchdog waits for an old one to let go of the lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// Longest socket path bound or reached directly; a longer one is reached
/// through its directory's `/proc/self/fd` entry (`sun_path` holds 108
/// bytes).
const SHORT_PATH: usize = 100;

// ---- the runtime's side ------------------------------------------------------

/// How a [`DockerRuntime`](crate::DockerRuntime) reaches its watchdog, and
/// how it starts one (see the [module docs](self)).
#[derive(Debug, Clone)]
pub struct Watchdog {
    socket: PathBuf,
    command: Vec<OsString>,
    default_lease: Duration,
    idle_exit: Duration,
}

impl Watchdog {
    /// A watchdog listening at `socket` (its directory must exist), started
    /// when none answers as `command[0] command[1..]` followed by the
    /// arguments [`main`] takes (for the worker binary: its own path and
    /// its watchdog-mode argument). A start whose spec names no lease
    /// gives the worker's runs `default_lease`, as does a watchdog started
    /// before the worker sent one.
    pub fn new(
        socket: impl Into<PathBuf>,
        command: Vec<OsString>,
        default_lease: Duration,
    ) -> Result<Watchdog> {
        let socket = socket.into();
        let invalid = |reason: String| {
            Error::InvalidInput(cloudai_core::model::ValidationError::Invalid {
                field: "watchdog",
                reason,
            })
        };
        if command.is_empty() {
            return Err(invalid("the watchdog command is empty".into()));
        }
        let (Some(dir), Some(name)) = (socket.parent(), socket.file_name()) else {
            return Err(invalid(format!(
                "{} names no socket file",
                socket.display()
            )));
        };
        // Absolute and resolved: the path is the label of the containers it
        // guards, the same whatever the worker's working directory.
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        let dir = std::fs::canonicalize(dir).map_err(|e| {
            Error::Unavailable(format!("the watchdog's directory {}: {e}", dir.display()))
        })?;
        Ok(Watchdog {
            socket: dir.join(name),
            command,
            default_lease,
            idle_exit: DEFAULT_IDLE_EXIT,
        })
    }

    /// [`Watchdog::new`] with the socket [`SOCKET_FILE`] in `state_dir`.
    pub fn in_state_dir(
        state_dir: &Path,
        command: Vec<OsString>,
        default_lease: Duration,
    ) -> Result<Watchdog> {
        Watchdog::new(state_dir.join(SOCKET_FILE), command, default_lease)
    }

    /// How long a watchdog this starts stays with no worker connected and
    /// nothing to guard (default [`DEFAULT_IDLE_EXIT`]).
    pub fn with_idle_exit(mut self, idle: Duration) -> Watchdog {
        self.idle_exit = idle;
        self
    }

    /// Where it listens.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The lease of a start whose spec names none.
    pub fn default_lease(&self) -> Duration {
        self.default_lease
    }

    /// Where a watchdog this starts logs.
    pub fn log(&self) -> PathBuf {
        self.socket.with_extension("log")
    }
}

/// The runtime's connection to its watchdog, made (and the watchdog
/// started) when first needed and again whenever it broke.
#[derive(Debug)]
pub(crate) struct Client {
    watchdog: Watchdog,
    worker: String,
    conn: tokio::sync::Mutex<Option<Conn>>,
}

#[derive(Debug)]
struct Conn {
    read: BufReader<OwnedReadHalf>,
    write: OwnedWriteHalf,
}

/// Why a `hello` did not get through.
enum Hello {
    /// Nobody answers (or not in time).
    Unreachable(String),
    /// A watchdog answered and refused (it serves another worker).
    Refused(String),
}

impl Conn {
    /// Sends one line and reads its answer: `Ok` for `ok`, `Refused` for
    /// `error ...`.
    async fn ask(&mut self, line: &str) -> std::result::Result<(), Hello> {
        let exchange = async {
            self.write.write_all(format!("{line}\n").as_bytes()).await?;
            let mut answer = String::new();
            let n = (&mut self.read)
                .take(MAX_LINE)
                .read_line(&mut answer)
                .await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the watchdog closed the connection",
                ));
            }
            Ok(answer)
        };
        let answer = match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => return Err(Hello::Unreachable(e.to_string())),
            Err(_) => {
                return Err(Hello::Unreachable(format!(
                    "no answer within {ANSWER_TIMEOUT:?}"
                )))
            }
        };
        match answer.trim() {
            "ok" => Ok(()),
            other => Err(Hello::Refused(
                other.strip_prefix("error ").unwrap_or(other).to_string(),
            )),
        }
    }
}

impl Client {
    pub(crate) fn new(watchdog: Watchdog, worker: String) -> Client {
        Client {
            watchdog,
            worker,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// The value of [`LABEL_WATCHDOG`] on the containers it guards.
    pub(crate) fn label(&self) -> String {
        self.watchdog.socket.to_string_lossy().into_owned()
    }

    pub(crate) fn default_lease(&self) -> Duration {
        self.watchdog.default_lease
    }

    /// Reaches the watchdog, starting one if none answers.
    pub(crate) async fn connect(&self) -> Result<()> {
        let mut conn = self.conn.lock().await;
        if conn.is_none() {
            *conn = Some(self.open(self.watchdog.default_lease).await?);
        }
        Ok(())
    }

    /// Tells the watchdog the worker stands for its runs for `lease` from
    /// now; reaches it again (starting one if needed) if the connection
    /// broke.
    pub(crate) async fn lease(&self, lease: Duration) -> Result<()> {
        // The watchdog counts the lease from when it reads it: what passed
        // meanwhile (waiting for the connection, starting a watchdog) is
        // taken off, so the lease never outlasts the worker's fence.
        let asked = tokio::time::Instant::now();
        let left = || lease.saturating_sub(asked.elapsed());
        let mut conn = self.conn.lock().await;
        let mut failed = String::new();
        for _ in 0..2 {
            let c = match conn.as_mut() {
                Some(c) => c,
                None => conn.insert(self.open(left()).await?),
            };
            let line = format!("lease {}", millis(left()));
            match c.ask(&line).await {
                Ok(()) => return Ok(()),
                Err(Hello::Unreachable(why) | Hello::Refused(why)) => {
                    warn!(socket = %self.watchdog.socket.display(), error = %why, "the Docker watchdog did not take the lease; reaching it again");
                    *conn = None;
                    failed = why;
                }
            }
        }
        Err(Error::Unavailable(format!(
            "the Docker watchdog at {} did not take the lease: {failed}",
            self.watchdog.socket.display()
        )))
    }

    /// A connection to the watchdog, after starting one (holding `lease`)
    /// if none answers.
    async fn open(&self, lease: Duration) -> Result<Conn> {
        let unavailable = |why: String| {
            Error::Unavailable(format!(
                "the Docker watchdog at {}: {why} (its log: {})",
                self.watchdog.socket.display(),
                self.watchdog.log().display()
            ))
        };
        match self.hello().await {
            Ok(conn) => return Ok(conn),
            Err(Hello::Refused(why)) => return Err(unavailable(why)),
            Err(Hello::Unreachable(_)) => {}
        }
        let mut child = self.spawn(lease).map_err(|e| {
            unavailable(format!(
                "cannot start it as {:?}: {e}",
                self.watchdog.command[0]
            ))
        })?;
        let deadline = tokio::time::Instant::now() + SPAWN_TIMEOUT;
        let outcome = loop {
            match self.hello().await {
                Ok(conn) => break Ok(conn),
                Err(Hello::Refused(why)) => break Err(unavailable(why)),
                Err(Hello::Unreachable(why)) => {
                    // It exits at once if another one holds the socket: that
                    // one may answer now.
                    if let Ok(Some(status)) = child.try_wait() {
                        break match self.hello().await {
                            Ok(conn) => Ok(conn),
                            Err(_) => Err(unavailable(format!(
                                "it exited ({status}) without answering: {why}"
                            ))),
                        };
                    }
                    if tokio::time::Instant::now() >= deadline {
                        break Err(unavailable(format!(
                            "it did not answer within {SPAWN_TIMEOUT:?}: {why}"
                        )));
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Reaped when it exits, long after this worker maybe.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        if outcome.is_ok() {
            info!(socket = %self.watchdog.socket.display(), "started the Docker watchdog");
        }
        outcome
    }

    /// Connects and says hello.
    async fn hello(&self) -> std::result::Result<Conn, Hello> {
        let stream = connect(&self.watchdog.socket)
            .await
            .map_err(|e| Hello::Unreachable(e.to_string()))?;
        let (read, write) = stream.into_split();
        let mut conn = Conn {
            read: BufReader::new(read),
            write,
        };
        conn.ask(&format!("hello {}", self.worker)).await?;
        Ok(conn)
    }

    fn spawn(&self, lease: Duration) -> io::Result<Child> {
        let options = Options {
            socket: self.watchdog.socket.clone(),
            worker: self.worker.clone(),
            lease,
            idle_exit: self.watchdog.idle_exit,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(self.watchdog.log())?;
        std::process::Command::new(&self.watchdog.command[0])
            .args(&self.watchdog.command[1..])
            .args(options.to_args())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `path` as a socket address can take it: itself, or, when too long, its
/// file name under its directory's `/proc/self/fd` entry (valid while the
/// returned handle is open).
fn reachable(path: &Path) -> io::Result<(Option<File>, PathBuf)> {
    if path.as_os_str().len() <= SHORT_PATH {
        return Ok((None, path.to_path_buf()));
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} names no socket file", path.display()),
        ));
    };
    let handle = File::open(dir)?;
    let via = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd())).join(name);
    Ok((Some(handle), via))
}

async fn connect(path: &Path) -> io::Result<UnixStream> {
    let (_handle, via) = reachable(path)?;
    UnixStream::connect(via).await
}

// ---- the watchdog's side -----------------------------------------------------

/// What a watchdog process is told on its command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Where it listens.
    pub socket: PathBuf,
    /// The worker whose containers it guards.
    pub worker: String,
    /// The lease it holds until a worker sends one, from its start.
    pub lease: Duration,
    /// How long it stays with no worker connected and nothing to guard.
    pub idle_exit: Duration,
}

impl Options {
    /// Its command-line form: `<socket> <worker> <lease ms> <idle ms>`.
    pub fn to_args(&self) -> Vec<OsString> {
        vec![
            self.socket.clone().into_os_string(),
            self.worker.clone().into(),
            millis(self.lease).to_string().into(),
            millis(self.idle_exit).to_string().into(),
        ]
    }

    /// Reads the form [`Options::to_args`] writes.
    pub fn from_args(
        args: impl IntoIterator<Item = OsString>,
    ) -> std::result::Result<Options, String> {
        let usage = "usage: <socket> <worker id> <lease ms> <idle ms>";
        let args: Vec<OsString> = args.into_iter().collect();
        let [socket, worker, lease, idle] = args.as_slice() else {
            return Err(format!("{usage} (got {} arguments)", args.len()));
        };
        let ms = |v: &OsString, what: &str| {
            v.to_str()
                .and_then(|s| s.parse::<u64>().ok())
                .map(|ms| Duration::from_millis(ms).min(MAX_LEASE))
                .ok_or_else(|| format!("{usage}: the {what} {v:?} is not a number of milliseconds"))
        };
        let worker = worker
            .to_str()
            .filter(|w| !w.is_empty() && !w.contains(char::is_whitespace))
            .ok_or_else(|| format!("{usage}: bad worker id {worker:?}"))?;
        Ok(Options {
            socket: PathBuf::from(socket),
            worker: worker.to_string(),
            lease: ms(lease, "lease")?,
            idle_exit: ms(idle, "idle time")?,
        })
    }
}

/// The watchdog process: reads [`Options`] from `args` (the arguments
/// after the binary's mode argument) and [`run`]s. Exit code 2 for bad
/// arguments.
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match Options::from_args(args) {
        Ok(options) => run(options),
        Err(e) => {
            tracing::error!("docker watchdog: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs a watchdog until it is idle (see the [module docs](self)), in its
/// own session, talking to the daemon `DOCKER_HOST` (or the default
/// socket) names. Exits with success at once if another watchdog holds the
/// socket.
pub fn run(options: Options) -> ExitCode {
    // Its own session: terminal signals and the worker's end pass it by.
    let _ = nix::unistd::setsid();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::error!("docker watchdog: cannot start its runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let bound = match Bound::take(&options.socket).await {
            Ok(Some(bound)) => bound,
            Ok(None) => {
                info!(socket = %options.socket.display(), "another Docker watchdog serves this socket");
                return ExitCode::SUCCESS;
            }
            Err(e) => {
                tracing::error!(socket = %options.socket.display(), error = %e, "docker watchdog: cannot listen");
                return ExitCode::FAILURE;
            }
        };
        info!(socket = %options.socket.display(), worker = %options.worker, lease = ?options.lease, "Docker watchdog started");
        let daemon = Arc::new(Daemon {
            docker: tokio::sync::Mutex::new(None),
            worker: options.worker.clone(),
            watchdog: options.socket.to_string_lossy().into_owned(),
        });
        let guard = Guard::new(Instant::now(), options.lease, options.idle_exit);
        let socket = options.socket.clone();
        let identity = bound.identity;
        serve(bound.listener, options.worker, guard, daemon, move || {
            still_ours(&socket, identity)
        })
        .await;
        // A worker that comes now finds no socket and starts a new
        // watchdog, which waits for the lock this one holds till it exits.
        if still_ours(&options.socket, identity) {
            let _ = std::fs::remove_file(&options.socket);
        }
        drop(bound.lock);
        info!("Docker watchdog exiting: no worker and nothing to guard");
        ExitCode::SUCCESS
    })
}

/// The socket a watchdog listens on, with the lock that makes it the only
/// one there.
struct Bound {
    listener: UnixListener,
    lock: File,
    /// The socket file's device and inode.
    identity: (u64, u64),
}

impl Bound {
    /// Takes the lock next to `socket` (waiting a while for a watchdog that
    /// is exiting) and listens there. `None` if another one holds it.
    async fn take(socket: &Path) -> io::Result<Option<Bound>> {
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(socket.with_extension("lock"))?;
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(TryLockError::WouldBlock) => return Ok(None),
                Err(TryLockError::Error(e)) => return Err(e),
            }
        }
        // Left by a watchdog that died: nobody listens there.
        match std::fs::remove_file(socket) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let listener = {
            let (_handle, via) = reachable(socket)?;
            UnixListener::bind(via)?
        };
        let meta = std::fs::metadata(socket)?;
        Ok(Some(Bound {
            listener,
            lock,
            identity: (meta.dev(), meta.ino()),
        }))
    }
}

/// Whether the file at `socket` is still the one this watchdog bound, or
/// gone; false once another watchdog put its own there.
fn still_ours(socket: &Path, identity: (u64, u64)) -> bool {
    match std::fs::metadata(socket) {
        Ok(meta) => (meta.dev(), meta.ino()) == identity,
        Err(_) => true,
    }
}

/// A running container a watchdog guards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Guarded {
    pub(crate) id: String,
    /// Its stop grace, from its label.
    pub(crate) grace: Option<Duration>,
    /// Its time limit, from its label.
    pub(crate) time_limit: Option<Duration>,
    /// When it was created.
    pub(crate) created: Option<SystemTime>,
}

impl Guarded {
    fn from_labels(id: String, labels: &HashMap<String, String>, created: Option<i64>) -> Guarded {
        let ms = |key: &str| {
            labels
                .get(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_millis)
        };
        Guarded {
            id,
            grace: ms(LABEL_GRACE),
            time_limit: ms(LABEL_TIME_LIMIT),
            created: created
                .and_then(|s| u64::try_from(s).ok())
                .and_then(|s| UNIX_EPOCH.checked_add(Duration::from_secs(s))),
        }
    }
}

/// Why a watchdog stops a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Why {
    /// Its worker's lease ran out.
    Lease,
    /// It ran past its time limit while no worker was connected.
    TimeLimit(Duration),
}

/// A stop a watchdog makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stop {
    pub(crate) id: String,
    pub(crate) grace: Duration,
    pub(crate) why: Why,
}

/// What a watchdog knows, and the decisions it takes from it: no I/O, no
/// clock reads.
#[derive(Debug, Clone)]
pub(crate) struct Guard {
    /// Until when the worker stands for its runs.
    deadline: Instant,
    /// Connections that said hello.
    workers: usize,
    /// Since when none is connected.
    alone_since: Instant,
    idle_exit: Duration,
    /// Since when every look at the daemon failed, if the last one did.
    failing_since: Option<Instant>,
}

impl Guard {
    /// A watchdog started at `now` holding `lease`.
    pub(crate) fn new(now: Instant, lease: Duration, idle_exit: Duration) -> Guard {
        Guard {
            deadline: later(now, lease),
            workers: 0,
            alone_since: now,
            idle_exit,
            failing_since: None,
        }
    }

    /// The worker stands for its runs for `lease` from `now` (shorter
    /// than before too: the lease is what the worker says it is).
    pub(crate) fn renew(&mut self, now: Instant, lease: Duration) {
        self.deadline = later(now, lease);
    }

    pub(crate) fn expired(&self, now: Instant) -> bool {
        now >= self.deadline
    }

    pub(crate) fn joined(&mut self) {
        self.workers += 1;
    }

    pub(crate) fn left(&mut self, now: Instant) {
        self.workers = self.workers.saturating_sub(1);
        if self.workers == 0 {
            self.alone_since = now;
        }
    }

    fn alone(&self) -> bool {
        self.workers == 0
    }

    /// Whether the containers must be looked at: the lease ran out, or no
    /// worker is there to enforce time limits and keep it alive.
    pub(crate) fn watching(&self, now: Instant) -> bool {
        self.expired(now) || self.alone()
    }

    /// When to look next (a renewal or a connection wakes it earlier).
    pub(crate) fn next_look(&self, now: Instant) -> Instant {
        if self.expired(now) {
            now + POLL_EXPIRED
        } else if self.alone() {
            self.deadline.min(now + POLL_ALONE)
        } else {
            self.deadline
        }
    }

    /// A look at the daemon succeeded (`true`) or failed at `now`.
    pub(crate) fn looked(&mut self, now: Instant, ok: bool) {
        if ok {
            self.failing_since = None;
        } else if self.failing_since.is_none() {
            self.failing_since = Some(now);
        }
    }

    /// What to stop of the `running` containers at `now` (`wall` the same
    /// instant on the wall clock): all, once the lease ran out; with no
    /// worker connected, those past their time limit.
    pub(crate) fn due(&self, now: Instant, wall: SystemTime, running: &[Guarded]) -> Vec<Stop> {
        let grace = |c: &Guarded| c.grace.unwrap_or(DEFAULT_GRACE).min(MAX_GRACE);
        if self.expired(now) {
            return running
                .iter()
                .map(|c| Stop {
                    id: c.id.clone(),
                    grace: grace(c),
                    why: Why::Lease,
                })
                .collect();
        }
        if !self.alone() {
            return Vec::new();
        }
        running
            .iter()
            .filter_map(|c| {
                let limit = c.time_limit?;
                let end = c.created?.checked_add(limit)?;
                (wall >= end).then(|| Stop {
                    id: c.id.clone(),
                    grace: grace(c),
                    why: Why::TimeLimit(limit),
                })
            })
            .collect()
    }

    /// Whether to exit at `now`, given how many guarded containers run
    /// (`None`: the daemon did not say): no worker for the idle time, and
    /// nothing running, or, the lease run out, no answer from the daemon
    /// for the idle time since (it tried to stop what ran for that long).
    pub(crate) fn may_exit(&self, now: Instant, running: Option<usize>) -> bool {
        if !self.alone() || now < later(self.alone_since, self.idle_exit) {
            return false;
        }
        match running {
            Some(n) => n == 0,
            None => self.failing_since.is_some_and(|since| {
                self.expired(now) && now >= later(since.max(self.deadline), self.idle_exit)
            }),
        }
    }
}

/// `at + d`, or far ahead if that does not fit.
fn later(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(MAX_LEASE))
        .or_else(|| at.checked_add(MAX_LEASE))
        .unwrap_or(at)
}

/// A line a worker sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Request {
    /// `hello <worker id>`.
    Hello(String),
    /// `lease <ms>`.
    Lease(Duration),
    /// `ping`.
    Ping,
}

/// Reads one line (trailing newline optional); the error says why not.
pub(crate) fn parse(line: &[u8]) -> std::result::Result<Request, String> {
    let text = std::str::from_utf8(line).map_err(|_| "the line is not UTF-8".to_string())?;
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        ["hello", worker] => Ok(Request::Hello((*worker).to_string())),
        ["lease", ms] => ms
            .parse::<u64>()
            .map(|ms| Request::Lease(Duration::from_millis(ms).min(MAX_LEASE)))
            .map_err(|_| format!("lease wants milliseconds, not {ms:?}")),
        ["ping"] => Ok(Request::Ping),
        [] => Err("empty line".into()),
        _ => Err(format!(
            "unknown command {:?} (hello <worker id>, lease <ms>, ping)",
            words.join(" ")
        )),
    }
}

/// The containers a watchdog guards, and how it stops them: the daemon,
/// or a stand-in in tests.
#[async_trait]
pub(crate) trait Containers: Send + Sync + 'static {
    /// The guarded containers that run now.
    async fn running(&self) -> std::result::Result<Vec<Guarded>, String>;
    /// SIGTERM, then SIGKILL after `grace` unless it ended.
    async fn stop(&self, id: &str, grace: Duration) -> std::result::Result<(), String>;
}

/// State the connections share with the watchdog's loop.
struct Shared {
    guard: Mutex<Guard>,
    worker: String,
    /// A lease or a connection changed.
    changed: Notify,
}

impl Shared {
    fn guard(&self) -> MutexGuard<'_, Guard> {
        self.guard.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Serves workers on `listener` and guards `containers` until idle, or
/// until `ours` says the socket was taken over.
pub(crate) async fn serve<C: Containers>(
    listener: UnixListener,
    worker: String,
    guard: Guard,
    containers: Arc<C>,
    ours: impl Fn() -> bool,
) {
    let shared = Arc::new(Shared {
        guard: Mutex::new(guard),
        worker,
        changed: Notify::new(),
    });
    let mut stops: JoinSet<()> = JoinSet::new();
    let mut stopping: HashMap<tokio::task::Id, String> = HashMap::new();
    loop {
        let wake = shared.guard().next_look(Instant::now());
        tokio::select! {
            accepted = listener.accept() => {
                match accepted {
                    Ok((stream, _)) => {
                        tokio::spawn(converse(stream, shared.clone()));
                    }
                    Err(e) => {
                        // Out of descriptors, say: the lease still holds.
                        warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                continue;
            }
            () = shared.changed.notified() => {}
            () = tokio::time::sleep_until(wake.into()) => {}
            Some(done) = stops.join_next_with_id(), if !stops.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => e.id(),
                };
                stopping.remove(&id);
            }
        }
        if !shared.guard().watching(Instant::now()) {
            continue;
        }
        if !ours() {
            info!("another Docker watchdog took this one's socket; leaving the containers to it");
            return;
        }
        let looked = containers.running().await;
        let now = Instant::now();
        let due = {
            let mut guard = shared.guard();
            guard.looked(now, looked.is_ok());
            match &looked {
                Ok(running) => guard.due(now, SystemTime::now(), running),
                Err(_) => Vec::new(),
            }
        };
        if let Err(e) = &looked {
            warn!(error = %e, "cannot list the containers it guards");
        }
        let busy: HashSet<&String> = stopping.values().collect();
        let fresh: Vec<Stop> = due.into_iter().filter(|s| !busy.contains(&s.id)).collect();
        for stop in fresh {
            match stop.why {
                Why::Lease => {
                    warn!(container = %stop.id, grace = ?stop.grace, "the worker's lease ran out; stopping its container")
                }
                Why::TimeLimit(limit) => {
                    info!(container = %stop.id, ?limit, grace = ?stop.grace, "time limit reached with no worker connected; stopping the container")
                }
            }
            let c = containers.clone();
            let id = stop.id.clone();
            let handle = stops.spawn(async move {
                if let Err(e) = c.stop(&stop.id, stop.grace).await {
                    warn!(container = %stop.id, error = %e, "could not stop the container");
                }
            });
            stopping.insert(handle.id(), id);
        }
        let running = looked.as_ref().ok().map(Vec::len);
        if stopping.is_empty() && shared.guard().may_exit(Instant::now(), running) {
            return;
        }
    }
}

/// Answers one connection's lines until it closes or sends garbage too
/// long to be a line.
async fn converse(stream: UnixStream, shared: Arc<Shared>) {
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut hello = false;
    loop {
        let mut line = Vec::new();
        match (&mut read)
            .take(MAX_LINE)
            .read_until(b'\n', &mut line)
            .await
        {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let too_long = line.last() != Some(&b'\n') && line.len() as u64 >= MAX_LINE;
        let answer = if too_long {
            Err(format!("line longer than {MAX_LINE} bytes"))
        } else {
            match parse(&line) {
                Ok(Request::Hello(worker)) if worker == shared.worker => {
                    if !hello {
                        hello = true;
                        shared.guard().joined();
                        shared.changed.notify_one();
                    }
                    Ok(())
                }
                Ok(Request::Hello(worker)) => Err(format!(
                    "this watchdog guards worker {}, not {worker}",
                    shared.worker
                )),
                Ok(Request::Lease(lease)) if hello => {
                    shared.guard().renew(Instant::now(), lease);
                    shared.changed.notify_one();
                    Ok(())
                }
                Ok(Request::Lease(_)) => Err("say hello <worker id> first".into()),
                Ok(Request::Ping) => Ok(()),
                Err(e) => Err(e),
            }
        };
        let text = match &answer {
            Ok(()) => "ok\n".to_string(),
            Err(e) => format!("error {e}\n"),
        };
        if write.write_all(text.as_bytes()).await.is_err() || too_long {
            break;
        }
    }
    if hello {
        shared.guard().left(Instant::now());
        shared.changed.notify_one();
    }
}

/// The daemon, as the watchdog sees it.
struct Daemon {
    /// Made (the API version negotiated) at the first look that can.
    docker: tokio::sync::Mutex<Option<Docker>>,
    worker: String,
    watchdog: String,
}

impl Daemon {
    async fn docker(&self) -> std::result::Result<Docker, String> {
        let mut docker = self.docker.lock().await;
        if let Some(d) = docker.as_ref() {
            return Ok(d.clone());
        }
        let d = Docker::connect_with_local_defaults().map_err(|e| e.to_string())?;
        let d = tokio::time::timeout(DAEMON_TIMEOUT, d.negotiate_version())
            .await
            .map_err(|_| format!("the Docker daemon did not answer within {DAEMON_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        Ok(docker.insert(d).clone())
    }
}

fn status_of(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

#[async_trait]
impl Containers for Daemon {
    async fn running(&self) -> std::result::Result<Vec<Guarded>, String> {
        let docker = self.docker().await?;
        let filters = HashMap::from([(
            "label".to_string(),
            vec![
                format!("{LABEL_WORKER}={}", self.worker),
                format!("{LABEL_WATCHDOG}={}", self.watchdog),
            ],
        )]);
        let options = ListContainersOptions {
            all: false,
            filters: Some(filters),
            ..Default::default()
        };
        let found = tokio::time::timeout(DAEMON_TIMEOUT, docker.list_containers(Some(options)))
            .await
            .map_err(|_| format!("the Docker daemon did not answer within {DAEMON_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        Ok(found
            .into_iter()
            .filter_map(|c| {
                let labels = c.labels.unwrap_or_default();
                Some(Guarded::from_labels(c.id?, &labels, c.created))
            })
            .collect())
    }

    async fn stop(&self, id: &str, grace: Duration) -> std::result::Result<(), String> {
        let docker = self.docker().await?;
        tokio::time::timeout(grace + DAEMON_TIMEOUT, stop_within(&docker, id, grace))
            .await
            .map_err(|_| format!("the stop took longer than {:?}", grace + DAEMON_TIMEOUT))?
    }
}

/// SIGTERM to the container (its init passes it on), then SIGKILL once
/// `grace` passed unless it ended: to the millisecond, where the daemon's
/// own stop counts whole seconds.
pub(crate) async fn stop_within(
    docker: &Docker,
    id: &str,
    grace: Duration,
) -> std::result::Result<(), String> {
    let began = tokio::time::Instant::now();
    let kill = |signal: &str| {
        docker.kill_container(
            id,
            Some(KillContainerOptions {
                signal: signal.into(),
            }),
        )
    };
    match kill("SIGTERM").await {
        Ok(()) => {}
        // 404: gone; 409: not running.
        Err(e) if matches!(status_of(&e), Some(404 | 409)) => return Ok(()),
        Err(e) => warn!(container = %id, error = %e, "SIGTERM failed; SIGKILL after the grace"),
    }
    let options = WaitContainerOptions {
        condition: "not-running".into(),
    };
    let mut waited = docker.wait_container(id, Some(options));
    match tokio::time::timeout(grace, waited.next()).await {
        // bollard reports a non-zero exit as an error.
        Ok(Some(Ok(_) | Err(DockerError::DockerContainerWaitError { .. }))) => return Ok(()),
        Ok(_) => tokio::time::sleep_until(began + grace).await,
        Err(_) => {}
    }
    match kill("SIGKILL").await {
        Ok(()) => Ok(()),
        Err(e) if matches!(status_of(&e), Some(404 | 409)) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests;
