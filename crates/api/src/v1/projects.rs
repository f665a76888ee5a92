//! Projects and their API keys.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, UserCtx};
use crate::v1::{clean_name, opt_rfc3339, path_id, rfc3339};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use courierx_domain::{
    ApiKeyId, ProjectId, ProviderId, RawApiKey, Role, Slug, ValidationErrors, now_ms,
};
use courierx_engine::settings::EmailSettings;
use courierx_store::notify;
use courierx_store::projects::{ApiKeyRow, ProjectRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_project, list_projects))
        .routes(routes!(get_project, update_project, delete_project))
        .routes(routes!(create_key, list_keys))
        .routes(routes!(revoke_key))
}

#[derive(Serialize, ToSchema)]
pub struct ProjectView {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub default_provider_id: Option<String>,
    pub email_settings: EmailSettings,
    pub created_at: String,
}

impl From<ProjectRow> for ProjectView {
    fn from(p: ProjectRow) -> Self {
        Self {
            email_settings: serde_json::from_str(&p.email_settings).unwrap_or_default(),
            id: p.id,
            name: p.name,
            slug: p.slug,
            default_provider_id: p.default_provider_id,
            created_at: rfc3339(p.created_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct ProjectList {
    pub data: Vec<ProjectView>,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateProjectRequest {
    pub name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct UpdateProjectRequest {
    pub name: Option<String>,
    /// A provider of this tenant, or `null` to clear it.
    #[serde(default, deserialize_with = "crate::v1::some_value")]
    #[schema(value_type = Option<String>)]
    pub default_provider_id: Option<Option<String>>,
    /// Replaces the project's email settings as a whole.
    pub email_settings: Option<EmailSettings>,
}

/// Create a project; it sends through the tenant's sandbox provider until told otherwise.
#[utoipa::path(post, path = "/api/v1/projects", tag = "projects", security(("user_token" = [])), request_body = CreateProjectRequest,
    responses((status = 201, body = ProjectView), (status = 403, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn create_project(
    State(state): State<AppState>,
    ctx: UserCtx,
    Json(req): Json<CreateProjectRequest>,
) -> ApiResult<(StatusCode, axum::Json<ProjectView>)> {
    ctx.require(Role::Developer)?;
    let mut errs = ValidationErrors::new();
    let name = clean_name("name", req.name.as_deref(), 100, &mut errs);
    errs.into_result()?;
    let name = name.ok_or_else(|| ApiError::internal("validated name missing"))?;
    let db = &state.engine.db;
    let sandbox = db
        .sandbox_provider(ctx.tenant)
        .await?
        .map(|p| p.id.parse::<ProviderId>())
        .transpose()
        .map_err(ApiError::internal)?;
    let slug = Slug::from_name(&name, "project");
    let row = db
        .create_project(
            ctx.tenant,
            ProjectId::new(),
            &name,
            slug.as_str(),
            sandbox,
            now_ms(),
        )
        .await?;
    Ok((StatusCode::CREATED, axum::Json(row.into())))
}

/// List the tenant's projects.
#[utoipa::path(get, path = "/api/v1/projects", tag = "projects", security(("user_token" = [])), responses((status = 200, body = ProjectList)))]
async fn list_projects(
    State(state): State<AppState>,
    ctx: UserCtx,
) -> ApiResult<axum::Json<ProjectList>> {
    let rows = state.engine.db.list_projects(ctx.tenant).await?;
    Ok(axum::Json(ProjectList {
        data: rows.into_iter().map(Into::into).collect(),
    }))
}

async fn load_project(state: &AppState, ctx: &UserCtx, id: &str) -> ApiResult<ProjectRow> {
    let id: ProjectId = path_id(id, "project")?;
    state
        .engine
        .db
        .get_project(ctx.tenant, id)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))
}

/// Get a project.
#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "projects", security(("user_token" = [])),
    params(("id" = String, Path)), responses((status = 200, body = ProjectView), (status = 404, body = crate::error::ErrorBody)))]
async fn get_project(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ProjectView>> {
    Ok(axum::Json(load_project(&state, &ctx, &id).await?.into()))
}

/// Rename a project or change its default provider.
#[utoipa::path(patch, path = "/api/v1/projects/{id}", tag = "projects", security(("user_token" = [])), request_body = UpdateProjectRequest,
    params(("id" = String, Path)),
    responses((status = 200, body = ProjectView), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn update_project(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
    Json(req): Json<UpdateProjectRequest>,
) -> ApiResult<axum::Json<ProjectView>> {
    ctx.require(Role::Developer)?;
    let project = load_project(&state, &ctx, &id).await?;
    let mut errs = ValidationErrors::new();
    let name = match req.name.as_deref() {
        Some(n) => clean_name("name", Some(n), 100, &mut errs),
        None => None,
    };
    let provider = match &req.default_provider_id {
        None => None,
        Some(None) => Some(None),
        Some(Some(p)) => match p.parse::<ProviderId>() {
            Ok(pid)
                if state
                    .engine
                    .db
                    .get_provider(ctx.tenant, pid)
                    .await?
                    .is_some() =>
            {
                Some(Some(pid))
            }
            _ => {
                errs.add("default_provider_id", "no such provider in this tenant");
                None
            }
        },
    };
    let settings = match req.email_settings {
        None => None,
        Some(s) => match s.parse() {
            Ok((s, _)) => Some(serde_json::to_string(&s).map_err(ApiError::internal)?),
            Err(e) => {
                errs.0.extend(e.0);
                None
            }
        },
    };
    errs.into_result()?;
    let pid: ProjectId = path_id(&project.id, "project")?;
    let row = state
        .engine
        .db
        .update_project(
            ctx.tenant,
            pid,
            name.as_deref(),
            provider,
            settings.as_deref(),
            now_ms(),
        )
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    state.engine.routing_changed();
    Ok(axum::Json(row.into()))
}

/// Delete a project (its messages stay for history; its keys are revoked).
#[utoipa::path(delete, path = "/api/v1/projects/{id}", tag = "projects", security(("user_token" = [])),
    params(("id" = String, Path)), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn delete_project(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    ctx.require(Role::Developer)?;
    let id: ProjectId = path_id(&id, "project")?;
    if !state
        .engine
        .db
        .delete_project(ctx.tenant, id, now_ms())
        .await?
    {
        return Err(ApiError::not_found("project"));
    }
    forget_keys(&state, &id.to_string()).await;
    state.engine.routing_changed();
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyView {
    pub id: String,
    pub name: String,
    pub prefix: String,
    pub created_at: String,
    pub expires_at: Option<String>,
    pub last_used_at: Option<String>,
    pub revoked_at: Option<String>,
}

impl From<ApiKeyRow> for ApiKeyView {
    fn from(k: ApiKeyRow) -> Self {
        Self {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            created_at: rfc3339(k.created_at),
            expires_at: opt_rfc3339(k.expires_at),
            last_used_at: opt_rfc3339(k.last_used_at),
            revoked_at: opt_rfc3339(k.revoked_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct CreatedApiKey {
    pub api_key: ApiKeyView,
    /// The raw key. It is shown only in this response; CourierX keeps only its SHA-256 hash.
    pub key: String,
}

#[derive(Serialize, ToSchema)]
pub struct ApiKeyList {
    pub data: Vec<ApiKeyView>,
}

#[derive(Deserialize, ToSchema)]
pub struct CreateKeyRequest {
    pub name: Option<String>,
    /// RFC 3339 time in the future after which the key stops working.
    pub expires_at: Option<String>,
}

/// Create an API key for a project. The raw key is returned once.
#[utoipa::path(post, path = "/api/v1/projects/{id}/api-keys", tag = "projects", security(("user_token" = [])), request_body = CreateKeyRequest,
    params(("id" = String, Path)),
    responses((status = 201, body = CreatedApiKey), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn create_key(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
    Json(req): Json<CreateKeyRequest>,
) -> ApiResult<(StatusCode, axum::Json<CreatedApiKey>)> {
    ctx.require(Role::Developer)?;
    let project = load_project(&state, &ctx, &id).await?;
    let mut errs = ValidationErrors::new();
    let name = clean_name("name", req.name.as_deref(), 100, &mut errs);
    let now = now_ms();
    let expires_at = match req.expires_at.as_deref() {
        None => None,
        Some(s) => match chrono::DateTime::parse_from_rfc3339(s) {
            Ok(t) if t.timestamp_millis() > now => Some(t.timestamp_millis()),
            Ok(_) => {
                errs.add("expires_at", "must be in the future");
                None
            }
            Err(_) => {
                errs.add(
                    "expires_at",
                    "must be an RFC 3339 time such as 2030-01-01T00:00:00Z",
                );
                None
            }
        },
    };
    errs.into_result()?;
    let name = name.ok_or_else(|| ApiError::internal("validated name missing"))?;
    let raw = RawApiKey::generate();
    let pid: ProjectId = path_id(&project.id, "project")?;
    let row = state
        .engine
        .db
        .create_api_key(
            ctx.tenant,
            pid,
            ApiKeyId::new(),
            &name,
            raw.prefix(),
            raw.hash().as_str(),
            expires_at,
            now,
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        axum::Json(CreatedApiKey {
            api_key: row.into(),
            key: raw.expose().to_string(),
        }),
    ))
}

/// List a project's API keys (metadata only).
#[utoipa::path(get, path = "/api/v1/projects/{id}/api-keys", tag = "projects", security(("user_token" = [])),
    params(("id" = String, Path)), responses((status = 200, body = ApiKeyList), (status = 404, body = crate::error::ErrorBody)))]
async fn list_keys(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<ApiKeyList>> {
    let project = load_project(&state, &ctx, &id).await?;
    let rows = state
        .engine
        .db
        .list_api_keys(ctx.tenant, path_id(&project.id, "project")?)
        .await?;
    Ok(axum::Json(ApiKeyList {
        data: rows.into_iter().map(Into::into).collect(),
    }))
}

/// Revoke an API key; it answers 401 from then on.
#[utoipa::path(delete, path = "/api/v1/projects/{id}/api-keys/{key_id}", tag = "projects", security(("user_token" = [])),
    params(("id" = String, Path), ("key_id" = String, Path)), responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn revoke_key(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, key_id)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    ctx.require(Role::Developer)?;
    let project = load_project(&state, &ctx, &id).await?;
    let key: ApiKeyId = path_id(&key_id, "api key")?;
    if !state
        .engine
        .db
        .revoke_api_key(ctx.tenant, path_id(&project.id, "project")?, key, now_ms())
        .await?
    {
        return Err(ApiError::not_found("api key"));
    }
    forget_keys(&state, &project.id).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Drops the project's cached keys here and, through the database, in every other process.
async fn forget_keys(state: &AppState, project: &str) {
    state.keys.forget_project(project);
    if let Err(e) = state.engine.db.notify(notify::API_KEYS, project).await {
        // The revocation itself is committed; other processes drop their entries within the cache TTL.
        tracing::warn!(error = %e, "could not announce the API key change to other processes");
    }
}
