//! Templates through the real server: CRUD, slugs, isolation and roles; escaping; strict
//! undefined; syntax errors; versions and publishing; locales; layouts; MJML; generated text.

use crate::both;
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

both!(
    crud_slugs_roles_and_isolation,
    html_escaped_subject_and_text_not,
    missing_variables_are_all_listed,
    syntax_errors_name_line_and_column,
    versions_publish_and_preview,
    locale_fallback,
    layouts_wrap_html,
    mjml_compiles_and_invalid_mjml_is_refused,
    text_part_generated_from_html,
    openapi_lists_template_endpoints,
    send_path_renders_the_published_version
);

struct Tpl<'a> {
    app: &'a TestApp,
    token: String,
    base: String,
}

impl<'a> Tpl<'a> {
    fn new(app: &'a TestApp, t: &Tenant) -> Self {
        Self {
            app,
            token: t.session.access.clone(),
            base: format!("/api/v1/projects/{}/templates", t.project_id),
        }
    }

    async fn create(&self, body: Value) -> (StatusCode, Value) {
        self.app.post(&self.base, Some(&self.token), body).await
    }

    async fn created(&self, body: Value) -> Value {
        let (s, v) = self.create(body).await;
        assert_eq!(s, StatusCode::CREATED, "create template: {v}");
        v
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.app
            .get(&format!("{}{path}", self.base), &self.token)
            .await
    }

    async fn patch(&self, slug: &str, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self
            .app
            .call(
                Method::PATCH,
                &format!("{}/{slug}", self.base),
                Some(&self.token),
                Some(body),
            )
            .await;
        (s, v)
    }

    async fn patched(&self, slug: &str, body: Value) -> Value {
        let (s, v) = self.patch(slug, body).await;
        assert_eq!(s, StatusCode::OK, "patch template: {v}");
        v
    }

    async fn publish(&self, slug: &str, version: i64) -> (StatusCode, Value) {
        self.app
            .post(
                &format!("{}/{slug}/publish", self.base),
                Some(&self.token),
                json!({"version": version}),
            )
            .await
    }

    async fn preview(&self, slug: &str, body: Value) -> (StatusCode, Value) {
        self.app
            .post(
                &format!("{}/{slug}/preview", self.base),
                Some(&self.token),
                body,
            )
            .await
    }

    async fn rendered(&self, slug: &str, body: Value) -> Value {
        let (s, v) = self.preview(slug, body).await;
        assert_eq!(s, StatusCode::OK, "preview: {v}");
        v
    }
}

/// The `field: message` pairs of a 422.
fn details(v: &Value) -> Vec<(String, String)> {
    assert_error(v, "validation_failed")["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["field"].as_str().unwrap().to_string(),
                d["message"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn fields(v: &Value) -> Vec<String> {
    details(v).into_iter().map(|(f, _)| f).collect()
}

async fn crud_slugs_roles_and_isolation(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let other = app.tenant("Other").await;
    let tpl = Tpl::new(&app, &t);

    let v = tpl
        .created(json!({"name": "Welcome Email!", "subject": "Hi", "html": "<p>Hi</p>"}))
        .await;
    assert_eq!(v["slug"], "welcome-email", "slug derived from the name");
    assert_eq!(v["state"], "draft");
    assert_eq!(v["version"], 1);
    assert_eq!(v["latest_version"], 1);
    assert_eq!(v["published_version"], Value::Null);
    assert_eq!(v["default_locale"], "en");
    assert_eq!(v["locales"], json!(["en"]));
    let v = tpl
        .created(json!({"name": "Welcome email", "subject": "Hi", "text": "Hi"}))
        .await;
    assert_eq!(
        v["slug"], "welcome-email-2",
        "a derived slug in use gets a suffix"
    );

    // An explicit slug that is taken is a conflict.
    let (s, v) = tpl
        .create(json!({"name": "x", "slug": "welcome-email", "subject": "Hi", "text": "Hi"}))
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    assert_error(&v, "slug_taken");

    // Every problem at once.
    let (s, v) = tpl
        .create(json!({"name": "", "slug": "Not A Slug", "locale": "english", "layout": "nope"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let f = fields(&v);
    for want in ["name", "slug", "locale", "subject", "html", "layout"] {
        assert!(f.iter().any(|x| x == want), "{want} missing in {v}");
    }
    let (s, v) = tpl
        .create(json!({"name": "x", "subject": "s", "html": "<p>", "mjml": "<mjml></mjml>"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "html and mjml: {v}");
    let (s, v) = tpl
        .create(json!({"name": "x", "subject": "s", "text": "t", "bogus": 1}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "unknown field: {v}");

    let (s, list) = tpl.get("").await;
    assert_eq!(s, StatusCode::OK);
    let slugs: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["slug"].as_str().unwrap())
        .collect();
    assert_eq!(slugs, ["welcome-email", "welcome-email-2"]);

    let (s, v) = tpl.get("/welcome-email").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["html"], "<p>Hi</p>");

    // A rename is not a new version; a content change is.
    let v = tpl
        .patched("welcome-email", json!({"name": "Welcome"}))
        .await;
    assert_eq!(
        (v["name"].as_str(), v["latest_version"].as_i64()),
        (Some("Welcome"), Some(1))
    );
    let v = tpl
        .patched("welcome-email", json!({"subject": "Hello"}))
        .await;
    assert_eq!(v["latest_version"], 2);
    assert_eq!(v["subject"], "Hello");
    assert_eq!(v["html"], "<p>Hi</p>", "unchanged fields stay");
    let v = tpl
        .patched("welcome-email", json!({"subject": "Hello"}))
        .await;
    assert_eq!(
        v["latest_version"], 2,
        "saving the same content is no new version"
    );

    // Viewers read and preview, but do not write.
    let (s, v) = app
        .post(
            "/api/v1/users",
            Some(&t.session.access),
            json!({"email": "viewer@acme.test", "name": "V", "role": "viewer", "password": PASSWORD}),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    let (_, v) = app
        .post(
            "/api/v1/auth/login",
            None,
            json!({"email": "viewer@acme.test", "password": PASSWORD}),
        )
        .await;
    let viewer = Tpl {
        app: &app,
        token: Session::from(&v).access,
        base: tpl.base.clone(),
    };
    assert_eq!(viewer.get("/welcome-email").await.0, StatusCode::OK);
    assert_eq!(
        viewer.preview("welcome-email", json!({"data": {}})).await.0,
        StatusCode::OK
    );
    let (s, v) = viewer
        .create(json!({"name": "x", "subject": "s", "text": "t"}))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(
        viewer.patch("welcome-email", json!({"name": "x"})).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        viewer.publish("welcome-email", 1).await.0,
        StatusCode::FORBIDDEN
    );

    // Another tenant sees nothing of this project's templates.
    let theirs = Tpl {
        app: &app,
        token: other.session.access.clone(),
        base: tpl.base.clone(),
    };
    assert_eq!(theirs.get("").await.0, StatusCode::NOT_FOUND);
    assert_eq!(theirs.get("/welcome-email").await.0, StatusCode::NOT_FOUND);
    let (s, v) = theirs
        .create(json!({"name": "x", "subject": "s", "text": "t"}))
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(
        theirs.preview("welcome-email", json!({"data": {}})).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        theirs.patch("welcome-email", json!({"name": "x"})).await.0,
        StatusCode::NOT_FOUND
    );
    // The other tenant's own project may use the same slug.
    Tpl::new(&app, &other)
        .created(json!({"name": "Welcome email", "subject": "s", "text": "t"}))
        .await;

    let (s, _, _) = app
        .call(
            Method::DELETE,
            &format!("{}/welcome-email-2", tpl.base),
            Some(&tpl.token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(tpl.get("/welcome-email-2").await.0, StatusCode::NOT_FOUND);
    assert_eq!(tpl.get("/no-such").await.0, StatusCode::NOT_FOUND);
}

async fn html_escaped_subject_and_text_not(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let tpl = Tpl::new(&app, &t);
    tpl.created(json!({
        "name": "Receipt",
        "subject": "Order for {{ name }}",
        "html": "<p>Hi {{ name }}</p>{% for i in items %}<li>{{ i.title|upper }} x{{ i.qty }}</li>{% endfor %}{% if vip %}VIP{% endif %}",
        "text": "Hi {{ name }}, {{ items|length }} items"
    }))
    .await;
    let v = tpl
        .rendered(
            "receipt",
            json!({"data": {"name": "<b>Ada & \"Co\"</b>", "items": [{"title": "tea", "qty": 2}, {"title": "<cake>", "qty": 1}]}}),
        )
        .await;
    assert_eq!(v["subject"], "Order for <b>Ada & \"Co\"</b>");
    assert_eq!(v["text"], "Hi <b>Ada & \"Co\"</b>, 2 items");
    let html = v["html"].as_str().unwrap();
    assert!(
        html.starts_with("<p>Hi &lt;b&gt;Ada &amp; &quot;Co&quot;&lt;&#x2f;b&gt;</p>"),
        "{html}"
    );
    assert!(
        html.contains("<li>TEA x2</li><li>&lt;CAKE&gt; x1</li>"),
        "{html}"
    );
    assert!(
        !html.contains("VIP"),
        "an absent optional may be tested with if"
    );
    assert_eq!(v["version"], 1);
    assert_eq!(v["locale"], "en");
}

async fn missing_variables_are_all_listed(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let tpl = Tpl::new(&app, &t);
    tpl.created(json!({
        "name": "Shipped",
        "subject": "{{ greeting }}, {{ user.first }}",
        "html": "<p>{{ user.last }}</p><p>{{ order.id }} {{ order.eta }}</p>{% for l in lines %}{{ l }}{% endfor %}<p>{{ total + 1 }}</p>{% if coupon %}{{ coupon }}{% endif %}",
        "text": "{{ footer|default('') }}{{ tracking_url }}"
    }))
    .await;
    let (s, v) = tpl
        .preview("shipped", json!({"data": {"user": {"first": "Ada"}}}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let mut f = fields(&v);
    f.sort();
    assert_eq!(
        f,
        [
            "data.greeting",
            "data.lines",
            "data.order",
            "data.total",
            "data.tracking_url",
            "data.user.last"
        ],
        "{v}"
    );
    // With every variable given it renders.
    let v = tpl
        .rendered(
            "shipped",
            json!({"data": {"greeting": "Hi", "user": {"first": "Ada", "last": "L"}, "order": {"id": 7, "eta": "Mon"},
                  "lines": ["a", "b"], "total": 1, "tracking_url": "https://t.test"}}),
        )
        .await;
    assert_eq!(v["subject"], "Hi, Ada");
    assert!(v["html"].as_str().unwrap().contains("<p>2</p>"), "{v}");

    let (s, v) = tpl.preview("shipped", json!({"data": [1, 2]})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["data"]);
    let (s, v) = tpl
        .preview("shipped", json!({"data": {}, "locale": "no good"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["locale"]);
    let (s, v) = tpl.preview("nope", json!({"data": {}})).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
}

async fn syntax_errors_name_line_and_column(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let tpl = Tpl::new(&app, &t);
    let (s, v) = tpl
        .create(json!({
            "name": "Broken",
            "subject": "Hi {{ name",
            "html": "<p>\n  Hello\n  {% if x %}{{ a | }}{% endif %}\n</p>",
            "text": "{% for x in y %}"
        }))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let d = details(&v);
    let msg = |field: &str| {
        d.iter()
            .find(|(f, _)| f == field)
            .map(|(_, m)| m.clone())
            .unwrap_or_else(|| panic!("no {field} error in {v}"))
    };
    assert!(
        msg("html").starts_with("line 3, column 20: "),
        "{}",
        msg("html")
    );
    assert!(
        msg("subject").starts_with("line 1, column "),
        "{}",
        msg("subject")
    );
    assert!(
        msg("text").starts_with("line 1, column "),
        "{}",
        msg("text")
    );

    // A PATCH is checked the same way and saves nothing.
    tpl.created(json!({"name": "Fine", "subject": "s", "html": "<p>ok</p>"}))
        .await;
    let (s, v) = tpl.patch("fine", json!({"html": "{{ 1 + }}"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert!(details(&v)[0].1.starts_with("line 1, column "), "{v}");
    let (_, v) = tpl.get("/fine").await;
    assert_eq!(
        (v["latest_version"].as_i64(), v["html"].as_str()),
        (Some(1), Some("<p>ok</p>"))
    );
}

async fn versions_publish_and_preview(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let tpl = Tpl::new(&app, &t);
    tpl.created(json!({"name": "News", "subject": "v1 {{ n }}", "html": "<p>one</p>"}))
        .await;
    tpl.patched(
        "news",
        json!({"subject": "v2 {{ n }}", "html": "<p>two</p>"}),
    )
    .await;
    let v = tpl.patched("news", json!({"text": "three"})).await;
    assert_eq!(v["latest_version"], 3);
    assert_eq!(v["state"], "draft");

    let (s, v) = tpl.get("/news/versions").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let versions: Vec<i64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(v["data"][0]["locales"], json!(["en"]));
    assert_eq!(v["data"][0]["published"], false);

    // Nothing published: a preview shows the latest version.
    let p = tpl.rendered("news", json!({"data": {"n": 1}})).await;
    assert_eq!(
        (p["version"].as_i64(), p["text"].as_str()),
        (Some(3), Some("three"))
    );

    let (s, v) = tpl.publish("news", 1).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["state"], "published");
    assert_eq!(v["published_version"], 1);
    let p = tpl.rendered("news", json!({"data": {"n": 1}})).await;
    assert_eq!(p["version"], 1, "the published version by default");
    assert_eq!(p["subject"], "v1 1");
    assert_eq!(p["text"], "one", "no text part: generated from the HTML");
    let p = tpl
        .rendered("news", json!({"data": {"n": 1}, "version": 2}))
        .await;
    assert_eq!(
        (p["version"].as_i64(), p["subject"].as_str()),
        (Some(2), Some("v2 1"))
    );
    let (s, v) = tpl
        .preview("news", json!({"data": {"n": 1}, "version": 9}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["version"]);

    // One published version at a time.
    tpl.publish("news", 2).await;
    let (_, v) = tpl.get("/news/versions").await;
    let published: Vec<i64> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["published"] == true)
        .map(|x| x["version"].as_i64().unwrap())
        .collect();
    assert_eq!(published, [2]);
    // A new save is a draft version; the published one stays.
    let v = tpl.patched("news", json!({"subject": "v4"})).await;
    assert_eq!(
        (
            v["latest_version"].as_i64(),
            v["published_version"].as_i64()
        ),
        (Some(4), Some(2))
    );
    assert_eq!(v["state"], "published");
    let (_, v) = tpl.get("/news?version=1").await;
    assert_eq!(
        (v["version"].as_i64(), v["html"].as_str()),
        (Some(1), Some("<p>one</p>"))
    );

    let (s, v) = tpl.publish("news", 9).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = tpl.patch("news", json!({"state": "published"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    let v = tpl.patched("news", json!({"state": "archived"})).await;
    assert_eq!(v["state"], "archived");
    assert_eq!(v["published_version"], Value::Null);
    let p = tpl.rendered("news", json!({"data": {"n": 1}})).await;
    assert_eq!(
        p["version"], 4,
        "an archived template previews its latest version"
    );
    let (s, v) = tpl.publish("news", 4).await;
    assert_eq!(
        (s, v["state"].as_str()),
        (StatusCode::OK, Some("published"))
    );
}

async fn locale_fallback(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let tpl = Tpl::new(&app, &t);
    tpl.created(json!({"name": "Hello", "subject": "Hello {{ n }}", "text": "en", "locale": "en"}))
        .await;
    // A new locale needs its subject and a body.
    let (s, v) = tpl
        .patch("hello", json!({"locale": "fr", "text": "fr"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["subject"]);
    let v = tpl
        .patched(
            "hello",
            json!({"locale": "fr", "subject": "Bonjour {{ n }}", "text": "fr"}),
        )
        .await;
    assert_eq!(v["locales"], json!(["en", "fr"]));
    assert_eq!(v["locale"], "fr");
    assert_eq!(v["latest_version"], 2);
    tpl.publish("hello", 2).await;

    let subject = |locale: Value| {
        let tpl = &tpl;
        async move {
            tpl.rendered("hello", json!({"data": {"n": 1}, "locale": locale}))
                .await
        }
    };
    let p = subject(json!("fr-CA")).await;
    assert_eq!(
        (p["subject"].as_str(), p["locale"].as_str()),
        (Some("Bonjour 1"), Some("fr"))
    );
    let p = subject(json!("de-DE")).await;
    assert_eq!(
        (p["subject"].as_str(), p["locale"].as_str()),
        (Some("Hello 1"), Some("en"))
    );
    let p = subject(Value::Null).await;
    assert_eq!(p["locale"], "en");

    tpl.patched(
        "hello",
        json!({"locale": "fr_ca", "subject": "Allô {{ n }}", "text": "qc"}),
    )
    .await;
    tpl.publish("hello", 3).await;
    let p = subject(json!("fr-CA")).await;
    assert_eq!(
        (p["subject"].as_str(), p["locale"].as_str()),
        (Some("Allô 1"), Some("fr-CA"))
    );
    let p = subject(json!("fr-FR")).await;
    assert_eq!(p["locale"], "fr");

    // The default locale is what an unknown locale falls back to.
    let v = tpl.patched("hello", json!({"default_locale": "fr"})).await;
    assert_eq!(
        (v["default_locale"].as_str(), v["latest_version"].as_i64()),
        (Some("fr"), Some(3))
    );
    let p = subject(json!("de")).await;
    assert_eq!(p["locale"], "fr");
    let (s, v) = tpl.patch("hello", json!({"default_locale": "it"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (_, v) = tpl.get("/hello?locale=fr-CA").await;
    assert_eq!(v["subject"], "Allô {{ n }}");
}

async fn layouts_wrap_html(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let tpl = Tpl::new(&app, &t);
    tpl.created(json!({
        "name": "Base",
        "subject": "-",
        "html": "<html><body><h1>{{ brand }}</h1>{{ content }}<footer>Sent by {{ brand }}</footer></body></html>"
    }))
    .await;
    let v = tpl
        .created(json!({"name": "Welcome", "subject": "Hi {{ name }}", "html": "<p>Hi {{ name }}</p>", "layout": "base"}))
        .await;
    assert_eq!(v["layout"], "base");

    let p = tpl
        .rendered(
            "welcome",
            json!({"data": {"name": "<Ada>", "brand": "Acme & Co"}}),
        )
        .await;
    assert_eq!(
        p["html"],
        "<html><body><h1>Acme &amp; Co</h1><p>Hi &lt;Ada&gt;</p><footer>Sent by Acme &amp; Co</footer></body></html>",
        "content inserted as rendered, not escaped again"
    );
    assert_eq!(p["text"], "Acme & Co\n\nHi <Ada>\n\nSent by Acme & Co");
    // The layout's variables are required too.
    let (s, v) = tpl
        .preview("welcome", json!({"data": {"name": "Ada"}}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["data.brand"]);

    // Sends need a published layout: publishing waits for it.
    let (s, v) = tpl.publish("welcome", 1).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(tpl.publish("base", 1).await.0, StatusCode::OK);
    assert_eq!(tpl.publish("welcome", 1).await.0, StatusCode::OK);

    // Layouts nest one level, never themselves, and must exist.
    let (s, v) = tpl.patch("welcome", json!({"layout": "welcome"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = tpl.patch("base", json!({"layout": "welcome"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = tpl
        .create(json!({"name": "Deep", "subject": "s", "html": "x", "layout": "welcome"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let (s, v) = tpl
        .create(json!({"name": "Lost", "subject": "s", "html": "x", "layout": "missing"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");

    // A layout in use cannot be deleted; dropping the layout is a new version.
    let (s, v, _) = app
        .call(
            Method::DELETE,
            &format!("{}/base", tpl.base),
            Some(&tpl.token),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{v}");
    let v = tpl.patched("welcome", json!({"layout": null})).await;
    assert_eq!(
        (v["layout"].clone(), v["latest_version"].as_i64()),
        (Value::Null, Some(2))
    );
    let p = tpl
        .rendered(
            "welcome",
            json!({"data": {"name": "Ada", "brand": "B"}, "version": 2}),
        )
        .await;
    assert_eq!(p["html"], "<p>Hi Ada</p>");
}

const MJML: &str = r#"<mjml>
  <mj-head><mj-preview>Your order {{ order_id }} is on its way</mj-preview></mj-head>
  <mj-body>
    <mj-section><mj-column><mj-text font-size="20px">{{ company }}</mj-text></mj-column></mj-section>
    <mj-section><mj-column>
      <mj-text><h1>Hi {{ first_name }},</h1><p>Order {{ order_id }} shipped on {{ date }}.</p></mj-text>
      <mj-button href="{{ tracking_url }}">Track your order</mj-button>
    </mj-column></mj-section>
    <mj-section><mj-column><mj-text>{{ company }}, {{ address }}. <a href="{{ unsubscribe_url }}">Unsubscribe</a></mj-text></mj-column></mj-section>
  </mj-body>
</mjml>"#;

async fn mjml_compiles_and_invalid_mjml_is_refused(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let tpl = Tpl::new(&app, &t);
    let v = tpl
        .created(json!({"name": "Shipping", "subject": "Order {{ order_id }}", "mjml": MJML}))
        .await;
    assert_eq!(v["mjml"], MJML, "the MJML source is kept");
    let html = v["html"].as_str().unwrap();
    assert!(html.starts_with("<!doctype html>"), "{html}");
    assert!(html.contains(r#"href="{{ tracking_url }}""#), "{html}");

    let p = tpl
        .rendered(
            "shipping",
            json!({"data": {"company": "Acme", "first_name": "Ada", "order_id": "A-1", "date": "Monday",
                  "tracking_url": "https://t.test/A-1?x=1&y=2", "address": "1 Main St", "unsubscribe_url": "https://u.test/x"}}),
        )
        .await;
    let html = p["html"].as_str().unwrap();
    assert!(html.contains("Hi Ada,"), "{html}");
    assert!(
        html.contains("https:&#x2f;&#x2f;t.test&#x2f;A-1?x=1&amp;y=2"),
        "{html}"
    );
    assert_eq!(
        p["text"],
        "Acme\n\nHi Ada,\n\nOrder A-1 shipped on Monday.\n\nTrack your order (https://t.test/A-1?x=1&y=2)\n\nAcme, 1 Main St. Unsubscribe (https://u.test/x)"
    );

    // Invalid MJML and template errors inside MJML are both refused on `mjml`.
    let (s, v) = tpl
        .create(json!({"name": "Bad", "subject": "s", "mjml": "<mjml><mj-body><mj-section>"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["mjml"]);
    let (s, v) = tpl
        .create(json!({"name": "Bad", "subject": "s", "mjml": "<mjml>\n<mj-body>{{ x </mj-body></mjml>"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    let d = details(&v);
    assert_eq!(d[0].0, "mjml");
    assert!(d[0].1.starts_with("line 2, column "), "{v}");
    let (s, v) = tpl
        .patch("shipping", json!({"mjml": "<p>not mjml</p>"}))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(fields(&v), ["mjml"]);

    // Replacing MJML with HTML drops the MJML.
    let v = tpl
        .patched("shipping", json!({"html": "<p>plain</p>"}))
        .await;
    assert_eq!(
        (v["mjml"].clone(), v["html"].as_str()),
        (Value::Null, Some("<p>plain</p>"))
    );
}

async fn text_part_generated_from_html(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let tpl = Tpl::new(&app, &t);
    tpl.created(json!({
        "name": "Digest",
        "subject": "Digest",
        "html": "<html><head><style>p{color:red}</style><title>x</title></head><body>\
                 <h2>Hello {{ name }}</h2><p>Read <a href=\"{{ url }}\">the latest news</a> &mdash; or\n   visit <a href=\"https://acme.test\">https://acme.test</a>.</p>\
                 <ul>{% for i in items %}<li>{{ i }}</li>{% endfor %}</ul><p>Line one<br>Line two</p>\
                 <script>alert(1)</script></body></html>"
    }))
    .await;
    let p = tpl
        .rendered(
            "digest",
            json!({"data": {"name": "Ada & Bob", "url": "https://acme.test/news?a=1&b=2", "items": ["One", "Two"]}}),
        )
        .await;
    assert_eq!(
        p["text"],
        "Hello Ada & Bob\n\nRead the latest news (https://acme.test/news?a=1&b=2) \u{2014} or visit https://acme.test.\n\n- One\n- Two\n\nLine one\nLine two"
    );
}

async fn openapi_lists_template_endpoints(backend: Backend) {
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
    let base = "/api/v1/projects/{id}/templates";
    for (path, methods) in [
        (base.to_string(), &["get", "post"][..]),
        (format!("{base}/{{slug}}"), &["get", "patch", "delete"][..]),
        (format!("{base}/{{slug}}/versions"), &["get"][..]),
        (format!("{base}/{{slug}}/publish"), &["post"][..]),
        (format!("{base}/{{slug}}/preview"), &["post"][..]),
    ] {
        for m in methods {
            assert!(doc["paths"][&path][m].is_object(), "{m} {path} missing");
        }
    }
    for schema in [
        "CreateTemplateRequest",
        "UpdateTemplateRequest",
        "TemplateView",
        "PreviewRequest",
        "PreviewView",
        "VersionList",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "{schema} missing"
        );
    }
}

/// The engine call `POST /api/v1/messages` uses for `"template": {"slug","data","locale"}`.
async fn send_path_renders_the_published_version(backend: Backend) {
    use courierx_engine::templates::TemplateError;
    use courierx_engine::{Engine, EngineConfig, SecretKey};
    let app = TestApp::spawn(backend).await;
    let t = app.tenant("Acme").await;
    let tpl = Tpl::new(&app, &t);
    tpl.created(json!({"name": "Base", "subject": "-", "html": "<div>{{ content }}</div>"}))
        .await;
    tpl.publish("base", 1).await;
    tpl.created(json!({"name": "Hi", "subject": "Hi {{ name }}\n!", "html": "<p>{{ name }}</p>", "layout": "base"}))
        .await;
    tpl.patched(
        "hi",
        json!({"locale": "fr", "subject": "Salut {{ name }}", "html": "<p>Salut</p>"}),
    )
    .await;
    tpl.created(json!({"name": "Draft", "subject": "s", "text": "t"}))
        .await;

    let db = app.db().await;
    let (writer, _) = courierx_store::writer::Writer::start(db.clone(), 1).expect("writer");
    let engine = Engine::new(db, writer, EngineConfig::default(), &SecretKey::generate());
    let tenant = t.session.tenant_id.parse().unwrap();
    let project = t.project_id.parse().unwrap();
    let data = json!({"name": "Ada"});

    let e = engine
        .render_template(tenant, project, "hi", &data, None)
        .await
        .unwrap_err();
    assert!(
        matches!(e, TemplateError::NotPublished(ref s) if s == "hi"),
        "{e:?}"
    );
    tpl.publish("hi", 1).await;
    let r = engine
        .render_template(tenant, project, "hi", &data, Some("fr-CA"))
        .await
        .unwrap();
    assert_eq!(
        (r.version, r.locale.as_str()),
        (1, "en"),
        "version 1 has no fr yet"
    );
    assert_eq!(r.subject, "Hi Ada !", "a subject is one line");
    assert_eq!(r.html.as_deref(), Some("<div><p>Ada</p></div>"));
    assert_eq!(r.text, "Ada");
    tpl.publish("hi", 2).await;
    let r = engine
        .render_template(tenant, project, "hi", &data, Some("fr-CA"))
        .await
        .unwrap();
    assert_eq!(
        (r.version, r.locale.as_str(), r.subject.as_str()),
        (2, "fr", "Salut Ada")
    );

    let e = engine
        .render_template(tenant, project, "hi", &json!({}), None)
        .await
        .unwrap_err();
    let errs = e.into_validation("template").unwrap();
    assert_eq!(errs.0.len(), 1);
    assert_eq!(errs.0[0].field, "template.data.name");
    let e = engine
        .render_template(tenant, project, "draft", &data, None)
        .await
        .unwrap_err();
    assert_eq!(
        e.into_validation("template").unwrap().0[0].field,
        "template.slug"
    );
    let e = engine
        .render_template(tenant, project, "nope", &data, None)
        .await
        .unwrap_err();
    assert!(matches!(e, TemplateError::NotFound(_)), "{e:?}");
    // Another tenant's ids find nothing.
    let other = app.tenant("Other").await;
    let e = engine
        .render_template(
            other.session.tenant_id.parse().unwrap(),
            project,
            "hi",
            &data,
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(e, TemplateError::NotFound(_)), "{e:?}");
}
