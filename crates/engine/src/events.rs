//! What happens after a message is sent: provider webhook events and CourierX's own open/click
//! tracking are stored once, matched to their message, summarised per recipient, move the
//! message status forward only, and feed the suppression list.

use crate::Engine;
use courierx_domain::{EventType, MessageStatus, Millis, now_ms};
use courierx_providers::webhooks::{BounceType, EventKind, ProviderEvent};
use courierx_store::messages::{NewEvent, insert_event};
use courierx_store::provider_events::{
    self as pe, EventTarget, NewProviderEvent, ProviderEventRow,
};
use courierx_store::suppressions::{NewSuppression, add_suppression};
use courierx_store::{StoreError, Tx};
use serde_json::{Value, json};
use std::sync::Arc;

mod fold;

/// Events for messages not (yet) known are kept this long, then dropped.
pub const UNMATCHED_RETENTION_MS: Millis = 7 * 24 * 3_600_000;
/// Single-use webhook tokens are remembered well past any timestamp tolerance.
pub const NONCE_RETENTION_MS: Millis = 24 * 3_600_000;
/// Soft bounces count towards suppression within this window.
pub const SOFT_BOUNCE_WINDOW_MS: Millis = 7 * 24 * 3_600_000;

/// What one webhook call did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ApplySummary {
    pub received: usize,
    /// Already stored (a provider retry): ignored.
    pub duplicates: usize,
    pub matched: usize,
    /// Stored for a message not known yet; applied when it appears.
    pub pending: usize,
}

/// An event ready to store and apply.
#[derive(Debug, Clone)]
pub struct Normalised {
    pub kind: EventType,
    pub bounce_type: Option<&'static str>,
    pub recipient: Option<String>,
    pub occurred_at: Millis,
    pub detail: Value,
}

impl Normalised {
    pub fn from_provider(ev: &ProviderEvent) -> Self {
        let mut detail = serde_json::Map::new();
        let (kind, bounce_type) = match &ev.kind {
            EventKind::Delivered => (EventType::Delivered, None),
            EventKind::Bounced {
                bounce_type,
                diagnostic,
            } => {
                detail.insert("bounce_type".into(), json!(bounce_type.as_str()));
                detail.insert("diagnostic".into(), json!(diagnostic));
                (EventType::Bounced, Some(bounce_type.as_str()))
            }
            EventKind::Complained { feedback_type } => {
                detail.insert("feedback_type".into(), json!(feedback_type));
                (EventType::Complained, None)
            }
            EventKind::Opened { user_agent } => {
                detail.insert("user_agent".into(), json!(user_agent));
                (EventType::Opened, None)
            }
            EventKind::Clicked { url, user_agent } => {
                detail.insert("url".into(), json!(url));
                detail.insert("user_agent".into(), json!(user_agent));
                (EventType::Clicked, None)
            }
            EventKind::Deferred { diagnostic } => {
                detail.insert("diagnostic".into(), json!(diagnostic));
                (EventType::Deferred, None)
            }
            EventKind::Unsubscribed => (EventType::Unsubscribed, None),
        };
        detail.insert("provider_event_id".into(), json!(ev.event_id));
        detail.insert("raw".into(), ev.raw.clone());
        Self {
            kind,
            bounce_type,
            // Lowercased: per-recipient state and suppressions match addresses that way.
            recipient: ev.recipient.as_ref().map(|r| r.as_str().to_lowercase()),
            occurred_at: ev.occurred_at,
            detail: Value::Object(detail),
        }
    }
}

/// The per-recipient states, in the order they may advance.
fn recipient_rank(status: &str) -> u8 {
    match status {
        "deferred" => 1,
        "delivered" => 2,
        "bounced" => 3,
        "complained" => 4,
        // Suppressed recipients were never sent to: nothing moves them.
        "suppressed" => u8::MAX,
        _ => 0,
    }
}

fn event_type(name: &str) -> Option<EventType> {
    use EventType::*;
    [
        Delivered,
        Bounced,
        Complained,
        Opened,
        Clicked,
        Deferred,
        Unsubscribed,
    ]
    .into_iter()
    .find(|t| t.as_str() == name)
}

/// A webhook call's events, ready to store.
struct Incoming {
    tenant: String,
    provider_id: String,
    events: Vec<(NewProviderEvent, Normalised)>,
    nonce: Option<String>,
    now: Millis,
}

/// What a write applied, counted in metrics once it has committed (a write may run twice when
/// its group commit is retried, so nothing is counted inside it).
#[derive(Default)]
struct Applied {
    summary: ApplySummary,
    /// Types of the events stored.
    stored: Vec<&'static str>,
    /// Reasons of the suppressions added.
    suppressed: Vec<&'static str>,
}

impl Applied {
    fn count(&self, provider: &str) {
        for kind in &self.stored {
            metrics::counter!("courierx_provider_events_total", "provider" => provider.to_string(), "type" => *kind)
                .increment(1);
        }
        for reason in &self.suppressed {
            metrics::counter!("courierx_suppressions_added_total", "reason" => *reason)
                .increment(1);
        }
    }
}

/// Stored events applied per write by the reconciler: bounds how long one holds the writer.
const RECONCILE_CHUNK: usize = 50;

impl Engine {
    /// Stores a provider's verified events and applies those whose message is known.
    /// With `nonce` (a single-use request token), a token already seen is a replay: `None`,
    /// and nothing is written.
    pub async fn apply_provider_events(
        self: &Arc<Self>,
        tenant: &str,
        provider_id: &str,
        provider_type: &str,
        events: &[ProviderEvent],
        nonce: Option<&str>,
    ) -> Result<Option<ApplySummary>, StoreError> {
        let now = now_ms();
        let events = events
            .iter()
            .map(|ev| {
                let n = Normalised::from_provider(ev);
                let row = NewProviderEvent {
                    tenant_id: tenant.to_string(),
                    provider_id: provider_id.to_string(),
                    event_id: ev.event_id.clone(),
                    provider_message_id: ev.provider_message_id.clone(),
                    recipient: n.recipient.clone(),
                    kind: n.kind.as_str(),
                    bounce_type: n.bounce_type,
                    detail: n.detail.clone(),
                    occurred_at: n.occurred_at,
                    received_at: now,
                };
                (row, n)
            })
            .collect();
        let input = Incoming {
            tenant: tenant.to_string(),
            provider_id: provider_id.to_string(),
            events,
            nonce: nonce.map(str::to_string),
            now,
        };
        let applied = self
            .write((self.clone(), input), |(e, i), tx| {
                Box::pin(e.store_provider_events(tx, i))
            })
            .await?;
        Ok(applied.map(|a| {
            a.count(provider_type);
            a.summary
        }))
    }

    async fn store_provider_events(
        &self,
        tx: &mut Tx,
        i: &Incoming,
    ) -> Result<Option<Applied>, StoreError> {
        if let Some(n) = &i.nonce
            && !pe::claim_nonce(tx, &i.provider_id, n, i.now).await?
        {
            return Ok(None);
        }
        let mut out = Applied {
            summary: ApplySummary {
                received: i.events.len(),
                ..Default::default()
            },
            ..Default::default()
        };
        for (new, n) in &i.events {
            let Some(row) = pe::insert_provider_event(tx, new).await? else {
                out.summary.duplicates += 1;
                continue;
            };
            out.stored.push(n.kind.as_str());
            match pe::find_target(tx, &i.tenant, &i.provider_id, &new.provider_message_id).await? {
                // Just inserted, so this claim always succeeds; it is conditional like the
                // reconciler's all the same.
                Some(target) if pe::mark_matched(tx, &row, &target.id).await? => {
                    let reason = self
                        .apply_to_message(tx, &target, Some(&i.provider_id), n, i.now)
                        .await?;
                    out.suppressed.extend(reason);
                    out.summary.matched += 1;
                }
                _ => out.summary.pending += 1,
            }
        }
        Ok(Some(out))
    }

    /// Applies stored events received since `since` whose message has appeared since (an event
    /// can arrive before the send's answer is recorded) and forgets those that never found one.
    /// Frequent calls look at a recent window only, so a provider reporting on mail CourierX
    /// did not send (a shared account) costs little; an occasional full sweep covers the rest.
    /// Each event is claimed (a conditional update) in the transaction that applies it, so
    /// however many processes reconcile at once, one applies it and the others skip it.
    pub async fn reconcile_events(self: &Arc<Self>, since: Millis) -> Result<usize, StoreError> {
        let now = now_ms();
        let rows = self.db.matchable_events(since, 500).await?;
        let mut rows: Vec<(ProviderEventRow, Normalised)> = rows
            .into_iter()
            .filter_map(|row| {
                let n = Normalised {
                    kind: event_type(&row.kind)?,
                    bounce_type: match row.bounce_type.as_deref() {
                        Some("hard") => Some(BounceType::Hard.as_str()),
                        Some("soft") => Some(BounceType::Soft.as_str()),
                        _ => None,
                    },
                    recipient: row.recipient.clone(),
                    occurred_at: row.occurred_at,
                    detail: serde_json::from_str(&row.detail).unwrap_or(Value::Null),
                };
                Some((row, n))
            })
            .collect();
        let mut applied = 0;
        while !rows.is_empty() {
            let chunk: Vec<_> = rows.drain(..rows.len().min(RECONCILE_CHUNK)).collect();
            let done = self
                .write((self.clone(), chunk, now), |(e, chunk, now), tx| {
                    Box::pin(e.apply_stored(tx, chunk, *now))
                })
                .await?;
            done.count("reconciler");
            applied += done.summary.matched;
        }
        // Old unmatched events and nonces are purged by housekeeping, in batches.
        Ok(applied)
    }

    async fn apply_stored(
        &self,
        tx: &mut Tx,
        rows: &[(ProviderEventRow, Normalised)],
        now: Millis,
    ) -> Result<Applied, StoreError> {
        let mut out = Applied::default();
        for (row, n) in rows {
            let Some(target) = pe::find_target(
                tx,
                &row.tenant_id,
                &row.provider_id,
                &row.provider_message_id,
            )
            .await?
            else {
                continue;
            };
            // 0 rows: another process (or an earlier call) applied it already.
            if !pe::mark_matched(tx, &row.id, &target.id).await? {
                continue;
            }
            let reason = self
                .apply_to_message(tx, &target, Some(&row.provider_id), n, now)
                .await?;
            out.suppressed.extend(reason);
            out.summary.matched += 1;
        }
        Ok(out)
    }

    /// Records an open, click or unsubscribe seen by CourierX's own tracking.
    pub async fn record_tracking_event(
        self: &Arc<Self>,
        message_id: &str,
        n: &Normalised,
    ) -> Result<bool, StoreError> {
        let input = (self.clone(), message_id.to_string(), n.clone(), now_ms());
        let applied = self
            .write(input, |(e, id, n, now), tx| {
                Box::pin(async move {
                    let Some(target) = pe::find_target_by_id(tx, id).await? else {
                        return Ok(None);
                    };
                    let reason = e.apply_to_message(tx, &target, None, n, *now).await?;
                    Ok(Some(Applied {
                        stored: vec![n.kind.as_str()],
                        suppressed: reason.into_iter().collect(),
                        ..Default::default()
                    }))
                })
            })
            .await?;
        Ok(applied.map(|a| a.count("courierx")).is_some())
    }

    /// The message's timeline, per-recipient state, status and the suppression list, for one
    /// event, inside the caller's transaction; the reason of a suppression it added, if any.
    async fn apply_to_message(
        &self,
        tx: &mut Tx,
        target: &EventTarget,
        provider_id: Option<&str>,
        n: &Normalised,
        now: Millis,
    ) -> Result<Option<&'static str>, StoreError> {
        if fold::fold_repeat(tx, target, n).await? {
            // A repeat open or click: counted on the first, and neither moves anything else.
            return Ok(None);
        }
        let mut detail = n.detail.clone();
        if let (EventType::Opened | EventType::Clicked, Some(d)) = (n.kind, detail.as_object_mut())
        {
            d.insert("count".into(), json!(1));
        }
        insert_event(
            tx,
            &NewEvent {
                tenant_id: target.tenant_id.clone(),
                message_id: target.id.clone(),
                kind: n.kind.as_str(),
                at: n.occurred_at,
                provider_id: provider_id.map(str::to_string),
                recipient: n.recipient.clone(),
                detail,
            },
        )
        .await?;
        let summary = match n.kind {
            EventType::Delivered => Some(MessageStatus::Delivered),
            EventType::Bounced => Some(MessageStatus::Bounced),
            EventType::Complained => Some(MessageStatus::Complained),
            _ => None,
        };
        if let Some(email) = &n.recipient
            && matches!(
                n.kind,
                EventType::Delivered
                    | EventType::Bounced
                    | EventType::Complained
                    | EventType::Deferred
            )
        {
            let current = pe::recipient_status(tx, &target.id, email).await?;
            if recipient_rank(n.kind.as_str()) > current.as_deref().map_or(0, recipient_rank) {
                pe::set_recipient_status(
                    tx,
                    &target.tenant_id,
                    &target.id,
                    email,
                    n.kind.as_str(),
                    &n.detail,
                    n.occurred_at,
                )
                .await?;
            }
        }
        if let (Some(to), Ok(from)) = (summary, target.status.parse::<MessageStatus>())
            && from.can_transition(to)
        {
            pe::set_message_status(tx, &target.id, from.as_str(), to.as_str(), now).await?;
        }
        self.suppress_after(tx, target, n, now).await
    }

    /// Hard bounces and complaints suppress at once; soft bounces after the project's
    /// threshold within 7 days; an unsubscribe suppresses the message's category (or all mail
    /// when it has none). The soft-bounce threshold comes from the project snapshot, almost
    /// always cached; a miss reads it while this transaction is open, which is rare enough.
    async fn suppress_after(
        &self,
        tx: &mut Tx,
        target: &EventTarget,
        n: &Normalised,
        now: Millis,
    ) -> Result<Option<&'static str>, StoreError> {
        let Some(email) = &n.recipient else {
            return Ok(None);
        };
        let (reason, scope) = match (n.kind, n.bounce_type) {
            (EventType::Bounced, Some("hard")) => ("hard_bounce", String::new()),
            (EventType::Complained, _) => ("complaint", String::new()),
            (EventType::Bounced, _) => {
                let threshold = match (target.tenant_id.parse(), target.project_id.parse()) {
                    (Ok(t), Ok(p)) => self
                        .project_snapshot(t, p)
                        .await?
                        .map_or(crate::settings::DEFAULT_SOFT_BOUNCE_THRESHOLD, |s| {
                            s.settings.soft_bounce_threshold()
                        }),
                    _ => crate::settings::DEFAULT_SOFT_BOUNCE_THRESHOLD,
                };
                let seen = pe::count_soft_bounces(
                    tx,
                    &target.tenant_id,
                    &target.project_id,
                    email,
                    now - SOFT_BOUNCE_WINDOW_MS,
                )
                .await?;
                if seen < i64::from(threshold) {
                    return Ok(None);
                }
                ("soft_bounce", String::new())
            }
            (EventType::Unsubscribed, _) => {
                ("unsubscribed", target.category.clone().unwrap_or_default())
            }
            _ => return Ok(None),
        };
        let added = add_suppression(
            tx,
            &NewSuppression {
                tenant_id: target.tenant_id.clone(),
                project_id: target.project_id.clone(),
                email: email.clone(),
                scope,
                reason: reason.into(),
                source_message_id: Some(target.id.clone()),
                detail: n
                    .detail
                    .get("diagnostic")
                    .cloned()
                    .map_or(json!({}), |d| json!({"diagnostic": d})),
                created_at: now,
                expires_at: None,
                actor: "system".into(),
            },
            false,
        )
        .await?;
        Ok(added.then_some(reason))
    }
}
