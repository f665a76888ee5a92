//! Postmark against a local server that speaks its API: `X-Postmark-Server-Token`, JSON answers
//! with `ErrorCode` (422 for message errors, 401 with ErrorCode 10 for a bad token).

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use courierx_domain::{Mailbox, MessageId};
use courierx_providers::{EmailProvider, OutboundEmail, SendError};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const TOKEN: &str = "pm-server-token-1f2e3d4c";

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
    /// Answer for the next authenticated request instead of the normal success.
    next: Arc<Mutex<Option<(u16, Value)>>>,
}

impl Mock {
    fn fail_next(&self, status: u16, body: Value) {
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

/// Behaves like api.postmarkapp.com for `/email` and `/server`.
async fn postmark(State(m): State<Mock>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let seen = Seen {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    m.seen.lock().unwrap().push(seen.clone());
    let (status, body) = if seen
        .headers
        .get("x-postmark-server-token")
        .and_then(|v| v.to_str().ok())
        != Some(TOKEN)
    {
        (
            401,
            json!({"ErrorCode": 10,
                "Message": "The Server Token you provided in the X-Postmark-Server-Token request header was invalid. Please verify that you are using a valid token."}),
        )
    } else if let Some(r) = m.next.lock().unwrap().take() {
        r
    } else {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("POST", "/email") => (
                200,
                json!({"To": "bob@example.test", "SubmittedAt": "2026-11-02T10:00:00.0000000Z",
                    "MessageID": "b7bc2f4a-e38e-4336-af7d-e6c392c2f817", "ErrorCode": 0, "Message": "OK"}),
            ),
            ("GET", "/server") => (
                200,
                json!({"ID": 1, "Name": "Production", "ApiTokens": [TOKEN], "Color": "red"}),
            ),
            _ => (404, json!({"ErrorCode": 404, "Message": "not found"})),
        }
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn start() -> (Mock, String) {
    let mock = Mock::default();
    let app = Router::new().fallback(postmark).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, format!("http://{addr}"))
}

fn provider(base: &str, token: &str) -> Arc<dyn EmailProvider> {
    let kind = courierx_providers::kind("postmark").unwrap();
    (kind.build)(&json!({"server_token": token, "base_url": base, "message_stream": "broadcast"}))
        .unwrap()
}

fn email() -> OutboundEmail {
    OutboundEmail {
        message_id: MessageId::new(),
        created_at: 1_700_000_000_000,
        from: Mailbox::parse("Acme Support <noreply@acme.test>").unwrap(),
        to: vec![
            Mailbox::parse("Bob <bob@example.test>").unwrap(),
            Mailbox::parse("dave@example.test").unwrap(),
        ],
        cc: vec![Mailbox::parse("carol@example.test").unwrap()],
        bcc: vec![Mailbox::parse("hidden@example.test").unwrap()],
        reply_to: Some(Mailbox::parse("help@acme.test").unwrap()),
        subject: "Your receipt".into(),
        html: Some("<p>Thanks</p>".into()),
        text: Some("Thanks".into()),
        headers: vec![("X-Order".into(), "1042".into())],
        tags: vec!["receipt".into(), "billing".into()],
        metadata: json!({"order": 1042, "region": "eu"})
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
async fn sends_the_documented_request_and_returns_message_id() {
    let (mock, base) = start().await;
    let receipt = provider(&base, TOKEN).send(&email()).await.unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("b7bc2f4a-e38e-4336-af7d-e6c392c2f817")
    );

    let req = mock.last();
    assert_eq!((req.method, req.path.as_str()), (Method::POST, "/email"));
    assert_eq!(req.headers["x-postmark-server-token"], TOKEN);
    assert_eq!(req.headers["accept"], "application/json");
    assert_eq!(req.headers["content-type"], "application/json");
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({
            "From": "Acme Support <noreply@acme.test>",
            "To": "Bob <bob@example.test>, dave@example.test",
            "Cc": "carol@example.test",
            "Bcc": "hidden@example.test",
            "ReplyTo": "help@acme.test",
            "Subject": "Your receipt",
            "HtmlBody": "<p>Thanks</p>",
            "TextBody": "Thanks",
            "Headers": [{"Name": "X-Order", "Value": "1042"}],
            "Tag": "receipt",
            "Metadata": {"order": "1042", "region": "eu"},
            "MessageStream": "broadcast",
        })
    );
}

#[tokio::test]
async fn more_than_fifty_recipients_in_one_field_is_refused_before_sending() {
    let (mock, base) = start().await;
    let mut e = email();
    e.bcc = (0..51)
        .map(|i| Mailbox::parse(&format!("r{i}@example.test")).unwrap())
        .collect();
    let err = provider(&base, TOKEN).send(&e).await.unwrap_err();
    assert_eq!(kind_of(&err), "permanent");
    assert!(err.to_string().contains("50 Bcc"), "{err}");
    assert!(mock.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn error_codes_map_to_the_right_kind() {
    let (mock, base) = start().await;
    let p = provider(&base, TOKEN);
    let cases = [
        (
            422,
            json!({"ErrorCode": 300, "Message": "Invalid 'To' address: 'bob@'."}),
            "permanent",
            "postmark 422 (ErrorCode 300): Invalid 'To' address: 'bob@'.",
        ),
        (
            422,
            json!({"ErrorCode": 406, "Message": "You tried to send to recipient(s) that have been marked as inactive."}),
            "permanent",
            "postmark 422 (ErrorCode 406): You tried to send",
        ),
        (
            422,
            json!({"ErrorCode": 405, "Message": "Not allowed to send. You have run out of credits."}),
            "down",
            "postmark 422 (ErrorCode 405)",
        ),
        (
            429,
            json!({"ErrorCode": 429, "Message": "Rate limit exceeded"}),
            "transient",
            "postmark 429 (ErrorCode 429): Rate limit exceeded",
        ),
        (
            500,
            json!({"ErrorCode": 0, "Message": "Internal server error"}),
            "transient",
            "postmark 500",
        ),
        (
            503,
            json!({"ErrorCode": 100, "Message": "Maintenance"}),
            "transient",
            "postmark 503 (ErrorCode 100): Maintenance",
        ),
    ];
    for (status, body, kind, text) in cases {
        mock.fail_next(status, body);
        let err = p.send(&email()).await.unwrap_err();
        assert_eq!(kind_of(&err), kind, "{status}: {err}");
        assert!(err.to_string().starts_with(text), "{err}");
    }
}

#[tokio::test]
async fn a_bad_token_is_provider_down_and_never_quoted() {
    let (mock, base) = start().await;
    let wrong = "pm-wrong-token-9a8b7c";
    let err = provider(&base, wrong).send(&email()).await.unwrap_err();
    assert_eq!(kind_of(&err), "down", "{err}");
    assert!(
        err.to_string()
            .starts_with("postmark 401 (ErrorCode 10): The Server Token"),
        "{err}"
    );
    assert!(!err.to_string().contains(wrong));

    mock.fail_next(
        422,
        json!({"ErrorCode": 300, "Message": format!("token {TOKEN} cannot send from this address")}),
    );
    let err = provider(&base, TOKEN).send(&email()).await.unwrap_err();
    assert!(!err.to_string().contains(TOKEN), "{err}");
}

#[tokio::test]
async fn health_reads_the_server() {
    let (mock, base) = start().await;
    let ok = provider(&base, TOKEN).health().await;
    assert!(ok.healthy, "{}", ok.detail);
    assert!(ok.detail.contains("Production"), "{}", ok.detail);
    let req = mock.last();
    assert_eq!((req.method, req.path.as_str()), (Method::GET, "/server"));
    assert_eq!(req.headers["accept"], "application/json");

    let bad = provider(&base, "pm-nope").health().await;
    assert!(!bad.healthy);
    assert!(
        bad.detail.starts_with("postmark 401 (ErrorCode 10)"),
        "{}",
        bad.detail
    );
}

#[test]
fn validate_names_the_bad_fields_and_fills_defaults() {
    let kind = courierx_providers::kind("postmark").unwrap();
    assert_eq!(
        kind.secret_fields,
        ["server_token", "webhook_password", "webhook_header_value"]
    );
    let ok = (kind.validate)(&json!({"server_token": TOKEN})).unwrap();
    assert_eq!(
        ok,
        json!({"server_token": TOKEN, "message_stream": "outbound", "base_url": null, "timeout_ms": 10000})
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
        fields(json!({"message_stream": "bad stream", "base_url": "https://u:p@x.test"})),
        [
            "config.server_token",
            "config.message_stream",
            "config.base_url"
        ]
    );
    assert_eq!(
        fields(json!({"server_token": TOKEN, "timeout_ms": 999_999})),
        ["config.timeout_ms"]
    );
    assert_eq!(
        fields(json!({"server_token": TOKEN, "stream": "x"})),
        ["config"]
    );
}
