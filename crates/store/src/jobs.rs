//! The delivery queue. Jobs are claimed with a lease and a fence; a job whose lease expired (its
//! worker died or overran) is claimable again, and the fence makes the earlier worker's late
//! outcome a no-op (see `crate::outcomes`).
//!
//! Fairness: every job sits in a *lane*, `tenant/project/priority`. A claim looks at up to
//! [`LANES_PER_CLAIM`] lanes (a rotating window when there are more), takes the oldest due jobs of
//! each with one index range scan per lane, and interleaves them round-robin: tenants in turn
//! (the one waiting longest first), projects in turn within a tenant, `high` before `normal`
//! before `low` within a project. A tenant holding its share of the worker's slots gets no more
//! until one frees. So a tenant's backlog, however deep, delays another tenant by at most one
//! turn of the round.

use crate::outcomes::{AttemptRecord, Outcome, record_one};
use crate::{Db, Result, Tx, on, on_tx};
use courierx_domain::Millis;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Notify;

/// Lanes one claim considers; past that many, claims walk the rest in later turns.
pub const LANES_PER_CLAIM: i64 = 64;

/// Lanes per candidate statement (bounds the statement texts the connections cache).
const LANES_PER_STATEMENT: usize = 16;

/// Jobs one reaping pass ends at most (the rest go on the next pass).
const REAP_BATCH: i64 = 200;

/// The lane a message's job joins.
pub fn lane(tenant: &str, project: &str, priority: i64) -> String {
    format!("{tenant}/{project}/{priority}")
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedJob {
    pub id: String,
    pub tenant_id: String,
    pub message_id: String,
    pub attempts: i64,
    pub max_attempts: i64,
    /// Handed out with this claim only: every outcome write must present it.
    pub fence: i64,
}

/// A worker asking for due jobs; answered inside the same transaction as other writes, so a
/// claim shares its commit with the outcomes recorded just before it.
#[derive(Debug, Clone)]
pub struct ClaimRequest {
    pub worker: String,
    pub now: Millis,
    pub lease_ms: i64,
    pub limit: i64,
    /// Jobs this worker has in flight, per tenant.
    pub inflight: HashMap<String, i64>,
    /// How many jobs one tenant may have in flight on this worker.
    pub tenant_cap: i64,
    /// Where the lane window starts (the lane after the last one seen; `""` from the start).
    pub lane_cursor: String,
    /// Also end the jobs that can never be delivered (see [`reap`]) before claiming.
    pub reap: bool,
}

/// What a claim hands back.
#[derive(Debug, Clone, Default)]
pub struct ClaimResult {
    pub jobs: Vec<Claimed>,
    /// Where the next claim's lane window starts.
    pub lane_cursor: String,
    /// Jobs ended by reaping: `(message_id, why)`.
    pub reaped: Vec<(String, &'static str)>,
}

/// A claimed job with the message it delivers.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub job: ClaimedJob,
    pub message: crate::messages::MessageRow,
}

#[derive(Debug, Clone, sqlx::FromRow)]
struct Candidate {
    id: String,
    tenant_id: String,
    lane: String,
    run_at: i64,
}

/// Lanes that have jobs, in order, starting after `cursor`: a loose index scan (one index seek
/// per lane) instead of a scan of the jobs.
const LANES: &str = "WITH RECURSIVE lanes(lane) AS (
        SELECT (SELECT lane FROM jobs WHERE lane > $1 ORDER BY lane LIMIT 1)
        UNION ALL
        SELECT (SELECT j.lane FROM jobs j WHERE j.lane > lanes.lane ORDER BY j.lane LIMIT 1) FROM lanes WHERE lanes.lane IS NOT NULL
    )
    SELECT lane FROM lanes WHERE lane IS NOT NULL LIMIT $2";

/// The oldest due, unleased jobs of one lane (`$1` now, `$2` per lane, `$3…` the lanes).
fn candidates_sql(lanes: usize) -> String {
    (0..lanes)
        .map(|i| {
            format!(
                "SELECT * FROM (SELECT id, tenant_id, lane, run_at FROM jobs WHERE lane = ${} AND run_at <= $1
                 AND (lease_until IS NULL OR lease_until < $1) AND attempts < max_attempts ORDER BY run_at LIMIT $2) AS l{i}",
                i + 3
            )
        })
        .collect::<Vec<_>>()
        .join(" UNION ALL ")
}

const TAKE_SQLITE: &str = "UPDATE jobs SET lease_until = $1, locked_by = $2, attempts = attempts + 1, fence = fence + 1
    WHERE id IN (SELECT value FROM json_each($3)) AND (lease_until IS NULL OR lease_until < $4) AND attempts < max_attempts
    RETURNING id, tenant_id, message_id, attempts, max_attempts, fence";

const TAKE_POSTGRES: &str = "UPDATE jobs SET lease_until = $1, locked_by = $2, attempts = attempts + 1, fence = fence + 1
    WHERE id IN (SELECT id FROM jobs WHERE id = ANY($3) AND (lease_until IS NULL OR lease_until < $4)
                 AND attempts < max_attempts ORDER BY id FOR UPDATE SKIP LOCKED)
    RETURNING id, tenant_id, message_id, attempts, max_attempts, fence";

/// A candidate as interleaving sees it: `(priority, run_at, job id)`.
type Queued = (i64, i64, String);

/// Chooses up to `limit` of the candidates round-robin (see the module comment).
fn interleave(mut cands: Vec<Candidate>, r: &ClaimRequest) -> Vec<String> {
    // tenant -> project -> jobs ordered by (priority, run_at).
    let mut tenants: BTreeMap<String, BTreeMap<String, Vec<Queued>>> = BTreeMap::new();
    cands.sort_by_key(|c| c.run_at);
    let mut oldest: HashMap<String, i64> = HashMap::new();
    for c in cands {
        let mut parts = c.lane.rsplitn(2, '/');
        let priority = parts.next().and_then(|p| p.parse().ok()).unwrap_or(1);
        let project = parts.next().unwrap_or_default().to_string();
        oldest.entry(c.tenant_id.clone()).or_insert(c.run_at);
        tenants
            .entry(c.tenant_id)
            .or_default()
            .entry(project)
            .or_default()
            .push((priority, c.run_at, c.id));
    }
    let mut order: Vec<(String, Vec<Vec<Queued>>)> = tenants
        .into_iter()
        .map(|(t, projects)| {
            let lists = projects
                .into_values()
                .map(|mut l| {
                    // Popped from the end: best last.
                    l.sort_by_key(|q| std::cmp::Reverse((q.0, q.1)));
                    l
                })
                .collect();
            (t, lists)
        })
        .collect();
    order.sort_by_key(|(t, _)| oldest.get(t).copied().unwrap_or(i64::MAX));
    let mut room: Vec<i64> = order
        .iter()
        .map(|(t, _)| r.tenant_cap - r.inflight.get(t).copied().unwrap_or(0))
        .collect();
    let mut next_project = vec![0usize; order.len()];
    let mut out = Vec::new();
    loop {
        let mut took = false;
        for (i, (_, projects)) in order.iter_mut().enumerate() {
            if out.len() as i64 >= r.limit {
                return out;
            }
            if room[i] <= 0 {
                continue;
            }
            for step in 0..projects.len() {
                let p = (next_project[i] + step) % projects.len();
                if let Some((_, _, id)) = projects[p].pop() {
                    out.push(id);
                    room[i] -= 1;
                    next_project[i] = p + 1;
                    took = true;
                    break;
                }
            }
        }
        if !took {
            return out;
        }
    }
}

/// Claims due jobs fairly, marks their messages `sending` and loads them.
pub(crate) async fn claim(tx: &mut Tx, r: &ClaimRequest) -> Result<ClaimResult> {
    let mut result = ClaimResult {
        lane_cursor: r.lane_cursor.clone(),
        ..Default::default()
    };
    if r.reap {
        result.reaped = reap(tx, r.now).await?;
    }
    let mut lanes: Vec<String> = on_tx!(tx, c => sqlx::query_scalar(LANES).bind(&r.lane_cursor).bind(LANES_PER_CLAIM).fetch_all(&mut *c).await)?;
    if (lanes.len() as i64) < LANES_PER_CLAIM && !r.lane_cursor.is_empty() {
        // Wrap around to the lanes before the cursor.
        let seen: HashSet<String> = lanes.iter().cloned().collect();
        let more: Vec<String> = on_tx!(tx, c => sqlx::query_scalar(LANES).bind("").bind(LANES_PER_CLAIM - lanes.len() as i64).fetch_all(&mut *c).await)?;
        lanes.extend(more.into_iter().filter(|l| !seen.contains(l)));
    }
    result.lane_cursor = match lanes.last() {
        Some(last) if lanes.len() as i64 >= LANES_PER_CLAIM => last.clone(),
        _ => String::new(),
    };
    let per_lane = r.limit.clamp(1, 256);
    let mut cands: Vec<Candidate> = Vec::new();
    for chunk in lanes.chunks(LANES_PER_STATEMENT) {
        let sql = candidates_sql(chunk.len());
        let rows: Vec<Candidate> = on_tx!(tx, c => {
            let mut q = sqlx::query_as::<_, Candidate>(sqlx::AssertSqlSafe(sql.clone())).bind(r.now).bind(per_lane);
            for l in chunk {
                q = q.bind(l);
            }
            q.fetch_all(&mut *c).await
        })?;
        cands.extend(rows);
    }
    let chosen = interleave(cands, r);
    if chosen.is_empty() {
        return Ok(result);
    }
    let lease = r.now + r.lease_ms;
    let jobs: Vec<ClaimedJob> = match tx {
        Tx::Sqlite(t) => {
            sqlx::query_as(TAKE_SQLITE)
                .bind(lease)
                .bind(&r.worker)
                .bind(crate::to_json(&chosen))
                .bind(r.now)
                .fetch_all(&mut **t)
                .await?
        }
        Tx::Postgres(t) => {
            sqlx::query_as(TAKE_POSTGRES)
                .bind(lease)
                .bind(&r.worker)
                .bind(&chosen)
                .bind(r.now)
                .fetch_all(&mut **t)
                .await?
        }
    };
    result.jobs = load_messages(tx, jobs, r.now).await?;
    Ok(result)
}

/// Marks the claimed jobs' messages `sending` and pairs each job with its message — two
/// statements however many jobs.
async fn load_messages(tx: &mut Tx, jobs: Vec<ClaimedJob>, now: Millis) -> Result<Vec<Claimed>> {
    if jobs.is_empty() {
        return Ok(Vec::new());
    }
    // The claimed ids as one parameter: a JSON array for SQLite (`json_each`), an array for Postgres.
    let ids: Vec<String> = jobs.iter().map(|j| j.message_id.clone()).collect();
    let in_ids = match tx {
        Tx::Sqlite(_) => "(SELECT value FROM json_each($1))",
        Tx::Postgres(_) => "(SELECT unnest($1::text[]))",
    };
    let update = format!(
        "UPDATE messages SET status = 'sending', updated_at = $2 WHERE id IN {in_ids} AND status IN ('scheduled', 'queued', 'sending')"
    );
    let select = format!(
        "SELECT {} FROM messages WHERE id IN {in_ids}",
        crate::messages::MESSAGE_COLS
    );
    let rows: Vec<crate::messages::MessageRow> = match tx {
        Tx::Sqlite(t) => {
            let json = crate::to_json(&ids);
            sqlx::query(sqlx::AssertSqlSafe(update))
                .bind(&json)
                .bind(now)
                .execute(&mut **t)
                .await?;
            sqlx::query_as(sqlx::AssertSqlSafe(select))
                .bind(&json)
                .fetch_all(&mut **t)
                .await?
        }
        Tx::Postgres(t) => {
            sqlx::query(sqlx::AssertSqlSafe(update))
                .bind(&ids)
                .bind(now)
                .execute(&mut **t)
                .await?;
            sqlx::query_as(sqlx::AssertSqlSafe(select))
                .bind(&ids)
                .fetch_all(&mut **t)
                .await?
        }
    };
    let mut by_id: HashMap<String, crate::messages::MessageRow> =
        rows.into_iter().map(|m| (m.id.clone(), m)).collect();
    let mut out = Vec::with_capacity(jobs.len());
    for job in jobs {
        match by_id.remove(&job.message_id) {
            Some(message) => out.push(Claimed { job, message }),
            None => {
                // A job whose message is gone can never be delivered, and has nothing to
                // record an event on.
                tracing::warn!(
                    job = job.id,
                    message = job.message_id,
                    "dropping a job whose message no longer exists"
                );
                on_tx!(tx, c => sqlx::query("DELETE FROM jobs WHERE id = $1").bind(&job.id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
            }
        }
    }
    Ok(out)
}

#[derive(Debug, sqlx::FromRow)]
struct Doomed {
    id: String,
    tenant_id: String,
    message_id: String,
    attempts: i64,
    max_attempts: i64,
    fence: i64,
}

/// Ends the jobs no claim may take: those whose last allowed attempt lost its lease (the
/// worker died or overran: `failed`) and those past their `expires_at` (`expired`). Each gets
/// its terminal status and an event saying why, through the same fenced path as a worker's
/// outcome. Both lookups are range scans of partial indexes.
pub(crate) async fn reap(tx: &mut Tx, now: Millis) -> Result<Vec<(String, &'static str)>> {
    let gave_up: Vec<Doomed> = on_tx!(tx, c => sqlx::query_as(
        "SELECT id, tenant_id, message_id, attempts, max_attempts, fence FROM jobs
         WHERE lease_until IS NOT NULL AND lease_until < $1 AND attempts >= max_attempts LIMIT $2")
        .bind(now).bind(REAP_BATCH).fetch_all(&mut *c).await)?;
    let expired: Vec<Doomed> = on_tx!(tx, c => sqlx::query_as(
        "SELECT id, tenant_id, message_id, attempts, max_attempts, fence FROM jobs
         WHERE expires_at IS NOT NULL AND expires_at <= $1 AND (lease_until IS NULL OR lease_until < $1) LIMIT $2")
        .bind(now).bind(REAP_BATCH).fetch_all(&mut *c).await)?;
    let mut out = Vec::new();
    let mut done = HashSet::new();
    for (d, why) in gave_up
        .into_iter()
        .map(|d| (d, "max_attempts"))
        .chain(expired.into_iter().map(|d| (d, "expired")))
    {
        if !done.insert(d.id.clone()) {
            continue;
        }
        let outcome = if why == "expired" {
            Outcome::Expired { job_id: d.id }
        } else {
            Outcome::Failed {
                job_id: d.id,
                error: format!(
                    "attempt {} of {} lost its lease (the worker stopped or overran); giving up",
                    d.attempts, d.max_attempts
                ),
            }
        };
        let rec = AttemptRecord {
            tenant_id: d.tenant_id,
            message_id: d.message_id.clone(),
            provider_id: None,
            attempt: d.attempts,
            fence: d.fence,
            at: now,
            latency_ms: 0,
            failovers: vec![],
            suppressed: vec![],
            outcome,
        };
        if record_one(tx, &rec).await? {
            out.push((d.message_id, why));
        }
    }
    Ok(out)
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

    /// Puts a claimed job back without counting the attempt (used at shutdown for work not
    /// begun). Fenced like every outcome: a job another worker holds by now is left alone.
    pub async fn release_job(
        &self,
        job_id: &str,
        fence: i64,
        message_id: &str,
        now: Millis,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        let n = on_tx!(&mut tx, c => sqlx::query("UPDATE jobs SET lease_until = NULL, locked_by = NULL, attempts = attempts - 1 WHERE id = $1 AND fence = $2")
            .bind(job_id).bind(fence).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        if n > 0 {
            on_tx!(&mut tx, c => sqlx::query("UPDATE messages SET status = 'queued', updated_at = $1 WHERE id = $2 AND status = 'sending'")
                .bind(now).bind(message_id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Test and operations helper: claims one specific job as if a worker had taken it.
    pub async fn force_lease(
        &self,
        message_id: &str,
        worker: &str,
        lease_until: Millis,
    ) -> Result<bool> {
        let n = on!(self, p => sqlx::query("UPDATE jobs SET lease_until = $1, locked_by = $2, attempts = attempts + 1, fence = fence + 1 WHERE message_id = $3")
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

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(id: &str, tenant: &str, project: &str, prio: i64, run_at: i64) -> Candidate {
        Candidate {
            id: id.into(),
            tenant_id: tenant.into(),
            lane: lane(tenant, project, prio),
            run_at,
        }
    }

    fn req(limit: i64, cap: i64, inflight: &[(&str, i64)]) -> ClaimRequest {
        ClaimRequest {
            worker: "w".into(),
            now: 0,
            lease_ms: 1000,
            limit,
            inflight: inflight.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            tenant_cap: cap,
            lane_cursor: String::new(),
            reap: false,
        }
    }

    #[test]
    fn tenants_and_projects_take_turns_and_priority_orders_within_a_project() {
        let mut c: Vec<Candidate> = (0..5)
            .map(|i| cand(&format!("a{i}"), "A", "p1", 1, i))
            .collect();
        c.push(cand("a-p2", "A", "p2", 1, 10));
        c.push(cand("b-low", "B", "q", 2, 20));
        c.push(cand("b-high", "B", "q", 0, 30));
        let got = interleave(c, &req(6, 100, &[]));
        assert_eq!(got, ["a0", "b-high", "a-p2", "b-low", "a1", "a2"]);
    }

    #[test]
    fn a_tenant_at_its_cap_gets_nothing_more() {
        let mut c: Vec<Candidate> = (0..5)
            .map(|i| cand(&format!("a{i}"), "A", "p", 1, i))
            .collect();
        c.push(cand("b0", "B", "q", 1, 99));
        assert_eq!(interleave(c, &req(4, 3, &[("A", 3)])), ["b0"]);
    }
}
