//! Postmark webhooks: one JSON record per request, told apart by `RecordType` (`Delivery`,
//! `Bounce`, `SpamComplaint`, `Open`, `Click`, `SubscriptionChange`).
//!
//! Postmark signs nothing and sends no timestamp. Requests are authenticated with what the
//! user configured on the Postmark webhook: HTTP Basic credentials in the URL
//! (`https://user:pass@host/...`) and/or a custom header. Both are compared in constant time;
//! when both are configured both must match. Without either, calls are refused
//! (`NotConfigured`). With no timestamp there is no replay window: a replayed or retried
//! request carries the same record, so it gets the same `event_id` and the engine's
//! event-id dedupe stores it once.

use super::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, WebhookContext, WebhookError,
    WebhookFuture, WebhookOutcome, ct_eq, derived_event_id, header, recipient, rfc3339_ms, text,
};
use base64::Engine;
use serde_json::Value;

/// Verifies a Postmark webhook call and normalises its record.
pub fn parse<'a>(
    config: &'a Value,
    req: &'a InboundWebhook<'a>,
    _ctx: &'a WebhookContext,
) -> WebhookFuture<'a> {
    Box::pin(async move {
        authenticate(config, req)?;
        let record: Value = serde_json::from_slice(req.body).map_err(|e| {
            WebhookError::Malformed(format!("postmark webhook body is not JSON: {e}"))
        })?;
        if !record.is_object() {
            return Err(WebhookError::Malformed(
                "postmark webhook body is not a JSON object".into(),
            ));
        }
        Ok(WebhookOutcome::Events(
            normalise(&record)?.into_iter().collect(),
        ))
    })
}

/// A non-empty string field of the config.
fn setting<'a>(config: &'a Value, field: &str) -> Option<&'a str> {
    config[field].as_str().filter(|s| !s.is_empty())
}

fn authenticate(config: &Value, req: &InboundWebhook<'_>) -> Result<(), WebhookError> {
    let basic = setting(config, "webhook_username").zip(setting(config, "webhook_password"));
    let custom =
        setting(config, "webhook_header_name").zip(setting(config, "webhook_header_value"));
    if basic.is_none() && custom.is_none() {
        return Err(WebhookError::NotConfigured(
            "postmark webhook authentication is not configured: set webhook_username and \
             webhook_password, or webhook_header_name and webhook_header_value"
                .into(),
        ));
    }
    if let Some((user, pass)) = basic {
        let given = header(req, "authorization")
            .and_then(basic_credentials)
            .ok_or_else(|| WebhookError::Unauthorized("missing HTTP Basic credentials".into()))?;
        // `&` rather than `&&`: always compare both, so timing does not reveal the username.
        if !(ct_eq(&given.0, user.as_bytes()) & ct_eq(&given.1, pass.as_bytes())) {
            return Err(WebhookError::Unauthorized(
                "wrong webhook username or password".into(),
            ));
        }
    }
    if let Some((name, value)) = custom {
        let given = req
            .headers
            .get(name)
            .ok_or_else(|| WebhookError::Unauthorized(format!("missing webhook header {name}")))?;
        if !ct_eq(given.as_bytes(), value.as_bytes()) {
            return Err(WebhookError::Unauthorized(format!(
                "wrong value in webhook header {name}"
            )));
        }
    }
    Ok(())
}

/// `Basic base64(user:pass)` as (user, pass) bytes; RFC 7617 puts the split at the first colon.
fn basic_credentials(value: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// Postmark's bounce `Type` as CourierX sees it.
#[derive(Debug, PartialEq)]
enum BounceMeaning {
    Bounce(BounceType),
    Complaint,
    /// Not a delivery failure of this message to this address.
    Ignore,
}

/// Postmark's documented bounce types (code in brackets):
///
/// | Type                        | CourierX | why |
/// |-----------------------------|----------|-----|
/// | HardBounce (1)              | hard     | unknown user, mailbox not found |
/// | BadEmailAddress (100000)    | hard     | not a valid address |
/// | ManuallyDeactivated (100002)| hard     | Postmark refuses the address until it is reactivated: a suppression drop |
/// | SoftBounce (4096)           | soft     | mailbox full, over quota, account disabled for now |
/// | Transient (2)               | soft     | "message delayed": temporary trouble reaching the server |
/// | DnsError (256)              | soft     | temporary DNS error |
/// | Blocked (100006)            | soft     | the ISP blocked content or reputation; the address is fine |
/// | DMARCPolicy (100009)        | soft     | our sending domain's policy failed, not the recipient |
/// | SpamNotification (512)      | soft     | refused or filtered as spam; the address is fine |
/// | VirusNotification (8192)    | soft     | content refused as infected |
/// | Unknown (2048), undocumented| soft     | a failure Postmark could not classify: count it, never suppress on a guess |
/// | SpamComplaint (100001)      | complained | normally its own `SpamComplaint` record |
/// | AutoResponder (64), AddressChange (128), ChallengeVerification (16384), Subscribe (32), Unsubscribe (16), OpenRelayTest (1024), Unconfirmed (100003) | skipped | auto-replies, challenges, list requests and tests: not a failure to deliver to this address |
/// | SMTPApiError (100007), InboundError (100008), TemplateRenderingFailed (100010) | skipped | SMTP-API, inbound and template paths CourierX does not use |
fn bounce_meaning(kind: &str) -> BounceMeaning {
    use BounceMeaning::*;
    match kind {
        "HardBounce" | "BadEmailAddress" | "ManuallyDeactivated" => Bounce(BounceType::Hard),
        "SpamComplaint" => Complaint,
        "AutoResponder"
        | "AddressChange"
        | "ChallengeVerification"
        | "Subscribe"
        | "Unsubscribe"
        | "OpenRelayTest"
        | "Unconfirmed"
        | "SMTPApiError"
        | "InboundError"
        | "TemplateRenderingFailed" => Ignore,
        _ => Bounce(BounceType::Soft),
    }
}

/// The record as a CourierX event, or `None` for records without CourierX meaning.
fn normalise(r: &Value) -> Result<Option<ProviderEvent>, WebhookError> {
    // Inbound-message webhooks carry no RecordType: nothing for delivery tracking.
    let Some(record_type) = text(&r["RecordType"]) else {
        return Ok(None);
    };
    let (kind, time_field) = match record_type {
        "Delivery" => (EventKind::Delivered, "DeliveredAt"),
        "Bounce" => {
            let diagnostic = text(&r["Details"])
                .or_else(|| text(&r["Description"]))
                .map(str::to_string);
            let kind = match bounce_meaning(text(&r["Type"]).unwrap_or("")) {
                BounceMeaning::Bounce(bounce_type) => EventKind::Bounced {
                    bounce_type,
                    diagnostic,
                },
                BounceMeaning::Complaint => EventKind::Complained {
                    feedback_type: None,
                },
                BounceMeaning::Ignore => return Ok(None),
            };
            (kind, "BouncedAt")
        }
        // Postmark gives no ARF feedback type, only that the recipient reported spam.
        "SpamComplaint" => (
            EventKind::Complained {
                feedback_type: None,
            },
            "BouncedAt",
        ),
        "Open" => (
            EventKind::Opened {
                user_agent: text(&r["UserAgent"]).map(str::to_string),
            },
            "ReceivedAt",
        ),
        "Click" => {
            let url = text(&r["OriginalLink"]).ok_or_else(|| {
                WebhookError::Malformed("postmark Click record has no OriginalLink".into())
            })?;
            (
                EventKind::Clicked {
                    url: url.to_string(),
                    user_agent: text(&r["UserAgent"]).map(str::to_string),
                },
                "ReceivedAt",
            )
        }
        // Only an unsubscribe (SuppressionReason ManualSuppression, with the MessageID of the
        // message it came from) is new here: HardBounce and SpamComplaint suppressions arrive
        // as their own Bounce/SpamComplaint records, reactivations have no CourierX meaning,
        // and suppressions made in Postmark's UI or API have no MessageID to match.
        "SubscriptionChange" => {
            let unsubscribed = r["SuppressSending"].as_bool() == Some(true)
                && text(&r["SuppressionReason"]) == Some("ManualSuppression")
                && text(&r["MessageID"]).is_some();
            if !unsubscribed {
                return Ok(None);
            }
            (EventKind::Unsubscribed, "ChangedAt")
        }
        _ => return Ok(None),
    };
    let message_id = text(&r["MessageID"]).ok_or_else(|| {
        WebhookError::Malformed(format!("postmark {record_type} record has no MessageID"))
    })?;
    let when = text(&r[time_field]).ok_or_else(|| {
        WebhookError::Malformed(format!("postmark {record_type} record has no {time_field}"))
    })?;
    let occurred_at = rfc3339_ms(when).ok_or_else(|| {
        WebhookError::Malformed(format!(
            "postmark {record_type} {time_field} is not an ISO 8601 time: {when}"
        ))
    })?;
    // Bounce and spam-complaint records use `Email`; the others `Recipient`.
    let address = text(&r["Recipient"]).or_else(|| text(&r["Email"]));
    let event_id = match (&r["ID"], record_type) {
        // Postmark's bounce ID (spam complaints are bounce records too) is unique and stable.
        (Value::Number(id), "Bounce" | "SpamComplaint") => id.to_string(),
        (Value::String(id), "Bounce" | "SpamComplaint") if !id.is_empty() => id.clone(),
        _ => {
            let link = match &kind {
                EventKind::Clicked { url, .. } => url.as_str(),
                _ => "",
            };
            derived_event_id(&[record_type, message_id, address.unwrap_or(""), when, link])
        }
    };
    Ok(Some(ProviderEvent {
        event_id,
        provider_message_id: message_id.to_string(),
        recipient: address.and_then(recipient),
        kind,
        occurred_at,
        raw: r.clone(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        let token = base64::engine::general_purpose::STANDARD.encode("hook:pa:ss");
        assert_eq!(
            basic_credentials(&format!("Basic {token}")),
            Some((b"hook".to_vec(), b"pa:ss".to_vec()))
        );
        assert_eq!(
            basic_credentials(&format!("basic  {token}")),
            Some((b"hook".to_vec(), b"pa:ss".to_vec()))
        );
        assert_eq!(basic_credentials(&format!("Bearer {token}")), None);
        assert_eq!(basic_credentials("Basic !!!"), None);
        let no_colon = base64::engine::general_purpose::STANDARD.encode("hook");
        assert_eq!(basic_credentials(&format!("Basic {no_colon}")), None);
    }

    #[test]
    fn bounce_types_map_per_the_table() {
        use BounceMeaning::*;
        for t in ["HardBounce", "BadEmailAddress", "ManuallyDeactivated"] {
            assert_eq!(bounce_meaning(t), Bounce(BounceType::Hard), "{t}");
        }
        for t in [
            "SoftBounce",
            "Transient",
            "DnsError",
            "Blocked",
            "DMARCPolicy",
            "SpamNotification",
            "VirusNotification",
            "Unknown",
            "SomethingNew",
        ] {
            assert_eq!(bounce_meaning(t), Bounce(BounceType::Soft), "{t}");
        }
        assert_eq!(bounce_meaning("SpamComplaint"), Complaint);
        for t in ["AutoResponder", "Unsubscribe", "TemplateRenderingFailed"] {
            assert_eq!(bounce_meaning(t), Ignore, "{t}");
        }
    }

    #[test]
    fn timestamps_with_seven_fraction_digits_and_offsets_parse() {
        assert_eq!(
            rfc3339_ms("2019-11-05T16:33:54.9070259Z"),
            Some(1_572_971_634_907)
        );
        assert_eq!(
            rfc3339_ms("2014-08-01T13:28:10.2735393-04:00"),
            Some(1_406_914_090_273)
        );
        assert_eq!(rfc3339_ms("yesterday"), None);
    }

    #[test]
    fn subscription_changes_other_than_unsubscribes_are_skipped() {
        let base = json!({
            "RecordType": "SubscriptionChange",
            "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
            "ChangedAt": "2020-02-01T10:53:34.416071Z",
            "Recipient": "john@example.com",
            "Origin": "Recipient",
            "SuppressSending": true,
            "SuppressionReason": "ManualSuppression",
        });
        assert!(normalise(&base).unwrap().is_some());
        for (field, value) in [
            ("SuppressionReason", json!("HardBounce")),
            ("SuppressionReason", json!("SpamComplaint")),
            ("SuppressSending", json!(false)),
            ("MessageID", Value::Null),
        ] {
            let mut r = base.clone();
            r[field] = value;
            assert!(normalise(&r).unwrap().is_none(), "{field}");
        }
    }
}
