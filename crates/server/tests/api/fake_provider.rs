//! A local stand-in for Resend's `POST /emails` (the provider the routing tests send through):
//! it checks the request the way Resend does (Bearer key, JSON with from/to/subject and an
//! `Idempotency-Key`), records when each request arrived and answers as told.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const KEY: &str = "re_test_123456789";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Ok,
    /// 503 with Resend's error body: transient.
    Unavailable,
    /// 422 `validation_error`: the message itself is rejected.
    Invalid,
}

#[derive(Default)]
struct Inner {
    answer: Option<Answer>,
    arrivals: Vec<(Instant, Value)>,
    /// The id the next accepted email gets (else a fresh UUID).
    next_id: Option<String>,
}

#[derive(Clone)]
pub struct FakeResend {
    inner: Arc<Mutex<Inner>>,
    port: u16,
}

async fn emails(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, axum::Json<Value>) {
    let now = Instant::now();
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(&format!("Bearer {KEY}"))
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(
                json!({"statusCode": 401, "name": "missing_api_key", "message": "Missing API key in the authorization header."}),
            ),
        );
    }
    let parsed: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(_) => {
            return (
                StatusCode::BAD_REQUEST,
                axum::Json(
                    json!({"statusCode": 400, "name": "invalid_request", "message": "bad json"}),
                ),
            );
        }
    };
    let well_formed = parsed["from"].is_string()
        && parsed["to"].as_array().is_some_and(|a| !a.is_empty())
        && parsed["subject"].is_string()
        && headers.contains_key("idempotency-key");
    let mut g = inner.lock().unwrap();
    g.arrivals.push((now, parsed));
    if !well_formed {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(
                json!({"statusCode": 422, "name": "missing_required_field", "message": "from, to and subject are required"}),
            ),
        );
    }
    match g.answer.unwrap_or(Answer::Ok) {
        Answer::Ok => (
            StatusCode::OK,
            axum::Json(
                json!({"id": g.next_id.take().unwrap_or_else(|| uuid::Uuid::now_v7().to_string())}),
            ),
        ),
        Answer::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({"statusCode": 503, "name": "application_error", "message": "Service unavailable"}),
            ),
        ),
        Answer::Invalid => (
            StatusCode::UNPROCESSABLE_ENTITY,
            axum::Json(
                json!({"statusCode": 422, "name": "validation_error", "message": "Invalid `to` field."}),
            ),
        ),
    }
}

impl FakeResend {
    pub async fn start(answer: Answer) -> FakeResend {
        let inner = Arc::new(Mutex::new(Inner {
            answer: Some(answer),
            arrivals: Vec::new(),
            next_id: None,
        }));
        let app = Router::new()
            .route("/emails", post(emails))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeResend { inner, port }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn answer(&self, a: Answer) {
        self.inner.lock().unwrap().answer = Some(a);
    }

    pub fn set_next_id(&self, id: &str) {
        self.inner.lock().unwrap().next_id = Some(id.to_string());
    }

    pub fn hits(&self) -> usize {
        self.inner.lock().unwrap().arrivals.len()
    }

    pub fn arrivals(&self) -> Vec<Instant> {
        self.inner
            .lock()
            .unwrap()
            .arrivals
            .iter()
            .map(|(t, _)| *t)
            .collect()
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.inner
            .lock()
            .unwrap()
            .arrivals
            .iter()
            .map(|(_, b)| b.clone())
            .collect()
    }

    /// Waits until at least `n` requests arrived (or 20 s passed).
    pub async fn wait_hits(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.hits() < n {
            assert!(
                Instant::now() < deadline,
                "only {} of {n} requests arrived",
                self.hits()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
