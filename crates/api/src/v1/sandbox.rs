//! What the sandbox provider "delivered", for the API key's project.

use crate::AppState;
use crate::error::ApiResult;
use crate::extract::ProjectCtx;
use crate::v1::rfc3339;
use axum::extract::State;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_sandbox))
}

#[derive(Serialize, ToSchema)]
pub struct SandboxMessage {
    pub message_id: String,
    /// The complete MIME message as a real provider would have received it.
    pub raw: String,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub received_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct SandboxList {
    pub data: Vec<SandboxMessage>,
}

/// Messages the sandbox provider captured for this project, newest first (up to 100).
#[utoipa::path(get, path = "/api/v1/sandbox/messages", tag = "sandbox", security(("api_key" = [])),
    responses((status = 200, body = SandboxList), (status = 401, body = crate::error::ErrorBody)))]
async fn list_sandbox(
    State(state): State<AppState>,
    ctx: ProjectCtx,
) -> ApiResult<axum::Json<SandboxList>> {
    let rows = state
        .engine
        .db
        .list_sandbox(ctx.tenant, ctx.project, 100)
        .await?;
    let data = rows
        .into_iter()
        .map(|r| SandboxMessage {
            message_id: r.message_id,
            raw: r.raw,
            from: r.from_addr,
            to: serde_json::from_str(&r.to_addrs).unwrap_or_default(),
            subject: r.subject,
            received_at: rfc3339(r.received_at),
        })
        .collect();
    Ok(axum::Json(SandboxList { data }))
}
