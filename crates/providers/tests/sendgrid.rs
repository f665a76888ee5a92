//! SendGrid against a local server that speaks v3 Mail Send: Bearer auth, 202 + `X-Message-Id`,
//! `{"errors":[…]}` bodies.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use courierx_domain::{Mailbox, MessageId};
use courierx_providers::{EmailProvider, OutboundEmail, SendError};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const KEY: &str = "SG.test-key.0123456789abcdef";

#[derive(Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// A canned answer: status, headers, body.
type Reply = (u16, Vec<(&'static str, String)>, String);

#[derive(Clone, Default)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer for the next authenticated request instead of the normal success.
    next: Arc<Mutex<Option<Reply>>>,
    delay: Arc<Mutex<Duration>>,
}

impl Mock {
    fn fail_next(&self, status: u16, body: Value) {
        *self.next.lock().unwrap() = Some((status, vec![], body.to_string()));
    }
    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a request")
    }
}

/// Behaves like api.sendgrid.com for the two endpoints CourierX uses.
async fn sendgrid(State(m): State<Mock>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let seen = Seen {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    m.seen.lock().unwrap().push(seen.clone());
    let delay = *m.delay.lock().unwrap();
    tokio::time::sleep(delay).await;
    let (status, headers, body): Reply = if seen
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        != Some(&format!("Bearer {KEY}"))
    {
        let err = json!({"errors": [{"field": null,
                "message": "The provided authorization grant is invalid, expired, or revoked"}]});
        (401, vec![], err.to_string())
    } else if let Some(r) = m.next.lock().unwrap().take() {
        r
    } else {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("POST", "/v3/mail/send") => (
                202,
                vec![("x-message-id", "sg-msg-123".into())],
                String::new(),
            ),
            ("GET", "/v3/scopes") => (
                200,
                vec![],
                json!({"scopes": ["mail.send", "alerts.read"]}).to_string(),
            ),
            _ => (
                404,
                vec![],
                json!({"errors": [{"message": "not found"}]}).to_string(),
            ),
        }
    };
    let mut resp = (StatusCode::from_u16(status).unwrap(), body).into_response();
    for (k, v) in headers {
        resp.headers_mut().insert(k, v.parse().unwrap());
    }
    resp
}

async fn start() -> (Mock, String) {
    let mock = Mock::default();
    let app = Router::new().fallback(sendgrid).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, format!("http://{addr}"))
}

fn provider(base: &str, key: &str) -> Arc<dyn EmailProvider> {
    let kind = courierx_providers::kind("sendgrid").unwrap();
    (kind.build)(&json!({"api_key": key, "base_url": format!("{base}/"), "timeout_ms": 2000}))
        .unwrap()
}

fn email() -> OutboundEmail {
    OutboundEmail {
        message_id: MessageId::new(),
        created_at: 1_700_000_000_000,
        from: Mailbox::parse("Acme <noreply@acme.test>").unwrap(),
        to: vec![Mailbox::parse("Bob <bob@example.test>").unwrap()],
        cc: vec![Mailbox::parse("carol@example.test").unwrap()],
        bcc: vec![Mailbox::parse("hidden@example.test").unwrap()],
        reply_to: Some(Mailbox::parse("support@acme.test").unwrap()),
        subject: "Grüße".into(),
        html: Some("<p>Hi</p>".into()),
        text: Some("Hi".into()),
        headers: vec![("X-Campaign".into(), "spring".into())],
        tags: vec!["welcome".into(), "onboarding".into()],
        metadata: json!({"user_id": 42, "plan": "pro"})
            .as_object()
            .unwrap()
            .clone(),
        attachments: vec![],
        idempotency_key: None,
    }
}

fn kind_of(e: &SendError) -> &'static str {
    match e {
        SendError::Transient(_) => "transient",
        SendError::Permanent(_) => "permanent",
        SendError::ProviderDown(_) => "down",
    }
}

#[tokio::test]
async fn sends_the_documented_request_and_returns_x_message_id() {
    let (mock, base) = start().await;
    let receipt = provider(&base, KEY).send(&email()).await.unwrap();
    assert_eq!(receipt.provider_message_id.as_deref(), Some("sg-msg-123"));

    let req = mock.last();
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/v3/mail/send");
    assert_eq!(req.headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body["personalizations"],
        json!([{
            "to": [{"email": "bob@example.test", "name": "Bob"}],
            "cc": [{"email": "carol@example.test"}],
            "bcc": [{"email": "hidden@example.test"}],
        }])
    );
    assert_eq!(
        body["from"],
        json!({"email": "noreply@acme.test", "name": "Acme"})
    );
    assert_eq!(body["reply_to"], json!({"email": "support@acme.test"}));
    assert_eq!(body["subject"], "Grüße");
    assert_eq!(
        body["content"],
        json!([{"type": "text/plain", "value": "Hi"}, {"type": "text/html", "value": "<p>Hi</p>"}])
    );
    assert_eq!(body["headers"], json!({"X-Campaign": "spring"}));
    assert_eq!(body["categories"], json!(["welcome", "onboarding"]));
    assert_eq!(body["custom_args"], json!({"user_id": "42", "plan": "pro"}));
}

#[tokio::test]
async fn categories_are_capped_at_ten_and_html_only_is_one_part() {
    let (mock, base) = start().await;
    let mut e = email();
    e.text = None;
    e.tags = (0..12).map(|i| format!("t{i}")).collect();
    provider(&base, KEY).send(&e).await.unwrap();
    let body: Value = serde_json::from_slice(&mock.last().body).unwrap();
    assert_eq!(body["categories"].as_array().unwrap().len(), 10);
    assert_eq!(
        body["content"],
        json!([{"type": "text/html", "value": "<p>Hi</p>"}])
    );
}

#[tokio::test]
async fn errors_map_to_the_right_kind() {
    let (mock, base) = start().await;
    let p = provider(&base, KEY);
    let cases = [
        (
            400,
            json!({"errors": [{"field": "personalizations.0.to.0.email",
                "message": "Does not contain a valid address."}]}),
            "permanent",
            "sendgrid 400: Does not contain a valid address.",
        ),
        (
            403,
            json!({"errors": [{"field": "from", "message":
                "The from address does not match a verified Sender Identity. Mail cannot be sent until this error is resolved."}]}),
            "permanent",
            "sendgrid 403: The from address does not match a verified Sender Identity.",
        ),
        (
            403,
            json!({"errors": [{"field": null, "message": "access forbidden"}]}),
            "down",
            "sendgrid 403: access forbidden",
        ),
        (
            413,
            json!({"errors": [{"field": null, "message": "Payload Too Large"}]}),
            "permanent",
            "sendgrid 413: Payload Too Large",
        ),
        (
            429,
            json!({"errors": [{"field": null, "message": "too many requests"}]}),
            "transient",
            "sendgrid 429: too many requests",
        ),
        (
            500,
            json!({"errors": [{"field": null, "message": "internal error"}]}),
            "transient",
            "sendgrid 500: internal error",
        ),
    ];
    for (status, body, kind, text) in cases {
        mock.fail_next(status, body);
        let err = p.send(&email()).await.unwrap_err();
        assert_eq!(kind_of(&err), kind, "{status}: {err}");
        assert!(err.to_string().starts_with(text), "{err}");
    }
    // A non-JSON gateway page still gives a short, useful error.
    *mock.next.lock().unwrap() = Some((503, vec![], "<html> Service Unavailable </html>".into()));
    let err = p.send(&email()).await.unwrap_err();
    assert_eq!(kind_of(&err), "transient");
    assert_eq!(
        err.to_string(),
        "sendgrid 503: <html> Service Unavailable </html>"
    );
}

#[tokio::test]
async fn a_wrong_key_means_provider_down_and_is_never_quoted() {
    let (_mock, base) = start().await;
    let wrong = "SG.wrong-key.fedcba9876543210";
    let err = provider(&base, wrong).send(&email()).await.unwrap_err();
    assert_eq!(kind_of(&err), "down");
    assert_eq!(
        err.to_string(),
        "sendgrid 401: The provided authorization grant is invalid, expired, or revoked"
    );

    // Even when the provider echoes the key back, the error string does not carry it.
    let (mock, base) = start().await;
    mock.fail_next(
        400,
        json!({"errors": [{"message": format!("key {KEY} is not allowed here")}]}),
    );
    let err = provider(&base, KEY).send(&email()).await.unwrap_err();
    assert!(!err.to_string().contains(KEY), "{err}");
    assert!(err.to_string().contains("[redacted]"), "{err}");
}

#[tokio::test]
async fn network_failures_are_transient() {
    // Nothing listens on a port just released.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = provider(&format!("http://{addr}"), KEY)
        .send(&email())
        .await
        .unwrap_err();
    assert_eq!(kind_of(&err), "transient", "{err}");
    assert!(
        err.to_string().starts_with("sendgrid: cannot connect"),
        "{err}"
    );

    let (mock, base) = start().await;
    *mock.delay.lock().unwrap() = Duration::from_millis(1500);
    let kind = courierx_providers::kind("sendgrid").unwrap();
    let p = (kind.build)(&json!({"api_key": KEY, "base_url": base, "timeout_ms": 200})).unwrap();
    let err = p.send(&email()).await.unwrap_err();
    assert_eq!(kind_of(&err), "transient", "{err}");
    assert!(err.to_string().contains("timed out"), "{err}");
}

#[tokio::test]
async fn health_checks_the_key_and_its_scope() {
    let (mock, base) = start().await;
    let ok = provider(&base, KEY).health().await;
    assert!(ok.healthy, "{}", ok.detail);
    let req = mock.last();
    assert_eq!((req.method, req.path.as_str()), (Method::GET, "/v3/scopes"));
    assert_eq!(req.headers["authorization"], format!("Bearer {KEY}"));

    mock.fail_next(200, json!({"scopes": ["alerts.read"]}));
    let narrow = provider(&base, KEY).health().await;
    assert!(!narrow.healthy);
    assert!(narrow.detail.contains("mail.send"), "{}", narrow.detail);

    let bad = provider(&base, "SG.nope").health().await;
    assert!(!bad.healthy);
    assert!(bad.detail.starts_with("sendgrid 401"), "{}", bad.detail);
}

#[test]
fn validate_names_the_bad_fields_and_fills_defaults() {
    let kind = courierx_providers::kind("sendgrid").unwrap();
    assert_eq!(kind.secret_fields, ["api_key", "webhook_signing_key"]);
    assert!(kind.delivers_externally);

    let ok = (kind.validate)(&json!({"api_key": KEY, "base_url": "https://api.eu.sendgrid.com/"}))
        .unwrap();
    assert_eq!(
        ok,
        json!({"api_key": KEY, "base_url": "https://api.eu.sendgrid.com", "timeout_ms": 10000})
    );

    let fields = |v: Value| -> Vec<String> {
        (kind.validate)(&v)
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.field)
            .collect()
    };
    assert_eq!(
        fields(json!({"base_url": "ftp://x.test", "timeout_ms": 5})),
        ["config.api_key", "config.base_url", "config.timeout_ms"]
    );
    assert_eq!(fields(json!({"api_key": "has space"})), ["config.api_key"]);
    assert_eq!(fields(json!({"api_key": KEY, "apikey": "x"})), ["config"]);
    assert!((kind.build)(&json!({})).is_err());
}
