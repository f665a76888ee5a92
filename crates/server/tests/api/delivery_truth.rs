//! Delivery truth through the real server: a provider's signed webhook (Resend's Svix scheme)
//! moves messages forward only, feeds the suppression list, and the send-time check keeps
//! suppressed recipients from any provider; the suppression API; categories.

use crate::both;
use crate::fake_provider::{Answer, FakeResend, KEY};
use crate::helpers::*;
use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both!(
    provider_events_move_status_forward_and_suppress,
    events_before_the_send_answer_apply_later,
    suppression_api_and_categories,
    tracking_and_one_click_unsubscribe,
    mailgun_signatures_are_single_use
);

const SECRET_BYTES: [u8; 32] = [7u8; 32];

fn whsec() -> String {
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(SECRET_BYTES)
    )
}

pub(crate) struct Hook {
    url: String,
}

impl Hook {
    /// Posts `body` signed as Resend (Svix) does: HMAC-SHA256 over `id.timestamp.body`.
    pub(crate) async fn post(
        &self,
        app: &TestApp,
        svix_id: &str,
        ts: i64,
        body: &Value,
    ) -> (StatusCode, Value) {
        let raw = body.to_string();
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &SECRET_BYTES);
        let tag = aws_lc_rs::hmac::sign(&key, format!("{svix_id}.{ts}.{raw}").as_bytes());
        let sig = base64::engine::general_purpose::STANDARD.encode(tag.as_ref());
        let res = app
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .header("svix-id", svix_id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", format!("v1,{sig}"))
            .body(raw)
            .send()
            .await
            .unwrap();
        let s = res.status();
        (s, res.json().await.unwrap_or(Value::Null))
    }
}

pub(crate) fn now_s() -> i64 {
    chrono::Utc::now().timestamp()
}

pub(crate) fn resend_event(kind: &str, email_id: &str, to: &str, extra: Value) -> Value {
    let mut data = json!({
        "email_id": email_id,
        "from": "Acme <noreply@acme.test>",
        "to": [to],
        "subject": "Hi",
        "created_at": "2026-11-23T10:00:00.000Z"
    });
    if let (Some(d), Some(e)) = (data.as_object_mut(), extra.as_object()) {
        d.extend(e.clone());
    }
    json!({"type": kind, "created_at": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "data": data})
}

impl TestApp {
    /// A Resend provider (with its webhook secret) as the project's default; returns its hook.
    pub(crate) async fn resend_default(&self, t: &Tenant, fake: &FakeResend) -> Hook {
        let (s, v) = self
            .post(
                "/api/v1/providers",
                Some(&t.session.access),
                json!({"name": "Resend", "type": "resend", "config": {
                    "api_key": KEY, "base_url": fake.base_url(), "timeout_ms": 3000,
                    "webhook_signing_key": whsec()}}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "create provider: {v}");
        assert_eq!(v["config"]["webhook_signing_key"], "********");
        let pid = v["id"].as_str().unwrap().to_string();
        self.set_default_provider(t, &pid).await;
        Hook {
            url: format!("{}/webhooks/providers/{pid}", self.base),
        }
    }

    pub(crate) async fn settings(&self, t: &Tenant, settings: Value) {
        let (s, v, _) = self
            .call(
                Method::PATCH,
                &format!("/api/v1/projects/{}", t.project_id),
                Some(&t.session.access),
                Some(json!({"email_settings": settings})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }
}

pub(crate) fn mail(to: &str) -> Value {
    json!({"from": "noreply@acme.test", "to": to, "subject": "Hi", "text": "Hello"})
}

async fn provider_events_move_status_forward_and_suppress(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let fake = FakeResend::start(Answer::Ok).await;
    let hook = app.resend_default(&t, &fake).await;
    let id = app.send(&t.key, mail("bob@example.test")).await;
    let m = app.wait_status(&t.key, &id, "sent").await;
    let pmid = m["provider_message_id"].as_str().unwrap().to_string();
    assert_eq!(m["recipients"][0]["status"], "sent");

    // Unsigned, wrongly signed and replayed requests: 401, nothing changes.
    let delivered = resend_event("email.delivered", &pmid, "bob@example.test", json!({}));
    let (s, v, _) = app
        .call(
            Method::POST,
            &hook.url.replace(&app.base, ""),
            None,
            Some(delivered.clone()),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_error(&v, "unauthorized");
    let res = app
        .client
        .post(&hook.url)
        .header("svix-id", "msg_forged")
        .header("svix-timestamp", now_s().to_string())
        .header(
            "svix-signature",
            "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        )
        .body(delivered.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (s, _) = hook.post(&app, "msg_old", now_s() - 3600, &delivered).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(m["status"], "sent");

    // Delivered, then the same event again (a provider retry): stored once.
    let (s, v) = hook.post(&app, "msg_1", now_s(), &delivered).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"received": 1, "matched": 1, "pending": 0, "duplicates": 0})
    );
    let (s, v) = hook.post(&app, "msg_1", now_s(), &delivered).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["duplicates"], 1);
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(m["status"], "delivered");
    assert_eq!(m["recipients"][0]["email"], "bob@example.test");
    assert_eq!(m["recipients"][0]["status"], "delivered");
    let delivered_events: Vec<&Value> = m["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "delivered")
        .collect();
    assert_eq!(delivered_events.len(), 1, "{m}");
    assert_eq!(delivered_events[0]["recipient"], "bob@example.test");

    // A hard bounce after delivery moves on to bounced and suppresses the address.
    let bounced = resend_event(
        "email.bounced",
        &pmid,
        "bob@example.test",
        json!({"bounce": {"type": "Permanent", "subType": "General", "message": "550 5.1.1 user unknown"}}),
    );
    let (s, v) = hook.post(&app, "msg_2", now_s(), &bounced).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(m["status"], "bounced");
    assert_eq!(m["recipients"][0]["status"], "bounced");
    assert_eq!(m["recipients"][0]["detail"]["bounce_type"], "hard");
    // A late delivered never overrides bounced.
    let (s, _) = hook.post(&app, "msg_3", now_s(), &delivered).await;
    assert_eq!(s, StatusCode::OK);
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(m["status"], "bounced");
    assert_eq!(m["recipients"][0]["status"], "bounced");

    let (s, list) = app.get("/api/v1/suppressions", &t.key).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    let entry = &list["data"][0];
    assert_eq!(entry["email"], "bob@example.test");
    assert_eq!(entry["reason"], "hard_bounce");
    assert_eq!(entry["category"], Value::Null);
    assert_eq!(entry["source_message_id"], id.as_str());

    // The next message to bob never reaches the provider and ends `suppressed`.
    let hits = fake.hits();
    let id2 = app.send(&t.key, mail("bob@example.test")).await;
    let m2 = app.wait_status(&t.key, &id2, "suppressed").await;
    assert_eq!(fake.hits(), hits, "the provider must not be called");
    assert_eq!(m2["recipients"][0]["status"], "suppressed");
    assert_eq!(m2["recipients"][0]["detail"]["reason"], "hard_bounce");
    assert!(
        m2["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["type"] == "suppressed" && e["recipient"] == "bob@example.test")
    );
    // With another recipient left, only bob is dropped.
    let id3 = app
        .send(
            &t.key,
            json!({"from": "noreply@acme.test", "to": ["bob@example.test", "carol@example.test"], "subject": "Hi", "text": "x"}),
        )
        .await;
    app.wait_status(&t.key, &id3, "sent").await;
    let last = fake.bodies().last().cloned().unwrap();
    assert_eq!(last["to"], json!(["carol@example.test"]), "{last}");

    // Release (audited): bob receives mail again.
    let (s, _, _) = app
        .call(
            Method::DELETE,
            "/api/v1/suppressions/bob@example.test",
            Some(&t.key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _, _) = app
        .call(
            Method::DELETE,
            "/api/v1/suppressions/bob@example.test",
            Some(&t.key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (_, audit) = app
        .get("/api/v1/suppressions/bob@example.test/audit", &t.key)
        .await;
    let actions: Vec<(&str, &str)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["action"].as_str().unwrap(), a["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(actions[0], ("added", "system"));
    assert_eq!(actions[1].0, "released");
    assert!(actions[1].1.starts_with("api_key:"), "{audit}");
    let id4 = app.send(&t.key, mail("bob@example.test")).await;
    app.wait_status(&t.key, &id4, "sent").await;

    // Complaints suppress too; soft bounces only after the threshold (3 in 7 days).
    let m4 = app.wait_status(&t.key, &id4, "sent").await;
    let pmid4 = m4["provider_message_id"].as_str().unwrap().to_string();
    for i in 0..2 {
        let soft = resend_event(
            "email.bounced",
            &pmid4,
            "bob@example.test",
            json!({"bounce": {"type": "Transient", "subType": "MailboxFull", "message": "452 mailbox full"}}),
        );
        let (s, _) = hook
            .post(&app, &format!("msg_soft_{i}"), now_s(), &soft)
            .await;
        assert_eq!(s, StatusCode::OK);
    }
    let (_, list) = app.get("/api/v1/suppressions", &t.key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0, "{list}");
    let soft = resend_event(
        "email.bounced",
        &pmid4,
        "bob@example.test",
        json!({"bounce": {"type": "Transient", "subType": "MailboxFull", "message": "452 mailbox full"}}),
    );
    hook.post(&app, "msg_soft_2", now_s(), &soft).await;
    let (_, list) = app
        .get("/api/v1/suppressions?reason=soft_bounce", &t.key)
        .await;
    assert_eq!(list["data"][0]["email"], "bob@example.test", "{list}");

    // Another tenant cannot see or release this tenant's list, nor post to its hook by id.
    let other = app.tenant("Other").await;
    let (_, theirs) = app.get("/api/v1/suppressions", &other.key).await;
    assert_eq!(theirs["data"], json!([]));
    let (s, _, _) = app
        .call(
            Method::DELETE,
            "/api/v1/suppressions/bob@example.test",
            Some(&other.key),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = app
        .call(
            Method::POST,
            &format!("/webhooks/providers/{}", uuid::Uuid::now_v7()),
            None,
            Some(json!({})),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    let (_, metrics, _) = app.call(Method::GET, "/metrics", None, None).await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.contains("courierx_provider_events_total{provider=\"resend\",type=\"bounced\"}"),
        "{text}"
    );
}

async fn events_before_the_send_answer_apply_later(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let fake = FakeResend::start(Answer::Ok).await;
    let hook = app.resend_default(&t, &fake).await;
    // The provider reports delivery before CourierX has recorded its answer.
    fake.set_next_id("re_early_1");
    let early = resend_event(
        "email.delivered",
        "re_early_1",
        "dave@example.test",
        json!({}),
    );
    let (s, v) = hook.post(&app, "msg_early", now_s(), &early).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pending"], 1);
    let id = app.send(&t.key, mail("dave@example.test")).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
        if m["status"] == "delivered" {
            assert_eq!(m["provider_message_id"], "re_early_1");
            assert_eq!(m["recipients"][0]["status"], "delivered");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pending event never applied: {m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn suppression_api_and_categories(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let fake = FakeResend::start(Answer::Ok).await;
    app.resend_default(&t, &fake).await;

    // All valid or nothing: one bad entry fails the whole request with its own field.
    let (s, v) = app
        .post(
            "/api/v1/suppressions",
            Some(&t.key),
            json!({"suppressions": [{"email": "a@example.test"}, {"email": "not an address"}, {"email": "b@example.test", "reason": "bogus"}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let fields: Vec<&str> = v["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["suppressions[1].email", "suppressions[2].reason"]);
    let (_, list) = app.get("/api/v1/suppressions", &t.key).await;
    assert_eq!(list["data"], json!([]));
    let too_many: Vec<Value> = (0..1001)
        .map(|i| json!({"email": format!("u{i}@example.test")}))
        .collect();
    let (s, _) = app
        .post(
            "/api/v1/suppressions",
            Some(&t.key),
            json!({"suppressions": too_many}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let (s, v) = app
        .post(
            "/api/v1/suppressions",
            Some(&t.key),
            json!({"suppressions": [
                {"email": "A@Example.test"},
                {"email": "news@example.test", "reason": "unsubscribed", "category": "marketing"},
                {"email": "temp@example.test", "expires_at": "2099-01-01T00:00:00Z"}
            ]}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["added"], 3);
    let (_, p1) = app.get("/api/v1/suppressions?limit=2", &t.key).await;
    let emails: Vec<&str> = p1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["a@example.test", "news@example.test"]);
    assert_eq!(p1["data"][1]["category"], "marketing");
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = app
        .get(
            &format!("/api/v1/suppressions?limit=2&cursor={cursor}"),
            &t.key,
        )
        .await;
    assert_eq!(p2["data"][0]["email"], "temp@example.test");
    assert_eq!(p2["data"][0]["expires_at"], "2099-01-01T00:00:00.000Z");
    assert_eq!(p2["next_cursor"], Value::Null);
    let (_, only) = app
        .get("/api/v1/suppressions?reason=unsubscribed", &t.key)
        .await;
    assert_eq!(only["data"].as_array().unwrap().len(), 1);
    let (s, _) = app.get("/api/v1/suppressions?reason=nope", &t.key).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    let res = app
        .client
        .get(format!("{}/api/v1/suppressions/export", app.base))
        .bearer_auth(&t.key)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let csv = res.text().await.unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(
        lines[0],
        "email,category,reason,source_message_id,created_at,expires_at"
    );
    assert_eq!(lines.len(), 4, "{csv}");
    assert!(lines[2].starts_with("news@example.test,marketing,unsubscribed,,"));

    // Categories: declared in the project; marketing is not transactional.
    app.settings(
        &t,
        json!({"categories": {"marketing": {"transactional": false}, "receipts": {"transactional": true}}}),
    )
    .await;
    let mut undeclared = mail("x@example.test");
    undeclared["category"] = json!("weekly");
    let (s, v) = app.post("/api/v1/messages", Some(&t.key), undeclared).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"][0]["field"], "category");
    let (s, _) = app
        .post(
            "/api/v1/messages",
            Some(&t.key),
            json!({"from": "noreply@acme.test", "to": ["x@example.test", "y@example.test"], "subject": "Hi", "text": "x", "category": "marketing"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // Unsubscribed from marketing: marketing is suppressed, receipts still go.
    let mut promo = mail("news@example.test");
    promo["category"] = json!("marketing");
    let id = app.send(&t.key, promo).await;
    let m = app.wait_status(&t.key, &id, "suppressed").await;
    assert_eq!(m["category"], "marketing");
    assert_eq!(m["recipients"][0]["detail"]["scope"], "marketing");
    let mut receipt = mail("news@example.test");
    receipt["category"] = json!("receipts");
    let id = app.send(&t.key, receipt).await;
    app.wait_status(&t.key, &id, "sent").await;
    // A suppression for all mail stops every category.
    let mut receipt = mail("a@example.test");
    receipt["category"] = json!("receipts");
    let id = app.send(&t.key, receipt).await;
    app.wait_status(&t.key, &id, "suppressed").await;
}

/// The path of `url` from `marker` on (tests call the server at its real address whatever the
/// configured public URL).
pub(crate) fn path_from(url: &str, marker: &str) -> String {
    let i = url
        .find(marker)
        .unwrap_or_else(|| panic!("{marker} not in {url}"));
    url[i..].to_string()
}

async fn tracking_and_one_click_unsubscribe(backend: Backend) {
    let app = TestApp::spawn_with(backend, |r| r.set("public_url", "https://mail.acme.test")).await;
    let t = app.tenant("Acme").await;
    app.settings(
        &t,
        json!({"track_opens": true, "track_clicks": true, "unsubscribe_mailto": "unsub@acme.test",
               "categories": {"marketing": {"transactional": false}}}),
    )
    .await;
    let html = "<html><body><p>Hi</p><a href=\"https://shop.example/a?x=1&amp;y=2\">Shop</a> \
                <a href=\"mailto:help@acme.test\">Help</a></body></html>";
    let id = app
        .send(
            &t.key,
            json!({"from": "news@acme.test", "to": "reader@example.test", "subject": "Sale",
                   "html": html, "category": "marketing"}),
        )
        .await;
    app.wait_status(&t.key, &id, "sent").await;
    let (_, sandbox) = app.get("/api/v1/sandbox/messages", &t.key).await;
    let raw = sandbox["data"][0]["raw"].as_str().unwrap().to_string();
    let parsed = mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .unwrap();
    let body = parsed.body_html(0).unwrap().to_string();
    assert!(body.contains("href=\"mailto:help@acme.test\""), "{body}");
    assert!(
        !body.contains("shop.example"),
        "the link must be rewritten: {body}"
    );
    let click_url = body
        .split("href=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert!(
        click_url.starts_with("https://mail.acme.test/t/c/"),
        "{click_url}"
    );
    let pixel = body
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert!(pixel.starts_with("https://mail.acme.test/t/o/") && pixel.ends_with(".gif"));
    let lu = parsed
        .header_raw("List-Unsubscribe")
        .unwrap()
        .split_whitespace()
        .collect::<String>();
    assert!(lu.starts_with("<https://mail.acme.test/u/"), "{lu}");
    assert!(
        lu.contains(",<mailto:unsub@acme.test?subject=unsubscribe%20"),
        "{lu}"
    );
    assert_eq!(
        parsed.header_raw("List-Unsubscribe-Post").unwrap().trim(),
        "List-Unsubscribe=One-Click"
    );
    let unsub_path = path_from(lu.trim_start_matches('<').split('>').next().unwrap(), "/u/");

    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // The click redirects to the original URL only; a tampered token gets 404 and no Location.
    let res = no_redirect
        .get(format!("{}{}", app.base, path_from(&click_url, "/t/c/")))
        .header(
            "user-agent",
            "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Safari/605.1.15",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::FOUND);
    assert_eq!(res.headers()["location"], "https://shop.example/a?x=1&y=2");
    let mut tampered = path_from(&click_url, "/t/c/");
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let res = no_redirect
        .get(format!("{}{tampered}?url=https://evil.example", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert!(res.headers().get("location").is_none());

    let res = no_redirect
        .get(format!("{}{}", app.base, path_from(&pixel, "/t/o/")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["content-type"], "image/gif");
    assert_eq!(res.bytes().await.unwrap().len(), 43);
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    let events = m["events"].as_array().unwrap();
    let clicked = events.iter().find(|e| e["type"] == "clicked").unwrap();
    assert_eq!(clicked["detail"]["url"], "https://shop.example/a?x=1&y=2");
    assert_eq!(clicked["recipient"], "reader@example.test");
    let opened = events.iter().find(|e| e["type"] == "opened").unwrap();
    // No user agent at all: flagged as machine-made, still recorded.
    assert_eq!(opened["detail"]["machine"], true, "{opened}");
    assert_eq!(events.iter().filter(|e| e["type"] == "clicked").count(), 1);

    // The page changes nothing; the one-click POST unsubscribes with no page.
    let res = no_redirect
        .get(format!("{}{unsub_path}", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let page = res.text().await.unwrap();
    assert!(
        page.contains("<html lang=\"en\">") && page.contains(">Unsubscribe</button>"),
        "{page}"
    );
    let (_, list) = app.get("/api/v1/suppressions", &t.key).await;
    assert_eq!(list["data"], json!([]));
    let res = no_redirect
        .post(format!("{}{unsub_path}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.text().await.unwrap(), "");
    let (_, list) = app.get("/api/v1/suppressions", &t.key).await;
    assert_eq!(list["data"][0]["email"], "reader@example.test", "{list}");
    assert_eq!(list["data"][0]["category"], "marketing");
    assert_eq!(list["data"][0]["reason"], "unsubscribed");
    let (_, audit) = app
        .get("/api/v1/suppressions/reader@example.test/audit", &t.key)
        .await;
    assert_eq!(audit["data"][0]["actor"], "recipient");
    let page = no_redirect
        .get(format!("{}{unsub_path}", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains(">Resubscribe</button>"), "{page}");
    let res = no_redirect
        .post(format!("{}{unsub_path}", app.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("action=resubscribe")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::SEE_OTHER);
    let (_, list) = app.get("/api/v1/suppressions", &t.key).await;
    assert_eq!(list["data"], json!([]));
    let res = no_redirect
        .post(format!("{}/u/AAAA", app.base))
        .body("List-Unsubscribe=One-Click")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
}

/// Mailgun signs only timestamp + token: the same signature with another body is a replay.
async fn mailgun_signatures_are_single_use(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let signing_key = "key-0123456789abcdef0123456789abcdef";
    let (s, v) = app
        .post(
            "/api/v1/providers",
            Some(&t.session.access),
            json!({"name": "Mailgun", "type": "mailgun", "config": {
                "domain": "mg.acme.test", "api_key": "0123456789abcdef0123456789abcdef-1b2c3d4e-5f6a7b8c",
                "base_url": "http://127.0.0.1:9", "webhook_signing_key": signing_key}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let url = format!("/webhooks/providers/{}", v["id"].as_str().unwrap());
    let ts = now_s().to_string();
    let token = "c2d8ecbb8a1e4b3a9f0d3c5b7a6e1f20c2d8ecbb8a1e4b3a9f";
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, signing_key.as_bytes());
    let sig = hex::encode(aws_lc_rs::hmac::sign(&key, format!("{ts}{token}").as_bytes()).as_ref());
    let body = |event: &str, id: &str| {
        json!({
            "signature": {"timestamp": ts, "token": token, "signature": sig},
            "event-data": {"event": event, "id": id, "timestamp": now_s() as f64,
                "recipient": "alice@example.test",
                "message": {"headers": {"message-id": "20261123.abc@mg.acme.test"}},
                "severity": "permanent",
                "delivery-status": {"code": 550, "message": "5.1.1 user unknown", "description": ""}}
        })
    };
    let (s, v) = app.post(&url, None, body("delivered", "evt-1")).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pending"], 1);
    let (s, v) = app.post(&url, None, body("failed", "evt-2")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
    assert_error(&v, "unauthorized");
}
