//! Figures for `/ready` and `/metrics`.

use crate::{Db, Result, on};
use courierx_domain::Millis;

#[derive(Debug, Clone, Default)]
pub struct QueueStats {
    pub depth: i64,
    pub due: i64,
    pub leased: i64,
    /// How long the oldest due, unclaimed job has waited, in ms.
    pub lag_ms: i64,
}

impl Db {
    pub async fn queue_stats(&self, now: Millis) -> Result<QueueStats> {
        let (depth, due, leased, oldest): (i64, i64, i64, Option<i64>) = on!(self, p => sqlx::query_as(
            "SELECT COUNT(*),
                    COALESCE(SUM(CASE WHEN run_at <= $1 THEN 1 ELSE 0 END), 0),
                    COALESCE(SUM(CASE WHEN lease_until IS NOT NULL AND lease_until >= $1 THEN 1 ELSE 0 END), 0),
                    MIN(CASE WHEN run_at <= $1 AND (lease_until IS NULL OR lease_until < $1) THEN run_at END)
             FROM jobs")
            .bind(now).fetch_one(p).await)?;
        Ok(QueueStats {
            depth,
            due,
            leased,
            lag_ms: oldest.map(|o| (now - o).max(0)).unwrap_or(0),
        })
    }

    pub async fn messages_by_status(&self) -> Result<Vec<(String, i64)>> {
        Ok(
            on!(self, p => sqlx::query_as::<_, (String, i64)>("SELECT status, COUNT(*) FROM messages GROUP BY status").fetch_all(p).await)?,
        )
    }
}
