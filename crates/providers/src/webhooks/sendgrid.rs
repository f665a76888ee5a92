//! The SendGrid Event Webhook ("Signed Event Webhook Requests").
//!
//! SendGrid signs each POST with ECDSA P-256 / SHA-256 over the `X-Twilio-Email-Event-Webhook-Timestamp`
//! header followed by the raw body, and sends the base64 DER signature in
//! `X-Twilio-Email-Event-Webhook-Signature`. The verification key is shown in Mail Settings (and by
//! `GET /v3/user/webhooks/event/settings/signed`) as base64 DER `SubjectPublicKeyInfo` without PEM
//! armour. The body is a JSON array of events, each carrying `sg_event_id` (unique, meant for
//! deduplication) and `sg_message_id` (the `X-Message-Id` of the send plus a `.filter…` suffix).

use super::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, WebhookContext, WebhookError,
    WebhookFuture, WebhookOutcome, derived_event_id, header, recipient, signed_seconds,
    signing_key,
};
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1, ParsedPublicKey, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use courierx_domain::Millis;
use serde_json::Value;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

const SIGNATURE_HEADER: &str = "x-twilio-email-event-webhook-signature";
const TIMESTAMP_HEADER: &str = "x-twilio-email-event-webhook-timestamp";

/// Checks the webhook key's format when the provider config is saved.
pub fn check_key(key: &str) -> Result<(), String> {
    public_point(key).map(|_| ())
}

/// The uncompressed P-256 point out of the verification key: base64 DER `SubjectPublicKeyInfo`
/// as SendGrid shows it, or the same wrapped in a PEM `PUBLIC KEY` block.
fn public_point(key: &str) -> Result<Vec<u8>, String> {
    let key = key.trim();
    let b64 = match key.strip_prefix("-----BEGIN PUBLIC KEY-----") {
        Some(rest) => rest
            .find("-----END PUBLIC KEY-----")
            .map(|end| &rest[..end])
            .ok_or("the PEM block has no END PUBLIC KEY line")?,
        None => key,
    };
    let b64: String = b64.chars().filter(|c| !c.is_whitespace()).collect();
    let der = STANDARD.decode(b64).map_err(
        |_| "must be the base64 verification key shown under Mail Settings > Signed Event Webhook",
    )?;
    let (rest, spki) = SubjectPublicKeyInfo::from_der(&der)
        .map_err(|_| "is not a DER SubjectPublicKeyInfo public key")?;
    if !rest.is_empty() {
        return Err("has trailing bytes after the public key".into());
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if spki.algorithm.algorithm != OID_KEY_TYPE_EC_PUBLIC_KEY || curve != Some(OID_EC_P256) {
        return Err("must be an ECDSA P-256 public key".into());
    }
    let point = spki.subject_public_key.data.to_vec();
    // Also proves the point lies on the curve, so a bad key fails at save, not on every POST.
    ParsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .map_err(|_| "does not hold a valid P-256 point")?;
    Ok(point)
}

pub fn parse<'a>(
    config: &'a Value,
    req: &'a InboundWebhook<'a>,
    _ctx: &'a WebhookContext,
) -> WebhookFuture<'a> {
    Box::pin(async move {
        let signed_at = verify(config, req)?;
        events(req.body, signed_at).map(WebhookOutcome::Events)
    })
}

/// Checks the signature and then the timestamp's freshness; returns the signed time (ms).
fn verify(config: &Value, req: &InboundWebhook<'_>) -> Result<Millis, WebhookError> {
    let key = signing_key(config, "sendgrid", "Signed Event Webhook verification key")?;
    let point = public_point(key).map_err(|e| {
        WebhookError::NotConfigured(format!("sendgrid: the stored webhook_signing_key {e}"))
    })?;
    let signature = header(req, SIGNATURE_HEADER).ok_or_else(|| {
        WebhookError::Unauthorized("missing X-Twilio-Email-Event-Webhook-Signature".into())
    })?;
    let timestamp = header(req, TIMESTAMP_HEADER).ok_or_else(|| {
        WebhookError::Unauthorized("missing X-Twilio-Email-Event-Webhook-Timestamp".into())
    })?;
    let signature = STANDARD
        .decode(signature.trim())
        .map_err(|_| WebhookError::Unauthorized("the signature is not base64".into()))?;
    // Signed exactly as sent: the timestamp header's text, then the body bytes.
    let mut signed = Vec::with_capacity(timestamp.len() + req.body.len());
    signed.extend_from_slice(timestamp.as_bytes());
    signed.extend_from_slice(req.body);
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &point)
        .verify(&signed, &signature)
        .map_err(|_| WebhookError::Unauthorized("the SendGrid signature does not verify".into()))?;
    signed_seconds(req.now, timestamp, "the timestamp")
}

/// Normalises the event array. `signed_at` stands in for an event without a readable time.
fn events(body: &[u8], signed_at: Millis) -> Result<Vec<ProviderEvent>, WebhookError> {
    let json: Value = serde_json::from_slice(body)
        .map_err(|e| WebhookError::Malformed(format!("sendgrid: body is not JSON: {e}")))?;
    let list = json
        .as_array()
        .ok_or_else(|| WebhookError::Malformed("sendgrid: body is not a JSON array".into()))?;
    let mut out = Vec::with_capacity(list.len());
    for raw in list {
        if !raw.is_object() {
            return Err(WebhookError::Malformed(
                "sendgrid: an array element is not an event object".into(),
            ));
        }
        if let Some(event) = event(raw, signed_at) {
            out.push(event);
        }
    }
    Ok(out)
}

/// One event, or `None` for events with no CourierX meaning or no message to attach to.
fn event(raw: &Value, signed_at: Millis) -> Option<ProviderEvent> {
    let text = |field: &str| {
        raw[field]
            .as_str()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let name = text("event")?.to_ascii_lowercase();
    let kind = match name.as_str() {
        "delivered" => EventKind::Delivered,
        // `type` is "bounce" for a permanent refusal and "blocked" for one the docs describe as
        // "could not or would not accept the message temporarily" (reputation, content, rate):
        // the message is lost but the address is not proven bad, which is a soft bounce.
        "bounce" => EventKind::Bounced {
            bounce_type: match text("type").as_deref() {
                Some("blocked") => BounceType::Soft,
                _ => BounceType::Hard,
            },
            diagnostic: text("reason").or_else(|| text("status")),
        },
        // SendGrid never attempts a dropped message; nearly all drop reasons name the address
        // (Bounced Address, Unsubscribed Address, Spam Reporting Address, Invalid), so it is a
        // hard bounce for that recipient, with SendGrid's reason as the diagnostic.
        "dropped" => EventKind::Bounced {
            bounce_type: BounceType::Hard,
            diagnostic: text("reason").or_else(|| text("status")),
        },
        // SendGrid keeps retrying a deferred message (up to 72 hours).
        "deferred" => EventKind::Deferred {
            diagnostic: text("response").or_else(|| text("reason")),
        },
        // `sg_machine_open` (Apple Mail Privacy Protection prefetches) stays in `raw`: it is
        // still an open as SendGrid counts it.
        "open" => EventKind::Opened {
            user_agent: text("useragent"),
        },
        // A click without `url` is still a click; the URL is then unknown.
        "click" => EventKind::Clicked {
            url: text("url").unwrap_or_default(),
            user_agent: text("useragent"),
        },
        "spamreport" => EventKind::Complained {
            feedback_type: None,
        },
        "unsubscribe" | "group_unsubscribe" => EventKind::Unsubscribed,
        // processed, group_resubscribe, account status changes: nothing to record.
        _ => return None,
    };
    // Asynchronous bounces come without `sg_message_id` (documented): nothing to match them to.
    let Some(sg_message_id) = text("sg_message_id") else {
        tracing::debug!(event = %name, "sendgrid event without sg_message_id skipped");
        return None;
    };
    let provider_message_id = message_id(&sg_message_id).to_string();
    let email = text("email");
    let occurred_at = seconds(&raw["timestamp"]).unwrap_or(signed_at);
    let event_id = text("sg_event_id").unwrap_or_else(|| {
        derived_event_id(&[
            &provider_message_id,
            &name,
            email.as_deref().unwrap_or(""),
            &occurred_at.to_string(),
        ])
    });
    Some(ProviderEvent {
        event_id,
        provider_message_id,
        recipient: email.as_deref().and_then(recipient),
        kind,
        occurred_at,
        raw: raw.clone(),
    })
}

/// The `X-Message-Id` inside an `sg_message_id`: everything before the `.filter…` segment that
/// SendGrid's filter server appends (`abc.filterdrecv-…`, and in the older dotted ids
/// `14c5d75ce93.dfd.64b469.filter0001…`); otherwise everything before the first dot.
fn message_id(sg_message_id: &str) -> &str {
    let mut end = 0;
    for (i, segment) in sg_message_id.split('.').enumerate() {
        if i > 0 && segment.contains("filter") {
            return &sg_message_id[..end - 1];
        }
        end += segment.len() + 1;
    }
    sg_message_id.split('.').next().unwrap_or(sg_message_id)
}

/// Unix seconds (a number, or a numeric string as in some legacy events) as ms.
fn seconds(v: &Value) -> Option<Millis> {
    let secs = match v {
        Value::String(s) => s.trim().parse::<i64>().ok()?,
        v => v.as_i64()?,
    };
    secs.checked_mul(1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};

    fn spki_b64() -> String {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap();
        STANDARD.encode(pair.public_key().as_der().unwrap().as_ref())
    }

    #[test]
    fn keys_are_accepted_bare_or_in_pem() {
        let b64 = spki_b64();
        let point = public_point(&b64).unwrap();
        assert_eq!((point.len(), point[0]), (65, 0x04));
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n{}\n-----END PUBLIC KEY-----\n",
            &b64[..64],
            &b64[64..]
        );
        assert_eq!(public_point(&pem).unwrap(), point);
        assert!(check_key(&format!("  {b64}\n")).is_ok());
    }

    #[test]
    fn other_keys_are_refused() {
        assert!(check_key("not base64!").is_err());
        assert!(check_key(&STANDARD.encode(b"just bytes")).is_err());
        // A P-384 key is an EC key on the wrong curve.
        let p384 =
            EcdsaKeyPair::generate(&aws_lc_rs::signature::ECDSA_P384_SHA384_ASN1_SIGNING).unwrap();
        let der = p384.public_key().as_der().unwrap();
        assert_eq!(
            check_key(&STANDARD.encode(der.as_ref())).unwrap_err(),
            "must be an ECDSA P-256 public key"
        );
        // Trailing garbage after a good key.
        let mut der = STANDARD.decode(spki_b64()).unwrap();
        der.push(0);
        assert!(check_key(&STANDARD.encode(&der)).is_err());
        assert!(check_key("-----BEGIN PUBLIC KEY-----\nAAAA").is_err());
    }

    #[test]
    fn message_ids_lose_the_filter_suffix() {
        assert_eq!(
            message_id("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"),
            "14c5d75ce93.dfd.64b469"
        );
        assert_eq!(
            message_id("5lFl7Fr1Rjme_EyzNNB_5A.stfilter-015.5185.55F883172.0"),
            "5lFl7Fr1Rjme_EyzNNB_5A"
        );
        assert_eq!(
            message_id(
                "LRzXl66nRDyQ8Qe1n5rZBA.filterdrecv-p3mdw1-756b745b58-kmzbj-18-5F5FC2EF-47.0"
            ),
            "LRzXl66nRDyQ8Qe1n5rZBA"
        );
        assert_eq!(message_id("abc.recvd-1.0"), "abc");
        assert_eq!(message_id("abc"), "abc");
    }

    #[test]
    fn timestamps_are_seconds() {
        assert_eq!(seconds(&serde_json::json!(1513299569)), Some(1513299569000));
        assert_eq!(seconds(&serde_json::json!("123456789")), Some(123456789000));
        assert_eq!(seconds(&serde_json::json!(null)), None);
        assert_eq!(seconds(&serde_json::json!(i64::MAX)), None);
    }
}
