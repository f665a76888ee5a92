//! The SMTP provider's security modes against a TLS-enabled test server whose certificate comes
//! from a CA made at test time and handed over as `ca_cert_pem`.

mod support_smtp;

use courierx_providers::SendError;
use serde_json::json;
use std::time::Duration;
use support_smtp::{Options, PASSWORD, SmtpServer, TestCa, Tls, USER, email, provider};

async fn tls_server(ca: &TestCa, tls: Tls) -> SmtpServer {
    SmtpServer::start(
        Options {
            tls,
            identity: Some(ca.server_tls()),
            ..Options::default()
        }
        .with_auth(),
    )
    .await
}

#[tokio::test]
async fn starttls_upgrades_before_auth_and_mail() {
    let ca = TestCa::new("CourierX test CA");
    let server = tls_server(&ca, Tls::Starttls).await;
    let p = provider(json!({
        "host": "localhost", "port": server.port(), "security": "starttls",
        "username": USER, "password": PASSWORD, "ca_cert_pem": ca.pem(), "timeout_ms": 5000,
    }));
    p.send(&email("bob@example.test", "over starttls"))
        .await
        .expect("send over STARTTLS");

    let got = server.received();
    assert_eq!(got.len(), 1);
    assert_eq!(server.connections(), 1);
    assert!(got[0].tls, "message arrived over TLS");
    assert_eq!(got[0].auth, Some(("PLAIN".into(), USER.into())));
    assert_eq!(got[0].mail_from, "noreply@acme.test");
    assert_eq!(got[0].rcpt_to, vec!["bob@example.test".to_string()]);
    let data = String::from_utf8_lossy(&got[0].data);
    assert!(data.contains("Subject: over starttls"), "{data}");

    let events = server.events();
    let pos = |cmd: &str| events.iter().position(|e| e.command.starts_with(cmd));
    let starttls = pos("STARTTLS").expect("client sent STARTTLS");
    assert!(starttls < pos("AUTH").expect("AUTH sent"), "{events:?}");
    assert!(starttls < pos("MAIL").expect("MAIL sent"), "{events:?}");
    assert!(
        events
            .iter()
            .filter(|e| e.command.starts_with("AUTH") || e.command == "MAIL")
            .all(|e| e.tls),
        "AUTH and MAIL only inside TLS: {events:?}"
    );
}

#[tokio::test]
async fn implicit_tls_delivers() {
    let ca = TestCa::new("CourierX test CA");
    let server = tls_server(&ca, Tls::Implicit).await;
    let p = provider(json!({
        "host": "localhost", "port": server.port(), "security": "tls",
        "username": USER, "password": PASSWORD, "ca_cert_pem": ca.pem(), "timeout_ms": 5000,
    }));
    for i in 0..3 {
        p.send(&email("bob@example.test", &format!("over tls {i}")))
            .await
            .expect("send over implicit TLS");
    }
    let got = server.received();
    assert_eq!(got.len(), 3);
    assert_eq!(
        server.connections(),
        1,
        "the TLS session is pooled and reused"
    );
    assert!(got.iter().all(|r| r.tls));
    assert_eq!(got[0].auth, Some(("PLAIN".into(), USER.into())));
    assert!(
        server
            .events()
            .iter()
            .all(|e| e.tls && e.command != "STARTTLS")
    );
}

/// The certificate names both `localhost` and 127.0.0.1: an IP host is checked against the
/// IP address SAN.
#[tokio::test]
async fn ip_address_host_verifies_against_ip_san() {
    let ca = TestCa::new("CourierX test CA");
    for (tls, security) in [(Tls::Starttls, "starttls"), (Tls::Implicit, "tls")] {
        let server = tls_server(&ca, tls).await;
        let p = provider(json!({
            "host": "127.0.0.1", "port": server.port(), "security": security,
            "username": USER, "password": PASSWORD, "ca_cert_pem": ca.pem(), "timeout_ms": 5000,
        }));
        p.send(&email("bob@example.test", "by ip"))
            .await
            .unwrap_or_else(|e| panic!("{security} to 127.0.0.1: {e}"));
        assert_eq!(server.received().len(), 1);
    }
}

#[tokio::test]
async fn plaintext_against_server_that_wants_tls_for_auth_fails_cleanly() {
    let ca = TestCa::new("CourierX test CA");
    let server = tls_server(&ca, Tls::Starttls).await;

    // AUTH is only advertised after STARTTLS, so the client finds no mechanism to use.
    let p = provider(json!({
        "host": "127.0.0.1", "port": server.port(), "security": "none",
        "username": USER, "password": PASSWORD, "timeout_ms": 5000,
    }));
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        p.send(&email("bob@example.test", "x")),
    )
    .await
    .expect("no hang")
    .expect_err("no AUTH without TLS");
    assert!(matches!(err, SendError::ProviderDown(_)), "{err:?}");
    assert!(!err.to_string().contains(PASSWORD));

    // Without credentials the server refuses MAIL with 530.
    let p = provider(json!({
        "host": "127.0.0.1", "port": server.port(), "security": "none", "timeout_ms": 5000,
    }));
    let err = p
        .send(&email("bob@example.test", "x"))
        .await
        .expect_err("530 on MAIL");
    assert!(matches!(err, SendError::ProviderDown(_)), "{err:?}");
    assert!(err.to_string().contains("530"), "{err}");

    assert!(server.received().is_empty());
    assert!(
        server
            .events()
            .iter()
            .all(|e| !e.command.starts_with("AUTH")),
        "credentials never offered in plaintext"
    );
}

#[tokio::test]
async fn starttls_mode_never_falls_back_to_plaintext() {
    let server = SmtpServer::start(Options::default().with_auth()).await;
    let p = provider(json!({
        "host": "127.0.0.1", "port": server.port(), "security": "starttls",
        "username": USER, "password": PASSWORD, "timeout_ms": 5000,
    }));
    let err = p
        .send(&email("bob@example.test", "x"))
        .await
        .expect_err("server offers no STARTTLS");
    assert!(matches!(err, SendError::ProviderDown(_)), "{err:?}");
    assert!(server.received().is_empty());
    assert!(
        server
            .events()
            .iter()
            .all(|e| !e.command.starts_with("AUTH") && e.command != "MAIL"),
        "{:?}",
        server.events()
    );
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let trusted = TestCa::new("Trusted CA");
    let other = TestCa::new("Other CA");
    for (tls, security) in [(Tls::Starttls, "starttls"), (Tls::Implicit, "tls")] {
        let server = tls_server(&other, tls).await;
        let p = provider(json!({
            "host": "localhost", "port": server.port(), "security": security,
            "username": USER, "password": PASSWORD, "ca_cert_pem": trusted.pem(),
            "timeout_ms": 5000,
        }));
        let err = p
            .send(&email("bob@example.test", "x"))
            .await
            .expect_err("untrusted certificate");
        assert!(
            matches!(err, SendError::Transient(_) | SendError::ProviderDown(_)),
            "{security}: {err:?}"
        );
        assert!(err.to_string().contains("certificate"), "{security}: {err}");
        assert!(server.received().is_empty());
        assert!(
            server
                .events()
                .iter()
                .all(|e| !e.command.starts_with("AUTH")),
            "{security}: no credentials sent to an unverified server"
        );
        let health = p.health().await;
        assert!(!health.healthy, "{security}: {}", health.detail);
    }
}

/// A certificate from the trusted CA but for another name is refused, in both TLS modes.
#[tokio::test]
async fn certificate_for_another_host_is_refused() {
    let ca = TestCa::new("CourierX test CA");
    for (tls, security) in [(Tls::Starttls, "starttls"), (Tls::Implicit, "tls")] {
        for host in ["localhost", "127.0.0.1"] {
            let server = SmtpServer::start(
                Options {
                    tls,
                    identity: Some(ca.server_tls_for(&["mail.example.test", "192.0.2.1"])),
                    ..Options::default()
                }
                .with_auth(),
            )
            .await;
            let p = provider(json!({
                "host": host, "port": server.port(), "security": security,
                "username": USER, "password": PASSWORD, "ca_cert_pem": ca.pem(),
                "timeout_ms": 5000,
            }));
            let err = p
                .send(&email("bob@example.test", "x"))
                .await
                .expect_err("certificate names another host");
            assert!(
                err.to_string().contains("not valid for name"),
                "{security} {host}: {err}"
            );
            assert!(server.received().is_empty());
            assert!(
                server
                    .events()
                    .iter()
                    .all(|e| !e.command.starts_with("AUTH")),
                "{security} {host}: no credentials sent to the wrong server"
            );
        }
    }
}

#[tokio::test]
async fn health_over_tls() {
    let ca = TestCa::new("CourierX test CA");
    let server = tls_server(&ca, Tls::Starttls).await;
    let p = provider(json!({
        "host": "localhost", "port": server.port(), "security": "starttls",
        "username": USER, "password": PASSWORD, "ca_cert_pem": ca.pem(), "timeout_ms": 5000,
    }));
    let h = p.health().await;
    assert!(h.healthy, "{}", h.detail);
    assert!(h.detail.contains("authentication accepted"), "{}", h.detail);
}

/// lettre writes a message body and its final `.` separately: without TCP_NODELAY each message
/// waits for the server's delayed ACK (~40 ms). Timing is printed, not asserted (shared CI hosts).
#[tokio::test]
async fn pooled_sequential_sends_timing() {
    let ca = TestCa::new("CourierX test CA");
    for (tls, security) in [(Tls::Implicit, "tls"), (Tls::Starttls, "starttls")] {
        let server = tls_server(&ca, tls).await;
        let p = provider(json!({
            "host": "localhost", "port": server.port(), "security": security,
            "username": USER, "password": PASSWORD, "ca_cert_pem": ca.pem(), "timeout_ms": 5000,
        }));
        // The first send pays for the connection, TLS handshake and AUTH.
        p.send(&email("bob@example.test", "warm-up"))
            .await
            .expect("warm-up send");
        let start = std::time::Instant::now();
        for i in 0..20 {
            p.send(&email("bob@example.test", &format!("{security} {i}")))
                .await
                .unwrap_or_else(|e| panic!("{security} send {i}: {e}"));
        }
        let elapsed = start.elapsed();
        eprintln!("{security}: 20 pooled messages in {elapsed:?}");
        assert_eq!(server.received().len(), 21);
        assert_eq!(server.connections(), 1, "{security}: one pooled connection");
    }
}
