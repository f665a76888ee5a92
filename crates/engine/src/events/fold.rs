//! Repeat opens and clicks fold into one event: a link scanner or an image proxy fetching the
//! same pixel again and again must not grow a message's timeline without bound.

use super::Normalised;
use courierx_domain::{EventType, Millis};
use courierx_store::messages::{lock_message_events, recent_events, set_event_detail};
use courierx_store::provider_events::EventTarget;
use courierx_store::{StoreError, Tx};
use serde_json::{Value, json};

/// Repeats by one recipient within this long of the first event fold into it; after that a new
/// event starts (so the timeline still shows when a message is opened again days later).
pub const FOLD_WINDOW_MS: Millis = 3_600_000;

/// Folds `n` (an open, or a click of one URL) into the recipient's earlier such event within
/// [`FOLD_WINDOW_MS`]: its detail gains `count` (hits so far) and `last_at`, and keeps the
/// first hit's other fields. False when there is none to fold into (or `n` is another kind):
/// the caller records `n` as a new event.
pub(super) async fn fold_repeat(
    tx: &mut Tx,
    target: &EventTarget,
    n: &Normalised,
) -> Result<bool, StoreError> {
    let url = match n.kind {
        EventType::Opened => None,
        EventType::Clicked => Some(n.detail.get("url").cloned().unwrap_or(Value::Null)),
        _ => return Ok(false),
    };
    lock_message_events(tx, &target.id).await?;
    let earlier = recent_events(
        tx,
        &target.tenant_id,
        &target.id,
        n.kind.as_str(),
        n.recipient.as_deref(),
        n.occurred_at - FOLD_WINDOW_MS,
    )
    .await?;
    let found = earlier.into_iter().find_map(|e| {
        let detail: Value = serde_json::from_str(&e.detail).ok()?;
        let same = url.as_ref().is_none_or(|u| detail.get("url") == Some(u));
        (same && detail.is_object()).then_some((e.id, detail))
    });
    let Some((id, mut detail)) = found else {
        return Ok(false);
    };
    let count = detail.get("count").and_then(Value::as_i64).unwrap_or(1) + 1;
    let last = detail.get("last_at").and_then(Value::as_i64).unwrap_or(0);
    detail["count"] = json!(count);
    detail["last_at"] = json!(last.max(n.occurred_at));
    set_event_detail(tx, &target.tenant_id, &id, &detail).await?;
    Ok(true)
}
