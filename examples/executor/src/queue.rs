//! The durable run store (SQLite) and the async worker.
//!
//! Every run, sync or async, is one row of the `runs` table. An async run is inserted as `queued`
//! in a committed transaction (WAL journal, `synchronous=FULL`) *before* the executor answers 202,
//! so an acknowledged run survives a crash. A dispatcher thread claims queued runs (oldest first,
//! marking them `running`), runs each on its own thread (sleep `run_ms`, evaluate the steps) and
//! marks it `completed` (or `failed`) with its output.
//!
//! On startup, runs left `running` by a previous process are put back to `queued` and run again;
//! completion is a single `UPDATE ... WHERE state = 'running'`, so each run reaches its final state
//! exactly once and stays one row. `attempts` counts how often a run was started.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{json, Value};

use crate::flows::{bind_body, Flow};

mod deliveries;
pub use deliveries::SyncDelivery;

/// How many async runs may execute at once; more stay queued until a slot frees.
const MAX_IN_FLIGHT: usize = 64;
/// How often the dispatcher looks for queued runs when nobody wakes it.
const POLL: Duration = Duration::from_millis(50);

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id          TEXT    NOT NULL UNIQUE,
    flow_id         TEXT    NOT NULL,
    mode            TEXT    NOT NULL,            -- sync | async
    state           TEXT    NOT NULL,            -- queued | running | completed | failed
    received_at_ms  INTEGER NOT NULL,
    started_at_ms   INTEGER,
    completed_at_ms INTEGER,
    attempts        INTEGER NOT NULL DEFAULT 0,
    content_type    TEXT,
    body            BLOB    NOT NULL,
    output          TEXT,                        -- JSON
    error           TEXT
);
CREATE INDEX IF NOT EXISTS runs_state ON runs (state, seq);
";

const COLUMNS: &str = "run_id, flow_id, mode, state, received_at_ms, started_at_ms, \
                       completed_at_ms, attempts, output, error";

/// Looks a flow up by id at the moment a run executes.
pub type FlowLookup = Arc<dyn Fn(&str) -> Option<Arc<Flow>> + Send + Sync>;

/// The run store. One connection, shared behind a mutex: statements are short, and flow run time
/// is spent outside the lock.
pub struct Queue {
    conn: Mutex<Connection>,
    wake: Mutex<Option<Sender<()>>>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A fresh run id, unique across restarts: `run-<nanoseconds hex>-<counter>`.
fn new_run_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("run-{nanos:016x}-{n:04x}")
}

impl Queue {
    /// Opens (creating if needed) the store at `path`.
    pub fn open(path: &Path) -> rusqlite::Result<Queue> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        deliveries::migrate(&conn)?;
        Ok(Queue {
            conn: Mutex::new(conn),
            wake: Mutex::new(None),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite inconsistent; keep serving.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Durably queues an async run and returns its id. When this returns `Ok`, the row is committed.
    pub fn enqueue(&self, flow_id: &str, content_type: Option<&str>, body: &[u8]) -> rusqlite::Result<String> {
        let run_id = new_run_id();
        self.conn().execute(
            "INSERT INTO runs (run_id, flow_id, mode, state, received_at_ms, content_type, body)
             VALUES (?1, ?2, 'async', 'queued', ?3, ?4, ?5)",
            params![run_id, flow_id, now_ms(), content_type, body],
        )?;
        self.wake();
        Ok(run_id)
    }

    /// Tells the dispatcher a run was queued.
    fn wake(&self) {
        if let Some(wake) = self.wake.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = wake.send(());
        }
    }

    /// Records a finished sync run (`Ok(output)` -> completed, `Err(message)` -> failed).
    pub fn record_sync(
        &self,
        flow_id: &str,
        received_at_ms: i64,
        content_type: Option<&str>,
        body: &[u8],
        result: &Result<Value, String>,
    ) -> rusqlite::Result<String> {
        let run_id = new_run_id();
        let (state, output, error) = split_result(result);
        let now = now_ms();
        self.conn().execute(
            "INSERT INTO runs (run_id, flow_id, mode, state, received_at_ms, started_at_ms,
                               completed_at_ms, attempts, content_type, body, output, error)
             VALUES (?1, ?2, 'sync', ?3, ?4, ?4, ?5, 1, ?6, ?7, ?8, ?9)",
            params![
                run_id,
                flow_id,
                state,
                received_at_ms,
                now,
                content_type,
                body,
                output,
                error
            ],
        )?;
        Ok(run_id)
    }

    /// All runs, oldest first, as JSON objects.
    pub fn list(&self) -> rusqlite::Result<Vec<Value>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM runs ORDER BY seq"))?;
        let rows = stmt.query_map([], run_json)?;
        rows.collect()
    }

    /// One run by id.
    pub fn get(&self, run_id: &str) -> rusqlite::Result<Option<Value>> {
        self.conn()
            .query_row(
                &format!("SELECT {COLUMNS} FROM runs WHERE run_id = ?1"),
                [run_id],
                run_json,
            )
            .optional()
    }

    /// Puts runs a previous process left `running` back in the queue. Returns how many.
    fn requeue_interrupted(&self) -> rusqlite::Result<usize> {
        self.conn().execute(
            "UPDATE runs SET state = 'queued' WHERE state = 'running' AND mode = 'async'",
            [],
        )
    }

    /// Claims the oldest queued run: marks it running and returns what is needed to execute it.
    fn claim(&self) -> rusqlite::Result<Option<Claimed>> {
        self.conn()
            .query_row(
                "UPDATE runs SET state = 'running', started_at_ms = ?1, attempts = attempts + 1
                 WHERE seq = (SELECT seq FROM runs WHERE state = 'queued' ORDER BY seq LIMIT 1)
                 RETURNING run_id, flow_id, content_type, body",
                [now_ms()],
                |row| {
                    Ok(Claimed {
                        run_id: row.get(0)?,
                        flow_id: row.get(1)?,
                        content_type: row.get(2)?,
                        body: row.get(3)?,
                    })
                },
            )
            .optional()
    }

    /// Marks a running run finished. Only a `running` row changes, so this happens once per run.
    fn finish(&self, run_id: &str, result: &Result<Value, String>) -> rusqlite::Result<usize> {
        let (state, output, error) = split_result(result);
        self.conn().execute(
            "UPDATE runs SET state = ?2, completed_at_ms = ?3, output = ?4, error = ?5
             WHERE run_id = ?1 AND state = 'running'",
            params![run_id, state, now_ms(), output, error],
        )
    }

    /// Requeues interrupted runs and starts the dispatcher thread.
    pub fn start_worker(self: &Arc<Self>, lookup: FlowLookup) -> rusqlite::Result<()> {
        let resumed = self.requeue_interrupted()?;
        let pending: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM runs WHERE state = 'queued'", [], |r| r.get(0))?;
        if pending > 0 {
            eprintln!("flowgate-executor: resuming {pending} queued run(s) ({resumed} interrupted)");
        }
        let (tx, rx) = mpsc::channel();
        *self.wake.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        let queue = Arc::clone(self);
        thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || queue.dispatch(rx, lookup))
            .map(|_| ())
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    }

    fn dispatch(self: Arc<Self>, wake: Receiver<()>, lookup: FlowLookup) {
        let in_flight = Arc::new(AtomicUsize::new(0));
        loop {
            while in_flight.load(Ordering::SeqCst) < MAX_IN_FLIGHT {
                let claimed = match self.claim() {
                    Ok(Some(c)) => c,
                    Ok(None) => break,
                    Err(e) => {
                        eprintln!("flowgate-executor: claiming a run failed: {e}");
                        break;
                    }
                };
                in_flight.fetch_add(1, Ordering::SeqCst);
                let queue = Arc::clone(&self);
                let lookup = Arc::clone(&lookup);
                let in_flight = Arc::clone(&in_flight);
                thread::spawn(move || {
                    queue.execute(claimed, &lookup);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
            match wake.recv_timeout(POLL) {
                Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => thread::sleep(POLL),
            }
        }
    }

    fn execute(&self, run: Claimed, lookup: &FlowLookup) {
        let result = match lookup(&run.flow_id) {
            Some(flow) => {
                thread::sleep(Duration::from_millis(flow.run_ms));
                flow.run(bind_body(run.content_type.as_deref(), &run.body))
            }
            None => Err(format!("flow {}: unknown flow", run.flow_id)),
        };
        if let Err(e) = self.finish(&run.run_id, &result) {
            // The row stays `running` and is retried after the next restart.
            eprintln!("flowgate-executor: finishing run {} failed: {e}", run.run_id);
        }
    }
}

struct Claimed {
    run_id: String,
    flow_id: String,
    content_type: Option<String>,
    body: Vec<u8>,
}

fn split_result(result: &Result<Value, String>) -> (&'static str, Option<String>, Option<&str>) {
    match result {
        Ok(output) => ("completed", Some(output.to_string()), None),
        Err(error) => ("failed", None, Some(error.as_str())),
    }
}

fn run_json(row: &Row<'_>) -> rusqlite::Result<Value> {
    let output: Option<String> = row.get("output")?;
    let output = output
        .and_then(|o| serde_json::from_str::<Value>(&o).ok())
        .unwrap_or(Value::Null);
    Ok(json!({
        "run_id": row.get::<_, String>("run_id")?,
        "flow_id": row.get::<_, String>("flow_id")?,
        "mode": row.get::<_, String>("mode")?,
        "state": row.get::<_, String>("state")?,
        "received_at_ms": row.get::<_, i64>("received_at_ms")?,
        "started_at_ms": row.get::<_, Option<i64>>("started_at_ms")?,
        "completed_at_ms": row.get::<_, Option<i64>>("completed_at_ms")?,
        "attempts": row.get::<_, i64>("attempts")?,
        "output": output,
        "error": row.get::<_, Option<String>>("error")?,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("flowgate-executor-test-{name}-{}.sqlite3", std::process::id()));
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
        }
        path
    }

    fn lookup() -> FlowLookup {
        let flow = Arc::new(
            Flow::from_json(&json!({"id": "f", "ref_id": "w", "run_ms": 10, "steps": [
                {"ref_id": "r", "values": {"v": "w.x + 1"}}]}))
            .unwrap(),
        );
        Arc::new(move |id: &str| (id == "f").then(|| Arc::clone(&flow)))
    }

    fn wait_state(queue: &Queue, run_id: &str, state: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let run = queue.get(run_id).unwrap().unwrap();
            if run["state"] == state || Instant::now() > deadline {
                return run;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn async_run_completes_once_and_interrupted_runs_resume() {
        let path = temp_db("resume");
        {
            // A "previous process": one run queued, one left running (as after SIGKILL).
            let q = Queue::open(&path).unwrap();
            q.enqueue("f", Some("application/json"), br#"{"x": 1}"#).unwrap();
            let second = q.enqueue("f", Some("application/json"), br#"{"x": 2}"#).unwrap();
            let claimed = q.claim().unwrap().unwrap();
            assert_ne!(claimed.run_id, second);
        }
        let q = Arc::new(Queue::open(&path).unwrap());
        q.start_worker(lookup()).unwrap();
        let runs = q.list().unwrap();
        assert_eq!(runs.len(), 2);
        for run in &runs {
            let id = run["run_id"].as_str().unwrap();
            let done = wait_state(&q, id, "completed");
            assert_eq!(done["state"], "completed", "{done}");
        }
        let runs = q.list().unwrap();
        assert_eq!(runs[0]["output"], json!({"r": {"v": 2}}));
        assert_eq!(runs[0]["attempts"], 2, "interrupted run was started twice");
        assert_eq!(runs[1]["output"], json!({"r": {"v": 3}}));
        assert_eq!(runs[1]["attempts"], 1);
        // Finishing again is a no-op.
        let id = runs[0]["run_id"].as_str().unwrap();
        assert_eq!(q.finish(id, &Ok(json!({}))).unwrap(), 0);
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn unknown_flow_fails_and_sync_runs_are_recorded() {
        let path = temp_db("fail");
        let q = Arc::new(Queue::open(&path).unwrap());
        q.start_worker(lookup()).unwrap();
        let id = q.enqueue("nope", None, b"").unwrap();
        let run = wait_state(&q, &id, "failed");
        assert_eq!(run["state"], "failed");
        assert!(run["error"].as_str().unwrap().contains("unknown flow"));
        let id = q.record_sync("f", now_ms(), None, b"", &Ok(json!({"r": {}}))).unwrap();
        let run = q.get(&id).unwrap().unwrap();
        assert_eq!(run["mode"], "sync");
        assert_eq!(run["state"], "completed");
        assert_eq!(run["output"], json!({"r": {}}));
        let _ = std::fs::remove_file(&path);
    }
}
