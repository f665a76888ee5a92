//! Users, sessions and roles.

use crate::both;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::json;

both!(
    refresh_rotates_and_detects_reuse,
    login_and_me,
    roles_are_enforced,
    signup_modes,
    passwords_are_hashed
);

async fn refresh_rotates_and_detects_reuse(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let s0 = app.register("Acme", "ada@acme.test").await;
    let (st, v) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": s0.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let s1 = Session::from(&v);
    assert_ne!(s1.refresh, s0.refresh, "refresh tokens rotate");
    let (st, _) = app.get("/api/v1/auth/me", &s1.access).await;
    assert_eq!(st, StatusCode::OK);

    // Presenting the used token again: 401, and the whole family (including s1's token) is revoked.
    let (st, v) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": s0.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_error(&v, "unauthorized");
    let (st, _) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": s1.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "reuse revokes the family");

    // A separate login is a separate family; logout ends it.
    let (st, v) = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "ada@acme.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let s2 = Session::from(&v);
    let (st, _, _) = app
        .call(
            Method::POST,
            "/api/v1/auth/logout",
            None,
            Some(json!({"refresh_token": s2.refresh})),
        )
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, _) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": s2.refresh}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = app
        .post(
            "/api/v1/auth/refresh",
            None,
            json!({"refresh_token": "cxr_unknown"}),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

async fn login_and_me(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("Acme Corp", "Ada@Acme.test").await;
    let (st, v) = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "ada@acme.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 900);
    assert_eq!(v["tenant"]["slug"], "acme-corp");
    let s = Session::from(&v);
    let (st, me) = app.get("/api/v1/auth/me", &s.access).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["user"]["role"], "owner");
    assert_eq!(me["tenant"]["name"], "Acme Corp");
    // The same message for an unknown email and a wrong password.
    let (st1, v1) = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "nobody@acme.test", "password": PASSWORD}),
        )
        .await;
    let (st2, v2) = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "ada@acme.test", "password": "wrong password!!"}),
        )
        .await;
    assert_eq!(
        (st1, st2),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(v1["error"]["message"], v2["error"]["message"]);
    // Duplicate email → 409; weak password → 422.
    let (st, v) = app
        .post("/api/v1/auth/register", None, json!({"tenant":{"name":"Other"},"user":{"email":"ada@acme.test","password":PASSWORD,"name":"X"}}))
        .await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    let (st, v) = app
        .post("/api/v1/auth/register", None, json!({"tenant":{"name":"Other"},"user":{"email":"bo@acme.test","password":"short","name":"X"}}))
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"][0]["field"], "user.password");
}

async fn roles_are_enforced(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let owner = app.register("Acme", "owner@acme.test").await;
    let mut sessions = std::collections::HashMap::new();
    for role in ["admin", "developer", "viewer"] {
        let email = format!("{role}@acme.test");
        let (st, v) = app
            .post(
                "/api/v1/users",
                Some(&owner.access),
                json!({"email": email, "name": role, "role": role, "password": PASSWORD}),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        assert_eq!(v["role"], role);
        let (_, v) = app
            .post(
                "/api/v1/auth/login",
                None,
                json!({"email": email, "password": PASSWORD}),
            )
            .await;
        sessions.insert(role, Session::from(&v));
    }
    let viewer = &sessions["viewer"].access;
    let developer = &sessions["developer"].access;
    let admin = &sessions["admin"].access;

    // Viewers read only.
    let (st, v) = app
        .post("/api/v1/projects", Some(viewer), json!({"name": "Nope"}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_error(&v, "forbidden");
    let (st, _) = app.get("/api/v1/projects", viewer).await;
    assert_eq!(st, StatusCode::OK);
    // Developers manage projects, keys and providers, not users.
    let p = app.create_project(developer, "Dev project").await;
    app.create_key(developer, p["id"].as_str().unwrap()).await;
    let (st, _) = app
        .post(
            "/api/v1/providers",
            Some(developer),
            json!({"name": "S", "type": "sandbox", "config": {}}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = app
        .post(
            "/api/v1/users",
            Some(developer),
            json!({"email": "x@acme.test", "name": "x", "role": "viewer", "password": PASSWORD}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = app.get("/api/v1/users", developer).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    // Admins manage users but cannot mint owners.
    let (st, _) = app
        .post(
            "/api/v1/users",
            Some(admin),
            json!({"email": "y@acme.test", "name": "y", "role": "developer", "password": PASSWORD}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    let (st, _) = app
        .post(
            "/api/v1/users",
            Some(admin),
            json!({"email": "z@acme.test", "name": "z", "role": "owner", "password": PASSWORD}),
        )
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, users) = app.get("/api/v1/users", admin).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(users["data"].as_array().unwrap().len(), 5);
    let (st, v) = app
        .post(
            "/api/v1/users",
            Some(admin),
            json!({"email": "q@acme.test", "name": "q", "role": "emperor", "password": PASSWORD}),
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(v["error"]["details"][0]["field"], "role");
}

async fn signup_modes(backend: Backend) {
    let app = TestApp::spawn_with(backend.clone(), |r| r.set("signup", "first_user")).await;
    app.register("First", "first@one.test").await;
    let (st, v) = app
        .post("/api/v1/auth/register", None, json!({"tenant":{"name":"Second"},"user":{"email":"second@two.test","password":PASSWORD,"name":"S"}}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{v}");
    let closed = TestApp::spawn_with(backend, |r| r.set("signup", "closed")).await;
    let (st, _) = closed
        .post("/api/v1/auth/register", None, json!({"tenant":{"name":"Any"},"user":{"email":"a@b.test","password":PASSWORD,"name":"A"}}))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
}

async fn passwords_are_hashed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    app.register("Acme", "ada@acme.test").await;
    let db = app.db().await;
    let user = db
        .find_user_by_email("ada@acme.test")
        .await
        .unwrap()
        .unwrap();
    assert!(
        user.password_hash.starts_with("$argon2id$"),
        "{}",
        user.password_hash
    );
    assert!(!user.password_hash.contains(PASSWORD));
}
