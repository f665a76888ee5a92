//! Start-up and shutdown of the `serve` and `worker` roles.

use crate::config::Settings;
use anyhow::Context;
use courierx_api::{ApiConfig, AppState, ProcessHealth};
use courierx_engine::delivery::Worker;
use courierx_engine::{Engine, SecretKey};
use courierx_store::idempotency::prune_idempotency;
use courierx_store::users::prune_login_failures;
use courierx_store::writer::Writer;
use courierx_store::{Db, notify};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Opens the configured database and brings its schema up to date.
pub async fn open_db(s: &Settings) -> anyhow::Result<Db> {
    let db = match &s.database_url {
        Some(url) => Db::open_postgres(url, s.pg_max_connections)
            .await
            .context("connecting to PostgreSQL (DATABASE_URL)")?,
        None => {
            std::fs::create_dir_all(&s.data_dir)
                .with_context(|| format!("creating data directory {}", s.data_dir.display()))?;
            let path = s.data_dir.join("courierx.db");
            Db::open_sqlite(&path)
                .await
                .with_context(|| format!("opening {}", path.display()))?
        }
    };
    db.migrate().await.context("running database migrations")?;
    Ok(db)
}

/// The secret key: configured, or (embedded SQLite only) kept in `<data_dir>/secret.key`, created
/// with mode 0600 on first start.
pub fn secret_key(s: &Settings) -> anyhow::Result<SecretKey> {
    if let Some(k) = &s.secret_key {
        return Ok(k.clone());
    }
    let path = s.data_dir.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            SecretKey::from_base64(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(&s.data_dir)?;
            let key = SecretKey::generate();
            write_private(&path, &key.to_base64())?;
            tracing::info!(path = %path.display(), "created a new secret key; back it up with the database");
            Ok(key)
        }
        Err(e) => Err(anyhow::anyhow!("reading {}: {e}", path.display())),
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(contents.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// The process-wide metrics recorder (installed once; later calls share it).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0,
                ])
                .map(|b| b.build_recorder())
                .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

pub struct Core {
    pub engine: Arc<Engine>,
    writer_tasks: Vec<courierx_store::writer::WriterDone>,
}

pub async fn start_core(s: &Settings) -> anyhow::Result<Core> {
    let db = open_db(s).await?;
    let key = secret_key(s)?;
    let writers = match db.backend() {
        courierx_store::Backend::Sqlite => 1,
        courierx_store::Backend::Postgres => 4,
    };
    let (writer, writer_tasks) = Writer::start(db.clone(), writers)?;
    let engine = Arc::new(Engine::new(db, writer, s.engine.clone(), &key));
    spawn_housekeeping(engine.clone());
    Ok(Core {
        engine,
        writer_tasks,
    })
}

impl Core {
    /// Flushes queued writes and closes the database.
    async fn close(self) {
        let db = self.engine.db.clone();
        drop(self.engine);
        for t in self.writer_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
        db.close().await;
    }
}

fn spawn_housekeeping(engine: Arc<Engine>) {
    // Weak: the engine must drop at shutdown so its writer can flush and stop.
    let weak = Arc::downgrade(&engine);
    let prune_weak = weak.clone();
    drop(engine);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(2));
        for round in 0u64.. {
            tick.tick().await;
            let Some(engine) = weak.upgrade() else {
                break;
            };
            // The send race lasts seconds: look back 15 minutes, and everything every 10.
            let since = if round % 300 == 0 {
                0
            } else {
                courierx_domain::now_ms() - 15 * 60_000
            };
            if let Err(e) = engine.reconcile_events(since).await {
                tracing::warn!(error = %e, "applying pending provider events failed");
            }
        }
    });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tick.tick().await;
            let Some(engine) = prune_weak.upgrade() else {
                break;
            };
            let pruned = engine
                .write(courierx_domain::now_ms(), |now, tx| {
                    Box::pin(async move {
                        prune_idempotency(tx, *now).await?;
                        prune_login_failures(tx, *now - 24 * 3_600_000).await
                    })
                })
                .await;
            if let Err(e) = pruned {
                tracing::warn!(error = %e, "pruning idempotency keys and login failures failed");
            }
        }
    });
}

/// Runs the HTTP API and the workers until `shutdown` resolves; then stops accepting requests,
/// lets in-flight deliveries finish (or releases them after the grace period) and flushes writes.
pub async fn serve(
    s: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let core = start_core(&s).await?;
    let health = Arc::new(ProcessHealth::default());
    health
        .workers_enabled
        .store(s.run_workers, Ordering::Relaxed);
    let state = AppState {
        engine: core.engine.clone(),
        cfg: Arc::new(ApiConfig::new(
            s.signup,
            s.body_limit,
            s.max_attachment_bytes,
        )),
        metrics: metrics_handle(),
        health: health.clone(),
        keys: Default::default(),
        webhooks: Arc::new(courierx_providers::webhooks::WebhookContext::with_timeout(
            courierx_providers::webhooks::SnsUrlPolicy {
                extra_prefixes: s.sns_allowed_url_prefixes.clone(),
            },
            Duration::from_secs(10),
        )),
    };
    let keys = state.keys.clone();
    let key_listener =
        core.engine
            .db
            .spawn_listener(notify::API_KEYS, move |project| match project {
                Some(project) => keys.forget_project(project),
                None => keys.clear(),
            });
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener_task = if s.run_workers {
        core.engine.db.spawn_job_listener(core.engine.wake.clone())
    } else {
        None
    };
    let worker = s.run_workers.then(|| Worker::new(core.engine.clone()));
    let worker_health = health.clone();
    let worker_task = tokio::spawn(async move {
        if let Some(worker) = worker {
            worker_health.workers_running.store(true, Ordering::Relaxed);
            worker.run(stop_rx).await;
            worker_health
                .workers_running
                .store(false, Ordering::Relaxed);
        }
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, backend = ?core.engine.db.backend(), "CourierX listening on http://{addr}");
    let app = courierx_api::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = http_stop_rx.await;
            })
            .await
    });
    shutdown.await;
    tracing::info!("shutting down: finishing in-flight requests and deliveries");
    let _ = http_stop_tx.send(());
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(30), http).await {
        Ok(Ok(Err(e))) => tracing::warn!(error = %e, "HTTP server error during shutdown"),
        Err(_) => tracing::warn!("HTTP connections still open after 30 s; closing"),
        _ => {}
    }
    let _ = worker_task.await;
    for t in [listener_task, key_listener].into_iter().flatten() {
        t.abort();
    }
    core.close().await;
    tracing::info!("stopped");
    Ok(())
}

/// Runs workers only (no HTTP), sharing the database with `serve` processes.
pub async fn work(
    s: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let core = start_core(&s).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let listener_task = core.engine.db.spawn_job_listener(core.engine.wake.clone());
    let task = tokio::spawn(Worker::new(core.engine.clone()).run(stop_rx));
    shutdown.await;
    let _ = stop_tx.send(true);
    let _ = task.await;
    if let Some(t) = listener_task {
        t.abort();
    }
    core.close().await;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
