//! Delivery providers. Each provider is one file implementing [`EmailProvider`] plus a
//! [`ProviderKind`] entry; [`KINDS`] is the one table that registers them. Adding a provider
//! touches one new file and one line here.

mod http;
pub mod mailgun;
pub mod mime;
pub mod postmark;
pub mod resend;
pub mod sandbox;
pub mod sendgrid;
pub mod ses;
pub mod smtp;
pub mod webhooks;

use async_trait::async_trait;
use courierx_domain::{Attachment, Mailbox, MessageId, Millis, ValidationErrors};
use serde_json::Value;
use std::sync::Arc;

pub use mime::RenderedMime;

/// Every provider type CourierX knows.
pub static KINDS: &[&ProviderKind] = &[
    &sandbox::KIND,
    &smtp::KIND,
    &ses::KIND,
    &sendgrid::KIND,
    &mailgun::KIND,
    &postmark::KIND,
    &resend::KIND,
];

pub fn kind(name: &str) -> Option<&'static ProviderKind> {
    KINDS.iter().copied().find(|k| k.name == name)
}

/// A provider type: its name, which config fields are secrets (encrypted at rest, never
/// returned), how to validate a config and how to build a live provider from one.
pub struct ProviderKind {
    pub name: &'static str,
    pub secret_fields: &'static [&'static str],
    /// Checks a full config (secrets included) and returns it normalised (defaults filled in).
    pub validate: fn(&Value) -> Result<Value, ValidationErrors>,
    pub build: fn(&Value) -> Result<Arc<dyn EmailProvider>, ValidationErrors>,
    /// Whether messages routed here leave the machine (the sandbox does not).
    pub delivers_externally: bool,
    /// Verifies and normalises the provider's event webhook, for providers that send one.
    pub webhook: Option<webhooks::WebhookFn>,
}

/// One email to deliver, already validated.
#[derive(Debug, Clone)]
pub struct OutboundEmail {
    pub message_id: MessageId,
    pub created_at: Millis,
    pub from: Mailbox,
    pub to: Vec<Mailbox>,
    pub cc: Vec<Mailbox>,
    pub bcc: Vec<Mailbox>,
    pub reply_to: Option<Mailbox>,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub headers: Vec<(String, String)>,
    /// Labels for the provider's own tagging (SendGrid categories, Postmark tag, SES tags…).
    pub tags: Vec<String>,
    /// Caller metadata, passed on where the provider supports custom arguments.
    pub metadata: serde_json::Map<String, Value>,
    /// Loaded from storage for this attempt only; the bytes are shared, not copied.
    pub attachments: Vec<Attachment>,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct SendReceipt {
    pub provider_message_id: Option<String>,
    /// The exact MIME handed over, kept by providers that store rather than send (the sandbox).
    pub captured: Option<RenderedMime>,
}

/// How a failed send should be treated: retried later, failed at once, or (provider-wide
/// trouble such as bad credentials) retried and counted against the provider's health.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SendError {
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Permanent(String),
    #[error("{0}")]
    ProviderDown(String),
}

#[derive(Debug, Clone)]
pub struct HealthReport {
    pub healthy: bool,
    pub detail: String,
}

#[async_trait]
pub trait EmailProvider: Send + Sync {
    async fn send(&self, email: &OutboundEmail) -> Result<SendReceipt, SendError>;
    async fn health(&self) -> HealthReport;
}

/// Attachment content as base64, the form every JSON provider API takes.
pub(crate) fn base64_of(a: &Attachment) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(&a.data)
}

/// Reads a typed config from JSON, turning serde's complaint into a field error under `config`.
pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(
    v: &Value,
) -> Result<T, ValidationErrors> {
    serde_json::from_value(v.clone()).map_err(|e| ValidationErrors::single("config", e.to_string()))
}
