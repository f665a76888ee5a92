//! Group commit. Hot-path writes (accepting messages, recording delivery outcomes) go through a
//! writer task that drains whatever is waiting, writes it in one transaction and commits once, then
//! answers every caller. Durability holds (nobody is answered before the commit), while one fsync
//! serves many requests: this disk manages ~550 commits/s, so per-request commits would cap
//! throughput there.

use crate::idempotency::{NewIdempotency, claim_key};
use crate::messages::{MessageRow, NewEvent, insert_event, insert_message};
use crate::sandbox::SandboxRow;
use crate::{Db, Result, StoreError, Tx, on_tx};
use courierx_domain::Millis;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// A message to accept: its row, its first job and, optionally, the idempotency key it claims.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub row: MessageRow,
    pub job_id: String,
    pub run_at: Millis,
    pub max_attempts: i64,
    pub idempotency: Option<NewIdempotency>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptOutcome {
    Accepted,
    /// Another request already holds this idempotency key; nothing was written.
    DuplicateKey,
}

/// What happened to one delivery attempt.
#[derive(Debug, Clone)]
pub enum Outcome {
    Sent {
        job_id: String,
        provider_message_id: Option<String>,
        sandbox: Option<SandboxRow>,
    },
    Retry {
        job_id: String,
        run_at: Millis,
        error: String,
    },
    Failed {
        job_id: String,
        error: String,
    },
}

#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub tenant_id: String,
    pub message_id: String,
    pub provider_id: Option<String>,
    pub attempt: i64,
    pub at: Millis,
    pub latency_ms: i64,
    pub outcome: Outcome,
}

enum Op {
    Accept(Vec<NewMessage>, oneshot::Sender<Result<Vec<AcceptOutcome>>>),
    Record(Box<AttemptRecord>, oneshot::Sender<Result<()>>),
}

impl Op {
    fn weight(&self) -> usize {
        match self {
            Op::Accept(v, _) => v.len().max(1),
            Op::Record(..) => 1,
        }
    }
}

/// Cheap to clone; every clone feeds the same writer tasks.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Op>,
}

/// Items per transaction at most: bounds how long one commit holds the write lock.
const MAX_BATCH: usize = 1024;

impl Writer {
    /// Starts `tasks` writer tasks (1 for SQLite, whose writes serialise anyway; a few for
    /// Postgres). They stop when every `Writer` clone is dropped, after writing what is queued.
    pub fn start(db: Db, tasks: usize) -> (Self, Vec<tokio::task::JoinHandle<()>>) {
        let (tx, rx) = mpsc::channel::<Op>(8192);
        let rx = Arc::new(Mutex::new(rx));
        let handles = (0..tasks.max(1))
            .map(|_| {
                let rx = rx.clone();
                let db = db.clone();
                tokio::spawn(async move {
                    loop {
                        let mut batch = Vec::new();
                        {
                            let mut rx = rx.lock().await;
                            let Some(first) = rx.recv().await else { break };
                            let mut weight = first.weight();
                            batch.push(first);
                            while weight < MAX_BATCH {
                                match rx.try_recv() {
                                    Ok(op) => {
                                        weight += op.weight();
                                        batch.push(op);
                                    }
                                    Err(_) => break,
                                }
                            }
                        }
                        write_batch(&db, batch).await;
                    }
                })
            })
            .collect();
        (Self { tx }, handles)
    }

    pub async fn accept(&self, messages: Vec<NewMessage>) -> Result<Vec<AcceptOutcome>> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Accept(messages, reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        rx.await.map_err(|_| StoreError::WriterClosed)?
    }

    pub async fn record(&self, rec: AttemptRecord) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Op::Record(Box::new(rec), reply))
            .await
            .map_err(|_| StoreError::WriterClosed)?;
        rx.await.map_err(|_| StoreError::WriterClosed)?
    }
}

async fn write_batch(db: &Db, batch: Vec<Op>) {
    match try_write(db, &batch).await {
        Ok(results) => {
            for (op, res) in batch.into_iter().zip(results) {
                match (op, res) {
                    (Op::Accept(_, reply), BatchResult::Accept(r)) => {
                        let _ = reply.send(Ok(r));
                    }
                    (Op::Record(_, reply), _) => {
                        let _ = reply.send(Ok(()));
                    }
                    (Op::Accept(_, reply), BatchResult::Record) => {
                        let _ =
                            reply.send(Err(StoreError::Corrupt("writer result mismatch".into())));
                    }
                }
            }
        }
        Err(e) if batch.len() > 1 => {
            // One bad item must not fail its neighbours: retry each on its own.
            tracing::warn!(error = %e, items = batch.len(), "group commit failed; retrying items one by one");
            for op in batch {
                Box::pin(write_batch(db, vec![op])).await;
            }
        }
        Err(e) => {
            for op in batch {
                match op {
                    Op::Accept(_, reply) => {
                        let _ = reply.send(Err(clone_err(&e)));
                    }
                    Op::Record(_, reply) => {
                        let _ = reply.send(Err(clone_err(&e)));
                    }
                }
            }
        }
    }
}

fn clone_err(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict(c) => StoreError::Conflict(c),
        StoreError::NotFound => StoreError::NotFound,
        other => StoreError::Corrupt(other.to_string()),
    }
}

enum BatchResult {
    Accept(Vec<AcceptOutcome>),
    Record,
}

async fn try_write(db: &Db, batch: &[Op]) -> Result<Vec<BatchResult>> {
    let mut tx = db.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for op in batch {
        match op {
            Op::Accept(msgs, _) => {
                let mut out = Vec::with_capacity(msgs.len());
                for m in msgs {
                    out.push(accept_one(&mut tx, m).await?);
                }
                results.push(BatchResult::Accept(out));
            }
            Op::Record(rec, _) => {
                record_one(&mut tx, rec).await?;
                results.push(BatchResult::Record);
            }
        }
    }
    // Other processes' workers learn of new jobs at commit (Postgres delivers NOTIFY then).
    if matches!(tx, Tx::Postgres(_)) && batch.iter().any(|op| matches!(op, Op::Accept(..))) {
        on_tx!(&mut tx, c => sqlx::query("SELECT pg_notify('courierx_jobs', '')").execute(&mut *c).await.map(|r| r.rows_affected()))?;
    }
    tx.commit().await?;
    Ok(results)
}

async fn accept_one(tx: &mut Tx, m: &NewMessage) -> Result<AcceptOutcome> {
    if let Some(k) = &m.idempotency
        && !claim_key(tx, k, m.row.created_at).await?
    {
        return Ok(AcceptOutcome::DuplicateKey);
    }
    insert_message(tx, &m.row).await?;
    insert_event(
        tx,
        &NewEvent {
            tenant_id: m.row.tenant_id.clone(),
            message_id: m.row.id.clone(),
            kind: "queued",
            at: m.row.created_at,
            provider_id: None,
            recipient: None,
            detail: serde_json::json!({}),
        },
    )
    .await?;
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO jobs (id, tenant_id, message_id, kind, run_at, attempts, max_attempts) VALUES ($1, $2, $3, 'deliver', $4, 0, $5)")
        .bind(&m.job_id).bind(&m.row.tenant_id).bind(&m.row.id).bind(m.run_at).bind(m.max_attempts).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(AcceptOutcome::Accepted)
}

async fn record_one(tx: &mut Tx, r: &AttemptRecord) -> Result<()> {
    let event = |kind: &'static str, detail: serde_json::Value| NewEvent {
        tenant_id: r.tenant_id.clone(),
        message_id: r.message_id.clone(),
        kind,
        at: r.at,
        provider_id: r.provider_id.clone(),
        recipient: None,
        detail,
    };
    match &r.outcome {
        Outcome::Sent {
            job_id,
            provider_message_id,
            sandbox,
        } => {
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'sent', provider_id = $1, provider_message_id = $2, attempts = $3, sent_at = $4,
                    updated_at = $4, last_error = NULL WHERE id = $5 AND status IN ('queued', 'sending')")
                .bind(&r.provider_id).bind(provider_message_id).bind(r.attempt).bind(r.at).bind(&r.message_id)
                .execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_tx!(tx, c => sqlx::query("DELETE FROM jobs WHERE id = $1").bind(job_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_event(
                tx,
                &event("sent", serde_json::json!({"attempt": r.attempt, "latency_ms": r.latency_ms, "provider_message_id": provider_message_id})),
            )
            .await?;
            if let Some(s) = sandbox {
                crate::sandbox::insert(tx, s).await?;
            }
        }
        Outcome::Retry {
            job_id,
            run_at,
            error,
        } => {
            on_tx!(tx, c => sqlx::query("UPDATE jobs SET run_at = $1, lease_until = NULL, locked_by = NULL WHERE id = $2")
                .bind(run_at).bind(job_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'queued', provider_id = $1, attempts = $2, last_error = $3, updated_at = $4
                 WHERE id = $5 AND status IN ('queued', 'sending')")
                .bind(&r.provider_id).bind(r.attempt).bind(error).bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_event(
                tx,
                &event(
                    "attempt_failed",
                    serde_json::json!({"attempt": r.attempt, "error": error, "latency_ms": r.latency_ms, "next_retry_at": run_at}),
                ),
            )
            .await?;
        }
        Outcome::Failed { job_id, error } => {
            on_tx!(tx, c => sqlx::query("DELETE FROM jobs WHERE id = $1").bind(job_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            on_tx!(tx, c => sqlx::query(
                "UPDATE messages SET status = 'failed', provider_id = $1, attempts = $2, last_error = $3, updated_at = $4
                 WHERE id = $5 AND status IN ('queued', 'sending')")
                .bind(&r.provider_id).bind(r.attempt).bind(error).bind(r.at).bind(&r.message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            insert_event(tx, &event("failed", serde_json::json!({"attempt": r.attempt, "error": error, "latency_ms": r.latency_ms})))
                .await?;
        }
    }
    Ok(())
}
