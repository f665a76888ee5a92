//! Amazon SES events, delivered by Amazon SNS to an HTTP(S) subscription.
//!
//! SES publishes each event (configuration-set event publishing, `eventType`, or the older
//! identity feedback notifications, `notificationType`) as the `Message` string of an SNS
//! message. SNS signs every message it posts: RSA over a canonical string of named fields
//! (`SignatureVersion` 1 = SHA1withRSA, 2 = SHA256withRSA) with the key in the X.509
//! certificate at `SigningCertURL`. We fetch that certificate only from SNS's own hosts (or a
//! prefix the operator adds, see [`url_allowed`]), refuse stale messages, optionally pin the
//! topic ARNs (`sns_topic_arns` in the SES provider config), and confirm subscriptions by
//! visiting `SubscribeURL`.

use super::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, SnsUrlPolicy, TIMESTAMP_TOLERANCE_MS,
    WebhookContext, WebhookError, WebhookFuture, WebhookOutcome, header, recipient,
};
use aws_lc_rs::signature::{
    RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
    VerificationAlgorithm,
};
use base64::Engine;
use courierx_domain::Millis;
use reqwest::Url;
use serde_json::{Map, Value};
use std::time::Duration;
use x509_parser::prelude::{ASN1Time, FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// How old an SNS `Timestamp` may be. SNS caps an HTTP(S) delivery policy's total retry time
/// at 3,600 s (a hard limit) and a retry carries the original message, so a genuine delivery
/// is never older than an hour; anything older is a replay.
pub const SNS_MAX_AGE_MS: Millis = 60 * 60 * 1000;

/// Certificate and subscription-confirmation fetches: long enough for a slow AWS edge, short
/// enough that SNS (which waits 15 s for our answer) sees a 502 and retries rather than a
/// time-out.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// SNS signing certificates are about 2 KB; a body far larger is not one.
const MAX_FETCH: usize = 64 * 1024;

/// SES posts this plain (non-JSON) text once, when a topic is attached as an event
/// destination.
const SES_VALIDATION_MESSAGE: &str =
    "Successfully validated SNS topic for Amazon SES event publishing.";

pub fn parse<'a>(
    config: &'a Value,
    req: &'a InboundWebhook<'a>,
    ctx: &'a WebhookContext,
) -> WebhookFuture<'a> {
    Box::pin(async move {
        let topics = allowed_topics(config)?;
        let Ok(Value::Object(msg)) = serde_json::from_slice::<Value>(req.body) else {
            return Err(WebhookError::Unauthorized(
                "not an SNS message: the body is not a JSON object".into(),
            ));
        };
        let kind = text(&msg, "Type")?;
        let to_sign = string_to_sign(&msg)?;
        // The header is not signed; SNS always sends it equal to the signed `Type`, so a
        // different value means the request was not posted by SNS as it stands.
        if let Some(h) = header(req, "x-amz-sns-message-type")
            && h != kind
        {
            return Err(WebhookError::Unauthorized(format!(
                "x-amz-sns-message-type {h:?} does not match the signed Type {kind:?}"
            )));
        }
        let sent_at = timestamp(text(&msg, "Timestamp")?).ok_or_else(|| {
            WebhookError::Unauthorized("SNS Timestamp is not an ISO 8601 time".into())
        })?;
        check_age(req.now, sent_at)?;
        let topic_arn = text(&msg, "TopicArn")?;
        if !topics.is_empty() && !topics.contains(&topic_arn) {
            return Err(WebhookError::Unauthorized(format!(
                "SNS topic {topic_arn} is not one of this provider's sns_topic_arns"
            )));
        }
        verify(&msg, &to_sign, req.now, ctx).await?;

        match kind {
            "SubscriptionConfirmation" => {
                let url = url_allowed(&ctx.sns_allowed_urls, text(&msg, "SubscribeURL")?)
                    .ok_or_else(|| {
                        WebhookError::Unauthorized("SubscribeURL is not an SNS URL".into())
                    })?;
                fetch(ctx, &url, "SubscribeURL").await?;
                Ok(WebhookOutcome::SubscriptionConfirmed {
                    topic_arn: topic_arn.to_string(),
                })
            }
            // Nothing to do: the operator unsubscribed on purpose, and re-subscribing is
            // theirs to decide.
            "UnsubscribeConfirmation" => Ok(WebhookOutcome::Events(Vec::new())),
            _ => {
                let message = text(&msg, "Message")?;
                let event = match serde_json::from_str::<Value>(message) {
                    Ok(v @ Value::Object(_)) => v,
                    _ if message.trim() == SES_VALIDATION_MESSAGE => {
                        return Ok(WebhookOutcome::Events(Vec::new()));
                    }
                    _ => {
                        return Err(WebhookError::Malformed(
                            "SNS Message is not an SES event (not a JSON object)".into(),
                        ));
                    }
                };
                let sns_id = text(&msg, "MessageId")?;
                ses_events(&event, sns_id, sent_at).map(WebhookOutcome::Events)
            }
        }
    })
}

/// The SES config's `sns_topic_arns` (empty: any topic). The config is stored validated, so a
/// config we cannot read is one we cannot trust to say which topics are ours.
fn allowed_topics(config: &Value) -> Result<Vec<&str>, WebhookError> {
    let bad = || {
        WebhookError::NotConfigured("ses: provider config has no readable sns_topic_arns".into())
    };
    let Value::Object(c) = config else {
        return Err(bad());
    };
    match c.get("sns_topic_arns") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(list)) => list.iter().map(|v| v.as_str().ok_or_else(bad)).collect(),
        Some(_) => Err(bad()),
    }
}

/// A string field of the SNS message; all of them are needed to check the signature.
fn text<'m>(msg: &'m Map<String, Value>, name: &str) -> Result<&'m str, WebhookError> {
    msg.get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| WebhookError::Unauthorized(format!("SNS message has no {name}")))
}

/// SNS's canonical string: for each signed field, in this (byte-sorted) order, the name, a
/// newline, the value, a newline. `Subject` is signed only when the notification has one.
pub fn string_to_sign(msg: &Map<String, Value>) -> Result<String, WebhookError> {
    let fields: &[&str] = match text(msg, "Type")? {
        "Notification" => &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ],
        "SubscriptionConfirmation" | "UnsubscribeConfirmation" => &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ],
        other => {
            return Err(WebhookError::Unauthorized(format!(
                "unknown SNS message Type {other:?}"
            )));
        }
    };
    let mut out = String::new();
    for &name in fields {
        // The AWS SDK validators treat a null Subject as absent, as SNS omits it.
        if name == "Subject" && msg.get(name).is_none_or(Value::is_null) {
            continue;
        }
        let value = text(msg, name)?;
        for part in [name, "\n", value, "\n"] {
            out.push_str(part);
        }
    }
    Ok(out)
}

/// Refuses messages older than [`SNS_MAX_AGE_MS`] or from further in the future than clock
/// skew explains.
fn check_age(now: Millis, sent_at: Millis) -> Result<(), WebhookError> {
    if now - sent_at > SNS_MAX_AGE_MS || sent_at - now > TIMESTAMP_TOLERANCE_MS {
        return Err(WebhookError::Unauthorized(
            "SNS Timestamp is outside the accepted window (replayed or stale message)".into(),
        ));
    }
    Ok(())
}

/// Checks `Signature` over `to_sign` with the key of the certificate at `SigningCertURL`.
async fn verify(
    msg: &Map<String, Value>,
    to_sign: &str,
    now: Millis,
    ctx: &WebhookContext,
) -> Result<(), WebhookError> {
    let alg: &'static dyn VerificationAlgorithm = match text(msg, "SignatureVersion")? {
        "1" => &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
        "2" => &RSA_PKCS1_2048_8192_SHA256,
        v => {
            return Err(WebhookError::Unauthorized(format!(
                "unsupported SNS SignatureVersion {v:?}"
            )));
        }
    };
    let signature = base64::engine::general_purpose::STANDARD
        .decode(text(msg, "Signature")?)
        .map_err(|_| WebhookError::Unauthorized("SNS Signature is not base64".into()))?;
    let cert_url = url_allowed(&ctx.sns_allowed_urls, text(msg, "SigningCertURL")?)
        .filter(|u| u.path().ends_with(".pem"))
        .ok_or_else(|| {
            WebhookError::Unauthorized("SigningCertURL is not an SNS certificate URL".into())
        })?;
    let key = signing_key(ctx, &cert_url, now).await?;
    UnparsedPublicKey::new(alg, &key)
        .verify(to_sign.as_bytes(), &signature)
        .map_err(|_| WebhookError::Unauthorized("SNS signature does not match".into()))
}

/// Whether an SNS-supplied URL (`SigningCertURL`, `SubscribeURL`) may be fetched, and the URL
/// to fetch. Allowed: `https://sns.<region>.amazonaws.com/…` (or `.amazonaws.com.cn`) on the
/// default port with no credentials, as SNS itself sends; or anything starting with one of
/// `policy.extra_prefixes` (which should end in `/`, e.g. `http://127.0.0.1:8080/`). The
/// caller fetches the returned, parsed URL, so what was checked is what is fetched.
pub fn url_allowed(policy: &SnsUrlPolicy, url: &str) -> Option<Url> {
    let parsed = Url::parse(url).ok()?;
    if policy
        .extra_prefixes
        .iter()
        .any(|p| !p.is_empty() && url.starts_with(p.as_str()))
    {
        return Some(parsed);
    }
    let sns_host = parsed
        .host_str()?
        .strip_prefix("sns.")
        .and_then(|h| {
            h.strip_suffix(".amazonaws.com")
                .or_else(|| h.strip_suffix(".amazonaws.com.cn"))
        })
        .is_some_and(region_ok);
    (sns_host
        && parsed.scheme() == "https"
        && parsed.username().is_empty()
        && parsed.password().is_none()
        && parsed.port().is_none()
        && parsed.fragment().is_none())
    .then_some(parsed)
}

/// `us-east-1`, `cn-north-1`, `us-gov-west-1`: lowercase words and a number, nothing else (in
/// particular no dots, so no other domain hides in it).
fn region_ok(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts
            .last()
            .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// The RSA public key (PKCS#1) of the certificate at `url`, fetched once and then cached.
async fn signing_key(
    ctx: &WebhookContext,
    url: &Url,
    now: Millis,
) -> Result<Vec<u8>, WebhookError> {
    let cached = ctx
        .cert_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(url.as_str())
        .cloned();
    if let Some(der) = cached {
        return rsa_key(&der, now);
    }
    let body = fetch(ctx, url, "SigningCertURL").await?;
    let der = match x509_parser::pem::parse_x509_pem(&body) {
        Ok((_, pem)) if pem.label == "CERTIFICATE" => pem.contents,
        _ => {
            return Err(WebhookError::Upstream(format!(
                "{} did not answer with a PEM certificate",
                shown(url)
            )));
        }
    };
    let key = rsa_key(&der, now)?;
    ctx.cert_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(url.as_str().to_string(), der);
    Ok(key)
}

/// The certificate's RSA key, if the certificate is readable, RSA and valid at `now`.
fn rsa_key(der: &[u8], now: Millis) -> Result<Vec<u8>, WebhookError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| {
        WebhookError::Upstream(format!("SNS signing certificate is unreadable: {e}"))
    })?;
    let valid = ASN1Time::from_timestamp(now.div_euclid(1000))
        .is_ok_and(|t| cert.validity().is_valid_at(t));
    if !valid {
        return Err(WebhookError::Unauthorized(
            "SNS signing certificate is expired or not yet valid".into(),
        ));
    }
    match cert.public_key().parsed() {
        Ok(PublicKey::RSA(_)) => Ok(cert.public_key().subject_public_key.data.to_vec()),
        _ => Err(WebhookError::Unauthorized(
            "SNS signing certificate does not hold an RSA key".into(),
        )),
    }
}

/// GETs an allowed SNS URL; any failure is the provider's side, so SNS should retry (502).
async fn fetch(ctx: &WebhookContext, url: &Url, what: &str) -> Result<Vec<u8>, WebhookError> {
    let upstream =
        |detail: String| WebhookError::Upstream(format!("{what} {}: {detail}", shown(url)));
    let mut resp = ctx
        .http
        .get(url.clone())
        .timeout(FETCH_TIMEOUT)
        .send()
        .await
        .map_err(|e| upstream(e.to_string()))?;
    // The shared client may follow redirects; the answer must still come from an allowed URL.
    if url_allowed(&ctx.sns_allowed_urls, resp.url().as_str()).is_none() {
        return Err(WebhookError::Unauthorized(format!(
            "{what} redirected away from SNS"
        )));
    }
    if !resp.status().is_success() {
        return Err(upstream(format!("answered {}", resp.status())));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| upstream(e.to_string()))? {
        if body.len() + chunk.len() > MAX_FETCH {
            return Err(upstream(format!("answer is over {MAX_FETCH} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A URL for messages, without its query (a `SubscribeURL` carries the subscription token).
fn shown(url: &Url) -> String {
    format!("{}{}", url.origin().ascii_serialization(), url.path())
}

/// Milliseconds since the epoch of an ISO 8601 / RFC 3339 time such as SNS's and SES's
/// `2017-08-05T00:41:02.669Z`.
pub fn timestamp(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// `Permanent` bounces are hard. `Transient` ones come only after SES stopped retrying but the
/// address may work later, and `Undetermined` gives no reason to bar the address: both soft.
pub fn bounce_type(ses_bounce_type: Option<&str>) -> BounceType {
    match ses_bounce_type {
        Some("Permanent") => BounceType::Hard,
        _ => BounceType::Soft,
    }
}

/// A `Subscription` event means an opt-out when the contact left the whole list, or a topic
/// that was not opted out before now is. An opt-in is not an event CourierX records.
pub fn is_opt_out(subscription: &Value) -> bool {
    let new = &subscription["newTopicPreferences"];
    if new["unsubscribeAll"] == true {
        return true;
    }
    let old_status = |topic: &str| {
        subscription["oldTopicPreferences"]["topicSubscriptionStatus"]
            .as_array()
            .and_then(|l| l.iter().find(|t| t["topicName"] == topic))
            .and_then(|t| t["subscriptionStatus"].as_str())
    };
    new["topicSubscriptionStatus"].as_array().is_some_and(|l| {
        l.iter().any(|t| {
            t["subscriptionStatus"] == "OptOut"
                && t["topicName"]
                    .as_str()
                    .is_some_and(|name| old_status(name) != Some("OptOut"))
        })
    })
}

/// The addresses in an SES recipient list: plain strings (`delivery.recipients`,
/// `mail.destination`) or objects with `emailAddress` (bounced, complained, delayed).
fn addresses<'v>(list: &'v Value, what: &str) -> Result<Vec<(&'v str, &'v Value)>, WebhookError> {
    let malformed = || WebhookError::Malformed(format!("SES event has no readable {what}"));
    list.as_array()
        .ok_or_else(malformed)?
        .iter()
        .map(|item| {
            item.as_str()
                .or_else(|| item["emailAddress"].as_str())
                .map(|a| (a, item))
                .ok_or_else(malformed)
        })
        .collect()
}

/// The one recipient of the mail, when there is exactly one: opens, clicks and list
/// unsubscribes do not say which of several recipients acted.
fn sole_recipient(mail: &Value) -> Option<&str> {
    match mail["destination"].as_array().map(Vec::as_slice) {
        Some([only]) => only.as_str(),
        _ => None,
    }
}

/// One CourierX event per affected recipient of one SES event. `sns_id` (SNS's `MessageId`,
/// kept across SNS retries) makes the event ids; `sns_at` stands in for an event without a
/// time of its own.
///
/// | SES type | CourierX |
/// | --- | --- |
/// | Bounce | bounced per `bouncedRecipients` (Permanent hard, else soft) |
/// | Complaint | complained per `complainedRecipients` |
/// | Delivery | delivered per `delivery.recipients` |
/// | DeliveryDelay | deferred per `delayedRecipients` |
/// | Open, Click | opened / clicked, recipient when the mail had one |
/// | Subscription | unsubscribed, when it is an opt-out |
/// | Reject | soft bounce per recipient (see below) |
/// | Send, Rendering Failure, others | nothing |
pub fn ses_events(
    event: &Value,
    sns_id: &str,
    sns_at: Millis,
) -> Result<Vec<ProviderEvent>, WebhookError> {
    let Some(kind) = event["eventType"]
        .as_str()
        .or_else(|| event["notificationType"].as_str())
    else {
        return Err(WebhookError::Malformed(
            "SES event has neither eventType nor notificationType".into(),
        ));
    };
    let mail = &event["mail"];
    // (recipient as SES wrote it, what happened, the event object holding its timestamp)
    let mut found: Vec<(Option<&str>, EventKind, &Value)> = Vec::new();
    match kind {
        "Bounce" => {
            let b = &event["bounce"];
            let bounce_type = bounce_type(b["bounceType"].as_str());
            for (addr, r) in addresses(&b["bouncedRecipients"], "bounce.bouncedRecipients")? {
                let dsn = [r["status"].as_str(), r["action"].as_str()]
                    .into_iter()
                    .flatten()
                    .collect::<Vec<_>>()
                    .join(" ");
                // Without a DSN the subtype (NoEmail, Suppressed, MailboxFull…) is the reason.
                let diagnostic = r["diagnosticCode"]
                    .as_str()
                    .map(str::to_string)
                    .or_else(|| (!dsn.is_empty()).then_some(dsn))
                    .or_else(|| b["bounceSubType"].as_str().map(str::to_string));
                let kind = EventKind::Bounced {
                    bounce_type,
                    diagnostic,
                };
                found.push((Some(addr), kind, b));
            }
        }
        "Complaint" => {
            let c = &event["complaint"];
            // `complaintSubType` (OnAccountSuppressionList) is the only reason SES gives when
            // there is no feedback report.
            let feedback_type = c["complaintFeedbackType"]
                .as_str()
                .or_else(|| c["complaintSubType"].as_str())
                .map(str::to_string);
            for (addr, _) in
                addresses(&c["complainedRecipients"], "complaint.complainedRecipients")?
            {
                let kind = EventKind::Complained {
                    feedback_type: feedback_type.clone(),
                };
                found.push((Some(addr), kind, c));
            }
        }
        "Delivery" => {
            let d = &event["delivery"];
            for (addr, _) in addresses(&d["recipients"], "delivery.recipients")? {
                found.push((Some(addr), EventKind::Delivered, d));
            }
        }
        "DeliveryDelay" => {
            let d = &event["deliveryDelay"];
            for (addr, r) in addresses(&d["delayedRecipients"], "deliveryDelay.delayedRecipients")?
            {
                let diagnostic = r["diagnosticCode"]
                    .as_str()
                    .or_else(|| r["status"].as_str())
                    .or_else(|| d["delayType"].as_str())
                    .map(str::to_string);
                found.push((Some(addr), EventKind::Deferred { diagnostic }, d));
            }
        }
        "Open" => {
            let o = &event["open"];
            let user_agent = o["userAgent"].as_str().map(str::to_string);
            found.push((sole_recipient(mail), EventKind::Opened { user_agent }, o));
        }
        "Click" => {
            let c = &event["click"];
            let url = c["link"]
                .as_str()
                .ok_or_else(|| WebhookError::Malformed("SES click event has no link".into()))?
                .to_string();
            let user_agent = c["userAgent"].as_str().map(str::to_string);
            found.push((
                sole_recipient(mail),
                EventKind::Clicked { url, user_agent },
                c,
            ));
        }
        "Subscription" => {
            let s = &event["subscription"];
            if is_opt_out(s) {
                found.push((sole_recipient(mail), EventKind::Unsubscribed, s));
            }
        }
        // SES accepted the message, found a virus in it and never delivered it to anyone. It
        // says nothing against the addresses, so not hard; a soft bounce records that the
        // message failed without barring its recipients.
        "Reject" => {
            let r = &event["reject"];
            let diagnostic = Some(format!(
                "rejected by SES: {}",
                r["reason"].as_str().unwrap_or("no reason given")
            ));
            for (addr, _) in addresses(&mail["destination"], "mail.destination")? {
                let kind = EventKind::Bounced {
                    bounce_type: BounceType::Soft,
                    diagnostic: diagnostic.clone(),
                };
                found.push((Some(addr), kind, r));
            }
        }
        // Send (accepted: our send already recorded that), Rendering Failure (templates,
        // which we do not use), AmazonSnsSubscriptionSucceeded (setup notice), Received and
        // anything newer: no CourierX meaning.
        _ => {}
    }
    if found.is_empty() {
        return Ok(Vec::new());
    }
    let message_id = mail["messageId"]
        .as_str()
        .filter(|id| !id.is_empty())
        .ok_or_else(|| WebhookError::Malformed("SES event has no mail.messageId".into()))?;
    Ok(found
        .into_iter()
        .map(|(addr, kind, detail)| ProviderEvent {
            event_id: match addr {
                Some(a) => format!("{sns_id}:{a}"),
                None => sns_id.to_string(),
            },
            provider_message_id: message_id.to_string(),
            recipient: addr.and_then(recipient),
            kind,
            occurred_at: detail["timestamp"]
                .as_str()
                .and_then(timestamp)
                .unwrap_or(sns_at),
            raw: event.clone(),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy(extra: &[&str]) -> SnsUrlPolicy {
        SnsUrlPolicy {
            extra_prefixes: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn sns_hosts_are_allowed() {
        let p = policy(&[]);
        for ok in [
            "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem",
            "https://sns.us-gov-west-1.amazonaws.com/x.pem",
            "https://sns.cn-north-1.amazonaws.com.cn/x.pem",
            "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&Token=abc",
        ] {
            assert_eq!(
                url_allowed(&p, ok).map(|u| u.to_string()),
                Some(ok.to_string()),
                "{ok}"
            );
        }
    }

    #[test]
    fn lookalike_and_tricked_urls_are_refused() {
        let p = policy(&[]);
        for bad in [
            "https://evil.example/cert.pem",
            "http://sns.us-east-1.amazonaws.com/x.pem",
            "http://sns.us-east-1.amazonaws.com.evil.com/x.pem",
            "https://sns.us-east-1.amazonaws.com.evil.com/x.pem",
            "https://sns.evil.com.us-east-1.amazonaws.com/x.pem",
            "https://sns.amazonaws.com/x.pem",
            "https://sqs.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com@evil.example/x.pem",
            "https://user@sns.us-east-1.amazonaws.com/x.pem",
            "https://sns.us-east-1.amazonaws.com:8443/x.pem",
            "https://sns.US-EAST-1.amazonaws.com.evil/x.pem",
            "https://sns.us-east-1.amazonaws.com/x.pem#frag",
            "not a url",
            "",
        ] {
            assert!(url_allowed(&p, bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn extra_prefixes_match_as_plain_prefixes() {
        let p = policy(&["http://127.0.0.1:8080/", ""]);
        assert!(url_allowed(&p, "http://127.0.0.1:8080/cert.pem").is_some());
        assert!(url_allowed(&p, "http://127.0.0.1:8081/cert.pem").is_none());
        assert!(url_allowed(&p, "http://127.0.0.2:8080/cert.pem").is_none());
        // An empty prefix must not allow everything.
        assert!(url_allowed(&p, "https://evil.example/cert.pem").is_none());
    }

    #[test]
    fn canonical_string_follows_the_documented_example() {
        let msg = json!({
            "Type": "Notification",
            "MessageId": "4d4dc071-ddbf-465d-bba8-08f81c89da64",
            "Subject": "My subject",
            "Message": "My Test Message",
            "Timestamp": "2019-01-31T04:37:04.321Z",
            "TopicArn": "arn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P",
            "SignatureVersion": "1",
            "UnsubscribeURL": "https://sns.us-east-2.amazonaws.com/?Action=Unsubscribe",
        });
        let Value::Object(mut msg) = msg else {
            unreachable!()
        };
        assert_eq!(
            string_to_sign(&msg).unwrap(),
            "Message\nMy Test Message\nMessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\n\
             Subject\nMy subject\nTimestamp\n2019-01-31T04:37:04.321Z\n\
             TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n\
             Type\nNotification\n"
        );
        msg.remove("Subject");
        assert!(!string_to_sign(&msg).unwrap().contains("Subject"));
        msg.insert("Type".into(), json!("SubscriptionConfirmation"));
        assert!(matches!(
            string_to_sign(&msg),
            Err(WebhookError::Unauthorized(_))
        ));
        msg.insert(
            "SubscribeURL".into(),
            json!("https://sns.us-east-2.amazonaws.com/?a=1"),
        );
        msg.insert("Token".into(), json!("233"));
        assert_eq!(
            string_to_sign(&msg).unwrap(),
            "Message\nMy Test Message\nMessageId\n4d4dc071-ddbf-465d-bba8-08f81c89da64\n\
             SubscribeURL\nhttps://sns.us-east-2.amazonaws.com/?a=1\n\
             Timestamp\n2019-01-31T04:37:04.321Z\nToken\n233\n\
             TopicArn\narn:aws:sns:us-east-2:123456789012:s4-MySNSTopic-1G1WEFCOXTC0P\n\
             Type\nSubscriptionConfirmation\n"
        );
        msg.insert("Type".into(), json!("Surprise"));
        assert!(matches!(
            string_to_sign(&msg),
            Err(WebhookError::Unauthorized(_))
        ));
    }

    #[test]
    fn age_window() {
        let t = timestamp("2012-05-02T00:54:06.655Z").unwrap();
        assert_eq!(t, 1_335_920_046_655);
        assert!(check_age(t + SNS_MAX_AGE_MS, t).is_ok());
        assert!(check_age(t + SNS_MAX_AGE_MS + 1, t).is_err());
        assert!(check_age(t - TIMESTAMP_TOLERANCE_MS, t).is_ok());
        assert!(check_age(t - TIMESTAMP_TOLERANCE_MS - 1, t).is_err());
        assert_eq!(timestamp("yesterday"), None);
    }

    #[test]
    fn bounce_types() {
        assert_eq!(bounce_type(Some("Permanent")), BounceType::Hard);
        assert_eq!(bounce_type(Some("Transient")), BounceType::Soft);
        assert_eq!(bounce_type(Some("Undetermined")), BounceType::Soft);
        assert_eq!(bounce_type(None), BounceType::Soft);
    }

    #[test]
    fn opt_outs() {
        let topic = |status: &str| json!([{"topicName": "News", "subscriptionStatus": status}]);
        assert!(is_opt_out(
            &json!({"newTopicPreferences": {"unsubscribeAll": true}})
        ));
        assert!(is_opt_out(&json!({
            "newTopicPreferences": {"unsubscribeAll": false, "topicSubscriptionStatus": topic("OptOut")},
            "oldTopicPreferences": {"unsubscribeAll": false, "topicSubscriptionStatus": topic("OptIn")},
        })));
        assert!(!is_opt_out(&json!({
            "newTopicPreferences": {"unsubscribeAll": false, "topicSubscriptionStatus": topic("OptOut")},
            "oldTopicPreferences": {"unsubscribeAll": true, "topicSubscriptionStatus": topic("OptOut")},
        })));
        assert!(!is_opt_out(&json!({
            "newTopicPreferences": {"unsubscribeAll": false, "topicSubscriptionStatus": topic("OptIn")},
        })));
    }

    #[test]
    fn events_without_meaning_are_skipped_and_unreadable_ones_refused() {
        for kind in [
            "Send",
            "Rendering Failure",
            "AmazonSnsSubscriptionSucceeded",
            "Received",
        ] {
            let e = json!({"eventType": kind, "mail": {"messageId": "m"}});
            assert!(ses_events(&e, "sns", 0).unwrap().is_empty(), "{kind}");
        }
        let no_type = json!({"mail": {"messageId": "m"}});
        assert!(matches!(
            ses_events(&no_type, "sns", 0),
            Err(WebhookError::Malformed(_))
        ));
        let no_list = json!({"eventType": "Delivery", "mail": {"messageId": "m"}, "delivery": {}});
        assert!(matches!(
            ses_events(&no_list, "sns", 0),
            Err(WebhookError::Malformed(_))
        ));
        let no_id = json!({"eventType": "Delivery", "mail": {},
                           "delivery": {"recipients": ["a@example.com"]}});
        assert!(matches!(
            ses_events(&no_id, "sns", 0),
            Err(WebhookError::Malformed(_))
        ));
    }

    #[test]
    fn unreadable_config_is_not_configured() {
        assert!(allowed_topics(&json!({})).unwrap().is_empty());
        assert_eq!(
            allowed_topics(&json!({"sns_topic_arns": ["arn:aws:sns:us-east-1:1:t"]})).unwrap(),
            ["arn:aws:sns:us-east-1:1:t"]
        );
        for bad in [
            json!(null),
            json!({"sns_topic_arns": "x"}),
            json!({"sns_topic_arns": [1]}),
        ] {
            assert!(matches!(
                allowed_topics(&bad),
                Err(WebhookError::NotConfigured(_))
            ));
        }
    }
}
