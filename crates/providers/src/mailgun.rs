//! Mailgun: the MIME we render, posted to `POST /v3/{domain}/messages.mime` as multipart/form-data
//! (`to` once per envelope recipient, the message as the file part `message`), HTTP Basic
//! `api:<key>`.
//!
//! Event webhooks: set `webhook_signing_key` to the account's "HTTP webhook signing key" (shown
//! with the API keys under Settings in the Mailgun dashboard); Mailgun signs each JSON webhook with
//! it. Without it, event POSTs are refused. See [`crate::webhooks::mailgun`].

use crate::http::{self, Answer};
use crate::{
    EmailProvider, HealthReport, OutboundEmail, ProviderKind, SendError, SendReceipt, parse_config,
};
use async_trait::async_trait;
use courierx_domain::ValidationErrors;
use reqwest::RequestBuilder;
use reqwest::multipart::{Form, Part};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;

pub static KIND: ProviderKind = ProviderKind {
    name: "mailgun",
    secret_fields: &["api_key", "webhook_signing_key"],
    validate,
    build,
    delivers_externally: true,
    webhook: Some(crate::webhooks::mailgun::parse),
};

/// Mailgun's documented per-message limits.
const MAX_RECIPIENTS: usize = 1000;
const MAX_TAGS: usize = 3;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    Us,
    Eu,
}

// No Debug: the config holds credentials.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MailgunConfig {
    /// The sending domain as set up in Mailgun, e.g. `mg.example.com`.
    #[serde(default)]
    pub domain: String,
    #[serde(default)]
    pub api_key: String,
    #[serde(default = "default_region")]
    pub region: Region,
    /// Overrides the region's API host when set.
    pub base_url: Option<String>,
    #[serde(default = "http::default_timeout")]
    pub timeout_ms: u64,
    /// The HTTP webhook signing key that verifies Mailgun's event webhooks; absent, they are
    /// refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_signing_key: Option<String>,
}

fn default_region() -> Region {
    Region::Us
}

fn validate(v: &Value) -> Result<Value, ValidationErrors> {
    let mut c: MailgunConfig = parse_config(v)?;
    let mut errs = ValidationErrors::new();
    c.domain = c.domain.trim().to_ascii_lowercase();
    let domain_ok = !c.domain.is_empty()
        && c.domain.len() <= 253
        && c.domain
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.')
        && !c.domain.starts_with(['.', '-'])
        && !c.domain.ends_with(['.', '-']);
    if !domain_ok {
        errs.add(
            "config.domain",
            "must be a domain name such as mg.example.com",
        );
    }
    http::check_secret(&mut errs, "api_key", &c.api_key);
    c.webhook_signing_key = c.webhook_signing_key.map(|k| k.trim().to_string());
    if let Some(k) = &c.webhook_signing_key {
        if k.is_empty() {
            errs.add(
                "config.webhook_signing_key",
                "must not be empty; leave it out to refuse webhooks",
            );
        } else {
            http::check_secret(&mut errs, "webhook_signing_key", k);
        }
    }
    c.base_url = http::check_base_url(&mut errs, c.base_url.as_deref());
    http::check_timeout(&mut errs, c.timeout_ms);
    errs.into_result()?;
    serde_json::to_value(&c).map_err(|e| ValidationErrors::single("config", e.to_string()))
}

fn build(v: &Value) -> Result<Arc<dyn EmailProvider>, ValidationErrors> {
    let c: MailgunConfig = parse_config(&validate(v)?)?;
    let base = c.base_url.unwrap_or_else(|| {
        match c.region {
            Region::Us => "https://api.mailgun.net",
            Region::Eu => "https://api.eu.mailgun.net",
        }
        .into()
    });
    Ok(Arc::new(Mailgun {
        client: http::client(c.timeout_ms)?,
        base,
        domain: c.domain,
        api_key: c.api_key,
    }))
}

pub struct Mailgun {
    client: reqwest::Client,
    base: String,
    domain: String,
    api_key: String,
}

impl Mailgun {
    fn request(&self, req: RequestBuilder) -> RequestBuilder {
        req.basic_auth("api", Some(&self.api_key))
            .header("Accept", "application/json")
    }

    /// Errors are `{"message"}` JSON, or plain text such as `Forbidden` for a bad key.
    fn error(&self, a: &Answer) -> SendError {
        let message = a.json()["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| a.snippet());
        let text = format!(
            "mailgun {}: {}",
            a.status.as_u16(),
            http::detail(&message, &[&self.api_key])
        );
        // The only name in the path is the configured domain: a 404 means the config is wrong.
        if a.status.as_u16() == 404 {
            SendError::ProviderDown(text)
        } else {
            http::classify(a.status, text)
        }
    }
}

#[async_trait]
impl EmailProvider for Mailgun {
    async fn send(&self, email: &OutboundEmail) -> Result<SendReceipt, SendError> {
        let mime = crate::mime::render(email)?;
        if mime.envelope_to.len() > MAX_RECIPIENTS {
            return Err(SendError::Permanent(format!(
                "mailgun accepts at most {MAX_RECIPIENTS} recipients per message, got {}",
                mime.envelope_to.len()
            )));
        }
        let mut form = Form::new();
        // Bcc recipients are not in the MIME headers; the `to` fields are the envelope.
        for rcpt in &mime.envelope_to {
            form = form.text("to", rcpt.clone());
        }
        for tag in email
            .tags
            .iter()
            .filter(|t| !t.trim().is_empty())
            .take(MAX_TAGS)
        {
            form = form.text("o:tag", tag.clone());
        }
        for (key, value) in http::metadata_strings(&email.metadata) {
            if let Some(key) = http::tag_token(key) {
                form = form.text(format!("v:{key}"), value);
            }
        }
        let message = Part::bytes(mime.bytes)
            .file_name("message.mime")
            .mime_str("message/rfc822")
            .map_err(|e| SendError::Permanent(format!("mailgun: {e}")))?;
        form = form.part("message", message);
        let url = format!("{}/v3/{}/messages.mime", self.base, self.domain);
        let a = http::exchange(
            "mailgun",
            self.request(self.client.post(url)).multipart(form),
        )
        .await?;
        if !a.status.is_success() {
            return Err(self.error(&a));
        }
        // Webhook events name the message without the angle brackets the answer has.
        let id = a.json()["id"].as_str().map(|id| {
            id.trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string()
        });
        Ok(SendReceipt {
            provider_message_id: id,
            captured: None,
        })
    }

    /// `GET /v4/domains/{name}`: the key works and the domain exists; its `state` says whether
    /// it may send.
    async fn health(&self) -> HealthReport {
        let url = format!("{}/v4/domains/{}", self.base, self.domain);
        let (healthy, detail) =
            match http::exchange("mailgun", self.request(self.client.get(url))).await {
                Err(e) => (false, e.to_string()),
                Ok(a) if a.status.is_success() => {
                    let state = a.json()["domain"]["state"]
                        .as_str()
                        .unwrap_or("unknown")
                        .to_string();
                    (
                        state == "active",
                        format!("domain {} is {state}", self.domain),
                    )
                }
                Ok(a) => (false, self.error(&a).to_string()),
            };
        HealthReport { healthy, detail }
    }
}
