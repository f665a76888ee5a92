//! Figures for `/ready` and `/metrics`, read without scanning tables: message counts by status and
//! the queue depth come from trigger-kept counters (migration 0007); the rest are short walks of
//! an index.

use crate::{Backend, Db, Result, on};
use courierx_domain::Millis;

/// Counts above this many rows are reported as this many (a walk of the index stops there).
pub const COUNT_CAP: i64 = 10_000;

#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub depth: i64,
    /// Jobs due now, capped at [`COUNT_CAP`].
    pub due: i64,
    /// Jobs under a live lease, capped at [`COUNT_CAP`] (at most the workers' concurrency).
    pub leased: i64,
    /// How long the oldest due, unclaimed job has waited, in ms.
    pub lag_ms: i64,
}

impl Db {
    /// Every counter (`status:<status>`, `jobs`) with the deltas not yet folded in.
    async fn counters(&self) -> Result<Vec<(String, i64)>> {
        Ok(on!(self, p => sqlx::query_as::<_, (String, i64)>(
            "SELECT key, CAST(SUM(n) AS BIGINT) FROM (
                SELECT key, n FROM row_counts UNION ALL SELECT key, n FROM row_count_deltas) c
             GROUP BY key")
            .fetch_all(p).await)?)
    }

    /// Folds the deltas PostgreSQL's triggers append into the counters, so reading them stays a
    /// few rows. SQLite's triggers update the counters directly.
    pub async fn compact_counters(&self) -> Result<u64> {
        if self.backend() == Backend::Sqlite {
            return Ok(0);
        }
        Ok(on!(self, p => sqlx::query(
            "WITH d AS (DELETE FROM row_count_deltas RETURNING key, n)
             INSERT INTO row_counts (key, n) SELECT key, SUM(n) FROM d GROUP BY key
             ON CONFLICT (key) DO UPDATE SET n = row_counts.n + excluded.n")
            .execute(p).await.map(|r| r.rows_affected()))?)
    }

    pub async fn queue_stats(&self, now: Millis) -> Result<QueueStats> {
        let depth = self
            .counters()
            .await?
            .into_iter()
            .find(|(k, _)| k == "jobs")
            .map_or(0, |(_, n)| n);
        // Bounded walks of `jobs_due` (run_at) and `jobs_leased` (lease_until IS NOT NULL); the
        // oldest claimable job is the first one along `jobs_due` that no live lease holds.
        let (due, leased, oldest): (i64, i64, Option<i64>) = on!(self, p => sqlx::query_as(
            "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE run_at <= $1 LIMIT $2) d),
                    (SELECT COUNT(*) FROM (SELECT 1 FROM jobs WHERE lease_until IS NOT NULL AND lease_until >= $1 LIMIT $2) l),
                    (SELECT run_at FROM jobs WHERE run_at <= $1 AND (lease_until IS NULL OR lease_until < $1)
                     ORDER BY run_at LIMIT 1)")
            .bind(now).bind(COUNT_CAP).fetch_one(p).await)?;
        Ok(QueueStats {
            depth,
            due,
            leased,
            lag_ms: oldest.map(|o| (now - o).max(0)).unwrap_or(0),
        })
    }

    pub async fn messages_by_status(&self) -> Result<Vec<(String, i64)>> {
        Ok(self
            .counters()
            .await?
            .into_iter()
            .filter_map(|(k, n)| k.strip_prefix("status:").map(|s| (s.to_string(), n)))
            .collect())
    }
}
