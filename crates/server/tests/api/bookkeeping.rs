//! Exactly-once bookkeeping: a late provider event is applied once however many processes
//! reconcile; repeat opens and clicks fold into one event; off-hot-path writes beside a send
//! burst never fail (on SQLite they all go through the one group-commit writer).

use crate::both;
use crate::delivery_truth::{mail, now_s, path_from, resend_event};
use crate::fake_provider::{Answer, FakeResend};
use crate::helpers::*;
use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both!(
    late_event_applies_once_across_processes,
    repeat_opens_and_clicks_fold,
    off_path_writes_beside_a_burst_never_fail
);

fn events_of<'a>(m: &'a Value, kind: &str) -> Vec<&'a Value> {
    m["events"]
        .as_array()
        .map(|e| e.iter().filter(|e| e["type"] == kind).collect())
        .unwrap_or_default()
}

async fn late_event_applies_once_across_processes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let fake = FakeResend::start(Answer::Ok).await;
    let hook = app.resend_default(&t, &fake).await;
    fake.set_next_id("re_late_1");
    let early = resend_event(
        "email.delivered",
        "re_late_1",
        "erin@example.test",
        json!({}),
    );
    let (s, v) = hook.post(&app, "msg_late", now_s(), &early).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["pending"], 1);
    // Two more processes on the same database, reconciling at the same moment as each other
    // (and as the server's own housekeeping).
    let settings = app.raw.parse().expect("settings");
    let (a, b) = (
        courierx::app::start_core(&settings).await.expect("core a"),
        courierx::app::start_core(&settings).await.expect("core b"),
    );
    let id = app.send(&t.key, mail("erin@example.test")).await;
    let mut applied = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (x, y) = tokio::join!(a.engine.reconcile_events(0), b.engine.reconcile_events(0));
        applied += x.expect("reconcile a") + y.expect("reconcile b");
        let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
        if m["status"] == "delivered" {
            break;
        }
        assert!(Instant::now() < deadline, "late event never applied: {m}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Whoever won, nobody applies it again.
    for _ in 0..3 {
        let (x, y) = tokio::join!(a.engine.reconcile_events(0), b.engine.reconcile_events(0));
        applied += x.expect("reconcile a") + y.expect("reconcile b");
    }
    assert!(applied <= 1, "applied {applied} times");
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(events_of(&m, "delivered").len(), 1, "{m}");
    assert_eq!(m["recipients"][0]["status"], "delivered", "{m}");
}

/// Sends one tracked HTML message through the sandbox; returns its id and the pixel and click
/// paths from the delivered copy.
async fn tracked_message(app: &TestApp, t: &Tenant) -> (String, String, String) {
    app.settings(t, json!({"track_opens": true, "track_clicks": true}))
        .await;
    let html = "<html><body><a href=\"https://shop.example/a\">A</a> \
                <a href=\"https://shop.example/b\">B</a></body></html>";
    let id = app
        .send(
            &t.key,
            json!({"from": "news@acme.test", "to": "reader@example.test", "subject": "Sale", "html": html}),
        )
        .await;
    app.wait_status(&t.key, &id, "sent").await;
    let (_, sandbox) = app.get("/api/v1/sandbox/messages", &t.key).await;
    let raw = sandbox["data"][0]["raw"].as_str().unwrap().to_string();
    let parsed = mail_parser::MessageParser::default()
        .parse(raw.as_bytes())
        .unwrap();
    let body = parsed.body_html(0).unwrap().to_string();
    let attr = |name: &str, nth: usize| {
        body.split(name)
            .nth(nth)
            .and_then(|s| s.split('"').next())
            .unwrap()
            .to_string()
    };
    (
        id,
        path_from(&attr("src=\"", 1), "/t/o/"),
        path_from(&attr("href=\"", 1), "/t/c/"),
    )
}

async fn hit(app: &TestApp, client: &reqwest::Client, path: &str) -> StatusCode {
    client
        .get(format!("{}{path}", app.base))
        .send()
        .await
        .expect("request")
        .status()
}

async fn repeat_opens_and_clicks_fold(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let (id, pixel, click) = tracked_message(&app, &t).await;
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    // 20 fetches of the pixel at once (a scanner), then 3 clicks of one link.
    let opens = join_all((0..20).map(|_| hit(&app, &no_redirect, &pixel))).await;
    assert!(opens.iter().all(|s| *s == StatusCode::OK), "{opens:?}");
    for _ in 0..3 {
        assert_eq!(hit(&app, &no_redirect, &click).await, StatusCode::FOUND);
    }
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    let opened = events_of(&m, "opened");
    assert_eq!(opened.len(), 1, "{m}");
    assert_eq!(opened[0]["detail"]["count"], 20, "{m}");
    assert!(opened[0]["detail"]["last_at"].as_i64().is_some(), "{m}");
    let clicked = events_of(&m, "clicked");
    assert_eq!(clicked.len(), 1, "{m}");
    assert_eq!(clicked[0]["detail"]["count"], 3, "{m}");
    assert_eq!(clicked[0]["detail"]["url"], "https://shop.example/a");
}

async fn off_path_writes_beside_a_burst_never_fail(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let (id, pixel, click) = tracked_message(&app, &t).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut scheduled = Vec::new();
    for i in 0..10 {
        let mut body = mail(&format!("later{i}@example.test"));
        body["send_at"] = json!(later);
        scheduled.push(app.send(&t.key, body).await);
    }
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (app, t) = (&app, &t);
    let opens = join_all((0..40).map(|_| hit(app, &no_redirect, &pixel)));
    let clicks = join_all((0..10).map(|_| hit(app, &no_redirect, &click)));
    let sends = join_all((0..30).map(|i| async move {
        app.post(
            "/api/v1/messages",
            Some(&t.key),
            mail(&format!("burst{i}@example.test")),
        )
        .await
    }));
    let cancels = join_all(scheduled.iter().map(|m| async move {
        app.post(
            &format!("/api/v1/messages/{m}/cancel"),
            Some(&t.key),
            json!({}),
        )
        .await
    }));
    let suppressions = join_all((0..10).map(|i| async move {
        app.post(
            "/api/v1/suppressions",
            Some(&t.key),
            json!({"suppressions": [{"email": format!("gone{i}@example.test")}]}),
        )
        .await
    }));
    let (opens, clicks, sends, cancels, suppressions) =
        tokio::join!(opens, clicks, sends, cancels, suppressions);
    assert!(opens.iter().all(|s| *s == StatusCode::OK), "{opens:?}");
    assert!(clicks.iter().all(|s| *s == StatusCode::FOUND), "{clicks:?}");
    for (s, v) in &sends {
        assert_eq!(*s, StatusCode::ACCEPTED, "{v}");
    }
    for (s, v) in &cancels {
        assert_eq!(*s, StatusCode::OK, "{v}");
        assert_eq!(v["status"], "cancelled", "{v}");
    }
    for (s, v) in &suppressions {
        assert_eq!(*s, StatusCode::CREATED, "{v}");
    }
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(events_of(&m, "opened")[0]["detail"]["count"], 40, "{m}");
    assert_eq!(events_of(&m, "clicked")[0]["detail"]["count"], 10, "{m}");
    let (_, list) = app.get("/api/v1/suppressions", &t.key).await;
    assert_eq!(list["data"].as_array().map(Vec::len), Some(10), "{list}");
}
