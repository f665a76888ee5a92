//! Tenant isolation: another tenant's ids answer 404, through user tokens and API keys alike.

use crate::both;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(other_tenants_ids_are_404);

async fn other_tenants_ids_are_404(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let a = app.tenant("Alpha").await;
    let b = app.tenant("Beta").await;
    let msg = app.send(&a.key, simple_email()).await;
    let (_, keys) = app
        .get(
            &format!("/api/v1/projects/{}/api-keys", a.project_id),
            &a.session.access,
        )
        .await;
    let key_id = keys["data"][0]["id"].as_str().unwrap().to_string();
    let (_, prov) = app.post("/api/v1/providers", Some(&a.session.access), json!({"name": "A SMTP", "type": "smtp", "config": {"host": "127.0.0.1", "port": 2525, "security": "none"}})).await;
    let prov_id = prov["id"].as_str().unwrap().to_string();

    let bt = &b.session.access;
    let not_found = |s: StatusCode, what: &str| {
        assert_eq!(
            s,
            StatusCode::NOT_FOUND,
            "{what} must be 404 for another tenant"
        )
    };

    // Projects and keys, through B's token.
    let p = format!("/api/v1/projects/{}", a.project_id);
    not_found(app.get(&p, bt).await.0, "GET project");
    not_found(
        app.call(Method::PATCH, &p, Some(bt), Some(json!({"name": "x"})))
            .await
            .0,
        "PATCH project",
    );
    not_found(
        app.call(Method::DELETE, &p, Some(bt), None).await.0,
        "DELETE project",
    );
    not_found(app.get(&format!("{p}/api-keys"), bt).await.0, "list keys");
    not_found(
        app.post(&format!("{p}/api-keys"), Some(bt), json!({"name": "x"}))
            .await
            .0,
        "create key",
    );
    not_found(
        app.call(
            Method::DELETE,
            &format!("{p}/api-keys/{key_id}"),
            Some(bt),
            None,
        )
        .await
        .0,
        "revoke key",
    );
    // Providers.
    let pv = format!("/api/v1/providers/{prov_id}");
    not_found(app.get(&pv, bt).await.0, "GET provider");
    not_found(
        app.call(Method::PATCH, &pv, Some(bt), Some(json!({"name": "x"})))
            .await
            .0,
        "PATCH provider",
    );
    not_found(
        app.call(Method::DELETE, &pv, Some(bt), None).await.0,
        "DELETE provider",
    );
    not_found(
        app.post(&format!("{pv}/check"), Some(bt), json!({}))
            .await
            .0,
        "check provider",
    );
    // B cannot point its project at A's provider.
    let (s, _, _) = app
        .call(
            Method::PATCH,
            &format!("/api/v1/projects/{}", b.project_id),
            Some(bt),
            Some(json!({"default_provider_id": prov_id})),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // Messages, through B's token and B's API key.
    let m = format!("/api/v1/messages/{msg}");
    not_found(app.get(&m, bt).await.0, "GET message by token");
    not_found(app.get(&m, &b.key).await.0, "GET message by key");
    let (_, list) = app.get("/api/v1/messages", &b.key).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let (_, list) = app.get("/api/v1/messages", bt).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 0);
    let (_, sb) = app.get("/api/v1/sandbox/messages", &b.key).await;
    assert_eq!(sb["data"].as_array().unwrap().len(), 0);
    let (_, provs) = app.get("/api/v1/providers", bt).await;
    assert!(
        provs["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["id"] != prov_id.as_str())
    );

    // A still sees all of it.
    assert_eq!(app.get(&m, &a.key).await.0, StatusCode::OK);
    assert_eq!(app.get(&m, &a.session.access).await.0, StatusCode::OK);
    assert_eq!(app.get(&pv, &a.session.access).await.0, StatusCode::OK);
}
