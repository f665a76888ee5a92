//! Mailgun webhooks (the JSON kind: one event per POST).
//!
//! The body is `{"signature": {"timestamp", "token", "signature"}, "event-data": {…}}`. The
//! signature is the hex HMAC-SHA256 of `timestamp` followed by `token`, keyed with the account's
//! HTTP webhook signing key; for a subaccount's domain Mailgun adds `parent-signature`, made
//! with the primary account's key, and either may match the configured key.
//!
//! Mailgun's signature does not cover `event-data`, only the timestamp and a random token, so
//! the tolerance window is what bounds reuse of a captured signature; replays of the same event
//! inside it are harmless because `event-data.id` deduplicates them.

use super::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, WebhookContext, WebhookError,
    WebhookFuture, WebhookOutcome, ct_eq, derived_event_id, recipient, signed_seconds, signing_key,
};
use aws_lc_rs::hmac;
use courierx_domain::Millis;
use serde_json::Value;

pub fn parse<'a>(
    config: &'a Value,
    req: &'a InboundWebhook<'a>,
    _ctx: &'a WebhookContext,
) -> WebhookFuture<'a> {
    Box::pin(async move {
        let key = signing_key(config, "mailgun", "HTTP webhook signing key")?;
        // The signature travels inside the JSON, so the envelope must be read first; nothing in
        // `event-data` is looked at until it verifies.
        let body: Value = serde_json::from_slice(req.body).map_err(|_| {
            WebhookError::Unauthorized(
                "mailgun: body is not JSON, so it carries no signature".into(),
            )
        })?;
        let signed_at = verify(key.trim(), &body["signature"], req.now)?;
        let nonce = body["signature"]["token"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let data = &body["event-data"];
        if !data.is_object() {
            return Err(WebhookError::Malformed(
                "mailgun: no event-data object (legacy form-encoded webhooks are not supported)"
                    .into(),
            ));
        }
        Ok(WebhookOutcome::SingleUse {
            nonce,
            events: event(data, signed_at).into_iter().collect(),
        })
    })
}

/// Checks `signature` (or `parent-signature`) and the timestamp; returns the signed time (ms).
fn verify(key: &str, sig: &Value, now: Millis) -> Result<Millis, WebhookError> {
    let missing = || WebhookError::Unauthorized("mailgun: no signature object".into());
    // Documented as a string of unix seconds; accept a bare number too.
    let timestamp = match &sig["timestamp"] {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return Err(missing()),
    };
    let token = sig["token"].as_str().ok_or_else(missing)?;
    let provided: Vec<Vec<u8>> = ["signature", "parent-signature"]
        .iter()
        .filter_map(|f| sig[*f].as_str())
        .filter_map(|s| hex::decode(s.trim()).ok())
        .collect();
    if provided.is_empty() {
        return Err(missing());
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.as_bytes());
    ctx.update(token.as_bytes());
    let expected = ctx.sign();
    if !provided.iter().any(|p| ct_eq(p, expected.as_ref())) {
        return Err(WebhookError::Unauthorized(
            "mailgun: the signature does not match the webhook signing key".into(),
        ));
    }
    signed_seconds(now, &timestamp, "mailgun: the timestamp")
}

/// The event, or `None` for events with no CourierX meaning or no message to attach to.
fn event(data: &Value, signed_at: Millis) -> Option<ProviderEvent> {
    let text = |v: &Value| {
        v.as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let name = text(&data["event"])?.to_ascii_lowercase();
    let user_agent = || text(&data["client-info"]["user-agent"]);
    let kind = match name.as_str() {
        "delivered" => EventKind::Delivered,
        // Mailgun retries a temporary failure itself (immediate soft bounces are retried until
        // the message is too old), so the message is delayed, not lost: it is a deferral. What
        // ends delivery comes as severity "permanent".
        "failed" if data["severity"].as_str() == Some("temporary") => EventKind::Deferred {
            diagnostic: diagnostic(data),
        },
        // Permanent: a hard bounce, a suppression (`suppress-bounce`, `-unsubscribe`,
        // `-complaint`) or retries given up. Newer payloads say `bounce-type: soft` when the
        // final refusal was itself temporary (mailbox full until expiry): the message is lost
        // but the address is not proven bad.
        "failed" => EventKind::Bounced {
            bounce_type: match data["delivery-status"]["bounce-type"].as_str() {
                Some("soft") => BounceType::Soft,
                _ => BounceType::Hard,
            },
            diagnostic: diagnostic(data),
        },
        "opened" => EventKind::Opened {
            user_agent: user_agent(),
        },
        // A click without `url` (Mailgun's own test payload has none) is still a click.
        "clicked" => EventKind::Clicked {
            url: text(&data["url"]).unwrap_or_default(),
            user_agent: user_agent(),
        },
        "complained" => EventKind::Complained {
            feedback_type: None,
        },
        "unsubscribed" => EventKind::Unsubscribed,
        // accepted, stored, and rejected (Mailgun refused the send itself, which our send call
        // already saw as an error), plus mailing-list events: nothing to record.
        _ => return None,
    };
    // Our send stores Mailgun's id without the angle brackets its API answer has.
    let Some(provider_message_id) = text(&data["message"]["headers"]["message-id"]).map(|id| {
        id.trim_start_matches('<')
            .trim_end_matches('>')
            .trim()
            .to_string()
    }) else {
        tracing::debug!(event = %name, "mailgun event without message-id skipped");
        return None;
    };
    let rcpt = text(&data["recipient"]);
    let occurred_at = seconds(&data["timestamp"]).unwrap_or(signed_at);
    let event_id = text(&data["id"]).unwrap_or_else(|| {
        derived_event_id(&[
            &provider_message_id,
            &name,
            rcpt.as_deref().unwrap_or(""),
            &occurred_at.to_string(),
        ])
    });
    Some(ProviderEvent {
        event_id,
        provider_message_id,
        recipient: rcpt.as_deref().and_then(recipient),
        kind,
        occurred_at,
        raw: data.clone(),
    })
}

/// `delivery-status` as one line: the SMTP code and the server's text (or Mailgun's own
/// description when the server said nothing, as for suppressions), else the failure `reason`.
fn diagnostic(data: &Value) -> Option<String> {
    let status = &data["delivery-status"];
    let one_line = |v: &Value| {
        v.as_str()
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|s| !s.is_empty())
    };
    let text = one_line(&status["message"]).or_else(|| one_line(&status["description"]));
    match (status["code"].as_i64(), text) {
        (Some(code), Some(text)) => Some(format!("{code} {text}")),
        (None, Some(text)) => Some(text),
        (Some(code), None) => Some(code.to_string()),
        (None, None) => one_line(&data["reason"]),
    }
}

/// Mailgun event times are float seconds (`1521233195.375624`), sometimes as a string.
fn seconds(v: &Value) -> Option<Millis> {
    let secs = match v {
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        v => v.as_f64()?,
    };
    let ms = (secs * 1000.0).round();
    // Guards the cast: NaN, infinities and absurd values are not times.
    (ms.is_finite() && ms.abs() < 1e15).then_some(ms as Millis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_float_seconds() {
        assert_eq!(seconds(&json!(1521233195.375624)), Some(1521233195376));
        assert_eq!(seconds(&json!("1521472262.908181")), Some(1521472262908));
        assert_eq!(seconds(&json!(1521472262)), Some(1521472262000));
        assert_eq!(seconds(&json!("soon")), None);
        assert_eq!(seconds(&json!(1e300)), None);
    }

    #[test]
    fn diagnostics_read_delivery_status() {
        let gmail = json!({"delivery-status": {"code": 550,
            "message": "5.1.1 The email account that you tried to reach does not exist. Please try\n5.1.1 double-checking",
            "description": ""}});
        assert_eq!(
            diagnostic(&gmail).as_deref(),
            Some(
                "550 5.1.1 The email account that you tried to reach does not exist. Please try 5.1.1 double-checking"
            )
        );
        let suppressed = json!({"reason": "suppress-bounce", "delivery-status": {"code": 605,
            "message": "", "description": "Not delivering to previously bounced address"}});
        assert_eq!(
            diagnostic(&suppressed).as_deref(),
            Some("605 Not delivering to previously bounced address")
        );
        assert_eq!(
            diagnostic(&json!({"reason": "generic"})).as_deref(),
            Some("generic")
        );
        assert_eq!(diagnostic(&json!({})), None);
    }

    #[test]
    fn signature_or_parent_signature_verifies() {
        let sign = |key: &str, ts: &str, token: &str| {
            let k = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
            hex::encode(hmac::sign(&k, format!("{ts}{token}").as_bytes()).as_ref())
        };
        let now = 1_770_920_772_000;
        let token = "e0b5477167110d68991efc6b9f89f0a11066af27834600e123";
        let sig = json!({"timestamp": "1770920772", "token": token,
            "signature": sign("sub-key", "1770920772", token),
            "parent-signature": sign("parent-key", "1770920772", token)});
        assert_eq!(verify("sub-key", &sig, now).unwrap(), now);
        assert_eq!(verify("parent-key", &sig, now).unwrap(), now);
        assert!(matches!(
            verify("other-key", &sig, now),
            Err(WebhookError::Unauthorized(_))
        ));
        // Upper-case hex is the same signature.
        let upper = json!({"timestamp": 1770920772, "token": token,
            "signature": sign("sub-key", "1770920772", token).to_uppercase()});
        assert_eq!(verify("sub-key", &upper, now).unwrap(), now);
    }
}
