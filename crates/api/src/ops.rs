//! Operational endpoints: liveness, readiness (database, queue lag, workers) and Prometheus metrics.

use crate::AppState;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use courierx_domain::now_ms;
use serde::Serialize;
use std::sync::atomic::Ordering;
use std::time::Instant;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Queue lag above which readiness reports the queue as degraded (still ready: lag is not an outage).
const LAG_WARN_MS: i64 = 60_000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(ready))
        .routes(routes!(metrics_text))
}

#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: String,
}

#[derive(Serialize, ToSchema)]
pub struct Check {
    pub name: String,
    /// `ok`, `degraded` or `failing`.
    pub status: String,
    pub latency_ms: u64,
    pub detail: String,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    /// `ok` or `unavailable`.
    pub status: String,
    pub checks: Vec<Check>,
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, body = Health)))]
async fn health() -> axum::Json<Health> {
    axum::Json(Health {
        status: "ok".into(),
    })
}

/// Readiness: the database answers, the queue is drained in time and workers run; provider
/// circuits that are open or half-open show as `degraded`.
#[utoipa::path(get, path = "/ready", tag = "operations", responses((status = 200, body = Ready), (status = 503, body = Ready)))]
async fn ready(State(state): State<AppState>) -> (StatusCode, axum::Json<Ready>) {
    let mut checks = Vec::new();
    let started = Instant::now();
    let db_ok = state.engine.db.ping().await;
    checks.push(Check {
        name: "database".into(),
        status: if db_ok.is_ok() { "ok" } else { "failing" }.into(),
        latency_ms: started.elapsed().as_millis() as u64,
        detail: match &db_ok {
            Ok(()) => format!("{:?}", state.engine.db.backend()).to_lowercase(),
            Err(e) => e.to_string(),
        },
    });
    let started = Instant::now();
    match state.engine.db.queue_stats(now_ms()).await {
        Ok(q) => checks.push(Check {
            name: "queue".into(),
            status: if q.lag_ms > LAG_WARN_MS {
                "degraded"
            } else {
                "ok"
            }
            .into(),
            latency_ms: started.elapsed().as_millis() as u64,
            detail: format!(
                "depth {}, due {}, leased {}, lag {} ms",
                q.depth, q.due, q.leased, q.lag_ms
            ),
        }),
        Err(e) => checks.push(Check {
            name: "queue".into(),
            status: "failing".into(),
            latency_ms: 0,
            detail: e.to_string(),
        }),
    }
    let h = &state.health;
    let (wstatus, wdetail) = match (
        h.workers_enabled.load(Ordering::Relaxed),
        h.workers_running.load(Ordering::Relaxed),
    ) {
        (false, _) => ("ok", "workers run in other processes"),
        (true, true) => ("ok", "running"),
        (true, false) => ("failing", "workers are not running"),
    };
    checks.push(Check {
        name: "workers".into(),
        status: wstatus.into(),
        latency_ms: 0,
        detail: wdetail.into(),
    });
    // One provider's outage degrades delivery (routes fail over) but does not make the process
    // unready. Errors stay out: this endpoint is unauthenticated and spans tenants.
    let circuits = state.engine.breakers.not_closed();
    checks.push(Check {
        name: "providers".into(),
        status: if circuits.is_empty() {
            "ok"
        } else {
            "degraded"
        }
        .into(),
        latency_ms: 0,
        detail: if circuits.is_empty() {
            "every provider circuit is closed".into()
        } else {
            circuits
                .iter()
                .map(|(id, v)| {
                    format!(
                        "provider {id} circuit {}",
                        serde_json::to_value(v.state)
                            .ok()
                            .and_then(|s| s.as_str().map(str::to_string))
                            .unwrap_or_default()
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        },
    });
    let failing = checks.iter().any(|c| c.status == "failing");
    let code = if failing {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (
        code,
        axum::Json(Ready {
            status: if failing { "unavailable" } else { "ok" }.into(),
            checks,
        }),
    )
}

/// Prometheus metrics: HTTP requests by route and status, messages by status, queue depth,
/// delivery latency.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, content_type = "text/plain", body = String)))]
async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    let db = &state.engine.db;
    if let Ok(rows) = db.messages_by_status().await {
        for s in courierx_domain::MessageStatus::ALL {
            let n = rows
                .iter()
                .find(|(st, _)| st == s.as_str())
                .map_or(0, |(_, n)| *n);
            metrics::gauge!("courierx_messages", "status" => s.as_str()).set(n as f64);
        }
    }
    if let Ok(q) = db.queue_stats(now_ms()).await {
        metrics::gauge!("courierx_queue_depth").set(q.depth as f64);
        metrics::gauge!("courierx_queue_due").set(q.due as f64);
        metrics::gauge!("courierx_queue_leased").set(q.leased as f64);
        metrics::gauge!("courierx_queue_lag_seconds").set(q.lag_ms as f64 / 1000.0);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}
