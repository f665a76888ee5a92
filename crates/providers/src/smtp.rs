//! SMTP through lettre's protocol client, with a connection pool of our own (see [`Smtp`]).

use crate::{
    EmailProvider, HealthReport, OutboundEmail, ProviderKind, SendError, SendReceipt, parse_config,
};
use async_trait::async_trait;
use courierx_domain::ValidationErrors;
use lettre::Address;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
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

/// SASL mechanism to insist on; without one, PLAIN then LOGIN, whichever the server offers.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AuthMechanism {
    Plain,
    Login,
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
    /// Most connections open to the relay at once, each carrying one message at a time.
    /// `pool_size` is its older name, still read from stored configs.
    #[serde(default = "default_max_connections", alias = "pool_size")]
    pub max_connections: u32,
    pub auth_mechanism: Option<AuthMechanism>,
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
fn default_max_connections() -> u32 {
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
    if !(1..=100).contains(&c.max_connections) {
        errs.add("config.max_connections", "must be 1 to 100");
    }
    if !(100..=300_000).contains(&c.timeout_ms) {
        errs.add("config.timeout_ms", "must be 100 to 300000");
    }
    if c.username.is_some() != c.password.is_some() {
        errs.add("config.password", "username and password go together");
    }
    if c.auth_mechanism.is_some() && c.username.is_none() {
        errs.add("config.auth_mechanism", "needs a username and password");
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
    let tls = match c.security {
        Security::None => None,
        Security::Starttls | Security::Tls => {
            let mut b = TlsParameters::builder(c.host.clone());
            if let Some(pem) = &c.ca_cert_pem {
                let cert = Certificate::from_pem(pem.as_bytes())
                    .map_err(|e| ValidationErrors::single("config.ca_cert_pem", e.to_string()))?;
                b = b.add_root_certificate(cert);
            }
            Some(
                b.build_rustls()
                    .map_err(|e| ValidationErrors::single("config", e.to_string()))?,
            )
        }
    };
    let hello = match &c.hello_name {
        Some(h) => ClientId::Domain(h.clone()),
        None => ClientId::default(),
    };
    let credentials = match (&c.username, &c.password) {
        (Some(u), Some(p)) => Some(Credentials::new(u.clone(), p.clone())),
        _ => None,
    };
    let mechanisms: &'static [Mechanism] = match c.auth_mechanism {
        Some(AuthMechanism::Plain) => &[Mechanism::Plain],
        Some(AuthMechanism::Login) => &[Mechanism::Login],
        None => &[Mechanism::Plain, Mechanism::Login],
    };
    Ok(Arc::new(Smtp {
        permits: Semaphore::new(c.max_connections as usize),
        idle: Mutex::new(Vec::new()),
        timeout: Duration::from_millis(c.timeout_ms),
        cfg: c,
        tls,
        hello,
        credentials,
        mechanisms,
    }))
}

/// Idle connections older than this are closed rather than reused (servers drop idle clients).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An SMTP relay with its own connection pool: at most `max_connections` connections, each reused
/// for many messages. Connections are opened with TCP_NODELAY, because lettre writes a message body
/// and its terminating `.` separately, and with Nagle's algorithm the second write waits for the
/// peer's delayed ACK (~40 ms per message).
pub struct Smtp {
    cfg: SmtpConfig,
    tls: Option<TlsParameters>,
    hello: ClientId,
    credentials: Option<Credentials>,
    mechanisms: &'static [Mechanism],
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<(Instant, AsyncSmtpConnection)>>,
}

/// 4xx and network trouble retry; 5xx fails the message, except authentication refusals, which
/// say the provider (not the message) is broken.
fn classify(e: Fail) -> SendError {
    let e = match e {
        Fail::Io(msg) => return SendError::Transient(format!("SMTP: {msg}")),
        Fail::Setup(msg) => return SendError::ProviderDown(format!("SMTP: {msg}")),
        Fail::Smtp(e) => e,
    };
    let code = e.status().map(|c| c.to_string());
    let msg = format!("SMTP: {e}");
    match code.as_deref() {
        Some("530" | "534" | "535" | "538") => SendError::ProviderDown(msg),
        _ if e.is_permanent() => SendError::Permanent(msg),
        _ => SendError::Transient(msg),
    }
}

/// A failed SMTP exchange: the server's answer (or lettre's own error), a socket-level failure,
/// or a relay that cannot do what the config asks (no STARTTLS, no usable AUTH mechanism).
#[derive(Debug)]
enum Fail {
    Smtp(lettre::transport::smtp::Error),
    Io(String),
    Setup(String),
}

impl Fail {
    /// No SMTP reply code: the connection itself failed.
    fn is_connection(&self) -> bool {
        match self {
            Fail::Io(_) => true,
            Fail::Smtp(e) => e.status().is_none(),
            Fail::Setup(_) => false,
        }
    }
}

impl std::fmt::Display for Fail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fail::Smtp(e) => e.fmt(f),
            Fail::Io(m) | Fail::Setup(m) => f.write_str(m),
        }
    }
}

impl From<lettre::transport::smtp::Error> for Fail {
    fn from(e: lettre::transport::smtp::Error) -> Self {
        Fail::Smtp(e)
    }
}

impl Smtp {
    async fn connect(&self) -> Result<AsyncSmtpConnection, Fail> {
        let port = self.cfg.port.unwrap_or(25);
        let mut conn = match self.cfg.security {
            // lettre 0.11 cannot start an implicit-TLS session on a socket opened here (no public
            // constructor takes a stream it has encrypted), so this path keeps Nagle's algorithm.
            Security::Tls => {
                AsyncSmtpConnection::connect_tokio1(
                    (self.cfg.host.as_str(), port),
                    Some(self.timeout),
                    &self.hello,
                    self.tls.clone(),
                    None,
                )
                .await?
            }
            Security::None | Security::Starttls => {
                let tcp = tokio::time::timeout(
                    self.timeout,
                    TcpStream::connect((self.cfg.host.as_str(), port)),
                )
                .await
                .map_err(|_| {
                    io_err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "connection timed out",
                    ))
                })?
                .map_err(io_err)?;
                tcp.set_nodelay(true).map_err(io_err)?;
                let mut conn = tokio::time::timeout(
                    self.timeout,
                    AsyncSmtpConnection::connect_with_transport(Box::new(Stream(tcp)), &self.hello),
                )
                .await
                .map_err(|_| {
                    io_err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "greeting timed out",
                    ))
                })??;
                if let Some(tls) = &self.tls {
                    conn.starttls(tls.clone(), &self.hello)
                        .await
                        .map_err(setup_err)?;
                }
                conn
            }
        };
        if let Some(creds) = &self.credentials {
            conn.auth(self.mechanisms, creds).await.map_err(setup_err)?;
        }
        Ok(conn)
    }

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((since, conn)) = idle.pop() {
            if since.elapsed() < IDLE_TIMEOUT {
                return Some(conn);
            }
            drop(conn);
        }
        None
    }

    fn put_idle(&self, conn: AsyncSmtpConnection) {
        if !conn.has_broken()
            && let Ok(mut idle) = self.idle.lock()
        {
            idle.push((Instant::now(), conn));
        }
    }

    async fn send_on(
        &self,
        conn: &mut AsyncSmtpConnection,
        envelope: &Envelope,
        bytes: &[u8],
    ) -> Result<(), Fail> {
        match tokio::time::timeout(self.timeout * 4, conn.send(envelope, bytes)).await {
            Ok(r) => r.map(|_| ()).map_err(Fail::Smtp),
            Err(_) => {
                conn.abort().await;
                Err(io_err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "SMTP transaction timed out",
                )))
            }
        }
    }
}

/// lettre refuses on its own (status-less client error) when the server lacks what the config
/// needs; that's the provider's fault, not the message's.
fn setup_err(e: lettre::transport::smtp::Error) -> Fail {
    if e.is_client() {
        Fail::Setup(e.to_string())
    } else {
        Fail::Smtp(e)
    }
}

fn io_err(e: std::io::Error) -> Fail {
    Fail::Io(e.to_string())
}

/// A TCP stream as lettre's transport trait wants it.
#[derive(Debug)]
struct Stream(TcpStream);

impl lettre::transport::smtp::client::AsyncTokioStream for Stream {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.0.peer_addr()
    }
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
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
        if let Some(mut conn) = self.take_idle() {
            match self.send_on(&mut conn, &envelope, &mime.bytes).await {
                Ok(()) => {
                    self.put_idle(conn);
                    return Ok(SendReceipt {
                        provider_message_id: Some(mime.message_id),
                        captured: None,
                    });
                }
                // A pooled connection the server has closed since: retry once on a fresh one.
                Err(e) if e.is_connection() => {}
                Err(e) => return Err(classify(e)),
            }
        }
        let mut conn = self.connect().await.map_err(classify)?;
        self.send_on(&mut conn, &envelope, &mime.bytes)
            .await
            .map_err(classify)?;
        self.put_idle(conn);
        Ok(SendReceipt {
            provider_message_id: Some(mime.message_id),
            captured: None,
        })
    }

    async fn health(&self) -> HealthReport {
        match self.connect().await {
            Ok(mut conn) => {
                let _ = conn.quit().await;
                let detail = if self.credentials.is_some() {
                    "connected, EHLO and authentication accepted"
                } else {
                    "connected and EHLO accepted"
                };
                HealthReport {
                    healthy: true,
                    detail: detail.into(),
                }
            }
            Err(e) => HealthReport {
                healthy: false,
                detail: format!("SMTP: {e}"),
            },
        }
    }
}
