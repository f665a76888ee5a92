//! AUTH PLAIN and AUTH LOGIN, the `auth_mechanism` setting, and refused credentials.

mod support_smtp;

use courierx_providers::SendError;
use serde_json::{Value, json};
use support_smtp::{Options, PASSWORD, SmtpServer, USER, email, provider};

async fn server(mechanisms: Vec<&'static str>) -> SmtpServer {
    SmtpServer::start(
        Options {
            mechanisms,
            ..Options::default()
        }
        .with_auth(),
    )
    .await
}

fn config(port: u16, extra: Value) -> Value {
    let mut c = json!({
        "host": "127.0.0.1", "port": port, "security": "none",
        "username": USER, "password": PASSWORD, "timeout_ms": 5000,
    });
    if let (Some(c), Value::Object(extra)) = (c.as_object_mut(), extra) {
        c.extend(extra);
    }
    c
}

/// Sends one message and returns the mechanism the server saw it authenticate with.
async fn mechanism_used(advertised: Vec<&'static str>, chosen: Value) -> String {
    let s = server(advertised).await;
    let p = provider(config(s.port(), json!({ "auth_mechanism": chosen })));
    p.send(&email("bob@example.test", "auth"))
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    let got = s.received();
    assert_eq!(got.len(), 1);
    let (mech, user) = got[0].auth.clone().expect("authenticated");
    assert_eq!(user, USER);
    mech
}

#[tokio::test]
async fn picks_whichever_mechanism_the_server_offers() {
    assert_eq!(mechanism_used(vec!["PLAIN"], Value::Null).await, "PLAIN");
    assert_eq!(mechanism_used(vec!["LOGIN"], Value::Null).await, "LOGIN");
    assert_eq!(
        mechanism_used(vec!["LOGIN", "PLAIN"], Value::Null).await,
        "PLAIN"
    );
}

#[tokio::test]
async fn chosen_mechanism_is_used() {
    assert_eq!(
        mechanism_used(vec!["PLAIN", "LOGIN"], json!("login")).await,
        "LOGIN"
    );
    assert_eq!(
        mechanism_used(vec!["PLAIN", "LOGIN"], json!("plain")).await,
        "PLAIN"
    );
    assert_eq!(mechanism_used(vec!["LOGIN"], json!("login")).await, "LOGIN");
}

#[tokio::test]
async fn chosen_mechanism_the_server_lacks_is_a_provider_problem() {
    let s = server(vec!["PLAIN"]).await;
    let p = provider(config(s.port(), json!({ "auth_mechanism": "login" })));
    let err = p
        .send(&email("bob@example.test", "x"))
        .await
        .expect_err("LOGIN not offered");
    assert!(matches!(err, SendError::ProviderDown(_)), "{err:?}");
    assert!(s.received().is_empty());
    assert!(s.events().iter().all(|e| !e.command.starts_with("AUTH")));
}

#[tokio::test]
async fn wrong_password_is_provider_down_and_never_echoed() {
    let wrong = "Wr0ng-Secret-Value";
    for mech in ["plain", "login"] {
        let s = server(vec!["PLAIN", "LOGIN"]).await;
        let p = provider(config(
            s.port(),
            json!({ "password": wrong, "auth_mechanism": mech }),
        ));
        let err = p
            .send(&email("bob@example.test", "x"))
            .await
            .expect_err("bad password");
        let SendError::ProviderDown(msg) = &err else {
            panic!("{mech}: want ProviderDown, got {err:?}");
        };
        assert!(msg.contains("535"), "{mech}: {msg}");
        for text in [err.to_string(), format!("{err:?}")] {
            assert!(!text.contains(wrong), "{mech}: password leaked: {text}");
        }
        let h = p.health().await;
        assert!(!h.healthy);
        assert!(!h.detail.contains(wrong), "{}", h.detail);
        assert!(s.received().is_empty());
    }
}
