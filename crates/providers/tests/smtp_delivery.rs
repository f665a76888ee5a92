//! Delivery behaviour of the SMTP provider: reply classification, connection reuse, the
//! `max_connections` cap, health, and config validation.

mod support_smtp;

use courierx_providers::SendError;
use serde_json::{Value, json};
use std::time::Duration;
use support_smtp::{Options, SmtpServer, closed_port, email, provider};
use tokio::task::JoinSet;

fn plain(port: u16) -> Value {
    json!({ "host": "127.0.0.1", "port": port, "security": "none", "timeout_ms": 5000 })
}

async fn send_with_rcpt_reply(reply: &'static str) -> SendError {
    let s = SmtpServer::start(Options {
        rcpt_reply: Some(reply),
        ..Options::default()
    })
    .await;
    let p = provider(plain(s.port()));
    let err = p
        .send(&email("bob@example.test", "x"))
        .await
        .expect_err("recipient refused");
    assert!(s.received().is_empty());
    err
}

#[tokio::test]
async fn rcpt_4xx_is_transient_and_5xx_permanent() {
    let err = send_with_rcpt_reply("450 4.2.1 Mailbox busy, try later").await;
    assert!(matches!(err, SendError::Transient(_)), "{err:?}");
    let err = send_with_rcpt_reply("550 5.1.1 No such user").await;
    assert!(matches!(err, SendError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("550"), "{err}");
}

#[tokio::test]
async fn sequential_messages_share_one_connection() {
    let s = SmtpServer::start(Options::default()).await;
    let p = provider(plain(s.port()));
    for i in 0..20 {
        p.send(&email("bob@example.test", &format!("message {i}")))
            .await
            .unwrap_or_else(|e| panic!("message {i}: {e}"));
    }
    let got = s.received();
    assert_eq!(got.len(), 20);
    assert_eq!(s.connections(), 1, "one TCP connection for all 20 messages");
    assert!(got.iter().all(|r| r.conn == 1));
    // Dot-stuffing survives the round trip on a reused connection.
    let body = String::from_utf8_lossy(&got[19].data);
    assert!(body.contains("\r\n.leading dot line"), "{body}");
    assert!(body.contains("Subject: message 19"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_stay_within_max_connections() {
    let s = SmtpServer::start(Options {
        data_delay: Duration::from_millis(25),
        ..Options::default()
    })
    .await;
    let mut cfg = plain(s.port());
    cfg["max_connections"] = json!(3);
    let p = provider(cfg);
    let mut tasks = JoinSet::new();
    for i in 0..40 {
        let p = p.clone();
        tasks.spawn(async move { p.send(&email("bob@example.test", &format!("c{i}"))).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").unwrap_or_else(|e| panic!("send: {e}"));
    }
    assert_eq!(s.received().len(), 40);
    assert!(
        s.max_open() <= 3,
        "at most 3 open at once, saw {}",
        s.max_open()
    );
    assert!(
        s.max_open() >= 2,
        "sends did run in parallel, saw {}",
        s.max_open()
    );
    assert!(
        s.connections() <= 3,
        "idle connections reused, {} opened",
        s.connections()
    );
}

#[tokio::test]
async fn health_follows_the_server() {
    let s = SmtpServer::start(Options::default()).await;
    let h = provider(plain(s.port())).health().await;
    assert!(h.healthy, "{}", h.detail);

    let h = provider(plain(closed_port().await)).health().await;
    assert!(!h.healthy, "{}", h.detail);
    assert!(h.detail.starts_with("SMTP:"), "{}", h.detail);
}

fn validate(v: Value) -> Result<Value, Vec<String>> {
    let kind = courierx_providers::kind("smtp").expect("smtp kind");
    (kind.validate)(&v).map_err(|e| e.0.into_iter().map(|f| f.field).collect())
}

#[test]
fn max_connections_is_validated_and_defaulted() {
    for bad in [0, 101] {
        let err = validate(json!({ "host": "smtp.example.com", "max_connections": bad }))
            .expect_err("out of range");
        assert_eq!(err, vec!["config.max_connections".to_string()], "{bad}");
    }
    let ok = validate(json!({ "host": "smtp.example.com", "max_connections": 100 })).expect("ok");
    assert_eq!(ok["max_connections"], 100);
    let ok = validate(json!({ "host": "smtp.example.com" })).expect("defaults");
    assert_eq!(ok["max_connections"], 10);
    assert_eq!(ok["port"], 587);
}

#[test]
fn old_pool_size_configs_are_normalised() {
    let ok = validate(json!({ "host": "smtp.example.com", "pool_size": 4 })).expect("alias");
    assert_eq!(ok["max_connections"], 4);
    assert!(ok.get("pool_size").is_none(), "{ok}");
    // A stored config re-validated keeps its value.
    assert_eq!(validate(ok.clone()).expect("round trip"), ok);
    let err = validate(json!({ "host": "smtp.example.com", "pool_size": 0 })).expect_err("range");
    assert_eq!(err, vec!["config.max_connections".to_string()]);
}

#[test]
fn auth_mechanism_is_checked() {
    let base = json!({ "host": "smtp.example.com", "username": "u", "password": "p" });
    for m in ["plain", "login"] {
        let mut v = base.clone();
        v["auth_mechanism"] = json!(m);
        assert_eq!(validate(v).expect("valid")["auth_mechanism"], m);
    }
    let mut v = base.clone();
    v["auth_mechanism"] = json!("cram-md5");
    assert_eq!(
        validate(v).expect_err("unknown"),
        vec!["config".to_string()]
    );
    let err = validate(json!({ "host": "smtp.example.com", "auth_mechanism": "plain" }))
        .expect_err("no credentials");
    assert_eq!(err, vec!["config.auth_mechanism".to_string()]);
}

#[test]
fn ca_cert_pem_must_hold_a_certificate() {
    for bad in [
        "not a pem at all",
        "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    ] {
        let err =
            validate(json!({ "host": "smtp.example.com", "security": "tls", "ca_cert_pem": bad }))
                .expect_err("no certificate");
        assert_eq!(err, vec!["config.ca_cert_pem".to_string()], "{bad}");
    }
}
