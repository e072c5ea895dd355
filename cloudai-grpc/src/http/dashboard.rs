//! The master's dashboard: one static page (built into the binary, no
//! JavaScript toolchain) over a small JSON API, with live updates from the
//! event stream and a task's output, both as server-sent events.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the page (overview, task list, task page) |
//! | `GET /api/session` | the session's CSRF token |
//! | `GET /api/overview` | counts by status and the workers |
//! | `GET /api/tasks?status=&worker=&array=&name=&label=k=v&after=&limit=` | a page of tasks, newest first, with `next` |
//! | `GET /api/tasks?...&collapse=true` | a page of `rows`, each a task or the tasks of one array read (with the array's counts by status) |
//! | `GET /api/tasks/{id}` | a task with its result, its attempts and waiting reason |
//! | `GET /api/tasks/{id}/output?offset=` | its output as it is written (SSE) |
//! | `POST /api/tasks/{id}/cancel` | cancel it |
//! | `POST /api/workers/{id}/drain?deadline=` and `/undrain` | drain, undrain |
//! | `GET /api/events` | the event stream (SSE; `Last-Event-ID` resumes) |

use std::convert::Infallible;
use std::pin::Pin;

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, KeepAliveStream, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine;
use cloudai_core::events::Resync;
use cloudai_core::master::{short_reason, CancelOutcome, Cursor, Master, Serving, MAX_PAGE};
use cloudai_core::model::{
    parse_duration, parse_label, ArrayId, ArrayIndices, TaskId, TaskRecord, TaskStatus, Timestamp,
    ValidationError, WorkerId,
};
use cloudai_core::output::{OutputFrom, OutputStream};
use cloudai_core::store::{PageKey, TaskFilter};
use cloudai_core::Error;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};

use super::gate::SessionInfo;
use crate::events::{to_json, watch_stream};
use crate::relay::{relay, Relayed};

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE: &str = include_str!("assets/style.css");

/// Tasks on one page of the list unless asked otherwise.
const PAGE: usize = 50;
/// Most tasks one collapsed page reads to fill its rows.
const COLLAPSE_SCAN: usize = 1000;

pub(super) fn routes(master: Serving) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/assets/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/api/session", get(session))
        .route("/api/overview", get(overview))
        .route("/api/tasks", get(tasks))
        .route("/api/tasks/{id}", get(task))
        .route("/api/tasks/{id}/output", get(output))
        .route("/api/tasks/{id}/cancel", post(cancel))
        .route("/api/workers/{id}/drain", post(drain))
        .route("/api/workers/{id}/undrain", post(undrain))
        .route("/api/events", get(events))
        .with_state(master)
}

/// Only this origin's scripts, styles and connections, and never inside
/// another site's frame.
pub(super) const CSP: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'";

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The master acting now, for a handler; a follower answers 503 with
/// who leads, as its probe does, and shows that instead of the cluster.
struct Acting(Master);

impl FromRequestParts<Serving> for Acting {
    type Rejection = Failed;

    async fn from_request_parts(_: &mut Parts, serving: &Serving) -> Result<Self, Failed> {
        serving.master().map(Acting).map_err(|e| {
            let following = match serving {
                Serving::Elected(l) => l.following(),
                Serving::One(_) => None,
            };
            Failed(following.map_or(e, Error::Unavailable))
        })
    }
}

/// A failed call: its status code and `{"error": message}`.
struct Failed(Error);

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed(e)
    }
}

impl From<cloudai_core::model::ValidationError> for Failed {
    fn from(e: cloudai_core::model::ValidationError) -> Self {
        Failed(e.into())
    }
}

impl IntoResponse for Failed {
    fn into_response(self) -> Response {
        let code = match &self.0 {
            Error::NotFound { .. } | Error::Expired { .. } => StatusCode::NOT_FOUND,
            Error::InvalidInput(_) => StatusCode::BAD_REQUEST,
            Error::Conflict(_) | Error::AlreadyExists { .. } | Error::InUse(_) => {
                StatusCode::CONFLICT
            }
            Error::Unavailable(_) | Error::NotLeader { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Error::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (code, Json(json!({ "error": self.0.to_string() }))).into_response()
    }
}

type Answer = Result<Json<Value>, Failed>;

async fn session(info: Option<Extension<SessionInfo>>) -> Json<Value> {
    Json(json!({ "csrf": info.map(|Extension(s)| s.csrf) }))
}

async fn overview(Acting(master): Acting) -> Answer {
    let counts = master.task_counts().await?;
    let workers: Vec<Value> = master
        .workers()
        .iter()
        .map(|w| {
            json!({
                "id": w.id.as_str(),
                "address": w.address,
                "health": w.health.as_str(),
                "drain": w.drain_state(),
                "registered": w.registered,
                "tasks": w.tasks.len(),
                "cpu": [w.allocated.cpu_cores(), w.capacity.cpu_cores()],
                "memory_gb": [w.allocated.memory_gb(), w.capacity.memory_gb()],
                "gpus": [w.allocated.gpus, w.capacity.gpus],
                "gpu_devices": w.gpus.iter().map(|g| json!({
                    "index": g.gpu.index,
                    "uuid": g.gpu.uuid,
                    "task": g.task,
                })).collect::<Vec<_>>(),
                "last_heartbeat": w.last_heartbeat,
                "labels": w.labels,
            })
        })
        .collect();
    Ok(Json(json!({ "counts": counts, "workers": workers })))
}

/// A task as the list and the task page show it: the record (its
/// attempts without their kept output), why it waits (the sentence and
/// its word), its request, and its current or last run (`run`).
fn task_json(task: &TaskRecord, waiting: Option<String>) -> Value {
    let mut v = serde_json::to_value(task).unwrap_or(Value::Null);
    if let Some(history) = v.get_mut("history").and_then(Value::as_array_mut) {
        for attempt in history.iter_mut().filter_map(Value::as_object_mut) {
            attempt.remove("logs");
        }
    }
    v["waiting"] = json!(waiting);
    v["reason_word"] = json!(waiting.as_deref().map(short_reason));
    let r = &task.spec.resources;
    v["requested"] = json!({ "cpu": r.cpu_cores(), "memory_gb": r.memory_gb(), "gpus": r.gpus });
    v["run"] = run_json(task);
    v
}

/// A task's current or last run: a running one's from its assignment, a
/// final one's last attempt (or only its end if none ran); `null` for a
/// pending one. Times in ms since the epoch; `exit` is the code or the
/// signal (its number).
fn run_json(t: &TaskRecord) -> Value {
    match t.status {
        TaskStatus::Pending => Value::Null,
        TaskStatus::Running => json!({ "started_at": t.assigned_at, "ended_at": null }),
        TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled => {
            match t.history.last() {
                Some(a) => json!({
                    "started_at": a.started_at.or(t.assigned_at),
                    "ended_at": Some(a.ended_at).filter(|e| *e != Timestamp::ZERO).or(t.finished_at),
                    "exit_code": a.exit_code,
                    "signal": a.signal,
                }),
                None => json!({ "started_at": null, "ended_at": t.finished_at }),
            }
        }
    }
}

#[derive(Deserialize)]
struct TaskQuery {
    status: Option<String>,
    worker: Option<String>,
    array: Option<String>,
    name: Option<String>,
    /// `k=v`.
    label: Option<String>,
    after: Option<String>,
    limit: Option<usize>,
    /// Each array's tasks read as one row: `rows`, not `tasks`.
    #[serde(default)]
    collapse: bool,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

async fn tasks(Acting(master): Acting, Query(q): Query<TaskQuery>) -> Answer {
    let statuses = match nonempty(q.status) {
        None => Vec::new(),
        Some(s) => vec![s.parse::<TaskStatus>()?],
    };
    let filter = TaskFilter {
        statuses,
        worker: nonempty(q.worker).map(WorkerId::new).transpose()?,
        array: nonempty(q.array).map(ArrayId::new).transpose()?,
        name: nonempty(q.name),
        labels: nonempty(q.label)
            .map(|l| parse_label(&l))
            .transpose()?
            .into_iter()
            .collect(),
    };
    let after = nonempty(q.after)
        .map(|a| a.parse::<PageKey>())
        .transpose()?;
    let limit = q.limit.unwrap_or(PAGE).clamp(1, MAX_PAGE);
    if q.collapse {
        let (rows, next) = collapsed(&master, &filter, after, limit).await?;
        return Ok(Json(
            json!({ "rows": rows, "next": next.map(|k| k.to_string()) }),
        ));
    }
    let (page, next) = master.page(&filter, after.as_ref(), limit).await?;
    let waiting = master.waiting_each(&page);
    let rows: Vec<Value> = page
        .iter()
        .zip(waiting)
        .map(|(t, waiting)| task_json(t, waiting))
        .collect();
    Ok(Json(
        json!({ "tasks": rows, "next": next.map(|k| k.to_string()) }),
    ))
}

/// Up to `limit` rows of the list, newest first after `after`: each a
/// task (`{"task": ...}`) or the tasks of one array read together
/// (`{"array": ...}`, see [`array_json`]); pages are read until the rows
/// are filled, the tasks run out or [`COLLAPSE_SCAN`] were read. The
/// key for the next page follows the last task a row holds, so an array
/// cut there goes on in the next page's first row.
async fn collapsed(
    master: &Master,
    filter: &TaskFilter,
    mut after: Option<PageKey>,
    limit: usize,
) -> Result<(Vec<Value>, Option<PageKey>), Error> {
    let per_page = limit.clamp(100, MAX_PAGE);
    let mut groups: Vec<(Option<ArrayId>, Vec<TaskRecord>)> = Vec::new();
    let mut read = 0;
    // The key after the last task a row holds.
    let mut last = None;
    let next = 'reading: loop {
        let (page, next) = master.page(filter, after.as_ref(), per_page).await?;
        read += page.len();
        for t in &page {
            let array = t.array.as_ref().map(|a| &a.id);
            let joins = array.and_then(|a| groups.iter().position(|(g, _)| g.as_ref() == Some(a)));
            match joins {
                Some(i) => groups[i].1.push(t.clone()),
                None if groups.len() == limit => break 'reading last,
                None => groups.push((array.cloned(), vec![t.clone()])),
            }
            last = Some(PageKey::after(t));
        }
        match next {
            Some(n) if read < COLLAPSE_SCAN => after = Some(n),
            next => break next,
        }
    };
    let all: Vec<TaskRecord> = groups
        .iter()
        .flat_map(|(_, ts)| ts.iter().cloned())
        .collect();
    let mut waiting = master.waiting_each(&all).into_iter();
    let mut rows = Vec::with_capacity(groups.len());
    for (array, members) in groups {
        let waits: Vec<Option<String>> = waiting.by_ref().take(members.len()).collect();
        rows.push(match array {
            None => json!({ "task": task_json(&members[0], waits.into_iter().next().flatten()) }),
            Some(id) => {
                let counts = master
                    .count_matching(&TaskFilter {
                        array: Some(id.clone()),
                        ..TaskFilter::default()
                    })
                    .await?;
                json!({ "array": array_json(&id, &members, &waits, counts) })
            }
        });
    }
    Ok((rows, next))
}

/// The value every item has, if they all have the same.
fn shared<T: PartialEq>(mut items: impl Iterator<Item = T>) -> Option<T> {
    let first = items.next()?;
    items.all(|i| i == first).then_some(first)
}

/// The value most of `items` have (the first such in order of value).
fn commonest<'a>(items: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let mut each = std::collections::BTreeMap::<&str, usize>::new();
    for i in items {
        *each.entry(i).or_default() += 1;
    }
    let most = each.values().copied().max()?;
    each.into_iter().find(|(_, n)| *n == most).map(|(i, _)| i)
}

/// An array's row: its id, the indices of its `members` read (as Slurm
/// writes them, `1-40`), how many, the name and request they share, the
/// whole array's `counts` by status; the workers they ran on, their first
/// start and (none pending or running) last end; the commonest waiting
/// word among those pending (`waits`, theirs in order) and the commonest
/// reason among those failed.
fn array_json(
    id: &ArrayId,
    members: &[TaskRecord],
    waits: &[Option<String>],
    counts: cloudai_core::model::StatusCounts,
) -> Value {
    let mut each: Vec<u32> = members
        .iter()
        .filter_map(|t| t.array.as_ref().map(|a| a.index))
        .collect();
    each.sort_unstable();
    each.dedup();
    let list = each
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let indices = list
        .parse::<ArrayIndices>()
        .map(|i| i.to_string())
        .unwrap_or(list);
    let workers: std::collections::BTreeSet<&str> = members
        .iter()
        .filter_map(|t| t.worker.as_ref().map(|w| w.as_str()))
        .collect();
    let runs: Vec<Value> = members.iter().map(run_json).collect();
    let times = |key: &str| -> Vec<u64> {
        runs.iter()
            .filter_map(|r| r.get(key).and_then(Value::as_u64))
            .collect()
    };
    let live = members.iter().any(|t| !t.status.is_terminal());
    let started = times("started_at").into_iter().min();
    let ended = times("ended_at")
        .into_iter()
        .max()
        .filter(|_| !live && started.is_some());
    let reason_word = commonest(
        members
            .iter()
            .zip(waits)
            .filter(|(t, _)| t.status == TaskStatus::Pending)
            .filter_map(|(_, w)| w.as_deref().map(short_reason)),
    );
    let failure = commonest(
        members
            .iter()
            .filter(|t| t.status == TaskStatus::Failed)
            .filter_map(|t| t.reason.as_deref()),
    );
    let request = shared(members.iter().map(|t| t.spec.resources));
    json!({
        "id": id,
        "indices": indices,
        "listed": members.len(),
        "name": shared(members.iter().map(|t| t.spec.name.as_deref())).flatten(),
        "limit": members.iter().find_map(|t| t.array.as_ref().and_then(|a| a.limit)),
        "counts": counts,
        "requested": request.map(|r| json!({ "cpu": r.cpu_cores(), "memory_gb": r.memory_gb(), "gpus": r.gpus })),
        "workers": workers,
        "started_at": started,
        "ended_at": ended,
        "reason_word": reason_word,
        "failure": failure,
    })
}

async fn task(Acting(master): Acting, Path(id): Path<String>) -> Answer {
    let view = master.task(&TaskId::new(id)?).await?;
    let mut v = task_json(&view.task, view.waiting);
    v["result"] = serde_json::to_value(&view.result).unwrap_or(Value::Null);
    // The task page's spelling of its constraints and dependencies, as
    // the CLI's flags write them.
    let spec = &view.task.spec;
    v["constraints_text"] = json!(spec
        .constraints
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>());
    v["dependencies"] = json!(spec
        .after
        .iter()
        .map(|d| json!({ "condition": d.condition.as_str(), "task": d.task }))
        .collect::<Vec<_>>());
    Ok(Json(v))
}

async fn cancel(Acting(master): Acting, Path(id): Path<String>) -> Answer {
    let outcome = master.cancel(&TaskId::new(id)?, false).await?;
    let said = match outcome {
        CancelOutcome::Dequeued => json!({ "outcome": "dequeued" }),
        CancelOutcome::Stopped { worker } => {
            json!({ "outcome": "stopped", "worker": worker.as_str() })
        }
        CancelOutcome::StopPending { worker, error } => {
            json!({ "outcome": "stop_pending", "worker": worker.as_str(), "error": error })
        }
    };
    Ok(Json(said))
}

#[derive(Deserialize)]
struct DrainQuery {
    /// From now until tasks still running are stopped (`600`, `10m`).
    deadline: Option<String>,
}

async fn drain(
    Acting(master): Acting,
    Path(id): Path<String>,
    Query(q): Query<DrainQuery>,
) -> Answer {
    let deadline = q
        .deadline
        .as_deref()
        .map(parse_duration)
        .transpose()
        .map_err(|reason| ValidationError::Invalid {
            field: "deadline",
            reason,
        })?;
    master.drain(&WorkerId::new(id)?, deadline).await?;
    Ok(Json(json!({ "drained": true })))
}

async fn undrain(Acting(master): Acting, Path(id): Path<String>) -> Answer {
    master.undrain(&WorkerId::new(id)?).await?;
    Ok(Json(json!({ "drained": false })))
}

type Events = Sse<KeepAliveStream<ReceiverStream<Result<SseEvent, Infallible>>>>;

/// `events` as server-sent events, relayed so that a client going away
/// lets go of the source at once.
fn sse(events: impl Stream<Item = Relayed<SseEvent>> + Send + 'static) -> Events {
    let events = events.map(|e| e.map(Ok));
    Sse::new(ReceiverStream::new(relay(events, 64))).keep_alive(KeepAlive::default())
}

/// The event stream, each event with its cursor as the SSE id (so a
/// reconnecting `EventSource` resumes after it); a cursor that cannot be
/// resumed gets one `resync` event and the end.
async fn events(Acting(master): Acting, headers: HeaderMap) -> Result<Events, Failed> {
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::parse::<Cursor>)
        .transpose()?;
    let resync =
        |why: Resync| Relayed::Last(SseEvent::default().event("resync").data(why.to_string()));
    let events: Pin<Box<dyn Stream<Item = _> + Send>> = match master.watch_events(from.as_ref()) {
        Err(why) => Box::pin(tokio_stream::once(resync(why))),
        Ok(watch) => {
            let epoch = watch.cursor().epoch;
            Box::pin(watch_stream(watch).map(move |next| match next {
                Err(why) => resync(why),
                Ok(e) => {
                    let cursor = Cursor {
                        epoch: epoch.clone(),
                        seq: e.seq,
                    };
                    Relayed::More(
                        SseEvent::default()
                            .id(cursor.to_string())
                            .data(to_json(&e.kind).to_string()),
                    )
                }
            }))
        }
    };
    Ok(sse(events))
}

#[derive(Deserialize)]
struct OutputQuery {
    offset: Option<u64>,
}

/// A task's output from `offset`, following until it ends: each chunk an
/// event of `{attempt, offset, stream, data}` (data in base64, so bytes
/// split across chunks stay exact), then an `end` event.
async fn output(
    Acting(master): Acting,
    Path(id): Path<String>,
    Query(q): Query<OutputQuery>,
) -> Result<Events, Failed> {
    let id = TaskId::new(id)?;
    let follow = master
        .follow_output(&id, OutputFrom::Offset(q.offset.unwrap_or(0)), true)
        .await?;
    let chunks = ReceiverStream::new(follow).map(|item| match item {
        Err(e) => Relayed::Last(SseEvent::default().event("failed").data(e.to_string())),
        Ok(o) => {
            let stream = match o.chunk.stream {
                OutputStream::Stdout => "stdout",
                OutputStream::Stderr => "stderr",
            };
            let data = base64::engine::general_purpose::STANDARD.encode(&o.chunk.data);
            let chunk = json!({ "attempt": o.attempt, "offset": o.chunk.offset, "stream": stream, "data": data });
            Relayed::More(SseEvent::default().data(chunk.to_string()))
        }
    });
    let end = Relayed::Last(SseEvent::default().event("end").data("end"));
    Ok(sse(chunks.chain(tokio_stream::once(end))))
}
