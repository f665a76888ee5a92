//! Test harness: the real server on an ephemeral port with a fresh database per test, driven over
//! HTTP. Every scenario runs on SQLite and, when `COURIERX_TEST_DATABASE_URL` is set, PostgreSQL.

use courierx::config::RawSettings;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use std::io::Write;
use std::net::SocketAddr;
use std::sync::Once;
use std::time::{Duration, Instant};
use tempfile::TempDir;
use tokio::sync::oneshot;

#[derive(Debug, Clone)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    /// The PostgreSQL backend when `COURIERX_TEST_DATABASE_URL` names a server; otherwise says
    /// (once, on stderr, past the test harness's capture) that PostgreSQL tests are skipped.
    /// Under `CI` or `COURIERX_REQUIRE_POSTGRES` a missing URL fails the test instead: there a
    /// skipped half would pass silently.
    pub fn postgres() -> Option<Backend> {
        match std::env::var("COURIERX_TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => Some(Backend::Postgres(url)),
            _ if postgres_required() => panic!(
                "PostgreSQL tests are required here (CI or COURIERX_REQUIRE_POSTGRES is set) but \
                 COURIERX_TEST_DATABASE_URL is unset or empty; set it to postgres://… (see README)"
            ),
            _ => {
                static SAY: Once = Once::new();
                SAY.call_once(|| {
                    let _ = writeln!(
                        std::io::stderr(),
                        "\n*** PostgreSQL tests SKIPPED: set COURIERX_TEST_DATABASE_URL=postgres://… to run them ***\n"
                    );
                });
                None
            }
        }
    }
}

/// Whether skipping the PostgreSQL half is an error: in CI, or when asked for.
fn postgres_required() -> bool {
    ["CI", "COURIERX_REQUIRE_POSTGRES"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"))
}

/// Runs each named scenario (an `async fn(Backend)`) as a `sqlite` and a `postgres` test.
#[macro_export]
macro_rules! both {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(b) = $crate::helpers::Backend::postgres() {
                    super::$name(b).await
                }
            }
        }
    )*};
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub base: String,
    pub client: reqwest::Client,
    pub raw: RawSettings,
    // Kept so the data directory lives as long as the app.
    _dir: TempDir,
    pg: Option<(String, String)>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    });
}

async fn create_pg_database(admin_url: &str) -> (String, String) {
    use sqlx::Connection;
    let name = format!("cx_test_{}", uuid::Uuid::now_v7().simple());
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .expect("connect to COURIERX_TEST_DATABASE_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let mut url = url_without_db(admin_url);
    url.push('/');
    url.push_str(&name);
    (name, url)
}

fn url_without_db(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("postgres", url));
    let host = rest.split(['/', '?']).next().unwrap_or(rest);
    format!("{scheme}://{host}")
}

impl TestApp {
    pub async fn spawn(backend: Backend) -> TestApp {
        Self::spawn_with(backend, |_| {}).await
    }

    /// Starts the server with fast retries for tests; `tweak` may change any setting.
    pub async fn spawn_with(backend: Backend, tweak: impl FnOnce(&mut RawSettings)) -> TestApp {
        install_crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut raw = RawSettings::default();
        raw.set("data_dir", dir.path().display().to_string());
        raw.set("signup", "open");
        raw.set("backoff_base_ms", "200");
        raw.set("backoff_max_ms", "1000");
        raw.set("shutdown_grace_ms", "5000");
        raw.set(
            "secret_key",
            courierx_engine::SecretKey::generate().to_base64(),
        );
        let mut pg = None;
        if let Backend::Postgres(admin) = &backend {
            let (name, url) = create_pg_database(admin).await;
            raw.set("database_url", url);
            raw.set("pg_max_connections", "10");
            pg = Some((admin.clone(), name));
        }
        tweak(&mut raw);
        let mut app = TestApp {
            addr: "127.0.0.1:0".parse().unwrap(),
            base: String::new(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap(),
            raw,
            _dir: dir,
            pg,
            stop: None,
            task: None,
        };
        app.start().await;
        app
    }

    /// Another server process on the same database (it does not own the database).
    pub async fn sibling(&self, tweak: impl FnOnce(&mut RawSettings)) -> TestApp {
        let mut raw = self.raw.clone();
        tweak(&mut raw);
        let mut app = TestApp {
            addr: self.addr,
            base: String::new(),
            client: self.client.clone(),
            raw,
            _dir: tempfile::tempdir().expect("tempdir"),
            pg: None,
            stop: None,
            task: None,
        };
        app.start().await;
        app
    }

    async fn start(&mut self) {
        let settings = self.raw.parse().expect("test settings are valid");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        self.addr = listener.local_addr().unwrap();
        self.base = format!("http://{}", self.addr);
        let (tx, rx) = oneshot::channel::<()>();
        self.stop = Some(tx);
        self.task = Some(tokio::spawn(courierx::app::serve(
            settings,
            listener,
            async move {
                let _ = rx.await;
            },
        )));
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = self
                .client
                .get(format!("{}/health", self.base))
                .send()
                .await
                && r.status() == StatusCode::OK
            {
                break;
            }
            assert!(Instant::now() < deadline, "server did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Graceful stop, as on SIGTERM.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            t.await
                .expect("server task")
                .expect("server shut down cleanly");
        }
    }

    pub async fn restart(&mut self) {
        self.stop().await;
        self.start().await;
    }

    /// A direct database handle (for setting up situations the API cannot create, like a dead worker).
    pub async fn db(&self) -> courierx_store::Db {
        let s = self.raw.parse().unwrap();
        courierx::app::open_db(&s).await.unwrap()
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(a) = auth {
            req = req.bearer_auth(a);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        let headers = res.headers().clone();
        let text = res.text().await.unwrap_or_default();
        let json = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, json, headers)
    }

    pub async fn get(&self, path: &str, auth: &str) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::GET, path, Some(auth), None).await;
        (s, v)
    }

    pub async fn post(&self, path: &str, auth: Option<&str>, body: Value) -> (StatusCode, Value) {
        let (s, v, _) = self.call(Method::POST, path, auth, Some(body)).await;
        (s, v)
    }

    pub async fn register(&self, tenant: &str, email: &str) -> Session {
        let (s, v) = self
            .post("/api/v1/auth/register", None, json!({"tenant":{"name": tenant}, "user":{"email": email, "password": PASSWORD, "name": "Test User"}}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "register: {v}");
        Session::from(&v)
    }

    pub async fn create_project(&self, token: &str, name: &str) -> Value {
        let (s, v) = self
            .post("/api/v1/projects", Some(token), json!({"name": name}))
            .await;
        assert_eq!(s, StatusCode::CREATED, "create project: {v}");
        v
    }

    pub async fn create_key(&self, token: &str, project_id: &str) -> String {
        let (s, v) = self
            .post(
                &format!("/api/v1/projects/{project_id}/api-keys"),
                Some(token),
                json!({"name": "test"}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "create key: {v}");
        v["key"].as_str().unwrap().to_string()
    }

    /// A tenant with a project and an API key, ready to send.
    pub async fn tenant(&self, name: &str) -> Tenant {
        let session = self
            .register(name, &format!("owner@{}.test", name.to_lowercase()))
            .await;
        let project = self.create_project(&session.access, "Main").await;
        let project_id = project["id"].as_str().unwrap().to_string();
        let key = self.create_key(&session.access, &project_id).await;
        Tenant {
            session,
            project_id,
            key,
        }
    }

    pub async fn send(&self, key: &str, body: Value) -> String {
        let (s, v) = self.post("/api/v1/messages", Some(key), body).await;
        assert_eq!(s, StatusCode::ACCEPTED, "send: {v}");
        v["id"].as_str().unwrap().to_string()
    }

    /// Polls the message until its status is `status` (or fails after 20 s), returning it.
    pub async fn wait_status(&self, key: &str, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (s, v) = self.get(&format!("/api/v1/messages/{id}"), key).await;
            assert_eq!(s, StatusCode::OK, "{v}");
            if v["status"] == status {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "message never reached {status}: {v}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Creates an SMTP provider pointing at a local test server and makes it the project's default.
    pub async fn use_smtp(&self, t: &Tenant, port: u16, extra: Value) -> String {
        let mut config =
            json!({"host": "127.0.0.1", "port": port, "security": "none", "timeout_ms": 3000});
        if let (Some(c), Some(e)) = (config.as_object_mut(), extra.as_object()) {
            c.extend(e.clone());
        }
        let (s, v) = self
            .post(
                "/api/v1/providers",
                Some(&t.session.access),
                json!({"name": "Local SMTP", "type": "smtp", "config": config}),
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "create provider: {v}");
        let pid = v["id"].as_str().unwrap().to_string();
        self.set_default_provider(t, &pid).await;
        pid
    }

    /// Makes `provider_id` the project's default provider.
    pub async fn set_default_provider(&self, t: &Tenant, provider_id: &str) {
        let (s, v, _) = self
            .call(
                Method::PATCH,
                &format!("/api/v1/projects/{}", t.project_id),
                Some(&t.session.access),
                Some(json!({"default_provider_id": provider_id})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "set default provider: {v}");
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some((admin, name)) = self.pg.take() {
            // Drop the per-test database on a separate runtime: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    use sqlx::Connection;
                    if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                        )))
                        .execute(&mut c)
                        .await;
                    }
                });
            })
            .join();
        }
    }
}

pub const PASSWORD: &str = "correct horse battery staple";

#[derive(Debug, Clone)]
pub struct Session {
    pub access: String,
    pub refresh: String,
    pub tenant_id: String,
}

impl From<&Value> for Session {
    fn from(v: &Value) -> Self {
        Session {
            access: v["access_token"].as_str().unwrap().to_string(),
            refresh: v["refresh_token"].as_str().unwrap().to_string(),
            tenant_id: v["tenant"]["id"].as_str().unwrap().to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub session: Session,
    pub project_id: String,
    pub key: String,
}

/// Asserts the error shape and returns the error object.
pub fn assert_error(v: &Value, code: &str) -> Value {
    let e = &v["error"];
    assert_eq!(e["code"], code, "error code in {v}");
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message in {v}"
    );
    assert!(e["details"].is_array(), "details in {v}");
    assert!(
        e["request_id"].as_str().is_some_and(|m| !m.is_empty()),
        "request_id in {v}"
    );
    e.clone()
}

pub fn simple_email() -> Value {
    json!({"from": "Acme <noreply@acme.test>", "to": "bob@example.test", "subject": "Hello", "text": "Hi there", "html": "<p>Hi there</p>"})
}
