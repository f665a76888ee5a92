//! Retention: housekeeping passes run with an injected clock, the counters behind `/metrics`
//! against real counts, and erasing a recipient.

use crate::both;
use crate::helpers::*;
use courierx_domain::now_ms;
use courierx_engine::housekeeping::{RetentionConfig, run_once};
use courierx_store::{Db, on};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both!(
    purges_old_data_in_batches,
    counters_match_real_counts,
    erasing_a_recipient
);

const DAY: i64 = 86_400_000;

async fn count(db: &Db, sql: &str) -> i64 {
    let sql = sql.to_string();
    on!(db, p => sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql)).fetch_one(p).await).unwrap()
}

fn with_attachment() -> Value {
    let mut m = simple_email();
    m["attachments"] = json!([{"filename": "hello.txt", "content": "aGVsbG8gd29ybGQ="}]);
    m
}

fn in_an_hour() -> String {
    chrono::DateTime::from_timestamp_millis(now_ms() + 3_600_000)
        .unwrap()
        .to_rfc3339()
}

async fn purges_old_data_in_batches(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let sent = app.send(&t.key, simple_email()).await;
    let attached = app.send(&t.key, with_attachment()).await;
    let mut later = simple_email();
    later["send_at"] = in_an_hour().into();
    let scheduled = app.send(&t.key, later.clone()).await;
    let cancelled = app.send(&t.key, later).await;
    let (s, v) = app
        .post(
            &format!("/api/v1/messages/{cancelled}/cancel"),
            Some(&t.key),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    app.wait_status(&t.key, &sent, "sent").await;
    app.wait_status(&t.key, &attached, "sent").await;
    let res = app
        .client
        .post(format!("{}/api/v1/messages", app.base))
        .header("x-api-key", &t.key)
        .header("idempotency-key", "order-1")
        .json(&simple_email())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let idem: Value = res.json().await.unwrap();
    let idem = idem["id"].as_str().unwrap().to_string();
    app.wait_status(&t.key, &idem, "sent").await;
    let (s, _) = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "owner@acme.test", "password": "wrong password"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let db = app.db().await;
    let cfg = RetentionConfig::default();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM sandbox_messages").await, 3);
    // Now: nothing is old enough.
    let r = run_once(&db, &cfg, now_ms()).await.unwrap();
    assert_eq!(r.get("messages") + r.get("sandbox_messages"), 0, "{r:?}");

    // Eight days on: sandbox copies, idempotency keys and login failures have gone; messages stay.
    let r = run_once(&db, &cfg, now_ms() + 8 * DAY).await.unwrap();
    assert_eq!(r.get("sandbox_messages"), 3, "{r:?}");
    assert_eq!(r.get("idempotency_keys"), 1, "{r:?}");
    assert!(r.get("login_failures") >= 1, "{r:?}");
    assert_eq!(r.get("messages"), 0, "{r:?}");
    let (s, _) = app.get(&format!("/api/v1/messages/{sent}"), &t.key).await;
    assert_eq!(s, StatusCode::OK);

    // A month on: terminal messages go with everything hanging off them; the scheduled one (it
    // still has its job) stays.
    let r = run_once(&db, &cfg, now_ms() + 31 * DAY).await.unwrap();
    assert_eq!(r.get("messages"), 4, "{r:?}");
    assert_eq!(r.get("attachment_blobs"), 1, "{r:?}");
    assert!(r.get("message_events") >= 8, "{r:?}");
    for id in [&sent, &attached, &cancelled, &idem] {
        let (s, _) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{id} purged");
    }
    let (s, m) = app
        .get(&format!("/api/v1/messages/{scheduled}"), &t.key)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m["status"], "scheduled");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM messages").await, 1);
    for table in [
        "attachment_blobs",
        "message_attachments",
        "message_recipients",
        "idempotency_keys",
        "login_failures",
    ] {
        assert_eq!(
            count(&db, &format!("SELECT COUNT(*) FROM {table}")).await,
            0,
            "{table}"
        );
    }
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM message_events").await,
        count(
            &db,
            &format!("SELECT COUNT(*) FROM message_events WHERE message_id = '{scheduled}'")
        )
        .await
    );
    // Refresh tokens outlive a month only if their TTL does; a pass after any TTL clears them.
    run_once(&db, &cfg, now_ms() + 3650 * DAY).await.unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM refresh_tokens").await, 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM messages").await, 1);
    assert_counters_exact(&db).await;
}

/// The figures behind `courierx_messages{status}` and `courierx_queue_depth` equal real counts.
/// (Read from the store: the metrics recorder is global, shared by tests running in parallel.)
async fn assert_counters_exact(db: &Db) {
    let counted = db.messages_by_status().await.unwrap();
    for s in courierx_domain::MessageStatus::ALL {
        let real = count(
            db,
            &format!("SELECT COUNT(*) FROM messages WHERE status = '{s}'"),
        )
        .await;
        let kept = counted
            .iter()
            .find(|(st, _)| st == s.as_str())
            .map_or(0, |(_, n)| *n);
        assert_eq!(kept, real, "status {s}");
    }
    assert_eq!(
        db.queue_stats(now_ms()).await.unwrap().depth,
        count(db, "SELECT COUNT(*) FROM jobs").await
    );
}

async fn counters_match_real_counts(backend: Backend) {
    let app = TestApp::spawn_with(backend, |r| r.set("max_attempts", "1")).await;
    let db = app.db().await;
    assert_counters_exact(&db).await;
    let t = app.tenant("Acme").await;
    let mut sent = Vec::new();
    for _ in 0..3 {
        sent.push(app.send(&t.key, simple_email()).await);
    }
    let (s, v) = app
        .post(
            "/api/v1/messages/batch",
            Some(&t.key),
            json!({"messages": [simple_email(), simple_email(), with_attachment()]}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    for item in v["data"].as_array().unwrap() {
        sent.push(item["id"].as_str().unwrap().to_string());
    }
    let mut later = simple_email();
    later["send_at"] = in_an_hour().into();
    let scheduled = app.send(&t.key, later.clone()).await;
    let cancelled = app.send(&t.key, later).await;
    app.post(
        &format!("/api/v1/messages/{cancelled}/cancel"),
        Some(&t.key),
        json!({}),
    )
    .await;
    for id in &sent {
        app.wait_status(&t.key, id, "sent").await;
    }
    // A provider nobody listens on: with one attempt allowed the message fails.
    let other = app.tenant("Other").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    app.use_smtp(&other, port, json!({})).await;
    let failed = app.send(&other.key, simple_email()).await;
    app.wait_status(&other.key, &failed, "failed").await;
    assert_counters_exact(&db).await;
    db.compact_counters().await.unwrap();
    assert_counters_exact(&db).await;

    run_once(&db, &RetentionConfig::default(), now_ms() + 31 * DAY)
        .await
        .unwrap();
    assert_eq!(count(&db, "SELECT COUNT(*) FROM messages").await, 1);
    let (s, _) = app
        .get(&format!("/api/v1/messages/{scheduled}"), &t.key)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_counters_exact(&db).await;
    db.compact_counters().await.unwrap();
    assert_counters_exact(&db).await;
}

async fn erasing_a_recipient(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let email = |to: Value| {
        json!({"from": "noreply@acme.test", "to": to, "cc": ["Carol <carol@example.test>"],
               "subject": "Your order", "text": "Hi Bob", "html": "<p>Hi Bob</p>",
               "metadata": {"order": "42"},
               "attachments": [{"filename": "hello.txt", "content": "aGVsbG8gd29ybGQ="}]})
    };
    let to_bob = app
        .send(&t.key, email(json!(["Bob Smith <Bob@Example.test>"])))
        .await;
    let to_alice = app.send(&t.key, email(json!(["alice@example.test"]))).await;
    app.wait_status(&t.key, &to_bob, "sent").await;
    app.wait_status(&t.key, &to_alice, "sent").await;
    // The same address in another project and in another tenant.
    let other_project = app.create_project(&t.session.access, "Second").await;
    let other_key = app
        .create_key(&t.session.access, other_project["id"].as_str().unwrap())
        .await;
    let elsewhere = app
        .send(&other_key, email(json!(["bob@example.test"])))
        .await;
    let other = app.tenant("Other").await;
    let other_tenant = app
        .send(&other.key, email(json!(["bob@example.test"])))
        .await;
    app.wait_status(&other_key, &elsewhere, "sent").await;
    app.wait_status(&other.key, &other_tenant, "sent").await;
    // A suppression for the address survives the erasure.
    let (s, v) = app
        .post(
            "/api/v1/suppressions",
            Some(&t.key),
            json!({"suppressions": [{"email": "bob@example.test"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");

    let (s, v, _) = app
        .call(
            Method::DELETE,
            "/api/v1/recipients/not-an-address",
            Some(&t.key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_error(&v, "validation_failed");
    let (s, v, _) = app
        .call(
            Method::DELETE,
            "/api/v1/recipients/BOB@example.test",
            Some(&t.key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"bob@example.test");
    let hash = format!("sha256:{}", hex::encode(digest.as_ref()));
    assert_eq!(v["email_hash"], hash.as_str());
    assert_eq!(v["messages_erased"], 1);
    assert_eq!(v["messages_in_flight"], 0);

    let (s, m) = app.get(&format!("/api/v1/messages/{to_bob}"), &t.key).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(m["status"], "sent", "the status stays");
    assert_eq!(m["to"], json!([hash]));
    assert_eq!(m["cc"], json!(["Carol <carol@example.test>"]));
    assert_eq!(m["subject"], "");
    assert_eq!(m["metadata"], json!({}));
    assert_eq!(m["attachments"], json!([]));
    assert!(!m["events"].as_array().unwrap().is_empty(), "events stay");
    assert!(
        !m.to_string().to_lowercase().contains("bob@example.test"),
        "{m}"
    );
    let db = app.db().await;
    let (html, text): (Option<String>, Option<String>) = on!(&db, p => sqlx::query_as(
        "SELECT html, text_body FROM messages WHERE id = $1").bind(&to_bob).fetch_one(p).await)
    .unwrap();
    assert_eq!((html, text), (None, None));
    assert_eq!(
        count(
            &db,
            &format!("SELECT COUNT(*) FROM sandbox_messages WHERE message_id = '{to_bob}'")
        )
        .await,
        0
    );
    // Untouched: the other message of the project, the other project's, the other tenant's.
    for (id, key) in [
        (&to_alice, &t.key),
        (&elsewhere, &other_key),
        (&other_tenant, &other.key),
    ] {
        let (_, m) = app.get(&format!("/api/v1/messages/{id}"), key).await;
        assert_eq!(m["subject"], "Your order", "{m}");
        assert_eq!(m["attachments"].as_array().unwrap().len(), 1, "{m}");
    }
    let (_, m) = app
        .get(&format!("/api/v1/messages/{elsewhere}"), &other_key)
        .await;
    assert_eq!(m["to"], json!(["bob@example.test"]));
    let (_, list) = app
        .get("/api/v1/suppressions?email=bob@example.test", &t.key)
        .await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    // Erasing again finds nothing left.
    let (s, v, _) = app
        .call(
            Method::DELETE,
            "/api/v1/recipients/bob@example.test",
            Some(&t.key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["messages_erased"], 0);
}
