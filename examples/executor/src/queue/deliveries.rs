//! Fleet-wide dedupe (contract 8, docs/executor-protocol.md): a run is unique per
//! `(flow, x-flowgate-delivery-id)`, so a repeated delivery that reaches this executor through
//! any Envoy runs once and gets the first run's answer.

use std::thread;
use std::time::{Duration, Instant};

use rusqlite::{params, Connection, OptionalExtension};
use serde_json::Value;

use super::{new_run_id, now_ms, split_result, Queue};

/// How long a repeat of a sync delivery waits for the first run's answer.
const WAIT_FOR_FIRST: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(20);

/// Adds the delivery id column and its unique index to a store made before them.
pub(super) fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_column = conn
        .prepare("SELECT 1 FROM pragma_table_info('runs') WHERE name = 'delivery_id'")?
        .exists([])?;
    if !has_column {
        conn.execute_batch("ALTER TABLE runs ADD COLUMN delivery_id TEXT")?;
    }
    conn.execute_batch(
        "CREATE UNIQUE INDEX IF NOT EXISTS runs_delivery ON runs (flow_id, delivery_id)
         WHERE delivery_id IS NOT NULL",
    )
}

/// What a sync delivery with an id finds.
#[derive(Debug, PartialEq)]
pub enum SyncDelivery {
    /// The first: run it, then [`Queue::finish_sync`] this run id.
    Run(String),
    /// A repeat: the first run's result.
    Done(Result<Value, String>),
    /// A repeat whose first run did not finish within [`WAIT_FOR_FIRST`].
    Running,
}

impl Queue {
    /// Queues an async run for delivery `delivery_id` once: a repeat gets the first run's id.
    pub fn enqueue_delivery(
        &self,
        flow_id: &str,
        delivery_id: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> rusqlite::Result<String> {
        let run_id = new_run_id();
        let conn = self.conn();
        let inserted = conn.execute(
            "INSERT INTO runs (run_id, flow_id, mode, state, received_at_ms, content_type, body, delivery_id)
             VALUES (?1, ?2, 'async', 'queued', ?3, ?4, ?5, ?6)
             ON CONFLICT (flow_id, delivery_id) WHERE delivery_id IS NOT NULL DO NOTHING",
            params![run_id, flow_id, now_ms(), content_type, body, delivery_id],
        )?;
        if inserted == 0 {
            return conn.query_row(
                "SELECT run_id FROM runs WHERE flow_id = ?1 AND delivery_id = ?2",
                params![flow_id, delivery_id],
                |row| row.get(0),
            );
        }
        drop(conn);
        self.wake();
        Ok(run_id)
    }

    /// Claims sync delivery `delivery_id`: the first runs it; a repeat waits for its result. A
    /// failed first run is forgotten, so a retry runs again.
    pub fn claim_sync(
        &self,
        flow_id: &str,
        delivery_id: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> rusqlite::Result<SyncDelivery> {
        let deadline = Instant::now() + WAIT_FOR_FIRST;
        loop {
            let run_id = new_run_id();
            let conn = self.conn();
            conn.execute(
                "UPDATE runs SET delivery_id = NULL WHERE flow_id = ?1 AND delivery_id = ?2 AND state = 'failed'",
                params![flow_id, delivery_id],
            )?;
            let inserted = conn.execute(
                "INSERT INTO runs (run_id, flow_id, mode, state, received_at_ms, started_at_ms, attempts,
                                   content_type, body, delivery_id)
                 VALUES (?1, ?2, 'sync', 'running', ?3, ?3, 1, ?4, ?5, ?6)
                 ON CONFLICT (flow_id, delivery_id) WHERE delivery_id IS NOT NULL DO NOTHING",
                params![run_id, flow_id, now_ms(), content_type, body, delivery_id],
            )?;
            if inserted == 1 {
                return Ok(SyncDelivery::Run(run_id));
            }
            let first: Option<(String, Option<String>, Option<String>)> = conn
                .query_row(
                    "SELECT state, output, error FROM runs WHERE flow_id = ?1 AND delivery_id = ?2",
                    params![flow_id, delivery_id],
                    |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                )
                .optional()?;
            drop(conn);
            if let Some((state, output, _)) = &first {
                if state == "completed" {
                    let output = output.as_deref().and_then(|o| serde_json::from_str(o).ok());
                    return Ok(SyncDelivery::Done(Ok(output.unwrap_or(Value::Null))));
                }
            }
            if Instant::now() >= deadline {
                return Ok(SyncDelivery::Running);
            }
            thread::sleep(POLL);
        }
    }

    /// Records the result of a sync run claimed with [`Queue::claim_sync`].
    pub fn finish_sync(&self, run_id: &str, result: &Result<Value, String>) -> rusqlite::Result<usize> {
        let (state, output, error) = split_result(result);
        self.conn().execute(
            "UPDATE runs SET state = ?2, completed_at_ms = ?3, output = ?4, error = ?5 WHERE run_id = ?1",
            params![run_id, state, now_ms(), output, error],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn queue(name: &str) -> Queue {
        let path = std::env::temp_dir().join(format!("flowgate-deliveries-{name}-{}.sqlite3", std::process::id()));
        let _ = std::fs::remove_file(&path);
        Queue::open(&path).unwrap()
    }

    #[test]
    fn an_async_delivery_is_queued_once_per_flow() {
        let queue = queue("async");
        let first = queue.enqueue_delivery("f", "d-1", None, b"{}").unwrap();
        assert_eq!(queue.enqueue_delivery("f", "d-1", None, b"{}").unwrap(), first);
        assert_ne!(queue.enqueue_delivery("g", "d-1", None, b"{}").unwrap(), first);
        assert_eq!(queue.list().unwrap().len(), 2);
    }

    #[test]
    fn a_sync_repeat_gets_the_first_result_and_a_failure_runs_again() {
        let queue = queue("sync");
        let SyncDelivery::Run(run_id) = queue.claim_sync("f", "d", None, b"{}").unwrap() else {
            panic!("the first delivery runs");
        };
        queue.finish_sync(&run_id, &Ok(json!({"res1": 1}))).unwrap();
        assert_eq!(
            queue.claim_sync("f", "d", None, b"{}").unwrap(),
            SyncDelivery::Done(Ok(json!({"res1": 1})))
        );
        let SyncDelivery::Run(failed) = queue.claim_sync("f", "e", None, b"{}").unwrap() else {
            panic!("a new delivery runs");
        };
        queue.finish_sync(&failed, &Err("boom".into())).unwrap();
        assert!(matches!(
            queue.claim_sync("f", "e", None, b"{}").unwrap(),
            SyncDelivery::Run(_)
        ));
    }
}
