//! The operator commands, shared by the one-shot CLI and the `master>` REPL.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use clap::builder::PossibleValuesParser;
use clap::{Args, Parser, Subcommand};
use cloudai_core::liveness::Health;
use cloudai_core::master::{Cursor, ParentRef, SubmitOptions};
use cloudai_core::model::{
    parse_label, parse_size, ArrayId, ArraySpec, AttemptPolicy, Condition, Constraint,
    ContainerOptions, Mount, RequestId, Resources, TaskId, TaskRecord, TaskSpec, TaskStatus, Tmpfs,
    UsageSummary, User, WorkerId,
};
use cloudai_core::output::OutputFrom;
use cloudai_core::store::TaskFilter;
use cloudai_core::Error;
use cloudai_examples as common;
use cloudai_grpc::MasterClient;

use crate::{exit, output};

/// Every task status, as the CLI spells it.
const STATUSES: [&str; 5] = ["pending", "running", "completed", "failed", "cancelled"];

/// What an operator can ask of a master.
#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Register a worker by address; the master connects to it (and retries
    /// until it answers).
    Register {
        /// Worker id.
        id: String,
        /// Its address, host:port.
        address: String,
    },
    /// Submit a task: `task [--on WORKER] [--cpu N] [--mem GB] IMAGE [-- CMD ARGS...]`.
    Task(TaskArgs),
    /// Submit a task and follow its output until it ends.
    Run(TaskArgs),
    /// List workers with live status and resources.
    Workers,
    /// List the newest tasks, with a line of counts by status; the tasks
    /// of an array listed are one row (`ARRAY_[indices]` with the array's
    /// counts by status) unless --array, --all or --expand. Times are UTC.
    Tasks {
        /// Only these statuses.
        #[arg(long, value_parser = PossibleValuesParser::new(STATUSES))]
        status: Vec<String>,
        /// Only tasks on this worker.
        #[arg(long)]
        worker: Option<String>,
        /// Only the tasks of this array.
        #[arg(long)]
        array: Option<String>,
        #[command(flatten)]
        named: Named,
        /// How many of the newest to show (default 20 rows, an array's
        /// tasks making one; with --array, up to 1000 of its tasks).
        #[arg(long)]
        limit: Option<u32>,
        /// Every task, page by page (newest first), each on its row.
        #[arg(long, conflicts_with = "limit")]
        all: bool,
        /// Each task of an array on its own row (with --limit tasks).
        #[arg(long)]
        expand: bool,
        /// Order of the rows shown.
        #[arg(long, value_enum, default_value_t = Sort::Newest)]
        sort: Sort,
        /// List again whenever a task changes, until interrupted.
        #[arg(long, conflicts_with = "all")]
        watch: bool,
        /// Instead of the tasks, what the array's tasks used: total CPU,
        /// peak memory (max, p95) and wall time (p50, p95).
        #[arg(long, requires = "array", conflicts_with = "watch")]
        summary: bool,
    },
    /// Show one task with its result and logs.
    Show {
        /// Task id.
        id: String,
    },
    /// Cancel tasks: by id, all on a worker, all in a status, or all.
    Cancel {
        /// Task ids.
        ids: Vec<String>,
        /// Every pending or running task on this worker.
        #[arg(long)]
        worker: Option<String>,
        /// Every task in this status.
        #[arg(long, value_parser = PossibleValuesParser::new(["pending", "running"]))]
        status: Vec<String>,
        /// Every pending or running task of this array.
        #[arg(long)]
        array: Option<String>,
        #[command(flatten)]
        named: Named,
        /// Every pending or running task.
        #[arg(long)]
        all: bool,
        /// SIGKILL at once, without the grace period.
        #[arg(long)]
        force: bool,
        /// Wait until the worker confirms the stop (up to the master's
        /// cancel timeout); without it the answer comes after about a
        /// second, with the stop still on its way if unconfirmed.
        #[arg(long)]
        wait: bool,
    },
    /// Submit failed or cancelled tasks again, each as a new task with the
    /// same spec, name and labels (without its dependencies), printing
    /// old → new ids.
    Resubmit {
        /// Task ids.
        ids: Vec<String>,
        /// The tasks of this array.
        #[arg(long)]
        array: Option<String>,
        /// Only tasks in these statuses (default: failed and cancelled).
        #[arg(long, value_parser = PossibleValuesParser::new(["failed", "cancelled"]))]
        status: Vec<String>,
    },
    /// Change a pending task: `update ID --priority N` moves it in the
    /// queue (higher runs first).
    Update {
        /// Task id.
        id: String,
        /// Its new priority.
        #[arg(long, allow_negative_numbers = true)]
        priority: i32,
    },
    /// Follow a task's output until it ends (a finished task's is printed
    /// at once); stdout and stderr each to its own.
    Monitor {
        /// Task id.
        id: String,
        #[command(flatten)]
        start: Start,
    },
    /// Print a task's output as its worker keeps it now (or the end stored
    /// with its result), without following.
    Logs {
        /// Task id.
        id: String,
        #[command(flatten)]
        start: Start,
        /// An earlier attempt's output: the end of it the task's history
        /// keeps (64 KiB); the current or last attempt's by default.
        #[arg(long, value_name = "N")]
        attempt: Option<u32>,
    },
    /// Follow the master's events (task transitions, placements, worker
    /// health, drains), each with the cursor to resume after it.
    Events {
        /// Resume after this cursor (as an event prints it); a cursor from
        /// another master run, or older than its buffer, is refused.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Place nothing more on a worker; its tasks may finish, or with
    /// --deadline are stopped then and failed as drained.
    Drain {
        /// Worker id.
        id: String,
        /// Seconds from now after which tasks still running there are
        /// stopped (with their grace) and failed as drained.
        #[arg(long, value_parser = common::seconds)]
        deadline: Option<Duration>,
    },
    /// End a worker's drain: it takes tasks again.
    Undrain {
        /// Worker id.
        id: String,
    },
    /// Recompute allocations from running tasks and show the fixes.
    #[command(alias = "fix-resources")]
    Reconcile,
    /// Retry every offline worker now.
    Reconnect,
    /// Print shell completions: `cloudai-master completions bash > /etc/bash_completion.d/cloudai-master`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// How `tasks` orders the rows it shows (the rows are the newest either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Sort {
    /// Newest first.
    Newest,
    /// Oldest first.
    Oldest,
    /// By status (pending, running, completed, failed, cancelled), newest first within.
    Status,
    /// By worker, newest first within.
    Worker,
}

impl Sort {
    fn apply(self, tasks: &mut [TaskRecord]) {
        // The store lists newest first; sorts below are stable.
        match self {
            Sort::Newest => {}
            Sort::Oldest => tasks.reverse(),
            Sort::Status => tasks.sort_by_key(|t| t.status),
            Sort::Worker => tasks.sort_by(|a, b| a.worker.cmp(&b.worker)),
        }
    }
}

/// Tasks by the name and labels their submit gave them.
#[derive(Debug, Args)]
pub(crate) struct Named {
    /// Only tasks with this name.
    #[arg(long)]
    name: Option<String>,
    /// Only tasks with this label, `KEY=VALUE` (repeatable: all of them).
    #[arg(long = "label", value_parser = label_pair)]
    labels: Vec<(String, String)>,
}

impl Named {
    fn any(&self) -> bool {
        self.name.is_some() || !self.labels.is_empty()
    }
}

fn label_pair(s: &str) -> Result<(String, String), String> {
    parse_label(s).map_err(|e| e.to_string())
}

/// Where printing a task's output starts (default: its first byte).
#[derive(Debug, Args)]
pub(crate) struct Start {
    /// Start at the last N lines.
    #[arg(long, value_name = "N")]
    tail: Option<u64>,
    /// Start at this byte of the output (offsets count stdout and stderr
    /// together, from 0).
    #[arg(long, value_name = "BYTE", conflicts_with = "tail")]
    offset: Option<u64>,
}

impl Start {
    fn from(&self) -> OutputFrom {
        match (self.tail, self.offset) {
            (Some(n), _) => OutputFrom::LastLines(n),
            (None, offset) => OutputFrom::Offset(offset.unwrap_or(0)),
        }
    }
}

/// A task to submit.
#[derive(Debug, Args)]
pub(crate) struct TaskArgs {
    /// Run on this worker (default: the scheduler places it).
    #[arg(long = "on")]
    on: Option<String>,
    /// CPU cores.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    cpu: f64,
    /// Memory, GB.
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    mem: f64,
    /// Disk, GB.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    disk: f64,
    /// GPUs.
    #[arg(long, default_value_t = 0)]
    gpus: u32,
    /// Seconds between SIGTERM and SIGKILL when cancelled.
    #[arg(long, default_value = "10", value_parser = common::seconds)]
    grace: Duration,
    /// Environment variable NAME=VALUE (repeatable).
    #[arg(long = "env", value_parser = env_pair)]
    env: Vec<(String, String)>,
    /// Submit one task per index, as Slurm writes them (`1-1000`,
    /// `0-30:10`, `1,3,5-7`); each sees its index in CLOUDAI_ARRAY_INDEX.
    /// `%N` after them (`1-1000%50`) lets at most N run at once.
    #[arg(long, value_parser = parse_with::<ArraySpec>)]
    array: Option<ArraySpec>,
    /// A name for the task (or each task of the array).
    #[arg(long)]
    name: Option<String>,
    /// A label `KEY=VALUE` (repeatable).
    #[arg(long = "label", value_parser = label_pair)]
    labels: Vec<(String, String)>,
    /// Higher runs first among tasks that fit (default 0; negative
    /// allowed).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    priority: i32,
    /// What the worker's labels must satisfy: `k=v`, `k!=v`,
    /// `k in (a,b)`, `k` (present), `!k` (absent). Repeatable: all hold.
    #[arg(long = "constraint", value_parser = parse_with::<Constraint>)]
    constraints: Vec<Constraint>,
    /// Run once each of these tasks (or every task of these arrays)
    /// completed. Comma-separated, repeatable.
    #[arg(long, value_delimiter = ',')]
    after_ok: Vec<String>,
    /// Run once each of these ended, however it ended.
    #[arg(long, value_delimiter = ',')]
    after_any: Vec<String>,
    /// Run once each of these failed or was cancelled.
    #[arg(long, value_delimiter = ',')]
    after_notok: Vec<String>,
    /// With --array: member i runs once member i of this array completed.
    #[arg(long, requires = "array")]
    after_corr: Option<String>,
    /// Queue it even if no registered worker could ever hold it (it waits
    /// for a bigger worker to join); otherwise such a request is refused.
    #[arg(long)]
    wait_for_capacity: bool,
    /// Names this submit so that a retry returns the task the first one
    /// made (default: an id made for this invocation, sent on each of its
    /// retries). The same id with another spec is refused.
    #[arg(long, value_parser = parse_with::<RequestId>)]
    request_id: Option<RequestId>,
    /// Further attempts after the task fails on its own (a non-zero exit,
    /// a signal, an OOM kill); each attempt sees CLOUDAI_ATTEMPT.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Delay before the first retry, doubling per retry up to 5 min,
    /// jitter taking up to half of each off (seconds, or `30s`, `2m`).
    #[arg(long, default_value = "10", value_parser = common::seconds)]
    retry_delay: Duration,
    /// Worker losses after which the task fails instead of running again
    /// (0: no limit).
    #[arg(long, default_value_t = AttemptPolicy::DEFAULT_CRASH_LIMIT)]
    crash_limit: u32,
    /// Fail at the first worker loss (or drain, or worker shutdown)
    /// instead of running again elsewhere.
    #[arg(long)]
    no_requeue: bool,
    /// Longest one attempt may run, from its start (seconds, or `90m`,
    /// `2h`); then it is stopped with its grace and fails `timeout`.
    #[arg(long, value_parser = common::seconds)]
    time_limit: Option<Duration>,
    /// A timeout counts as a failure that `--retries` may retry (else it
    /// is final).
    #[arg(long)]
    retry_on_timeout: bool,
    /// The directory the command starts in (default: the image's; on the
    /// process runtime, a directory of its own removed with the run).
    #[arg(long)]
    workdir: Option<String>,
    /// Bind-mount host directory SRC at DST (`SRC:DST[:ro]`); only under
    /// the directories a worker allows (its `--allow-mount`). Repeatable.
    #[arg(long = "mount", value_parser = parse_with::<Mount>)]
    mounts: Vec<Mount>,
    /// A memory-backed scratch directory (`DST[:SIZE]`, e.g.
    /// `/scratch:1GiB`). Repeatable.
    #[arg(long = "tmpfs", value_parser = parse_with::<Tmpfs>)]
    tmpfs: Vec<Tmpfs>,
    /// Run as `UID[:GID]` (numeric; the group defaults to the uid).
    #[arg(long, value_parser = parse_with::<User>)]
    user: Option<User>,
    /// Size of the container's /dev/shm (`64MiB`, `1GiB`).
    #[arg(long, value_parser = shm_size)]
    shm_size: Option<u64>,
    /// Container image (the process runtime records it but runs the command).
    image: String,
    /// Command and arguments.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn parse_with<T: std::str::FromStr<Err = cloudai_core::model::ValidationError>>(
    s: &str,
) -> Result<T, String> {
    s.parse()
        .map_err(|e: cloudai_core::model::ValidationError| e.to_string())
}

fn shm_size(s: &str) -> Result<u64, String> {
    parse_size("shm size", s).map_err(|e| e.to_string())
}

fn env_pair(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

impl TaskArgs {
    /// The submit's options, under the request id given or one made for
    /// this invocation: every retry of it (across masters, after a
    /// takeover) returns the task the first made.
    fn options(&self) -> Result<SubmitOptions, Error> {
        let request = match &self.request_id {
            Some(id) => id.clone(),
            None => RequestId::new(common::random_token().map_err(Error::Unavailable)?)?,
        };
        let parents = [
            (Condition::AfterOk, &self.after_ok),
            (Condition::AfterAny, &self.after_any),
            (Condition::AfterNotOk, &self.after_notok),
        ];
        let after = parents
            .into_iter()
            .flat_map(|(condition, ids)| {
                ids.iter()
                    .filter(|id| !id.trim().is_empty())
                    .map(move |id| ParentRef {
                        condition,
                        id: id.trim().to_owned(),
                    })
            })
            .collect();
        Ok(SubmitOptions {
            wait_for_capacity: self.wait_for_capacity,
            request: Some(request),
            after,
            after_corr: self.after_corr.as_deref().map(ArrayId::new).transpose()?,
            array_limit: self.array.as_ref().and_then(|a| a.limit),
        })
    }

    fn spec(&self) -> Result<TaskSpec, Error> {
        let resources = Resources::new(self.cpu, self.mem, self.disk, self.gpus)?;
        let mut spec = TaskSpec::new(self.image.clone(), self.command.clone(), resources);
        spec.env = self.env.iter().cloned().collect::<BTreeMap<_, _>>();
        spec.cancel_grace = self.grace;
        spec.pin = self.on.as_deref().map(WorkerId::new).transpose()?;
        spec.policy = AttemptPolicy {
            retries: self.retries,
            retry_delay: self.retry_delay,
            crash_limit: self.crash_limit,
            requeue: !self.no_requeue,
            time_limit: self.time_limit,
            retry_on_timeout: self.retry_on_timeout,
        };
        spec.options = ContainerOptions {
            workdir: self.workdir.clone(),
            mounts: self.mounts.clone(),
            tmpfs: self.tmpfs.clone(),
            user: self.user,
            shm_size: self.shm_size,
        };
        spec.name.clone_from(&self.name);
        spec.labels = self.labels.iter().cloned().collect();
        spec.priority = self.priority;
        spec.constraints.clone_from(&self.constraints);
        spec.validate()?;
        Ok(spec)
    }
}

/// The attempts a task ran, for an error naming the ones there are.
fn attempt_numbers(t: &TaskRecord) -> String {
    let mut n: Vec<String> = t.history.iter().map(|a| a.attempt.to_string()).collect();
    if t.status == TaskStatus::Running {
        n.push(t.attempt.to_string());
    }
    if n.is_empty() {
        "none yet".into()
    } else {
        n.join(", ")
    }
}

fn statuses(names: &[String]) -> Result<Vec<TaskStatus>, Error> {
    names
        .iter()
        .map(|s| s.parse::<TaskStatus>().map_err(Error::from))
        .collect()
}

/// Runs one command; prints its result; the exit code says how it went.
pub(crate) async fn execute(client: &MasterClient, cmd: Command, json: bool) -> ExitCode {
    match run(client, cmd, json).await {
        Ok(code) => code,
        Err(e) => {
            let (code, kind) = exit::of_error(&e);
            output::error(json, kind, &e.to_string());
            ExitCode::from(code)
        }
    }
}

async fn run(client: &MasterClient, cmd: Command, json: bool) -> Result<ExitCode, Error> {
    match cmd {
        Command::Register { id, address } => {
            let id = WorkerId::new(id)?;
            client.pre_register(&id, &address).await?;
            output::message(
                json,
                &format!("worker {id} registered at {address}; connecting"),
            );
        }
        Command::Task(args) => match &args.array {
            Some(array) => {
                let (array, count) = client
                    .submit_array(args.spec()?, &array.indices, args.options()?)
                    .await?;
                output::array_submitted(json, &array, count);
            }
            None => {
                let id = client.submit_with(args.spec()?, args.options()?).await?;
                output::submitted(json, &id);
            }
        },
        Command::Run(args) if args.array.is_some() => {
            return Err(Error::Conflict(
                "run follows one task; submit an array with `task --array`".into(),
            ));
        }
        Command::Run(args) => {
            let id = client.submit_with(args.spec()?, args.options()?).await?;
            if !json {
                output::progress(&format!("task {id} submitted; following its output"));
            }
            return follow(client, &id, OutputFrom::Offset(0), json).await;
        }
        Command::Workers => output::workers(json, &client.workers().await?),
        Command::Tasks {
            status,
            worker,
            array,
            named,
            limit,
            all,
            expand,
            sort,
            watch,
            summary,
        } => {
            // People see an array's tasks as one row unless they asked
            // for them; scripts (`--json`) always get every record.
            let collapse = !json && !all && !expand && array.is_none();
            let limit = limit.unwrap_or(match array {
                Some(_) => ARRAY_LISTED,
                None => LISTED,
            });
            let filter = TaskFilter {
                statuses: statuses(&status)?,
                worker: worker.map(WorkerId::new).transpose()?,
                array: array.map(ArrayId::new).transpose()?,
                name: named.name,
                labels: named.labels,
            };
            if summary {
                let tasks = client.tasks(&filter).await?;
                output::usage_summary(json, &UsageSummary::of(&tasks));
                return Ok(ExitCode::SUCCESS);
            }
            let list = || async {
                if collapse {
                    let rows = collapsed(client, &filter, limit.max(1), sort).await?;
                    output::tasks_collapsed(&rows, &client.task_counts().await?);
                    return Ok::<(), Error>(());
                }
                let mut tasks = if all {
                    client.tasks(&filter).await?
                } else {
                    client.page(&filter, None, limit.max(1)).await?.0
                };
                sort.apply(&mut tasks);
                let array = match (&filter.array, json) {
                    (Some(a), false) => Some((a, client.count_matching(&of_array(a)).await?)),
                    _ => None,
                };
                output::tasks(json, &tasks, &client.task_counts().await?, array);
                Ok::<(), Error>(())
            };
            if !watch {
                list().await?;
                return Ok(ExitCode::SUCCESS);
            }
            // Subscribed before the first list, so no change falls between.
            let mut events = client.watch_events(None).await?;
            list().await?;
            loop {
                let Some(first) = events.recv().await else {
                    return Err(Error::Unavailable(
                        "the master closed the event stream".into(),
                    ));
                };
                // Changes come in bursts: list once per burst.
                tokio::time::sleep(WATCH_SETTLE).await;
                let mut burst = vec![first];
                while let Ok(e) = events.try_recv() {
                    burst.push(e);
                }
                let mut changed = false;
                for e in burst {
                    match e {
                        Ok(w) => changed |= w.kind.is_some(),
                        // Fallen behind the master's buffer: every change
                        // since is in the listing anyway; watch from now.
                        Err(Error::Conflict(_)) => {
                            events = client.watch_events(None).await?;
                            changed = true;
                        }
                        Err(e) => return Err(e),
                    }
                }
                if changed {
                    say_rule(json);
                    list().await?;
                }
            }
        }
        Command::Show { id } => output::task(json, &client.task(&TaskId::new(id)?).await?),
        Command::Cancel {
            ids,
            worker,
            status,
            array,
            named,
            all,
            force,
            wait,
        } => {
            let bulk =
                worker.is_some() || !status.is_empty() || array.is_some() || named.any() || all;
            if ids.is_empty() != bulk {
                return Err(Error::Conflict(
                    "name task ids, or one of --worker, --status, --array, --name, --label, --all"
                        .into(),
                ));
            }
            if !json && wait {
                output::progress(
                    "cancelling (the worker gets up to the grace period to stop each task)...",
                );
            }
            let done = if bulk {
                let filter = TaskFilter {
                    statuses: statuses(&status)?,
                    worker: worker.map(WorkerId::new).transpose()?,
                    array: array.map(ArrayId::new).transpose()?,
                    name: named.name,
                    labels: named.labels,
                };
                client.cancel_many(&filter, force, wait).await?
            } else {
                let mut done = Vec::new();
                for id in ids {
                    let id = TaskId::new(id)?;
                    let outcome = client.cancel(&id, force, wait).await?;
                    done.push((id, outcome));
                }
                done
            };
            output::cancelled(json, &done);
        }
        Command::Resubmit { ids, array, status } => {
            let again = resubmit(client, ids, array, &status).await?;
            output::resubmitted(json, &again);
        }
        Command::Update { id, priority } => {
            let t = client.set_priority(&TaskId::new(id)?, priority).await?;
            output::message(json, &format!("task {} priority {}", t.id, t.spec.priority));
        }
        Command::Monitor { id, start } => {
            return follow(client, &TaskId::new(id)?, start.from(), json).await
        }
        Command::Logs { id, start, attempt } => {
            let id = TaskId::new(id)?;
            if let Some(n) = attempt {
                let view = client.task(&id).await?;
                let t = &view.task;
                let kept = t.history.iter().find(|a| a.attempt == n);
                match kept {
                    // The final attempt's output is its result's.
                    Some(a) if n != t.attempt || !a.logs.is_empty() => {
                        output::attempt_logs(json, a);
                        return Ok(ExitCode::SUCCESS);
                    }
                    Some(_) => {}
                    None if n == t.attempt => {}
                    None => {
                        return Err(Error::not_found(
                            "attempt",
                            format!("{n} of task {id} (it ran attempts {})", attempt_numbers(t)),
                        ))
                    }
                }
            }
            let mut output = client.follow_output(&id, start.from(), false).await?;
            let mut printer = output::OutputPrinter::new(json);
            while let Some(o) = output.recv().await {
                if printer.print(&o?).is_err() {
                    return Ok(ExitCode::from(exit::CLOSED_PIPE));
                }
            }
        }
        Command::Events { cursor } => return events(client, cursor, json).await,
        Command::Drain { id, deadline } => {
            let id = WorkerId::new(id)?;
            client.drain(&id, deadline).await?;
            let then = match deadline {
                Some(d) => format!("; tasks still running in {d:?} will be stopped"),
                None => "; its tasks may run to their end".into(),
            };
            output::message(json, &format!("worker {id} drained{then}"));
        }
        Command::Undrain { id } => {
            let id = WorkerId::new(id)?;
            client.undrain(&id).await?;
            output::message(
                json,
                &format!("worker {id} undrained; it takes tasks again"),
            );
        }
        Command::Reconcile => output::reconciled(json, &client.reconcile().await?),
        Command::Completions { .. } => {
            return Err(Error::Conflict(
                "completions are printed by the command line: cloudai-master completions <shell>"
                    .into(),
            ))
        }
        Command::Reconnect => {
            client.reconnect().await?;
            output::message(json, "reconnecting to every offline worker now");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `events`: every event from `cursor` (or from now). Given several
/// masters, a stream that ends (a takeover) resumes on the next leader;
/// its event log is another, so the watch starts over from now there,
/// after a `resync` line, as after a master restart.
async fn events(
    client: &MasterClient,
    cursor: Option<String>,
    json: bool,
) -> Result<ExitCode, Error> {
    let mut cursor: Option<Cursor> = cursor.map(|c| c.parse()).transpose()?;
    let mut resumed = false;
    loop {
        let mut events = match client.watch_events(cursor.as_ref()).await {
            Err(Error::Conflict(why)) if resumed => {
                output::resync(json, &why);
                client.watch_events(None).await?
            }
            answer => answer?,
        };
        let ended = loop {
            match events.recv().await {
                Some(Ok(e)) => {
                    cursor = Some(e.cursor.clone());
                    output::event(json, &e);
                }
                Some(Err(e)) => break e,
                None => break Error::Unavailable("the master closed the event stream".into()),
            }
        };
        if client.listed().len() < 2 {
            return Err(ended);
        }
        resumed = true;
    }
}

/// How long `tasks --watch` lets a burst of changes settle before listing.
const WATCH_SETTLE: Duration = Duration::from_millis(250);

/// Between two listings of `tasks --watch` (people only: JSON lines need
/// no separator).
fn say_rule(json: bool) {
    if !json {
        output::message(false, "");
    }
}

/// Streams a task's output until it ends, stdout to stdout and stderr to
/// stderr (with `--json`, only the final task is printed); exit 0 iff it
/// completed.
async fn follow(
    client: &MasterClient,
    id: &TaskId,
    from: OutputFrom,
    json: bool,
) -> Result<ExitCode, Error> {
    let mut output = client.follow_output(id, from, true).await?;
    let mut printer = output::OutputPrinter::new(false);
    while let Some(o) = output.recv().await {
        let o = o?;
        if !json && printer.print(&o).is_err() {
            return Ok(ExitCode::from(exit::CLOSED_PIPE));
        }
    }
    let view = client.task(id).await?;
    if json {
        output::task(true, &view);
    } else {
        output::finished(&view);
    }
    Ok(ExitCode::from(exit::of_task(&view)))
}

/// Waits (up to 10 s) until the worker has registered, so a one-shot
/// command in dev mode does not race the local worker.
pub(crate) async fn wait_registered(client: &MasterClient, worker: &WorkerId) {
    for _ in 0..200 {
        if let Ok(ws) = client.workers().await {
            if ws
                .iter()
                .any(|w| &w.id == worker && w.registered && w.health == Health::Active)
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A line typed at the prompt.
#[derive(Debug, Parser)]
#[command(name = "", no_binary_name = true, disable_version_flag = true)]
struct Line {
    #[command(subcommand)]
    cmd: ReplCommand,
}

#[derive(Debug, Subcommand)]
#[allow(
    clippy::large_enum_variant,
    reason = "one value per line typed at the prompt"
)]
enum ReplCommand {
    #[command(flatten)]
    Op(Command),
    /// Leave the prompt.
    #[command(alias = "quit")]
    Exit,
}

/// The interactive `master>` prompt, with history.
pub(crate) async fn repl(client: &MasterClient, json: bool) -> Result<(), String> {
    let mut editor = rustyline::DefaultEditor::new().map_err(|e| e.to_string())?;
    let history =
        std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cloudai_history"));
    if let Some(h) = &history {
        let _ = editor.load_history(h);
    }
    output::progress("type `help` for commands, `exit` to leave");
    loop {
        let (back, line) = tokio::task::spawn_blocking(move || {
            let line = editor.readline("master> ");
            (editor, line)
        })
        .await
        .map_err(|e| e.to_string())?;
        editor = back;
        let line = match line {
            Ok(l) => l,
            Err(rustyline::error::ReadlineError::Interrupted) => continue,
            Err(_) => break,
        };
        let Some(words) = shlex::split(&line) else {
            output::error(json, "usage", "unbalanced quotes");
            continue;
        };
        if words.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(line.as_str());
        match Line::try_parse_from(words) {
            Ok(Line {
                cmd: ReplCommand::Exit,
            }) => break,
            Ok(Line {
                cmd: ReplCommand::Op(cmd),
            }) => {
                let _ = execute(client, cmd, json).await;
            }
            Err(e) => {
                let _ = e.print();
            }
        }
    }
    if let Some(h) = &history {
        let _ = editor.save_history(h);
    }
    Ok(())
}

/// Submits the failed or cancelled tasks named (by id, or all of an array
/// in `status`) again as new tasks; returns old → new ids. Each new task
/// has the old one's spec without its dependencies, and a request id made
/// from this invocation and the old id, so a retried call makes it once.
async fn resubmit(
    client: &MasterClient,
    ids: Vec<String>,
    array: Option<String>,
    status: &[String],
) -> Result<Vec<(TaskId, TaskId)>, Error> {
    let wanted = if status.is_empty() {
        vec![TaskStatus::Failed, TaskStatus::Cancelled]
    } else {
        statuses(status)?
    };
    let tasks = match (array, ids.is_empty()) {
        (Some(a), true) => {
            let filter = TaskFilter {
                statuses: wanted.clone(),
                array: Some(ArrayId::new(a)?),
                ..TaskFilter::default()
            };
            client.tasks(&filter).await?
        }
        (None, false) => {
            let mut tasks = Vec::new();
            for id in ids {
                let t = client.task(&TaskId::new(id)?).await?.task;
                if !wanted.contains(&t.status) {
                    return Err(Error::Conflict(format!(
                        "task {} is {}; resubmit takes {} tasks",
                        t.id,
                        t.status,
                        wanted
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )));
                }
                tasks.push(t);
            }
            tasks
        }
        _ => {
            return Err(Error::Conflict(
                "name task ids, or --array (with --status)".into(),
            ))
        }
    };
    let token = common::random_token().map_err(Error::Unavailable)?;
    let mut again = Vec::new();
    for t in tasks {
        let mut spec = t.spec.clone();
        spec.after.clear();
        let options = SubmitOptions {
            wait_for_capacity: true,
            request: Some(RequestId::new(format!("{token}-{}", t.id))?),
            ..SubmitOptions::default()
        };
        let new = client.submit_with(spec, options).await?;
        again.push((t.id, new));
    }
    Ok(again)
}

/// Rows `tasks` shows unless told (`--limit`).
const LISTED: u32 = 20;
/// Tasks `tasks --array A` shows unless told: a sweep's, whole.
const ARRAY_LISTED: u32 = 1000;

/// Most tasks `tasks` reads to fill its rows when an array's tasks make
/// one row.
const COLLAPSE_SCAN: usize = 5000;

/// The newest `limit` rows for `tasks`, the tasks of each array read
/// together on one row with the whole array's counts by status (one
/// count per array, by the store): pages are read until `limit` rows
/// are filled, the tasks run out, or [`COLLAPSE_SCAN`] were read; an
/// array's row holds its tasks among those read.
async fn collapsed(
    client: &MasterClient,
    filter: &TaskFilter,
    limit: u32,
    sort: Sort,
) -> Result<Vec<output::Listed>, Error> {
    let want = limit as usize;
    let page = limit.clamp(100, 1000);
    let mut groups: Vec<(Option<ArrayId>, Vec<TaskRecord>)> = Vec::new();
    let mut at: std::collections::HashMap<ArrayId, usize> = std::collections::HashMap::new();
    let mut after = None;
    let mut read = 0;
    loop {
        let (tasks, next) = client.page(filter, after.as_ref(), page).await?;
        read += tasks.len();
        for t in tasks {
            let Some(a) = t.array.as_ref().map(|a| a.id.clone()) else {
                groups.push((None, vec![t]));
                continue;
            };
            match at.get(&a) {
                Some(&i) => groups[i].1.push(t),
                None => {
                    at.insert(a.clone(), groups.len());
                    groups.push((Some(a), vec![t]));
                }
            }
        }
        match next {
            Some(n) if groups.len() < want && read < COLLAPSE_SCAN => after = Some(n),
            _ => break,
        }
    }
    groups.truncate(want);
    let mut rows = Vec::with_capacity(groups.len());
    for (array, mut members) in groups {
        rows.push(match array {
            None => output::Listed::Task(Box::new(members.remove(0))),
            Some(id) => {
                let counts = client.count_matching(&of_array(&id)).await?;
                output::Listed::Array {
                    id,
                    members,
                    counts,
                }
            }
        });
    }
    sort.apply_rows(&mut rows);
    Ok(rows)
}

/// Every task of array `id`.
fn of_array(id: &ArrayId) -> TaskFilter {
    TaskFilter {
        array: Some(id.clone()),
        ..TaskFilter::default()
    }
}

impl Sort {
    /// [`Sort::apply`] to the rows of a listing (an array's row by the
    /// earliest status of its tasks listed, and their one worker).
    fn apply_rows(self, rows: &mut [output::Listed]) {
        match self {
            Sort::Newest => {}
            Sort::Oldest => rows.reverse(),
            Sort::Status => rows.sort_by_key(output::Listed::status),
            Sort::Worker => rows.sort_by(|a, b| a.worker().cmp(&b.worker())),
        }
    }
}
