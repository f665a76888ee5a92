//! SES events through SNS, against a local server standing in for SNS's certificate host and
//! its `SubscribeURL`. The RSA key and the self-signed certificate are made at test time and
//! messages are signed as SNS signs them: version 2 (SHA256withRSA) with aws-lc-rs, version 1
//! (SHA1withRSA) by hand from the key's own numbers, as aws-lc-rs signs nothing with SHA-1.
//! The string to sign is built here from the SNS documentation, not with the library's code.
//! The SES events are the samples from "Examples of event data that Amazon SES publishes to
//! Amazon SNS" and "Amazon SNS notification examples for Amazon SES".

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use base64::Engine;
use courierx_providers::webhooks::{
    BounceType, EventKind, InboundWebhook, ProviderEvent, SnsUrlPolicy, WebhookContext,
    WebhookError, WebhookOutcome, ses,
};
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex, OnceLock};
use x509_parser::der_parser::parse_der;
use x509_parser::num_bigint::BigUint;

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:ses-events";
const SNS_ID: &str = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324";
const SNS_TIME: &str = "2017-08-05T00:41:03.012Z";
const SES_ID: &str = "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000";

fn ms(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .timestamp_millis()
}

/// A minute after SNS sent the message.
fn now() -> i64 {
    ms(SNS_TIME) + 60_000
}

struct Signer {
    pkcs8: Vec<u8>,
    cert_pem: String,
    n: BigUint,
    d: BigUint,
}

/// One 2048-bit key for the whole run: generating RSA keys is slow.
fn signer() -> &'static Signer {
    static SIGNER: OnceLock<Signer> = OnceLock::new();
    SIGNER.get_or_init(|| {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sns.us-east-1.amazonaws.com".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pkcs8 = key.serialize_der();
        // PrivateKeyInfo { version, algorithm, privateKey: OCTET STRING { RSAPrivateKey {
        // version, n, e, d, … } } }
        let (_, info) = parse_der(&pkcs8).unwrap();
        let inner = info.as_sequence().unwrap()[2].as_slice().unwrap();
        let (_, rsa) = parse_der(inner).unwrap();
        let fields = rsa.as_sequence().unwrap();
        let (n, d) = (
            fields[1].as_biguint().unwrap(),
            fields[3].as_biguint().unwrap(),
        );
        Signer {
            cert_pem: cert.pem(),
            pkcs8,
            n,
            d,
        }
    })
}

impl Signer {
    fn sign(&self, version: u8, data: &str) -> String {
        let sig = if version == 2 {
            let kp = RsaKeyPair::from_pkcs8(&self.pkcs8).unwrap();
            let mut sig = vec![0; kp.public_modulus_len()];
            kp.sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                data.as_bytes(),
                &mut sig,
            )
            .unwrap();
            sig
        } else {
            self.sign_sha1(data)
        };
        base64::engine::general_purpose::STANDARD.encode(sig)
    }

    /// RSASSA-PKCS1-v1_5 with SHA-1 (RFC 8017 §8.2.1, §9.2): EM = 00 01 FF…FF 00 DigestInfo,
    /// signature = EM^d mod n, as long as the modulus.
    fn sign_sha1(&self, data: &str) -> Vec<u8> {
        const SHA1_DIGEST_INFO: [u8; 15] = [
            0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04,
            0x14,
        ];
        let k = usize::try_from(self.n.bits().div_ceil(8)).unwrap();
        let hash = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, data.as_bytes());
        let mut em = vec![0x00, 0x01];
        em.resize(k - SHA1_DIGEST_INFO.len() - hash.as_ref().len() - 1, 0xff);
        em.push(0x00);
        em.extend_from_slice(&SHA1_DIGEST_INFO);
        em.extend_from_slice(hash.as_ref());
        let s = BigUint::from_bytes_be(&em)
            .modpow(&self.d, &self.n)
            .to_bytes_be();
        let mut out = vec![0; k - s.len()];
        out.extend(s);
        out
    }
}

/// The documented string to sign: name, newline, value, newline, for the type's fields in
/// byte order; `Subject` only when present.
fn canonical(m: &Value) -> String {
    let fields: &[&str] = if m["Type"] == "Notification" {
        &[
            "Message",
            "MessageId",
            "Subject",
            "Timestamp",
            "TopicArn",
            "Type",
        ]
    } else {
        &[
            "Message",
            "MessageId",
            "SubscribeURL",
            "Timestamp",
            "Token",
            "TopicArn",
            "Type",
        ]
    };
    fields
        .iter()
        .filter_map(|f| m[*f].as_str().map(|v| format!("{f}\n{v}\n")))
        .collect()
}

fn sign(m: &mut Value, version: u8) {
    m["SignatureVersion"] = version.to_string().into();
    m["Signature"] = signer().sign(version, &canonical(m)).into();
}

/// What the stand-in SNS saw, and how it answers `SubscribeURL`.
#[derive(Clone)]
struct Sns {
    hits: Arc<Mutex<Vec<String>>>,
    confirm_status: Arc<Mutex<StatusCode>>,
}

async fn serve(State(sns): State<Sns>, uri: Uri) -> (StatusCode, String) {
    sns.hits.lock().unwrap().push(uri.to_string());
    match uri.path() {
        "/sns/cert.pem" => (StatusCode::OK, signer().cert_pem.clone()),
        "/sns/confirm" => (
            *sns.confirm_status.lock().unwrap(),
            "<ConfirmSubscriptionResponse><ConfirmSubscriptionResult><SubscriptionArn>\
             arn:aws:sns:us-east-1:123456789012:ses-events:1</SubscriptionArn>\
             </ConfirmSubscriptionResult></ConfirmSubscriptionResponse>"
                .into(),
        ),
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

struct Harness {
    base: String,
    sns: Sns,
    ctx: WebhookContext,
}

impl Harness {
    async fn start() -> Self {
        let sns = Sns {
            hits: Arc::default(),
            confirm_status: Arc::new(Mutex::new(StatusCode::OK)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new().fallback(serve).with_state(sns.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let policy = SnsUrlPolicy {
            extra_prefixes: vec![format!("{base}/sns/")],
        };
        Harness {
            base,
            sns,
            ctx: WebhookContext::new(reqwest::Client::new(), policy),
        }
    }

    fn hits(&self) -> Vec<String> {
        self.sns.hits.lock().unwrap().clone()
    }

    /// An SNS notification carrying `event`, signed with `version`.
    fn notification(&self, event: &Value, version: u8) -> Value {
        let mut m = json!({
            "Type": "Notification",
            "MessageId": SNS_ID,
            "TopicArn": TOPIC,
            "Message": event.to_string(),
            "Timestamp": SNS_TIME,
            "SigningCertURL": format!("{}/sns/cert.pem", self.base),
            "UnsubscribeURL": "https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn=arn:aws:sns:us-east-1:123456789012:ses-events:c9135db0-26c4-47ec-8998-413945fb5a96",
        });
        sign(&mut m, version);
        m
    }

    /// The documented SubscriptionConfirmation, pointed at the stand-in SNS.
    fn confirmation(&self, kind: &str) -> Value {
        let token = "2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3beb71854e285d6ad02428b09ceece29417f1f02d609c582afbacc99c583a916b9981dd2728f4ae6fdb82efd087cc3b7849e05798d2d2785c03b0879594eeac82c01f235d0e717736";
        let mut m = json!({
            "Type": kind,
            "MessageId": "165545c9-2a5c-472c-8df2-7ff2be2b3b1b",
            "Token": token,
            "TopicArn": TOPIC,
            "Message": format!("You have chosen to subscribe to the topic {TOPIC}.\nTo confirm the subscription, visit the SubscribeURL included in this message."),
            "SubscribeURL": format!("{}/sns/confirm?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}", self.base),
            "Timestamp": SNS_TIME,
            "SigningCertURL": format!("{}/sns/cert.pem", self.base),
        });
        sign(&mut m, 1);
        m
    }

    async fn post_at(
        &self,
        config: &Value,
        body: &Value,
        now: i64,
    ) -> Result<WebhookOutcome, WebhookError> {
        let mut headers = HeaderMap::new();
        if let Some(kind) = body["Type"].as_str() {
            headers.insert("x-amz-sns-message-type", kind.parse().unwrap());
        }
        headers.insert("content-type", "text/plain; charset=UTF-8".parse().unwrap());
        let bytes = serde_json::to_vec(body).unwrap();
        let req = InboundWebhook {
            headers: &headers,
            body: &bytes,
            now,
        };
        let webhook = courierx_providers::kind("ses").unwrap().webhook.unwrap();
        webhook(config, &req, &self.ctx).await
    }

    async fn post(&self, body: &Value) -> Result<WebhookOutcome, WebhookError> {
        self.post_at(&config(&[TOPIC]), body, now()).await
    }

    async fn events(&self, event: &Value, version: u8) -> Vec<ProviderEvent> {
        match self.post(&self.notification(event, version)).await {
            Ok(WebhookOutcome::Events(events)) => events,
            other => panic!("expected events, got {other:?}"),
        }
    }
}

/// The SES provider config as stored after validation.
fn config(topics: &[&str]) -> Value {
    let kind = courierx_providers::kind("ses").unwrap();
    (kind.validate)(&json!({
        "region": "us-east-1",
        "access_key_id": "AKIDEXAMPLE0000001",
        "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        "sns_topic_arns": topics,
    }))
    .unwrap()
}

#[track_caller]
fn check(
    e: &ProviderEvent,
    recipient: Option<&str>,
    kind: EventKind,
    at: &str,
    raw: &Value,
    message_id: &str,
) {
    let expected_id = match recipient {
        Some(r) => format!("{SNS_ID}:{r}"),
        None => SNS_ID.to_string(),
    };
    assert_eq!(e.event_id, expected_id);
    assert_eq!(e.provider_message_id, message_id);
    assert_eq!(e.recipient.as_ref().map(|r| r.as_str()), recipient);
    assert_eq!(e.kind, kind);
    assert_eq!(e.occurred_at, ms(at));
    assert_eq!(&e.raw, raw);
}

fn unauthorized(r: Result<WebhookOutcome, WebhookError>) -> String {
    match r {
        Err(WebhookError::Unauthorized(why)) => why,
        other => panic!("expected Unauthorized, got {other:?}"),
    }
}

fn bounce_event() -> Value {
    json!({
      "eventType":"Bounce",
      "bounce":{
        "bounceType":"Permanent",
        "bounceSubType":"General",
        "bouncedRecipients":[
          {
            "emailAddress":"recipient@example.com",
            "action":"failed",
            "status":"5.1.1",
            "diagnosticCode":"smtp; 550 5.1.1 user unknown"
          }
        ],
        "timestamp":"2017-08-05T00:41:02.669Z",
        "feedbackId":"01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
        "reportingMTA":"dsn; mta.example.com"
      },
      "mail":{
        "timestamp":"2017-08-05T00:40:02.012Z",
        "source":"Sender Name <sender@example.com>",
        "sourceArn":"arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
        "sendingAccountId":"123456789012",
        "messageId":SES_ID,
        "destination":["recipient@example.com"],
        "headersTruncated":false,
        "headers":[
          {"name":"From","value":"Sender Name <sender@example.com>"},
          {"name":"To","value":"recipient@example.com"},
          {"name":"Subject","value":"Message sent from Amazon SES"},
          {"name":"MIME-Version","value":"1.0"},
          {"name":"Content-Type","value":"multipart/alternative; boundary=\"----=_Part_7307378_1629847660.1516840721503\""}
        ],
        "commonHeaders":{
          "from":["Sender Name <sender@example.com>"],
          "to":["recipient@example.com"],
          "messageId":SES_ID,
          "subject":"Message sent from Amazon SES"
        },
        "tags":{
          "ses:configuration-set":["ConfigSet"],
          "ses:source-ip":["192.0.2.0"],
          "ses:from-domain":["example.com"],
          "ses:caller-identity":["ses_user"]
        }
      }
    })
}

#[tokio::test]
async fn permanent_bounce_signed_v1_is_one_hard_bounce() {
    let h = Harness::start().await;
    let event = bounce_event();
    let events = h.events(&event, 1).await;
    assert_eq!(events.len(), 1);
    check(
        &events[0],
        Some("recipient@example.com"),
        EventKind::Bounced {
            bounce_type: BounceType::Hard,
            diagnostic: Some("smtp; 550 5.1.1 user unknown".into()),
        },
        "2017-08-05T00:41:02.669Z",
        &event,
        SES_ID,
    );
    assert_eq!(h.hits(), ["/sns/cert.pem"]);
}

#[tokio::test]
async fn same_message_signed_v2_is_accepted_and_the_certificate_is_fetched_once() {
    let h = Harness::start().await;
    let event = bounce_event();
    let first = h.events(&event, 2).await;
    let again = h.events(&event, 2).await;
    assert_eq!(first.len(), 1);
    // An SNS retry carries the same MessageId, so the same event id.
    assert_eq!(first[0].event_id, again[0].event_id);
    assert_eq!(
        h.hits(),
        ["/sns/cert.pem"],
        "the certificate is cached by URL"
    );
}

/// The older identity notification format (`notificationType`), the documented bounce
/// without a DSN, made transient.
#[tokio::test]
async fn transient_bounce_in_the_notification_format_is_soft_per_recipient() {
    let h = Harness::start().await;
    let event = json!({
      "notificationType":"Bounce",
      "bounce":{
         "bounceType":"Transient",
         "bounceSubType": "MailboxFull",
         "bouncedRecipients":[
            {"emailAddress":"jane@example.com"},
            {"emailAddress":"richard@example.com"}
         ],
         "timestamp":"2016-01-27T14:59:38.237Z",
         "feedbackId":"00000137860315fd-869464a4-8680-4114-98d3-716fe35851f9-000000",
         "remoteMtaIp":"127.0.2.0"
      },
      "mail":{
         "timestamp":"2016-01-27T14:59:38.237Z",
         "messageId":"00000137860315fd-34208509-5b74-41f3-95c5-22c1edc3c924-000000",
         "source":"john@example.com",
         "sourceArn": "arn:aws:ses:us-east-1:888888888888:identity/example.com",
         "sourceIp": "127.0.3.0",
         "sendingAccountId":"123456789012",
         "destination":["jane@example.com", "mary@example.com", "richard@example.com"]
      }
    });
    let events = h.events(&event, 2).await;
    assert_eq!(events.len(), 2);
    for (e, who) in events
        .iter()
        .zip(["jane@example.com", "richard@example.com"])
    {
        check(
            e,
            Some(who),
            EventKind::Bounced {
                bounce_type: BounceType::Soft,
                diagnostic: Some("MailboxFull".into()),
            },
            "2016-01-27T14:59:38.237Z",
            &event,
            "00000137860315fd-34208509-5b74-41f3-95c5-22c1edc3c924-000000",
        );
    }
}

#[tokio::test]
async fn complaint_carries_the_feedback_type() {
    let h = Harness::start().await;
    let event = json!({
      "eventType":"Complaint",
      "complaint": {
        "complainedRecipients":[{"emailAddress":"recipient@example.com"}],
        "timestamp":"2017-08-05T00:41:02.669Z",
        "feedbackId":"01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
        "userAgent":"Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/60.0.3112.90 Safari/537.36",
        "complaintFeedbackType":"abuse",
        "arrivalDate":"2017-08-05T00:41:02.669Z"
      },
      "mail":{
        "timestamp":"2017-08-05T00:40:01.123Z",
        "source":"Sender Name <sender@example.com>",
        "sourceArn":"arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
        "sendingAccountId":"123456789012",
        "messageId":SES_ID,
        "destination":["recipient@example.com"],
        "headersTruncated":false
      }
    });
    let events = h.events(&event, 2).await;
    assert_eq!(events.len(), 1);
    check(
        &events[0],
        Some("recipient@example.com"),
        EventKind::Complained {
            feedback_type: Some("abuse".into()),
        },
        "2017-08-05T00:41:02.669Z",
        &event,
        SES_ID,
    );
}

#[tokio::test]
async fn delivery_to_two_recipients_is_two_events() {
    let h = Harness::start().await;
    let event = json!({
      "eventType": "Delivery",
      "mail": {
        "timestamp": "2016-10-19T23:20:52.240Z",
        "source": "sender@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
        "sendingAccountId": "123456789012",
        "messageId": SES_ID,
        "destination": ["recipient@example.com", "second@Example.COM"],
        "headersTruncated": false,
        "tags": {"ses:configuration-set": ["ConfigSet"], "ses:outgoing-ip": ["192.0.2.0"]}
      },
      "delivery": {
        "timestamp": "2016-10-19T23:21:04.133Z",
        "processingTimeMillis": 11893,
        "recipients": ["recipient@example.com", "second@Example.COM"],
        "smtpResponse": "250 2.6.0 Message received",
        "reportingMTA": "mta.example.com"
      }
    });
    let events = h.events(&event, 2).await;
    assert_eq!(events.len(), 2);
    check(
        &events[0],
        Some("recipient@example.com"),
        EventKind::Delivered,
        "2016-10-19T23:21:04.133Z",
        &event,
        SES_ID,
    );
    assert_eq!(events[1].event_id, format!("{SNS_ID}:second@Example.COM"));
    assert_eq!(
        events[1].recipient.as_ref().map(|r| r.as_str()),
        Some("second@example.com")
    );
    assert_eq!(events[1].kind, EventKind::Delivered);
}

#[tokio::test]
async fn open_has_the_user_agent_and_the_sole_recipient() {
    let h = Harness::start().await;
    let event = json!({
      "eventType": "Open",
      "mail": {
        "commonHeaders": {
          "from": ["sender@example.com"],
          "messageId": SES_ID,
          "subject": "Message sent from Amazon SES",
          "to": ["recipient@example.com"]
        },
        "destination": ["recipient@example.com"],
        "headersTruncated": false,
        "messageId": SES_ID,
        "sendingAccountId": "123456789012",
        "source": "sender@example.com",
        "timestamp": "2017-08-09T21:59:49.927Z"
      },
      "open": {
        "ipAddress": "192.0.2.1",
        "timestamp": "2017-08-09T22:00:19.652Z",
        "userAgent": "Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_3 like Mac OS X) AppleWebKit/603.3.8 (KHTML, like Gecko) Mobile/14G60"
      }
    });
    let events = h.events(&event, 2).await;
    assert_eq!(events.len(), 1);
    check(
        &events[0],
        Some("recipient@example.com"),
        EventKind::Opened {
            user_agent: Some("Mozilla/5.0 (iPhone; CPU iPhone OS 10_3_3 like Mac OS X) AppleWebKit/603.3.8 (KHTML, like Gecko) Mobile/14G60".into()),
        },
        "2017-08-09T22:00:19.652Z",
        &event,
        SES_ID,
    );
}

#[tokio::test]
async fn click_has_the_link_and_no_recipient_when_the_mail_had_several() {
    let h = Harness::start().await;
    let event = json!({
      "eventType": "Click",
      "click": {
        "ipAddress": "192.0.2.1",
        "link": "http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html",
        "linkTags": {"samplekey0": ["samplevalue0"], "samplekey1": ["samplevalue1"]},
        "timestamp": "2017-08-09T23:51:25.570Z",
        "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/60.0.3112.90 Safari/537.36"
      },
      "mail": {
        "destination": ["recipient@example.com", "other@example.com"],
        "headersTruncated": false,
        "messageId": SES_ID,
        "sendingAccountId": "123456789012",
        "source": "sender@example.com",
        "timestamp": "2017-08-09T23:50:05.795Z"
      }
    });
    let events = h.events(&event, 2).await;
    assert_eq!(events.len(), 1);
    check(
        &events[0],
        None,
        EventKind::Clicked {
            url: "http://docs.aws.amazon.com/ses/latest/DeveloperGuide/send-email-smtp.html"
                .into(),
            user_agent: Some("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/60.0.3112.90 Safari/537.36".into()),
        },
        "2017-08-09T23:51:25.570Z",
        &event,
        SES_ID,
    );
}

#[tokio::test]
async fn delivery_delay_is_deferred_with_the_diagnostic() {
    let h = Harness::start().await;
    let event = json!({
      "eventType": "DeliveryDelay",
      "mail":{
        "timestamp":"2020-06-16T00:15:40.641Z",
        "source":"sender@example.com",
        "sourceArn":"arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
        "sendingAccountId":"123456789012",
        "messageId":SES_ID,
        "destination":["recipient@example.com"],
        "headersTruncated":false,
        "tags":{"ses:configuration-set":["ConfigSet"]}
      },
      "deliveryDelay": {
        "timestamp": "2020-06-16T00:25:40.095Z",
        "delayType": "TransientCommunicationFailure",
        "expirationTime": "2020-06-16T00:25:40.914Z",
        "delayedRecipients": [{
          "emailAddress": "recipient@example.com",
          "status": "4.4.1",
          "diagnosticCode": "smtp; 421 4.4.1 Unable to connect to remote host"
        }]
      }
    });
    let events = h.events(&event, 1).await;
    assert_eq!(events.len(), 1);
    check(
        &events[0],
        Some("recipient@example.com"),
        EventKind::Deferred {
            diagnostic: Some("smtp; 421 4.4.1 Unable to connect to remote host".into()),
        },
        "2020-06-16T00:25:40.095Z",
        &event,
        SES_ID,
    );
}

#[tokio::test]
async fn list_unsubscribe_is_unsubscribed() {
    let h = Harness::start().await;
    let event = json!({
      "eventType": "Subscription",
      "mail": {
        "timestamp": "2022-01-12T01:00:14.340Z",
        "source": "sender@example.com",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
        "sendingAccountId": "123456789012",
        "messageId": "EXAMPLEe4bccb684-777bc8de-afa7-4970-92b0-f515137b1497-000000",
        "destination": ["recipient@example.com"],
        "headersTruncated": false
      },
      "subscription": {
        "contactList": "ContactListName",
        "timestamp": "2022-01-12T01:00:17.910Z",
        "source": "UnsubscribeHeader",
        "newTopicPreferences": {
          "unsubscribeAll": true,
          "topicSubscriptionStatus": [{"topicName": "ExampleTopicName", "subscriptionStatus": "OptOut"}]
        },
        "oldTopicPreferences": {
          "unsubscribeAll": false,
          "topicSubscriptionStatus": [{"topicName": "ExampleTopicName", "subscriptionStatus": "OptOut"}]
        }
      }
    });
    let events = h.events(&event, 2).await;
    assert_eq!(events.len(), 1);
    check(
        &events[0],
        Some("recipient@example.com"),
        EventKind::Unsubscribed,
        "2022-01-12T01:00:17.910Z",
        &event,
        "EXAMPLEe4bccb684-777bc8de-afa7-4970-92b0-f515137b1497-000000",
    );
}

#[tokio::test]
async fn reject_is_a_soft_bounce_at_the_sns_time_and_send_is_skipped() {
    let h = Harness::start().await;
    let mail = json!({
        "timestamp": "2016-10-14T17:38:15.211Z",
        "source": "sender@example.com",
        "sendingAccountId": "123456789012",
        "messageId": SES_ID,
        "destination": ["recipient@example.com"],
        "headersTruncated": false
    });
    let reject = json!({"eventType": "Reject", "mail": mail, "reject": {"reason": "Bad content"}});
    let events = h.events(&reject, 2).await;
    assert_eq!(events.len(), 1);
    check(
        &events[0],
        Some("recipient@example.com"),
        EventKind::Bounced {
            bounce_type: BounceType::Soft,
            diagnostic: Some("rejected by SES: Bad content".into()),
        },
        SNS_TIME,
        &reject,
        SES_ID,
    );
    let send = json!({"eventType": "Send", "mail": mail, "send": {}});
    assert!(h.events(&send, 2).await.is_empty());
}

#[tokio::test]
async fn setup_messages_from_ses_produce_nothing() {
    let h = Harness::start().await;
    let mut m = h.notification(&json!({}), 2);
    m["Message"] = "Successfully validated SNS topic for Amazon SES event publishing.".into();
    sign(&mut m, 2);
    assert!(matches!(h.post(&m).await, Ok(WebhookOutcome::Events(e)) if e.is_empty()));
    let succeeded = json!({"notificationType": "AmazonSnsSubscriptionSucceeded",
        "message": "You have successfully subscribed your Amazon SNS topic"});
    assert!(h.events(&succeeded, 2).await.is_empty());
    // Signed by SNS but not SES's: readable as SNS, not as an SES event.
    m["Message"] = "Hello world!".into();
    sign(&mut m, 2);
    assert!(matches!(h.post(&m).await, Err(WebhookError::Malformed(_))));
}

#[tokio::test]
async fn tampered_message_is_refused() {
    let h = Harness::start().await;
    let mut m = h.notification(&bounce_event(), 2);
    let forged = bounce_event()
        .to_string()
        .replace("recipient@", "someone-else@");
    m["Message"] = forged.into();
    assert!(unauthorized(h.post(&m).await).contains("signature"));
    // Fields outside the string to sign are free to differ, as SNS documents.
    let mut m = h.notification(&bounce_event(), 1);
    m["UnsubscribeURL"] = "https://sns.us-east-1.amazonaws.com/?other".into();
    assert!(h.post(&m).await.is_ok());
    // Adding a Subject after signing changes the string to sign.
    m["Subject"] = "Amazon SES Email Event Notification".into();
    assert!(unauthorized(h.post(&m).await).contains("signature"));
}

#[tokio::test]
async fn missing_or_unreadable_signatures_are_refused() {
    let h = Harness::start().await;
    let signed = h.notification(&bounce_event(), 2);
    let mut m = signed.clone();
    m.as_object_mut().unwrap().remove("Signature");
    unauthorized(h.post(&m).await);
    let mut m = signed.clone();
    m["Signature"] = "%%% not base64".into();
    unauthorized(h.post(&m).await);
    let mut m = signed.clone();
    m["SignatureVersion"] = "3".into();
    unauthorized(h.post(&m).await);
    let mut m = signed.clone();
    m.as_object_mut().unwrap().remove("SigningCertURL");
    unauthorized(h.post(&m).await);
    // Version 1 signature presented as version 2.
    let mut m = h.notification(&bounce_event(), 1);
    m["SignatureVersion"] = "2".into();
    unauthorized(h.post(&m).await);
    let body = b"not json".to_vec();
    let headers = HeaderMap::new();
    let req = InboundWebhook {
        headers: &headers,
        body: &body,
        now: now(),
    };
    unauthorized(ses::parse(&config(&[]), &req, &h.ctx).await);
}

#[tokio::test]
async fn certificates_from_elsewhere_are_refused_without_fetching() {
    let h = Harness::start().await;
    for url in [
        "https://evil.example/cert.pem".to_string(),
        "http://sns.us-east-1.amazonaws.com.evil.com/x.pem".to_string(),
        "https://sns.us-east-1.amazonaws.com.evil.com/x.pem".to_string(),
        // Our own server, but outside the allowed prefix.
        format!("{}/other/cert.pem", h.base),
        // Allowed prefix, but not a certificate path.
        format!("{}/sns/cert.txt", h.base),
    ] {
        let mut m = h.notification(&bounce_event(), 2);
        m["SigningCertURL"] = url.clone().into();
        // The URL is not signed: the refusal must come from the policy, before any fetch (a
        // fetch of the outside hosts would fail as Upstream here).
        let why = unauthorized(h.post(&m).await);
        assert!(why.contains("SigningCertURL"), "{url}: {why}");
    }
    assert!(h.hits().is_empty(), "nothing fetched: {:?}", h.hits());
}

#[tokio::test]
async fn an_allowed_but_missing_certificate_is_upstream() {
    let h = Harness::start().await;
    let mut m = h.notification(&bounce_event(), 2);
    m["SigningCertURL"] = format!("{}/sns/gone.pem", h.base).into();
    assert!(matches!(h.post(&m).await, Err(WebhookError::Upstream(_))));
    assert_eq!(h.hits(), ["/sns/gone.pem"]);
}

#[tokio::test]
async fn stale_or_future_timestamps_are_refused_before_fetching() {
    let h = Harness::start().await;
    let m = h.notification(&bounce_event(), 2);
    let hour = 60 * 60 * 1000;
    let why = unauthorized(
        h.post_at(&config(&[TOPIC]), &m, ms(SNS_TIME) + hour + 1)
            .await,
    );
    assert!(why.contains("Timestamp"), "{why}");
    unauthorized(
        h.post_at(&config(&[TOPIC]), &m, ms(SNS_TIME) - 10 * 60 * 1000)
            .await,
    );
    assert!(h.hits().is_empty());
    // Within the hour SNS may keep retrying, it is accepted.
    assert!(
        h.post_at(&config(&[TOPIC]), &m, ms(SNS_TIME) + hour)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn subscription_confirmation_visits_the_subscribe_url() {
    let h = Harness::start().await;
    let m = h.confirmation("SubscriptionConfirmation");
    match h.post(&m).await {
        Ok(WebhookOutcome::SubscriptionConfirmed { topic_arn }) => assert_eq!(topic_arn, TOPIC),
        other => panic!("expected a confirmation, got {other:?}"),
    }
    let hits = h.hits();
    assert_eq!(hits.len(), 2, "{hits:?}");
    assert_eq!(hits[0], "/sns/cert.pem");
    assert!(
        hits[1].starts_with("/sns/confirm?Action=ConfirmSubscription&TopicArn=")
            && hits[1].ends_with("&Token=2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92768dd60a747ba6f3beb71854e285d6ad02428b09ceece29417f1f02d609c582afbacc99c583a916b9981dd2728f4ae6fdb82efd087cc3b7849e05798d2d2785c03b0879594eeac82c01f235d0e717736"),
        "{}",
        hits[1]
    );
}

#[tokio::test]
async fn a_failing_subscribe_url_is_upstream_and_a_foreign_one_is_never_visited() {
    let h = Harness::start().await;
    *h.sns.confirm_status.lock().unwrap() = StatusCode::INTERNAL_SERVER_ERROR;
    let m = h.confirmation("SubscriptionConfirmation");
    assert!(matches!(h.post(&m).await, Err(WebhookError::Upstream(_))));

    // A signed SubscribeURL outside the policy is not followed.
    let mut m = h.confirmation("SubscriptionConfirmation");
    m["SubscribeURL"] = format!("{}/elsewhere/confirm?Token=1", h.base).into();
    sign(&mut m, 1);
    let why = unauthorized(h.post(&m).await);
    assert!(why.contains("SubscribeURL"), "{why}");
    assert!(!h.hits().iter().any(|u| u.starts_with("/elsewhere")));

    // A changed SubscribeURL breaks the signature: it is signed for confirmations.
    let mut m = h.confirmation("SubscriptionConfirmation");
    m["SubscribeURL"] = format!("{}/sns/confirm?Token=other", h.base).into();
    unauthorized(h.post(&m).await);
}

#[tokio::test]
async fn unsubscribe_confirmation_is_verified_and_changes_nothing() {
    let h = Harness::start().await;
    let m = h.confirmation("UnsubscribeConfirmation");
    assert!(matches!(h.post(&m).await, Ok(WebhookOutcome::Events(e)) if e.is_empty()));
    assert_eq!(
        h.hits(),
        ["/sns/cert.pem"],
        "the SubscribeURL is not visited"
    );
    let mut m = h.confirmation("UnsubscribeConfirmation");
    m["Token"] = "forged".into();
    unauthorized(h.post(&m).await);
}

#[tokio::test]
async fn topics_outside_sns_topic_arns_are_refused() {
    let h = Harness::start().await;
    let m = h.notification(&bounce_event(), 2);
    let other = config(&["arn:aws:sns:us-east-1:123456789012:someone-elses"]);
    let why = unauthorized(h.post_at(&other, &m, now()).await);
    assert!(why.contains("sns_topic_arns"), "{why}");
    let c = h.confirmation("SubscriptionConfirmation");
    unauthorized(h.post_at(&other, &c, now()).await);
    assert!(h.hits().is_empty(), "refused before any fetch");
    // No list: any topic SNS signed for.
    assert!(h.post_at(&config(&[]), &m, now()).await.is_ok());
}

#[tokio::test]
async fn a_message_type_header_that_contradicts_the_body_is_refused() {
    let h = Harness::start().await;
    let m = h.notification(&bounce_event(), 2);
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-amz-sns-message-type",
        "SubscriptionConfirmation".parse().unwrap(),
    );
    let body = serde_json::to_vec(&m).unwrap();
    let req = InboundWebhook {
        headers: &headers,
        body: &body,
        now: now(),
    };
    let why = unauthorized(ses::parse(&config(&[TOPIC]), &req, &h.ctx).await);
    assert!(why.contains("x-amz-sns-message-type"), "{why}");
}

#[tokio::test]
async fn an_unreadable_config_is_not_configured() {
    let h = Harness::start().await;
    let m = h.notification(&bounce_event(), 2);
    for bad in [json!(null), json!({"sns_topic_arns": TOPIC})] {
        assert!(matches!(
            h.post_at(&bad, &m, now()).await,
            Err(WebhookError::NotConfigured(_))
        ));
    }
}

#[test]
fn sns_topic_arns_are_validated() {
    let kind = courierx_providers::kind("ses").unwrap();
    let base = json!({"region": "eu-west-1", "access_key_id": "AKIDEXAMPLE0000001",
                      "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"});
    let with = |arns: Value| {
        let mut c = base.clone();
        c["sns_topic_arns"] = arns;
        (kind.validate)(&c)
    };
    let ok = with(json!([
        "arn:aws:sns:eu-west-1:123456789012:ses-events",
        "arn:aws-cn:sns:cn-north-1:123456789012:ses_events.fifo"
    ]))
    .unwrap();
    assert_eq!(
        ok["sns_topic_arns"][1],
        "arn:aws-cn:sns:cn-north-1:123456789012:ses_events.fifo"
    );
    let fields: Vec<String> = with(json!([
        "arn:aws:sns:eu-west-1:123456789012:ok",
        "arn:aws:sqs:eu-west-1:123456789012:queue",
        "arn:aws:sns:eu-west-1:1234:short-account",
        "arn:aws:sns:eu-west-1:123456789012:",
        "arn:aws:sns:eu-west-1:123456789012:has space",
    ]))
    .unwrap_err()
    .0
    .into_iter()
    .map(|e| e.field)
    .collect();
    assert_eq!(
        fields,
        [
            "config.sns_topic_arns[1]",
            "config.sns_topic_arns[2]",
            "config.sns_topic_arns[3]",
            "config.sns_topic_arns[4]"
        ]
    );
    // Absent or empty: not written back, as before the field existed.
    assert!(with(json!([])).unwrap().get("sns_topic_arns").is_none());
}
