//! [`MongoStore`]: CloudAI-rs's [`TaskStore`] and [`WorkerRegistry`] on
//! MongoDB, through the official `mongodb` driver (tokio).
//!
//! ```no_run
//! # async fn demo() -> cloudai_core::Result<()> {
//! use std::sync::Arc;
//! use cloudai_mongo::{MongoConfig, MongoStore};
//!
//! let store = Arc::new(MongoStore::connect(MongoConfig::new("mongodb://127.0.0.1:27017", "cloudai")).await?);
//! // `store` is both the master's TaskStore and its WorkerRegistry.
//! # Ok(()) }
//! ```
//!
//! # Schema
//!
//! | collection | `_id` | holds |
//! |---|---|---|
//! | [`TASKS`] | task id | the task: spec, `status`, the assignment (`worker`, `attempt`), `reason`, times |
//! | [`RESULTS`] | task id | the one result of a task |
//! | [`WORKERS`] | worker id | address, capacity, `registered_at`, `last_heartbeat`, telemetry |
//! | [`ASSIGNMENTS`] | generated | append-only placement history `{task_id, worker, attempt, at, term}` |
//! | [`REQUESTS`] | request id | what a submit under a client's request id made, and its spec's hash |
//! | [`LEASE`] | `"master"` | the leader lease `{holder, run, address, term, version, ttl_ms}`, in the database `<database>-lease` |
//!
//! The lease has a database of its own so that a server that locks per
//! database (nx-27017, the test server) never holds a renewal behind a
//! burst of task and worker writes: a leader that misses its renewals
//! under load steps down, and the next one, loading under the same load,
//! would miss them too.
//!
//! Task and worker documents carry a `fence`: the highest term that wrote
//! or raised them. Every write through a handle of term T
//! ([`TaskStore::fenced`]) is filtered on `fence ≤ T` (or no fence yet)
//! and sets `fence` to T, so a deposed master's late write changes
//! nothing; it fails with [`Error::Fenced`].
//!
//! Numbers are int64 (timestamps in milliseconds since the epoch). Indexes,
//! created by [`MongoStore::connect`]: TASKS on `status`, on `worker` and on
//! `created_at`; ASSIGNMENTS on `task_id`. The task id as `_id` is the unique
//! index that makes task and result inserts insert-if-absent.
//!
//! # Guarantees
//!
//! - [`TaskStore::update_status`] is one filtered `findOneAndUpdate`
//!   (`_id`, `status ∈ allowed_from`, and the expected worker and attempt):
//!   the status and the assignment change in the same single-document write,
//!   so the compare-and-set holds with any number of masters or callers.
//! - [`TaskStore::insert_result`] is an `insertOne` on `_id`; a duplicate
//!   key means another result was first.
//! - A worker's `last_heartbeat` only moves forward: each write is
//!   conditional on the stored value being older or absent.
//!
//! # Errors
//!
//! Server selection, network and shutdown errors become
//! [`Error::Unavailable`] (the driver reconnects by itself; the next call
//! after the server is back succeeds); an operation that outlives
//! [`MongoConfig::operation_timeout`] becomes [`Error::Timeout`] (its outcome
//! is unknown); other driver errors become [`Error::Backend`].

mod errors;
mod records;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::time::Duration;

use async_trait::async_trait;
use cloudai_core::model::{
    Drain, Heartbeat, StatusCounts, TaskId, TaskRecord, TaskResult, TaskStatus, Term, Timestamp,
    ValidationError, WorkerId, WorkerRecord,
};
use cloudai_core::store::{
    Assignment, CasOutcome, InsertOutcome, LeaseRecord, LeaseStore, PageKey, RequestClaim,
    StatusChange, TaskFilter, TaskStore, WorkerGuard, WorkerRegistry,
};
use cloudai_core::{Error, Result};
use mongodb::bson::{self, doc, Bson, Document};
use mongodb::options::{ClientOptions, ReturnDocument};
use mongodb::{Client, Collection, Database, IndexModel};
use std::sync::Arc;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use records::{
    AssignmentDoc, AttemptDoc, DrainDoc, GpuDoc, LeaseDoc, RequestDoc, ResourcesDoc, ResultDoc,
    TaskDoc, TelemetryDoc, WorkerDoc,
};

/// Tasks: `_id` is the task id.
pub const TASKS: &str = "TASKS";
/// Results: `_id` is the task id.
pub const RESULTS: &str = "RESULTS";
/// Append-only placement history.
pub const ASSIGNMENTS: &str = "ASSIGNMENTS";
/// Workers: `_id` is the worker id.
pub const WORKERS: &str = "WORKERS";
/// Submits by request id: `_id` is the client's request id.
pub const REQUESTS: &str = "REQUESTS";
/// The leader lease: one document, `_id: "master"`.
pub const LEASE: &str = "LEASE";

/// How many documents one `raise_fence` write covers.
const RAISE_BATCH: usize = 1_000;
/// How many times [`TaskStore::update_status`] re-tries its compare-and-set
/// when the record changed between a rejected write and the read that
/// explains it (so that a `Rejected` always carries a record the guard
/// refuses). Reached only under a pathological write storm on one task.
const CAS_RETRIES: usize = 64;
/// How many heartbeat writes run at once within one batch.
const HEARTBEAT_CONCURRENCY: usize = 16;

/// Where and how to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MongoConfig {
    /// A `mongodb://` connection string. Options it sets itself (for example
    /// `serverSelectionTimeoutMS`) win over the fields below.
    /// (`mongodb+srv://` needs DNS SRV look-ups, which this build leaves out.)
    pub uri: String,
    /// The database holding the four collections.
    pub database: String,
    /// Bound on opening one connection (default 5 s).
    pub connect_timeout: Duration,
    /// Bound on finding a usable server for an operation (default 5 s). While
    /// the database is down, each call fails with [`Error::Unavailable`]
    /// after this long.
    pub server_selection_timeout: Duration,
    /// Bound on one whole store call, for a server that accepts connections
    /// but does not answer (default 30 s). Past it the call fails with
    /// [`Error::Timeout`]: the write may or may not have happened.
    pub operation_timeout: Duration,
}

impl MongoConfig {
    /// The default database name.
    pub const DEFAULT_DATABASE: &'static str = "cloudai";

    /// `uri` and `database` with the default timeouts.
    pub fn new(uri: impl Into<String>, database: impl Into<String>) -> Self {
        MongoConfig {
            uri: uri.into(),
            database: database.into(),
            connect_timeout: Duration::from_secs(5),
            server_selection_timeout: Duration::from_secs(5),
            operation_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig::new("mongodb://127.0.0.1:27017", Self::DEFAULT_DATABASE)
    }
}

/// One entry of the placement history (see [`MongoStore::assignment_history`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssignmentEntry {
    /// The worker the task was placed on.
    pub worker: WorkerId,
    /// The attempt this placement started.
    pub attempt: u32,
    /// When.
    pub at: Timestamp,
}

/// Tasks, results and workers in one MongoDB database. Cheap to share as
/// `Arc<MongoStore>`; it holds one driver [`Client`] (a connection pool
/// that reconnects by itself) and no other state, so nothing goes stale
/// while the server is away.
#[derive(Debug, Clone)]
pub struct MongoStore {
    db: Database,
    /// Where the lease lives: `<database>-lease`.
    lease_db: Database,
    tasks: Collection<TaskDoc>,
    results: Collection<ResultDoc>,
    assignments: Collection<AssignmentDoc>,
    workers: Collection<WorkerDoc>,
    requests: Collection<RequestDoc>,
    lease: Collection<LeaseDoc>,
    /// The term this handle's writes carry (0: a plain handle).
    term: Term,
    /// `host:port` list for messages (never the URI, which may hold a password).
    hosts: String,
    operation_timeout: Duration,
}

/// The database the lease of the masters on `database` lives in.
fn lease_database(database: &str) -> String {
    format!("{database}-lease")
}

fn check_database_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(ValidationError::Empty {
            field: "MongoDB database",
        }
        .into());
    }
    if name.len() > 63 {
        return Err(ValidationError::TooLarge {
            field: "MongoDB database",
            value: format!("{} bytes", name.len()),
            limit: "63 bytes".into(),
        }
        .into());
    }
    if let Some(found) = name
        .chars()
        .find(|c| matches!(c, '/' | '\\' | '.' | ' ' | '"' | '$' | '\0'))
    {
        return Err(ValidationError::BadCharacter {
            field: "MongoDB database",
            found,
        }
        .into());
    }
    Ok(())
}

impl MongoStore {
    /// Connects, checks that the server answers (`ping`) and creates the
    /// indexes. [`Error::Unavailable`] if no server answers within the
    /// server selection timeout; [`Error::InvalidInput`] for a malformed URI
    /// or database name.
    pub async fn connect(config: MongoConfig) -> Result<MongoStore> {
        check_database_name(&config.database)?;
        let lease_db = lease_database(&config.database);
        check_database_name(&lease_db)?;
        let mut options = ClientOptions::parse(config.uri.as_str())
            .await
            .map_err(|e| {
                Error::InvalidInput(ValidationError::Invalid {
                    field: "MongoDB URI",
                    reason: e.kind.to_string(),
                })
            })?;
        options
            .connect_timeout
            .get_or_insert(config.connect_timeout);
        options
            .server_selection_timeout
            .get_or_insert(config.server_selection_timeout);
        options.app_name.get_or_insert_with(|| "cloudai".into());
        let hosts = options
            .hosts
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",");
        let client = Client::with_options(options).map_err(|e| errors::map(e, &hosts))?;
        let db = client.database(&config.database);
        let lease_db = client.database(&lease_db);
        let store = MongoStore {
            tasks: db.collection(TASKS),
            results: db.collection(RESULTS),
            assignments: db.collection(ASSIGNMENTS),
            workers: db.collection(WORKERS),
            requests: db.collection(REQUESTS),
            lease: lease_db.collection(LEASE),
            term: Term::ZERO,
            db,
            lease_db,
            hosts,
            operation_timeout: config.operation_timeout,
        };
        store.op(store.db.run_command(doc! { "ping": 1 })).await?;
        store.create_indexes().await?;
        debug!(hosts = %store.hosts, database = %config.database, "connected to MongoDB");
        Ok(store)
    }

    async fn create_indexes(&self) -> Result<()> {
        // No compound index that includes `_id`: nx-27017 (the test server)
        // then refuses every insert. Ties in `list_tasks` order are few.
        for key in [
            "status",
            "worker",
            "created_at",
            "finished_at",
            "array",
            "spec.name",
            "spec.labels",
        ] {
            self.op(self
                .tasks
                .create_index(IndexModel::builder().keys(doc! { key: 1 }).build()))
                .await?;
        }
        self.op(self
            .assignments
            .create_index(IndexModel::builder().keys(doc! { "task_id": 1 }).build()))
            .await?;
        self.op(self
            .requests
            .create_index(IndexModel::builder().keys(doc! { "at": 1 }).build()))
            .await?;
        Ok(())
    }

    /// This handle's term, as stored.
    fn fence(&self) -> i64 {
        i64::try_from(self.term.get()).unwrap_or(i64::MAX)
    }

    /// The filter clause a fenced write adds: the document's fence is at
    /// most this handle's term, or it has none yet (written before masters
    /// had terms). `$exists` rather than `$not`, which nx-27017 lacks.
    fn within_fence(&self) -> Document {
        doc! { "$or": [
            { "fence": { "$lte": self.fence() } },
            { "fence": { "$exists": false } },
        ] }
    }

    /// Explains a fenced write of document `id` in `collection` that
    /// matched nothing: [`Error::Fenced`] when the document is fenced
    /// above this handle's term, else whether it exists.
    async fn exists_unfenced<T: Send + Sync>(
        &self,
        collection: &Collection<T>,
        id: &str,
    ) -> Result<bool> {
        let found = self
            .op(collection
                .clone_with_type::<Document>()
                .find_one(doc! { "_id": id })
                .projection(doc! { "fence": 1 }))
            .await?;
        let Some(d) = found else {
            return Ok(false);
        };
        self.check_fence(&d)?;
        Ok(true)
    }

    /// [`Error::Fenced`] if document `d` is fenced above this handle.
    fn check_fence(&self, d: &Document) -> Result<()> {
        let fence = match d.get("fence") {
            Some(Bson::Int64(f)) => *f,
            Some(Bson::Int32(f)) => i64::from(*f),
            _ => return Ok(()),
        };
        if fence > self.fence() {
            return Err(Error::Fenced {
                writer: self.term,
                fence: Term::new(u64::try_from(fence).unwrap_or(u64::MAX)),
            });
        }
        Ok(())
    }

    /// Raises `fence` to `term` on the documents of `collection` that
    /// `select` picks: their ids read in one pass (a cursor: the server
    /// serves other commands between its batches), then raised at most
    /// [`RAISE_BATCH`] per write, so that no write holds the database long
    /// (a lease renewal waits at most one batch on a server that locks per
    /// database). Returns how many it covered.
    async fn raise_in(
        &self,
        collection: &Collection<Document>,
        select: Document,
        term: i64,
    ) -> Result<u64> {
        let mut cursor = self
            .op(collection
                .find(select)
                .projection(doc! { "_id": 1 })
                .batch_size(RAISE_BATCH as u32))
            .await?;
        let mut ids: Vec<String> = Vec::new();
        while self.op(cursor.advance()).await? {
            let d = self.driver(cursor.deserialize_current())?;
            if let Ok(id) = d.get_str("_id") {
                ids.push(id.to_owned());
            }
        }
        for batch in ids.chunks(RAISE_BATCH) {
            self.op(collection.update_many(
                doc! { "_id": { "$in": batch } },
                doc! { "$max": { "fence": term } },
            ))
            .await?;
        }
        Ok(ids.len() as u64)
    }

    /// The database's name.
    pub fn database_name(&self) -> &str {
        self.db.name()
    }

    /// Drops the whole database, and the lease's (tests, benchmarks).
    pub async fn drop_database(&self) -> Result<()> {
        self.op(self.lease_db.drop()).await?;
        self.op(self.db.drop()).await
    }

    /// The placement history of a task, oldest first. For audits and
    /// tests only: it is written best-effort after each assignment and never
    /// used for decisions.
    pub async fn assignment_history(&self, id: &TaskId) -> Result<Vec<AssignmentEntry>> {
        let mut cursor = self
            .op(self
                .assignments
                .find(doc! { "task_id": id.as_str() })
                .sort(doc! { "attempt": 1 }))
            .await?;
        let mut out = Vec::new();
        while self.op(cursor.advance()).await? {
            let d = self.driver(cursor.deserialize_current())?;
            out.push(AssignmentEntry {
                worker: d.worker,
                attempt: u32::try_from(d.attempt).map_err(records::corrupt)?,
                at: Timestamp::from_millis(u64::try_from(d.at).map_err(records::corrupt)?),
            });
        }
        Ok(out)
    }

    /// Runs one driver operation under the operation timeout, keeping the
    /// driver's error for the caller to inspect (duplicate keys).
    async fn raw<T, F>(&self, f: F) -> Result<mongodb::error::Result<T>>
    where
        F: IntoFuture<Output = mongodb::error::Result<T>>,
    {
        tokio::time::timeout(self.operation_timeout, f.into_future())
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "MongoDB at {} did not answer within {:?}",
                    self.hosts, self.operation_timeout
                ))
            })
    }

    /// Runs one driver operation with every error mapped.
    async fn op<T, F>(&self, f: F) -> Result<T>
    where
        F: IntoFuture<Output = mongodb::error::Result<T>>,
    {
        self.raw(f).await?.map_err(|e| errors::map(e, &self.hosts))
    }

    fn driver<T>(&self, r: mongodb::error::Result<T>) -> Result<T> {
        r.map_err(|e| errors::map(e, &self.hosts))
    }

    async fn find_task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        self.op(self.tasks.find_one(doc! { "_id": id.as_str() }))
            .await?
            .map(TaskDoc::into_core)
            .transpose()
    }

    async fn record_assignment(&self, id: &TaskId, worker: &WorkerId, attempt: u32, at: i64) {
        let entry = AssignmentDoc {
            task_id: id.clone(),
            worker: worker.clone(),
            attempt: i64::from(attempt),
            at,
            term: self.fence(),
        };
        if let Err(e) = self.op(self.assignments.insert_one(entry)).await {
            warn!(task = %id, %worker, attempt, error = %e, "could not append to the assignment history");
        }
    }

    /// One heartbeat, written only if it is not older than the stored one.
    /// Returns whether a worker document took it.
    ///
    /// Conditional writes (`last_heartbeat <= at`; else, for a first beat,
    /// `last_heartbeat == null`; else `<= at` once more) instead of one
    /// `$or` filter, which nx-27017 evaluates wrongly with `null`. Each write
    /// is a compare-and-set, so the time never moves backwards. The third
    /// try covers a concurrent first beat landing between the first two: a
    /// stored time never goes back to `null`, so after it a miss means the
    /// stored beat is newer (or the worker is unknown). The usual case, a
    /// worker that has beaten before, costs one write.
    async fn beat(
        workers: &Collection<WorkerDoc>,
        beat: &Heartbeat,
        within_fence: Document,
        term: i64,
    ) -> Result<mongodb::error::Result<bool>> {
        let at = records::ts("heartbeat time", beat.at)?;
        let telemetry = mongodb::bson::serialize_to_bson(&TelemetryDoc::from_core(
            &beat.telemetry,
        )?)
        .map_err(|e| Error::Backend {
            backend: "mongodb",
            source: Box::new(e),
        })?;
        let update =
            doc! { "$set": { "last_heartbeat": at, "telemetry": telemetry, "fence": term } };
        let id = beat.worker.as_str();
        let mut newer = doc! { "_id": id, "last_heartbeat": { "$lte": at } };
        let mut first = doc! { "_id": id, "last_heartbeat": Bson::Null };
        newer.extend(within_fence.clone());
        first.extend(within_fence);
        for filter in [newer.clone(), first, newer] {
            match workers.update_one(filter, update.clone()).await {
                Ok(r) if r.matched_count > 0 => return Ok(Ok(true)),
                Ok(_) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(false))
    }
}

/// The query for `filter`'s tasks.
fn query(filter: &TaskFilter) -> Document {
    let mut q = Document::new();
    if !filter.statuses.is_empty() {
        let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_str()).collect();
        q.insert("status", doc! { "$in": statuses });
    }
    if let Some(w) = &filter.worker {
        q.insert("worker", w.as_str());
    }
    if let Some(a) = &filter.array {
        q.insert("array", a.as_str());
    }
    if let Some(n) = &filter.name {
        q.insert("spec.name", n.as_str());
    }
    if !filter.labels.is_empty() {
        let labels: Vec<String> = filter
            .labels
            .iter()
            .map(|(k, v)| records::label_text(k, v))
            .collect();
        q.insert("spec.labels", doc! { "$all": labels });
    }
    q
}

impl MongoStore {
    async fn find_tasks(
        &self,
        q: Document,
        sort: Document,
        limit: Option<i64>,
    ) -> Result<Vec<TaskRecord>> {
        let mut find = self.tasks.find(q).sort(sort);
        if let Some(n) = limit {
            find = find.limit(n);
        }
        let mut cursor = self.op(find).await?;
        let mut out = Vec::new();
        while self.op(cursor.advance()).await? {
            out.push(self.driver(cursor.deserialize_current())?.into_core()?);
        }
        Ok(out)
    }
}

#[async_trait]
impl TaskStore for MongoStore {
    fn fenced(&self, term: Term) -> Arc<dyn TaskStore> {
        Arc::new(MongoStore {
            term,
            ..self.clone()
        })
    }

    async fn claim_request(&self, claim: RequestClaim) -> Result<Option<RequestClaim>> {
        let doc = RequestDoc::from_core(&claim)?;
        match self.raw(self.requests.insert_one(doc)).await? {
            Ok(_) => return Ok(None),
            Err(e) if errors::is_duplicate_key(&e) => {}
            Err(e) => return Err(errors::map(e, &self.hosts)),
        }
        let held = self
            .op(self
                .requests
                .find_one(doc! { "_id": claim.request.as_str() }))
            .await?
            .ok_or_else(|| {
                Error::Conflict(format!(
                    "request id {} was taken and then removed; submit again",
                    claim.request
                ))
            })?;
        held.into_core().map(Some)
    }

    async fn insert_task(&self, task: TaskRecord) -> Result<()> {
        let mut doc = TaskDoc::from_core(&task)?;
        doc.fence = Some(self.fence());
        match self.raw(self.tasks.insert_one(doc)).await? {
            Ok(_) => Ok(()),
            Err(e) if errors::is_duplicate_key(&e) => Err(Error::AlreadyExists {
                kind: "task",
                id: task.id.to_string(),
            }),
            Err(e) => Err(errors::map(e, &self.hosts)),
        }
    }

    async fn get_task(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        self.find_task(id).await
    }

    async fn insert_tasks(&self, tasks: Vec<TaskRecord>) -> Result<()> {
        let docs = tasks
            .iter()
            .map(|t| {
                let mut d = TaskDoc::from_core(t)?;
                d.fence = Some(self.fence());
                Ok(d)
            })
            .collect::<Result<Vec<_>>>()?;
        if docs.is_empty() {
            return Ok(());
        }
        match self.raw(self.tasks.insert_many(docs)).await? {
            Ok(_) => Ok(()),
            Err(e) if errors::is_duplicate_key(&e) => Err(Error::AlreadyExists {
                kind: "task",
                id: format!("in a batch of {}", tasks.len()),
            }),
            Err(e) => Err(errors::map(e, &self.hosts)),
        }
    }

    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>> {
        let sort = doc! { "created_at": 1, "_id": 1 };
        self.find_tasks(query(filter), sort, None).await
    }

    async fn page_tasks(
        &self,
        filter: &TaskFilter,
        after: Option<&PageKey>,
        limit: usize,
    ) -> Result<Vec<TaskRecord>> {
        let mut q = query(filter);
        if let Some(k) = after {
            let at = records::ts("cursor", k.created_at)?;
            q.insert(
                "$or",
                vec![
                    doc! { "created_at": { "$lt": at } },
                    doc! { "created_at": at, "_id": { "$lt": k.id.as_str() } },
                ],
            );
        }
        let sort = doc! { "created_at": -1, "_id": -1 };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.find_tasks(q, sort, Some(limit)).await
    }

    async fn update_status(&self, id: &TaskId, change: &StatusChange) -> Result<CasOutcome> {
        let at = records::ts("change time", change.at)?;
        let allowed: Vec<&str> = change.allowed_from.iter().map(|s| s.as_str()).collect();
        let mut filter = doc! { "_id": id.as_str(), "status": { "$in": allowed } };
        match &change.expected_worker {
            WorkerGuard::Any => {}
            // Matches a missing field too, as an unassigned task has.
            WorkerGuard::Unassigned => {
                filter.insert("worker", Bson::Null);
            }
            WorkerGuard::Is(w) => {
                filter.insert("worker", w.as_str());
            }
        }
        if let Some(a) = change.expected_attempt {
            filter.insert("attempt", i64::from(a));
        }
        filter.extend(self.within_fence());
        // Exactly what `StatusChange::apply_to` does, as one update.
        let mut set =
            doc! { "status": change.to.as_str(), "updated_at": at, "fence": self.fence() };
        let mut unset = Document::new();
        let mut update = Document::new();
        match &change.assignment {
            Assignment::Keep => {}
            Assignment::Set(w, gpus) => {
                set.insert("worker", w.as_str());
                set.insert("assigned_at", at);
                if gpus.is_empty() {
                    unset.insert("gpus", "");
                } else {
                    let gpus: Vec<i64> = gpus.iter().map(|g| i64::from(*g)).collect();
                    set.insert("gpus", gpus);
                }
                update.insert("$inc", doc! { "attempt": 1_i64 });
            }
            Assignment::Clear => {
                unset.insert("worker", "");
                unset.insert("gpus", "");
            }
        }
        match &change.reason {
            Some(r) => {
                set.insert("reason", r.as_str());
            }
            None => {
                unset.insert("reason", "");
            }
        }
        match change.not_before {
            Some(t) => {
                set.insert("not_before", records::ts("not before", t)?);
            }
            None => {
                unset.insert("not_before", "");
            }
        }
        if let Some(a) = &change.push {
            let entry = bson::serialize_to_bson(&AttemptDoc::from_core(a)?).map_err(|e| {
                Error::Backend {
                    backend: "mongodb",
                    source: Box::new(e),
                }
            })?;
            update.insert("$push", doc! { "history": entry });
        }
        if change.to.is_terminal() {
            set.insert("finished_at", at);
        }
        update.insert("$set", set);
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        for _ in 0..CAS_RETRIES {
            let before = self
                .op(self
                    .tasks
                    .find_one_and_update(filter.clone(), update.clone())
                    .return_document(ReturnDocument::Before))
                .await?;
            if let Some(before) = before {
                let before = before.into_core()?;
                if let Assignment::Set(w, _) = &change.assignment {
                    self.record_assignment(id, w, before.attempt.saturating_add(1), at)
                        .await;
                }
                return Ok(CasOutcome::Applied { before });
            }
            let current = self
                .op(self
                    .tasks
                    .clone_with_type::<Document>()
                    .find_one(doc! { "_id": id.as_str() }))
                .await?
                .ok_or_else(|| Error::not_found("task", id))?;
            self.check_fence(&current)?;
            let current: TaskDoc =
                bson::deserialize_from_document(current).map_err(|e| Error::Backend {
                    backend: "mongodb",
                    source: Box::new(e),
                })?;
            let current = current.into_core()?;
            if !change.admits(&current) {
                return Ok(CasOutcome::Rejected { current });
            }
            // The task changed between the write and the read into a state
            // the guard admits: the write did not happen, so try it again.
        }
        Err(Error::Conflict(format!(
            "task {id} changed under {CAS_RETRIES} consecutive compare-and-set attempts"
        )))
    }

    async fn insert_result(&self, result: TaskResult) -> Result<InsertOutcome> {
        let doc = ResultDoc::from_core(&result)?;
        match self.raw(self.results.insert_one(doc)).await? {
            Ok(_) => Ok(InsertOutcome::Inserted),
            Err(e) if errors::is_duplicate_key(&e) => Ok(InsertOutcome::AlreadyPresent),
            Err(e) => Err(errors::map(e, &self.hosts)),
        }
    }

    async fn get_result(&self, id: &TaskId) -> Result<Option<TaskResult>> {
        self.op(self.results.find_one(doc! { "_id": id.as_str() }))
            .await?
            .map(ResultDoc::into_core)
            .transpose()
    }

    async fn set_priority(&self, id: &TaskId, priority: i32) -> Result<CasOutcome> {
        let mut filter = doc! { "_id": id.as_str(), "status": TaskStatus::Pending.as_str() };
        filter.extend(self.within_fence());
        let update = doc! { "$set": { "spec.priority": priority, "fence": self.fence() } };
        for _ in 0..CAS_RETRIES {
            let before = self
                .op(self
                    .tasks
                    .find_one_and_update(filter.clone(), update.clone())
                    .return_document(ReturnDocument::Before))
                .await?;
            if let Some(before) = before {
                return Ok(CasOutcome::Applied {
                    before: before.into_core()?,
                });
            }
            let current = self
                .op(self
                    .tasks
                    .clone_with_type::<Document>()
                    .find_one(doc! { "_id": id.as_str() }))
                .await?
                .ok_or_else(|| Error::not_found("task", id))?;
            self.check_fence(&current)?;
            let current: TaskDoc =
                bson::deserialize_from_document(current).map_err(|e| Error::Backend {
                    backend: "mongodb",
                    source: Box::new(e),
                })?;
            let current = current.into_core()?;
            if current.status != TaskStatus::Pending {
                return Ok(CasOutcome::Rejected { current });
            }
        }
        Err(Error::Conflict(format!(
            "task {id} changed under {CAS_RETRIES} consecutive compare-and-set attempts"
        )))
    }

    /// Removes results first, then tasks: a crash between the two leaves
    /// a finished task without its result, which the next round removes.
    async fn remove_finished(
        &self,
        before: Timestamp,
        limit: usize,
        keep: &[TaskId],
    ) -> Result<usize> {
        let before = records::ts("retention cutoff", before)?;
        let finished: Vec<&str> = TaskStatus::ALL
            .iter()
            .filter(|s| s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        let mut q = doc! { "status": { "$in": finished }, "finished_at": { "$lt": before } };
        if !keep.is_empty() {
            let keep: Vec<&str> = keep.iter().map(TaskId::as_str).collect();
            q.insert("_id", doc! { "$nin": keep });
        }
        let sort = doc! { "finished_at": 1 };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let ids: Vec<String> = self
            .find_tasks(q, sort, Some(limit))
            .await?
            .into_iter()
            .map(|t| t.id.into())
            .collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let these = doc! { "_id": { "$in": &ids } };
        self.op(self.results.delete_many(these.clone())).await?;
        self.op(self.tasks.delete_many(these)).await?;
        self.op(self.requests.delete_many(doc! { "at": { "$lt": before } }))
            .await?;
        Ok(ids.len())
    }

    /// One count per status, within the filter (an array's members are
    /// found by the index on `array`).
    async fn count_matching(&self, filter: &TaskFilter) -> Result<StatusCounts> {
        let mut counts = StatusCounts::default();
        for status in TaskStatus::ALL {
            let mut q = query(&TaskFilter {
                statuses: Vec::new(),
                ..filter.clone()
            });
            q.insert("status", status.as_str());
            let n = self.op(self.tasks.count_documents(q)).await?;
            counts.add(status, n);
        }
        Ok(counts)
    }

    /// One count per status: with the index on `status` the server counts
    /// index entries, and no task is sent back.
    async fn count_tasks(&self) -> Result<StatusCounts> {
        let mut counts = StatusCounts::default();
        for status in TaskStatus::ALL {
            let n = self
                .op(self
                    .tasks
                    .count_documents(doc! { "status": status.as_str() }))
                .await?;
            counts.add(status, n);
        }
        Ok(counts)
    }
}

#[async_trait]
impl WorkerRegistry for MongoStore {
    fn fenced(&self, term: Term) -> Arc<dyn WorkerRegistry> {
        Arc::new(MongoStore {
            term,
            ..self.clone()
        })
    }

    async fn upsert_worker(&self, worker: WorkerRecord) -> Result<WorkerRecord> {
        let mut doc = WorkerDoc::from_core(&worker)?;
        doc.fence = Some(self.fence());
        let capacity = mongodb::bson::serialize_to_bson(&ResourcesDoc::from_core(
            &worker.capacity,
        )?)
        .map_err(|e| Error::Backend {
            backend: "mongodb",
            source: Box::new(e),
        })?;
        let mut set = doc! { "capacity": capacity, "fence": self.fence() };
        let mut unset = Document::new();
        match &worker.address {
            Some(a) => set.insert("address", a.as_str()),
            None => unset.insert("address", ""),
        };
        match &worker.instance {
            Some(i) => set.insert("instance", i.as_str()),
            None => unset.insert("instance", ""),
        };
        if worker.gpus.is_empty() {
            unset.insert("gpus", "");
        } else {
            let gpus = mongodb::bson::serialize_to_bson(
                &worker
                    .gpus
                    .iter()
                    .map(GpuDoc::from_core)
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| Error::Backend {
                backend: "mongodb",
                source: Box::new(e),
            })?;
            set.insert("gpus", gpus);
        }
        if worker.allow_mounts.is_empty() {
            unset.insert("allow_mounts", "");
        } else {
            set.insert("allow_mounts", worker.allow_mounts.clone());
        }
        if worker.labels.is_empty() {
            unset.insert("labels", "");
        } else {
            set.insert("labels", records::label_texts(&worker.labels));
        }
        let mut update = doc! { "$set": set };
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        // Insert, or update address and capacity of the known worker. Not an
        // upsert with `$setOnInsert` (one round trip on MongoDB), because
        // nx-27017 ignores `$setOnInsert`. The loop covers a removal between
        // the refused insert and the update.
        for _ in 0..CAS_RETRIES {
            match self.raw(self.workers.insert_one(doc.clone())).await? {
                Ok(_) => return Ok(worker),
                Err(e) if errors::is_duplicate_key(&e) => {}
                Err(e) => return Err(errors::map(e, &self.hosts)),
            }
            let mut known = doc! { "_id": worker.id.as_str() };
            known.extend(self.within_fence());
            let stored = self
                .op(self
                    .workers
                    .find_one_and_update(known, update.clone())
                    .return_document(ReturnDocument::After))
                .await?;
            if let Some(stored) = stored {
                return stored.into_core();
            }
            // Fenced, or removed since the insert was refused.
            self.exists_unfenced(&self.workers, worker.id.as_str())
                .await?;
        }
        Err(Error::Conflict(format!(
            "worker {} was removed and re-added under {CAS_RETRIES} consecutive upserts",
            worker.id
        )))
    }

    async fn get_worker(&self, id: &WorkerId) -> Result<Option<WorkerRecord>> {
        self.op(self.workers.find_one(doc! { "_id": id.as_str() }))
            .await?
            .map(WorkerDoc::into_core)
            .transpose()
    }

    async fn set_drain(&self, id: &WorkerId, drain: Option<Drain>) -> Result<()> {
        let update = match drain {
            Some(d) => {
                let d =
                    mongodb::bson::serialize_to_bson(&DrainDoc::from_core(&d)?).map_err(|e| {
                        Error::Backend {
                            backend: "mongodb",
                            source: Box::new(e),
                        }
                    })?;
                doc! { "$set": { "drain": d, "fence": self.fence() } }
            }
            None => doc! { "$unset": { "drain": "" }, "$set": { "fence": self.fence() } },
        };
        let mut filter = doc! { "_id": id.as_str() };
        filter.extend(self.within_fence());
        let r = self.op(self.workers.update_one(filter, update)).await?;
        if r.matched_count == 0 && !self.exists_unfenced(&self.workers, id.as_str()).await? {
            return Err(Error::not_found("worker", id));
        }
        Ok(())
    }

    async fn list_workers(&self) -> Result<Vec<WorkerRecord>> {
        let mut cursor = self
            .op(self.workers.find(doc! {}).sort(doc! { "_id": 1 }))
            .await?;
        let mut out = Vec::new();
        while self.op(cursor.advance()).await? {
            out.push(self.driver(cursor.deserialize_current())?.into_core()?);
        }
        Ok(out)
    }

    async fn remove_worker(&self, id: &WorkerId) -> Result<()> {
        let mut filter = doc! { "_id": id.as_str() };
        filter.extend(self.within_fence());
        let r = self.op(self.workers.delete_one(filter)).await?;
        if r.deleted_count == 0 && !self.exists_unfenced(&self.workers, id.as_str()).await? {
            return Err(Error::not_found("worker", id));
        }
        Ok(())
    }

    async fn record_heartbeats(&self, beats: &[Heartbeat]) -> Result<Vec<WorkerId>> {
        // The newest beat per worker (the later one on a tie, as in memory),
        // workers in order of first appearance.
        let mut order: Vec<&WorkerId> = Vec::new();
        let mut newest: HashMap<&WorkerId, &Heartbeat> = HashMap::new();
        for b in beats {
            match newest.get(&b.worker) {
                None => {
                    order.push(&b.worker);
                    newest.insert(&b.worker, b);
                }
                Some(seen) if seen.at <= b.at => {
                    newest.insert(&b.worker, b);
                }
                Some(_) => {}
            }
        }
        let mut missed: Vec<WorkerId> = Vec::new();
        let mut running = JoinSet::new();
        let mut queue = order.iter().map(|w| (*newest[w]).clone());
        let mut results: HashMap<WorkerId, bool> = HashMap::new();
        let operation_timeout = self.operation_timeout;
        let (within_fence, term) = (self.within_fence(), self.fence());
        loop {
            while running.len() < HEARTBEAT_CONCURRENCY {
                let Some(beat) = queue.next() else { break };
                let workers = self.workers.clone();
                let within_fence = within_fence.clone();
                running.spawn(async move {
                    let beating = Self::beat(&workers, &beat, within_fence, term);
                    let r = tokio::time::timeout(operation_timeout, beating).await;
                    (beat.worker, r)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (worker, r) = joined.map_err(|e| Error::Backend {
                backend: "mongodb",
                source: Box::new(e),
            })?;
            let took = r
                .map_err(|_| {
                    Error::Timeout(format!(
                        "MongoDB at {} did not answer within {:?}",
                        self.hosts, operation_timeout
                    ))
                })??
                .map_err(|e| errors::map(e, &self.hosts))?;
            results.insert(worker, took);
        }
        for w in order {
            if results.get(w) == Some(&false) {
                missed.push(w.clone());
            }
        }
        if missed.is_empty() {
            return Ok(missed);
        }
        // A beat that took no document is older than the stored one, from
        // an unregistered worker, or fenced: ask which ids exist, and how
        // they are fenced.
        let ids: Vec<&str> = missed.iter().map(|w| w.as_str()).collect();
        let mut cursor = self
            .op(self
                .workers
                .clone_with_type::<Document>()
                .find(doc! { "_id": { "$in": ids } })
                .projection(doc! { "_id": 1, "fence": 1 }))
            .await?;
        let mut known = Vec::new();
        while self.op(cursor.advance()).await? {
            let d = self.driver(cursor.deserialize_current())?;
            self.check_fence(&d)?;
            if let Ok(id) = d.get_str("_id") {
                known.push(id.to_owned());
            }
        }
        missed.retain(|w| !known.iter().any(|k| k == w.as_str()));
        Ok(missed)
    }
}

#[async_trait]
impl LeaseStore for MongoStore {
    async fn read_lease(&self) -> Result<Option<LeaseRecord>> {
        self.op(self.lease.find_one(doc! { "_id": LeaseDoc::ID }))
            .await?
            .map(LeaseDoc::into_core)
            .transpose()
    }

    async fn create_lease(&self, record: &LeaseRecord) -> Result<()> {
        let doc = LeaseDoc::from_core(record)?;
        match self.raw(self.lease.insert_one(doc)).await? {
            Ok(_) => Ok(()),
            Err(e) if errors::is_duplicate_key(&e) => Err(Error::AlreadyExists {
                kind: "lease",
                id: LeaseDoc::ID.into(),
            }),
            Err(e) => Err(errors::map(e, &self.hosts)),
        }
    }

    /// One `findOneAndUpdate` filtered on the term and version read: of
    /// racing swaps on one value, the server applies exactly one.
    async fn swap_lease(&self, term: Term, version: u64, new: &LeaseRecord) -> Result<bool> {
        let filter = doc! {
            "_id": LeaseDoc::ID,
            "term": records::to_i64("term", term.get())?,
            "version": records::to_i64("lease version", version)?,
        };
        let mut set = bson::serialize_to_document(&LeaseDoc::from_core(new)?).map_err(|e| {
            Error::Backend {
                backend: "mongodb",
                source: Box::new(e),
            }
        })?;
        set.remove("_id");
        let mut update = doc! {};
        if new.holder.is_none() {
            update.insert("$unset", doc! { "holder": "" });
        }
        update.insert("$set", set);
        let before = self
            .op(self.lease.find_one_and_update(filter, update))
            .await?;
        Ok(before.is_some())
    }

    /// Selects by status (through its index), not by `fence`: `{fence:
    /// {$lt: T}}` matches no document that lacks the field.
    async fn raise_fence(&self, term: Term) -> Result<u64> {
        let term = records::to_i64("term", term.get())?;
        let live: Vec<&str> = TaskStatus::ALL
            .iter()
            .filter(|s| !s.is_terminal())
            .map(|s| s.as_str())
            .collect();
        let tasks = self.tasks.clone_with_type::<Document>();
        let workers = self.workers.clone_with_type::<Document>();
        let raised = self
            .raise_in(&tasks, doc! { "status": { "$in": live } }, term)
            .await?;
        Ok(raised + self.raise_in(&workers, doc! {}, term).await?)
    }

    async fn adopt_pending(&self, term: Term, limit: usize) -> Result<Vec<TaskRecord>> {
        // A find's limit of 0 means no limit to MongoDB.
        if limit == 0 {
            return Ok(Vec::new());
        }
        let term = records::to_i64("term", term.get())?;
        let below = doc! { "status": TaskStatus::Pending.as_str(), "fence": { "$lt": term } };
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let found = self
            .find_tasks(below.clone(), doc! { "created_at": 1 }, Some(limit))
            .await?;
        if found.is_empty() {
            return Ok(found);
        }
        let ids: Vec<&str> = found.iter().map(|t| t.id.as_str()).collect();
        let mut these = below;
        these.insert("_id", doc! { "$in": ids });
        self.op(self
            .tasks
            .update_many(these, doc! { "$max": { "fence": term } }))
            .await?;
        Ok(found)
    }
}
