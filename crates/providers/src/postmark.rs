//! Postmark: `POST /email` with the server token in `X-Postmark-Server-Token`. Errors carry a
//! Postmark `ErrorCode` that says more than the HTTP status (almost always 422).
//!
//! Event webhook (see `webhooks::postmark`): Postmark does not sign its webhooks, so the
//! webhook you add in Postmark must carry a secret that CourierX checks, configured here with
//! either or both of:
//! - `webhook_username` + `webhook_password`: HTTP Basic credentials, put into the webhook URL
//!   in Postmark as `https://<username>:<password>@<courierx host>/...` (or its Basic auth
//!   fields);
//! - `webhook_header_name` + `webhook_header_value`: a custom HTTP header added to the webhook
//!   in Postmark (e.g. `X-Webhook-Secret`).
//!
//! Each pair must be given whole. The password and header value are secrets (at least 16
//! characters). Without either pair, webhook calls are refused.

use crate::http::{self, Answer};
use crate::{
    EmailProvider, HealthReport, OutboundEmail, ProviderKind, SendError, SendReceipt, parse_config,
};
use async_trait::async_trait;
use courierx_domain::{Mailbox, ValidationErrors};
use reqwest::{RequestBuilder, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub static KIND: ProviderKind = ProviderKind {
    name: "postmark",
    secret_fields: &["server_token", "webhook_password", "webhook_header_value"],
    validate,
    build,
    delivers_externally: true,
    webhook: Some(crate::webhooks::postmark::parse),
};

const DEFAULT_BASE: &str = "https://api.postmarkapp.com";
/// Postmark's limit for each of To, Cc and Bcc.
const MAX_PER_FIELD: usize = 50;

// No Debug: the config holds credentials.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostmarkConfig {
    #[serde(default)]
    pub server_token: String,
    #[serde(default = "default_stream")]
    pub message_stream: String,
    /// The public API when absent.
    pub base_url: Option<String>,
    #[serde(default = "http::default_timeout")]
    pub timeout_ms: u64,
    /// HTTP Basic credentials Postmark's webhook calls must carry (see the module docs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_password: Option<String>,
    /// A custom header Postmark's webhook calls must carry, and its secret value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_header_value: Option<String>,
}

/// The webhook secrets are all that authenticates Postmark's calls: refuse guessable ones.
const MIN_WEBHOOK_SECRET: usize = 16;

fn default_stream() -> String {
    "outbound".into()
}

fn validate(v: &Value) -> Result<Value, ValidationErrors> {
    let mut c: PostmarkConfig = parse_config(v)?;
    let mut errs = ValidationErrors::new();
    http::check_secret(&mut errs, "server_token", &c.server_token);
    let stream_ok = !c.message_stream.is_empty()
        && c.message_stream.len() <= 100
        && c.message_stream
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
    if !stream_ok {
        errs.add(
            "config.message_stream",
            "must be a message stream ID (letters, digits, - and _)",
        );
    }
    c.base_url = http::check_base_url(&mut errs, c.base_url.as_deref());
    http::check_timeout(&mut errs, c.timeout_ms);
    check_webhook_auth(&mut errs, &mut c);
    errs.into_result()?;
    serde_json::to_value(&c).map_err(|e| ValidationErrors::single("config", e.to_string()))
}

/// Blank webhook fields count as absent; each pair must be complete.
fn check_webhook_auth(errs: &mut ValidationErrors, c: &mut PostmarkConfig) {
    for f in [
        &mut c.webhook_username,
        &mut c.webhook_password,
        &mut c.webhook_header_name,
        &mut c.webhook_header_value,
    ] {
        *f = f
            .take()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
    }
    let pairs = [
        (
            "webhook_username",
            c.webhook_username.is_some(),
            "webhook_password",
            c.webhook_password.is_some(),
        ),
        (
            "webhook_header_name",
            c.webhook_header_name.is_some(),
            "webhook_header_value",
            c.webhook_header_value.is_some(),
        ),
    ];
    for (a, has_a, b, has_b) in pairs {
        if has_a && !has_b {
            errs.add(
                format!("config.{b}"),
                format!("is required when {a} is set"),
            );
        }
        if has_b && !has_a {
            errs.add(
                format!("config.{a}"),
                format!("is required when {b} is set"),
            );
        }
    }
    if let Some(u) = &c.webhook_username
        && (u.len() > 256 || !u.bytes().all(|b| b.is_ascii_graphic() && b != b':'))
    {
        errs.add(
            "config.webhook_username",
            "must be printable ASCII without spaces or colons",
        );
    }
    for (field, value) in [
        ("webhook_password", &c.webhook_password),
        ("webhook_header_value", &c.webhook_header_value),
    ] {
        let Some(v) = value else { continue };
        // A header value may hold inner spaces (`Bearer …`); a URL password may not.
        let space_ok = field == "webhook_header_value";
        if v.len() > 4096
            || !v
                .bytes()
                .all(|b| b.is_ascii_graphic() || (space_ok && b == b' '))
        {
            let what = if space_ok {
                "must be printable ASCII"
            } else {
                "must be printable ASCII without spaces"
            };
            errs.add(format!("config.{field}"), what);
        } else if v.len() < MIN_WEBHOOK_SECRET {
            errs.add(
                format!("config.{field}"),
                format!("must be at least {MIN_WEBHOOK_SECRET} characters"),
            );
        }
    }
    if let Some(n) = &c.webhook_header_name {
        if reqwest::header::HeaderName::from_bytes(n.as_bytes()).is_err() {
            errs.add(
                "config.webhook_header_name",
                "must be an HTTP header name, e.g. X-Webhook-Secret",
            );
        } else if c.webhook_username.is_some() && n.eq_ignore_ascii_case("authorization") {
            // One Authorization header cannot carry both the Basic credentials and this value.
            errs.add(
                "config.webhook_header_name",
                "cannot be Authorization when webhook_username is set",
            );
        }
    }
}

fn build(v: &Value) -> Result<Arc<dyn EmailProvider>, ValidationErrors> {
    let c: PostmarkConfig = parse_config(&validate(v)?)?;
    Ok(Arc::new(Postmark {
        client: http::client(c.timeout_ms)?,
        base: c.base_url.unwrap_or_else(|| DEFAULT_BASE.into()),
        token: c.server_token,
        stream: c.message_stream,
    }))
}

pub struct Postmark {
    client: reqwest::Client,
    base: String,
    token: String,
    stream: String,
}

fn joined(list: &[Mailbox]) -> String {
    list.iter()
        .map(Mailbox::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn request_body(email: &OutboundEmail, stream: &str) -> Result<Value, SendError> {
    for (field, list) in [("To", &email.to), ("Cc", &email.cc), ("Bcc", &email.bcc)] {
        if list.len() > MAX_PER_FIELD {
            return Err(SendError::Permanent(format!(
                "postmark accepts at most {MAX_PER_FIELD} {field} recipients, got {}",
                list.len()
            )));
        }
    }
    if email.html.is_none() && email.text.is_none() {
        return Err(SendError::Permanent("message has no body".into()));
    }
    let mut body = json!({
        "From": email.from.to_string(),
        "To": joined(&email.to),
        "Subject": email.subject,
        "MessageStream": stream,
    });
    if !email.cc.is_empty() {
        body["Cc"] = joined(&email.cc).into();
    }
    if !email.bcc.is_empty() {
        body["Bcc"] = joined(&email.bcc).into();
    }
    if let Some(r) = &email.reply_to {
        body["ReplyTo"] = r.to_string().into();
    }
    if let Some(html) = &email.html {
        body["HtmlBody"] = html.as_str().into();
    }
    if let Some(text) = &email.text {
        body["TextBody"] = text.as_str().into();
    }
    if !email.headers.is_empty() {
        body["Headers"] = email
            .headers
            .iter()
            .map(|(k, v)| json!({ "Name": k, "Value": v }))
            .collect();
    }
    // Postmark keeps one tag per message.
    if let Some(tag) = email.tags.iter().find(|t| !t.trim().is_empty()) {
        body["Tag"] = tag.as_str().into();
    }
    if !email.metadata.is_empty() {
        let meta: Map<String, Value> = http::metadata_strings(&email.metadata)
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        body["Metadata"] = Value::Object(meta);
    }
    if !email.attachments.is_empty() {
        body["Attachments"] = email
            .attachments
            .iter()
            .map(|a| {
                let mut o = json!({"Name": a.filename, "Content": crate::base64_of(a), "ContentType": a.content_type});
                if let Some(cid) = &a.content_id {
                    o["ContentID"] = format!("cid:{cid}").into();
                }
                o
            })
            .collect();
    }
    Ok(body)
}

impl Postmark {
    fn request(&self, req: RequestBuilder) -> RequestBuilder {
        req.header("X-Postmark-Server-Token", &self.token)
            .header("Accept", "application/json")
    }

    /// `status` is the HTTP status to classify by; a 200 that carries a non-zero `ErrorCode`
    /// is read as the 422 it stands for.
    fn error(&self, status: StatusCode, a: &Answer) -> SendError {
        let json = a.json();
        let code = json["ErrorCode"].as_i64();
        let message = json["Message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| a.snippet());
        let message = http::detail(&message, &[&self.token]);
        let text = match code {
            Some(c) => format!("postmark {} (ErrorCode {c}): {message}", a.status.as_u16()),
            None => format!("postmark {}: {message}", a.status.as_u16()),
        };
        match code {
            // Bad token; out of credits; account pending approval; account may not send.
            Some(10 | 405 | 412 | 413) => SendError::ProviderDown(text),
            // Maintenance; rate limit.
            Some(100 | 429) => SendError::Transient(text),
            _ => http::classify(status, text),
        }
    }
}

#[async_trait]
impl EmailProvider for Postmark {
    async fn send(&self, email: &OutboundEmail) -> Result<SendReceipt, SendError> {
        let body = request_body(email, &self.stream)?;
        let req = self.request(self.client.post(format!("{}/email", self.base)));
        let a = http::exchange("postmark", req.json(&body)).await?;
        if !a.status.is_success() {
            return Err(self.error(a.status, &a));
        }
        let json = a.json();
        if json["ErrorCode"].as_i64().unwrap_or(0) != 0 {
            return Err(self.error(StatusCode::UNPROCESSABLE_ENTITY, &a));
        }
        Ok(SendReceipt {
            provider_message_id: json["MessageID"].as_str().map(str::to_string),
            captured: None,
        })
    }

    async fn health(&self) -> HealthReport {
        let req = self.request(self.client.get(format!("{}/server", self.base)));
        let (healthy, detail) = match http::exchange("postmark", req).await {
            Err(e) => (false, e.to_string()),
            Ok(a) if a.status.is_success() => {
                let name = a.json()["Name"].as_str().unwrap_or("").to_string();
                (true, format!("server token accepted (server \"{name}\")"))
            }
            Ok(a) => (false, self.error(a.status, &a).to_string()),
        };
        HealthReport { healthy, detail }
    }
}
