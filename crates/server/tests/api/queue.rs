//! The queue's guarantees, checked at the store level with an injected clock (claims take `now`)
//! and end to end: fenced outcomes, exclusive claims, fairness across tenants, priority, TTL,
//! max attempts and the attempt deadline.

use crate::both;
use crate::helpers::{Backend, Tenant, TestApp, simple_email};
use crate::smtp_server::{Behavior, SmtpServer};
use courierx_domain::now_ms;
use courierx_store::writer::{AttemptRecord, ClaimRequest, ClaimResult, Outcome, Writer};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

both!(
    stale_outcome_changes_nothing,
    claims_are_exclusive,
    claims_interleave_tenants,
    priority_orders_a_project,
    expired_messages_end_without_a_provider,
    jobs_never_outlive_max_attempts,
    attempt_deadline_bounds_a_hung_provider,
    slow_tenant_does_not_hold_every_slot,
    a_panicking_provider_fails_one_message_not_the_worker,
);

const LEASE: i64 = 60_000;

fn req(worker: &str, now: i64, limit: i64) -> ClaimRequest {
    ClaimRequest {
        worker: worker.into(),
        now,
        lease_ms: LEASE,
        limit,
        inflight: HashMap::new(),
        tenant_cap: 1_000,
        lane_cursor: String::new(),
        reap: false,
    }
}

fn sent(c: &ClaimResult, i: usize) -> AttemptRecord {
    let j = &c.jobs[i].job;
    AttemptRecord {
        tenant_id: j.tenant_id.clone(),
        message_id: j.message_id.clone(),
        provider_id: None,
        attempt: j.attempts,
        fence: j.fence,
        at: now_ms(),
        latency_ms: 1,
        failovers: vec![],
        suppressed: vec![],
        outcome: Outcome::Sent {
            job_id: j.id.clone(),
            provider_message_id: Some(format!("pm-{}", j.fence)),
            sandbox: None,
        },
    }
}

/// An API-only server (no workers), so the test's own claims are the only ones.
async fn quiet(backend: Backend) -> (TestApp, Writer) {
    let app = TestApp::spawn_with(backend, |r| r.set("run_workers", "false")).await;
    let (writer, _) = Writer::start(app.db().await, 2).expect("writer");
    (app, writer)
}

async fn tenant_with_smtp(app: &TestApp, name: &str, smtp: &SmtpServer) -> Tenant {
    let t = app.tenant(name).await;
    app.use_smtp(&t, smtp.port(), json!({})).await;
    t
}

/// A tenant whose relay accepts connections and never answers (its own timeout far away).
async fn hung_tenant(app: &TestApp, name: &str) -> (Tenant, SmtpServer) {
    let smtp = SmtpServer::start(Behavior {
        hang: true,
        ..Default::default()
    })
    .await;
    let t = app.tenant(name).await;
    app.use_smtp(&t, smtp.port(), json!({"timeout_ms": 60_000}))
        .await;
    (t, smtp)
}

fn assert_last_error(m: &Value, needle: &str) {
    assert!(
        m["last_error"].as_str().is_some_and(|e| e.contains(needle)),
        "last_error should mention {needle}: {m}"
    );
}

async fn events(app: &TestApp, t: &Tenant, id: &str) -> Vec<String> {
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    m["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["type"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

async fn send_many(app: &TestApp, t: &Tenant, n: usize, extra: Value) {
    let mut left = n;
    while left > 0 {
        let k = left.min(500);
        let mut item = simple_email();
        if let (Some(o), Some(e)) = (item.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        let (s, v) = app
            .post(
                "/api/v1/messages/batch",
                Some(&t.key),
                json!({"messages": vec![item; k]}),
            )
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        left -= k;
    }
}

async fn stale_outcome_changes_nothing(backend: Backend) {
    let (app, writer) = quiet(backend).await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    let t = tenant_with_smtp(&app, "Acme", &smtp).await;
    let id = app.send(&t.key, simple_email()).await;
    let t0 = now_ms();
    let first = writer.claim(req("w1", t0, 10)).await.unwrap();
    assert_eq!(first.jobs.len(), 1);
    // Within the lease nobody else gets it.
    assert!(
        writer
            .claim(req("w2", t0 + 1, 10))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    // The lease runs out mid-send: a second worker claims the job with a new fence.
    let second = writer.claim(req("w2", t0 + LEASE + 1, 10)).await.unwrap();
    assert_eq!(second.jobs.len(), 1);
    assert!(second.jobs[0].job.fence > first.jobs[0].job.fence);
    // The first worker's late outcomes (plain send, retry, failure) change nothing.
    assert!(!writer.record(sent(&first, 0)).await.unwrap());
    let mut retry = sent(&first, 0);
    retry.outcome = Outcome::Retry {
        job_id: first.jobs[0].job.id.clone(),
        run_at: t0,
        error: "late".into(),
    };
    assert!(!writer.record(retry).await.unwrap());
    let mut failed = sent(&first, 0);
    failed.outcome = Outcome::Failed {
        job_id: first.jobs[0].job.id.clone(),
        error: "late".into(),
    };
    failed.failovers = vec![courierx_store::writer::ProviderTry {
        provider_id: "p".into(),
        outcome: "transient",
        latency_ms: 1,
        error: "x".into(),
    }];
    assert!(!writer.record(failed).await.unwrap());
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(m["status"], "sending", "{m}");
    assert_eq!(events(&app, &t, &id).await, ["queued"]);
    // The current holder's outcome lands, once.
    assert!(writer.record(sent(&second, 0)).await.unwrap());
    assert!(!writer.record(sent(&second, 0)).await.unwrap());
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(m["status"], "sent", "{m}");
    assert_eq!(m["provider_message_id"], "pm-2", "{m}");
    assert_eq!(events(&app, &t, &id).await, ["queued", "sent"]);
}

async fn claims_are_exclusive(backend: Backend) {
    let (app, writer) = quiet(backend).await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    let t = tenant_with_smtp(&app, "Acme", &smtp).await;
    send_many(&app, &t, 300, json!({})).await;
    let now = now_ms();
    let mut workers = Vec::new();
    for w in 0..4 {
        let writer = writer.clone();
        workers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            loop {
                let c = writer
                    .claim(req(&format!("w{w}"), now, 7))
                    .await
                    .expect("claim");
                if c.jobs.is_empty() {
                    return got;
                }
                got.extend(c.jobs.into_iter().map(|j| j.job.id));
            }
        }));
    }
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await.unwrap());
    }
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(all.len(), 300, "every job claimed");
    assert_eq!(unique.len(), 300, "no job claimed twice within its lease");
}

async fn claims_interleave_tenants(backend: Backend) {
    let (app, writer) = quiet(backend).await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    let a = tenant_with_smtp(&app, "Alpha", &smtp).await;
    let b = tenant_with_smtp(&app, "Beta", &smtp).await;
    // Tenant A's backlog is older than B's one message.
    send_many(&app, &a, 10_000, json!({})).await;
    let bid = app.send(&b.key, simple_email()).await;
    let now = now_ms();
    let c = writer.claim(req("w", now, 8)).await.unwrap();
    assert_eq!(c.jobs.len(), 8);
    assert!(
        c.jobs.iter().any(|j| j.job.message_id == bid),
        "B's message is in the first claim despite A's 10,000 older ones"
    );
    // A tenant at its cap gets nothing more; the others still do.
    let c2 = writer
        .claim(ClaimRequest {
            inflight: HashMap::from([(a.session.tenant_id.clone(), 5)]),
            tenant_cap: 5,
            ..req("w", now, 8)
        })
        .await
        .unwrap();
    assert!(c2.jobs.is_empty(), "A is at its cap and B has nothing left");
    let c3 = writer
        .claim(ClaimRequest {
            inflight: HashMap::from([(a.session.tenant_id.clone(), 3)]),
            tenant_cap: 5,
            ..req("w", now, 8)
        })
        .await
        .unwrap();
    assert_eq!(c3.jobs.len(), 2, "A gets only up to its cap");
}

async fn priority_orders_a_project(backend: Backend) {
    let (app, writer) = quiet(backend).await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    let t = tenant_with_smtp(&app, "Acme", &smtp).await;
    let mut ids = HashMap::new();
    for p in ["low", "normal", "high"] {
        let mut m = simple_email();
        m["priority"] = p.into();
        ids.insert(app.send(&t.key, m).await, p);
    }
    let (_, m) = app
        .get(
            &format!("/api/v1/messages/{}", ids.keys().next().unwrap()),
            &t.key,
        )
        .await;
    assert!(["low", "normal", "high"].contains(&m["priority"].as_str().unwrap()));
    let now = now_ms();
    let mut order = Vec::new();
    for _ in 0..3 {
        let c = writer.claim(req("w", now, 1)).await.unwrap();
        order.push(ids[&c.jobs[0].job.message_id]);
    }
    assert_eq!(order, ["high", "normal", "low"]);
    let mut bad = simple_email();
    bad["priority"] = "urgent".into();
    let (s, v) = app.post("/api/v1/messages", Some(&t.key), bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"][0]["field"], "priority", "{v}");
}

async fn expired_messages_end_without_a_provider(backend: Backend) {
    let (app, writer) = quiet(backend).await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    let t = tenant_with_smtp(&app, "Acme", &smtp).await;
    let mut m = simple_email();
    m["ttl_seconds"] = 60.into();
    let id = app.send(&t.key, m).await;
    let (_, v) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert!(v["expires_at"].is_string(), "{v}");
    // Before its expiry it is claimable; a minute later the reaper ends it instead.
    let later = now_ms() + 61_000;
    let c = writer
        .claim(ClaimRequest {
            reap: true,
            ..req("w", later, 10)
        })
        .await
        .unwrap();
    assert!(c.jobs.is_empty());
    assert_eq!(c.reaped, [(id.clone(), "expired")]);
    let (_, v) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(v["status"], "expired", "{v}");
    assert_eq!(events(&app, &t, &id).await, ["queued", "expired"]);
    assert_eq!(smtp.received().len(), 0, "no provider was called");
    // Validation.
    for (body, field) in [
        (json!({"ttl_seconds": 0}), "ttl_seconds"),
        (
            json!({"ttl_seconds": 5, "expires_at": "2099-01-01T00:00:00Z"}),
            "ttl_seconds",
        ),
        (json!({"expires_at": "2001-01-01T00:00:00Z"}), "expires_at"),
        (json!({"expires_at": "soon"}), "expires_at"),
    ] {
        let mut m = simple_email();
        m.as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        let (s, v) = app.post("/api/v1/messages", Some(&t.key), m).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["details"][0]["field"], field, "{v}");
    }
}

async fn jobs_never_outlive_max_attempts(backend: Backend) {
    let app = TestApp::spawn_with(backend, |r| {
        r.set("run_workers", "false");
        r.set("max_attempts", "2");
    })
    .await;
    let (writer, _) = Writer::start(app.db().await, 1).expect("writer");
    let smtp = SmtpServer::start(Behavior::default()).await;
    let t = tenant_with_smtp(&app, "Acme", &smtp).await;
    let id = app.send(&t.key, simple_email()).await;
    let t0 = now_ms();
    // Two workers die mid-attempt, one after the other.
    assert_eq!(writer.claim(req("w1", t0, 5)).await.unwrap().jobs.len(), 1);
    let c = writer.claim(req("w2", t0 + LEASE + 1, 5)).await.unwrap();
    assert_eq!(c.jobs[0].job.attempts, 2);
    // The last allowed attempt's lease expires: no claim takes it, the reaper fails it.
    let late = t0 + 2 * LEASE + 2;
    assert!(
        writer
            .claim(req("w3", late, 5))
            .await
            .unwrap()
            .jobs
            .is_empty()
    );
    let c = writer
        .claim(ClaimRequest {
            reap: true,
            ..req("w3", late, 5)
        })
        .await
        .unwrap();
    assert_eq!(c.reaped, [(id.clone(), "max_attempts")]);
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(m["status"], "failed", "{m}");
    assert_last_error(&m, "lost its lease");
    assert_eq!(events(&app, &t, &id).await, ["queued", "failed"]);
}

async fn attempt_deadline_bounds_a_hung_provider(backend: Backend) {
    // A 1.5 s lease: the attempt must give up and record its outcome before the lease ends.
    let app = TestApp::spawn_with(backend, |r| {
        r.set("lease_ms", "1500");
        r.set("max_attempts", "1");
    })
    .await;
    let (t, _smtp) = hung_tenant(&app, "Acme").await;
    let id = app.send(&t.key, simple_email()).await;
    let m = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(m["attempts"], 1, "one attempt, never leased again: {m}");
    assert_last_error(&m, "deadline");
    assert_eq!(events(&app, &t, &id).await, ["queued", "failed"]);
}

async fn slow_tenant_does_not_hold_every_slot(backend: Backend) {
    // Tenant A's relay never answers; with 4 slots A may hold 3, so B's message finds the fourth.
    let app = TestApp::spawn_with(backend, |r| {
        r.set("worker_concurrency", "4");
    })
    .await;
    let (a, _hung) = hung_tenant(&app, "Alpha").await;
    let fast = SmtpServer::start(Behavior::default()).await;
    let b = tenant_with_smtp(&app, "Beta", &fast).await;
    send_many(&app, &a, 2_000, json!({})).await;
    let id = app.send(&b.key, simple_email()).await;
    app.wait_status(&b.key, &id, "sent").await;
    let (_, v) = app
        .get("/api/v1/messages?status=queued&limit=100", &a.key)
        .await;
    assert_eq!(
        v["data"].as_array().map(Vec::len),
        Some(100),
        "A's backlog is still there: B did not wait for it"
    );
}

/// Panics on its first send, then sends.
struct PanicsOnce(AtomicBool);

#[async_trait::async_trait]
impl courierx_providers::EmailProvider for PanicsOnce {
    async fn send(
        &self,
        _: &courierx_providers::OutboundEmail,
    ) -> Result<courierx_providers::SendReceipt, courierx_providers::SendError> {
        if !self.0.swap(true, Ordering::SeqCst) {
            panic!("provider bug");
        }
        Ok(courierx_providers::SendReceipt::default())
    }

    async fn health(&self) -> courierx_providers::HealthReport {
        courierx_providers::HealthReport {
            healthy: true,
            detail: String::new(),
        }
    }
}

async fn a_panicking_provider_fails_one_message_not_the_worker(backend: Backend) {
    use courierx_engine::delivery::Worker;
    use courierx_engine::{Engine, EngineConfig, SecretKey};
    let app = TestApp::spawn_with(backend, |r| r.set("run_workers", "false")).await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    let t = app.tenant("Acme").await;
    let pid = app.use_smtp(&t, smtp.port(), json!({})).await;
    let db = app.db().await;
    let (writer, _) = Writer::start(db.clone(), 1).expect("writer");
    let engine = Arc::new(Engine::new(
        db.clone(),
        writer,
        EngineConfig::default(),
        &SecretKey::generate(),
    ));
    let row = db
        .provider_by_id(pid.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    engine
        .providers
        .pin(&row, Arc::new(PanicsOnce(AtomicBool::new(false))));
    let (stop, rx) = tokio::sync::watch::channel(false);
    let worker = tokio::spawn(Worker::new(engine.clone()).run(rx));
    let first = app.send(&t.key, simple_email()).await;
    let m = app.wait_status(&t.key, &first, "failed").await;
    assert_last_error(&m, "panicked (provider bug)");
    assert_eq!(events(&app, &t, &first).await, ["queued", "failed"]);
    // The same worker goes on delivering.
    let second = app.send(&t.key, simple_email()).await;
    app.wait_status(&t.key, &second, "sent").await;
    let _ = stop.send(true);
    worker.await.unwrap();
}
