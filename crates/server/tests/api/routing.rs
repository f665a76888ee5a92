//! Routing through the real server: routes API, failover within an attempt, weights, circuit
//! breakers, pacing, the dry run and project email settings.

use crate::both;
use crate::fake_provider::{Answer, FakeResend, KEY};
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::time::Duration;

both!(
    routes_crud_and_validation,
    failover_to_next_group_on_503,
    no_failover_on_permanent_rejection,
    weights_split_routed_messages,
    breaker_opens_skips_half_opens_and_closes,
    pacing_holds_the_rate,
    pacing_requeues_instead_of_outliving_the_lease,
    resolve_explains_the_choice,
    project_email_settings_apply
);

impl TestApp {
    async fn patch(&self, path: &str, auth: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::PATCH, path, Some(auth), Some(body)).await;
        (s, v)
    }

    async fn provider(&self, t: &Tenant, kind: &str, name: &str, extra: Value) -> String {
        let mut body = json!({"name": name, "type": kind});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        let (s, v) = self
            .post("/api/v1/providers", Some(&t.session.access), body)
            .await;
        assert_eq!(s, StatusCode::CREATED, "create provider: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    async fn resend(&self, t: &Tenant, fake: &FakeResend, extra: Value) -> String {
        let mut body =
            json!({"config": {"api_key": KEY, "base_url": fake.base_url(), "timeout_ms": 3000}});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            b.extend(e.clone());
        }
        self.provider(t, "resend", "Resend", body).await
    }

    async fn route(&self, t: &Tenant, body: Value) -> Value {
        let (s, v) = self
            .post(
                &format!("/api/v1/projects/{}/routes", t.project_id),
                Some(&t.session.access),
                body,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "create route: {v}");
        v
    }

    async fn events(&self, key: &str, id: &str) -> Vec<Value> {
        let (_, m) = self.get(&format!("/api/v1/messages/{id}"), key).await;
        m["events"].as_array().cloned().unwrap_or_default()
    }
}

fn email(tags: &[&str]) -> Value {
    json!({"from": "noreply@acme.test", "to": "bob@example.test", "subject": "Hi", "text": "Hello", "tags": tags})
}

async fn routes_crud_and_validation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let other = app.tenant("Other").await;
    let a = app.provider(&t, "sandbox", "A", json!({})).await;
    let foreign = app.provider(&other, "sandbox", "Theirs", json!({})).await;
    let base = format!("/api/v1/projects/{}/routes", t.project_id);

    let r = app
        .route(
            &t,
            json!({"name": "Gmail", "priority": 10,
                   "conditions": {"recipient_domain": ["GMAIL.com"], "tags_any": ["x"]},
                   "targets": [{"provider_id": a, "priority": 1, "weight": 3}]}),
        )
        .await;
    let id = r["id"].as_str().unwrap();
    assert_eq!(r["enabled"], true);
    assert_eq!(
        r["conditions"]["recipient_domain"],
        json!(["gmail.com"]),
        "domains are normalised"
    );
    let (s, list) = app.get(&base, &t.session.access).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(list["data"].as_array().unwrap().len(), 1);

    let (s, v) = app
        .patch(
            &format!("{base}/{id}"),
            &t.session.access,
            json!({"enabled": false, "name": "Gmail users"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["enabled"], false);
    assert_eq!(v["name"], "Gmail users");
    assert_eq!(v["targets"][0]["weight"], 3, "unchanged fields stay");

    // Every problem at once, each under its own field.
    let (s, v) = app
        .post(
            &base,
            Some(&t.session.access),
            json!({"name": "", "priority": -1,
                   "conditions": {"from_domain": ["not a domain"]},
                   "targets": [{"provider_id": foreign}, {"provider_id": a, "weight": 20000}]}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let err = assert_error(&v, "validation_failed");
    let fields: Vec<&str> = err["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["field"].as_str().unwrap())
        .collect();
    for f in [
        "name",
        "priority",
        "conditions.from_domain[0]",
        "targets[0].provider_id",
        "targets[1].weight",
    ] {
        assert!(fields.contains(&f), "{f} missing in {v}");
    }
    let (s, v) = app
        .post(
            &base,
            Some(&t.session.access),
            json!({"name": "x", "targets": [{"provider_id": a, "weight": 0}]}),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::UNPROCESSABLE_ENTITY,
        "a group without weight: {v}"
    );
    let (s, v) = app
        .post(
            &base,
            Some(&t.session.access),
            json!({"name": "x", "targets": [], "bogus": 1}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "unknown field: {v}");

    // Another tenant sees nothing of this project's routes.
    let (s, v) = app.get(&base, &other.session.access).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    let (s, _) = app
        .get(&format!("{base}/{id}"), &other.session.access)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);

    // A provider a route targets cannot be deleted until the route is gone.
    let (s, v, _) = app
        .call(
            Method::DELETE,
            &format!("/api/v1/providers/{a}"),
            Some(&t.session.access),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let (s, _, _) = app
        .call(
            Method::DELETE,
            &format!("{base}/{id}"),
            Some(&t.session.access),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = app.get(&format!("{base}/{id}"), &t.session.access).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

async fn failover_to_next_group_on_503(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let down = FakeResend::start(Answer::Unavailable).await;
    let up = FakeResend::start(Answer::Ok).await;
    let p_down = app.resend(&t, &down, json!({})).await;
    let p_up = app.resend(&t, &up, json!({})).await;
    app.route(
        &t,
        json!({"name": "All", "targets": [
            {"provider_id": p_down, "priority": 1},
            {"provider_id": p_up, "priority": 2}]}),
    )
    .await;
    let id = app.send(&t.key, email(&[])).await;
    let m = app.wait_status(&t.key, &id, "sent").await;
    assert_eq!(m["provider_id"], p_up.as_str());
    assert_eq!(m["attempts"], 1, "failover happens within one attempt: {m}");
    assert_eq!((down.hits(), up.hits()), (1, 1));
    let events = app.events(&t.key, &id).await;
    let tried: Vec<&Value> = events
        .iter()
        .filter(|e| e["type"] == "provider_try")
        .collect();
    assert_eq!(tried.len(), 1, "{events:?}");
    assert_eq!(tried[0]["provider_id"], p_down.as_str());
    assert_eq!(tried[0]["detail"]["outcome"], "transient");
    assert!(
        tried[0]["detail"]["error"]
            .as_str()
            .unwrap()
            .contains("503"),
        "{tried:?}"
    );
    assert!(tried[0]["detail"]["latency_ms"].is_i64());
    let sent = events.iter().find(|e| e["type"] == "sent").unwrap();
    assert_eq!(sent["provider_id"], p_up.as_str());
}

async fn no_failover_on_permanent_rejection(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let rejecting = FakeResend::start(Answer::Invalid).await;
    let spare = FakeResend::start(Answer::Ok).await;
    let p1 = app.resend(&t, &rejecting, json!({})).await;
    let p2 = app.resend(&t, &spare, json!({})).await;
    app.route(
        &t,
        json!({"name": "All", "targets": [
            {"provider_id": p1, "priority": 1},
            {"provider_id": p2, "priority": 2}]}),
    )
    .await;
    let id = app.send(&t.key, email(&[])).await;
    let m = app.wait_status(&t.key, &id, "failed").await;
    assert!(m["last_error"].as_str().unwrap().contains("422"), "{m}");
    assert_eq!(rejecting.hits(), 1);
    assert_eq!(
        spare.hits(),
        0,
        "a rejected message is not offered elsewhere"
    );
    let (_, p) = app
        .get(&format!("/api/v1/providers/{p1}"), &t.session.access)
        .await;
    assert_eq!(
        p["circuit"]["consecutive_failures"], 0,
        "a rejection is not a provider failure: {p}"
    );
}

async fn weights_split_routed_messages(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let a = app.provider(&t, "sandbox", "A", json!({})).await;
    let b = app.provider(&t, "sandbox", "B", json!({})).await;
    app.route(
        &t,
        json!({"name": "Split", "targets": [
            {"provider_id": a, "priority": 1, "weight": 70},
            {"provider_id": b, "priority": 1, "weight": 30}]}),
    )
    .await;
    let mut ids = Vec::new();
    for _ in 0..1000 {
        ids.push(app.send(&t.key, email(&[])).await);
    }
    let mut by_provider: HashMap<String, usize> = HashMap::new();
    for id in &ids {
        let m = app.wait_status(&t.key, id, "sent").await;
        *by_provider
            .entry(m["provider_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let share_a = by_provider.get(&a).copied().unwrap_or(0) as f64 / 1000.0;
    let share_b = by_provider.get(&b).copied().unwrap_or(0) as f64 / 1000.0;
    assert!(
        (share_a - 0.70).abs() <= 0.05 && (share_b - 0.30).abs() <= 0.05,
        "split {by_provider:?}"
    );
}

async fn breaker_opens_skips_half_opens_and_closes(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let flaky = FakeResend::start(Answer::Unavailable).await;
    let p_flaky = app
        .resend(
            &t,
            &flaky,
            json!({"circuit_breaker": {"failure_threshold": 3, "cooldown_ms": 1000}}),
        )
        .await;
    let backup = app.provider(&t, "sandbox", "Backup", json!({})).await;
    app.route(
        &t,
        json!({"name": "All", "targets": [
            {"provider_id": p_flaky, "priority": 1},
            {"provider_id": backup, "priority": 2}]}),
    )
    .await;
    let send_one = || async {
        let id = app.send(&t.key, email(&[])).await;
        app.wait_status(&t.key, &id, "sent").await;
        id
    };
    for _ in 0..3 {
        send_one().await;
    }
    assert_eq!(flaky.hits(), 3);
    let circuit = |v: &Value| v["circuit"]["state"].as_str().unwrap().to_string();
    let (_, p) = app
        .get(&format!("/api/v1/providers/{p_flaky}"), &t.session.access)
        .await;
    assert_eq!(circuit(&p), "open", "{p}");
    assert!(p["circuit"]["retry_at_ms"].is_i64());
    let (_, ready) = app.get("/ready", &t.session.access).await;
    let providers = ready["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "providers")
        .unwrap()
        .clone();
    assert_eq!(providers["status"], "degraded", "{ready}");
    assert!(providers["detail"].as_str().unwrap().contains(&p_flaky));

    // Open: skipped without a request, recorded as a try.
    let id = send_one().await;
    assert_eq!(flaky.hits(), 3, "an open circuit sends nothing");
    let events = app.events(&t.key, &id).await;
    assert!(
        events
            .iter()
            .any(|e| e["type"] == "provider_try" && e["detail"]["outcome"] == "circuit_open"),
        "{events:?}"
    );

    // Half-open after the cool-down: one probe; it fails, so the circuit opens again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    send_one().await;
    assert_eq!(flaky.hits(), 4, "one probe");
    let (_, p) = app
        .get(&format!("/api/v1/providers/{p_flaky}"), &t.session.access)
        .await;
    assert_eq!(circuit(&p), "open", "a failed probe reopens: {p}");

    // The provider recovers: the next probe succeeds and closes the circuit.
    flaky.answer(Answer::Ok);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let id = send_one().await;
    assert_eq!(flaky.hits(), 5);
    let (_, m) = app.get(&format!("/api/v1/messages/{id}"), &t.key).await;
    assert_eq!(m["provider_id"], p_flaky.as_str());
    let (_, p) = app
        .get(&format!("/api/v1/providers/{p_flaky}"), &t.session.access)
        .await;
    assert_eq!(circuit(&p), "closed", "{p}");
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("courierx_provider_circuit_state"),
        "breaker state is exported"
    );
}

async fn pacing_holds_the_rate(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let fake = FakeResend::start(Answer::Ok).await;
    let p = app.resend(&t, &fake, json!({"rate_per_second": 20})).await;
    let (s, v) = app
        .patch(
            &format!("/api/v1/projects/{}", t.project_id),
            &t.session.access,
            json!({"default_provider_id": p}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let n = 41;
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(app.send(&t.key, email(&[])).await);
    }
    fake.wait_hits(n).await;
    for id in &ids {
        app.wait_status(&t.key, id, "sent").await;
    }
    let times = fake.arrivals();
    let span = times[n - 1].duration_since(times[0]).as_secs_f64();
    let rate = (n - 1) as f64 / span;
    assert!(
        (18.0..=22.0).contains(&rate),
        "observed {rate:.1}/s over {span:.2} s for a 20/s pace"
    );
    let (_, v) = app
        .get(&format!("/api/v1/providers/{p}"), &t.session.access)
        .await;
    assert_eq!(v["rate_per_second"], 20.0);
    let metrics = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("courierx_provider_paced_total"),
        "pacing shows in metrics"
    );
    let (s, v) = app
        .patch(
            &format!("/api/v1/providers/{p}"),
            &t.session.access,
            json!({"rate_per_second": 0}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = app
        .patch(
            &format!("/api/v1/providers/{p}"),
            &t.session.access,
            json!({"rate_per_second": null}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["rate_per_second"].is_null());
}

async fn resolve_explains_the_choice(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let a = app.provider(&t, "sandbox", "A", json!({})).await;
    let b = app.provider(&t, "sandbox", "B", json!({})).await;
    let c = app.provider(&t, "sandbox", "C", json!({})).await;
    app.route(
        &t,
        json!({"name": "Off", "priority": 1, "enabled": false, "targets": [{"provider_id": c}]}),
    )
    .await;
    app.route(
        &t,
        json!({"name": "Billing", "priority": 5,
               "conditions": {"tags_all": ["billing"], "from_domain": ["acme.test"], "metadata": {"tier": "gold"}},
               "targets": [
                   {"provider_id": a, "priority": 1, "weight": 3},
                   {"provider_id": b, "priority": 1, "weight": 1},
                   {"provider_id": c, "priority": 2}]}),
    )
    .await;
    let path = format!("/api/v1/projects/{}/routes/resolve", t.project_id);
    let (s, v) = app
        .post(
            &path,
            Some(&t.session.access),
            json!({"from": "noreply@acme.test", "to": "bob@example.test", "tags": ["billing"],
                   "metadata": {"tier": "gold"}, "subject": "ignored", "text": "ignored"}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["route_name"], "Billing");
    assert_eq!(v["groups"].as_array().unwrap().len(), 2);
    assert_eq!(v["groups"][0]["targets"][0]["provider_id"], a.as_str());
    assert_eq!(v["groups"][0]["targets"][0]["share"], 0.75);
    assert_eq!(v["groups"][1]["targets"][0]["provider_id"], c.as_str());
    assert_eq!(v["evaluated"][0]["reason"], "disabled");
    assert_eq!(v["evaluated"][1]["matched"], true);

    let (s, v) = app
        .post(
            &path,
            Some(&t.session.access),
            json!({"from": "noreply@acme.test", "to": "bob@example.test", "tags": ["billing"],
                   "metadata": {"tier": "silver"}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["route_id"].is_null(), "{v}");
    assert!(
        v["evaluated"][1]["reason"]
            .as_str()
            .unwrap()
            .starts_with("metadata"),
        "{v}"
    );
    assert!(v["reason"].as_str().unwrap().contains("default provider"));
    assert_eq!(v["groups"][0]["targets"][0]["type"], "sandbox");

    let other = app.tenant("Other").await;
    let (s, _) = app
        .post(
            &path,
            Some(&other.session.access),
            json!({"from": "a@b.test"}),
        )
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "another tenant's project");
}

async fn project_email_settings_apply(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let project = format!("/api/v1/projects/{}", t.project_id);
    let (s, v) = app
        .patch(
            &project,
            &t.session.access,
            json!({"email_settings": {"default_from": "Acme <hello@acme.test>", "reply_to": "support@acme.test",
                   "custom_headers": {"X-Team": "growth"}, "tags": ["acme"], "allowed_from_domains": ["acme.test"]}}),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v["email_settings"]["allowed_from_domains"],
        json!(["acme.test"])
    );

    let (s, v) = app
        .patch(
            &project,
            &t.session.access,
            json!({"email_settings": {"default_from": "x@other.test", "allowed_from_domains": ["acme.test"],
                   "custom_headers": {"Bad Header": "x"}, "bogus": true}}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // No `from`: the default is used; headers and tags are added; the message's own header wins.
    let id = app
        .send(
            &t.key,
            json!({"to": "bob@example.test", "subject": "Hi", "text": "Hello", "tags": ["welcome"],
                   "headers": {"X-Own": "1"}}),
        )
        .await;
    let m = app.wait_status(&t.key, &id, "sent").await;
    assert_eq!(m["from"], "Acme <hello@acme.test>");
    assert_eq!(m["tags"], json!(["welcome", "acme"]));
    let (_, sandbox) = app.get("/api/v1/sandbox/messages", &t.key).await;
    let raw = sandbox["data"][0]["raw"].as_str().unwrap().to_string();
    assert!(raw.contains("X-Team: growth"), "{raw}");
    assert!(raw.contains("X-Own: 1"), "{raw}");
    assert!(raw.contains("Reply-To: support@acme.test"), "{raw}");

    // The sandbox is exempt from the sender policy…
    app.send(
        &t.key,
        json!({"from": "x@elsewhere.test", "to": "bob@example.test", "subject": "Hi", "text": "Hello"}),
    )
    .await;
    // …a real provider is not.
    let fake = FakeResend::start(Answer::Ok).await;
    let p = app.resend(&t, &fake, json!({})).await;
    let (s, _) = app
        .patch(
            &project,
            &t.session.access,
            json!({"default_provider_id": p}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app
        .post(
            "/api/v1/messages",
            Some(&t.key),
            json!({"from": "x@elsewhere.test", "to": "bob@example.test", "subject": "Hi", "text": "Hello"}),
        )
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let e = assert_error(&v, "validation_failed");
    assert_eq!(e["details"][0]["field"], "from");
    let id = app
        .send(
            &t.key,
            json!({"to": "bob@example.test", "subject": "Hi", "text": "Hello"}),
        )
        .await;
    app.wait_status(&t.key, &id, "sent").await;
    let body = fake.bodies().pop().unwrap();
    assert_eq!(body["headers"]["X-Team"], "growth", "{body}");
}

async fn pacing_requeues_instead_of_outliving_the_lease(backend: Backend) {
    // A 2 s lease lets a message wait at most 1 s for its pacing slot; at 2/s, six messages
    // need 2.5 s of slots, so the later ones go back on the queue instead of waiting.
    let app = TestApp::spawn_with(backend, |r| r.set("lease_ms", "2000")).await;
    let t = app.tenant("Acme").await;
    let fake = FakeResend::start(Answer::Ok).await;
    let p = app.resend(&t, &fake, json!({"rate_per_second": 2})).await;
    let (s, _) = app
        .patch(
            &format!("/api/v1/projects/{}", t.project_id),
            &t.session.access,
            json!({"default_provider_id": p}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut ids = Vec::new();
    for i in 0..6 {
        let mut body = email(&[]);
        body["subject"] = json!(format!("m{i}"));
        ids.push(app.send(&t.key, body).await);
    }
    for id in &ids {
        let m = app.wait_status(&t.key, id, "sent").await;
        assert_eq!(
            m["attempts"], 1,
            "waiting for a slot is not an attempt: {m}"
        );
    }
    let mut subjects: Vec<String> = fake
        .bodies()
        .iter()
        .map(|b| b["subject"].as_str().unwrap().to_string())
        .collect();
    subjects.sort();
    assert_eq!(
        subjects,
        ["m0", "m1", "m2", "m3", "m4", "m5"],
        "each sent exactly once"
    );
    let times = fake.arrivals();
    let mut sorted = times.clone();
    sorted.sort();
    for w in sorted.windows(2) {
        assert!(
            w[1].duration_since(w[0]) >= Duration::from_millis(450),
            "the 2/s pace holds across requeues"
        );
    }
}
