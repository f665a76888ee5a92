//! Postmark webhooks: Basic-auth and custom-header authentication, and the documented sample
//! record of every RecordType normalised field by field. Postmark sends no signature or
//! timestamp, so there is no replay window to test; retries dedupe on the stable event id.

use base64::Engine;
use courierx_domain::EmailAddress;
use courierx_providers::webhooks::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, SnsUrlPolicy, WebhookContext,
    WebhookError, WebhookOutcome,
};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

const NOW: i64 = 1_767_225_600_000;
const USER: &str = "postmark-hook";
const HEADER: &str = "X-CourierX-Webhook";

fn random_secret() -> String {
    let mut b = [0u8; 24];
    aws_lc_rs::rand::fill(&mut b).unwrap();
    hex::encode(b)
}

/// The config as stored: passed through the provider's own `validate`.
fn config(extra: Value) -> Value {
    let mut raw = json!({"server_token": "pm-server-token-1f2e3d4c"});
    for (k, v) in extra.as_object().unwrap() {
        raw[k] = v.clone();
    }
    let kind = courierx_providers::kind("postmark").unwrap();
    (kind.validate)(&raw).unwrap()
}

fn basic(user: &str, pass: &str) -> HeaderValue {
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    HeaderValue::from_str(&format!("Basic {token}")).unwrap()
}

async fn call(
    config: &Value,
    headers: HeaderMap,
    body: &[u8],
) -> Result<WebhookOutcome, WebhookError> {
    let kind = courierx_providers::kind("postmark").unwrap();
    let parse = kind.webhook.expect("postmark has a webhook");
    let ctx = WebhookContext::new(reqwest::Client::new(), SnsUrlPolicy::default());
    let req = InboundWebhook {
        headers: &headers,
        body,
        now: NOW,
    };
    parse(config, &req, &ctx).await
}

/// A Basic-auth config and the matching request headers.
fn basic_setup() -> (Value, HeaderMap) {
    let pass = random_secret();
    let cfg = config(json!({"webhook_username": USER, "webhook_password": pass}));
    let mut h = HeaderMap::new();
    h.insert("authorization", basic(USER, &pass));
    h.insert("content-type", HeaderValue::from_static("application/json"));
    (cfg, h)
}

async fn events(record: &Value) -> Vec<ProviderEvent> {
    let (cfg, h) = basic_setup();
    match call(&cfg, h, record.to_string().as_bytes()).await.unwrap() {
        WebhookOutcome::Events(e) => e,
        other => panic!("expected events, got {other:?}"),
    }
}

async fn one(record: &Value) -> ProviderEvent {
    let mut e = events(record).await;
    assert_eq!(e.len(), 1, "{e:?}");
    e.remove(0)
}

fn addr(s: &str) -> Option<EmailAddress> {
    Some(EmailAddress::parse(s).unwrap())
}

fn derived(parts: &[&str]) -> String {
    courierx_providers::webhooks::derived_event_id(parts)
}

// The samples below are Postmark's documented webhook examples.

fn bounce_sample() -> Value {
    json!({
      "RecordType": "Bounce",
      "MessageStream": "outbound",
      "ID": 4323372036854775807u64,
      "Type": "HardBounce",
      "TypeCode": 1,
      "Name": "Hard bounce",
      "Tag": "Test",
      "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
      "Metadata" : {
        "a_key" : "a_value",
        "b_key": "b_value"
       },
      "ServerID": 23,
      "Description": "The server was unable to deliver your message (ex: unknown user, mailbox not found).",
      "Details": "Test bounce details",
      "Email": "john@example.com",
      "From": "sender@example.com",
      "BouncedAt": "2019-11-05T16:33:54.9070259Z",
      "DumpAvailable": true,
      "Inactive": true,
      "CanActivate": true,
      "Subject": "Test subject",
      "Content": "<Full dump of bounce>"
    })
}

fn click_sample() -> Value {
    json!({
      "RecordType": "Click",
      "MessageStream": "outbound",
      "ClickLocation": "HTML",
      "Client": {
        "Name": "Chrome 35.0.1916.153",
        "Company": "Google",
        "Family": "Chrome"
      },
      "OS": {
        "Name": "OS X 10.7 Lion",
        "Company": "Apple Computer, Inc.",
        "Family": "OS X 10"
      },
      "Platform": "Desktop",
      "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/35.0.1916.153 Safari/537.36",
      "OriginalLink": "https://example.com",
      "Geo": {
        "CountryISOCode": "RS",
        "Country": "Serbia",
        "RegionISOCode": "VO",
        "Region": "Autonomna Pokrajina Vojvodina",
        "City": "Novi Sad",
        "Zip": "21000",
        "Coords": "45.2517,19.8369",
        "IP": "8.8.8.8"
      },
      "MessageID": "00000000-0000-0000-0000-000000000000",
      "Metadata" : {
        "a_key" : "a_value",
        "b_key": "b_value"
       },
      "ReceivedAt": "2017-10-25T15:21:11.9065619Z",
      "Tag": "welcome-email",
      "Recipient": "john@example.com"
    })
}

#[tokio::test]
async fn hard_bounce_sample_uses_postmarks_bounce_id() {
    let record = bounce_sample();
    let e = one(&record).await;
    assert_eq!(e.event_id, "4323372036854775807");
    assert_eq!(
        e.provider_message_id,
        "883953f4-6105-42a2-a16a-77a8eac79483"
    );
    assert_eq!(e.recipient, addr("john@example.com"));
    assert_eq!(
        e.kind,
        EventKind::Bounced {
            bounce_type: BounceType::Hard,
            diagnostic: Some("Test bounce details".into()),
        }
    );
    assert_eq!(e.occurred_at, 1_572_971_634_907);
    assert_eq!(e.raw, record);
}

#[tokio::test]
async fn soft_bounce_types_are_soft_and_notices_are_skipped() {
    for t in [
        "SoftBounce",
        "Transient",
        "DnsError",
        "Blocked",
        "DMARCPolicy",
    ] {
        let mut record = bounce_sample();
        record["Type"] = t.into();
        record["Details"] = "smtp;452 4.2.2 mailbox full".into();
        let e = one(&record).await;
        assert_eq!(
            e.kind,
            EventKind::Bounced {
                bounce_type: BounceType::Soft,
                diagnostic: Some("smtp;452 4.2.2 mailbox full".into()),
            },
            "{t}"
        );
    }
    for t in ["ManuallyDeactivated", "BadEmailAddress"] {
        let mut record = bounce_sample();
        record["Type"] = t.into();
        assert!(
            matches!(
                one(&record).await.kind,
                EventKind::Bounced {
                    bounce_type: BounceType::Hard,
                    ..
                }
            ),
            "{t}"
        );
    }
    // Without Details the description stands in as the diagnostic.
    let mut record = bounce_sample();
    record.as_object_mut().unwrap().remove("Details");
    assert_eq!(
        one(&record).await.kind,
        EventKind::Bounced {
            bounce_type: BounceType::Hard,
            diagnostic: Some(
                "The server was unable to deliver your message (ex: unknown user, mailbox not found)."
                    .into()
            ),
        }
    );
    for t in ["AutoResponder", "ChallengeVerification", "AddressChange"] {
        let mut record = bounce_sample();
        record["Type"] = t.into();
        assert!(events(&record).await.is_empty(), "{t}");
    }
}

#[tokio::test]
async fn delivery_sample() {
    let record = json!({
      "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
      "Recipient": "john@example.com",
      "DeliveredAt": "2019-11-05T16:33:54.9070259Z",
      "Details": "Test delivery webhook details",
      "Tag": "welcome-email",
      "ServerID": 23,
      "Metadata" : {
        "a_key" : "a_value",
        "b_key": "b_value"
       },
      "RecordType": "Delivery",
      "MessageStream":"outbound"
    });
    let e = one(&record).await;
    assert_eq!(
        e.event_id,
        derived(&[
            "Delivery",
            "883953f4-6105-42a2-a16a-77a8eac79483",
            "john@example.com",
            "2019-11-05T16:33:54.9070259Z",
            ""
        ])
    );
    assert_eq!(
        e.provider_message_id,
        "883953f4-6105-42a2-a16a-77a8eac79483"
    );
    assert_eq!(e.recipient, addr("john@example.com"));
    assert_eq!(e.kind, EventKind::Delivered);
    assert_eq!(e.occurred_at, 1_572_971_634_907);
    assert_eq!(e.raw, record);
}

#[tokio::test]
async fn spam_complaint_sample() {
    let record = json!({
      "RecordType": "SpamComplaint",
      "MessageStream": "outbound",
      "ID": 42,
      "Type": "SpamComplaint",
      "TypeCode": 100001,
      "Name": "Spam complaint",
      "Tag": "Test",
      "MessageID": "00000000-0000-0000-0000-000000000000",
      "Metadata" : {
        "a_key" : "a_value",
        "b_key": "b_value"
       },
      "ServerID": 1234,
      "Description": "",
      "Details": "Test spam complaint details",
      "Email": "john@example.com",
      "From": "sender@example.com",
      "BouncedAt": "2019-11-05T16:33:54.9070259Z",
      "DumpAvailable": true,
      "Inactive": true,
      "CanActivate": false,
      "Subject": "Test subject",
      "Content": "<Abuse report dump>"
    });
    let e = one(&record).await;
    assert_eq!(e.event_id, "42");
    assert_eq!(
        e.provider_message_id,
        "00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(e.recipient, addr("john@example.com"));
    assert_eq!(
        e.kind,
        EventKind::Complained {
            feedback_type: None
        }
    );
    assert_eq!(e.occurred_at, 1_572_971_634_907);
    assert_eq!(e.raw, record);
}

#[tokio::test]
async fn open_sample() {
    let record = json!({
      "RecordType": "Open",
      "MessageStream": "outbound",
      "FirstOpen": true,
      "Client": {
        "Name": "Chrome 35.0.1916.153",
        "Company": "Google",
        "Family": "Chrome"
      },
      "OS": {
        "Name": "OS X 10.7 Lion",
        "Company": "Apple Computer, Inc.",
        "Family": "OS X 10"
      },
      "Platform": "WebMail",
      "UserAgent": "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/35.0.1916.153 Safari/537.36",
      "Geo": {
        "CountryISOCode": "RS",
        "Country": "Serbia",
        "RegionISOCode": "VO",
        "Region": "Autonomna Pokrajina Vojvodina",
        "City": "Novi Sad",
        "Zip": "21000",
        "Coords": "45.2517,19.8369",
        "IP": "188.2.95.4"
      },
      "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
      "Metadata" : {
        "a_key" : "a_value",
        "b_key": "b_value"
       },
      "ReceivedAt": "2019-11-05T16:33:54.9070259Z",
      "Tag": "welcome-email",
      "Recipient": "john@example.com"
    });
    let e = one(&record).await;
    assert_eq!(
        e.event_id,
        derived(&[
            "Open",
            "883953f4-6105-42a2-a16a-77a8eac79483",
            "john@example.com",
            "2019-11-05T16:33:54.9070259Z",
            ""
        ])
    );
    assert_eq!(
        e.provider_message_id,
        "883953f4-6105-42a2-a16a-77a8eac79483"
    );
    assert_eq!(e.recipient, addr("john@example.com"));
    assert_eq!(
        e.kind,
        EventKind::Opened {
            user_agent: Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/35.0.1916.153 Safari/537.36".into())
        }
    );
    assert_eq!(e.occurred_at, 1_572_971_634_907);
    assert_eq!(e.raw, record);
}

#[tokio::test]
async fn click_sample_and_its_id_covers_the_link() {
    let record = click_sample();
    let e = one(&record).await;
    assert_eq!(
        e.event_id,
        derived(&[
            "Click",
            "00000000-0000-0000-0000-000000000000",
            "john@example.com",
            "2017-10-25T15:21:11.9065619Z",
            "https://example.com"
        ])
    );
    assert_eq!(
        e.provider_message_id,
        "00000000-0000-0000-0000-000000000000"
    );
    assert_eq!(e.recipient, addr("john@example.com"));
    assert_eq!(
        e.kind,
        EventKind::Clicked {
            url: "https://example.com".into(),
            user_agent: Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_7_5) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/35.0.1916.153 Safari/537.36".into()),
        }
    );
    assert_eq!(e.occurred_at, 1_508_944_871_906);
    assert_eq!(e.raw, record);

    // A retry of the same record dedupes; a click on another link at the same instant does not.
    assert_eq!(one(&record).await.event_id, e.event_id);
    let mut other = record.clone();
    other["OriginalLink"] = "https://example.com/pricing".into();
    assert_ne!(one(&other).await.event_id, e.event_id);
}

#[tokio::test]
async fn subscription_change_is_an_unsubscribe_only_for_manual_suppression() {
    // Postmark's sample is a HardBounce suppression: the Bounce record already carried it.
    let sample = json!({
      "RecordType":"SubscriptionChange",
      "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
      "ServerID":123456,
      "MessageStream": "outbound",
      "ChangedAt": "2020-02-01T10:53:34.416071Z",
      "Recipient": "bounced-address@wildbit.com",
      "Origin": "Recipient",
      "SuppressSending": true,
      "SuppressionReason": "HardBounce",
      "Tag": "my-tag",
      "Metadata": {
        "example": "value",
        "example_2": "value"
      }
    });
    assert!(events(&sample).await.is_empty());

    // A recipient unsubscribing is suppressed with reason ManualSuppression.
    let mut unsub = sample.clone();
    unsub["SuppressionReason"] = "ManualSuppression".into();
    let e = one(&unsub).await;
    assert_eq!(
        e.event_id,
        derived(&[
            "SubscriptionChange",
            "883953f4-6105-42a2-a16a-77a8eac79483",
            "bounced-address@wildbit.com",
            "2020-02-01T10:53:34.416071Z",
            ""
        ])
    );
    assert_eq!(
        e.provider_message_id,
        "883953f4-6105-42a2-a16a-77a8eac79483"
    );
    assert_eq!(e.recipient, addr("bounced-address@wildbit.com"));
    assert_eq!(e.kind, EventKind::Unsubscribed);
    assert_eq!(e.occurred_at, 1_580_554_414_416);
    assert_eq!(e.raw, unsub);

    // A reactivation has no CourierX meaning.
    let mut reactivated = sample.clone();
    reactivated["SuppressSending"] = false.into();
    reactivated["SuppressionReason"] = Value::Null;
    reactivated["MessageID"] = Value::Null;
    assert!(events(&reactivated).await.is_empty());
}

#[tokio::test]
async fn basic_auth_must_match() {
    let (cfg, _) = basic_setup();
    let body = bounce_sample().to_string();
    let pass = cfg["webhook_password"].as_str().unwrap().to_string();

    let mut wrong_pass = HeaderMap::new();
    wrong_pass.insert("authorization", basic(USER, &random_secret()));
    let mut wrong_user = HeaderMap::new();
    wrong_user.insert("authorization", basic("someone-else", &pass));
    let mut bearer = HeaderMap::new();
    bearer.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {pass}")).unwrap(),
    );
    for (what, h) in [
        ("wrong password", wrong_pass),
        ("wrong username", wrong_user),
        ("not Basic", bearer),
        ("missing", HeaderMap::new()),
    ] {
        let r = call(&cfg, h, body.as_bytes()).await;
        assert!(
            matches!(r, Err(WebhookError::Unauthorized(_))),
            "{what}: {r:?}"
        );
    }

    // Authentication comes before parsing: garbage from a stranger is Unauthorized, garbage
    // with the right credentials is Malformed.
    let r = call(&cfg, HeaderMap::new(), b"not json").await;
    assert!(matches!(r, Err(WebhookError::Unauthorized(_))), "{r:?}");
    let mut ok = HeaderMap::new();
    ok.insert("authorization", basic(USER, &pass));
    let r = call(&cfg, ok, b"not json").await;
    assert!(matches!(r, Err(WebhookError::Malformed(_))), "{r:?}");
}

#[tokio::test]
async fn custom_header_must_match() {
    let secret = random_secret();
    let cfg = config(json!({"webhook_header_name": HEADER, "webhook_header_value": secret}));
    let body = click_sample().to_string();

    // Header names are case-insensitive on the wire.
    let mut ok = HeaderMap::new();
    ok.insert(
        "x-courierx-webhook",
        HeaderValue::from_str(&secret).unwrap(),
    );
    match call(&cfg, ok, body.as_bytes()).await.unwrap() {
        WebhookOutcome::Events(e) => assert_eq!(e.len(), 1),
        other => panic!("{other:?}"),
    }

    let mut wrong = HeaderMap::new();
    wrong.insert(HEADER, HeaderValue::from_str(&random_secret()).unwrap());
    let r = call(&cfg, wrong, body.as_bytes()).await;
    assert!(matches!(r, Err(WebhookError::Unauthorized(_))), "{r:?}");

    // Basic credentials do not stand in for the header.
    let mut other = HeaderMap::new();
    other.insert("authorization", basic(USER, &secret));
    let r = call(&cfg, other, body.as_bytes()).await;
    assert!(matches!(r, Err(WebhookError::Unauthorized(_))), "{r:?}");
}

#[tokio::test]
async fn with_both_methods_configured_both_must_pass() {
    let (pass, secret) = (random_secret(), random_secret());
    let cfg = config(json!({
        "webhook_username": USER, "webhook_password": pass,
        "webhook_header_name": HEADER, "webhook_header_value": secret,
    }));
    let body = bounce_sample().to_string();

    let mut only_basic = HeaderMap::new();
    only_basic.insert("authorization", basic(USER, &pass));
    let r = call(&cfg, only_basic.clone(), body.as_bytes()).await;
    assert!(matches!(r, Err(WebhookError::Unauthorized(_))), "{r:?}");

    let mut both = only_basic;
    both.insert(HEADER, HeaderValue::from_str(&secret).unwrap());
    assert!(call(&cfg, both, body.as_bytes()).await.is_ok());
}

#[tokio::test]
async fn without_webhook_auth_calls_are_refused() {
    let cfg = config(json!({}));
    let mut h = HeaderMap::new();
    h.insert("authorization", basic(USER, "whatever-password-1"));
    let r = call(&cfg, h, bounce_sample().to_string().as_bytes()).await;
    assert!(matches!(r, Err(WebhookError::NotConfigured(_))), "{r:?}");
}

#[test]
fn webhook_settings_are_validated_in_pairs_and_kept_secret() {
    let kind = courierx_providers::kind("postmark").unwrap();
    for f in ["server_token", "webhook_password", "webhook_header_value"] {
        assert!(kind.secret_fields.contains(&f), "{f}");
    }
    let fields = |extra: Value| -> Vec<String> {
        let mut raw = json!({"server_token": "pm-server-token-1f2e3d4c"});
        for (k, v) in extra.as_object().unwrap() {
            raw[k] = v.clone();
        }
        (kind.validate)(&raw)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    };
    let long = "0123456789abcdef0123";
    assert_eq!(
        fields(json!({"webhook_username": USER})),
        ["config.webhook_password"]
    );
    assert_eq!(
        fields(json!({"webhook_password": long})),
        ["config.webhook_username"]
    );
    assert_eq!(
        fields(json!({"webhook_header_value": long})),
        ["config.webhook_header_name"]
    );
    assert_eq!(
        fields(json!({"webhook_header_name": HEADER, "webhook_header_value": "   "})),
        ["config.webhook_header_value"]
    );
    assert_eq!(
        fields(json!({"webhook_username": "a:b", "webhook_password": "short"})),
        ["config.webhook_username", "config.webhook_password"]
    );
    assert_eq!(
        fields(json!({"webhook_header_name": "Bad Header", "webhook_header_value": long})),
        ["config.webhook_header_name"]
    );
    assert_eq!(
        fields(json!({
            "webhook_username": USER, "webhook_password": long,
            "webhook_header_name": "Authorization", "webhook_header_value": long,
        })),
        ["config.webhook_header_name"]
    );

    // Blank settings are dropped; given ones are trimmed and kept.
    let ok = (kind.validate)(&json!({
        "server_token": "pm-server-token-1f2e3d4c",
        "webhook_username": "",
        "webhook_header_name": HEADER,
        "webhook_header_value": format!(" Bearer {long} "),
    }))
    .unwrap();
    assert_eq!(
        ok,
        json!({
            "server_token": "pm-server-token-1f2e3d4c",
            "message_stream": "outbound",
            "base_url": null,
            "timeout_ms": 10000,
            "webhook_header_name": HEADER,
            "webhook_header_value": format!("Bearer {long}"),
        })
    );
}
