//! Resend webhooks (Svix signatures): Resend's documented sample payloads signed with a
//! secret generated here, normalised field by field; and every way the signature check
//! refuses a call. Signatures are computed with the RustCrypto `hmac` crate so the check is
//! tested against an independent implementation.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use courierx_domain::EmailAddress;
use courierx_providers::webhooks::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, SnsUrlPolicy, WebhookContext,
    WebhookError, WebhookOutcome,
};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};
use sha2::Sha256;

/// 2024-11-22T23:41:20Z, a few seconds after the samples' `created_at`.
const NOW_SECS: i64 = 1_732_318_880;
const MSG_ID: &str = "msg_2pQwYyU3oX7aJ1Bz9hNq4kLmC8d";

struct Secret {
    whsec: String,
    key: Vec<u8>,
}

fn secret() -> Secret {
    let mut key = vec![0u8; 32];
    aws_lc_rs::rand::fill(&mut key).unwrap();
    Secret {
        whsec: format!("whsec_{}", STANDARD.encode(&key)),
        key,
    }
}

fn config(s: &Secret) -> Value {
    let kind = courierx_providers::kind("resend").unwrap();
    (kind.validate)(&json!({"api_key": "re_123456789", "webhook_signing_key": s.whsec})).unwrap()
}

fn sign(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

fn headers(id: Option<&str>, ts: Option<i64>, sig: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    if let Some(id) = id {
        h.insert("svix-id", HeaderValue::from_str(id).unwrap());
    }
    if let Some(ts) = ts {
        h.insert(
            "svix-timestamp",
            HeaderValue::from_str(&ts.to_string()).unwrap(),
        );
    }
    if let Some(sig) = sig {
        h.insert("svix-signature", HeaderValue::from_str(sig).unwrap());
    }
    h
}

async fn call(
    config: &Value,
    headers: HeaderMap,
    body: &[u8],
) -> Result<WebhookOutcome, WebhookError> {
    let kind = courierx_providers::kind("resend").unwrap();
    let parse = kind.webhook.expect("resend has a webhook");
    let ctx = WebhookContext::new(reqwest::Client::new(), SnsUrlPolicy::default());
    let req = InboundWebhook {
        headers: &headers,
        body,
        now: NOW_SECS * 1000,
    };
    parse(config, &req, &ctx).await
}

/// Signs `event` properly and returns the normalised events.
async fn events(event: &Value) -> Vec<ProviderEvent> {
    let s = secret();
    let body = event.to_string();
    let sig = sign(&s.key, MSG_ID, NOW_SECS, body.as_bytes());
    let h = headers(Some(MSG_ID), Some(NOW_SECS), Some(&sig));
    match call(&config(&s), h, body.as_bytes()).await.unwrap() {
        WebhookOutcome::Events(e) => e,
        other => panic!("expected events, got {other:?}"),
    }
}

async fn one(event: &Value) -> ProviderEvent {
    let mut e = events(event).await;
    assert_eq!(e.len(), 1, "{e:?}");
    e.remove(0)
}

fn addr(s: &str) -> Option<EmailAddress> {
    Some(EmailAddress::parse(s).unwrap())
}

/// Resend's documented payload for `type`, with `extra` merged into `data`.
fn sample(kind: &str, created_at: &str, extra: Value) -> Value {
    let mut v = json!({
      "type": kind,
      "created_at": created_at,
      "data": {
        "broadcast_id": "8b146471-e88e-4322-86af-016cd36fd216",
        "created_at": "2024-11-22T23:41:11.894719+00:00",
        "email_id": "56761188-7520-42d8-8898-ff6fc54ce618",
        "from": "Acme <onboarding@resend.dev>",
        "to": ["delivered@resend.dev"],
        "subject": "Sending this example",
        "template_id": "43f68331-0622-4e15-8202-246a0388854b",
        "tags": {
          "category": "confirm_email"
        }
      }
    });
    for (k, x) in extra.as_object().unwrap() {
        v["data"][k] = x.clone();
    }
    v
}

fn bounced_sample() -> Value {
    sample(
        "email.bounced",
        "2024-11-22T23:41:12.126Z",
        json!({
          "bounce": {
            "message": "The recipient's email address is on the suppression list because it has a recent history of producing hard bounces.",
            "subType": "Suppressed",
            "type": "Permanent"
          }
        }),
    )
}

/// 2024-11-22T23:41:12.126Z
const CREATED: i64 = 1_732_318_872_126;

#[tokio::test]
async fn bounced_sample_is_a_hard_bounce() {
    let event = bounced_sample();
    let e = one(&event).await;
    assert_eq!(e.event_id, MSG_ID);
    assert_eq!(
        e.provider_message_id,
        "56761188-7520-42d8-8898-ff6fc54ce618"
    );
    assert_eq!(e.recipient, addr("delivered@resend.dev"));
    assert_eq!(
        e.kind,
        EventKind::Bounced {
            bounce_type: BounceType::Hard,
            diagnostic: Some("The recipient's email address is on the suppression list because it has a recent history of producing hard bounces.".into()),
        }
    );
    assert_eq!(e.occurred_at, CREATED);
    assert_eq!(e.raw, event);
}

#[tokio::test]
async fn transient_bounce_is_soft_and_prefers_the_smtp_diagnostic() {
    let mut event = bounced_sample();
    event["data"]["bounce"] = json!({
        "diagnosticCode": ["smtp; 452 4.2.2 The email account that you tried to reach is over quota"],
        "message": "The recipient's mailbox is full.",
        "subType": "MailboxFull",
        "type": "Transient"
    });
    assert_eq!(
        one(&event).await.kind,
        EventKind::Bounced {
            bounce_type: BounceType::Soft,
            diagnostic: Some(
                "smtp; 452 4.2.2 The email account that you tried to reach is over quota".into()
            ),
        }
    );
    event["data"]["bounce"]["type"] = "Undetermined".into();
    assert!(matches!(
        one(&event).await.kind,
        EventKind::Bounced {
            bounce_type: BounceType::Soft,
            ..
        }
    ));
}

#[tokio::test]
async fn clicked_sample_carries_link_and_user_agent() {
    let event = sample(
        "email.clicked",
        "2024-11-22T23:41:12.126Z",
        json!({
          "click": {
            "ipAddress": "122.115.53.11",
            "link": "https://resend.com",
            "timestamp": "2024-11-24T05:00:57.163Z",
            "userAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.1 Safari/605.1.15"
          }
        }),
    );
    let e = one(&event).await;
    assert_eq!(e.event_id, MSG_ID);
    assert_eq!(
        e.provider_message_id,
        "56761188-7520-42d8-8898-ff6fc54ce618"
    );
    assert_eq!(e.recipient, addr("delivered@resend.dev"));
    assert_eq!(
        e.kind,
        EventKind::Clicked {
            url: "https://resend.com".into(),
            user_agent: Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.1 Safari/605.1.15".into()),
        }
    );
    // The click's own time, 2024-11-24T05:00:57.163Z.
    assert_eq!(e.occurred_at, 1_732_424_457_163);
    assert_eq!(e.raw, event);
}

#[tokio::test]
async fn other_documented_samples() {
    let cases = [
        ("email.delivered", json!({}), EventKind::Delivered),
        (
            "email.opened",
            json!({}),
            EventKind::Opened { user_agent: None },
        ),
        (
            "email.complained",
            json!({}),
            EventKind::Complained {
                feedback_type: None,
            },
        ),
        (
            "email.delivery_delayed",
            json!({}),
            EventKind::Deferred { diagnostic: None },
        ),
        (
            "email.suppressed",
            json!({
              "suppressed": {
                "message": "Resend has suppressed sending to this address because it is on the account-level suppression list. This does not count toward your bounce rate metric",
                "type": "OnAccountSuppressionList"
              }
            }),
            EventKind::Bounced {
                bounce_type: BounceType::Hard,
                diagnostic: Some("Resend has suppressed sending to this address because it is on the account-level suppression list. This does not count toward your bounce rate metric".into()),
            },
        ),
    ];
    for (kind, extra, expected) in cases {
        let event = sample(kind, "2024-02-22T23:41:12.126Z", extra);
        let e = one(&event).await;
        assert_eq!(e.event_id, MSG_ID, "{kind}");
        assert_eq!(
            e.provider_message_id, "56761188-7520-42d8-8898-ff6fc54ce618",
            "{kind}"
        );
        assert_eq!(e.recipient, addr("delivered@resend.dev"), "{kind}");
        assert_eq!(e.kind, expected, "{kind}");
        // 2024-02-22T23:41:12.126Z
        assert_eq!(e.occurred_at, 1_708_645_272_126, "{kind}");
        assert_eq!(e.raw, event, "{kind}");
    }
}

#[tokio::test]
async fn sent_failed_and_scheduled_are_skipped() {
    let failed = sample(
        "email.failed",
        "2024-11-22T23:41:12.126Z",
        json!({"failed": {"reason": "reached_daily_quota"}}),
    );
    assert!(events(&failed).await.is_empty());
    for kind in ["email.sent", "email.scheduled"] {
        let event = sample(kind, "2024-02-22T23:41:12.126Z", json!({}));
        assert!(events(&event).await.is_empty(), "{kind}");
    }
}

#[tokio::test]
async fn several_recipients_give_one_event_each() {
    let mut event = sample("email.delivered", "2024-02-22T23:41:12.126Z", json!({}));
    event["data"]["to"] = json!(["delivered@resend.dev", "Bob <bob@example.com>"]);
    let e = events(&event).await;
    assert_eq!(e.len(), 2);
    assert_eq!(e[0].event_id, format!("{MSG_ID}:delivered@resend.dev"));
    assert_eq!(e[0].recipient, addr("delivered@resend.dev"));
    assert_eq!(e[1].event_id, format!("{MSG_ID}:Bob <bob@example.com>"));
    assert_eq!(e[1].recipient, addr("bob@example.com"));
    for x in &e {
        assert_eq!(
            x.provider_message_id,
            "56761188-7520-42d8-8898-ff6fc54ce618"
        );
        assert_eq!(x.kind, EventKind::Delivered);
        assert_eq!(x.raw, event);
    }
}

#[tokio::test]
async fn any_matching_entry_of_the_signature_list_passes() {
    let s = secret();
    let other = secret();
    let body = bounced_sample().to_string();
    let good = sign(&s.key, MSG_ID, NOW_SECS, body.as_bytes());
    let stale_key = sign(&other.key, MSG_ID, NOW_SECS, body.as_bytes());
    // Svix lists several signatures while a secret rotates; other versions are ignored.
    let list = format!("v1a,c29tZXRoaW5nIGVsc2U= {stale_key} {good}");
    let h = headers(Some(MSG_ID), Some(NOW_SECS), Some(&list));
    match call(&config(&s), h, body.as_bytes()).await.unwrap() {
        WebhookOutcome::Events(e) => assert_eq!(e.len(), 1),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn bad_signatures_are_refused() {
    let s = secret();
    let cfg = config(&s);
    let body = bounced_sample().to_string();
    let good = sign(&s.key, MSG_ID, NOW_SECS, body.as_bytes());
    let cases = [
        (
            "wrong key",
            sign(&secret().key, MSG_ID, NOW_SECS, body.as_bytes()),
        ),
        (
            "other message id",
            sign(&s.key, "msg_other", NOW_SECS, body.as_bytes()),
        ),
        (
            "other timestamp",
            sign(&s.key, MSG_ID, NOW_SECS - 1, body.as_bytes()),
        ),
        ("wrong version", good.replacen("v1,", "v2,", 1)),
        ("not base64", "v1,@@@".to_string()),
        ("empty", String::new()),
    ];
    for (what, sig) in cases {
        let h = headers(Some(MSG_ID), Some(NOW_SECS), Some(&sig));
        let r = call(&cfg, h, body.as_bytes()).await;
        assert!(
            matches!(r, Err(WebhookError::Unauthorized(_))),
            "{what}: {r:?}"
        );
    }
    // A tampered body no longer matches its signature.
    let tampered = body.replace("Permanent", "Transient");
    let h = headers(Some(MSG_ID), Some(NOW_SECS), Some(&good));
    let r = call(&cfg, h, tampered.as_bytes()).await;
    assert!(matches!(r, Err(WebhookError::Unauthorized(_))), "{r:?}");
}

#[tokio::test]
async fn missing_headers_are_refused() {
    let s = secret();
    let cfg = config(&s);
    let body = bounced_sample().to_string();
    let sig = sign(&s.key, MSG_ID, NOW_SECS, body.as_bytes());
    for (what, h) in [
        ("svix-id", headers(None, Some(NOW_SECS), Some(&sig))),
        ("svix-timestamp", headers(Some(MSG_ID), None, Some(&sig))),
        (
            "svix-signature",
            headers(Some(MSG_ID), Some(NOW_SECS), None),
        ),
    ] {
        let r = call(&cfg, h, body.as_bytes()).await;
        match r {
            Err(WebhookError::Unauthorized(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("{what}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn stale_or_future_timestamps_are_replays() {
    let s = secret();
    let cfg = config(&s);
    let body = bounced_sample().to_string();
    // Correctly signed, but six minutes off either way (tolerance is five).
    for ts in [NOW_SECS - 360, NOW_SECS + 360] {
        let sig = sign(&s.key, MSG_ID, ts, body.as_bytes());
        let r = call(
            &cfg,
            headers(Some(MSG_ID), Some(ts), Some(&sig)),
            body.as_bytes(),
        )
        .await;
        assert!(
            matches!(r, Err(WebhookError::Unauthorized(_))),
            "{ts}: {r:?}"
        );
    }
    // Four minutes old is still inside the window.
    let ts = NOW_SECS - 240;
    let sig = sign(&s.key, MSG_ID, ts, body.as_bytes());
    assert!(
        call(
            &cfg,
            headers(Some(MSG_ID), Some(ts), Some(&sig)),
            body.as_bytes()
        )
        .await
        .is_ok()
    );
    // Milliseconds instead of seconds are not a valid Svix timestamp.
    let ms = NOW_SECS * 1000;
    let sig = sign(&s.key, MSG_ID, ms, body.as_bytes());
    let r = call(
        &cfg,
        headers(Some(MSG_ID), Some(ms), Some(&sig)),
        body.as_bytes(),
    )
    .await;
    assert!(matches!(r, Err(WebhookError::Unauthorized(_))), "{r:?}");
}

#[tokio::test]
async fn signature_is_checked_before_the_body_is_read() {
    let s = secret();
    let cfg = config(&s);
    let body = b"{not json";
    let r = call(
        &cfg,
        headers(Some(MSG_ID), Some(NOW_SECS), Some("v1,AAAA")),
        body,
    )
    .await;
    assert!(matches!(r, Err(WebhookError::Unauthorized(_))), "{r:?}");
    let sig = sign(&s.key, MSG_ID, NOW_SECS, body);
    let r = call(
        &cfg,
        headers(Some(MSG_ID), Some(NOW_SECS), Some(&sig)),
        body,
    )
    .await;
    assert!(matches!(r, Err(WebhookError::Malformed(_))), "{r:?}");
}

#[tokio::test]
async fn without_a_signing_key_calls_are_refused() {
    let kind = courierx_providers::kind("resend").unwrap();
    let cfg = (kind.validate)(&json!({"api_key": "re_123456789"})).unwrap();
    let s = secret();
    let body = bounced_sample().to_string();
    let sig = sign(&s.key, MSG_ID, NOW_SECS, body.as_bytes());
    let r = call(
        &cfg,
        headers(Some(MSG_ID), Some(NOW_SECS), Some(&sig)),
        body.as_bytes(),
    )
    .await;
    assert!(matches!(r, Err(WebhookError::NotConfigured(_))), "{r:?}");
}

#[test]
fn the_signing_key_is_checked_when_saved() {
    let kind = courierx_providers::kind("resend").unwrap();
    let err = |key: &str| -> Vec<(String, String)> {
        (kind.validate)(&json!({"api_key": "re_123456789", "webhook_signing_key": key}))
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| (e.field, e.message))
            .collect()
    };
    let short = format!("whsec_{}", STANDARD.encode([1u8; 10]));
    for (key, says) in [
        ("sk_live_abc", "starting with whsec_"),
        ("whsec_***", "base64"),
        (short.as_str(), "at least 24 bytes"),
    ] {
        let e = err(key);
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!(e[0].0, "config.webhook_signing_key");
        assert!(e[0].1.contains(says), "{key}: {}", e[0].1);
    }
    let s = secret();
    let ok = (kind.validate)(
        &json!({"api_key": "re_123456789", "webhook_signing_key": format!(" {} ", s.whsec)}),
    )
    .unwrap();
    assert_eq!(ok["webhook_signing_key"], s.whsec.as_str());
}
