//! Every status code the API uses, each with the one error shape and an `x-request-id`.

use crate::both;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(
    status_codes_and_error_shape,
    body_limit_is_413,
    validation_lists_every_field,
    header_rules
);

async fn status_codes_and_error_shape(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;

    // 400: malformed JSON.
    let res = app
        .client
        .post(format!("{}/api/v1/messages", app.base))
        .bearer_auth(&t.key)
        .header("content-type", "application/json")
        .body("{\"from\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    assert!(res.headers().contains_key("x-request-id"));
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_string();
    let v: serde_json::Value = res.json().await.unwrap();
    assert_error(&v, "malformed_json");
    assert_eq!(
        v["error"]["request_id"],
        rid.as_str(),
        "body and header carry the same request id"
    );

    // 401: no credentials, a bad key, a bad token.
    let (s, v) = app.post("/api/v1/messages", None, simple_email()).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");
    let (s, v) = app
        .post(
            "/api/v1/messages",
            Some("cx_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
            simple_email(),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");
    let (s, v) = app.get("/api/v1/projects", "not-a-jwt").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");

    // 404: unknown id, malformed id, unknown route.
    let (s, v) = app
        .get(
            &format!("/api/v1/projects/{}", uuid::Uuid::now_v7()),
            &t.session.access,
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let (s, v) = app.get("/api/v1/messages/not-an-id", &t.key).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");
    let (s, v) = app.get("/api/v1/nope", &t.key).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    assert_error(&v, "not_found");

    // 422 on a list filter.
    let (s, v) = app
        .get("/api/v1/messages?status=lost&limit=1000", &t.key)
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let e = assert_error(&v, "validation_failed");
    let fields: Vec<&str> = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["status", "limit"]);

    // 409: provider still used by a project.
    let (_, sandbox) = app
        .get(
            &format!("/api/v1/projects/{}", t.project_id),
            &t.session.access,
        )
        .await;
    let pid = sandbox["default_provider_id"].as_str().unwrap();
    let (s, v, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/providers/{pid}"),
            Some(&t.session.access),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT);
    assert_error(&v, "provider_in_use");

    // 429 with retry-after: the 6th failed login within 15 minutes.
    for _ in 0..5 {
        let (s, v) = app
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": "owner@acme.test", "password": "wrong password!!"}),
            )
            .await;
        assert_eq!(s, StatusCode::UNAUTHORIZED);
        assert_eq!(v["error"]["message"], "invalid email or password");
    }
    let (s, v, h) = app
        .call(
            Method::POST,
            "/api/v1/auth/login",
            None,
            Some(json!({"email": "owner@acme.test", "password": PASSWORD})),
        )
        .await;
    assert_eq!(s, StatusCode::TOO_MANY_REQUESTS);
    assert_error(&v, "rate_limited");
    let retry: u64 = h["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=900).contains(&retry), "retry-after {retry}");
}

async fn body_limit_is_413(backend: Backend) {
    // The send endpoints allow body_limit plus the attachment allowance in base64.
    let app = TestApp::spawn_with(backend, |r| {
        r.set("body_limit", "65536");
        r.set("max_attachment_bytes", "1024");
    })
    .await;
    let t = app.tenant("Acme").await;
    let mut body = simple_email();
    body["text"] = json!("x".repeat(70_000));
    let (s, v) = app.post("/api/v1/messages", Some(&t.key), body).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_error(&v, "payload_too_large");
    let (_, list) = app.get("/api/v1/messages", &t.key).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "a refused request changes nothing"
    );
}

async fn validation_lists_every_field(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let (s, v) = app
        .post(
            "/api/v1/messages",
            Some(&t.key),
            json!({"from": "not an address", "to": ["ok@example.test", "bad@@x"], "cc": "also bad", "subject": ""}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let e = assert_error(&v, "validation_failed");
    let fields: Vec<&str> = e["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for f in ["from", "to[1]", "cc", "subject", "html"] {
        assert!(fields.contains(&f), "{f} missing from {fields:?}");
    }
    // Too many recipients.
    let many: Vec<String> = (0..51).map(|i| format!("u{i}@example.test")).collect();
    let mut body = simple_email();
    body["to"] = json!(many);
    let (s, v) = app.post("/api/v1/messages", Some(&t.key), body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    // Unknown fields and wrong types are named too.
    let mut body = simple_email();
    body["subjct"] = json!("typo");
    let (s, v) = app.post("/api/v1/messages", Some(&t.key), body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let mut body = simple_email();
    body["tags"] = json!("not-a-list");
    let (s, v) = app.post("/api/v1/messages", Some(&t.key), body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"]["details"][0]["field"], "tags");
    let (_, list) = app.get("/api/v1/messages", &t.key).await;
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        0,
        "nothing was accepted"
    );
}

async fn header_rules(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    for (headers, field) in [
        (json!({"Bcc": "x@example.test"}), "headers.Bcc"),
        (
            json!({"Content-Type": "text/plain"}),
            "headers.Content-Type",
        ),
        (
            json!({"X-Ok": "a\r\nBcc: evil@example.test"}),
            "headers.X-Ok",
        ),
        (json!({"Message-ID": "<x@y>"}), "headers.Message-ID"),
    ] {
        let mut body = simple_email();
        body["headers"] = headers;
        let (s, v) = app.post("/api/v1/messages", Some(&t.key), body).await;
        assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
        assert_eq!(v["error"]["details"][0]["field"], field);
    }
    let mut body = simple_email();
    body["subject"] = json!("Hi\r\nBcc: evil@example.test");
    let (s, _) = app.post("/api/v1/messages", Some(&t.key), body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let mut body = simple_email();
    body["from"] = json!("Evil\r\nBcc: x@y.test <a@b.test>");
    let (s, _) = app.post("/api/v1/messages", Some(&t.key), body).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
}
