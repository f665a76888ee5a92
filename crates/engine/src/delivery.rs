//! The delivery worker: claims due jobs with a lease, sends through the project's provider with no
//! database transaction open across the call, and records the outcome through the group-commit
//! writer. It sleeps until the next job is due or it is woken, never polling in a tight loop.

use crate::Engine;
use crate::backoff::delay_ms;
use crate::pacing::Later;
use crate::project_cache::ProjectSnapshot;
use crate::routing::{PlanTarget, RoutingInput};
use courierx_domain::{Attachment, Mailbox, now_ms};
use courierx_providers::{OutboundEmail, SendError, SendReceipt};
use courierx_store::messages::MessageRow;
use courierx_store::sandbox::SandboxRow;
use courierx_store::writer::{
    AttemptRecord, ClaimRequest, Claimed, Outcome, ProviderTry, SuppressedRecipient,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, watch};

/// How long an idle worker sleeps at most before looking again (covers jobs enqueued by other
/// processes when no cross-process wake-up arrives).
const IDLE_MAX: Duration = Duration::from_secs(1);

/// How long a busy worker waits to gather free slots before claiming anyway.
const CLAIM_GATHER: Duration = Duration::from_millis(5);

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
        let inflight: Arc<Mutex<HashMap<String, String>>> = Arc::default();
        let mut tasks = tokio::task::JoinSet::new();
        tracing::info!(worker = %self.id, concurrency = e.cfg.worker_concurrency, "worker started");
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
            let now = now_ms();
            let req = ClaimRequest {
                worker: self.id.clone(),
                now,
                lease_ms: e.cfg.lease_ms,
                limit: free.min(256) as i64,
            };
            let jobs = match e.writer.claim(req).await {
                Ok(j) => j,
                Err(err) => {
                    tracing::warn!(error = %err, "claiming jobs failed");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = shutdown.changed() => {}
                    }
                    continue;
                }
            };
            if jobs.is_empty() {
                let wait = match e.db.next_job_due().await {
                    Ok(Some(due)) => Duration::from_millis(
                        (due - now_ms()).clamp(0, IDLE_MAX.as_millis() as i64) as u64,
                    ),
                    _ => IDLE_MAX,
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = e.wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
            for job in jobs {
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                if let Ok(mut m) = inflight.lock() {
                    m.insert(job.job.id.clone(), job.job.message_id.clone());
                }
                let (e, inflight) = (e.clone(), inflight.clone());
                tasks.spawn(async move {
                    let id = job.job.id.clone();
                    deliver(&e, job).await;
                    if let Ok(mut m) = inflight.lock() {
                        m.remove(&id);
                    }
                    drop(permit);
                });
            }
        }
        let grace = Duration::from_millis(e.cfg.shutdown_grace_ms);
        if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tasks.abort_all();
        }
        let left: Vec<(String, String)> = inflight
            .lock()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default();
        for (job, message) in left {
            if let Err(err) = e.db.release_job(&job, &message, now_ms()).await {
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

fn parse_list(json: &str) -> Vec<Mailbox> {
    serde_json::from_str::<Vec<String>>(json)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Mailbox::parse(s).ok())
        .collect()
}

/// Rebuilds the outbound email from its stored row (stored values were validated on the way in).
fn outbound(m: &MessageRow) -> Result<OutboundEmail, SendError> {
    let from = Mailbox::parse(&m.from_addr)
        .map_err(|e| SendError::Permanent(format!("stored from address: {e}")))?;
    let headers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&m.headers).unwrap_or_default();
    Ok(OutboundEmail {
        message_id: m
            .id
            .parse()
            .map_err(|_| SendError::Permanent("stored message id is malformed".into()))?,
        created_at: m.created_at,
        from,
        to: parse_list(&m.to_addrs),
        cc: parse_list(&m.cc_addrs),
        bcc: parse_list(&m.bcc_addrs),
        reply_to: m.reply_to.as_deref().and_then(|r| Mailbox::parse(r).ok()),
        subject: m.subject.clone(),
        html: m.html.clone(),
        text: m.text_body.clone(),
        headers: headers
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect(),
        tags: serde_json::from_str(&m.tags).unwrap_or_default(),
        metadata: serde_json::from_str(&m.metadata).unwrap_or_default(),
        attachments: vec![],
        idempotency_key: m.idempotency_key.clone(),
    })
}

/// Adds what the project asks for at send time: open/click tracking in the HTML, and RFC 8058
/// one-click unsubscribe headers for non-transactional categories (one recipient per message,
/// enforced at accept, so the token names that recipient).
fn decorate(e: &Engine, msg: &MessageRow, snap: &ProjectSnapshot, out: &mut OutboundEmail) {
    let s = &snap.settings;
    let base = e.cfg.public_url.trim_end_matches('/');
    if (s.track_opens || s.track_clicks)
        && let Some(html) = &out.html
    {
        out.html = Some(crate::tracking::instrument(
            html,
            base,
            out.message_id,
            &e.tracking,
            s.track_opens,
            s.track_clicks,
        ));
    }
    let category = msg
        .category
        .as_deref()
        .and_then(|c| courierx_domain::Category::parse(c).ok())
        .filter(|c| s.unsubscribable(c));
    let caller_set = out
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("List-Unsubscribe"));
    if let (Some(category), Some(rcpt), Ok(project_id), false) =
        (category, out.to.first(), msg.project_id.parse(), caller_set)
    {
        let token = e.tracking.sign(&crate::tracking::Token::Unsubscribe {
            project_id,
            message_id: out.message_id,
            email: rcpt.address.clone(),
            category: category.to_string(),
        });
        let mut value = format!("<{base}/u/{token}>");
        if let Some(m) = &s.unsubscribe_mailto {
            value.push_str(&format!(", <mailto:{m}?subject=unsubscribe%20{token}>"));
        }
        out.headers.push(("List-Unsubscribe".into(), value));
        out.headers.push((
            "List-Unsubscribe-Post".into(),
            "List-Unsubscribe=One-Click".into(),
        ));
    }
}

/// Removes suppressed recipients from the email and says who and why. Category unsubscribes
/// count only for the project's non-transactional categories.
async fn drop_suppressed(
    e: &Engine,
    msg: &MessageRow,
    snap: &ProjectSnapshot,
    email: &mut OutboundEmail,
) -> Result<Vec<SuppressedRecipient>, courierx_store::StoreError> {
    let all: Vec<String> = email
        .to
        .iter()
        .chain(&email.cc)
        .chain(&email.bcc)
        .map(|m| m.address.as_str().to_string())
        .collect();
    let category = msg
        .category
        .as_deref()
        .and_then(|c| courierx_domain::Category::parse(c).ok())
        .filter(|c| snap.settings.unsubscribable(c));
    let rows =
        e.db.suppressed_among(
            &msg.tenant_id,
            &msg.project_id,
            &all,
            category.as_ref().map(|c| c.as_str()),
            now_ms(),
        )
        .await?;
    let mut dropped: Vec<SuppressedRecipient> = Vec::new();
    for r in rows {
        if !dropped.iter().any(|d| d.email == r.email) {
            dropped.push(SuppressedRecipient {
                email: r.email,
                reason: r.reason,
                scope: r.scope,
            });
        }
    }
    if !dropped.is_empty() {
        let keep = |m: &Mailbox| {
            let lower = m.address.as_str().to_lowercase();
            !dropped.iter().any(|d| d.email == lower)
        };
        email.to.retain(keep);
        email.cc.retain(keep);
        email.bcc.retain(keep);
        metrics::counter!("courierx_recipients_suppressed_total").increment(dropped.len() as u64);
    }
    Ok(dropped)
}

/// The input routing looks at, from an outbound email.
fn routing_input(email: &OutboundEmail) -> RoutingInput<'_> {
    RoutingInput {
        from_domain: email.from.address.domain(),
        recipient_domains: email
            .to
            .iter()
            .chain(&email.cc)
            .chain(&email.bcc)
            .map(|m| m.address.domain())
            .collect(),
        tags: &email.tags,
        metadata: &email.metadata,
    }
}

/// How one attempt ended: the try that decided it, or the last transient failure.
struct Decided {
    provider_id: Option<String>,
    kind: String,
    latency_ms: i64,
    result: Result<SendReceipt, SendError>,
    /// The provider's pacing has no slot before the lease would run out: requeue for then.
    defer: Option<Duration>,
}

/// Goes through the plan's groups in order within one attempt: one provider per group, chosen
/// by weight among those whose circuit is closed; a transient failure or an open circuit moves
/// on to the next group; success or a permanent rejection of the message ends the attempt.
async fn try_groups(
    e: &Engine,
    snap: &ProjectSnapshot,
    email: &OutboundEmail,
    failovers: &mut Vec<ProviderTry>,
) -> Decided {
    let plan = snap.plan(&routing_input(email));
    let mut last = Decided {
        provider_id: None,
        kind: String::new(),
        latency_ms: 0,
        result: Err(SendError::Transient(if plan.groups.is_empty() {
            "the project has no provider for this message (no matching route and no default provider); set one and the message will be retried".into()
        } else {
            "every provider's circuit is open".into()
        })),
        defer: None,
    };
    // Waiting for a pacing slot must end well inside the lease, or another worker would take
    // the job again while this one still holds it.
    let max_wait = Duration::from_millis((e.cfg.lease_ms / 2).max(0) as u64);
    for group in &plan.groups {
        let candidates: Vec<&PlanTarget> = group
            .targets
            .iter()
            .filter(|t| {
                snap.providers
                    .get(&t.provider_id)
                    .is_some_and(|p| e.breakers.allow(&t.provider_id, &p.options.circuit_breaker))
            })
            .collect();
        let Some(target) = e.balancer.pick(&plan.key, group, &candidates) else {
            for t in &group.targets {
                failovers.push(ProviderTry {
                    provider_id: t.provider_id.clone(),
                    outcome: "circuit_open",
                    latency_ms: 0,
                    error: "circuit breaker is open; provider skipped".into(),
                });
            }
            continue;
        };
        let Some(entry) = snap.providers.get(&target.provider_id) else {
            continue;
        };
        if let Some(prev) = last.provider_id.take() {
            let error = match &last.result {
                Err(err) => err.to_string(),
                Ok(_) => String::new(),
            };
            failovers.push(ProviderTry {
                provider_id: prev,
                outcome: match &last.result {
                    Err(SendError::ProviderDown(_)) => "provider_down",
                    _ => "transient",
                },
                latency_ms: last.latency_ms,
                error,
            });
        }
        let kind = entry.row.kind.clone();
        let provider = match e.providers.get(&entry.row, &e.secrets) {
            Ok(p) => p,
            Err(err) => {
                failovers.push(ProviderTry {
                    provider_id: target.provider_id.clone(),
                    outcome: "unusable",
                    latency_ms: 0,
                    error: format!("provider cannot be used: {err}"),
                });
                continue;
            }
        };
        if let Err(Later(wait)) = e
            .pacers
            .wait(
                &target.provider_id,
                &kind,
                entry.options.rate_per_second,
                max_wait,
            )
            .await
        {
            last.defer = Some(wait);
            return last;
        }
        let started = Instant::now();
        let result = provider.send(email).await;
        let latency_ms = started.elapsed().as_millis() as i64;
        let outcome = match &result {
            Ok(_) => "sent",
            Err(SendError::Permanent(_)) => "rejected",
            Err(SendError::Transient(_)) => "transient",
            Err(SendError::ProviderDown(_)) => "provider_down",
        };
        metrics::counter!("courierx_provider_tries_total", "provider" => kind.clone(), "outcome" => outcome)
            .increment(1);
        let cfg = &entry.options.circuit_breaker;
        let done = match &result {
            // A rejection of the message itself says the provider is up; it does not fail over.
            Ok(_) | Err(SendError::Permanent(_)) => {
                e.breakers.success(&target.provider_id);
                true
            }
            Err(err @ SendError::Transient(_)) => {
                e.breakers
                    .failure(&target.provider_id, cfg, false, &err.to_string());
                false
            }
            Err(err @ SendError::ProviderDown(_)) => {
                e.breakers
                    .failure(&target.provider_id, cfg, true, &err.to_string());
                false
            }
        };
        last = Decided {
            provider_id: Some(target.provider_id.clone()),
            kind,
            latency_ms,
            result,
            defer: None,
        };
        if done {
            break;
        }
    }
    last
}

async fn deliver(e: &Engine, claimed: Claimed) {
    let Claimed { job, message: msg } = claimed;
    let (Ok(tenant), Ok(project)) = (msg.tenant_id.parse(), msg.project_id.parse()) else {
        tracing::error!(message = msg.id, "stored message has malformed ids");
        return;
    };
    let snap = match e.project_snapshot(tenant, project).await {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(error = %err, "loading the project failed; the lease will expire and retry");
            return;
        }
    };
    let mut failovers = Vec::new();
    let mut email = outbound(&msg);
    if msg.attachment_count > 0
        && let Ok(out) = email.as_mut()
    {
        // Read for this attempt only: nothing holds attachment bytes between retries.
        match e.db.attachments(&msg.tenant_id, &msg.id).await {
            Ok(rows) => {
                out.attachments = rows
                    .into_iter()
                    .map(|r| Attachment {
                        filename: r.filename,
                        content_type: r.content_type,
                        content_id: r.content_id,
                        data: r.data.into(),
                    })
                    .collect()
            }
            Err(err) => {
                tracing::warn!(error = %err, "loading attachments failed; the lease will expire and retry");
                return;
            }
        }
    }
    let mut suppressed = Vec::new();
    if let (Some(snap), Ok(out)) = (&snap, email.as_mut()) {
        match drop_suppressed(e, &msg, snap, out).await {
            Ok(dropped) => suppressed = dropped,
            Err(err) => {
                tracing::warn!(error = %err, "checking the suppression list failed; the lease will expire and retry");
                return;
            }
        }
    }
    if let (Some(snap), Ok(out)) = (&snap, email.as_mut()) {
        decorate(e, &msg, snap, out);
    }
    let nobody_left = email
        .as_ref()
        .is_ok_and(|m| m.to.is_empty() && m.cc.is_empty() && m.bcc.is_empty());
    let decided = match (&snap, email) {
        _ if nobody_left => Decided {
            provider_id: None,
            kind: String::new(),
            latency_ms: 0,
            result: Ok(SendReceipt::default()),
            defer: None,
        },
        (_, Err(err)) => Decided {
            provider_id: None,
            kind: String::new(),
            latency_ms: 0,
            result: Err(err),
            defer: None,
        },
        (None, _) => Decided {
            provider_id: None,
            kind: String::new(),
            latency_ms: 0,
            result: Err(SendError::Permanent("the project was deleted".into())),
            defer: None,
        },
        (Some(snap), Ok(email)) => try_groups(e, snap, &email, &mut failovers).await,
    };
    let Decided {
        provider_id,
        kind,
        latency_ms,
        result,
        defer,
    } = decided;
    let outcome = match (defer, result) {
        _ if nobody_left => Outcome::Suppressed {
            job_id: job.id.clone(),
        },
        (Some(wait), _) => Outcome::Defer {
            job_id: job.id.clone(),
            run_at: now_ms() + wait.as_millis() as i64,
        },
        (None, result) => match result {
            Ok(receipt) => {
                let sandbox = receipt.captured.map(|mime| SandboxRow {
                    id: uuid::Uuid::now_v7().to_string(),
                    tenant_id: msg.tenant_id.clone(),
                    project_id: msg.project_id.clone(),
                    message_id: msg.id.clone(),
                    raw: String::from_utf8_lossy(&mime.bytes).into_owned(),
                    from_addr: msg.from_addr.clone(),
                    to_addrs: msg.to_addrs.clone(),
                    subject: msg.subject.clone(),
                    received_at: now_ms(),
                });
                metrics::histogram!("courierx_delivery_latency_seconds", "provider" => kind.clone())
                .record((now_ms() - msg.created_at).max(0) as f64 / 1000.0);
                Outcome::Sent {
                    job_id: job.id.clone(),
                    provider_message_id: receipt.provider_message_id,
                    sandbox,
                }
            }
            Err(SendError::Permanent(error)) => Outcome::Failed {
                job_id: job.id.clone(),
                error,
            },
            Err(SendError::Transient(error) | SendError::ProviderDown(error)) => {
                if job.attempts >= job.max_attempts {
                    Outcome::Failed {
                        job_id: job.id.clone(),
                        error: format!("{error} (gave up after {} attempts)", job.attempts),
                    }
                } else {
                    let wait = delay_ms(job.attempts, e.cfg.backoff_base_ms, e.cfg.backoff_max_ms);
                    Outcome::Retry {
                        job_id: job.id.clone(),
                        run_at: now_ms() + wait,
                        error,
                    }
                }
            }
        },
    };
    let label = match &outcome {
        Outcome::Sent { .. } => "sent",
        Outcome::Retry { .. } => "retry",
        Outcome::Failed { .. } => "failed",
        Outcome::Defer { .. } => "deferred",
        Outcome::Suppressed { .. } => "suppressed",
    };
    metrics::counter!("courierx_delivery_attempts_total", "provider" => kind, "outcome" => label)
        .increment(1);
    let rec = AttemptRecord {
        tenant_id: msg.tenant_id.clone(),
        message_id: job.message_id.clone(),
        provider_id,
        attempt: job.attempts,
        at: now_ms(),
        latency_ms,
        failovers,
        suppressed,
        outcome,
    };
    if let Err(err) = e.writer.record(rec).await {
        tracing::error!(error = %err, job = job.id, "recording delivery outcome failed; the lease will expire and the job retry");
    }
}
