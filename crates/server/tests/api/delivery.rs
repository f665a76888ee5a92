//! Delivery through a real SMTP server running in the test: MIME correctness, failure handling,
//! leases and pooling.

use crate::both;
use crate::helpers::*;
use crate::smtp_server::{Behavior, SmtpServer};
use mail_parser::{MessageParser, MimeHeaders};
use reqwest::StatusCode;
use serde_json::json;
use std::time::Duration;

both!(
    api_and_worker_processes_share_the_database,
    smtp_message_is_correct_mime,
    transient_then_permanent_failures,
    gives_up_after_max_attempts,
    dead_worker_job_is_redelivered,
    provider_check_and_auth,
    connections_are_pooled
);

async fn smtp_message_is_correct_mime(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    app.use_smtp(&t, smtp.port(), json!({})).await;
    let id = app
        .send(
            &t.key,
            json!({
                "from": "Zoë Ünïcode <noreply@acme.test>",
                "to": ["Bob <bob@example.test>", "carol@example.test"],
                "cc": "dave@example.test",
                "bcc": ["secret@example.test"],
                "reply_to": "support@acme.test",
                "subject": "Grüße — your order ✓",
                "text": "Hello in text",
                "html": "<p>Hello in <b>HTML</b></p>",
                "headers": {"X-Campaign": "spring"},
                "tags": ["welcome"]
            }),
        )
        .await;
    let m = app.wait_status(&t.key, &id, "sent").await;
    let got = smtp.wait_for(1, Duration::from_secs(10)).await;
    let r = &got[0];
    assert_eq!(r.mail_from, "noreply@acme.test");
    let mut rcpts = r.rcpt_to.clone();
    rcpts.sort();
    assert_eq!(
        rcpts,
        [
            "bob@example.test",
            "carol@example.test",
            "dave@example.test",
            "secret@example.test"
        ]
    );
    let raw = String::from_utf8_lossy(&r.data).to_string();
    assert!(
        !raw.to_lowercase().contains("secret@example.test"),
        "Bcc must not appear in the headers:\n{raw}"
    );
    assert!(
        raw.contains("=?utf-8?") || raw.contains("=?UTF-8?"),
        "non-ASCII subject is RFC 2047 encoded:\n{raw}"
    );
    let msg = MessageParser::default()
        .parse(&r.data)
        .expect("parseable MIME");
    assert_eq!(msg.subject(), Some("Grüße — your order ✓"));
    assert_eq!(
        msg.message_id(),
        Some(
            m["provider_message_id"]
                .as_str()
                .unwrap()
                .trim_matches(['<', '>'])
        )
    );
    assert!(msg.date().is_some(), "Date header present");
    assert_eq!(
        msg.from().unwrap().first().unwrap().name(),
        Some("Zoë Ünïcode")
    );
    assert_eq!(msg.to().unwrap().iter().count(), 2);
    assert_eq!(
        msg.cc().unwrap().first().unwrap().address(),
        Some("dave@example.test")
    );
    assert!(msg.bcc().is_none());
    assert_eq!(
        msg.reply_to().unwrap().first().unwrap().address(),
        Some("support@acme.test")
    );
    assert_eq!(msg.header_raw("X-Campaign").map(str::trim), Some("spring"));
    assert!(
        msg.content_type()
            .is_some_and(|c| c.ctype() == "multipart" && c.subtype() == Some("alternative"))
    );
    assert_eq!(
        msg.body_text(0).as_deref().map(str::trim),
        Some("Hello in text")
    );
    assert!(msg.body_html(0).is_some_and(|h| h.contains("<b>HTML</b>")));
}

async fn transient_then_permanent_failures(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let smtp = SmtpServer::start(Behavior {
        rcpt_reply: Some((450, "4.2.1 mailbox busy, try later".into())),
        ..Default::default()
    })
    .await;
    app.use_smtp(&t, smtp.port(), json!({})).await;

    // A 4xx is transient: an attempt_failed event with the next retry time, status back to queued…
    let id = app.send(&t.key, simple_email()).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let m = loop {
        let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
        if m["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "attempt_failed")
        {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no attempt_failed event: {m}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let ev = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "attempt_failed")
        .unwrap()
        .clone();
    assert!(
        ev["detail"]["error"].as_str().unwrap().contains("450"),
        "{ev}"
    );
    assert!(ev["detail"]["next_retry_at"].as_i64().is_some(), "{ev}");
    assert!(m["last_error"].as_str().unwrap().contains("mailbox busy"));
    // …and once the server recovers, the retry delivers it.
    smtp.set_behavior(Behavior::default());
    let m = app.wait_status(&t.key, &id, "sent").await;
    assert!(m["attempts"].as_i64().unwrap() >= 2, "{m}");

    // A 5xx is permanent: failed at once, no retry.
    smtp.set_behavior(Behavior {
        rcpt_reply: Some((550, "5.1.1 no such user".into())),
        ..Default::default()
    });
    let id = app.send(&t.key, simple_email()).await;
    let m = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(m["attempts"], 1);
    assert!(m["last_error"].as_str().unwrap().contains("550"), "{m}");
    let kinds: Vec<&str> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["queued", "failed"]);
}

async fn gives_up_after_max_attempts(backend: Backend) {
    let app = TestApp::spawn_with(backend, |r| {
        r.set("max_attempts", "3");
        r.set("backoff_base_ms", "50");
        r.set("backoff_max_ms", "100");
    })
    .await;
    let t = app.tenant("Acme").await;
    let smtp = SmtpServer::start(Behavior {
        data_reply: Some((451, "4.3.0 local error".into())),
        ..Default::default()
    })
    .await;
    app.use_smtp(&t, smtp.port(), json!({})).await;
    let id = app.send(&t.key, simple_email()).await;
    let m = app.wait_status(&t.key, &id, "failed").await;
    assert_eq!(m["attempts"], 3);
    assert!(
        m["last_error"]
            .as_str()
            .unwrap()
            .contains("gave up after 3 attempts"),
        "{m}"
    );
    let failed = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "attempt_failed")
        .count();
    assert_eq!(failed, 2, "every attempt is an event: {m}");
}

async fn dead_worker_job_is_redelivered(backend: Backend) {
    // An API-only process accepts the message; a worker elsewhere claims it and dies.
    let mut app = TestApp::spawn_with(backend, |r| r.set("run_workers", "false")).await;
    let t = app.tenant("Acme").await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    app.use_smtp(&t, smtp.port(), json!({})).await;
    let id = app.send(&t.key, simple_email()).await;
    let db = app.db().await;
    assert!(
        db.force_lease(&id, "dead-worker", courierx_domain::now_ms() + 1500)
            .await
            .unwrap()
    );
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(m["status"], "sending");
    // A process with workers starts; the job is claimed again once the dead lease expires.
    app.raw.set("run_workers", "true");
    app.restart().await;
    let m = app.wait_status(&t.key, &id, "sent").await;
    assert_eq!(m["attempts"], 2, "the dead worker's attempt counts: {m}");
    assert_eq!(smtp.wait_for(1, Duration::from_secs(10)).await.len(), 1);
}

async fn provider_check_and_auth(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let smtp = SmtpServer::start(Behavior {
        require_auth: Some(("mailer".into(), "pa55-word".into())),
        ..Default::default()
    })
    .await;
    let pid = app
        .use_smtp(
            &t,
            smtp.port(),
            json!({"username": "mailer", "password": "pa55-word"}),
        )
        .await;
    let (s, v) = app
        .post(
            &format!("/api/v1/providers/{pid}/check"),
            Some(&t.session.access),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["healthy"], true, "{v}");
    assert!(v["latency_ms"].as_u64().is_some());
    let id = app.send(&t.key, simple_email()).await;
    app.wait_status(&t.key, &id, "sent").await;
    let got = smtp.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].auth, Some(("mailer".into(), "pa55-word".into())));

    // Wrong password: the check says so, and a send is not lost (it retries).
    let (s, _, _) = app
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/providers/{pid}"),
            Some(&t.session.access),
            Some(json!({"config": {"password": "wrong"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = app
        .post(
            &format!("/api/v1/providers/{pid}/check"),
            Some(&t.session.access),
            json!({}),
        )
        .await;
    assert_eq!(v["healthy"], false, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("535"), "{v}");
    // An unreachable server is unhealthy too.
    let (_, p2) = app.post("/api/v1/providers", Some(&t.session.access), json!({"name": "Down", "type": "smtp", "config": {"host": "127.0.0.1", "port": 1, "security": "none", "timeout_ms": 500}})).await;
    let (_, v) = app
        .post(
            &format!("/api/v1/providers/{}/check", p2["id"].as_str().unwrap()),
            Some(&t.session.access),
            json!({}),
        )
        .await;
    assert_eq!(v["healthy"], false, "{v}");
}

async fn connections_are_pooled(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    app.use_smtp(&t, smtp.port(), json!({"pool_size": 2})).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(app.send(&t.key, simple_email()).await);
    }
    for id in &ids {
        app.wait_status(&t.key, id, "sent").await;
    }
    assert_eq!(smtp.wait_for(20, Duration::from_secs(10)).await.len(), 20);
    assert!(
        smtp.connections() <= 2,
        "20 messages over at most pool_size = 2 connections, saw {}",
        smtp.connections()
    );
}

async fn api_and_worker_processes_share_the_database(backend: Backend) {
    // One API-only process and one process that only delivers, on one database.
    let api = TestApp::spawn_with(backend, |r| r.set("run_workers", "false")).await;
    let t = api.tenant("Acme").await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    api.use_smtp(&t, smtp.port(), json!({})).await;
    let _worker = api.sibling(|r| r.set("run_workers", "true")).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(api.send(&t.key, simple_email()).await);
    }
    for id in &ids {
        let m = api.wait_status(&t.key, id, "sent").await;
        assert_eq!(m["attempts"], 1);
    }
    assert_eq!(smtp.wait_for(5, Duration::from_secs(10)).await.len(), 5);
    let ready: serde_json::Value = api
        .client
        .get(format!("{}/ready", api.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["checks"][2]["detail"],
        "workers run in other processes"
    );
}
