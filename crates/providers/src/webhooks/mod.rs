//! Inbound provider event webhooks. Each provider that reports delivery events has one file
//! here with a [`WebhookFn`] that checks the request the way the provider documents (signature,
//! timestamp tolerance) and normalises its events. Nothing here touches storage: the engine
//! matches, deduplicates and applies what these functions return.

pub mod mailgun;
pub mod postmark;
pub mod resend;
pub mod sendgrid;
pub mod ses;

use courierx_domain::{EmailAddress, Millis};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

/// Signed timestamps older or newer than this are refused as replays (Svix, SendGrid and
/// Mailgun all document a few minutes).
pub const TIMESTAMP_TOLERANCE_MS: Millis = 5 * 60 * 1000;

/// One inbound HTTP request, as received.
pub struct InboundWebhook<'a> {
    pub headers: &'a reqwest::header::HeaderMap,
    pub body: &'a [u8],
    /// The current time, passed in so tests can check tolerance without sleeping.
    pub now: Millis,
}

/// What the process shares across webhook calls.
pub struct WebhookContext {
    pub http: reqwest::Client,
    /// Where SNS signing certificates and `SubscribeURL`s may be fetched from. Each entry is a
    /// URL prefix, e.g. `https://sns.` … see `ses::url_allowed`; tests add `http://127.0.0.1:PORT/`.
    pub sns_allowed_urls: SnsUrlPolicy,
    /// Downloaded SNS signing certificates (DER), by URL.
    pub cert_cache: Mutex<HashMap<String, Vec<u8>>>,
}

/// Which URLs SNS certificates and subscription confirmations may come from.
#[derive(Debug, Clone, Default)]
pub struct SnsUrlPolicy {
    /// Extra allowed URL prefixes beyond AWS's own `https://sns.<region>.amazonaws.com/`.
    pub extra_prefixes: Vec<String>,
}

impl WebhookContext {
    /// With its own HTTP client (rustls, `timeout` per request).
    pub fn with_timeout(sns_allowed_urls: SnsUrlPolicy, timeout: std::time::Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self::new(http, sns_allowed_urls)
    }

    pub fn new(http: reqwest::Client, sns_allowed_urls: SnsUrlPolicy) -> Self {
        Self {
            http,
            sns_allowed_urls,
            cert_cache: Mutex::new(HashMap::new()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceType {
    /// Permanent: the address does not exist or refuses mail for good.
    Hard,
    /// Temporary: mailbox full, message too large, a transient policy refusal.
    Soft,
}

impl BounceType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Soft => "soft",
        }
    }
}

/// A provider event in CourierX's own vocabulary.
#[derive(Debug, Clone, PartialEq)]
pub enum EventKind {
    Delivered,
    Bounced {
        bounce_type: BounceType,
        /// The remote server's diagnostic (e.g. `550 5.1.1 user unknown`), when given.
        diagnostic: Option<String>,
    },
    Complained {
        feedback_type: Option<String>,
    },
    Opened {
        user_agent: Option<String>,
    },
    Clicked {
        url: String,
        user_agent: Option<String>,
    },
    Deferred {
        diagnostic: Option<String>,
    },
    Unsubscribed,
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Bounced { .. } => "bounced",
            Self::Complained { .. } => "complained",
            Self::Opened { .. } => "opened",
            Self::Clicked { .. } => "clicked",
            Self::Deferred { .. } => "deferred",
            Self::Unsubscribed => "unsubscribed",
        }
    }
}

/// One normalised event out of a provider's webhook.
#[derive(Debug, Clone)]
pub struct ProviderEvent {
    /// Stable id of this event at the provider (or a hash of its identifying fields when the
    /// provider gives none), so a provider's retry of the same event is stored once.
    pub event_id: String,
    /// The id the provider gave when accepting the message, in the form our send stored it
    /// (SendGrid's `.filter…` suffix and Mailgun's `<>` removed).
    pub provider_message_id: String,
    pub recipient: Option<EmailAddress>,
    pub kind: EventKind,
    pub occurred_at: Millis,
    /// The provider's own event object, kept for support and audit.
    pub raw: Value,
}

#[derive(Debug)]
pub enum WebhookOutcome {
    Events(Vec<ProviderEvent>),
    /// Events from a provider whose signature does not cover the body (Mailgun signs only
    /// timestamp + token): the caller must accept `nonce` once, or a captured signature could
    /// carry forged events within the tolerance window.
    SingleUse {
        nonce: String,
        events: Vec<ProviderEvent>,
    },
    /// An SNS `SubscriptionConfirmation` that was confirmed by visiting its `SubscribeURL`.
    SubscriptionConfirmed {
        topic_arn: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// Missing, wrong or expired signature or credentials: 401, nothing changes.
    #[error("{0}")]
    Unauthorized(String),
    /// Signed correctly but not a payload we can read: 400.
    #[error("{0}")]
    Malformed(String),
    /// The provider has no webhook verification configured: refuse rather than trust.
    #[error("{0}")]
    NotConfigured(String),
    /// A fetch we needed (SNS certificate, subscription confirmation) failed: 502 so the
    /// provider retries.
    #[error("{0}")]
    Upstream(String),
}

pub type WebhookFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WebhookOutcome, WebhookError>> + Send + 'a>>;

/// Verifies and parses one request. `config` is the provider's full, decrypted config.
pub type WebhookFn =
    for<'a> fn(&'a Value, &'a InboundWebhook<'a>, &'a WebhookContext) -> WebhookFuture<'a>;

/// The provider's configured `webhook_signing_key`; `what` says where the provider shows it.
pub fn signing_key<'a>(
    config: &'a Value,
    provider: &str,
    what: &str,
) -> Result<&'a str, WebhookError> {
    config["webhook_signing_key"]
        .as_str()
        .filter(|k| !k.trim().is_empty())
        .ok_or_else(|| {
            WebhookError::NotConfigured(format!(
                "{provider}: no webhook_signing_key ({what}) configured"
            ))
        })
}

/// Case-insensitive header as a string, if present and valid UTF-8.
pub fn header<'a>(req: &'a InboundWebhook<'_>, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Constant-time comparison for secrets and MACs.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Refuses a signed timestamp (ms) outside the tolerance window around `now`.
pub fn check_timestamp(
    now: Millis,
    signed_at: Millis,
    tolerance: Millis,
) -> Result<(), WebhookError> {
    if (now - signed_at).abs() > tolerance {
        return Err(WebhookError::Unauthorized(
            "timestamp outside the tolerance window (replayed or stale request)".into(),
        ));
    }
    Ok(())
}

/// A signed unix-seconds timestamp (`what` names it in the error), checked against the
/// tolerance window; returned in ms.
pub fn signed_seconds(now: Millis, s: &str, what: &str) -> Result<Millis, WebhookError> {
    let at = s
        .trim()
        .parse::<i64>()
        .ok()
        .and_then(|s| s.checked_mul(1000))
        .ok_or_else(|| WebhookError::Unauthorized(format!("{what} is not unix seconds")))?;
    check_timestamp(now, at, TIMESTAMP_TOLERANCE_MS)?;
    Ok(at)
}

/// An RFC 3339 time (any fraction, `Z` or an offset) in ms.
pub fn rfc3339_ms(s: &str) -> Option<Millis> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// A JSON string, trimmed, unless empty.
pub fn text(v: &Value) -> Option<&str> {
    v.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// A stable event id from identifying fields, for providers that give none.
pub fn derived_event_id(parts: &[&str]) -> String {
    let mut h = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        h.update(p.as_bytes());
        h.update(&[0u8]);
    }
    hex::encode(&h.finish().as_ref()[..16])
}

/// Parses a recipient loosely: providers sometimes send `Name <addr>` or odd case.
pub fn recipient(s: &str) -> Option<EmailAddress> {
    let s = s.trim();
    let inner = match (s.rfind('<'), s.rfind('>')) {
        (Some(a), Some(b)) if a < b => &s[a + 1..b],
        _ => s,
    };
    EmailAddress::parse(inner).ok()
}
