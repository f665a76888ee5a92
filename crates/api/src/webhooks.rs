//! `POST /webhooks/providers/{provider_id}`: a provider's own event webhook. The provider's
//! parser verifies the request (signature, credentials, timestamp) before anything is read;
//! verified events are stored once and applied by the engine.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::v1::path_id;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use courierx_domain::{ProviderId, now_ms};
use courierx_providers::webhooks::{InboundWebhook, WebhookError, WebhookOutcome};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(provider_webhook))
}

#[derive(Serialize, ToSchema)]
pub struct WebhookReceipt {
    /// Events in the request.
    pub received: usize,
    /// Applied to their message.
    pub matched: usize,
    /// Kept (7 days) for a message not known yet.
    pub pending: usize,
    /// Already received before (a provider retry): ignored.
    pub duplicates: usize,
    /// Set when this was an SNS subscription confirmation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subscription_confirmed: Option<String>,
}

/// Receives a provider's delivery events in the provider's own format (SES via SNS, SendGrid,
/// Mailgun, Postmark, Resend). Unsigned, badly signed or replayed requests get 401 and change
/// nothing.
#[utoipa::path(post, path = "/webhooks/providers/{provider_id}", tag = "webhooks",
    params(("provider_id" = String, Path, description = "The CourierX provider the events belong to")),
    request_body(content = String, description = "The provider's event payload, unchanged", content_type = "application/json"),
    responses((status = 200, body = WebhookReceipt), (status = 400, body = crate::error::ErrorBody),
        (status = 401, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 502, body = crate::error::ErrorBody)))]
async fn provider_webhook(
    State(state): State<AppState>,
    Path(provider_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<axum::Json<WebhookReceipt>> {
    let id: ProviderId = path_id(&provider_id, "provider")?;
    let row = state
        .engine
        .db
        .provider_by_id(id)
        .await?
        .ok_or_else(|| ApiError::not_found("provider"))?;
    let parse = courierx_providers::kind(&row.kind)
        .and_then(|k| k.webhook)
        .ok_or_else(|| ApiError::not_found("provider webhook"))?;
    let config = courierx_engine::providers::full_config(&row, &state.engine.secrets)
        .map_err(ApiError::internal)?;
    let req = InboundWebhook {
        headers: &headers,
        body: &body,
        now: now_ms(),
    };
    let outcome = parse(&config, &req, &state.webhooks).await.map_err(|e| {
        metrics::counter!("courierx_webhook_rejected_total", "provider" => row.kind.clone())
            .increment(1);
        match e {
            WebhookError::Unauthorized(m) | WebhookError::NotConfigured(m) => {
                ApiError::unauthorized(m)
            }
            WebhookError::Malformed(m) => ApiError::bad_request(m),
            WebhookError::Upstream(m) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "upstream_error", m)
            }
        }
    })?;
    let (events, nonce) = match outcome {
        WebhookOutcome::SubscriptionConfirmed { topic_arn } => {
            return Ok(axum::Json(WebhookReceipt {
                received: 0,
                matched: 0,
                pending: 0,
                duplicates: 0,
                subscription_confirmed: Some(topic_arn),
            }));
        }
        WebhookOutcome::Events(events) => (events, None),
        WebhookOutcome::SingleUse { nonce, events } => (events, Some(nonce)),
    };
    let sum = state
        .engine
        .apply_provider_events(
            &row.tenant_id,
            &row.id,
            &row.kind,
            &events,
            nonce.as_deref(),
        )
        .await?
        .ok_or_else(|| {
            metrics::counter!("courierx_webhook_rejected_total", "provider" => row.kind.clone())
                .increment(1);
            ApiError::unauthorized("this signed request was already used (replay)")
        })?;
    Ok(axum::Json(WebhookReceipt {
        received: sum.received,
        matched: sum.matched,
        pending: sum.pending,
        duplicates: sum.duplicates,
        subscription_confirmed: None,
    }))
}
