//! Registration, login, token refresh (rotating, with reuse detection), logout and `me`.

use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, UserCtx};
use crate::v1::{clean_name, stored_id};
use crate::{AppState, SignupMode};
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use courierx_domain::{
    EmailAddress, Password, ProviderId, Role, Slug, TenantId, UserId, ValidationErrors, now_ms,
};
use courierx_engine::auth::{self, ACCESS_TTL_SECS, REFRESH_TTL_MS};
use courierx_store::StoreError;
use courierx_store::users::{NewTenantBundle, NewUser, TenantRow, UserRow};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(refresh))
        .routes(routes!(logout))
        .routes(routes!(me))
}

#[derive(Deserialize, ToSchema)]
pub struct RegisterRequest {
    pub tenant: Option<RegisterTenant>,
    pub user: Option<RegisterUser>,
}

#[derive(Deserialize, ToSchema)]
pub struct RegisterTenant {
    pub name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct RegisterUser {
    pub email: Option<String>,
    pub password: Option<String>,
    pub name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

#[derive(Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub email: String,
    pub name: String,
    /// `owner`, `admin`, `developer` or `viewer`.
    #[schema(value_type = String)]
    pub role: Role,
}

impl From<&UserRow> for UserView {
    fn from(u: &UserRow) -> Self {
        Self {
            id: u.id.clone(),
            email: u.email.clone(),
            name: u.name.clone(),
            role: u.role.parse().unwrap_or(Role::Viewer),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TenantView {
    pub id: String,
    pub name: String,
    pub slug: String,
}

impl From<&TenantRow> for TenantView {
    fn from(t: &TenantRow) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            slug: t.slug.clone(),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct SessionResponse {
    pub user: UserView,
    pub tenant: TenantView,
    pub access_token: String,
    pub refresh_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the access token expires.
    pub expires_in: i64,
}

#[derive(Serialize, ToSchema)]
pub struct MeResponse {
    pub user: UserView,
    pub tenant: TenantView,
}

async fn new_session(
    state: &AppState,
    user: &UserRow,
    tenant: &TenantRow,
    family: Option<&str>,
) -> ApiResult<SessionResponse> {
    let now = now_ms();
    let (uid, tid): (UserId, TenantId) = (stored_id(&user.id)?, stored_id(&tenant.id)?);
    let role: Role = user.role.parse().map_err(ApiError::internal)?;
    let access = state
        .engine
        .tokens
        .issue_access(uid, tid, role, now / 1000)
        .map_err(ApiError::internal)?;
    let refresh = auth::new_refresh_token();
    let family = family
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let hash = courierx_domain::Sha256Hex::of(&refresh);
    state
        .engine
        .db
        .insert_refresh_token(tid, uid, &family, hash.as_str(), now + REFRESH_TTL_MS, now)
        .await?;
    Ok(SessionResponse {
        user: user.into(),
        tenant: tenant.into(),
        access_token: access,
        refresh_token: refresh,
        token_type: "Bearer".into(),
        expires_in: ACCESS_TTL_SECS,
    })
}

/// Register a tenant and its owner.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "auth", request_body = RegisterRequest,
    responses((status = 201, body = SessionResponse), (status = 403, body = crate::error::ErrorBody, description = "signup is closed"),
              (status = 409, body = crate::error::ErrorBody, description = "email already registered"),
              (status = 422, body = crate::error::ErrorBody)))]
async fn register(
    State(state): State<AppState>,
    Json(req): Json<RegisterRequest>,
) -> ApiResult<(StatusCode, axum::Json<SessionResponse>)> {
    match state.cfg.signup {
        SignupMode::Closed => {
            return Err(ApiError::forbidden(
                "signup is closed on this instance; ask an administrator for an account",
            ));
        }
        SignupMode::FirstUser if state.engine.db.count_users().await? > 0 => {
            return Err(ApiError::forbidden(
                "signup is closed: this instance already has its first user",
            ));
        }
        _ => {}
    }
    let mut errs = ValidationErrors::new();
    let tenant_name = clean_name(
        "tenant.name",
        req.tenant.as_ref().and_then(|t| t.name.as_deref()),
        100,
        &mut errs,
    );
    let u = req.user.as_ref();
    let user_name = clean_name(
        "user.name",
        u.and_then(|u| u.name.as_deref()),
        100,
        &mut errs,
    );
    let email = match u.and_then(|u| u.email.as_deref()) {
        None => {
            errs.add("user.email", "is required");
            None
        }
        Some(e) => errs.check("user.email", EmailAddress::parse(e)),
    };
    let password = match u.and_then(|u| u.password.as_deref()) {
        None => {
            errs.add("user.password", "is required");
            None
        }
        Some(p) => errs.check("user.password", Password::parse(p)),
    };
    errs.into_result()?;
    let (Some(tenant_name), Some(user_name), Some(email), Some(password)) =
        (tenant_name, user_name, email, password)
    else {
        return Err(ApiError::internal("validated fields missing"));
    };
    let hash = auth::hash_password(password.expose().to_string())
        .await
        .map_err(ApiError::internal)?;
    let (tenant_id, user_id, now) = (TenantId::new(), UserId::new(), now_ms());
    let slug = Slug::from_name(&tenant_name, "tenant");
    let bundle = NewTenantBundle {
        tenant_id,
        name: &tenant_name,
        slug: slug.as_str(),
        owner: NewUser {
            id: user_id,
            tenant_id,
            email: email.as_str(),
            name: &user_name,
            password_hash: &hash,
            role: Role::Owner.as_str(),
            now,
        },
        sandbox_provider_id: ProviderId::new(),
    };
    let tenant = match state
        .engine
        .db
        .create_tenant_with_owner(&bundle, state.cfg.signup == SignupMode::FirstUser)
        .await
    {
        Ok(t) => t,
        Err(StoreError::Conflict("email_taken")) => {
            return Err(ApiError::conflict(
                "email_taken",
                "an account with this email already exists",
            ));
        }
        Err(StoreError::Conflict("signup_closed")) => {
            return Err(ApiError::forbidden(
                "signup is closed: this instance already has its first user",
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let user = UserRow {
        id: user_id.to_string(),
        tenant_id: tenant_id.to_string(),
        email: email.as_str().to_string(),
        name: user_name,
        password_hash: String::new(),
        role: Role::Owner.as_str().into(),
        created_at: now,
    };
    let session = new_session(&state, &user, &tenant, None).await?;
    Ok((StatusCode::CREATED, axum::Json(session)))
}

const LOGIN_WINDOW_MS: i64 = 15 * 60_000;
const LOGIN_MAX_FAILURES: i64 = 5;

/// Log in with email and password.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = SessionResponse), (status = 401, body = crate::error::ErrorBody),
              (status = 429, body = crate::error::ErrorBody, description = "too many failed attempts for this email or address")))]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Json(req): Json<LoginRequest>,
) -> ApiResult<axum::Json<SessionResponse>> {
    let db = &state.engine.db;
    let now = now_ms();
    let email_key = format!("email:{}", req.email.trim().to_lowercase());
    let ip_key = format!("ip:{}", peer.ip());
    for key in [&email_key, &ip_key] {
        let (n, oldest) = db.login_failures_since(key, now - LOGIN_WINDOW_MS).await?;
        if n >= LOGIN_MAX_FAILURES {
            let retry = oldest
                .map(|o| (o + LOGIN_WINDOW_MS - now) / 1000 + 1)
                .unwrap_or(60);
            return Err(ApiError::too_many(
                "too many failed login attempts; try again later",
                retry as u64,
            ));
        }
    }
    let user = db.find_user_by_email(req.email.trim()).await?;
    let hash = user
        .as_ref()
        .map(|u| u.password_hash.clone())
        .unwrap_or_else(|| auth::DUMMY_HASH.clone());
    let ok = auth::verify_password(req.password, hash).await && user.is_some();
    let Some(user) = user.filter(|_| ok) else {
        db.record_login_failure(&[&email_key, &ip_key], now).await?;
        return Err(ApiError::unauthorized("invalid email or password"));
    };
    let tenant = db
        .get_tenant(stored_id(&user.tenant_id)?)
        .await?
        .ok_or_else(|| ApiError::internal("user without tenant"))?;
    Ok(axum::Json(new_session(&state, &user, &tenant, None).await?))
}

/// Exchange a refresh token for a new access and refresh token. Refresh tokens rotate: presenting
/// one that was already used revokes its whole family.
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = SessionResponse), (status = 401, body = crate::error::ErrorBody)))]
async fn refresh(
    State(state): State<AppState>,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<axum::Json<SessionResponse>> {
    let db = &state.engine.db;
    let now = now_ms();
    let invalid = || ApiError::unauthorized("invalid or expired refresh token");
    let hash = courierx_domain::Sha256Hex::of(req.refresh_token.trim());
    let tok = db
        .find_refresh_token(hash.as_str())
        .await?
        .ok_or_else(invalid)?;
    if tok.revoked_at.is_some() || tok.expires_at <= now {
        return Err(invalid());
    }
    if tok.used_at.is_some() || !db.use_refresh_token(&tok.id, now).await? {
        // A used token presented again means it leaked: end every session of this family.
        db.revoke_refresh_family(&tok.family_id, now).await?;
        tracing::warn!(
            family = tok.family_id,
            "refresh token reuse detected; family revoked"
        );
        return Err(ApiError::unauthorized(
            "refresh token was already used; all sessions of this login have been revoked",
        ));
    }
    let tenant_id: TenantId = stored_id(&tok.tenant_id)?;
    let user = db
        .get_user(tenant_id, stored_id(&tok.user_id)?)
        .await?
        .ok_or_else(invalid)?;
    let tenant = db.get_tenant(tenant_id).await?.ok_or_else(invalid)?;
    Ok(axum::Json(
        new_session(&state, &user, &tenant, Some(&tok.family_id)).await?,
    ))
}

/// Log out: revokes the refresh token's family.
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth", request_body = RefreshRequest, responses((status = 204)))]
async fn logout(
    State(state): State<AppState>,
    Json(req): Json<RefreshRequest>,
) -> ApiResult<StatusCode> {
    let hash = courierx_domain::Sha256Hex::of(req.refresh_token.trim());
    if let Some(tok) = state.engine.db.find_refresh_token(hash.as_str()).await? {
        state
            .engine
            .db
            .revoke_refresh_family(&tok.family_id, now_ms())
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The signed-in user and their tenant.
#[utoipa::path(get, path = "/api/v1/auth/me", tag = "auth", security(("user_token" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = crate::error::ErrorBody)))]
async fn me(State(state): State<AppState>, ctx: UserCtx) -> ApiResult<axum::Json<MeResponse>> {
    let db = &state.engine.db;
    let user = db
        .get_user(ctx.tenant, ctx.user)
        .await?
        .ok_or_else(|| ApiError::unauthorized("user no longer exists"))?;
    let tenant = db
        .get_tenant(ctx.tenant)
        .await?
        .ok_or_else(|| ApiError::unauthorized("tenant no longer exists"))?;
    Ok(axum::Json(MeResponse {
        user: (&user).into(),
        tenant: (&tenant).into(),
    }))
}
