//! Operational endpoints and the API description.

use crate::both;
use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::Value;

both!(health_ready_metrics, openapi_describes_the_api);

async fn health_ready_metrics(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let id = app.send(&t.key, simple_email()).await;
    app.wait_status(&t.key, &id, "sent").await;

    let res = app
        .client
        .get(format!("{}/health", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers().contains_key("x-request-id"));
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "ok");

    let res = app
        .client
        .get(format!("{}/ready", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let ready: Value = res.json().await.unwrap();
    assert_eq!(ready["status"], "ok");
    let names: Vec<&str> = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["database", "queue", "workers", "providers"]);
    assert!(
        ready["checks"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["status"] == "ok" && c["latency_ms"].is_u64()),
        "{ready}"
    );

    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "courierx_http_requests_total{",
        "route=\"/api/v1/messages\"",
        "status=\"202\"",
        "courierx_messages{status=\"sent\"}",
        "courierx_queue_depth",
        "courierx_queue_leased",
        "courierx_queue_lag_seconds",
        "courierx_delivery_latency_seconds_bucket",
    ] {
        assert!(text.contains(needle), "metrics lack {needle}:\n{text}");
    }
}

async fn openapi_describes_the_api(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/auth/logout",
        "/api/v1/auth/me",
        "/api/v1/users",
        "/api/v1/projects",
        "/api/v1/projects/{id}",
        "/api/v1/projects/{id}/api-keys",
        "/api/v1/projects/{id}/api-keys/{key_id}",
        "/api/v1/providers",
        "/api/v1/providers/{id}",
        "/api/v1/providers/{id}/check",
        "/api/v1/messages",
        "/api/v1/messages/{id}",
        "/api/v1/sandbox/messages",
        "/api/v1/projects/{id}/routes",
        "/api/v1/projects/{id}/routes/{route_id}",
        "/api/v1/projects/{id}/routes/resolve",
        "/api/v1/messages/batch",
        "/api/v1/messages/{id}/cancel",
        "/api/v1/projects/{id}/templates",
        "/api/v1/projects/{id}/templates/{slug}",
        "/api/v1/projects/{id}/templates/{slug}/versions",
        "/api/v1/projects/{id}/templates/{slug}/publish",
        "/api/v1/projects/{id}/templates/{slug}/preview",
        "/api/v1/suppressions",
        "/api/v1/suppressions/{email}",
        "/api/v1/suppressions/{email}/audit",
        "/api/v1/suppressions/export",
        "/api/v1/recipients/{email}",
        "/webhooks/providers/{provider_id}",
        "/t/o/{token}",
        "/t/c/{token}",
        "/u/{token}",
        "/health",
        "/ready",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "OpenAPI lacks {p}");
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    for schema in [
        "AttachmentInput",
        "TemplateInput",
        "BatchResponse",
        "RouteRequest",
        "Conditions",
        "Target",
        "Resolution",
        "EmailSettings",
        "CircuitView",
        "CategorySettings",
        "SuppressionView",
        "RecipientView",
        "WebhookReceipt",
        "ErasedRecipient",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "OpenAPI lacks schema {schema}"
        );
    }
    for (schema, field) in [
        ("SendMessageRequest", "priority"),
        ("SendMessageRequest", "expires_at"),
        ("SendMessageRequest", "ttl_seconds"),
        ("MessageDetail", "priority"),
        ("MessageDetail", "expires_at"),
    ] {
        assert!(
            doc["components"]["schemas"][schema]["properties"][field].is_object(),
            "OpenAPI lacks {schema}.{field}"
        );
    }
    let provider_types =
        doc["components"]["schemas"]["CreateProviderRequest"]["properties"]["type"]["description"]
            .as_str()
            .unwrap_or_default();
    for kind in ["smtp", "ses", "sendgrid", "mailgun", "postmark", "resend"] {
        assert!(
            provider_types.contains(kind),
            "provider type {kind} is documented"
        );
    }
    assert!(doc["components"]["securitySchemes"]["api_key"].is_object());
    let docs = app
        .client
        .get(format!("{}/docs", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    assert!(docs.text().await.unwrap().to_lowercase().contains("<html"));
}
