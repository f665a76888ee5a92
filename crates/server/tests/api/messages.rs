//! Accepting and reading messages: idempotency, listing, keys.

use crate::both;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

both!(
    idempotency_replays_and_conflicts,
    list_filters_and_cursor,
    revoked_and_expired_keys,
    revocation_reaches_every_process,
    provider_secrets_are_masked_and_sealed
);

async fn send_with_key(
    app: &TestApp,
    key: &str,
    idem: &str,
    body: Value,
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let res = app
        .client
        .post(format!("{}/api/v1/messages", app.base))
        .header("x-api-key", key)
        .header("idempotency-key", idem)
        .json(&body)
        .send()
        .await
        .unwrap();
    let (s, h) = (res.status(), res.headers().clone());
    (s, res.json().await.unwrap(), h)
}

async fn idempotency_replays_and_conflicts(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let (s1, v1, _) = send_with_key(&app, &t.key, "order-42", simple_email()).await;
    assert_eq!(s1, StatusCode::ACCEPTED);
    let (s2, v2, h2) = send_with_key(&app, &t.key, "order-42", simple_email()).await;
    assert_eq!(s2, StatusCode::ACCEPTED);
    assert_eq!(
        v1["id"], v2["id"],
        "same key and body replays the original response"
    );
    assert_eq!(h2["idempotent-replayed"], "true");
    let mut other = simple_email();
    other["subject"] = json!("Different");
    let (s3, v3, _) = send_with_key(&app, &t.key, "order-42", other).await;
    assert_eq!(s3, StatusCode::CONFLICT);
    assert_error(&v3, "idempotency_conflict");
    // Concurrent requests with one key still make one message.
    let futs = (0..8).map(|_| send_with_key(&app, &t.key, "burst-1", simple_email()));
    let results = futures::future::join_all(futs).await;
    let ids: std::collections::HashSet<String> = results
        .iter()
        .map(|(s, v, _)| {
            assert_eq!(*s, StatusCode::ACCEPTED, "{v}");
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    let (_, list) = app.get("/api/v1/messages", &t.key).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        2,
        "one message per key"
    );
    // Keys are per project: another project may reuse the key.
    let p2 = app.create_project(&t.session.access, "Second").await;
    let k2 = app
        .create_key(&t.session.access, p2["id"].as_str().unwrap())
        .await;
    let (s, v, _) = send_with_key(&app, &k2, "order-42", simple_email()).await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_ne!(v["id"], v1["id"]);
    let (s, _, _) = send_with_key(&app, &t.key, &"k".repeat(256), simple_email()).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}

async fn list_filters_and_cursor(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut b = simple_email();
        b["tags"] = json!(if i % 2 == 0 {
            vec!["even", "all"]
        } else {
            vec!["odd", "all"]
        });
        b["metadata"] = json!({"i": i});
        ids.push(app.send(&t.key, b).await);
    }
    let (s, page1) = app.get("/api/v1/messages?limit=2", &t.key).await;
    assert_eq!(s, StatusCode::OK);
    let got: Vec<&str> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[4].as_str(), ids[3].as_str()], "newest first");
    let cursor = page1["next_cursor"].as_str().unwrap();
    let (_, page2) = app
        .get(&format!("/api/v1/messages?limit=2&cursor={cursor}"), &t.key)
        .await;
    let got: Vec<&str> = page2["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[1].as_str()]);
    let (_, page3) = app
        .get(
            &format!(
                "/api/v1/messages?limit=2&cursor={}",
                page2["next_cursor"].as_str().unwrap()
            ),
            &t.key,
        )
        .await;
    assert_eq!(page3["data"].as_array().unwrap().len(), 1);
    assert!(page3["next_cursor"].is_null());
    let (_, even) = app.get("/api/v1/messages?tag=even", &t.key).await;
    assert_eq!(even["data"].as_array().unwrap().len(), 3);
    for id in &ids {
        app.wait_status(&t.key, id, "sent").await;
    }
    let (_, sent) = app
        .get("/api/v1/messages?status=sent&tag=odd", &t.key)
        .await;
    assert_eq!(sent["data"].as_array().unwrap().len(), 2);
    let (_, queued) = app.get("/api/v1/messages?status=queued", &t.key).await;
    assert_eq!(queued["data"].as_array().unwrap().len(), 0);
    let (_, one) = app
        .get(&format!("/api/v1/messages/{}", ids[0]), &t.key)
        .await;
    assert_eq!(one["metadata"]["i"], 0);
    assert_eq!(one["tags"], json!(["even", "all"]));
    // A user token sees the tenant's messages, optionally per project.
    let (_, by_user) = app
        .get(
            &format!("/api/v1/messages?project_id={}", t.project_id),
            &t.session.access,
        )
        .await;
    assert_eq!(by_user["data"].as_array().unwrap().len(), 5);
}

async fn revocation_reaches_every_process(backend: Backend) {
    // Two API processes on one database; the key is cached in the second before it is revoked
    // through the first.
    let postgres = matches!(backend, Backend::Postgres(_));
    let a = TestApp::spawn(backend).await;
    let t = a.tenant("Acme").await;
    let b = a.sibling(|r| r.set("run_workers", "false")).await;
    // (Re)connecting its listener empties b's cache, so the key is cached once that is done.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (s, v) = b
        .post("/api/v1/messages", Some(&t.key), simple_email())
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let (_, keys) = a
        .get(
            &format!("/api/v1/projects/{}/api-keys", t.project_id),
            &t.session.access,
        )
        .await;
    let (s, _, _) = a
        .call(
            Method::DELETE,
            &format!(
                "/api/v1/projects/{}/api-keys/{}",
                t.project_id,
                keys["data"][0]["id"].as_str().unwrap()
            ),
            Some(&t.session.access),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    // Postgres announces the revocation to every process (well inside the 5 s cache lifetime);
    // a second SQLite process drops its cached entry when that lifetime ends.
    let bound = Duration::from_secs(if postgres { 2 } else { 7 });
    let started = Instant::now();
    loop {
        let (s, v) = b
            .post("/api/v1/messages", Some(&t.key), simple_email())
            .await;
        if s == StatusCode::UNAUTHORIZED {
            assert_error(&v, "unauthorized");
            break;
        }
        assert_eq!(s, StatusCode::ACCEPTED, "{v}");
        assert!(
            started.elapsed() < bound,
            "the revoked key still works in the other process after {bound:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn revoked_and_expired_keys(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let (_, keys) = app
        .get(
            &format!("/api/v1/projects/{}/api-keys", t.project_id),
            &t.session.access,
        )
        .await;
    let k = &keys["data"][0];
    assert!(
        k.get("key").is_none() && k.get("key_hash").is_none(),
        "listing shows metadata only: {k}"
    );
    assert!(t.key.starts_with(k["prefix"].as_str().unwrap()));
    let (s, _, _) = app
        .call(
            Method::DELETE,
            &format!(
                "/api/v1/projects/{}/api-keys/{}",
                t.project_id,
                k["id"].as_str().unwrap()
            ),
            Some(&t.session.access),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = app
        .post("/api/v1/messages", Some(&t.key), simple_email())
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");
    // An expiry in the past is refused; a key that has expired answers 401.
    let (s, _) = app
        .post(
            &format!("/api/v1/projects/{}/api-keys", t.project_id),
            Some(&t.session.access),
            json!({"name": "old", "expires_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let soon = chrono_like_in(1500);
    let (s, v) = app
        .post(
            &format!("/api/v1/projects/{}/api-keys", t.project_id),
            Some(&t.session.access),
            json!({"name": "short", "expires_at": soon}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let short = v["key"].as_str().unwrap().to_string();
    assert_eq!(
        app.post("/api/v1/messages", Some(&short), simple_email())
            .await
            .0,
        StatusCode::ACCEPTED
    );
    tokio::time::sleep(std::time::Duration::from_millis(1700)).await;
    assert_eq!(
        app.post("/api/v1/messages", Some(&short), simple_email())
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // Deleting the project revokes its keys.
    let k3 = app.create_key(&t.session.access, &t.project_id).await;
    let (s, _, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/projects/{}", t.project_id),
            Some(&t.session.access),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(
        app.post("/api/v1/messages", Some(&k3), simple_email())
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

/// An RFC 3339 UTC time `ms` milliseconds from now.
fn chrono_like_in(ms: u64) -> String {
    let t = std::time::SystemTime::now() + std::time::Duration::from_millis(ms);
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm) keeps the tests free of a date crate.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = if month <= 2 { y + 1 } else { y };
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

async fn provider_secrets_are_masked_and_sealed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let secret = "s3cr3t-smtp-password-xyz";
    let (s, v) = app
        .post(
            "/api/v1/providers",
            Some(&t.session.access),
            json!({"name": "Relay", "type": "smtp", "config": {"host": "127.0.0.1", "port": 2525, "security": "none", "username": "u", "password": secret}}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["config"]["password"], "********");
    assert_eq!(v["config"]["max_connections"], 10, "defaults are filled in");
    let id = v["id"].as_str().unwrap();
    let (_, got) = app
        .get(&format!("/api/v1/providers/{id}"), &t.session.access)
        .await;
    assert_eq!(got["config"]["password"], "********");
    assert!(!got.to_string().contains(secret));
    let db = app.db().await;
    let row = db
        .get_provider(t.session.tenant_id.parse().unwrap(), id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert!(!row.config_public.contains(secret));
    assert!(
        row.secret_ciphertext
            .as_deref()
            .is_some_and(|c| c.starts_with("v1.") && !c.contains(secret))
    );
    // PATCH keeps the secret when the mask is sent back, and validates.
    let (s, v, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/providers/{id}"),
            Some(&t.session.access),
            Some(json!({"config": {"port": 2526, "password": "********"}})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["config"]["port"], 2526);
    let row2 = db
        .get_provider(t.session.tenant_id.parse().unwrap(), id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    let full = courierx_engine::providers::full_config(
        &row2,
        &courierx_engine::SecretBox::new(
            &courierx_engine::SecretKey::from_base64(app.raw.0["secret_key"].as_str()).unwrap(),
        ),
    )
    .unwrap();
    assert_eq!(full["password"], secret);
    let (s, v, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/providers/{id}"),
            Some(&t.session.access),
            Some(json!({"config": {"security": "carrier-pigeon"}})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = app
        .post(
            "/api/v1/providers",
            Some(&t.session.access),
            json!({"name": "X", "type": "fax", "config": {}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"][0]["field"], "type");
    let (s, v) = app
        .post(
            "/api/v1/providers",
            Some(&t.session.access),
            json!({"name": "X", "type": "smtp", "config": {"port": 25}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
}
