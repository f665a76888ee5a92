//! Signals between processes sharing a PostgreSQL database, over LISTEN/NOTIFY. SQLite serves a
//! single process, which acts on its own changes directly, so there these do nothing.

use crate::{Db, Result};
use std::time::Duration;

/// Jobs were enqueued: workers anywhere should look for due jobs.
pub const JOBS: &str = "courierx_jobs";
/// An API key was revoked or its project deleted; the payload is the project id.
pub const API_KEYS: &str = "courierx_api_keys";

impl Db {
    /// Announces a change on `channel` to every listening process (Postgres), itself included.
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<()> {
        if let Db::Postgres(p) = self {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(channel)
                .bind(payload)
                .execute(p)
                .await?;
        }
        Ok(())
    }

    /// Calls `on_signal(Some(payload))` for every notification on `channel`, and
    /// `on_signal(None)` whenever signals may have been missed (on every (re)connection and on
    /// losing the connection). Reconnects until aborted. `None` on SQLite.
    pub fn spawn_listener(
        &self,
        channel: &'static str,
        mut on_signal: impl FnMut(Option<&str>) + Send + 'static,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let Db::Postgres(pool) = self else {
            return None;
        };
        let pool = pool.clone();
        Some(tokio::spawn(async move {
            loop {
                let mut listener = match sqlx::postgres::PgListener::connect_with(&pool).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::warn!(error = %e, channel, "listener cannot connect; retrying");
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        continue;
                    }
                };
                if let Err(e) = listener.listen(channel).await {
                    tracing::warn!(error = %e, channel, "LISTEN failed; retrying");
                    tokio::time::sleep(Duration::from_secs(2)).await;
                    continue;
                }
                on_signal(None);
                loop {
                    match listener.recv().await {
                        Ok(n) => on_signal(Some(n.payload())),
                        Err(e) => {
                            tracing::warn!(error = %e, channel, "listener lost its connection; reconnecting");
                            on_signal(None);
                            break;
                        }
                    }
                }
            }
        }))
    }
}
