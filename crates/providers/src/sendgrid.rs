//! Twilio SendGrid v3 Mail Send: `POST /v3/mail/send`, JSON with one personalization, Bearer key.
//! The answer is 202 with an empty body; the message id is the `X-Message-Id` header.
//!
//! Event webhook: set `webhook_signing_key` to the verification key SendGrid shows under
//! Settings > Mail Settings > Signed Event Webhook Requests (base64 DER of an ECDSA P-256
//! public key; a PEM `PUBLIC KEY` block is accepted too). Without it, event POSTs are refused.
//! See [`crate::webhooks::sendgrid`].

use crate::http::{self, Answer};
use crate::{
    EmailProvider, HealthReport, OutboundEmail, ProviderKind, SendError, SendReceipt, parse_config,
};
use async_trait::async_trait;
use courierx_domain::{Mailbox, ValidationErrors};
use serde_json::{Map, Value, json};
use std::sync::Arc;

pub static KIND: ProviderKind = ProviderKind {
    name: "sendgrid",
    secret_fields: &["api_key", "webhook_signing_key"],
    validate,
    build,
    delivers_externally: true,
    webhook: Some(crate::webhooks::sendgrid::parse),
};

const DEFAULT_BASE: &str = "https://api.sendgrid.com";
/// SendGrid's documented per-request limits.
const MAX_RECIPIENTS: usize = 1000;
const MAX_CATEGORIES: usize = 10;

fn validate(v: &Value) -> Result<Value, ValidationErrors> {
    http::validate_api_key_config(v, crate::webhooks::sendgrid::check_key)
}

fn build(v: &Value) -> Result<Arc<dyn EmailProvider>, ValidationErrors> {
    let c: http::ApiKeyConfig = parse_config(&validate(v)?)?;
    Ok(Arc::new(Sendgrid {
        client: http::client(c.timeout_ms)?,
        base: c.base_url.unwrap_or_else(|| DEFAULT_BASE.into()),
        api_key: c.api_key,
    }))
}

pub struct Sendgrid {
    client: reqwest::Client,
    base: String,
    api_key: String,
}

fn address(m: &Mailbox) -> Value {
    let mut o = json!({ "email": m.address.as_str() });
    if let Some(name) = &m.name {
        o["name"] = Value::String(name.clone());
    }
    o
}

fn addresses(list: &[Mailbox]) -> Value {
    Value::Array(list.iter().map(address).collect())
}

/// The Mail Send body. Content goes text/plain first, then text/html, as SendGrid requires.
fn request_body(email: &OutboundEmail) -> Result<Value, SendError> {
    let recipients = email.to.len() + email.cc.len() + email.bcc.len();
    if recipients > MAX_RECIPIENTS {
        return Err(SendError::Permanent(format!(
            "sendgrid accepts at most {MAX_RECIPIENTS} recipients per message, got {recipients}"
        )));
    }
    let mut content = Vec::new();
    if let Some(text) = &email.text {
        content.push(json!({ "type": "text/plain", "value": text }));
    }
    if let Some(html) = &email.html {
        content.push(json!({ "type": "text/html", "value": html }));
    }
    if content.is_empty() {
        return Err(SendError::Permanent("message has no body".into()));
    }
    let mut personalization = Map::new();
    personalization.insert("to".into(), addresses(&email.to));
    if !email.cc.is_empty() {
        personalization.insert("cc".into(), addresses(&email.cc));
    }
    if !email.bcc.is_empty() {
        personalization.insert("bcc".into(), addresses(&email.bcc));
    }
    let mut body = json!({
        "personalizations": [personalization],
        "from": address(&email.from),
        "subject": email.subject,
        "content": content,
    });
    if let Some(r) = &email.reply_to {
        body["reply_to"] = address(r);
    }
    if !email.headers.is_empty() {
        let headers: Map<String, Value> = email
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        body["headers"] = Value::Object(headers);
    }
    let categories: Vec<&String> = email
        .tags
        .iter()
        .filter(|t| !t.trim().is_empty())
        .take(MAX_CATEGORIES)
        .collect();
    if !categories.is_empty() {
        body["categories"] = json!(categories);
    }
    if !email.metadata.is_empty() {
        let args: Map<String, Value> = http::metadata_strings(&email.metadata)
            .map(|(k, v)| (k.to_string(), Value::String(v)))
            .collect();
        body["custom_args"] = Value::Object(args);
    }
    if !email.attachments.is_empty() {
        body["attachments"] = email
            .attachments
            .iter()
            .map(|a| {
                let mut o = json!({"content": crate::base64_of(a), "type": a.content_type, "filename": a.filename,
                    "disposition": if a.content_id.is_some() { "inline" } else { "attachment" }});
                if let Some(cid) = &a.content_id {
                    o["content_id"] = cid.as_str().into();
                }
                o
            })
            .collect();
    }
    Ok(body)
}

impl Sendgrid {
    /// Reads `{"errors":[{"message","field"}]}`. A 403 about the sender identity refuses this
    /// message's From address; any other 401/403 is the key or account.
    fn error(&self, a: &Answer) -> SendError {
        let json = a.json();
        let errors = json["errors"].as_array().map(Vec::as_slice).unwrap_or(&[]);
        let messages: Vec<&str> = errors
            .iter()
            .filter_map(|e| e["message"].as_str())
            .collect();
        let message = if messages.is_empty() {
            a.snippet()
        } else {
            messages.join("; ")
        };
        let text = format!(
            "sendgrid {}: {}",
            a.status.as_u16(),
            http::detail(&message, &[&self.api_key])
        );
        let sender_refused = a.status.as_u16() == 403
            && errors.iter().any(|e| {
                e["field"].as_str() == Some("from")
                    || e["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("Sender Identity"))
            });
        if sender_refused {
            SendError::Permanent(text)
        } else {
            http::classify(a.status, text)
        }
    }
}

#[async_trait]
impl EmailProvider for Sendgrid {
    async fn send(&self, email: &OutboundEmail) -> Result<SendReceipt, SendError> {
        let body = request_body(email)?;
        let req = self
            .client
            .post(format!("{}/v3/mail/send", self.base))
            .bearer_auth(&self.api_key)
            .json(&body);
        let a = http::exchange("sendgrid", req).await?;
        if !a.status.is_success() {
            return Err(self.error(&a));
        }
        Ok(SendReceipt {
            provider_message_id: a.header("x-message-id").map(str::to_string),
            captured: None,
        })
    }

    /// `GET /v3/scopes` works for a send-only key (unlike account endpoints) and says whether
    /// the key may send.
    async fn health(&self) -> HealthReport {
        let req = self
            .client
            .get(format!("{}/v3/scopes", self.base))
            .bearer_auth(&self.api_key);
        let (healthy, detail) = match http::exchange("sendgrid", req).await {
            Err(e) => (false, e.to_string()),
            Ok(a) if a.status.is_success() => match a.json()["scopes"].as_array() {
                Some(scopes) if scopes.iter().any(|s| s == "mail.send") => {
                    (true, "API key accepted, mail.send allowed".to_string())
                }
                Some(_) => (false, "API key lacks the mail.send scope".to_string()),
                None => (
                    false,
                    "sendgrid: unexpected answer from /v3/scopes".to_string(),
                ),
            },
            Ok(a) => (false, self.error(&a).to_string()),
        };
        HealthReport { healthy, detail }
    }
}
