//! A small but real SMTP server (RFC 5321) for integration tests.
//!
//! Supports EHLO/HELO, AUTH PLAIN/LOGIN (RFC 4954), MAIL, RCPT, DATA (with
//! dot-unstuffing), RSET, NOOP and QUIT, several messages per connection, and
//! configurable failure behaviour (see [`Behavior`]).

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A message accepted by the server (the final DATA reply was 2xx).
#[derive(Debug, Clone)]
pub struct Received {
    pub mail_from: String,
    pub rcpt_to: Vec<String>,
    /// Message content with CRLF line endings, dot-stuffing undone, without the final ".".
    pub data: Vec<u8>,
    /// (username, password) if AUTH was used on the connection.
    pub auth: Option<(String, String)>,
}

#[derive(Debug, Clone, Default)]
pub struct Behavior {
    /// Reply to RCPT TO with this (code, text) instead of 250, e.g. (450, "4.2.1 mailbox busy") or (550, "5.1.1 no such user").
    pub rcpt_reply: Option<(u16, String)>,
    /// Reply to the end of DATA with this instead of 250.
    pub data_reply: Option<(u16, String)>,
    /// If set, AUTH is advertised (PLAIN and LOGIN) and required before MAIL; credentials must equal these.
    pub require_auth: Option<(String, String)>,
    /// Accept the TCP connection but never send the greeting (to simulate a hung server).
    pub hang: bool,
}

#[derive(Default)]
struct Shared {
    behavior: Mutex<Behavior>,
    received: Mutex<Vec<Received>>,
    connections: AtomicUsize,
}

/// Locks a mutex, ignoring poisoning (a panicking test must not cascade).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct SmtpServer {
    port: u16,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl SmtpServer {
    /// Binds 127.0.0.1:0 and starts accepting connections.
    pub async fn start(behavior: Behavior) -> SmtpServer {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind SMTP test server");
        let port = listener.local_addr().expect("local_addr").port();
        let shared = Arc::new(Shared {
            behavior: Mutex::new(behavior),
            ..Default::default()
        });
        let accept_shared = shared.clone();
        let task = tokio::spawn(async move {
            // Connection tasks live in this JoinSet, so aborting the accept task
            // (on drop of SmtpServer) aborts every connection as well.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                accept_shared.connections.fetch_add(1, Ordering::SeqCst);
                while conns.try_join_next().is_some() {}
                let shared = accept_shared.clone();
                conns.spawn(async move {
                    let _ = handle_connection(stream, shared).await;
                });
            }
        });
        SmtpServer { port, shared, task }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Takes effect for subsequent commands and connections.
    pub fn set_behavior(&self, b: Behavior) {
        *lock(&self.shared.behavior) = b;
    }

    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.received).clone()
    }

    /// Waits until at least `n` messages were received; panics on timeout.
    pub async fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Received> {
        let start = Instant::now();
        loop {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            if start.elapsed() >= timeout {
                panic!(
                    "SMTP test server: timed out after {timeout:?} waiting for {n} message(s); \
                     received {}: {got:#?}",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Number of TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Conn {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
}

impl Conn {
    /// Reads one line including its terminator; `None` on EOF.
    async fn read_raw(&mut self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = Vec::new();
        let n = self.reader.read_until(b'\n', &mut buf).await?;
        Ok((n > 0).then_some(buf))
    }

    /// Reads one command line without its line ending; `None` on EOF.
    async fn read_line(&mut self) -> io::Result<Option<String>> {
        let line = self.read_raw().await?;
        Ok(line.map(|l| String::from_utf8_lossy(&l).trim_end().to_string()))
    }

    async fn reply(&mut self, code: u16, text: &str) -> io::Result<()> {
        let line = format!("{code} {text}\r\n");
        self.writer.write_all(line.as_bytes()).await
    }

    /// Sends a 334 challenge and reads the client's response (EOF is an error).
    async fn prompt(&mut self, challenge: &str) -> io::Result<String> {
        self.reply(334, challenge).await?;
        let line = self.read_line().await?;
        line.ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }
}

/// Per-connection session state.
#[derive(Default)]
struct Session {
    greeted: bool,
    auth: Option<(String, String)>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
}

/// Case-insensitive prefix strip.
fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let (head, rest) = (s.get(..prefix.len())?, s.get(prefix.len()..)?);
    head.eq_ignore_ascii_case(prefix).then_some(rest)
}

/// Extracts the address between `<` and `>` (parameters after `>` are ignored).
fn parse_path(arg: &str) -> Option<String> {
    let rest = arg.trim_start().strip_prefix('<')?;
    Some(rest[..rest.find('>')?].to_string())
}

/// Decodes a base64 SASL response ("=" is an empty response, RFC 4954).
fn b64_string(s: &str) -> Option<String> {
    match s.trim() {
        "=" => Some(String::new()),
        s => String::from_utf8(B64.decode(s).ok()?).ok(),
    }
}

/// Decodes an AUTH PLAIN response: authzid NUL authcid NUL passwd.
fn decode_plain(s: &str) -> Option<(String, String)> {
    let decoded = b64_string(s)?;
    match decoded.split('\0').collect::<Vec<_>>()[..] {
        [_authzid, user, pass] => Some((user.to_string(), pass.to_string())),
        _ => None,
    }
}

/// Runs the AUTH exchange (`arg` is what follows "AUTH ") and sends the final reply.
/// Returns the credentials if they were accepted.
async fn authenticate(
    c: &mut Conn,
    arg: &str,
    expected: &(String, String),
) -> io::Result<Option<(String, String)>> {
    let (mech, initial) = match arg.split_once(' ') {
        Some((m, i)) => (m, Some(i.trim().to_string())),
        None => (arg, None),
    };
    let creds = if mech.eq_ignore_ascii_case("PLAIN") {
        let resp = match initial {
            Some(i) => i,
            None => c.prompt("").await?,
        };
        decode_plain(&resp)
    } else if mech.eq_ignore_ascii_case("LOGIN") {
        let user = match initial {
            Some(i) => i,
            None => c.prompt("VXNlcm5hbWU6").await?,
        };
        let pass = c.prompt("UGFzc3dvcmQ6").await?;
        b64_string(&user).zip(b64_string(&pass))
    } else {
        c.reply(504, "5.5.4 Unknown mechanism").await?;
        return Ok(None);
    };
    match creds {
        // Also covers a client cancelling with "*".
        None => c.reply(501, "5.5.2 Cannot decode response").await?,
        Some(creds) if creds == *expected => {
            c.reply(235, "2.7.0 Authentication successful").await?;
            return Ok(Some(creds));
        }
        Some(_) => c.reply(535, "5.7.8 Invalid credentials").await?,
    }
    Ok(None)
}

async fn handle_connection(mut stream: TcpStream, shared: Arc<Shared>) -> io::Result<()> {
    if lock(&shared.behavior).hang {
        // Never greet; just swallow whatever the client sends until it gives up.
        tokio::io::copy(&mut stream, &mut tokio::io::sink()).await?;
        return Ok(());
    }
    let (r, w) = stream.into_split();
    let mut c = Conn {
        reader: BufReader::new(r),
        writer: w,
    };
    let mut s = Session::default();
    c.reply(220, "localhost ESMTP test").await?;

    while let Some(line) = c.read_line().await? {
        let behavior = lock(&shared.behavior).clone();
        let (verb, arg) = line.split_once(' ').unwrap_or((line.as_str(), ""));
        let (verb, arg) = (verb.to_ascii_uppercase(), arg.trim());
        match verb.as_str() {
            "EHLO" | "HELO" => {
                (s.greeted, s.mail_from, s.rcpt_to) = (true, None, Vec::new());
                if verb == "HELO" {
                    c.reply(250, "localhost").await?;
                    continue;
                }
                let auth = behavior
                    .require_auth
                    .as_ref()
                    .map_or("", |_| "250-AUTH PLAIN LOGIN\r\n");
                let reply =
                    format!("250-localhost\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n{auth}250 OK\r\n");
                c.writer.write_all(reply.as_bytes()).await?;
            }
            "AUTH" => match &behavior.require_auth {
                None => c.reply(502, "5.5.1 AUTH not supported").await?,
                Some(_) if !s.greeted || s.auth.is_some() || s.mail_from.is_some() => {
                    c.reply(503, "5.5.1 Bad sequence of commands").await?
                }
                Some(expected) => s.auth = authenticate(&mut c, arg, expected).await?,
            },
            "MAIL" => {
                let path = strip_prefix_ci(arg, "FROM:").and_then(parse_path);
                if !s.greeted || s.mail_from.is_some() {
                    c.reply(503, "5.5.1 Bad sequence of commands").await?;
                } else if behavior.require_auth.is_some() && s.auth.is_none() {
                    c.reply(530, "5.7.0 Authentication required").await?;
                } else if let Some(from) = path {
                    s.mail_from = Some(from);
                    c.reply(250, "2.1.0 OK").await?;
                } else {
                    c.reply(501, "5.5.4 Syntax: MAIL FROM:<address>").await?;
                }
            }
            "RCPT" => {
                let path = strip_prefix_ci(arg, "TO:").and_then(parse_path);
                if s.mail_from.is_none() {
                    c.reply(503, "5.5.1 Need MAIL before RCPT").await?;
                } else if let Some(to) = path {
                    let (code, text) = behavior.rcpt_reply.unwrap_or((250, "2.1.5 OK".into()));
                    if code < 300 {
                        s.rcpt_to.push(to);
                    }
                    c.reply(code, &text).await?;
                } else {
                    c.reply(501, "5.5.4 Syntax: RCPT TO:<address>").await?;
                }
            }
            "DATA" => {
                if s.mail_from.is_none() || s.rcpt_to.is_empty() {
                    c.reply(503, "5.5.1 Need MAIL and RCPT before DATA").await?;
                    continue;
                }
                c.reply(354, "End data with <CR><LF>.<CR><LF>").await?;
                let mut data = Vec::new();
                loop {
                    let Some(l) = c.read_raw().await? else {
                        return Ok(());
                    };
                    if l == b".\r\n" {
                        break;
                    }
                    // RFC 5321 4.5.2: a leading period is removed (undo dot-stuffing).
                    data.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
                }
                let (code, text) = behavior
                    .data_reply
                    .unwrap_or((250, "2.0.0 OK: queued".into()));
                let (mail_from, rcpt_to) = (s.mail_from.take(), std::mem::take(&mut s.rcpt_to));
                if code < 300 {
                    let mail_from = mail_from.unwrap_or_default();
                    let msg = Received {
                        mail_from,
                        rcpt_to,
                        data,
                        auth: s.auth.clone(),
                    };
                    lock(&shared.received).push(msg);
                }
                c.reply(code, &text).await?;
            }
            "RSET" => {
                (s.mail_from, s.rcpt_to) = (None, Vec::new());
                c.reply(250, "2.0.0 OK").await?;
            }
            "NOOP" => c.reply(250, "2.0.0 OK").await?,
            "QUIT" => {
                c.reply(221, "2.0.0 Bye").await?;
                let _ = c.writer.shutdown().await;
                return Ok(());
            }
            _ => c.reply(502, "5.5.2 Command not recognized").await?,
        }
    }
    Ok(())
}

#[tokio::test]
async fn smtp_server_speaks_smtp() {
    async fn connect(port: u16) -> Conn {
        let stream = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (r, w) = stream.into_split();
        Conn {
            reader: BufReader::new(r),
            writer: w,
        }
    }
    // Sends `line` (unless empty), reads the full (possibly multi-line) reply, checks its code.
    async fn cmd(c: &mut Conn, line: &str, code: &str) -> String {
        if !line.is_empty() {
            let line = format!("{line}\r\n");
            c.writer.write_all(line.as_bytes()).await.unwrap();
        }
        let mut reply = String::new();
        loop {
            let l = c.read_line().await.unwrap().expect("connection closed");
            reply += &format!("{l}\n");
            if l.as_bytes().get(3) != Some(&b'-') {
                break;
            }
        }
        assert!(reply.starts_with(code), "{line:?}: got {reply:?}");
        reply
    }

    let creds = ("user".to_string(), "secret".to_string());
    let auth_only = Behavior {
        require_auth: Some(creds.clone()),
        ..Default::default()
    };
    let server = SmtpServer::start(auth_only.clone()).await;
    let mut c = connect(server.port()).await;
    assert_eq!(cmd(&mut c, "", "220").await, "220 localhost ESMTP test\n");
    let ehlo = cmd(&mut c, "ehlo client.example", "250").await;
    assert!(ehlo.contains("250-AUTH PLAIN LOGIN\n") && ehlo.ends_with("250 OK\n"));
    assert!(!ehlo.contains("PIPELINING"), "{ehlo}");
    cmd(&mut c, "MAIL FROM:<a@x.test>", "530").await;
    let bad = format!("AUTH PLAIN {}", B64.encode("\0user\0wrong"));
    cmd(&mut c, &bad, "535").await;
    cmd(&mut c, "AUTH PLAIN", "334").await;
    cmd(&mut c, &B64.encode("\0user\0secret"), "235").await;
    cmd(&mut c, "VRFY someone", "502").await;
    cmd(&mut c, "mail from:<a@x.test> BODY=8BITMIME", "250").await;
    cmd(&mut c, "RCPT TO:<b@x.test>", "250").await;
    cmd(&mut c, "rcpt to:<c@x.test>", "250").await;
    cmd(&mut c, "DATA", "354").await;
    cmd(&mut c, "Subject: hi\r\n\r\n..dot\r\nbody\r\n.", "250").await;

    // Second transaction on the same connection, with a rejected recipient.
    cmd(&mut c, "NOOP", "250").await;
    let reject = Some((550, "5.1.1 no such user".to_string()));
    server.set_behavior(Behavior {
        rcpt_reply: reject,
        ..auth_only.clone()
    });
    cmd(&mut c, "MAIL FROM:<>", "250").await;
    let reply = cmd(&mut c, "RCPT TO:<x@x.test>", "550").await;
    assert_eq!(reply, "550 5.1.1 no such user\n");
    cmd(&mut c, "DATA", "503").await;
    cmd(&mut c, "RSET", "250").await;
    cmd(&mut c, "QUIT", "221").await;
    assert!(c.read_line().await.unwrap().is_none(), "closed after QUIT");

    // A second connection authenticating with AUTH LOGIN.
    server.set_behavior(auth_only);
    let mut c = connect(server.port()).await;
    cmd(&mut c, "", "220").await;
    cmd(&mut c, "HELO client.example", "250").await;
    assert_eq!(cmd(&mut c, "auth login", "334").await, "334 VXNlcm5hbWU6\n");
    let reply = cmd(&mut c, &B64.encode("user"), "334").await;
    assert_eq!(reply, "334 UGFzc3dvcmQ6\n");
    cmd(&mut c, &B64.encode("secret"), "235").await;
    cmd(&mut c, "MAIL FROM:<d@x.test>", "250").await;
    cmd(&mut c, "RCPT TO:<e@x.test>", "250").await;
    cmd(&mut c, "DATA", "354").await;
    cmd(&mut c, "x\r\n.", "250").await;

    let got = server.wait_for(2, Duration::from_secs(5)).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].mail_from, "a@x.test");
    assert_eq!(got[0].rcpt_to, ["b@x.test", "c@x.test"]);
    assert_eq!(got[0].data, b"Subject: hi\r\n\r\n.dot\r\nbody\r\n");
    assert_eq!(got[0].auth, Some(creds.clone()));
    assert_eq!(
        (got[1].mail_from.as_str(), &got[1].data[..]),
        ("d@x.test", &b"x\r\n"[..])
    );
    assert_eq!(got[1].auth, Some(creds));

    // A hung server accepts the connection but never greets.
    server.set_behavior(Behavior {
        hang: true,
        ..Default::default()
    });
    let mut hung = connect(server.port()).await;
    let read = tokio::time::timeout(Duration::from_millis(200), hung.read_line()).await;
    assert!(read.is_err(), "hung server must not send a greeting");
    assert_eq!(server.connections(), 3);
}
