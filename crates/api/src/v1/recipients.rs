//! Erasing a recipient's data from the API key's project (a data-subject erasure request).

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::ProjectCtx;
use axum::extract::{Path, State};
use courierx_domain::{EmailAddress, now_ms};
use courierx_store::erasure::Erasure;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(erase_recipient))
}

#[derive(Serialize, ToSchema)]
pub struct ErasedRecipient {
    /// `sha256:<hex>` of the lowercase address: what now stands in its place.
    pub email_hash: String,
    /// Messages whose content was removed and whose address lists now hold the hash.
    pub messages_erased: u64,
    /// Messages a worker was sending at that moment, left as they were: erase again once they
    /// have finished.
    pub messages_in_flight: u64,
}

/// The stand-in for an erased address.
fn email_hash(address: &str) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(address.as_bytes())))
}

/// Erase an address from the project's messages: every message sent to it (to, cc, bcc or
/// reply-to) loses its subject, bodies, headers, metadata, attachments and sandbox copy, and the
/// address is replaced by its hash in the address lists, events and recipient states. Statuses
/// and timelines stay; messages not sent yet are cancelled. The address's suppressions are kept:
/// they are what stops it being mailed again.
#[utoipa::path(delete, path = "/api/v1/recipients/{email}", tag = "recipients", security(("api_key" = [])),
    params(("email" = String, Path)),
    responses((status = 200, body = ErasedRecipient), (status = 401, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn erase_recipient(
    State(state): State<AppState>,
    ctx: ProjectCtx,
    Path(email): Path<String>,
) -> ApiResult<axum::Json<ErasedRecipient>> {
    let email = EmailAddress::parse(&email).map_err(|m| ApiError::field("email", m.to_string()))?;
    let address = email.as_str().to_lowercase();
    let hash = email_hash(&address);
    let erased = state
        .engine
        .db
        .erase_recipient(&Erasure {
            tenant: ctx.tenant,
            project: ctx.project,
            address: &address,
            hash: &hash,
            now: now_ms(),
        })
        .await?;
    Ok(axum::Json(ErasedRecipient {
        email_hash: hash,
        messages_erased: erased.messages,
        messages_in_flight: erased.in_flight,
    }))
}
