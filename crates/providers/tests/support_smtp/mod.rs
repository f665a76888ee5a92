//! A small but real SMTP server (RFC 5321) for the SMTP provider tests: plain, STARTTLS
//! (RFC 3207) or implicit TLS, AUTH PLAIN (RFC 4616) and LOGIN, several messages per
//! connection, and counters for connections accepted and open at once.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use courierx_domain::{Mailbox, MessageId};
use courierx_providers::{EmailProvider, OutboundEmail};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

pub const USER: &str = "relay-user";
pub const PASSWORD: &str = "s3cret-Passw0rd";

/// rustls wants one process-wide provider when more than one could be compiled in.
pub fn install_crypto() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A certificate authority made at test time, and server certificates it signs.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        TestCa {
            issuer: CertifiedIssuer::self_signed(params, key).expect("self-signed CA"),
        }
    }

    /// The CA certificate, as the provider's `ca_cert_pem` takes it.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// A server identity for `localhost` and `127.0.0.1` signed by this CA.
    pub fn server_tls(&self) -> Arc<rustls::ServerConfig> {
        self.server_tls_for(&["localhost", "127.0.0.1"])
    }

    /// A server identity for `names` (the first is also the common name) signed by this CA.
    pub fn server_tls_for(&self, names: &[&str]) -> Arc<rustls::ServerConfig> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let chain: Vec<CertificateDer<'static>> =
            vec![cert.der().clone(), self.issuer.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server certificate");
        Arc::new(config)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tls {
    None,
    /// Offers STARTTLS; AUTH is advertised and accepted only once the session is encrypted.
    Starttls,
    /// TLS from the first byte (port 465 style).
    Implicit,
}

#[derive(Clone)]
pub struct Options {
    pub tls: Tls,
    /// Needed for `Tls::Starttls` and `Tls::Implicit`.
    pub identity: Option<Arc<rustls::ServerConfig>>,
    /// Advertised AUTH mechanisms ("PLAIN", "LOGIN"); only these are accepted.
    pub mechanisms: Vec<&'static str>,
    /// When set, AUTH with exactly these is required before MAIL.
    pub credentials: Option<(String, String)>,
    /// Reply to RCPT TO with this line instead of accepting the recipient.
    pub rcpt_reply: Option<&'static str>,
    /// Pause before answering the end of DATA, so concurrent senders overlap.
    pub data_delay: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tls: Tls::None,
            identity: None,
            mechanisms: vec!["PLAIN", "LOGIN"],
            credentials: None,
            rcpt_reply: None,
            data_delay: Duration::ZERO,
        }
    }
}

impl Options {
    pub fn with_auth(mut self) -> Self {
        self.credentials = Some((USER.to_string(), PASSWORD.to_string()));
        self
    }
}

/// A message the server accepted.
#[derive(Debug, Clone)]
pub struct Received {
    pub conn: usize,
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Content with CRLF line endings, dot-stuffing undone, without the final ".".
    pub data: Vec<u8>,
    pub tls: bool,
    /// (mechanism, username) when the session authenticated.
    pub auth: Option<(String, String)>,
}

/// One command as the server saw it (verb and, for AUTH, the mechanism; never credentials).
#[derive(Debug, Clone)]
pub struct Event {
    pub conn: usize,
    pub tls: bool,
    pub command: String,
}

#[derive(Default)]
struct Shared {
    received: Mutex<Vec<Received>>,
    events: Mutex<Vec<Event>>,
    connections: AtomicUsize,
    open: AtomicUsize,
    max_open: AtomicUsize,
}

/// A panicking test must not poison the server for the others.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct SmtpServer {
    port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SmtpServer {
    /// Binds 127.0.0.1:0 and serves until dropped.
    pub async fn start(opts: Options) -> SmtpServer {
        install_crypto();
        assert!(
            opts.tls == Tls::None || opts.identity.is_some(),
            "a TLS server needs an identity"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("local_addr").port();
        let shared = Arc::new(Shared::default());
        let accept_shared = shared.clone();
        let opts = Arc::new(opts);
        let task = tokio::spawn(async move {
            // Aborting the accept task drops this set, which aborts every connection too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let id = accept_shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let open = accept_shared.open.fetch_add(1, Ordering::SeqCst) + 1;
                accept_shared.max_open.fetch_max(open, Ordering::SeqCst);
                while conns.try_join_next().is_some() {}
                let shared = accept_shared.clone();
                let opts = opts.clone();
                conns.spawn(async move {
                    let _open = OpenGuard(shared.clone());
                    let _ = handle(tcp, id, &opts, &shared).await;
                });
            }
        });
        SmtpServer { port, shared, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most connections that were open at the same time.
    pub fn max_open(&self) -> usize {
        self.shared.max_open.load(Ordering::SeqCst)
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    pub fn events(&self) -> Vec<Event> {
        lock(&self.shared.events).clone()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn handle(tcp: TcpStream, id: usize, opts: &Options, shared: &Shared) -> io::Result<()> {
    let acceptor = opts.identity.clone().map(TlsAcceptor::from);
    let mut tls = opts.tls == Tls::Implicit;
    let mut io: Box<dyn Io> = match (&acceptor, tls) {
        (Some(a), true) => Box::new(a.accept(tcp).await?),
        _ => Box::new(tcp),
    };
    let mut greet = true;
    loop {
        let mut s = Session {
            io: BufReader::new(io),
            id,
            tls,
            opts,
            shared,
            ehlo: false,
            auth: None,
            mail_from: None,
            rcpt_to: Vec::new(),
        };
        if greet {
            s.reply("220 localhost ESMTP CourierX test server").await?;
        }
        match s.serve().await? {
            // STARTTLS: BufReader::into_inner drops anything pipelined after it, as RFC 3207 asks.
            Some(plain) => {
                let Some(a) = &acceptor else {
                    return Ok(());
                };
                io = Box::new(a.accept(plain).await?);
                tls = true;
                greet = false;
            }
            None => return Ok(()),
        }
    }
}

struct Session<'a> {
    io: BufReader<Box<dyn Io>>,
    id: usize,
    tls: bool,
    opts: &'a Options,
    shared: &'a Shared,
    ehlo: bool,
    auth: Option<(String, String)>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

enum Auth {
    Ok(String),
    Refused,
    Cancelled,
}

impl Session<'_> {
    async fn reply(&mut self, line: &str) -> io::Result<()> {
        // One write per reply: split writes would stall on Nagle plus the peer's delayed ACK.
        let w = self.io.get_mut();
        w.write_all(format!("{line}\r\n").as_bytes()).await?;
        w.flush().await
    }

    /// One line without its ending; `None` at EOF.
    async fn line(&mut self) -> io::Result<Option<String>> {
        let mut buf = Vec::new();
        if self.io.read_until(b'\n', &mut buf).await? == 0 {
            return Ok(None);
        }
        while buf.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            buf.pop();
        }
        Ok(Some(String::from_utf8_lossy(&buf).into_owned()))
    }

    fn record(&self, command: String) {
        lock(&self.shared.events).push(Event {
            conn: self.id,
            tls: self.tls,
            command,
        });
    }

    fn auth_offered(&self) -> bool {
        !self.opts.mechanisms.is_empty() && (self.tls || self.opts.tls == Tls::None)
    }

    /// Serves commands until QUIT or EOF (`None`), or returns the raw stream after STARTTLS.
    async fn serve(mut self) -> io::Result<Option<Box<dyn Io>>> {
        while let Some(line) = self.line().await? {
            let (verb, arg) = match line.split_once(' ') {
                Some((v, a)) => (v.to_ascii_uppercase(), a.trim().to_string()),
                None => (line.to_ascii_uppercase(), String::new()),
            };
            let event = if verb == "AUTH" {
                let mech = arg.split(' ').next().unwrap_or("").to_ascii_uppercase();
                format!("AUTH {mech}")
            } else {
                verb.clone()
            };
            self.record(event);
            match verb.as_str() {
                "EHLO" | "HELO" => {
                    self.ehlo = true;
                    self.reset();
                    let mut ext = vec!["localhost greets you".to_string(), "8BITMIME".into()];
                    if self.opts.tls == Tls::Starttls && !self.tls {
                        ext.push("STARTTLS".into());
                    }
                    if self.auth_offered() {
                        ext.push(format!("AUTH {}", self.opts.mechanisms.join(" ")));
                    }
                    let last = ext.len() - 1;
                    for (i, e) in ext.iter().enumerate() {
                        let sep = if i == last { ' ' } else { '-' };
                        self.reply(&format!("250{sep}{e}")).await?;
                    }
                }
                "STARTTLS" => {
                    if self.opts.tls != Tls::Starttls || self.tls {
                        self.reply("454 4.7.0 TLS not available").await?;
                    } else {
                        self.reply("220 2.0.0 Ready to start TLS").await?;
                        return Ok(Some(self.io.into_inner()));
                    }
                }
                "AUTH" => self.auth(&arg).await?,
                "MAIL" => {
                    if !self.ehlo {
                        self.reply("503 5.5.1 EHLO first").await?;
                    } else if self.opts.credentials.is_some() && self.auth.is_none() {
                        self.reply("530 5.7.0 Authentication required").await?;
                    } else if self.mail_from.is_some() {
                        self.reply("503 5.5.1 Nested MAIL command").await?;
                    } else if let Some(addr) = path(&arg, "FROM:") {
                        self.mail_from = Some(addr);
                        self.reply("250 2.1.0 Ok").await?;
                    } else {
                        self.reply("501 5.5.4 Syntax: MAIL FROM:<address>").await?;
                    }
                }
                "RCPT" => {
                    if self.mail_from.is_none() {
                        self.reply("503 5.5.1 MAIL first").await?;
                    } else if let Some(r) = self.opts.rcpt_reply {
                        self.reply(r).await?;
                    } else if let Some(addr) = path(&arg, "TO:") {
                        self.rcpt_to.push(addr);
                        self.reply("250 2.1.5 Ok").await?;
                    } else {
                        self.reply("501 5.5.4 Syntax: RCPT TO:<address>").await?;
                    }
                }
                "DATA" => self.data().await?,
                "RSET" => {
                    self.reset();
                    self.reply("250 2.0.0 Ok").await?;
                }
                "NOOP" => self.reply("250 2.0.0 Ok").await?,
                "QUIT" => {
                    self.reply("221 2.0.0 Bye").await?;
                    return Ok(None);
                }
                _ => self.reply("502 5.5.2 Command not recognized").await?,
            }
        }
        Ok(None)
    }

    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }

    async fn data(&mut self) -> io::Result<()> {
        if self.rcpt_to.is_empty() {
            return self.reply("503 5.5.1 RCPT first").await;
        }
        self.reply("354 End data with <CR><LF>.<CR><LF>").await?;
        let mut data = Vec::new();
        loop {
            let mut buf = Vec::new();
            if self.io.read_until(b'\n', &mut buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if buf == b".\r\n" || buf == b".\n" {
                break;
            }
            let body = if buf.starts_with(b".") {
                &buf[1..]
            } else {
                &buf[..]
            };
            data.extend_from_slice(body);
        }
        tokio::time::sleep(self.opts.data_delay).await;
        let got = Received {
            conn: self.id,
            mail_from: self.mail_from.take().unwrap_or_default(),
            rcpt_to: std::mem::take(&mut self.rcpt_to),
            data,
            tls: self.tls,
            auth: self.auth.clone(),
        };
        lock(&self.shared.received).push(got);
        self.reply("250 2.0.0 Ok: queued").await
    }

    async fn auth(&mut self, arg: &str) -> io::Result<()> {
        let mut parts = arg.splitn(2, ' ');
        let mech = parts.next().unwrap_or("").to_ascii_uppercase();
        let initial = parts.next().map(str::to_string);
        if self.auth.is_some() {
            return self.reply("503 5.5.1 Already authenticated").await;
        }
        if !self.tls && self.opts.tls != Tls::None {
            return self
                .reply("538 5.7.11 Encryption required for requested authentication mechanism")
                .await;
        }
        if !self.opts.mechanisms.contains(&mech.as_str()) {
            return self
                .reply("504 5.5.4 Unrecognized authentication type")
                .await;
        }
        let outcome = match mech.as_str() {
            "PLAIN" => self.auth_plain(initial).await?,
            _ => self.auth_login(initial).await?,
        };
        match outcome {
            Auth::Ok(user) => {
                self.auth = Some((mech, user));
                self.reply("235 2.7.0 Authentication successful").await
            }
            Auth::Refused => {
                self.reply("535 5.7.8 Authentication credentials invalid")
                    .await
            }
            Auth::Cancelled => self.reply("501 5.7.0 Authentication cancelled").await,
        }
    }

    /// A client response to a 334 challenge, decoded; `None` when the client sent "*".
    async fn challenge(&mut self, prompt: &str) -> io::Result<Option<Vec<u8>>> {
        self.reply(&format!("334 {prompt}")).await?;
        let line = self.line().await?.ok_or(io::ErrorKind::UnexpectedEof)?;
        if line == "*" {
            return Ok(None);
        }
        Ok(Some(B64.decode(line.trim()).unwrap_or_default()))
    }

    /// RFC 4616: base64 of `authzid NUL authcid NUL passwd`, possibly as the initial response.
    async fn auth_plain(&mut self, initial: Option<String>) -> io::Result<Auth> {
        let raw = match initial {
            Some(i) if i != "=" => B64.decode(i.trim()).unwrap_or_default(),
            _ => match self.challenge("").await? {
                Some(r) => r,
                None => return Ok(Auth::Cancelled),
            },
        };
        let fields: Vec<&[u8]> = raw.split(|b| *b == 0).collect();
        let [_authzid, user, pass] = fields[..] else {
            return Ok(Auth::Refused);
        };
        Ok(self.check(user, pass))
    }

    /// draft-murchison-sasl-login: base64 "Username:" and "Password:" prompts.
    async fn auth_login(&mut self, initial: Option<String>) -> io::Result<Auth> {
        let user = match initial {
            Some(i) => B64.decode(i.trim()).unwrap_or_default(),
            None => match self.challenge(&B64.encode("Username:")).await? {
                Some(u) => u,
                None => return Ok(Auth::Cancelled),
            },
        };
        let Some(pass) = self.challenge(&B64.encode("Password:")).await? else {
            return Ok(Auth::Cancelled);
        };
        Ok(self.check(&user, &pass))
    }

    fn check(&self, user: &[u8], pass: &[u8]) -> Auth {
        match &self.opts.credentials {
            Some((u, p)) if u.as_bytes() == user && p.as_bytes() == pass => Auth::Ok(u.clone()),
            _ => Auth::Refused,
        }
    }
}

/// `FROM:<a@b> PARAMS` → `a@b`.
fn path(arg: &str, prefix: &str) -> Option<String> {
    let rest = arg
        .get(..prefix.len())?
        .eq_ignore_ascii_case(prefix)
        .then(|| &arg[prefix.len()..])?;
    let rest = rest.trim_start();
    let inner = rest.strip_prefix('<')?;
    let end = inner.find('>')?;
    Some(inner[..end].to_string())
}

/// The provider under test, built the way the product builds it.
pub fn provider(config: Value) -> Arc<dyn EmailProvider> {
    install_crypto();
    let kind = courierx_providers::kind("smtp").expect("smtp kind registered");
    match (kind.build)(&config) {
        Ok(p) => p,
        Err(e) => panic!("build smtp provider: {e:?}"),
    }
}

pub fn email(to: &str, subject: &str) -> OutboundEmail {
    OutboundEmail {
        message_id: MessageId::new(),
        created_at: 1_700_000_000_000,
        from: Mailbox::parse("Acme <noreply@acme.test>").expect("from"),
        to: vec![Mailbox::parse(to).expect("to")],
        cc: vec![],
        bcc: vec![],
        reply_to: None,
        subject: subject.to_string(),
        html: None,
        text: Some(format!("Body of {subject}\r\n.leading dot line\r\n")),
        headers: vec![],
        tags: vec![],
        metadata: Default::default(),
        attachments: vec![],
        idempotency_key: None,
    }
}

/// A port on 127.0.0.1 that refuses connections (bound, then released).
pub async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    l.local_addr().expect("local_addr").port()
}
