//! The new-user walk: register, project, key, send through the sandbox, then through SMTP;
//! restart and find everything still there.

use crate::both;
use crate::helpers::*;
use crate::smtp_server::{Behavior, SmtpServer};
use serde_json::json;

both!(new_user_walk);

async fn new_user_walk(backend: Backend) {
    let mut app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;

    // The project sends through the tenant's sandbox until told otherwise.
    let id = app.send(&t.key, simple_email()).await;
    let m = app.wait_status(&t.key, &id, "sent").await;
    assert_eq!(m["attempts"], 1);
    let kinds: Vec<&str> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["queued", "sent"]);
    let (_, sb) = app.get("/api/v1/sandbox/messages", &t.key).await;
    let captured = &sb["data"][0];
    assert_eq!(captured["message_id"], id.as_str());
    assert_eq!(captured["subject"], "Hello");
    let raw = captured["raw"].as_str().unwrap();
    assert!(raw.contains("Subject: Hello"), "{raw}");
    assert!(raw.contains(m["provider_message_id"].as_str().unwrap()));

    // Then through a real SMTP server.
    let smtp = SmtpServer::start(Behavior::default()).await;
    app.use_smtp(&t, smtp.port(), json!({})).await;
    let id2 = app.send(&t.key, json!({"from": "Acme <noreply@acme.test>", "to": ["carol@example.test"], "subject": "Via SMTP", "text": "plain"})).await;
    let m2 = app.wait_status(&t.key, &id2, "sent").await;
    let got = smtp.wait_for(1, std::time::Duration::from_secs(10)).await;
    assert_eq!(got[0].rcpt_to, ["carol@example.test"]);
    let body = String::from_utf8_lossy(&got[0].data);
    assert!(
        body.contains(&format!(
            "Message-ID: {}",
            m2["provider_message_id"].as_str().unwrap()
        )),
        "{body}"
    );

    // Restart: messages, keys and settings are all still there.
    app.restart().await;
    let (s, again) = app.get(&format!("/api/v1/messages/{id2}"), &t.key).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(again["status"], "sent");
    let (s, projects) = app.get("/api/v1/projects", &t.session.access).await;
    assert_eq!(s, 200);
    assert_eq!(projects["data"][0]["id"], t.project_id.as_str());
    let id3 = app.send(&t.key, simple_email()).await;
    app.wait_status(&t.key, &id3, "sent").await;
    assert_eq!(
        smtp.wait_for(2, std::time::Duration::from_secs(10))
            .await
            .len(),
        2
    );
    app.stop().await;
}
