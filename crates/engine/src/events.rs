//! What happens after a message is sent: provider webhook events and CourierX's own open/click
//! tracking are stored once, matched to their message, summarised per recipient, move the
//! message status forward only, and feed the suppression list.

use crate::Engine;
use courierx_domain::{EventType, MessageStatus, Millis, now_ms};
use courierx_providers::webhooks::{BounceType, EventKind, ProviderEvent};
use courierx_store::messages::{NewEvent, insert_event};
use courierx_store::provider_events::{self as pe, EventTarget, NewProviderEvent};
use courierx_store::suppressions::{NewSuppression, add_suppression};
use courierx_store::{StoreError, Tx};
use serde_json::{Value, json};

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

impl Engine {
    /// Stores a provider's verified events and applies those whose message is known.
    /// With `nonce` (a single-use request token), a token already seen is a replay: `None`,
    /// and nothing is written.
    pub async fn apply_provider_events(
        &self,
        tenant: &str,
        provider_id: &str,
        provider_type: &str,
        events: &[ProviderEvent],
        nonce: Option<&str>,
    ) -> Result<Option<ApplySummary>, StoreError> {
        let now = now_ms();
        let mut sum = ApplySummary {
            received: events.len(),
            ..Default::default()
        };
        let mut tx = self.db.begin().await?;
        if let Some(n) = nonce
            && !pe::claim_nonce(&mut tx, provider_id, n, now).await?
        {
            return Ok(None);
        }
        for ev in events {
            let n = Normalised::from_provider(ev);
            let stored = pe::insert_provider_event(
                &mut tx,
                &NewProviderEvent {
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
                },
            )
            .await?;
            let Some(row) = stored else {
                sum.duplicates += 1;
                continue;
            };
            metrics::counter!("courierx_provider_events_total", "provider" => provider_type.to_string(), "type" => n.kind.as_str())
                .increment(1);
            match pe::find_target(&mut tx, tenant, provider_id, &ev.provider_message_id).await? {
                Some(target) => {
                    pe::mark_matched(&mut tx, &row, &target.id).await?;
                    self.apply_to_message(&mut tx, &target, Some(provider_id), &n, now)
                        .await?;
                    sum.matched += 1;
                }
                None => sum.pending += 1,
            }
        }
        tx.commit().await?;
        Ok(Some(sum))
    }

    /// Applies stored events received since `since` whose message has appeared since (an event
    /// can arrive before the send's answer is recorded) and forgets those that never found one.
    /// Frequent calls look at a recent window only, so a provider reporting on mail CourierX
    /// did not send (a shared account) costs little; an occasional full sweep covers the rest.
    pub async fn reconcile_events(&self, since: Millis) -> Result<usize, StoreError> {
        let now = now_ms();
        let rows = self.db.matchable_events(since, 500).await?;
        let mut applied = 0;
        for row in rows {
            let Some(kind) = event_type(&row.kind) else {
                continue;
            };
            let mut tx = self.db.begin().await?;
            let Some(target) = pe::find_target(
                &mut tx,
                &row.tenant_id,
                &row.provider_id,
                &row.provider_message_id,
            )
            .await?
            else {
                continue;
            };
            let n = Normalised {
                kind,
                bounce_type: match row.bounce_type.as_deref() {
                    Some("hard") => Some(BounceType::Hard.as_str()),
                    Some("soft") => Some(BounceType::Soft.as_str()),
                    _ => None,
                },
                recipient: row.recipient.clone(),
                occurred_at: row.occurred_at,
                detail: serde_json::from_str(&row.detail).unwrap_or(Value::Null),
            };
            pe::mark_matched(&mut tx, &row.id, &target.id).await?;
            self.apply_to_message(&mut tx, &target, Some(&row.provider_id), &n, now)
                .await?;
            tx.commit().await?;
            applied += 1;
        }
        self.db
            .purge_unmatched_events(now - UNMATCHED_RETENTION_MS)
            .await?;
        self.db.purge_nonces(now - NONCE_RETENTION_MS).await?;
        Ok(applied)
    }

    /// Records an open or click seen by CourierX's own tracking.
    pub async fn record_tracking_event(
        &self,
        message_id: &str,
        n: &Normalised,
    ) -> Result<bool, StoreError> {
        let mut tx = self.db.begin().await?;
        let Some(target) = pe::find_target_by_id(&mut tx, message_id).await? else {
            return Ok(false);
        };
        metrics::counter!("courierx_provider_events_total", "provider" => "courierx", "type" => n.kind.as_str())
            .increment(1);
        self.apply_to_message(&mut tx, &target, None, n, now_ms())
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The message's timeline, per-recipient state, status and the suppression list, for one
    /// event, inside the caller's transaction.
    async fn apply_to_message(
        &self,
        tx: &mut Tx,
        target: &EventTarget,
        provider_id: Option<&str>,
        n: &Normalised,
        now: Millis,
    ) -> Result<(), StoreError> {
        insert_event(
            tx,
            &NewEvent {
                tenant_id: target.tenant_id.clone(),
                message_id: target.id.clone(),
                kind: n.kind.as_str(),
                at: n.occurred_at,
                provider_id: provider_id.map(str::to_string),
                recipient: n.recipient.clone(),
                detail: n.detail.clone(),
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
    /// when it has none).
    async fn suppress_after(
        &self,
        tx: &mut Tx,
        target: &EventTarget,
        n: &Normalised,
        now: Millis,
    ) -> Result<(), StoreError> {
        let Some(email) = &n.recipient else {
            return Ok(());
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
                    return Ok(());
                }
                ("soft_bounce", String::new())
            }
            (EventType::Unsubscribed, _) => {
                ("unsubscribed", target.category.clone().unwrap_or_default())
            }
            _ => return Ok(()),
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
        if added {
            metrics::counter!("courierx_suppressions_added_total", "reason" => reason).increment(1);
        }
        Ok(())
    }
}
