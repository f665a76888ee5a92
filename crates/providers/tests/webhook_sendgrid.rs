//! The SendGrid Event Webhook: signed requests built the way SendGrid builds them (ECDSA P-256
//! over timestamp + body with a key generated here), carrying the sample events from SendGrid's
//! "Event Webhook Reference".

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use courierx_providers::webhooks::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, SnsUrlPolicy, WebhookContext,
    WebhookError, WebhookOutcome,
};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};

const NOW_SECS: i64 = 1_767_225_600;
const NOW: i64 = NOW_SECS * 1000;
const UA: &str =
    "Mozilla/4.0 (compatible; MSIE 6.1; Windows XP; .NET CLR 1.1.4322; .NET CLR 2.0.50727)";
const SG_MESSAGE_ID: &str = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0";
/// What our send stored: the `X-Message-Id` the Mail Send answer carried.
const X_MESSAGE_ID: &str = "14c5d75ce93.dfd.64b469";

struct Signer {
    pair: EcdsaKeyPair,
}

impl Signer {
    fn new() -> Self {
        Self {
            pair: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_ASN1_SIGNING).unwrap(),
        }
    }

    /// The verification key as SendGrid shows it: base64 DER SubjectPublicKeyInfo, no PEM.
    fn public_key(&self) -> String {
        STANDARD.encode(self.pair.public_key().as_der().unwrap().as_ref())
    }

    fn config(&self) -> Value {
        json!({"api_key": "SG.test", "webhook_signing_key": self.public_key()})
    }

    fn headers(&self, timestamp: &str, body: &[u8]) -> HeaderMap {
        let mut signed = timestamp.as_bytes().to_vec();
        signed.extend_from_slice(body);
        let sig = self.pair.sign(&SystemRandom::new(), &signed).unwrap();
        let mut h = HeaderMap::new();
        h.insert(
            "X-Twilio-Email-Event-Webhook-Signature",
            STANDARD.encode(sig.as_ref()).parse().unwrap(),
        );
        h.insert(
            "X-Twilio-Email-Event-Webhook-Timestamp",
            timestamp.parse().unwrap(),
        );
        h
    }
}

async fn call(
    config: &Value,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<WebhookOutcome, WebhookError> {
    let ctx = WebhookContext::new(reqwest::Client::new(), SnsUrlPolicy::default());
    let req = InboundWebhook {
        headers,
        body,
        now: NOW,
    };
    let parse = courierx_providers::kind("sendgrid")
        .unwrap()
        .webhook
        .unwrap();
    parse(config, &req, &ctx).await
}

fn events(outcome: WebhookOutcome) -> Vec<ProviderEvent> {
    match outcome {
        WebhookOutcome::Events(e) => e,
        other => panic!("expected events, got {other:?}"),
    }
}

/// The per-type examples of the Event Webhook Reference, in one batch (each with its own
/// documented `sg_event_id`), timestamps moved next to "now".
fn documented_batch() -> Value {
    let ts = NOW_SECS - 60;
    json!([
        {"email": "example@test.com", "timestamp": ts, "pool": {"name": "new_MY_test", "id": 210},
         "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>", "event": "processed", "category": "cat facts",
         "sg_event_id": "rbtnWrG1DVDGGGFHFyun0A==",
         "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.000000000000000000000"},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "dropped", "category": "cat facts", "sg_event_id": "zmzJhfJgAfUSOW80yEbPyw==",
         "sg_message_id": SG_MESSAGE_ID, "reason": "Bounced Address", "status": "5.0.0"},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "delivered", "category": "cat facts", "sg_event_id": "rWVYmVk90MjZJ9iohOBa3w==",
         "sg_message_id": SG_MESSAGE_ID, "response": "250 OK"},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "deferred", "category": "cat facts", "sg_event_id": "t7LEShmowp86DTdUW8M-GQ==",
         "sg_message_id": SG_MESSAGE_ID, "response": "400 try again later", "attempt": "5"},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "bounce", "category": "cat facts", "sg_event_id": "6g4ZI7SA-xmRDv57GoPIPw==",
         "sg_message_id": SG_MESSAGE_ID, "reason": "500 unknown recipient", "status": "5.0.0",
         "type": "bounce", "bounce_classification": "Invalid Address"},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "bounce", "category": "cat facts", "sg_event_id": "blocked-6g4ZI7SA-xmRDv57GoPIPw==",
         "sg_message_id": SG_MESSAGE_ID, "reason": "550 5.7.1 Message rejected due to reputation",
         "status": "5.7.1", "type": "blocked", "bounce_classification": "Reputation"},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "open", "sg_machine_open": false, "category": "cat facts",
         "sg_event_id": "FOTFFO0ecsBE-zxFXfs6WA==", "sg_message_id": SG_MESSAGE_ID,
         "useragent": UA, "ip": "255.255.255.255"},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "click", "category": "cat facts", "sg_event_id": "kCAi1KttyQdEKHhdC-nuEA==",
         "sg_message_id": SG_MESSAGE_ID, "useragent": UA, "ip": "255.255.255.255",
         "url": "http://www.sendgrid.com/"},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "spamreport", "category": "cat facts", "sg_event_id": "37nvH5QBz858KGVYCM4uOA==",
         "sg_message_id": SG_MESSAGE_ID},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "unsubscribe", "category": "cat facts", "sg_event_id": "zz_BjPgU_5pS-J8vlfB1sg==",
         "sg_message_id": SG_MESSAGE_ID},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "group_unsubscribe", "category": "cat facts", "sg_event_id": "ahSCB7xYcXFb-hEaawsPRw==",
         "sg_message_id": SG_MESSAGE_ID, "useragent": UA, "ip": "255.255.255.255",
         "url": "http://www.sendgrid.com/", "asm_group_id": 10},
        {"email": "example@test.com", "timestamp": ts, "smtp-id": "<14c5d75ce93.dfd.64b469@ismtpd-555>",
         "event": "group_resubscribe", "category": "cat facts", "sg_event_id": "w_u0vJhLT-OFfprar5N93g==",
         "sg_message_id": SG_MESSAGE_ID, "useragent": UA, "ip": "255.255.255.255",
         "url": "http://www.sendgrid.com/", "asm_group_id": 10}
    ])
}

#[tokio::test]
async fn the_documented_batch_is_verified_and_normalised() {
    let signer = Signer::new();
    let batch = documented_batch();
    let body = serde_json::to_vec(&batch).unwrap();
    let headers = signer.headers(&NOW_SECS.to_string(), &body);
    let got = events(call(&signer.config(), &headers, &body).await.unwrap());

    let at = (NOW_SECS - 60) * 1000;
    let hard = |d: &str| EventKind::Bounced {
        bounce_type: BounceType::Hard,
        diagnostic: Some(d.into()),
    };
    // processed (index 0) and group_resubscribe (index 11) mean nothing to CourierX.
    let expected: Vec<(usize, &str, EventKind)> = vec![
        (1, "zmzJhfJgAfUSOW80yEbPyw==", hard("Bounced Address")),
        (2, "rWVYmVk90MjZJ9iohOBa3w==", EventKind::Delivered),
        (
            3,
            "t7LEShmowp86DTdUW8M-GQ==",
            EventKind::Deferred {
                diagnostic: Some("400 try again later".into()),
            },
        ),
        (4, "6g4ZI7SA-xmRDv57GoPIPw==", hard("500 unknown recipient")),
        (
            5,
            "blocked-6g4ZI7SA-xmRDv57GoPIPw==",
            EventKind::Bounced {
                bounce_type: BounceType::Soft,
                diagnostic: Some("550 5.7.1 Message rejected due to reputation".into()),
            },
        ),
        (
            6,
            "FOTFFO0ecsBE-zxFXfs6WA==",
            EventKind::Opened {
                user_agent: Some(UA.into()),
            },
        ),
        (
            7,
            "kCAi1KttyQdEKHhdC-nuEA==",
            EventKind::Clicked {
                url: "http://www.sendgrid.com/".into(),
                user_agent: Some(UA.into()),
            },
        ),
        (
            8,
            "37nvH5QBz858KGVYCM4uOA==",
            EventKind::Complained {
                feedback_type: None,
            },
        ),
        (9, "zz_BjPgU_5pS-J8vlfB1sg==", EventKind::Unsubscribed),
        (10, "ahSCB7xYcXFb-hEaawsPRw==", EventKind::Unsubscribed),
    ];
    assert_eq!(got.len(), expected.len());
    for (event, (index, id, kind)) in got.iter().zip(expected) {
        assert_eq!(event.event_id, id);
        assert_eq!(event.provider_message_id, X_MESSAGE_ID);
        assert_eq!(
            event.recipient.as_ref().map(|r| r.as_str()),
            Some("example@test.com")
        );
        assert_eq!(event.kind, kind, "{id}");
        assert_eq!(event.occurred_at, at);
        assert_eq!(event.raw, batch[index]);
    }
}

#[tokio::test]
async fn a_pem_key_verifies_too() {
    let signer = Signer::new();
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----",
        signer.public_key()
    );
    let body = br#"[{"email":"a@b.test","timestamp":1767225590,"event":"delivered","sg_event_id":"e1","sg_message_id":"5lFl7Fr1Rjme_EyzNNB_5A.stfilter-015.5185.55F883172.0"}]"#;
    let headers = signer.headers(&NOW_SECS.to_string(), body);
    let got = events(
        call(&json!({"webhook_signing_key": pem}), &headers, body)
            .await
            .unwrap(),
    );
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].provider_message_id, "5lFl7Fr1Rjme_EyzNNB_5A");
    assert_eq!(got[0].event_id, "e1");
    assert_eq!(got[0].occurred_at, 1_767_225_590_000);
}

#[tokio::test]
async fn a_tampered_body_or_foreign_key_is_unauthorized() {
    let signer = Signer::new();
    let body = serde_json::to_vec(&documented_batch()).unwrap();
    let headers = signer.headers(&NOW_SECS.to_string(), &body);

    let mut tampered = body.clone();
    let pos = tampered.iter().position(|&b| b == b'5').unwrap();
    tampered[pos] = b'4';
    let err = call(&signer.config(), &headers, &tampered)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::Unauthorized(_)), "{err:?}");

    let other = Signer::new();
    let err = call(&other.config(), &headers, &body).await.unwrap_err();
    assert!(matches!(err, WebhookError::Unauthorized(_)), "{err:?}");

    // The timestamp is part of what is signed.
    let mut moved = headers.clone();
    moved.insert(
        "X-Twilio-Email-Event-Webhook-Timestamp",
        (NOW_SECS + 1).to_string().parse().unwrap(),
    );
    let err = call(&signer.config(), &moved, &body).await.unwrap_err();
    assert!(matches!(err, WebhookError::Unauthorized(_)), "{err:?}");

    let mut garbled = headers.clone();
    garbled.insert(
        "X-Twilio-Email-Event-Webhook-Signature",
        "%%%".parse().unwrap(),
    );
    let err = call(&signer.config(), &garbled, &body).await.unwrap_err();
    assert!(matches!(err, WebhookError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn missing_signature_headers_are_unauthorized() {
    let signer = Signer::new();
    let body = serde_json::to_vec(&documented_batch()).unwrap();
    let headers = signer.headers(&NOW_SECS.to_string(), &body);
    for name in [
        "X-Twilio-Email-Event-Webhook-Signature",
        "X-Twilio-Email-Event-Webhook-Timestamp",
    ] {
        let mut h = headers.clone();
        h.remove(name);
        let err = call(&signer.config(), &h, &body).await.unwrap_err();
        assert!(
            matches!(err, WebhookError::Unauthorized(_)),
            "{name}: {err:?}"
        );
    }
    let err = call(&signer.config(), &HeaderMap::new(), &body)
        .await
        .unwrap_err();
    assert!(matches!(err, WebhookError::Unauthorized(_)), "{err:?}");
}

#[tokio::test]
async fn a_stale_or_future_timestamp_is_a_replay() {
    let signer = Signer::new();
    let body = serde_json::to_vec(&documented_batch()).unwrap();
    for ts in [NOW_SECS - 301, NOW_SECS + 301] {
        let headers = signer.headers(&ts.to_string(), &body);
        let err = call(&signer.config(), &headers, &body).await.unwrap_err();
        assert!(
            matches!(err, WebhookError::Unauthorized(_)),
            "{ts}: {err:?}"
        );
    }
    // Inside the window is fine.
    let headers = signer.headers(&(NOW_SECS - 299).to_string(), &body);
    assert!(call(&signer.config(), &headers, &body).await.is_ok());
}

#[tokio::test]
async fn without_a_key_nothing_is_trusted() {
    let signer = Signer::new();
    let body = serde_json::to_vec(&documented_batch()).unwrap();
    let headers = signer.headers(&NOW_SECS.to_string(), &body);
    for config in [
        json!({"api_key": "SG.test"}),
        json!({"api_key": "SG.test", "webhook_signing_key": null}),
        json!({"api_key": "SG.test", "webhook_signing_key": "  "}),
    ] {
        let err = call(&config, &headers, &body).await.unwrap_err();
        assert!(
            matches!(err, WebhookError::NotConfigured(_)),
            "{config}: {err:?}"
        );
    }
}

#[tokio::test]
async fn an_authentic_but_unreadable_body_is_malformed() {
    let signer = Signer::new();
    for body in [&b"not json"[..], br#"{"event":"delivered"}"#, b"[1, 2]"] {
        let headers = signer.headers(&NOW_SECS.to_string(), body);
        let err = call(&signer.config(), &headers, body).await.unwrap_err();
        assert!(matches!(err, WebhookError::Malformed(_)), "{err:?}");
    }
}

#[tokio::test]
async fn events_without_a_message_id_are_skipped_and_ids_derived_when_absent() {
    let signer = Signer::new();
    // An asynchronous bounce (documented to lack sg_message_id) and an event without sg_event_id
    // or timestamp.
    let batch = json!([
        {"email": "late@b.test", "timestamp": NOW_SECS - 5, "event": "bounce", "type": "bounce",
         "reason": "550 5.1.1 no such user", "sg_event_id": "async-1"},
        {"email": "x@b.test", "event": "Delivered", "sg_message_id": "abc.filterdrecv-1.0"}
    ]);
    let body = serde_json::to_vec(&batch).unwrap();
    let headers = signer.headers(&NOW_SECS.to_string(), &body);
    let got = events(call(&signer.config(), &headers, &body).await.unwrap());
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].kind, EventKind::Delivered);
    assert_eq!(got[0].provider_message_id, "abc");
    // No event time: the signed request time stands in.
    assert_eq!(got[0].occurred_at, NOW);
    assert_eq!(got[0].event_id.len(), 32);
    // The same event posted again gets the same derived id.
    let again = events(call(&signer.config(), &headers, &body).await.unwrap());
    assert_eq!(again[0].event_id, got[0].event_id);
}

#[test]
fn the_config_checks_the_verification_key() {
    let kind = courierx_providers::kind("sendgrid").unwrap();
    assert!(kind.secret_fields.contains(&"webhook_signing_key"));
    let key = Signer::new().public_key();
    let ok =
        (kind.validate)(&json!({"api_key": "SG.x", "webhook_signing_key": format!(" {key}\n")}))
            .unwrap();
    assert_eq!(ok["webhook_signing_key"], key);
    let err = (kind.validate)(&json!({"api_key": "SG.x", "webhook_signing_key": "bm90IGEga2V5"}))
        .unwrap_err();
    assert_eq!(err.0[0].field, "config.webhook_signing_key");
}
