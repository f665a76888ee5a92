//! Rich messages through the real server: attachments reaching an SMTP server intact, batch
//! sends with mixed items and idempotency, scheduled sends and cancelling.

use crate::both;
use crate::helpers::*;
use crate::smtp_server::{Behavior, SmtpServer};
use base64::Engine;
use mail_parser::{MessageParser, MimeHeaders};
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;

both!(
    attachments_reach_smtp_intact,
    attachment_rules_are_enforced,
    batch_with_mixed_items,
    batch_is_idempotent,
    large_batch_keeps_every_field,
    scheduled_send_and_cancel,
    send_with_template
);

const PNG: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A PDF-looking file with every byte value, so any transfer-encoding damage shows.
fn pdf_bytes() -> Vec<u8> {
    let mut v = b"%PDF-1.4\n".to_vec();
    v.extend((0..=255u8).cycle().take(70_000));
    v
}

async fn count(db: &courierx_store::Db, sql: &str) -> i64 {
    match db {
        courierx_store::Db::Sqlite(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(p)
            .await
            .unwrap(),
        courierx_store::Db::Postgres(p) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(p)
            .await
            .unwrap(),
    }
}

async fn attachments_reach_smtp_intact(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let smtp = SmtpServer::start(Behavior::default()).await;
    app.use_smtp(&t, smtp.port(), json!({})).await;
    let pdf = pdf_bytes();
    let id = app
        .send(
            &t.key,
            json!({"from": "noreply@acme.test", "to": "bob@example.test", "subject": "Invoice",
                   "text": "See attached", "html": "<p>Logo: <img src=\"cid:logo\"></p>",
                   "attachments": [
                       {"filename": "invoice.pdf", "content": b64(&pdf)},
                       {"filename": "logo.png", "content": PNG, "content_id": "logo"}]}),
        )
        .await;
    let m = app.wait_status(&t.key, &id, "sent").await;
    assert_eq!(m["attachments"][0]["filename"], "invoice.pdf");
    assert_eq!(
        m["attachments"][0]["content_type"], "application/pdf",
        "sniffed"
    );
    assert_eq!(m["attachments"][0]["size"], pdf.len());
    assert_eq!(m["attachments"][1]["content_id"], "logo");

    let got = smtp.wait_for(1, Duration::from_secs(10)).await;
    let msg = MessageParser::default().parse(&got[0].data).unwrap();
    let ct = |i: usize| {
        let c = msg.parts[i].content_type().unwrap();
        format!("{}/{}", c.ctype(), c.subtype().unwrap_or(""))
    };
    let tree: Vec<String> = (0..msg.parts.len()).map(ct).collect();
    assert_eq!(
        tree,
        [
            "multipart/mixed",
            "multipart/alternative",
            "text/plain",
            "multipart/related",
            "text/html",
            "image/png",
            "application/pdf"
        ]
    );
    assert_eq!(msg.parts[5].content_id(), Some("logo"));
    assert_eq!(msg.parts[6].attachment_name(), Some("invoice.pdf"));
    assert_eq!(msg.parts[6].contents(), pdf.as_slice(), "bytes intact");
    assert_eq!(
        msg.parts[5].contents(),
        base64::engine::general_purpose::STANDARD
            .decode(PNG)
            .unwrap()
            .as_slice()
    );
}

async fn attachment_rules_are_enforced(backend: Backend) {
    let app = TestApp::spawn_with(backend, |r| r.set("max_attachment_bytes", "4096")).await;
    let t = app.tenant("Acme").await;
    let base =
        json!({"from": "noreply@acme.test", "to": "bob@example.test", "subject": "x", "text": "x"});
    let with = |attachments: Value| {
        let mut b = base.clone();
        b["attachments"] = attachments;
        b
    };
    let cases = [
        (
            with(json!([{"filename": "setup.exe", "content": b64(b"hello")}])),
            "attachments[0]",
        ),
        (
            with(json!([{"filename": "notes.txt", "content": "%%%"}])),
            "attachments[0]",
        ),
        (
            with(json!([{"filename": "big.bin", "content": b64(&[7u8; 5000])}])),
            "attachments",
        ),
        (
            with(Value::Array(
                (0..11)
                    .map(|i| json!({"filename": format!("f{i}.txt"), "content": b64(b"x")}))
                    .collect(),
            )),
            "attachments",
        ),
        (
            with(json!([{"filename": "a.txt", "content": b64(b"x"), "colour": "red"}])),
            "attachments[0].colour",
        ),
    ];
    for (body, field) in cases {
        let (s, v) = app.post("/api/v1/messages", Some(&t.key), body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        let e = assert_error(&v, "validation_failed");
        assert!(
            e["details"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["field"].as_str().unwrap().starts_with(field)),
            "{field} in {v}"
        );
    }
    let (_, list) = app.get("/api/v1/messages", &t.key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "nothing stored");

    // A batch sending one file to many stores its bytes once.
    let items: Vec<Value> = (0..3)
        .map(|_| with(json!([{"filename": "terms.txt", "content": b64(b"same terms for all")}])))
        .collect();
    let (s, v) = app
        .post(
            "/api/v1/messages/batch",
            Some(&t.key),
            json!({"messages": items}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let db = app.db().await;
    assert_eq!(count(&db, "SELECT COUNT(*) FROM attachment_blobs").await, 1);
    assert_eq!(
        count(&db, "SELECT COUNT(*) FROM message_attachments").await,
        3
    );
}

async fn batch_with_mixed_items(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let (s, v) = app
        .post(
            "/api/v1/messages/batch",
            Some(&t.key),
            json!({"messages": [
                simple_email(),
                {"from": "noreply@acme.test", "subject": "no recipient", "text": "x"},
                {"from": "noreply@acme.test", "to": "bob@example.test", "subject": "x", "text": "x", "bogus": 1},
                simple_email(),
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 4);
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i);
    }
    assert_eq!(data[0]["status"], "queued");
    assert_eq!(data[1]["error"]["code"], "validation_failed");
    assert_eq!(data[1]["error"]["details"][0]["field"], "to");
    assert_eq!(data[2]["error"]["details"][0]["field"], "bogus");
    assert!(data[1]["id"].is_null());
    for i in [0, 3] {
        let id = data[i]["id"].as_str().unwrap();
        app.wait_status(&t.key, id, "sent").await;
    }

    let (s, v) = app
        .post(
            "/api/v1/messages/batch",
            Some(&t.key),
            json!({"messages": []}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let too_many: Vec<Value> = (0..501).map(|_| simple_email()).collect();
    let (s, _) = app
        .post(
            "/api/v1/messages/batch",
            Some(&t.key),
            json!({"messages": too_many}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn batch_is_idempotent(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let body = json!({"messages": [simple_email(), simple_email(), {"to": "x"}]});
    let post = |body: Value| {
        app.client
            .post(format!("{}/api/v1/messages/batch", app.base))
            .bearer_auth(&t.key)
            .header("idempotency-key", "batch-1")
            .json(&body)
            .send()
    };
    let first = post(body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    let first: Value = first.json().await.unwrap();
    let again = post(body.clone()).await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again, "the same answer, ids included");
    let other = post(json!({"messages": [simple_email()]})).await.unwrap();
    assert_eq!(other.status(), StatusCode::CONFLICT);
    let (_, list) = app.get("/api/v1/messages", &t.key).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        2,
        "accepted once: {list}"
    );
}

async fn scheduled_send_and_cancel(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let at = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(courierx_domain::now_ms() + ms)
            .unwrap()
            .to_rfc3339()
    };
    let mut soon = simple_email();
    soon["send_at"] = at(1500).into();
    let (s, v) = app.post("/api/v1/messages", Some(&t.key), soon).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["status"], "scheduled");
    let soon_id = v["id"].as_str().unwrap().to_string();
    let (_, m) = app
        .get(&format!("/api/v1/messages/{soon_id}"), &t.key)
        .await;
    assert_eq!(m["status"], "scheduled");
    assert!(m["send_at"].is_string());

    let mut later = simple_email();
    later["send_at"] = at(86_400_000).into();
    let later_id = app.send(&t.key, later).await;
    let (app, key) = (&app, t.key.clone());
    let cancel = |id: String| {
        let key = key.clone();
        async move {
            app.post(
                &format!("/api/v1/messages/{id}/cancel"),
                Some(&key),
                json!({}),
            )
            .await
        }
    };
    let (s, v) = cancel(later_id.clone()).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "cancelled");
    assert!(
        v["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "cancelled")
    );
    let (s, v) = cancel(later_id.clone()).await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_error(&v, "not_cancellable");

    // The scheduled one goes out once due, not before.
    let m = app.wait_status(&t.key, &soon_id, "sent").await;
    let sent = chrono::DateTime::parse_from_rfc3339(m["sent_at"].as_str().unwrap()).unwrap();
    let due = chrono::DateTime::parse_from_rfc3339(m["send_at"].as_str().unwrap()).unwrap();
    assert!(sent >= due, "sent {sent} before due {due}");
    let (s, _) = cancel(soon_id.clone()).await;
    assert_eq!(
        s,
        StatusCode::CONFLICT,
        "a sent message cannot be cancelled"
    );

    let mut far = simple_email();
    far["send_at"] = at(31 * 86_400_000).into();
    let (s, v) = app.post("/api/v1/messages", Some(&t.key), far).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let mut bad = simple_email();
    bad["send_at"] = "tomorrow".into();
    let (s, _) = app.post("/api/v1/messages", Some(&t.key), bad).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let other = app.tenant("Other").await;
    let (s, _) = app
        .post(
            &format!("/api/v1/messages/{later_id}/cancel"),
            Some(&other.key),
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn send_with_template(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let base = format!("/api/v1/projects/{}/templates", t.project_id);
    let (s, v) = app
        .post(
            &base,
            Some(&t.session.access),
            json!({"name": "Welcome", "subject": "Hi {{ name }}", "html": "<p>Hello {{ name }}, from {{ team }}</p>"}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let send = |data: Value| {
        json!({"from": "noreply@acme.test", "to": "bob@example.test",
                                    "template": {"slug": "welcome", "data": data}})
    };
    // Not published yet: refused.
    let (s, v) = app
        .post(
            "/api/v1/messages",
            Some(&t.key),
            send(json!({"name": "Ann", "team": "Acme"})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(
        assert_error(&v, "validation_failed")["details"][0]["field"],
        "template.slug"
    );
    let (s, v) = app
        .post(
            &format!("{base}/welcome/publish"),
            Some(&t.session.access),
            json!({"version": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");

    // Every missing variable is named.
    let (s, v) = app
        .post("/api/v1/messages", Some(&t.key), send(json!({})))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let mut fields: Vec<String> = assert_error(&v, "validation_failed")["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_string())
        .collect();
    fields.sort();
    assert_eq!(fields, ["template.data.name", "template.data.team"]);
    let mut both = send(json!({"name": "Ann", "team": "Acme"}));
    both["subject"] = json!("explicit");
    let (s, _) = app.post("/api/v1/messages", Some(&t.key), both).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let id = app
        .send(&t.key, send(json!({"name": "Ann <3", "team": "Acme"})))
        .await;
    let m = app.wait_status(&t.key, &id, "sent").await;
    assert_eq!(m["subject"], "Hi Ann <3", "subjects are not escaped");
    assert_eq!(m["template"]["slug"], "welcome");
    assert_eq!(m["template"]["version"], 1);
    let (_, sandbox) = app.get("/api/v1/sandbox/messages", &t.key).await;
    let raw = sandbox["data"][0]["raw"].as_str().unwrap();
    let parsed = MessageParser::default().parse(raw.as_bytes()).unwrap();
    let html = parsed.body_html(0).unwrap().to_string();
    assert!(html.contains("Hello Ann &lt;3, from Acme"), "{html}");
    let text = parsed.body_text(0).unwrap().to_string();
    assert!(
        text.contains("Hello Ann <3, from Acme"),
        "a text part is generated: {text}"
    );

    // Batch items may use templates too, each failing on its own.
    let (s, v) = app
        .post(
            "/api/v1/messages/batch",
            Some(&t.key),
            json!({"messages": [send(json!({"name": "Bo", "team": "Acme"})), send(json!({"name": "Cy"}))]}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["data"][0]["status"], "queued");
    assert_eq!(
        v["data"][1]["error"]["details"][0]["field"],
        "template.data.team"
    );
}

/// A batch large enough for the bulk path (Postgres inserts it by UNNEST) keeps every column.
async fn large_batch_keeps_every_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let later = chrono::DateTime::from_timestamp_millis(courierx_domain::now_ms() + 86_400_000)
        .unwrap()
        .to_rfc3339();
    let items: Vec<Value> = (0..150)
        .map(|i| {
            let mut m = json!({"from": "Acme <noreply@acme.test>", "to": format!("user{i}@example.test"),
                "subject": format!("Subject {i}"), "text": format!("Text {i}"), "tags": [format!("t{i}")],
                "metadata": {"i": i}});
            if i % 2 == 0 {
                m["cc"] = json!("cc@example.test");
                m["reply_to"] = json!("help@acme.test");
                m["html"] = json!(format!("<p>{i}</p>"));
            }
            if i % 3 == 0 {
                m["send_at"] = json!(later);
            }
            m
        })
        .collect();
    let (s, v) = app
        .post(
            "/api/v1/messages/batch",
            Some(&t.key),
            json!({"messages": items}),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 150);
    for i in [0usize, 1, 2, 3, 149] {
        let id = data[i]["id"].as_str().unwrap();
        let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
        assert_eq!(m["subject"], format!("Subject {i}"), "{m}");
        assert_eq!(m["to"], json!([format!("user{i}@example.test")]));
        assert_eq!(m["tags"], json!([format!("t{i}")]));
        assert_eq!(m["metadata"]["i"], i);
        if i % 2 == 0 {
            assert_eq!(m["cc"], json!(["cc@example.test"]));
            assert_eq!(m["reply_to"], "help@acme.test");
        } else {
            assert!(m["reply_to"].is_null());
        }
        if i % 3 == 0 {
            assert_eq!(m["status"], "scheduled");
            assert!(m["send_at"].is_string());
        } else {
            assert!(m["send_at"].is_null());
        }
        assert_eq!(
            m["events"][0]["type"],
            m["status"]
                .as_str()
                .map(|s| if s == "scheduled" {
                    "scheduled"
                } else {
                    "queued"
                })
                .unwrap()
        );
    }
    for i in [1usize, 149] {
        app.wait_status(&t.key, data[i]["id"].as_str().unwrap(), "sent")
            .await;
    }
}
