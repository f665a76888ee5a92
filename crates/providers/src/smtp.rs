//! SMTP through lettre: a pooled connection set per provider, bounded by a semaphore (lettre's
//! pool caps only idle connections).

use crate::{
    EmailProvider, HealthReport, OutboundEmail, ProviderKind, SendError, SendReceipt, parse_config,
};
use async_trait::async_trait;
use courierx_domain::ValidationErrors;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::transport::smtp::{AsyncSmtpTransport, PoolConfig};
use lettre::{Address, AsyncTransport, Tokio1Executor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

pub static KIND: ProviderKind = ProviderKind {
    name: "smtp",
    secret_fields: &["password"],
    validate,
    build,
    delivers_externally: true,
};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    None,
    Starttls,
    Tls,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    pub host: String,
    pub port: Option<u16>,
    #[serde(default = "default_security")]
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<String>,
    #[serde(default = "default_pool")]
    pub pool_size: u32,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// Name sent in EHLO; the machine's hostname when absent.
    pub hello_name: Option<String>,
    /// PEM of an extra trusted CA (a private relay's certificate authority).
    pub ca_cert_pem: Option<String>,
}

fn default_security() -> Security {
    Security::Starttls
}
fn default_pool() -> u32 {
    10
}
fn default_timeout() -> u64 {
    10_000
}

fn validate(v: &Value) -> Result<Value, ValidationErrors> {
    let mut c: SmtpConfig = parse_config(v)?;
    let mut errs = ValidationErrors::new();
    let host_ok = !c.host.is_empty()
        && c.host.len() <= 253
        && c.host
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ".-:[]".contains(ch));
    if !host_ok {
        errs.add("config.host", "must be a host name or IP address");
    }
    if c.port == Some(0) {
        errs.add("config.port", "must be 1 to 65535");
    }
    if !(1..=100).contains(&c.pool_size) {
        errs.add("config.pool_size", "must be 1 to 100");
    }
    if !(100..=300_000).contains(&c.timeout_ms) {
        errs.add("config.timeout_ms", "must be 100 to 300000");
    }
    if c.username.is_some() != c.password.is_some() {
        errs.add("config.password", "username and password go together");
    }
    if let Some(pem) = &c.ca_cert_pem
        && Certificate::from_pem(pem.as_bytes()).is_err()
    {
        errs.add("config.ca_cert_pem", "is not a PEM certificate");
    }
    errs.into_result()?;
    c.port = Some(c.port.unwrap_or(match c.security {
        Security::None => 25,
        Security::Starttls => 587,
        Security::Tls => 465,
    }));
    serde_json::to_value(&c).map_err(|e| ValidationErrors::single("config", e.to_string()))
}

fn build(v: &Value) -> Result<Arc<dyn EmailProvider>, ValidationErrors> {
    let c: SmtpConfig = parse_config(&validate(v)?)?;
    let tls = |host: &str| -> Result<TlsParameters, ValidationErrors> {
        let mut b = TlsParameters::builder(host.to_string());
        if let Some(pem) = &c.ca_cert_pem {
            let cert = Certificate::from_pem(pem.as_bytes())
                .map_err(|e| ValidationErrors::single("config.ca_cert_pem", e.to_string()))?;
            b = b.add_root_certificate(cert);
        }
        b.build_rustls()
            .map_err(|e| ValidationErrors::single("config", e.to_string()))
    };
    let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(c.host.clone())
        .port(c.port.unwrap_or(25))
        .timeout(Some(Duration::from_millis(c.timeout_ms)))
        .pool_config(
            PoolConfig::new()
                .max_size(c.pool_size)
                .idle_timeout(Duration::from_secs(60)),
        );
    b = match c.security {
        Security::None => b.tls(Tls::None),
        Security::Starttls => b.tls(Tls::Required(tls(&c.host)?)),
        Security::Tls => b.tls(Tls::Wrapper(tls(&c.host)?)),
    };
    if let (Some(u), Some(p)) = (&c.username, &c.password) {
        b = b.credentials(Credentials::new(u.clone(), p.clone()));
    }
    if let Some(h) = &c.hello_name {
        b = b.hello_name(lettre::transport::smtp::extension::ClientId::Domain(
            h.clone(),
        ));
    }
    Ok(Arc::new(Smtp {
        transport: b.build(),
        permits: Semaphore::new(c.pool_size as usize),
    }))
}

pub struct Smtp {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    permits: Semaphore,
}

/// 4xx and network trouble retry; 5xx fails the message, except authentication refusals, which
/// say the provider (not the message) is broken.
fn classify(e: lettre::transport::smtp::Error) -> SendError {
    let code = e.status().map(|c| c.to_string());
    let msg = format!("SMTP: {e}");
    match code.as_deref() {
        Some("530" | "534" | "535" | "538") => SendError::ProviderDown(msg),
        _ if e.is_permanent() => SendError::Permanent(msg),
        _ => SendError::Transient(msg),
    }
}

#[async_trait]
impl EmailProvider for Smtp {
    async fn send(&self, email: &OutboundEmail) -> Result<SendReceipt, SendError> {
        let mime = crate::mime::render(email)?;
        let parse = |s: &str| {
            s.parse::<Address>()
                .map_err(|e| SendError::Permanent(format!("address {s}: {e}")))
        };
        let from = parse(&mime.envelope_from)?;
        let to = mime
            .envelope_to
            .iter()
            .map(|a| parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        let envelope =
            Envelope::new(Some(from), to).map_err(|e| SendError::Permanent(e.to_string()))?;
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| SendError::Transient("provider is shutting down".into()))?;
        self.transport
            .send_raw(&envelope, &mime.bytes)
            .await
            .map_err(classify)?;
        Ok(SendReceipt {
            provider_message_id: Some(mime.message_id),
            captured: None,
        })
    }

    async fn health(&self) -> HealthReport {
        match self.transport.test_connection().await {
            Ok(true) => HealthReport {
                healthy: true,
                detail: "connected, EHLO and authentication accepted".into(),
            },
            Ok(false) => HealthReport {
                healthy: false,
                detail: "server did not answer NOOP".into(),
            },
            Err(e) => HealthReport {
                healthy: false,
                detail: format!("SMTP: {e}"),
            },
        }
    }
}
