//! SES against a local server that speaks the SES v2 API and checks SigV4 the way AWS does: it
//! recomputes the signature from the request (own HMAC code, not aws-sigv4) and answers 403
//! `SignatureDoesNotMatch` when it differs.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use courierx_domain::{Mailbox, MessageId};
use courierx_providers::{EmailProvider, OutboundEmail, SendError};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::{Arc, Mutex};

const AKID: &str = "AKIDEXAMPLE0000001";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
const SESSION: &str = "FQoGZXIvYXdzEXAMPLESESSIONTOKEN";
const REGION: &str = "eu-west-1";

#[derive(Clone)]
struct Seen {
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Bytes,
}

/// An SES error answer: status, `x-amzn-ErrorType`, message.
type Failure = (u16, Option<&'static str>, String);

#[derive(Clone, Default)]
struct Mock {
    seen: Arc<Mutex<Vec<Seen>>>,
    /// Answer for the next correctly signed request instead of the normal success.
    next: Arc<Mutex<Option<Failure>>>,
    sending_enabled: Arc<Mutex<bool>>,
}

impl Mock {
    fn fail_next(&self, status: u16, kind: Option<&'static str>, message: &str) {
        *self.next.lock().unwrap() = Some((status, kind, message.to_string()));
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

fn hmac(key: &[u8], data: &str) -> Vec<u8> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key).unwrap();
    Mac::update(&mut mac, data.as_bytes());
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Checks the `Authorization` header as AWS would: shape, scope, signed headers, then the
/// signature itself over the canonical request. `Err` carries the AWS error type.
fn verify_sigv4(req: &Seen) -> Result<(), &'static str> {
    let header = |name: &str| req.headers.get(name).and_then(|v| v.to_str().ok());
    let auth = header("authorization").ok_or("MissingAuthenticationToken")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("IncompleteSignature")?;
    let mut credential = "";
    let mut signed = "";
    let mut signature = "";
    for part in rest.split(", ") {
        match part.split_once('=') {
            Some(("Credential", v)) => credential = v,
            Some(("SignedHeaders", v)) => signed = v,
            Some(("Signature", v)) => signature = v,
            _ => return Err("IncompleteSignature"),
        }
    }
    let scope: Vec<&str> = credential.split('/').collect();
    let amz_date = header("x-amz-date").ok_or("IncompleteSignature")?;
    if scope.len() != 5
        || scope[2] != REGION
        || scope[3] != "ses"
        || scope[4] != "aws4_request"
        || !amz_date.starts_with(scope[1])
        || signature.len() != 64
        || !signature.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return Err("IncompleteSignature");
    }
    if scope[0] != AKID {
        return Err("UnrecognizedClientException");
    }
    let names: Vec<&str> = signed.split(';').collect();
    let token_signed = names.contains(&"x-amz-security-token");
    if !names.contains(&"host")
        || !names.contains(&"x-amz-date")
        || header("x-amz-security-token").is_some() != token_signed
    {
        return Err("IncompleteSignature");
    }
    let mut headers = Vec::new();
    for name in &names {
        headers.push((*name, header(name).ok_or("IncompleteSignature")?));
    }
    let canonical = canonical_request(req.method.as_str(), &req.path, &headers, &req.body);
    if sigv4_signature(SECRET, amz_date, REGION, "ses", &canonical) != signature {
        return Err("SignatureDoesNotMatch");
    }
    Ok(())
}

/// SigV4's canonical request for a request without a query string; `headers` are the signed
/// ones, lower-case and sorted.
fn canonical_request(method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> String {
    let mut out = format!("{method}\n{path}\n\n");
    for (name, value) in headers {
        out += &format!("{name}:{}\n", value.trim());
    }
    let signed: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    out + &format!("\n{}\n{}", signed.join(";"), sha256_hex(body))
}

fn sigv4_signature(
    secret: &str,
    amz_date: &str,
    region: &str,
    service: &str,
    creq: &str,
) -> String {
    let date = &amz_date[..8];
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{date}/{region}/{service}/aws4_request\n{}",
        sha256_hex(creq.as_bytes())
    );
    let mut key = hmac(format!("AWS4{secret}").as_bytes(), date);
    for part in [region, service, "aws4_request"] {
        key = hmac(&key, part);
    }
    hex::encode(hmac(&key, &string_to_sign))
}

/// The checker above is only worth something if it is right: AWS's `get-vanilla` test vector.
#[test]
fn the_signature_checker_reproduces_the_aws_test_vector() {
    let creq = canonical_request(
        "GET",
        "/",
        &[
            ("host", "example.amazonaws.com"),
            ("x-amz-date", "20150830T123600Z"),
        ],
        b"",
    );
    assert_eq!(
        sha256_hex(creq.as_bytes()),
        "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63"
    );
    assert_eq!(
        sigv4_signature(SECRET, "20150830T123600Z", "us-east-1", "service", &creq),
        "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"
    );
}

fn aws_error(status: u16, kind: Option<&str>, message: &str) -> Response {
    let mut resp = (
        StatusCode::from_u16(status).unwrap(),
        axum::Json(json!({ "message": message })),
    )
        .into_response();
    if let Some(k) = kind {
        let value = format!("{k}:http://internal.amazon.com/coral/com.amazonaws.sesv2/");
        resp.headers_mut()
            .insert("x-amzn-errortype", value.parse().unwrap());
    }
    resp
}

/// Behaves like email.eu-west-1.amazonaws.com for SendEmail and GetAccount.
async fn ses(State(m): State<Mock>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let seen = Seen {
        method: parts.method,
        path: parts.uri.path().to_string(),
        headers: parts.headers,
        body,
    };
    m.seen.lock().unwrap().push(seen.clone());
    match verify_sigv4(&seen) {
        Err("SignatureDoesNotMatch") => {
            return aws_error(
                403,
                Some("SignatureDoesNotMatch"),
                "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method.",
            );
        }
        Err(kind) => {
            return aws_error(
                403,
                Some(kind),
                "The security token included in the request is invalid.",
            );
        }
        Ok(()) => {}
    }
    if let Some((status, kind, message)) = m.next.lock().unwrap().take() {
        return aws_error(status, kind, &message);
    }
    match (seen.method.as_str(), seen.path.as_str()) {
        ("POST", "/v2/email/outbound-emails") => axum::Json(
            json!({"MessageId": "010201912345678a-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901-000000"}),
        )
        .into_response(),
        ("GET", "/v2/email/account") => axum::Json(json!({
            "DedicatedIpAutoWarmupEnabled": false,
            "EnforcementStatus": "HEALTHY",
            "ProductionAccessEnabled": true,
            "SendQuota": {"Max24HourSend": 50000.0, "MaxSendRate": 14.0, "SentLast24Hours": 1234.0},
            "SendingEnabled": *m.sending_enabled.lock().unwrap(),
        }))
        .into_response(),
        _ => aws_error(404, Some("NotFoundException"), "not found"),
    }
}

async fn start() -> (Mock, String) {
    let mock = Mock::default();
    *mock.sending_enabled.lock().unwrap() = true;
    let app = Router::new().fallback(ses).with_state(mock.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (mock, format!("http://{addr}"))
}

fn provider(base: &str, secret: &str) -> Arc<dyn EmailProvider> {
    let kind = courierx_providers::kind("ses").unwrap();
    (kind.build)(&json!({
        "region": REGION, "access_key_id": AKID, "secret_access_key": secret,
        "configuration_set": "transactional", "base_url": base,
    }))
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
        subject: "Grüße aus Köln".into(),
        html: Some("<p>Hallo</p>".into()),
        text: Some("Hallo".into()),
        headers: vec![("X-Campaign".into(), "spring".into())],
        tags: vec!["welcome mail".into()],
        metadata: json!({"tenant": "acme"}).as_object().unwrap().clone(),
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
async fn sends_signed_raw_mime_and_returns_message_id() {
    let (mock, base) = start().await;
    let e = email();
    let receipt = provider(&base, SECRET).send(&e).await.unwrap();
    assert_eq!(
        receipt.provider_message_id.as_deref(),
        Some("010201912345678a-1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901-000000")
    );

    let req = mock.last();
    assert_eq!(
        (req.method.clone(), req.path.as_str()),
        (Method::POST, "/v2/email/outbound-emails")
    );
    let auth = req.headers["authorization"].to_str().unwrap();
    let date = &req.headers["x-amz-date"].to_str().unwrap()[..8];
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential={AKID}/{date}/{REGION}/ses/aws4_request, \
             SignedHeaders=content-type;host;x-amz-date, Signature="
        )),
        "{auth}"
    );
    assert_eq!(verify_sigv4(&req), Ok(()));
    assert_eq!(req.headers["content-type"], "application/json");

    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(body["FromEmailAddress"], "noreply@acme.test");
    assert_eq!(
        body["Destination"],
        json!({"ToAddresses": ["bob@example.test"], "CcAddresses": ["carol@example.test"],
               "BccAddresses": ["hidden@example.test"]})
    );
    assert_eq!(body["ConfigurationSetName"], "transactional");
    assert_eq!(
        body["EmailTags"],
        json!([{"Name": "welcome_mail", "Value": "true"}, {"Name": "tenant", "Value": "acme"}])
    );
    assert_eq!(body["Content"].as_object().unwrap().len(), 1, "Raw only");
    let raw = base64::engine::general_purpose::STANDARD
        .decode(body["Content"]["Raw"]["Data"].as_str().unwrap())
        .unwrap();
    let mime = mail_parser::MessageParser::default()
        .parse(&raw)
        .expect("MIME parses");
    assert_eq!(mime.subject(), Some("Grüße aus Köln"));
    let from = mime.from().and_then(|a| a.first()).unwrap();
    assert_eq!(
        (from.name(), from.address()),
        (Some("Acme"), Some("noreply@acme.test"))
    );
    assert_eq!(
        mime.reply_to()
            .and_then(|a| a.first())
            .and_then(|a| a.address()),
        Some("support@acme.test")
    );
    assert!(mime.bcc().is_none(), "Bcc stays out of the headers");
    assert_eq!(mime.body_text(0).as_deref(), Some("Hallo"));
    assert_eq!(mime.body_html(0).as_deref(), Some("<p>Hallo</p>"));
    assert_eq!(
        mime.header("X-Campaign").and_then(|h| h.as_text()),
        Some("spring")
    );
    let raw = String::from_utf8(raw).unwrap();
    assert!(raw.contains("\r\n\r\n"), "blank line after the headers");
    assert!(raw.lines().all(|l| l.len() <= 1000));
}

#[tokio::test]
async fn a_session_token_is_sent_and_signed() {
    let (mock, base) = start().await;
    let kind = courierx_providers::kind("ses").unwrap();
    let p = (kind.build)(&json!({
        "region": REGION, "access_key_id": AKID, "secret_access_key": SECRET,
        "session_token": SESSION, "base_url": base,
    }))
    .unwrap();
    p.send(&email()).await.unwrap();
    let req = mock.last();
    assert_eq!(req.headers["x-amz-security-token"], SESSION);
    assert!(
        req.headers["authorization"]
            .to_str()
            .unwrap()
            .contains("SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,")
    );
    let body: Value = serde_json::from_slice(&req.body).unwrap();
    assert!(body.get("ConfigurationSetName").is_none());
}

#[tokio::test]
async fn errors_map_to_the_right_kind() {
    let (mock, base) = start().await;
    let p = provider(&base, SECRET);
    let cases = [
        (
            400,
            Some("MessageRejected"),
            "Email address is not verified. The following identities failed the check in region EU-WEST-1: noreply@acme.test",
            "permanent",
        ),
        (
            400,
            Some("BadRequestException"),
            "Missing required header 'From'.",
            "permanent",
        ),
        (
            429,
            Some("TooManyRequestsException"),
            "Maximum sending rate exceeded.",
            "transient",
        ),
        (
            400,
            Some("LimitExceededException"),
            "Daily message quota exceeded.",
            "transient",
        ),
        (
            400,
            Some("AccountSuspendedException"),
            "Your account has been suspended.",
            "down",
        ),
        (
            400,
            Some("SendingPausedException"),
            "Sending is paused for this account.",
            "down",
        ),
        (
            500,
            Some("InternalFailure"),
            "We encountered an internal error.",
            "transient",
        ),
    ];
    for (status, kind, message, expected) in cases {
        mock.fail_next(status, kind, message);
        let err = p.send(&email()).await.unwrap_err();
        assert_eq!(kind_of(&err), expected, "{kind:?}: {err}");
        assert_eq!(
            err.to_string(),
            format!("ses {status} {}: {message}", kind.unwrap())
        );
    }
    // A gateway answer without an AWS error type.
    mock.fail_next(503, None, "Service Unavailable");
    let err = p.send(&email()).await.unwrap_err();
    assert_eq!(kind_of(&err), "transient", "{err}");
    assert_eq!(err.to_string(), "ses 503: Service Unavailable");
}

#[tokio::test]
async fn a_wrong_secret_fails_the_signature_check_and_is_never_quoted() {
    let (mock, base) = start().await;
    let wrong = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYWRONGKEY";
    let err = provider(&base, wrong).send(&email()).await.unwrap_err();
    assert_eq!(kind_of(&err), "down", "{err}");
    assert!(
        err.to_string()
            .starts_with("ses 403 SignatureDoesNotMatch: The request signature"),
        "{err}"
    );
    assert!(!err.to_string().contains(wrong));
    assert_eq!(verify_sigv4(&mock.last()), Err("SignatureDoesNotMatch"));

    mock.fail_next(
        400,
        Some("BadRequestException"),
        &format!("bad secret {SECRET}"),
    );
    let err = provider(&base, SECRET).send(&email()).await.unwrap_err();
    assert!(!err.to_string().contains(SECRET), "{err}");
}

#[tokio::test]
async fn more_than_fifty_recipients_are_refused_before_sending() {
    let (mock, base) = start().await;
    let mut e = email();
    e.to = (0..50)
        .map(|i| Mailbox::parse(&format!("r{i}@example.test")).unwrap())
        .collect();
    let err = provider(&base, SECRET).send(&e).await.unwrap_err();
    assert_eq!(kind_of(&err), "permanent");
    assert!(mock.seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn health_reports_the_send_quota() {
    let (mock, base) = start().await;
    let ok = provider(&base, SECRET).health().await;
    assert!(ok.healthy, "{}", ok.detail);
    assert_eq!(
        ok.detail,
        "sending enabled; SendQuota: Max24HourSend 50000, MaxSendRate 14/s, SentLast24Hours 1234"
    );
    let req = mock.last();
    assert_eq!(
        (req.method.clone(), req.path.as_str()),
        (Method::GET, "/v2/email/account")
    );
    assert!(
        req.headers["authorization"]
            .to_str()
            .unwrap()
            .contains("SignedHeaders=host;x-amz-date,")
    );

    *mock.sending_enabled.lock().unwrap() = false;
    let paused = provider(&base, SECRET).health().await;
    assert!(!paused.healthy);
    assert!(
        paused.detail.starts_with("sending is paused"),
        "{}",
        paused.detail
    );

    let bad = provider(&base, "not-the-secret").health().await;
    assert!(!bad.healthy);
    assert!(
        bad.detail.starts_with("ses 403 SignatureDoesNotMatch"),
        "{}",
        bad.detail
    );
}

#[test]
fn validate_names_the_bad_fields_and_fills_defaults() {
    let kind = courierx_providers::kind("ses").unwrap();
    assert_eq!(kind.secret_fields, ["secret_access_key", "session_token"]);
    let ok = (kind.validate)(&json!({
        "region": "us-gov-west-1", "access_key_id": AKID, "secret_access_key": SECRET,
        "session_token": "",
    }))
    .unwrap();
    assert_eq!(
        ok,
        json!({"region": "us-gov-west-1", "access_key_id": AKID, "secret_access_key": SECRET,
               "session_token": null, "configuration_set": null, "base_url": null,
               "timeout_ms": 10000})
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
        fields(json!({"configuration_set": "has space"})),
        [
            "config.region",
            "config.access_key_id",
            "config.secret_access_key",
            "config.configuration_set"
        ]
    );
    assert_eq!(
        fields(
            json!({"region": "EU_WEST", "access_key_id": AKID, "secret_access_key": SECRET,
                      "base_url": "email.eu-west-1.amazonaws.com"})
        ),
        ["config.region", "config.base_url"]
    );
    assert_eq!(
        fields(
            json!({"region": REGION, "access_key_id": AKID, "secret_access_key": SECRET,
                      "endpoint": "x"})
        ),
        ["config"]
    );
}
