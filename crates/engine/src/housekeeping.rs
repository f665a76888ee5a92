//! Housekeeping: the scheduled retention pass (see `courierx_store::housekeeping`) and the
//! folding of PostgreSQL's counter deltas. Every `serve` and `worker` process runs it; passes on
//! several processes at once are harmless (a row one deletes, the other skips).

use crate::events::{NONCE_RETENTION_MS, UNMATCHED_RETENTION_MS};
use courierx_domain::{Millis, now_ms};
use courierx_store::housekeeping::Expiring;
use courierx_store::{Db, StoreError};
use std::time::Duration;
use tokio::sync::watch;

const DAY_MS: Millis = 24 * 3_600_000;
/// Rows per batch (one short transaction each).
const BATCH: i64 = 500;
/// Batches per kind and pass: a backlog (say, after retention is first enabled) drains over
/// several passes instead of one long one.
const MAX_BATCHES: usize = 200;
/// How often the counter deltas are folded in (each scrape reads the unfolded ones).
const COMPACT_EVERY: Duration = Duration::from_secs(2);
/// Failed logins only matter within the lockout window; a day is ample.
const LOGIN_FAILURE_RETENTION_MS: Millis = DAY_MS;

/// How long data is kept, from the settings.
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Messages (with their events, attachments and recipient states) after their last change
    /// in a terminal status.
    pub messages_ms: Millis,
    /// Raw MIME kept by the sandbox provider.
    pub sandbox_ms: Millis,
    /// Provider events that were matched to a message (unmatched ones go after 7 days).
    pub provider_events_ms: Millis,
    /// Time between retention passes.
    pub interval: Duration,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            messages_ms: 30 * DAY_MS,
            sandbox_ms: 7 * DAY_MS,
            provider_events_ms: 30 * DAY_MS,
            interval: Duration::from_secs(60),
        }
    }
}

/// Rows one pass deleted, by kind (the `kind` label of `courierx_housekeeping_deleted_total`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub deleted: Vec<(&'static str, u64)>,
}

impl PassReport {
    pub fn get(&self, kind: &str) -> u64 {
        self.deleted
            .iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n)
            .sum()
    }

    fn add(&mut self, kind: &'static str, n: u64) {
        if n > 0 {
            metrics::counter!("courierx_housekeeping_deleted_total", "kind" => kind).increment(n);
            match self.deleted.iter_mut().find(|(k, _)| *k == kind) {
                Some((_, total)) => *total += n,
                None => self.deleted.push((kind, n)),
            }
        }
    }
}

/// One retention pass as of `now`: each kind in batches until a batch deletes nothing (or the
/// per-pass cap).
pub async fn run_once(
    db: &Db,
    cfg: &RetentionConfig,
    now: Millis,
) -> Result<PassReport, StoreError> {
    let mut report = PassReport::default();
    for _ in 0..MAX_BATCHES {
        let p = db.purge_messages(now - cfg.messages_ms, BATCH).await?;
        report.add("messages", p.messages);
        report.add("message_events", p.message_events);
        report.add("attachment_blobs", p.attachment_blobs);
        if p.messages == 0 {
            break;
        }
    }
    let expiring = [
        (
            Expiring::SandboxMessages,
            "sandbox_messages",
            now - cfg.sandbox_ms,
        ),
        (
            Expiring::MatchedProviderEvents,
            "provider_events",
            now - cfg.provider_events_ms,
        ),
        (
            Expiring::UnmatchedProviderEvents,
            "provider_events",
            now - UNMATCHED_RETENTION_MS,
        ),
        (Expiring::ExpiredRefreshTokens, "refresh_tokens", now),
        (Expiring::RevokedRefreshTokens, "refresh_tokens", now),
        (Expiring::IdempotencyKeys, "idempotency_keys", now),
        (
            Expiring::WebhookNonces,
            "webhook_nonces",
            now - NONCE_RETENTION_MS,
        ),
        (
            Expiring::LoginFailures,
            "login_failures",
            now - LOGIN_FAILURE_RETENTION_MS,
        ),
    ];
    for (what, kind, before) in expiring {
        for _ in 0..MAX_BATCHES {
            let n = db.purge_expired(what, before, BATCH).await?;
            report.add(kind, n);
            if n == 0 {
                break;
            }
        }
    }
    Ok(report)
}

/// Runs retention every `cfg.interval` (the first pass at start-up) and folds counter deltas
/// every two seconds, until `stop` turns true.
pub async fn run(db: Db, cfg: RetentionConfig, mut stop: watch::Receiver<bool>) {
    let mut compact = tokio::time::interval(COMPACT_EVERY);
    let mut retention = tokio::time::interval(cfg.interval);
    // A pass that overran its interval is not worth catching up on.
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = compact.tick() => {
                if let Err(e) = db.compact_counters().await {
                    tracing::warn!(error = %e, "folding counter deltas failed");
                }
            }
            _ = retention.tick() => {
                // Shutdown does not wait for a pass: the batch in progress rolls back.
                tokio::select! {
                    _ = stop.changed() => break,
                    r = run_once(&db, &cfg, now_ms()) => match r {
                        Ok(report) if !report.deleted.is_empty() => {
                            tracing::info!(deleted = ?report.deleted, "housekeeping pass");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "housekeeping pass failed"),
                    },
                }
            }
        }
        if *stop.borrow() {
            break;
        }
    }
}
