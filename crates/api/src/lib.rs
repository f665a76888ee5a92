//! The CourierX HTTP API (axum). One router per resource under `v1/`, merged here with the
//! operational endpoints; the OpenAPI document is generated from the handlers themselves.

pub mod error;
pub mod extract;
mod middleware;
mod ops;
pub mod tracking;
pub mod v1;
pub mod webhooks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use courierx_engine::Engine;
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

/// Who may register a tenant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignupMode {
    Open,
    /// Only while no user exists (the first user sets the instance up).
    FirstUser,
    Closed,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub signup: SignupMode,
    pub body_limit: usize,
    /// The body limit of the send endpoints: `body_limit` plus the attachment allowance in base64.
    pub message_body_limit: usize,
    pub message_limits: v1::messages::MessageLimits,
}

impl ApiConfig {
    pub fn new(signup: SignupMode, body_limit: usize, max_attachment_bytes: usize) -> Self {
        Self {
            signup,
            body_limit,
            message_body_limit: body_limit + max_attachment_bytes.div_ceil(3) * 4,
            message_limits: v1::messages::MessageLimits {
                max_attachment_bytes,
            },
        }
    }
}

/// Liveness facts the server process reports about itself.
#[derive(Debug, Default)]
pub struct ProcessHealth {
    pub workers_running: AtomicBool,
    pub workers_enabled: AtomicBool,
}

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub cfg: Arc<ApiConfig>,
    pub metrics: PrometheusHandle,
    pub health: Arc<ProcessHealth>,
    pub keys: Arc<extract::KeyCache>,
    /// Shared by provider webhook verifiers (HTTP client, SNS certificate cache).
    pub webhooks: Arc<courierx_providers::webhooks::WebhookContext>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "CourierX API",
        description = "Multi-tenant notification delivery. Users authenticate with a Bearer access token; \
            message endpoints take a project API key (`Authorization: Bearer cx_…` or `X-API-Key`). \
            Errors always have the shape `{\"error\":{\"code\",\"message\",\"details\",\"request_id\"}}`. \
            Delivery is at-least-once.",
        version = "1"
    ),
    modifiers(&Security),
    components(schemas(error::ErrorBody))
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "user_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
        c.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The OpenAPI document of every `/api/v1` route, as generated from the handlers.
pub fn openapi() -> utoipa::openapi::OpenApi {
    v1_router().split_for_parts().1
}

fn v1_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(v1::auth::router())
        .merge(v1::users::router())
        .merge(v1::projects::router())
        .merge(v1::providers::router())
        .merge(v1::routes::router())
        .merge(v1::messages::router())
        .merge(v1::sandbox::router())
        .merge(v1::suppressions::router())
        .merge(v1::recipients::router())
        .merge(v1::templates::router())
        .merge(webhooks::router())
        .merge(tracking::router())
        .merge(ops::router())
}

pub fn router(state: AppState) -> Router {
    let (api, doc) = v1_router().split_for_parts();
    let doc_json = Arc::new(doc);
    let limit = state.cfg.body_limit;
    Router::new()
        .merge(api)
        .route(
            "/openapi.json",
            get(move || async move { axum::Json(doc_json.as_ref().clone()) }),
        )
        .route(
            "/docs",
            get(|| async { axum::response::Html(include_str!("docs.html")) }),
        )
        .fallback(middleware::not_found)
        .method_not_allowed_fallback(middleware::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(middleware::request_context))
        .with_state(state)
}
