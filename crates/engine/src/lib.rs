//! The use cases shared by the API and the CLI: accepting messages, delivering them, managing
//! provider secrets and authenticating users.

pub mod accept;
pub mod auth;
pub mod backoff;
pub mod breaker;
pub mod delivery;
pub mod events;
pub mod housekeeping;
pub mod pacing;
pub mod project_cache;
pub mod providers;
pub mod routing;
pub mod secrets;
pub mod settings;
pub mod templates;
pub mod tracking;
pub mod ttl_cache;

use courierx_store::writer::{WriteFuture, Writer};
use courierx_store::{Backend, Db, StoreError, Tx};
use std::sync::Arc;
use tokio::sync::Notify;

pub use secrets::{SecretBox, SecretKey};

/// Delivery and queue settings (validated by the CLI's config loader).
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub max_attempts: i64,
    pub backoff_base_ms: i64,
    pub backoff_max_ms: i64,
    pub lease_ms: i64,
    pub worker_concurrency: usize,
    pub idempotency_ttl_ms: i64,
    /// How long shutdown waits for in-flight deliveries before releasing them.
    pub shutdown_grace_ms: u64,
    /// Where recipients reach CourierX: tracking and unsubscribe links are built on it.
    pub public_url: String,
    pub retention: housekeeping::RetentionConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            backoff_base_ms: 30_000,
            backoff_max_ms: 3_600_000,
            lease_ms: 120_000,
            worker_concurrency: 50,
            idempotency_ttl_ms: 24 * 3_600_000,
            shutdown_grace_ms: 30_000,
            public_url: "http://127.0.0.1:8080".into(),
            retention: Default::default(),
        }
    }
}

/// Everything a request handler or worker needs. Cheap to share behind an `Arc`.
pub struct Engine {
    pub db: Db,
    pub writer: Writer,
    pub cfg: EngineConfig,
    pub secrets: SecretBox,
    pub tokens: auth::TokenKeys,
    /// Wakes this process's workers when a job is enqueued (no tight polling).
    pub wake: Arc<Notify>,
    pub providers: providers::ProviderCache,
    pub projects: project_cache::ProjectCache,
    pub breakers: breaker::Breakers,
    pub pacers: pacing::Pacers,
    pub balancer: routing::Balancer,
    /// Compiled template versions (immutable, so never stale).
    pub templates: templates::TemplateCache,
    /// Signs and checks open/click/unsubscribe tokens.
    pub tracking: tracking::TrackingKeys,
}

impl Engine {
    pub fn new(db: Db, writer: Writer, cfg: EngineConfig, key: &SecretKey) -> Self {
        Self {
            db,
            writer,
            cfg,
            secrets: SecretBox::new(key),
            tokens: auth::TokenKeys::derive(key),
            wake: Arc::new(Notify::new()),
            providers: providers::ProviderCache::default(),
            projects: Default::default(),
            breakers: Default::default(),
            pacers: Default::default(),
            balancer: Default::default(),
            templates: Default::default(),
            tracking: tracking::TrackingKeys::new(key),
        }
    }
}

impl Engine {
    /// Runs a short write off the hot path (tracking, webhooks, unsubscribes, suppressions,
    /// cancels, reconciling, housekeeping) in one transaction. SQLite: inside the group-commit
    /// writer, so the database has one writing connection and nobody waits on its lock.
    /// PostgreSQL: its own transaction on the pool; Postgres locks rows, not the database, so
    /// there is no contention to avoid, and a row-lock wait inside a group commit would stall
    /// every accept in that group.
    pub async fn write<S, T, F>(&self, input: S, f: F) -> Result<T, StoreError>
    where
        S: Send + Sync + 'static,
        T: Send + 'static,
        F: for<'a> Fn(&'a S, &'a mut Tx) -> WriteFuture<'a, T> + Send + Sync + 'static,
    {
        match self.db.backend() {
            Backend::Sqlite => self.writer.run(input, f).await,
            Backend::Postgres => {
                let mut tx = self.db.begin().await?;
                let out = f(&input, &mut tx).await?;
                tx.commit().await?;
                Ok(out)
            }
        }
    }
}
