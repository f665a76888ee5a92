//! Provider configurations. Secrets are sealed at rest and masked (`********`) in every response.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, UserCtx};
use crate::v1::{clean_name, path_id, rfc3339};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use courierx_domain::{ProviderId, Role, ValidationErrors, now_ms};
use courierx_engine::breaker::{BreakerConfig, CircuitView};
use courierx_engine::providers::{full_config, masked_config, merge_patch, split_secrets};
use courierx_engine::settings::ProviderOptions;
use courierx_store::providers::ProviderRow;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, Instant};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_provider, list_providers))
        .routes(routes!(get_provider, update_provider, delete_provider))
        .routes(routes!(check_provider))
}

#[derive(Serialize, ToSchema)]
pub struct ProviderView {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// The configuration with every secret field shown as `********`.
    #[schema(value_type = Object)]
    pub config: Value,
    /// Pacing: most messages per second this process hands to the provider.
    pub rate_per_second: Option<f64>,
    pub circuit_breaker: BreakerConfig,
    /// This process's circuit breaker for the provider.
    pub circuit: CircuitView,
    pub created_at: String,
    pub updated_at: String,
}

impl ProviderView {
    fn of(r: &ProviderRow, engine: &courierx_engine::Engine) -> Self {
        let options: ProviderOptions = serde_json::from_str(&r.options).unwrap_or_default();
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            kind: r.kind.clone(),
            config: masked_config(r, &engine.secrets),
            rate_per_second: options.rate_per_second,
            circuit_breaker: options.circuit_breaker,
            circuit: engine.breakers.view(&r.id),
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProviderList {
    pub data: Vec<ProviderView>,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateProviderRequest {
    pub name: Option<String>,
    /// `sandbox`, `smtp`, `ses`, `sendgrid`, `mailgun`, `postmark` or `resend`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// Type-specific settings; see the README's providers section for each type.
    #[schema(value_type = Object)]
    pub config: Option<Value>,
    /// Pacing for this provider (0.01 to 100000 messages per second); absent means no pacing.
    pub rate_per_second: Option<f64>,
    pub circuit_breaker: Option<BreakerConfig>,
}

#[derive(Deserialize, ToSchema)]
pub struct UpdateProviderRequest {
    pub name: Option<String>,
    /// Fields to change; `null` removes a field; a secret sent back as `********` is kept.
    #[schema(value_type = Option<Object>)]
    pub config: Option<Value>,
    /// A new rate, or `null` to stop pacing.
    #[serde(default, deserialize_with = "crate::v1::some_value")]
    #[schema(value_type = Option<f64>)]
    pub rate_per_second: Option<Option<f64>>,
    pub circuit_breaker: Option<BreakerConfig>,
}

#[derive(Serialize, ToSchema)]
pub struct CheckResult {
    pub healthy: bool,
    pub latency_ms: u64,
    pub detail: String,
}

fn prefix_config_errors(e: ValidationErrors) -> ValidationErrors {
    ValidationErrors(
        e.0.into_iter()
            .map(|mut f| {
                if !f.field.starts_with("config") {
                    f.field = format!("config.{}", f.field);
                }
                f
            })
            .collect(),
    )
}

/// Create a provider (developer or above).
#[utoipa::path(post, path = "/api/v1/providers", tag = "providers", security(("user_token" = [])), request_body = CreateProviderRequest,
    responses((status = 201, body = ProviderView), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn create_provider(
    State(state): State<AppState>,
    ctx: UserCtx,
    Json(req): Json<CreateProviderRequest>,
) -> ApiResult<(StatusCode, axum::Json<ProviderView>)> {
    ctx.require(Role::Developer)?;
    let mut errs = ValidationErrors::new();
    let name = clean_name("name", req.name.as_deref(), 100, &mut errs);
    let kind = match req.kind.as_deref() {
        None => {
            errs.add("type", "is required");
            None
        }
        Some(k) => match courierx_providers::kind(k) {
            Some(kind) => Some(kind),
            None => {
                let known: Vec<&str> = courierx_providers::KINDS.iter().map(|k| k.name).collect();
                errs.add(
                    "type",
                    format!("unknown provider type; one of: {}", known.join(", ")),
                );
                None
            }
        },
    };
    let config = match (
        kind,
        req.config.unwrap_or(Value::Object(Default::default())),
    ) {
        (Some(kind), cfg) if cfg.is_object() => match (kind.validate)(&cfg) {
            Ok(v) => Some(v),
            Err(e) => {
                errs.0.extend(prefix_config_errors(e).0);
                None
            }
        },
        (Some(_), _) => {
            errs.add("config", "must be an object");
            None
        }
        (None, _) => None,
    };
    let options = ProviderOptions {
        rate_per_second: req.rate_per_second,
        circuit_breaker: req.circuit_breaker.unwrap_or_default(),
    };
    options.check(&mut errs);
    errs.into_result()?;
    let (Some(name), Some(kind), Some(config)) = (name, kind, config) else {
        return Err(ApiError::internal("validated fields missing"));
    };
    let (public, sealed) = split_secrets(kind, &config, &state.engine.secrets);
    let now = now_ms();
    let row = ProviderRow {
        id: ProviderId::new().to_string(),
        tenant_id: ctx.tenant.to_string(),
        name,
        kind: kind.name.to_string(),
        config_public: public.to_string(),
        secret_ciphertext: sealed,
        key_version: 1,
        created_at: now,
        updated_at: now,
        options: serde_json::to_string(&options).map_err(ApiError::internal)?,
    };
    state.engine.db.create_provider(&row).await?;
    state.engine.routing_changed();
    Ok((
        StatusCode::CREATED,
        axum::Json(ProviderView::of(&row, &state.engine)),
    ))
}

/// List the tenant's providers.
#[utoipa::path(get, path = "/api/v1/providers", tag = "providers", security(("user_token" = [])), responses((status = 200, body = ProviderList)))]
async fn list_providers(
    State(state): State<AppState>,
    ctx: UserCtx,
) -> ApiResult<axum::Json<ProviderList>> {
    let rows = state.engine.db.list_providers(ctx.tenant).await?;
    Ok(axum::Json(ProviderList {
        data: rows
            .iter()
            .map(|r| ProviderView::of(r, &state.engine))
            .collect(),
    }))
}

async fn load(state: &AppState, ctx: &UserCtx, id: &str) -> ApiResult<ProviderRow> {
    let id: ProviderId = path_id(id, "provider")?;
    state
        .engine
        .db
        .get_provider(ctx.tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("provider"))
}

/// Get a provider.
#[utoipa::path(get, path = "/api/v1/providers/{id}", tag = "providers", security(("user_token" = [])),
    params(("id" = String, Path)), responses((status = 200, body = ProviderView), (status = 404, body = crate::error::ErrorBody)))]
async fn get_provider(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ProviderView>> {
    let row = load(&state, &ctx, &id).await?;
    Ok(axum::Json(ProviderView::of(&row, &state.engine)))
}

/// Change a provider's name or settings.
#[utoipa::path(patch, path = "/api/v1/providers/{id}", tag = "providers", security(("user_token" = [])), request_body = UpdateProviderRequest,
    params(("id" = String, Path)),
    responses((status = 200, body = ProviderView), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn update_provider(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
    Json(req): Json<UpdateProviderRequest>,
) -> ApiResult<axum::Json<ProviderView>> {
    ctx.require(Role::Developer)?;
    let mut row = load(&state, &ctx, &id).await?;
    let kind = courierx_providers::kind(&row.kind)
        .ok_or_else(|| ApiError::internal("stored provider has an unknown type"))?;
    let mut errs = ValidationErrors::new();
    if let Some(n) = req.name.as_deref()
        && let Some(n) = clean_name("name", Some(n), 100, &mut errs)
    {
        row.name = n;
    }
    if let Some(patch) = &req.config {
        if !patch.is_object() {
            errs.add("config", "must be an object");
        } else {
            let current = full_config(&row, &state.engine.secrets).map_err(ApiError::internal)?;
            match (kind.validate)(&merge_patch(&current, patch)) {
                Ok(cfg) => {
                    let (public, sealed) = split_secrets(kind, &cfg, &state.engine.secrets);
                    row.config_public = public.to_string();
                    row.secret_ciphertext = sealed;
                }
                Err(e) => errs.0.extend(prefix_config_errors(e).0),
            }
        }
    }
    let mut options: ProviderOptions = serde_json::from_str(&row.options).unwrap_or_default();
    if let Some(rate) = req.rate_per_second {
        options.rate_per_second = rate;
    }
    if let Some(cb) = req.circuit_breaker {
        options.circuit_breaker = cb;
    }
    options.check(&mut errs);
    errs.into_result()?;
    row.options = serde_json::to_string(&options).map_err(ApiError::internal)?;
    row.updated_at = now_ms().max(row.updated_at + 1);
    if !state.engine.db.update_provider(&row).await? {
        return Err(ApiError::not_found("provider"));
    }
    state.engine.routing_changed();
    Ok(axum::Json(ProviderView::of(&row, &state.engine)))
}

/// Delete a provider. A provider that a project uses by default answers 409.
#[utoipa::path(delete, path = "/api/v1/providers/{id}", tag = "providers", security(("user_token" = [])),
    params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn delete_provider(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.require(Role::Developer)?;
    let id: ProviderId = path_id(&id, "provider")?;
    match state
        .engine
        .db
        .delete_provider(ctx.tenant, id, now_ms())
        .await
    {
        Ok(true) => {
            state.engine.routing_changed();
            Ok(StatusCode::NO_CONTENT)
        }
        Ok(false) => Err(ApiError::not_found("provider")),
        Err(courierx_store::StoreError::Conflict(_)) => Err(ApiError::conflict(
            "provider_in_use",
            "a project uses this provider by default or a route targets it; change those first",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Check that a provider works (SMTP: connect, EHLO, authenticate).
#[utoipa::path(post, path = "/api/v1/providers/{id}/check", tag = "providers", security(("user_token" = [])),
    params(("id" = String, Path)), responses((status = 200, body = CheckResult), (status = 404, body = crate::error::ErrorBody)))]
async fn check_provider(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<CheckResult>> {
    ctx.require(Role::Developer)?;
    let row = load(&state, &ctx, &id).await?;
    let started = Instant::now();
    let report = match state.engine.providers.get(&row, &state.engine.secrets) {
        Err(e) => CheckResult {
            healthy: false,
            latency_ms: 0,
            detail: e.to_string(),
        },
        Ok(p) => match tokio::time::timeout(Duration::from_secs(30), p.health()).await {
            Ok(h) => CheckResult {
                healthy: h.healthy,
                latency_ms: started.elapsed().as_millis() as u64,
                detail: h.detail,
            },
            Err(_) => CheckResult {
                healthy: false,
                latency_ms: started.elapsed().as_millis() as u64,
                detail: "timed out after 30 s".into(),
            },
        },
    };
    Ok(axum::Json(report))
}
