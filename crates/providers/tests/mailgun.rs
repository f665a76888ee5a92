//! Mailgun against a local server that speaks its API: HTTP Basic `api:<key>`, multipart
//! `messages.mime` (parsed here as Mailgun would), `{"id":"<…>","message":"Queued. Thank you."}`.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use courierx_domain::{Mailbox, MessageId};
use courierx_providers::{EmailProvider, OutboundEmail, SendError};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};

const KEY: &str = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0";
const DOMAIN: &str = "mg.acme.test";

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
    next: Arc<Mutex<Option<(u16, String)>>>,
    domain_state: Arc<Mutex<&'static str>>,
}

impl Mock {
    fn fail_next(&self, status: u16, body: &str) {
        *self.next.lock().unwrap() = Some((status, body.to_string()));
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

/// Behaves like api.mailgun.net for `messages.mime` and the v4 domain lookup.
async fn mailgun(State(m): State<Mock>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let seen = Seen {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    m.seen.lock().unwrap().push(seen.clone());
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("api:{KEY}"))
    );
    if seen
        .headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        != Some(&basic)
    {
        // Mailgun answers a bad key in plain text.
        return (StatusCode::UNAUTHORIZED, "Forbidden").into_response();
    }
    if let Some((status, body)) = m.next.lock().unwrap().take() {
        return (StatusCode::from_u16(status).unwrap(), body).into_response();
    }
    let (status, body) = match (seen.method.as_str(), seen.path.as_str()) {
        ("POST", p) if p == format!("/v3/{DOMAIN}/messages.mime") => (
            200,
            json!({"id": "<20261102100000.1.ABCDEF@mg.acme.test>", "message": "Queued. Thank you."}),
        ),
        ("GET", p) if p == format!("/v4/domains/{DOMAIN}") => (
            200,
            json!({"domain": {"name": DOMAIN, "state": *m.domain_state.lock().unwrap(),
                "type": "custom", "spam_action": "disabled"},
                "receiving_dns_records": [], "sending_dns_records": []}),
        ),
        (_, p) if p.starts_with("/v3/") || p.starts_with("/v4/domains/") => {
            (404, json!({"message": "Domain not found"}))
        }
        _ => (404, json!({"message": "not found"})),
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn start() -> (Mock, String) {
    let mock = Mock::default();
    *mock.domain_state.lock().unwrap() = "active";
    let app = Router::new().fallback(mailgun).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, format!("http://{addr}"))
}

fn provider(base: &str, key: &str, domain: &str) -> Arc<dyn EmailProvider> {
    let kind = courierx_providers::kind("mailgun").unwrap();
    (kind.build)(&json!({"domain": domain, "api_key": key, "region": "eu", "base_url": base}))
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
        reply_to: None,
        subject: "Grüße aus Köln".into(),
        html: Some("<p>Hallo</p>".into()),
        text: Some("Hallo".into()),
        headers: vec![("X-Campaign".into(), "spring".into())],
        tags: vec!["a".into(), "b".into(), "c".into(), "d".into()],
        metadata: json!({"user_id": "42", "plan": "pro"})
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

/// One form field: name, file name, content type, content.
type Field = (String, Option<String>, Option<String>, Bytes);

/// Reads the multipart body the way Mailgun's form parser would.
async fn fields(seen: &Seen) -> Vec<Field> {
    let req = Request::builder()
        .header("content-type", seen.headers["content-type"].clone())
        .body(Body::from(seen.body.clone()))
        .unwrap();
    let mut form = Multipart::from_request(req, &()).await.unwrap();
    let mut out = Vec::new();
    while let Some(f) = form.next_field().await.unwrap() {
        let name = f.name().unwrap_or("").to_string();
        let file = f.file_name().map(str::to_string);
        let ctype = f.content_type().map(str::to_string);
        out.push((name, file, ctype, f.bytes().await.unwrap()));
    }
    out
}

fn values<'a>(fields: &'a [Field], name: &str) -> Vec<&'a [u8]> {
    fields
        .iter()
        .filter(|f| f.0 == name)
        .map(|f| f.3.as_ref())
        .collect()
}

#[tokio::test]
async fn posts_the_mime_as_multipart_and_strips_the_id_brackets() {
    let (mock, base) = start().await;
    let e = email();
    let receipt = provider(&base, KEY, DOMAIN).send(&e).await.unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("20261102100000.1.ABCDEF@mg.acme.test")
    );

    let req = mock.last();
    assert_eq!(req.method, Method::POST);
    assert_eq!(req.path, "/v3/mg.acme.test/messages.mime");
    assert!(
        req.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("multipart/form-data; boundary=")
    );
    let form = fields(&req).await;
    // Every envelope recipient, Bcc included (it is not in the MIME headers).
    assert_eq!(
        values(&form, "to"),
        [
            b"bob@example.test".as_slice(),
            b"carol@example.test",
            b"hidden@example.test"
        ]
    );
    // Mailgun documents at most three tags per message.
    assert_eq!(values(&form, "o:tag"), [b"a".as_slice(), b"b", b"c"]);
    assert_eq!(values(&form, "v:user_id"), [b"42".as_slice()]);
    assert_eq!(values(&form, "v:plan"), [b"pro".as_slice()]);

    let message: Vec<&Field> = form.iter().filter(|f| f.0 == "message").collect();
    assert_eq!(message.len(), 1);
    assert_eq!(message[0].1.as_deref(), Some("message.mime"));
    assert_eq!(message[0].2.as_deref(), Some("message/rfc822"));
    let mime = mail_parser::MessageParser::default()
        .parse(message[0].3.as_ref())
        .expect("MIME parses");
    assert_eq!(mime.subject(), Some("Grüße aus Köln"));
    let from = mime.from().and_then(|a| a.first()).unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("Acme"), Some("noreply@acme.test"))
    );
    assert_eq!(
        mime.to().and_then(|a| a.first()).and_then(|a| a.address()),
        Some("bob@example.test")
    );
    assert!(mime.bcc().is_none());
    assert_eq!(mime.body_text(0).as_deref(), Some("Hallo"));
    assert_eq!(mime.body_html(0).as_deref(), Some("<p>Hallo</p>"));
    assert_eq!(
        mime.header("X-Campaign").and_then(|h| h.as_text()),
        Some("spring")
    );
    assert_eq!(
        mime.message_id(),
        Some(format!("{}@acme.test", e.message_id).as_str())
    );
}

#[tokio::test]
async fn errors_map_to_the_right_kind() {
    let (mock, base) = start().await;
    let p = provider(&base, KEY, DOMAIN);
    let cases = [
        (
            400,
            r#"{"message": "to parameter is not a valid address. please check documentation"}"#,
            "permanent",
            "mailgun 400: to parameter is not a valid address. please check documentation",
        ),
        (
            429,
            r#"{"message": "Too many requests"}"#,
            "transient",
            "mailgun 429: Too many requests",
        ),
        (
            500,
            r#"{"message": "Internal Server Error"}"#,
            "transient",
            "mailgun 500: Internal Server Error",
        ),
        (
            403,
            r#"{"message": "Domain mg.acme.test is not allowed to send: account disabled"}"#,
            "down",
            "mailgun 403: Domain mg.acme.test is not allowed to send",
        ),
    ];
    for (status, body, kind, text) in cases {
        mock.fail_next(status, body);
        let err = p.send(&email()).await.unwrap_err();
        assert_eq!(kind_of(&err), kind, "{status}: {err}");
        assert!(err.to_string().starts_with(text), "{err}");
    }

    // A domain the account does not have: the config is wrong, not the message.
    let err = provider(&base, KEY, "other.test")
        .send(&email())
        .await
        .unwrap_err();
    assert_eq!(kind_of(&err), "down", "{err}");
    assert_eq!(err.to_string(), "mailgun 404: Domain not found");
}

#[tokio::test]
async fn a_bad_key_is_provider_down_and_never_quoted() {
    let (mock, base) = start().await;
    let wrong = "key-wrong-0000";
    let err = provider(&base, wrong, DOMAIN)
        .send(&email())
        .await
        .unwrap_err();
    assert_eq!(kind_of(&err), "down", "{err}");
    assert_eq!(err.to_string(), "mailgun 401: Forbidden");

    mock.fail_next(400, &format!(r#"{{"message": "bad api:{KEY}"}}"#));
    let err = provider(&base, KEY, DOMAIN)
        .send(&email())
        .await
        .unwrap_err();
    assert!(!err.to_string().contains(KEY), "{err}");
}

#[tokio::test]
async fn health_reads_the_domain_state() {
    let (mock, base) = start().await;
    let ok = provider(&base, KEY, DOMAIN).health().await;
    assert!(ok.healthy, "{}", ok.detail);
    assert_eq!(ok.detail, "domain mg.acme.test is active");
    let req = mock.last();
    assert_eq!(
        (req.method, req.path.as_str()),
        (Method::GET, "/v4/domains/mg.acme.test")
    );

    *mock.domain_state.lock().unwrap() = "unverified";
    let unverified = provider(&base, KEY, DOMAIN).health().await;
    assert!(!unverified.healthy);
    assert_eq!(unverified.detail, "domain mg.acme.test is unverified");

    let bad = provider(&base, "key-nope", DOMAIN).health().await;
    assert!(!bad.healthy);
    assert_eq!(bad.detail, "mailgun 401: Forbidden");
}

#[test]
fn validate_names_the_bad_fields_and_fills_defaults() {
    let kind = courierx_providers::kind("mailgun").unwrap();
    assert_eq!(kind.secret_fields, ["api_key", "webhook_signing_key"]);
    let ok = (kind.validate)(&json!({"domain": "MG.Acme.test", "api_key": KEY})).unwrap();
    assert_eq!(
        ok,
        json!({"domain": "mg.acme.test", "api_key": KEY, "region": "us", "base_url": null, "timeout_ms": 10000})
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
        fields(json!({"domain": "bad domain/x", "timeout_ms": 1})),
        ["config.domain", "config.api_key", "config.timeout_ms"]
    );
    // Only the two documented regions.
    assert_eq!(
        fields(json!({"domain": DOMAIN, "api_key": KEY, "region": "ap"})),
        ["config"]
    );
}
