//! The delivery worker: claims due jobs with a fenced lease, sends through the project's
//! provider with no database transaction open across the call, and records the outcome through
//! the group-commit writer. It sleeps until the next job is due or it is woken, never polling in
//! a tight loop. Claims are fair across tenants and projects (see `courierx_store::jobs`), and
//! one tenant may hold at most [`tenant_cap`] of the worker's slots, so another tenant's job
//! always finds one free.

mod attempt;
mod email;

use crate::Engine;
use courierx_domain::now_ms;
use courierx_store::writer::ClaimRequest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};

/// How long an idle worker sleeps at most before looking again (covers jobs enqueued by other
/// processes when no cross-process wake-up arrives).
const IDLE_MAX: Duration = Duration::from_secs(1);

/// The shortest idle wait, in milliseconds.
const MIN_IDLE_MS: i64 = 20;

/// How long a busy worker waits to gather free slots before claiming anyway.
const CLAIM_GATHER: Duration = Duration::from_millis(5);

/// How often a claim also ends the jobs that can never be delivered (see `jobs::reap`).
const REAP_EVERY: Duration = Duration::from_secs(1);

/// The slots one tenant may hold: all but an eighth (at least one) kept for the others.
pub fn tenant_cap(concurrency: usize) -> i64 {
    let reserve = (concurrency / 8).max(1);
    concurrency.saturating_sub(reserve).max(1) as i64
}

/// A job this worker holds: enough to release it at shutdown and to count its tenant's slots.
#[derive(Clone)]
struct Held {
    message_id: String,
    tenant_id: String,
    fence: i64,
}

/// A worker slot taken by one delivery: freed, and the job forgotten, however the task ends.
struct Slot {
    inflight: Arc<Mutex<HashMap<String, Held>>>,
    job_id: String,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut m) = self.inflight.lock() {
            m.remove(&self.job_id);
        }
    }
}

pub struct Worker {
    engine: Arc<Engine>,
    id: String,
}

impl Worker {
    pub fn new(engine: Arc<Engine>) -> Self {
        let id = format!("{}-{}", hostname(), uuid::Uuid::now_v7().simple());
        Self { engine, id }
    }

    /// Runs until `shutdown` turns true; then waits up to the grace period for in-flight
    /// deliveries and releases whatever is still unfinished so another worker can take it.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let e = self.engine.clone();
        let permits = Arc::new(Semaphore::new(e.cfg.worker_concurrency));
        let inflight: Arc<Mutex<HashMap<String, Held>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        let mut lane_cursor = String::new();
        let mut last_reap: Option<Instant> = None;
        let cap = tenant_cap(e.cfg.worker_concurrency);
        tracing::info!(worker = %self.id, concurrency = e.cfg.worker_concurrency, tenant_cap = cap, "worker started");
        loop {
            if *shutdown.borrow() {
                break;
            }
            while tasks.try_join_next().is_some() {}
            let mut free = permits.available_permits();
            if free == 0 {
                tokio::select! {
                    p = permits.clone().acquire_owned() => drop(p),
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            // While deliveries are in flight, gather a few free slots before claiming so one
            // claim (and its share of a commit) serves several jobs.
            let want = (e.cfg.worker_concurrency / 4).max(1);
            if free < want && !tasks.is_empty() {
                let deadline = tokio::time::Instant::now() + CLAIM_GATHER;
                while free < want && tokio::time::Instant::now() < deadline {
                    tokio::select! {
                        _ = tasks.join_next() => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                    free = permits.available_permits();
                }
            }
            let mut per_tenant: HashMap<String, i64> = HashMap::new();
            if let Ok(m) = inflight.lock() {
                for h in m.values() {
                    *per_tenant.entry(h.tenant_id.clone()).or_default() += 1;
                }
            }
            let reap = last_reap.is_none_or(|t| t.elapsed() >= REAP_EVERY);
            // Taken before the claim, so the attempt's deadline is never later than the lease.
            let claimed_at = Instant::now();
            let req = ClaimRequest {
                worker: self.id.clone(),
                now: now_ms(),
                lease_ms: e.cfg.lease_ms,
                limit: free.min(256) as i64,
                inflight: per_tenant,
                tenant_cap: cap,
                lane_cursor: lane_cursor.clone(),
                reap,
            };
            let claimed = match e.writer.claim(req).await {
                Ok(c) => c,
                Err(err) => {
                    tracing::warn!(error = %err, "claiming jobs failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if reap {
                last_reap = Some(claimed_at);
            }
            for (message, why) in &claimed.reaped {
                metrics::counter!("courierx_jobs_reaped_total", "reason" => *why).increment(1);
                tracing::warn!(
                    message,
                    reason = why,
                    "ended a job that can no longer be delivered"
                );
            }
            lane_cursor = claimed.lane_cursor;
            if claimed.jobs.is_empty() {
                // Never 0: a due job may be untakeable for now (its tenant is at its cap); a
                // finishing delivery or a wake-up ends the wait early.
                let wait = match e.db.next_job_due().await {
                    Ok(Some(due)) => Duration::from_millis(
                        (due - now_ms()).clamp(MIN_IDLE_MS, IDLE_MAX.as_millis() as i64) as u64,
                    ),
                    _ => IDLE_MAX,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = e.wake.notified() => {}
                    _ = tasks.join_next(), if !tasks.is_empty() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            let deadline = claimed_at + Duration::from_millis(e.cfg.lease_ms.max(0) as u64)
                - attempt::margin(e.cfg.lease_ms);
            for job in claimed.jobs {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                if let Ok(mut m) = inflight.lock() {
                    m.insert(
                        job.job.id.clone(),
                        Held {
                            message_id: job.job.message_id.clone(),
                            tenant_id: job.job.tenant_id.clone(),
                            fence: job.job.fence,
                        },
                    );
                }
                let slot = Slot {
                    inflight: inflight.clone(),
                    job_id: job.job.id.clone(),
                    _permit: permit,
                };
                let e = e.clone();
                tasks.spawn(async move {
                    attempt::deliver(&e, job, deadline).await;
                    drop(slot);
                });
            }
        }
        let grace = Duration::from_millis(e.cfg.shutdown_grace_ms);
        let mut left: Vec<(String, Held)> = Vec::new();
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            // Taken before aborting: an aborted delivery's slot forgets its job.
            left = inflight
                .lock()
                .map(|m| m.clone().into_iter().collect())
                .unwrap_or_default();
            tasks.abort_all();
            while tasks.join_next().await.is_some() {}
        }
        for (job, h) in left {
            if let Err(err) =
                e.db.release_job(&job, h.fence, &h.message_id, now_ms())
                    .await
            {
                tracing::warn!(error = %err, job, "could not release job at shutdown; its lease will expire");
            }
        }
        tracing::info!(worker = %self.id, "worker stopped");
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}
