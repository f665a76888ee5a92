//! Mailgun JSON webhooks: the sample payloads Mailgun documents (and sends from its "Test
//! webhook" button), signed here the way Mailgun signs them — hex HMAC-SHA256 of timestamp +
//! token under a signing key generated for the test.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use courierx_providers::webhooks::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, SnsUrlPolicy, WebhookContext,
    WebhookError, WebhookOutcome,
};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use sha2::Sha256;

const NOW_SECS: i64 = 1_767_225_600;
const NOW: i64 = NOW_SECS * 1000;
const UA: &str = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.31 (KHTML, like Gecko) Chrome/26.0.1410.43 Safari/537.31";

fn random_hex(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    SystemRandom::new().fill(&mut bytes).unwrap();
    hex::encode(bytes)
}

struct Account {
    key: String,
}

impl Account {
    fn new() -> Self {
        Self {
            key: random_hex(16),
        }
    }

    fn config(&self) -> Value {
        json!({"domain": "mg.acme.test", "api_key": "key-x", "webhook_signing_key": self.key})
    }

    /// `{"signature": …, "event-data": …}` as Mailgun posts it, signed at `ts`.
    fn body(&self, ts: i64, event_data: &Value) -> Vec<u8> {
        let token = random_hex(25);
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(self.key.as_bytes()).unwrap();
        mac.update(format!("{ts}{token}").as_bytes());
        let signature = hex::encode(mac.finalize().into_bytes());
        serde_json::to_vec(&json!({
            "signature": {"timestamp": ts.to_string(), "token": token, "signature": signature},
            "event-data": event_data,
        }))
        .unwrap()
    }
}

async fn call(config: &Value, body: &[u8]) -> Result<WebhookOutcome, WebhookError> {
    let ctx = WebhookContext::new(reqwest::Client::new(), SnsUrlPolicy::default());
    let headers = HeaderMap::new();
    let req = InboundWebhook {
        headers: &headers,
        body,
        now: NOW,
    };
    let parse = courierx_providers::kind("mailgun")
        .unwrap()
        .webhook
        .unwrap();
    parse(config, &req, &ctx).await
}

async fn one_event(account: &Account, event_data: &Value) -> ProviderEvent {
    match call(&account.config(), &account.body(NOW_SECS, event_data))
        .await
        .unwrap()
    {
        WebhookOutcome::SingleUse { events: mut e, .. } if e.len() == 1 => e.remove(0),
        other => panic!("expected one event, got {other:?}"),
    }
}

fn delivered() -> Value {
    json!({
        "id": "CPgfbmQMTCKtHW6uIWtuVe",
        "timestamp": 1521472262.908181,
        "log-level": "info",
        "event": "delivered",
        "delivery-status": {
            "tls": true, "mx-host": "smtp-in.example.com", "code": 250, "description": "",
            "session-seconds": 0.4331989288330078, "utf8": true, "attempt-no": 1,
            "message": "OK", "certificate-verified": true
        },
        "flags": {"is-routed": false, "is-authenticated": true, "is-system-test": false, "is-test-mode": false},
        "envelope": {
            "transport": "smtp", "sender": "bob@mg.acme.test",
            "sending-ip": "209.61.154.250", "targets": "alice@example.com"
        },
        "message": {
            "headers": {
                "to": "Alice <alice@example.com>",
                "message-id": "20130503182626.18666.16540@mg.acme.test",
                "from": "Bob <bob@mg.acme.test>",
                "subject": "Test delivered webhook"
            },
            "attachments": [],
            "size": 111
        },
        "recipient": "alice@example.com",
        "recipient-domain": "example.com",
        "storage": {"url": "https://se.api.mailgun.net/v3/domains/mg.acme.test/messages/message_key", "key": "message_key"},
        "campaigns": [],
        "tags": ["my_tag_1", "my_tag_2"],
        "user-variables": {"my_var_1": "Mailgun Variable #1", "my-var-2": "awesome"}
    })
}

fn permanent_failure() -> Value {
    json!({
        "id": "G9Bn5sl1TC6nu79C8C0bwg",
        "timestamp": 1521233195.375624,
        "log-level": "error",
        "event": "failed",
        "severity": "permanent",
        "reason": "suppress-bounce",
        "delivery-status": {
            "attempt-no": 1, "message": "", "code": 605,
            "description": "Not delivering to previously bounced address", "session-seconds": 0
        },
        "flags": {"is-routed": false, "is-authenticated": true, "is-system-test": false, "is-test-mode": false},
        "envelope": {"sender": "bob@mg.acme.test", "transport": "smtp", "targets": "alice@example.com"},
        "message": {
            "headers": {
                "to": "Alice <alice@example.com>",
                "message-id": "<20130503192659.13651.20287@mg.acme.test>",
                "from": "Bob <bob@mg.acme.test>",
                "subject": "Test permanent_fail webhook"
            },
            "attachments": [],
            "size": 111
        },
        "recipient": "alice@example.com",
        "recipient-domain": "example.com",
        "storage": {"url": "https://se.api.mailgun.net/v3/domains/mg.acme.test/messages/message_key", "key": "message_key"},
        "campaigns": [],
        "tags": ["my_tag_1", "my_tag_2"],
        "user-variables": {"my_var_1": "Mailgun Variable #1", "my-var-2": "awesome"}
    })
}

fn temporary_failure() -> Value {
    json!({
        "id": "Fs7-5t81S2ispqxqDw2U4Q",
        "timestamp": 1521472262.908181,
        "log-level": "warn",
        "event": "failed",
        "reason": "generic",
        "severity": "temporary",
        "delivery-status": {
            "attempt-no": 1, "certificate-verified": true, "code": 452, "description": "",
            "message": "4.2.2 The email account that you tried to reach is over quota. Please direct\n4.2.2 the recipient to\n4.2.2  https://support.example.com/mail/?p=422",
            "mx-host": "smtp-in.example.com", "retry-seconds": 600,
            "session-seconds": 0.1281740665435791, "tls": true, "utf8": true
        },
        "envelope": {"sender": "bob@mg.acme.test", "transport": "smtp", "targets": "alice@example.com", "sending-ip": "209.61.154.250"},
        "message": {
            "attachments": [],
            "headers": {
                "message-id": "20130503182626.18666.16540@mg.acme.test",
                "from": "Bob <bob@mg.acme.test>", "to": "Alice <alice@example.com>",
                "subject": "Test temporary_fail webhook"
            },
            "size": 111
        },
        "recipient": "alice@example.com",
        "recipient-domain": "example.com",
        "campaigns": [],
        "tags": [],
        "user-variables": {}
    })
}

/// The documented opened/clicked samples; `url` is the Events API field of a click.
fn engagement(event: &str) -> Value {
    let mut e = json!({
        "id": "Ase7i2zsRYeDXztHGENqRA",
        "timestamp": 1521243339.873676,
        "log-level": "info",
        "event": event,
        "message": {"headers": {"message-id": "20130503182626.18666.16540@mg.acme.test"}},
        "recipient": "alice@example.com",
        "recipient-domain": "example.com",
        "ip": "50.56.129.169",
        "geolocation": {"country": "US", "region": "CA", "city": "San Francisco"},
        "client-info": {
            "client-os": "Linux", "device-type": "desktop", "client-name": "Chrome",
            "client-type": "browser", "user-agent": UA
        },
        "campaigns": [],
        "tags": ["my_tag_1", "my_tag_2"],
        "user-variables": {"my_var_1": "Mailgun Variable #1", "my-var-2": "awesome"}
    });
    if event == "clicked" {
        e["url"] = json!("https://acme.test/welcome?utm=mail");
    }
    e
}

#[tokio::test]
async fn a_delivered_event_is_normalised() {
    let account = Account::new();
    let data = delivered();
    let e = one_event(&account, &data).await;
    assert_eq!(e.event_id, "CPgfbmQMTCKtHW6uIWtuVe");
    assert_eq!(
        e.provider_message_id,
        "20130503182626.18666.16540@mg.acme.test"
    );
    assert_eq!(
        e.recipient.as_ref().map(|r| r.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(e.kind, EventKind::Delivered);
    assert_eq!(e.occurred_at, 1_521_472_262_908);
    assert_eq!(e.raw, data);
}

#[tokio::test]
async fn a_permanent_failure_is_a_hard_bounce() {
    let account = Account::new();
    let data = permanent_failure();
    let e = one_event(&account, &data).await;
    assert_eq!(e.event_id, "G9Bn5sl1TC6nu79C8C0bwg");
    // Angle brackets, if Mailgun ever sends them, are not part of the id our send stored.
    assert_eq!(
        e.provider_message_id,
        "20130503192659.13651.20287@mg.acme.test"
    );
    assert_eq!(
        e.recipient.as_ref().map(|r| r.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(
        e.kind,
        EventKind::Bounced {
            bounce_type: BounceType::Hard,
            diagnostic: Some("605 Not delivering to previously bounced address".into()),
        }
    );
    assert_eq!(e.occurred_at, 1_521_233_195_376);
    assert_eq!(e.raw, data);
}

#[tokio::test]
async fn a_final_soft_refusal_is_a_soft_bounce() {
    let account = Account::new();
    let mut data = permanent_failure();
    data["reason"] = json!("bounce");
    data["delivery-status"] = json!({"code": 552, "bounce-type": "soft",
        "message": "5.2.2 The email account that you tried to reach is over quota"});
    let e = one_event(&account, &data).await;
    assert_eq!(
        e.kind,
        EventKind::Bounced {
            bounce_type: BounceType::Soft,
            diagnostic: Some(
                "552 5.2.2 The email account that you tried to reach is over quota".into()
            ),
        }
    );
}

#[tokio::test]
async fn a_temporary_failure_is_a_deferral() {
    let account = Account::new();
    let data = temporary_failure();
    let e = one_event(&account, &data).await;
    assert_eq!(e.event_id, "Fs7-5t81S2ispqxqDw2U4Q");
    assert_eq!(
        e.provider_message_id,
        "20130503182626.18666.16540@mg.acme.test"
    );
    assert_eq!(
        e.kind,
        EventKind::Deferred {
            diagnostic: Some(
                "452 4.2.2 The email account that you tried to reach is over quota. Please direct 4.2.2 the recipient to 4.2.2 https://support.example.com/mail/?p=422".into()
            ),
        }
    );
    assert_eq!(e.occurred_at, 1_521_472_262_908);
    assert_eq!(e.raw, data);
}

#[tokio::test]
async fn opens_and_clicks_carry_the_user_agent_and_url() {
    let account = Account::new();
    let opened = engagement("opened");
    let e = one_event(&account, &opened).await;
    assert_eq!(e.event_id, "Ase7i2zsRYeDXztHGENqRA");
    assert_eq!(
        e.provider_message_id,
        "20130503182626.18666.16540@mg.acme.test"
    );
    assert_eq!(
        e.recipient.as_ref().map(|r| r.as_str()),
        Some("alice@example.com")
    );
    assert_eq!(
        e.kind,
        EventKind::Opened {
            user_agent: Some(UA.into())
        }
    );
    assert_eq!(e.occurred_at, 1_521_243_339_874);
    assert_eq!(e.raw, opened);

    let clicked = engagement("clicked");
    let e = one_event(&account, &clicked).await;
    assert_eq!(
        e.kind,
        EventKind::Clicked {
            url: "https://acme.test/welcome?utm=mail".into(),
            user_agent: Some(UA.into()),
        }
    );
    assert_eq!(e.raw, clicked);
}

#[tokio::test]
async fn complaints_and_unsubscribes_map_and_the_rest_is_skipped() {
    let account = Account::new();
    let mut complained = engagement("complained");
    complained["id"] = json!("-Agny091SquKnsrW2NEKUA");
    let e = one_event(&account, &complained).await;
    assert_eq!(e.event_id, "-Agny091SquKnsrW2NEKUA");
    assert_eq!(
        e.kind,
        EventKind::Complained {
            feedback_type: None
        }
    );
    let e = one_event(&account, &engagement("unsubscribed")).await;
    assert_eq!(e.kind, EventKind::Unsubscribed);

    for skipped in ["accepted", "rejected", "stored", "list_member_uploaded"] {
        let body = account.body(NOW_SECS, &engagement(skipped));
        match call(&account.config(), &body).await.unwrap() {
            WebhookOutcome::SingleUse { events: e, .. } => assert!(e.is_empty(), "{skipped}"),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn a_bad_signature_is_unauthorized() {
    let account = Account::new();
    let other = Account::new();
    let body = other.body(NOW_SECS, &delivered());
    let err = call(&account.config(), &body).await.unwrap_err();
    assert!(matches!(err, WebhookError::Unauthorized(_)), "{err:?}");

    // A token swapped after signing.
    let mut v: Value = serde_json::from_slice(&account.body(NOW_SECS, &delivered())).unwrap();
    v["signature"]["token"] = json!(random_hex(25));
    let err = call(&account.config(), &serde_json::to_vec(&v).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn a_missing_signature_is_unauthorized() {
    let account = Account::new();
    let mut v: Value = serde_json::from_slice(&account.body(NOW_SECS, &delivered())).unwrap();
    for field in ["signature", "token", "timestamp"] {
        let mut w = v.clone();
        if field == "signature" {
            w.as_object_mut().unwrap().remove("signature");
        } else {
            w["signature"].as_object_mut().unwrap().remove(field);
        }
        let err = call(&account.config(), &serde_json::to_vec(&w).unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(err, WebhookError::Unauthorized(_)),
            "{field}: {err:?}"
        );
    }
    v["signature"]["signature"] = json!("");
    let err = call(&account.config(), &serde_json::to_vec(&v).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::Unauthorized(_)), "{err:?}");
    // A legacy form-encoded post carries no JSON signature object.
    let err = call(&account.config(), b"timestamp=1&token=x&signature=y")
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn a_reused_old_signature_is_a_replay() {
    let account = Account::new();
    for ts in [NOW_SECS - 301, NOW_SECS + 301, 1_521_472_262] {
        let err = call(&account.config(), &account.body(ts, &delivered()))
            .await
            .unwrap_err();
        assert!(
            matches!(err, WebhookError::Unauthorized(_)),
            "{ts}: {err:?}"
        );
    }
    assert!(
        call(
            &account.config(),
            &account.body(NOW_SECS - 299, &delivered())
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn without_a_signing_key_nothing_is_trusted() {
    let account = Account::new();
    let body = account.body(NOW_SECS, &delivered());
    for config in [
        json!({"domain": "mg.acme.test", "api_key": "key-x"}),
        json!({"domain": "mg.acme.test", "api_key": "key-x", "webhook_signing_key": " "}),
    ] {
        let err = call(&config, &body).await.unwrap_err();
        assert!(matches!(err, WebhookError::NotConfigured(_)), "{err:?}");
    }
}

#[tokio::test]
async fn signed_but_without_event_data_is_malformed() {
    let account = Account::new();
    let body = account.body(NOW_SECS, &json!(null));
    let err = call(&account.config(), &body).await.unwrap_err();
    assert!(matches!(err, WebhookError::Malformed(_)), "{err:?}");
}

#[test]
fn the_config_takes_a_signing_key() {
    let kind = courierx_providers::kind("mailgun").unwrap();
    assert_eq!(kind.secret_fields, ["api_key", "webhook_signing_key"]);
    let ok = (kind.validate)(&json!({"domain": "mg.acme.test", "api_key": "key-x",
        "webhook_signing_key": "  0123456789abcdef0123456789abcdef \n"}))
    .unwrap();
    assert_eq!(
        ok["webhook_signing_key"],
        "0123456789abcdef0123456789abcdef"
    );
    let without = (kind.validate)(&json!({"domain": "mg.acme.test", "api_key": "key-x"})).unwrap();
    assert!(without.get("webhook_signing_key").is_none());
    for bad in ["", "   ", "has a space"] {
        let err = (kind.validate)(&json!({"domain": "mg.acme.test", "api_key": "key-x",
            "webhook_signing_key": bad}))
        .unwrap_err();
        assert_eq!(err.0[0].field, "config.webhook_signing_key", "{bad:?}");
    }
}
