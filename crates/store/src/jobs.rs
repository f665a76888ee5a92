//! The delivery queue. Jobs are claimed with a lease; a job whose lease expired (its worker died)
//! is claimable again. Postgres uses `FOR UPDATE SKIP LOCKED` so many workers never block each
//! other; SQLite has one writer, so a conditional `UPDATE … RETURNING` is enough.

use crate::{Db, Result, on, on_tx};
use courierx_domain::Millis;
use std::sync::Arc;
use tokio::sync::Notify;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: String,
    pub tenant_id: String,
    pub message_id: String,
    pub attempts: i64,
    pub max_attempts: i64,
}

impl Db {
    /// When the next job becomes claimable (due, or its lease expires), if any job exists.
    pub async fn next_job_due(&self) -> Result<Option<Millis>> {
        let (free, leased): (Option<i64>, Option<i64>) = on!(self, p => sqlx::query_as(
            "SELECT (SELECT MIN(run_at) FROM jobs WHERE lease_until IS NULL), (SELECT MIN(lease_until) FROM jobs WHERE lease_until IS NOT NULL)")
            .fetch_one(p).await)?;
        Ok(match (free, leased) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    /// Puts a claimed job back without counting the attempt (used at shutdown for work not begun).
    pub async fn release_job(&self, job_id: &str, message_id: &str, now: Millis) -> Result<()> {
        let mut tx = self.begin().await?;
        on_tx!(&mut tx, c => sqlx::query("UPDATE jobs SET lease_until = NULL, locked_by = NULL, attempts = attempts - 1 WHERE id = $1")
            .bind(job_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        on_tx!(&mut tx, c => sqlx::query("UPDATE messages SET status = 'queued', updated_at = $1 WHERE id = $2 AND status = 'sending'")
            .bind(now).bind(message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        tx.commit().await
    }

    /// Test and operations helper: claims one specific job as if a worker had taken it.
    pub async fn force_lease(
        &self,
        message_id: &str,
        worker: &str,
        lease_until: Millis,
    ) -> Result<bool> {
        let n = on!(self, p => sqlx::query("UPDATE jobs SET lease_until = $1, locked_by = $2, attempts = attempts + 1 WHERE message_id = $3")
            .bind(lease_until).bind(worker).bind(message_id).execute(p).await.map(|r| r.rows_affected()))?;
        on!(self, p => sqlx::query("UPDATE messages SET status = 'sending' WHERE id = $1 AND status = 'queued'").bind(message_id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(n > 0)
    }
}

impl Db {
    /// On PostgreSQL, wakes this process's workers whenever any process enqueues jobs, so workers
    /// on other nodes need not poll (after a lost connection too: jobs enqueued meanwhile are
    /// looked for at once). SQLite has a single process.
    pub fn spawn_job_listener(&self, wake: Arc<Notify>) -> Option<tokio::task::JoinHandle<()>> {
        self.spawn_listener(crate::notify::JOBS, move |_| wake.notify_one())
    }
}
