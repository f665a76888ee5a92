//! Resend webhooks, delivered by Svix (the Standard Webhooks scheme): headers `svix-id`,
//! `svix-timestamp` (unix seconds) and `svix-signature` (space-separated `v1,<base64>`
//! entries, any one of which may match). The signature is HMAC-SHA256 over
//! `{svix-id}.{svix-timestamp}.{body}`, keyed with the base64-decoded part of the
//! `whsec_…` signing secret after its prefix. One event per request:
//! `{"type", "created_at", "data": {"email_id", "to": [...], "bounce"?, "click"?, ...}}`.

use super::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, WebhookContext, WebhookError,
    WebhookFuture, WebhookOutcome, ct_eq, header, recipient, rfc3339_ms, signed_seconds,
    signing_key, text,
};
use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

const PREFIX: &str = "whsec_";
/// Svix generates 24-byte secrets; anything shorter is not one of theirs.
const MIN_KEY_BYTES: usize = 24;

/// Checks the webhook key's format when the provider config is saved.
pub fn check_key(key: &str) -> Result<(), String> {
    decode_key(key).map(|_| ())
}

/// The HMAC key inside a `whsec_` secret.
fn decode_key(key: &str) -> Result<Vec<u8>, String> {
    let b64 = key.strip_prefix(PREFIX).ok_or_else(|| {
        "must be the signing secret from Resend's webhook page, starting with whsec_".to_string()
    })?;
    let bytes = STANDARD
        .decode(b64)
        .map_err(|_| "the part after whsec_ must be base64".to_string())?;
    if bytes.len() < MIN_KEY_BYTES {
        return Err(format!(
            "is too short: the part after whsec_ must decode to at least {MIN_KEY_BYTES} bytes, \
             got {}",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Verifies a Resend (Svix) webhook call and normalises its event, one per recipient.
pub fn parse<'a>(
    config: &'a Value,
    req: &'a InboundWebhook<'a>,
    _ctx: &'a WebhookContext,
) -> WebhookFuture<'a> {
    Box::pin(async move {
        let key = signing_key(config, "resend", "the endpoint's signing secret, whsec_…")?;
        let key = decode_key(key)
            .map_err(|e| WebhookError::NotConfigured(format!("resend webhook_signing_key {e}")))?;
        let svix_id = verify(&key, req)?;
        let event: Value = serde_json::from_slice(req.body).map_err(|e| {
            WebhookError::Malformed(format!("resend webhook body is not JSON: {e}"))
        })?;
        Ok(WebhookOutcome::Events(normalise(svix_id, &event)?))
    })
}

/// Checks the Svix headers and signature; returns the `svix-id`.
fn verify<'a>(key: &[u8], req: &'a InboundWebhook<'a>) -> Result<&'a str, WebhookError> {
    let missing = |h: &str| WebhookError::Unauthorized(format!("missing {h} header"));
    let id = header(req, "svix-id").ok_or_else(|| missing("svix-id"))?;
    let ts = header(req, "svix-timestamp").ok_or_else(|| missing("svix-timestamp"))?;
    let sigs = header(req, "svix-signature").ok_or_else(|| missing("svix-signature"))?;
    signed_seconds(req.now, ts, "svix-timestamp")?;
    let mut ctx = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, key));
    ctx.update(id.as_bytes());
    ctx.update(b".");
    ctx.update(ts.as_bytes());
    ctx.update(b".");
    ctx.update(req.body);
    let expected = ctx.sign();
    // Several entries appear while a secret is being rotated; other versions are skipped.
    let matched = sigs
        .split_whitespace()
        .filter_map(|entry| entry.strip_prefix("v1,"))
        .filter_map(|b64| STANDARD.decode(b64).ok())
        .any(|sig| ct_eq(&sig, expected.as_ref()));
    if !matched {
        return Err(WebhookError::Unauthorized(
            "svix-signature does not match".into(),
        ));
    }
    Ok(id)
}

/// Resend's documented bounce types: `Permanent` → hard; `Transient`, `Temporary` (both
/// named in Resend's docs) and `Undetermined` → soft, since Resend only suppresses on
/// permanent bounces. A bounce without a type is hard, as `email.bounced` is documented as
/// a permanent rejection; any other type is soft so a new category never suppresses by guess.
fn bounce_type(kind: Option<&str>) -> BounceType {
    match kind {
        None | Some("Permanent") => BounceType::Hard,
        Some(_) => BounceType::Soft,
    }
}

/// The event kind, or `None` for types with no CourierX meaning:
///
/// | Resend type              | CourierX |
/// |--------------------------|----------|
/// | `email.delivered`        | delivered |
/// | `email.bounced`          | bounced (hard/soft per [`bounce_type`]) |
/// | `email.suppressed`       | bounced hard: Resend refused to send because the address is on its suppression list |
/// | `email.complained`       | complained |
/// | `email.opened`           | opened |
/// | `email.clicked`          | clicked (`data.click.link`, `data.click.userAgent`) |
/// | `email.delivery_delayed` | deferred |
/// | `email.failed`           | skipped: account-side failures (quota, domain verification, API key), not the recipient's; a bounce would suppress good addresses |
/// | `email.sent`, `email.scheduled`, `email.received`, `contact.*`, `domain.*` | skipped |
fn kind(event: &Value) -> Result<Option<EventKind>, WebhookError> {
    let data = &event["data"];
    let kind = match text(&event["type"]).unwrap_or("") {
        "email.delivered" => EventKind::Delivered,
        "email.bounced" => {
            let bounce = &data["bounce"];
            // The SMTP reply when Resend passes it on, else its own explanation.
            let smtp: Vec<&str> = bounce["diagnosticCode"]
                .as_array()
                .map(|a| a.iter().filter_map(text).collect())
                .unwrap_or_default();
            let diagnostic = if smtp.is_empty() {
                text(&bounce["message"]).map(str::to_string)
            } else {
                Some(smtp.join("; "))
            };
            EventKind::Bounced {
                bounce_type: bounce_type(text(&bounce["type"])),
                diagnostic,
            }
        }
        "email.suppressed" => EventKind::Bounced {
            bounce_type: BounceType::Hard,
            diagnostic: text(&data["suppressed"]["message"]).map(str::to_string),
        },
        "email.complained" => EventKind::Complained {
            feedback_type: None,
        },
        "email.opened" => EventKind::Opened { user_agent: None },
        "email.clicked" => {
            let click = &data["click"];
            let url = text(&click["link"]).ok_or_else(|| {
                WebhookError::Malformed("resend email.clicked has no data.click.link".into())
            })?;
            EventKind::Clicked {
                url: url.to_string(),
                user_agent: text(&click["userAgent"]).map(str::to_string),
            }
        }
        "email.delivery_delayed" => EventKind::Deferred { diagnostic: None },
        _ => return Ok(None),
    };
    Ok(Some(kind))
}

fn normalise(svix_id: &str, event: &Value) -> Result<Vec<ProviderEvent>, WebhookError> {
    if !event.is_object() {
        return Err(WebhookError::Malformed(
            "resend webhook body is not a JSON object".into(),
        ));
    }
    let Some(kind) = kind(event)? else {
        return Ok(Vec::new());
    };
    let data = &event["data"];
    let email_id = text(&data["email_id"])
        .ok_or_else(|| WebhookError::Malformed("resend event has no data.email_id".into()))?;
    // A click carries its own time; every event carries the time Resend recorded it.
    let when = text(&data["click"]["timestamp"])
        .filter(|_| matches!(kind, EventKind::Clicked { .. }))
        .or_else(|| text(&event["created_at"]))
        .ok_or_else(|| WebhookError::Malformed("resend event has no created_at".into()))?;
    let occurred_at = rfc3339_ms(when).ok_or_else(|| {
        WebhookError::Malformed(format!("resend created_at is not an ISO 8601 time: {when}"))
    })?;
    let to: Vec<&str> = data["to"]
        .as_array()
        .map(|a| a.iter().filter_map(text).collect())
        .unwrap_or_default();
    let one = |event_id: String, address: Option<&str>| ProviderEvent {
        event_id,
        provider_message_id: email_id.to_string(),
        recipient: address.and_then(recipient),
        kind: kind.clone(),
        occurred_at,
        raw: event.clone(),
    };
    Ok(match to.as_slice() {
        [] => vec![one(svix_id.to_string(), None)],
        [only] => vec![one(svix_id.to_string(), Some(only))],
        many => many
            .iter()
            .map(|a| one(format!("{svix_id}:{a}"), Some(a)))
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_be_whsec_and_base64_of_24_bytes() {
        let good = format!("whsec_{}", STANDARD.encode([7u8; 24]));
        assert_eq!(check_key(&good), Ok(()));
        assert_eq!(decode_key(&good).unwrap(), vec![7u8; 24]);
        let no_prefix = check_key(&STANDARD.encode([7u8; 24])).unwrap_err();
        assert!(no_prefix.contains("starting with whsec_"), "{no_prefix}");
        let not_b64 = check_key("whsec_not base64!").unwrap_err();
        assert!(not_b64.contains("must be base64"), "{not_b64}");
        let short = check_key(&format!("whsec_{}", STANDARD.encode([7u8; 16]))).unwrap_err();
        assert!(short.contains("at least 24 bytes, got 16"), "{short}");
    }

    #[test]
    fn bounce_types_follow_resend_docs() {
        assert_eq!(bounce_type(Some("Permanent")), BounceType::Hard);
        assert_eq!(bounce_type(None), BounceType::Hard);
        for t in ["Transient", "Temporary", "Undetermined", "SomethingNew"] {
            assert_eq!(bounce_type(Some(t)), BounceType::Soft, "{t}");
        }
    }

    #[test]
    fn skipped_types_yield_no_events() {
        for t in [
            "email.sent",
            "email.scheduled",
            "email.failed",
            "contact.created",
        ] {
            let e = serde_json::json!({"type": t, "created_at": "2024-02-22T23:41:12.126Z",
                "data": {"email_id": "e1", "to": ["a@example.com"]}});
            assert!(normalise("msg_1", &e).unwrap().is_empty(), "{t}");
        }
    }
}
