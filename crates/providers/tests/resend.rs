//! Resend against a local server that speaks its API: Bearer keys, `Idempotency-Key` semantics
//! (same key and body → same id; other body → 409), `{"statusCode","name","message"}` errors.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use courierx_domain::{Mailbox, MessageId};
use courierx_providers::{EmailProvider, OutboundEmail, SendError};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

const KEY: &str = "re_full_access_5c9d8e7f";
const SENDING_ONLY_KEY: &str = "re_sending_only_1a2b3c";

#[derive(Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Idempotency key → (body, email id), as Resend keeps them for 24 hours.
    sent: Arc<Mutex<HashMap<String, (Bytes, String)>>>,
    /// Answer for the next authenticated request instead of the normal behaviour.
    next: Arc<Mutex<Option<(u16, Value)>>>,
}

impl Mock {
    fn fail_next(&self, status: u16, name: &str, message: &str) {
        let body = json!({"statusCode": status, "name": name, "message": message});
        *self.next.lock().unwrap() = Some((status, body));
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

fn error(status: u16, name: &str, message: &str) -> (u16, Value) {
    (
        status,
        json!({"statusCode": status, "name": name, "message": message}),
    )
}

/// Behaves like api.resend.com for `POST /emails` and `GET /domains`.
async fn resend(State(m): State<Mock>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let seen = Seen {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    m.seen.lock().unwrap().push(seen.clone());
    let auth = seen
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let (status, body) = if auth != format!("Bearer {KEY}")
        && auth != format!("Bearer {SENDING_ONLY_KEY}")
    {
        error(403, "invalid_api_key", "API key is invalid")
    } else if let Some(r) = m.next.lock().unwrap().take() {
        r
    } else {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("POST", "/emails") => {
                let key = seen.headers["idempotency-key"]
                    .to_str()
                    .unwrap()
                    .to_string();
                let mut sent = m.sent.lock().unwrap();
                match sent.get(&key) {
                    Some((b, id)) if *b == seen.body => (200, json!({"id": id})),
                    Some(_) => error(
                        409,
                        "invalid_idempotent_request",
                        "Same idempotency key used with a different request payload.",
                    ),
                    None => {
                        let id = format!("49a3999c-0ce1-4ea6-ab68-{:012}", sent.len());
                        sent.insert(key, (seen.body.clone(), id.clone()));
                        (200, json!({"id": id}))
                    }
                }
            }
            ("GET", "/domains") if auth == format!("Bearer {SENDING_ONLY_KEY}") => error(
                401,
                "restricted_api_key",
                "This API key is restricted to only send emails.",
            ),
            ("GET", "/domains") => (
                200,
                json!({"object": "list", "data": [{"id": "d91cd9bd", "name": "acme.test", "status": "verified"}]}),
            ),
            _ => error(404, "not_found", "The requested endpoint does not exist."),
        }
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn start() -> (Mock, String) {
    let mock = Mock::default();
    let app = Router::new().fallback(resend).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, format!("http://{addr}"))
}

fn provider(base: &str, key: &str) -> Arc<dyn EmailProvider> {
    let kind = courierx_providers::kind("resend").unwrap();
    (kind.build)(&json!({"api_key": key, "base_url": base})).unwrap()
}

fn email() -> OutboundEmail {
    OutboundEmail {
        message_id: MessageId::new(),
        created_at: 1_700_000_000_000,
        from: Mailbox::parse("Acme Team <hello@acme.test>").unwrap(),
        to: vec![Mailbox::parse("Bob <bob@example.test>").unwrap()],
        cc: vec![Mailbox::parse("carol@example.test").unwrap()],
        bcc: vec![Mailbox::parse("hidden@example.test").unwrap()],
        reply_to: Some(Mailbox::parse("support@acme.test").unwrap()),
        subject: "Welcome".into(),
        html: Some("<p>Welcome</p>".into()),
        text: Some("Welcome".into()),
        headers: vec![("X-Entity-Ref-ID".into(), "123".into())],
        tags: vec!["Spring sale!".into()],
        metadata: json!({"user id": "u-42"}).as_object().unwrap().clone(),
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
async fn sends_the_documented_request_with_an_idempotency_key() {
    let (mock, base) = start().await;
    let e = email();
    let receipt = provider(&base, KEY).send(&e).await.unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("49a3999c-0ce1-4ea6-ab68-000000000000")
    );

    let req = mock.last();
    assert_eq!((req.method, req.path.as_str()), (Method::POST, "/emails"));
    assert_eq!(req.headers["authorization"], format!("Bearer {KEY}"));
    // Without a caller key, the CourierX message id makes retries of this message dedupe.
    assert_eq!(req.headers["idempotency-key"], e.message_id.to_string());
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({
            "from": "Acme Team <hello@acme.test>",
            "to": ["Bob <bob@example.test>"],
            "cc": ["carol@example.test"],
            "bcc": ["hidden@example.test"],
            "reply_to": "support@acme.test",
            "subject": "Welcome",
            "html": "<p>Welcome</p>",
            "text": "Welcome",
            "headers": {"X-Entity-Ref-ID": "123"},
            "tags": [
                {"name": "Spring_sale_", "value": "true"},
                {"name": "user_id", "value": "u-42"},
            ],
        })
    );
}

#[tokio::test]
async fn a_retry_of_the_same_message_gets_the_same_id() {
    let (mock, base) = start().await;
    let p = provider(&base, KEY);
    let mut e = email();
    e.idempotency_key = Some("welcome-user/42".into());
    let first = p.send(&e).await.unwrap();
    let again = p.send(&e).await.unwrap();
    assert_eq!(first.provider_message_id, again.provider_message_id);
    assert_eq!(mock.last().headers["idempotency-key"], "welcome-user/42");

    // Same key, different payload: Resend refuses, and retrying cannot help.
    e.subject = "Something else".into();
    let err = p.send(&e).await.unwrap_err();
    assert_eq!(kind_of(&err), "permanent", "{err}");
    assert_eq!(
        err.to_string(),
        "resend 409 invalid_idempotent_request: Same idempotency key used with a different request payload."
    );
}

#[tokio::test]
async fn errors_map_to_the_right_kind() {
    let (mock, base) = start().await;
    let p = provider(&base, KEY);
    let cases = [
        (
            422,
            "validation_error",
            "Invalid `to` field. The email address needs to follow the `email@example.com` or `Name <email@example.com>` format.",
            "permanent",
        ),
        (
            400,
            "validation_error",
            "We found an error with one or more fields in the request.",
            "permanent",
        ),
        (
            403,
            "validation_error",
            "The acme.test domain is not verified. Please, add and verify your domain.",
            "permanent",
        ),
        (
            429,
            "rate_limit_exceeded",
            "Too many requests. Please limit the number of requests per second.",
            "transient",
        ),
        (
            429,
            "daily_quota_exceeded",
            "You have reached your daily email sending quota.",
            "transient",
        ),
        (
            409,
            "concurrent_idempotent_requests",
            "Same idempotency key used while original request is still in progress.",
            "transient",
        ),
        (
            500,
            "internal_server_error",
            "An unexpected error occurred.",
            "transient",
        ),
        (
            401,
            "missing_api_key",
            "Missing API key in the authorization header.",
            "down",
        ),
    ];
    for (status, name, message, kind) in cases {
        mock.fail_next(status, name, message);
        let err = p.send(&email()).await.unwrap_err();
        assert_eq!(kind_of(&err), kind, "{status} {name}: {err}");
        assert_eq!(
            err.to_string(),
            format!("resend {status} {name}: {message}")
        );
    }
}

#[tokio::test]
async fn an_invalid_key_is_provider_down_and_never_quoted() {
    let (mock, base) = start().await;
    let wrong = "re_wrong_key_000111";
    let err = provider(&base, wrong).send(&email()).await.unwrap_err();
    assert_eq!(kind_of(&err), "down", "{err}");
    assert_eq!(
        err.to_string(),
        "resend 403 invalid_api_key: API key is invalid"
    );

    mock.fail_next(422, "validation_error", &format!("bad key {KEY}"));
    let err = provider(&base, KEY).send(&email()).await.unwrap_err();
    assert!(!err.to_string().contains(KEY), "{err}");
}

#[tokio::test]
async fn health_accepts_full_and_sending_only_keys() {
    let (mock, base) = start().await;
    let full = provider(&base, KEY).health().await;
    assert!(full.healthy, "{}", full.detail);
    let req = mock.last();
    assert_eq!((req.method, req.path.as_str()), (Method::GET, "/domains"));

    let restricted = provider(&base, SENDING_ONLY_KEY).health().await;
    assert!(restricted.healthy, "{}", restricted.detail);
    assert!(restricted.detail.contains("sending only"));

    let bad = provider(&base, "re_nope").health().await;
    assert!(!bad.healthy);
    assert_eq!(bad.detail, "resend 403 invalid_api_key: API key is invalid");

    mock.fail_next(
        500,
        "internal_server_error",
        "An unexpected error occurred.",
    );
    assert!(!provider(&base, KEY).health().await.healthy);
}

#[test]
fn validate_names_the_bad_fields_and_fills_defaults() {
    let kind = courierx_providers::kind("resend").unwrap();
    assert_eq!(kind.secret_fields, ["api_key", "webhook_signing_key"]);
    let ok = (kind.validate)(&json!({"api_key": KEY, "timeout_ms": 5000})).unwrap();
    assert_eq!(
        ok,
        json!({"api_key": KEY, "base_url": null, "timeout_ms": 5000})
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
        fields(json!({"api_key": "", "base_url": "resend.com"})),
        ["config.api_key", "config.base_url"]
    );
    assert_eq!(fields(json!({"api_key": KEY, "region": "eu"})), ["config"]);
}
