//! One delivery attempt, bounded by one deadline: pacing waits, every failover group and every
//! provider phase share the budget of the lease minus a margin, so the outcome is recorded
//! while the lease still holds. A panic anywhere in an attempt ends the job `failed` instead of
//! taking the worker down or leaving the job to be leased forever.

use super::email::{decorate, drop_suppressed, outbound, routing_input};
use crate::Engine;
use crate::backoff::delay_ms;
use crate::pacing::Later;
use crate::project_cache::ProjectSnapshot;
use crate::routing::PlanTarget;
use courierx_domain::{Attachment, now_ms};
use courierx_providers::{OutboundEmail, SendError, SendReceipt};
use courierx_store::jobs::ClaimedJob;
use courierx_store::sandbox::SandboxRow;
use courierx_store::writer::{AttemptRecord, Claimed, Outcome, ProviderTry};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

/// How one attempt ended: the try that decided it, or the last transient failure.
struct Decided {
    provider_id: Option<String>,
    kind: String,
    latency_ms: i64,
    result: Result<SendReceipt, SendError>,
    /// The provider's pacing has no slot before the lease would run out: requeue for then.
    defer: Option<Duration>,
}

impl Decided {
    fn without_provider(result: Result<SendReceipt, SendError>) -> Self {
        Self {
            provider_id: None,
            kind: String::new(),
            latency_ms: 0,
            result,
            defer: None,
        }
    }
}

/// Goes through the plan's groups in order within one attempt: one provider per group, chosen
/// by weight among those whose circuit is closed; a transient failure or an open circuit moves
/// on to the next group; success or a permanent rejection of the message ends the attempt.
async fn try_groups(
    e: &Engine,
    snap: &ProjectSnapshot,
    email: &OutboundEmail,
    failovers: &mut Vec<ProviderTry>,
    deadline: Instant,
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
    for group in &plan.groups {
        if Instant::now() >= deadline {
            // Out of time: what is left is for the next attempt.
            break;
        }
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
                // Waiting for a pacing slot takes at most half of what is left of the
                // attempt's budget; the send needs the rest.
                deadline.saturating_duration_since(Instant::now()) / 2,
            )
            .await
        {
            last.defer = Some(wait);
            return last;
        }
        let started = Instant::now();
        // Every phase of the send (connect, TLS, STARTTLS, AUTH, DATA, HTTP) is inside this one
        // budget, so the outcome is recorded before the lease can run out.
        let result = match tokio::time::timeout_at(deadline.into(), provider.send(email)).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Transient(format!(
                "no answer within the attempt's deadline ({} ms)",
                started.elapsed().as_millis()
            ))),
        };
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

/// How long before its lease runs out an attempt must stop, to leave time to record it.
pub(super) fn margin(lease_ms: i64) -> Duration {
    Duration::from_millis((lease_ms / 5).clamp(50, 10_000) as u64)
}

/// A transient failure: retried later, or the job ends `failed` once it used its attempts.
fn retry_or_fail(e: &Engine, job: &ClaimedJob, error: String) -> Outcome {
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

/// What an attempt decided, before it is written.
struct Attempt {
    provider_id: Option<String>,
    kind: String,
    latency_ms: i64,
    failovers: Vec<ProviderTry>,
    suppressed: Vec<courierx_store::writer::SuppressedRecipient>,
    outcome: Outcome,
}

impl Attempt {
    fn bare(outcome: Outcome) -> Self {
        Self {
            provider_id: None,
            kind: String::new(),
            latency_ms: 0,
            failovers: vec![],
            suppressed: vec![],
            outcome,
        }
    }
}

/// Runs one attempt on a claimed job and records its outcome (fenced: a stale outcome changes
/// nothing and is counted).
pub(super) async fn deliver(e: &Engine, claimed: Claimed, deadline: Instant) {
    let job = claimed.job.clone();
    let tenant_id = claimed.message.tenant_id.clone();
    let margin = margin(e.cfg.lease_ms);
    let run = AssertUnwindSafe(attempt(e, claimed, deadline)).catch_unwind();
    // A backstop past the deadline the attempt itself keeps to (a stuck database read, say).
    let attempt = match tokio::time::timeout_at((deadline + margin / 2).into(), run).await {
        Ok(Ok(a)) => a,
        Ok(Err(panic)) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            tracing::error!(
                job = job.id,
                message = job.message_id,
                panic = what,
                "delivery attempt panicked; the message is failed"
            );
            metrics::counter!("courierx_delivery_panics_total").increment(1);
            Attempt::bare(Outcome::Failed {
                job_id: job.id.clone(),
                error: format!("the delivery attempt panicked ({what}); not retried"),
            })
        }
        Err(_) => Attempt::bare(retry_or_fail(
            e,
            &job,
            "the attempt did not finish within its deadline".into(),
        )),
    };
    let label = match &attempt.outcome {
        Outcome::Sent { .. } => "sent",
        Outcome::Retry { .. } => "retry",
        Outcome::Failed { .. } => "failed",
        Outcome::Defer { .. } => "deferred",
        Outcome::Suppressed { .. } => "suppressed",
        Outcome::Expired { .. } => "expired",
    };
    metrics::counter!("courierx_delivery_attempts_total", "provider" => attempt.kind.clone(), "outcome" => label)
        .increment(1);
    if let Outcome::Retry { error, .. } = &attempt.outcome {
        tracing::warn!(
            message = job.message_id,
            attempt = job.attempts,
            error,
            "delivery attempt failed; will retry"
        );
    }
    let rec = AttemptRecord {
        tenant_id,
        message_id: job.message_id.clone(),
        provider_id: attempt.provider_id,
        attempt: job.attempts,
        fence: job.fence,
        at: now_ms(),
        latency_ms: attempt.latency_ms,
        failovers: attempt.failovers,
        suppressed: attempt.suppressed,
        outcome: attempt.outcome,
    };
    match e.writer.record(rec).await {
        Ok(true) => {}
        Ok(false) => {
            // Our lease ran out and another claim holds the job: its outcome is the one that counts.
            metrics::counter!("courierx_stale_outcomes_total").increment(1);
            tracing::warn!(
                job = job.id,
                message = job.message_id,
                "discarded a stale delivery outcome: the job's lease had passed to another claim"
            );
        }
        Err(err) => {
            tracing::error!(error = %err, job = job.id, "recording delivery outcome failed; the lease will expire and the job retry");
        }
    }
}

/// Decides one attempt: everything up to and including the provider calls.
async fn attempt(e: &Engine, claimed: Claimed, deadline: Instant) -> Attempt {
    let Claimed { job, message: msg } = claimed;
    if msg.expires_at.is_some_and(|at| at <= now_ms()) {
        return Attempt::bare(Outcome::Expired {
            job_id: job.id.clone(),
        });
    }
    let (Ok(tenant), Ok(project)) = (msg.tenant_id.parse(), msg.project_id.parse()) else {
        return Attempt::bare(Outcome::Failed {
            job_id: job.id.clone(),
            error: "stored message has malformed ids".into(),
        });
    };
    let transient = |what: &str, err: &dyn std::fmt::Display| {
        Attempt::bare(retry_or_fail(e, &job, format!("{what}: {err}")))
    };
    let snap = match e.project_snapshot(tenant, project).await {
        Ok(s) => s,
        Err(err) => return transient("loading the project failed", &err),
    };
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
            Err(err) => return transient("loading attachments failed", &err),
        }
    }
    let mut suppressed = Vec::new();
    if let (Some(snap), Ok(out)) = (&snap, email.as_mut()) {
        match drop_suppressed(e, &msg, snap, out).await {
            Ok(dropped) => suppressed = dropped,
            Err(err) => return transient("checking the suppression list failed", &err),
        }
    }
    if let (Some(snap), Ok(out)) = (&snap, email.as_mut()) {
        decorate(e, &msg, snap, out);
    }
    let nobody_left = email
        .as_ref()
        .is_ok_and(|m| m.to.is_empty() && m.cc.is_empty() && m.bcc.is_empty());
    if nobody_left {
        return Attempt {
            suppressed,
            ..Attempt::bare(Outcome::Suppressed {
                job_id: job.id.clone(),
            })
        };
    }
    let mut failovers = Vec::new();
    let decided = match (&snap, email) {
        (_, Err(err)) => Decided::without_provider(Err(err)),
        (None, _) => {
            Decided::without_provider(Err(SendError::Permanent("the project was deleted".into())))
        }
        (Some(snap), Ok(email)) => try_groups(e, snap, &email, &mut failovers, deadline).await,
    };
    let Decided {
        provider_id,
        kind,
        latency_ms,
        result,
        defer,
    } = decided;
    let outcome = match (defer, result) {
        (Some(wait), _) => Outcome::Defer {
            job_id: job.id.clone(),
            run_at: now_ms() + wait.as_millis() as i64,
        },
        (None, Ok(receipt)) => {
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
        (None, Err(SendError::Permanent(error))) => Outcome::Failed {
            job_id: job.id.clone(),
            error,
        },
        (None, Err(SendError::Transient(error) | SendError::ProviderDown(error))) => {
            retry_or_fail(e, &job, error)
        }
    };
    Attempt {
        provider_id,
        kind,
        latency_ms,
        failovers,
        suppressed,
        outcome,
    }
}
