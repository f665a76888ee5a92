//! SMTP through lettre's protocol client, with a connection pool of our own (see [`Smtp`]).

use crate::{
    EmailProvider, HealthReport, OutboundEmail, ProviderKind, SendError, SendReceipt, parse_config,
};
use async_trait::async_trait;
use courierx_domain::ValidationErrors;
use lettre::Address;
use lettre::address::Envelope;
use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{
    AsyncSmtpConnection, AsyncTokioStream, Certificate, TlsParameters,
};
use lettre::transport::smtp::extension::ClientId;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

pub static KIND: ProviderKind = ProviderKind {
    name: "smtp",
    secret_fields: &["password"],
    validate,
    build,
    delivers_externally: true,
    webhook: None,
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
    // lettre's parser accepts text with no certificate in it at all, so look for one first.
    if let Some(pem) = &c.ca_cert_pem
        && (!pem.contains("-----BEGIN CERTIFICATE-----")
            || Certificate::from_pem(pem.as_bytes()).is_err())
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
    Ok(Arc::new(Smtp::from_config(v)?))
}

/// The trust lettre's `build_rustls` sets up (platform verifier: system roots and host-name
/// check, plus the extra CA), for implicit-TLS sessions we start ourselves.
fn tls_client_config(ca_cert_pem: Option<&str>) -> Result<rustls::ClientConfig, ValidationErrors> {
    let extra_roots = match ca_cert_pem {
        Some(pem) => CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ValidationErrors::single("config.ca_cert_pem", e.to_string()))?,
        None => Vec::new(),
    };
    let provider = CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    // Fails on an unusable extra CA, or when there is none and the system has no roots.
    let field = match ca_cert_pem {
        Some(_) => "config.ca_cert_pem",
        None => "config",
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider.clone())
            .map_err(|e| ValidationErrors::single(field, e.to_string()))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ValidationErrors::single("config", e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

impl Smtp {
    fn from_config(v: &Value) -> Result<Smtp, ValidationErrors> {
        let c: SmtpConfig = parse_config(&validate(v)?)?;
        let transport = match c.security {
            Security::None => Transport::Plain,
            Security::Starttls => {
                let mut b = TlsParameters::builder(c.host.clone());
                if let Some(pem) = &c.ca_cert_pem {
                    let cert = Certificate::from_pem(pem.as_bytes()).map_err(|e| {
                        ValidationErrors::single("config.ca_cert_pem", e.to_string())
                    })?;
                    b = b.add_root_certificate(cert);
                }
                Transport::Starttls(
                    b.build_rustls()
                        .map_err(|e| ValidationErrors::single("config", e.to_string()))?,
                )
            }
            Security::Tls => Transport::Tls(
                TlsConnector::from(Arc::new(tls_client_config(c.ca_cert_pem.as_deref())?)),
                ServerName::try_from(c.host.clone()).map_err(|e| {
                    ValidationErrors::single("config.host", format!("not a TLS server name: {e}"))
                })?,
            ),
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
        Ok(Smtp {
            permits: Semaphore::new(c.max_connections as usize),
            idle: Mutex::new(Vec::new()),
            timeout: Duration::from_millis(c.timeout_ms),
            cfg: c,
            transport,
            hello,
            credentials,
            mechanisms,
        })
    }
}

/// Idle connections older than this are closed rather than reused (servers drop idle clients).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// An SMTP relay with its own connection pool: at most `max_connections` connections, each reused
/// for many messages. Connections are opened with TCP_NODELAY, because lettre writes a message body
/// and its terminating `.` separately, and with Nagle's algorithm the second write waits for the
/// peer's delayed ACK (~40 ms per message).
pub struct Smtp {
    cfg: SmtpConfig,
    transport: Transport,
    hello: ClientId,
    credentials: Option<Credentials>,
    mechanisms: &'static [Mechanism],
    timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<(Instant, AsyncSmtpConnection)>>,
}

enum Transport {
    Plain,
    Starttls(TlsParameters),
    /// lettre can only start implicit TLS on a socket it opens itself (without TCP_NODELAY), so
    /// the session is set up here and handed to lettre as an opaque stream.
    Tls(TlsConnector, ServerName<'static>),
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
    /// The socket lettre will speak SMTP over: TCP with NODELAY, already inside TLS for implicit
    /// TLS.
    async fn open(&self) -> Result<Box<dyn Socket>, Fail> {
        let port = self.cfg.port.unwrap_or(25);
        let tcp = within(
            self.timeout,
            "connection",
            TcpStream::connect((self.cfg.host.as_str(), port)),
        )
        .await?
        .map_err(io_err)?;
        tcp.set_nodelay(true).map_err(io_err)?;
        match &self.transport {
            Transport::Tls(connector, name) => {
                let tls = within(
                    self.timeout,
                    "TLS handshake",
                    connector.connect(name.clone(), tcp),
                )
                .await?
                .map_err(|e| Fail::Io(format!("TLS handshake: {e}")))?;
                Ok(Box::new(tls))
            }
            Transport::Plain | Transport::Starttls(_) => Ok(Box::new(tcp)),
        }
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, Fail> {
        let socket = self.open().await?;
        let mut conn = within(
            self.timeout,
            "greeting",
            AsyncSmtpConnection::connect_with_transport(Box::new(socket), &self.hello),
        )
        .await??;
        if let Transport::Starttls(tls) = &self.transport {
            conn.starttls(tls.clone(), &self.hello)
                .await
                .map_err(setup_err)?;
        }
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

/// `f`'s output, or a connection failure naming `what` when `limit` passes first.
async fn within<F: Future>(limit: Duration, what: &str, f: F) -> Result<F::Output, Fail> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Fail::Io(format!("{what} timed out")))
}

/// A connection as lettre's transport trait wants it, with the TCP socket beneath any TLS.
/// lettre sees implicit TLS as an unencrypted stream (`is_encrypted()` is false and
/// `peer_certificate()` fails); nothing here relies on either, and `auth` does not check.
trait Socket: AsyncRead + AsyncWrite + Send + Sync + Unpin + std::fmt::Debug {
    fn tcp(&self) -> &TcpStream;
}

impl Socket for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Socket for TlsStream<TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.get_ref().0
    }
}

impl AsyncTokioStream for Box<dyn Socket> {
    fn peer_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.tcp().peer_addr()
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The socket `connect` hands to lettre for implicit TLS is one with NODELAY set.
    #[tokio::test]
    async fn implicit_tls_socket_has_nodelay() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .expect("self-signed certificate");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let server = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local_addr").port();
        let accept = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            acceptor.accept(tcp).await.expect("server handshake")
        });

        let smtp = Smtp::from_config(&json!({
            "host": "localhost", "port": port, "security": "tls",
            "ca_cert_pem": cert.cert.pem(), "timeout_ms": 5000,
        }))
        .expect("config");
        let socket = smtp.open().await.expect("TLS handshake");
        assert!(socket.tcp().nodelay().expect("read TCP_NODELAY"));
        accept.await.expect("server task");
    }
}
