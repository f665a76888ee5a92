//! Tenant users (admins and owners manage them).

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, UserCtx};
use crate::v1::auth::UserView;
use crate::v1::clean_name;
use axum::extract::State;
use axum::http::StatusCode;
use courierx_domain::{EmailAddress, Password, Role, UserId, ValidationErrors, now_ms};
use courierx_engine::auth;
use courierx_store::StoreError;
use courierx_store::users::NewUser;
use serde::Deserialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(create_user, list_users))
}

#[derive(Deserialize, ToSchema)]
pub struct CreateUserRequest {
    pub email: Option<String>,
    pub name: Option<String>,
    /// `owner`, `admin`, `developer` or `viewer`; at most the creator's own role.
    pub role: Option<String>,
    pub password: Option<String>,
}

#[derive(serde::Serialize, ToSchema)]
pub struct UserList {
    pub data: Vec<UserView>,
}

/// Add a user to the tenant (admin or owner).
#[utoipa::path(post, path = "/api/v1/users", tag = "users", security(("user_token" = [])), request_body = CreateUserRequest,
    responses((status = 201, body = UserView), (status = 403, body = crate::error::ErrorBody),
              (status = 409, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn create_user(
    State(state): State<AppState>,
    ctx: UserCtx,
    Json(req): Json<CreateUserRequest>,
) -> ApiResult<(StatusCode, axum::Json<UserView>)> {
    ctx.require(Role::Admin)?;
    let mut errs = ValidationErrors::new();
    let name = clean_name("name", req.name.as_deref(), 100, &mut errs);
    let email = match req.email.as_deref() {
        Some(e) => errs.check("email", EmailAddress::parse(e)),
        None => {
            errs.add("email", "is required");
            None
        }
    };
    let password = match req.password.as_deref() {
        Some(p) => errs.check("password", Password::parse(p)),
        None => {
            errs.add("password", "is required");
            None
        }
    };
    let role = match req.role.as_deref() {
        Some(r) => errs.check("role", r.parse::<Role>()),
        None => {
            errs.add("role", "is required");
            None
        }
    };
    errs.into_result()?;
    let (Some(name), Some(email), Some(password), Some(role)) = (name, email, password, role)
    else {
        return Err(ApiError::internal("validated fields missing"));
    };
    if role > ctx.role {
        return Err(ApiError::forbidden(
            "you cannot grant a role higher than your own",
        ));
    }
    let hash = auth::hash_password(password.expose().to_string())
        .await
        .map_err(ApiError::internal)?;
    let id = UserId::new();
    let new = NewUser {
        id,
        tenant_id: ctx.tenant,
        email: email.as_str(),
        name: &name,
        password_hash: &hash,
        role: role.as_str(),
        now: now_ms(),
    };
    match state.engine.db.create_user(&new).await {
        Ok(()) => {}
        Err(StoreError::Conflict(_)) => {
            return Err(ApiError::conflict(
                "email_taken",
                "an account with this email already exists",
            ));
        }
        Err(e) => return Err(e.into()),
    }
    Ok((
        StatusCode::CREATED,
        axum::Json(UserView {
            id: id.to_string(),
            email: email.as_str().into(),
            name,
            role,
        }),
    ))
}

/// List the tenant's users (admin or owner).
#[utoipa::path(get, path = "/api/v1/users", tag = "users", security(("user_token" = [])),
    responses((status = 200, body = UserList), (status = 403, body = crate::error::ErrorBody)))]
async fn list_users(
    State(state): State<AppState>,
    ctx: UserCtx,
) -> ApiResult<axum::Json<UserList>> {
    ctx.require(Role::Admin)?;
    let rows = state.engine.db.list_users(ctx.tenant).await?;
    Ok(axum::Json(UserList {
        data: rows.iter().map(UserView::from).collect(),
    }))
}
