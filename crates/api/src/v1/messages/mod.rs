//! Sending and reading messages. Sending takes a project API key; reading takes a key (its
//! project) or a user token (the whole tenant).

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{MessageBody, Principal, ProjectCtx};
use crate::v1::path_id;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue as HttpHeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use courierx_domain::{MessageId, Sha256Hex, ValidationErrors, now_ms};
use courierx_engine::accept::{IdempotencyClaim, ValidMessage};
use courierx_engine::project_cache::ProjectSnapshot;
use courierx_engine::routing::RoutingInput;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

mod validate;
mod view;

pub use validate::{MAX_RECIPIENTS, parse_list, validate};
use view::*;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_message, list_messages))
        .routes(routes!(send_batch))
        .routes(routes!(get_message))
        .routes(routes!(cancel_message))
}

pub const MAX_BATCH: usize = 500;

/// One address or a list of addresses.
#[derive(Deserialize, ToSchema, Clone)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// Sender, e.g. `Acme <noreply@acme.com>`.
    pub from: Option<String>,
    pub to: Option<OneOrMany>,
    pub cc: Option<OneOrMany>,
    pub bcc: Option<OneOrMany>,
    pub reply_to: Option<String>,
    pub subject: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
    /// Extra headers; CourierX-owned ones (From, To, Subject, Message-ID, Date, Content-*, …) are refused.
    pub headers: Option<Map<String, Value>>,
    pub tags: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
    /// Up to 10 files, 10 MiB decoded in total (`COURIERX_MAX_ATTACHMENT_BYTES`).
    pub attachments: Option<Vec<AttachmentInput>>,
    /// RFC 3339 time, at most 30 days ahead: the message stays `scheduled` until then.
    pub send_at: Option<String>,
    /// Render subject, html and text from the project's template (its published version)
    /// instead of giving them.
    pub template: Option<TemplateInput>,
    /// A category declared in the project's `email_settings.categories` (e.g. `marketing`).
    /// Non-transactional categories get one-click `List-Unsubscribe` headers and take one
    /// recipient per message; recipients unsubscribed from the category are skipped.
    pub category: Option<String>,
    /// `high`, `normal` (default) or `low`: the order in which this project's messages are
    /// claimed. Tenants and projects still take turns, whatever their messages' priorities.
    pub priority: Option<String>,
    /// RFC 3339 time: a message not sent by then ends `expired` without calling a provider.
    pub expires_at: Option<String>,
    /// Seconds from acceptance (1 to 30 days), instead of `expires_at`.
    pub ttl_seconds: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateInput {
    pub slug: String,
    /// The variables; every one the template uses must be present.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
    /// e.g. `fr-CA`; falls back to `fr`, then the template's default locale.
    pub locale: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AttachmentInput {
    pub filename: String,
    /// The file, base64-encoded.
    pub content: String,
    /// Sniffed from the content (then the file name) when absent.
    pub content_type: Option<String>,
    /// Makes the file an inline part the HTML can show with `cid:<content_id>`.
    pub content_id: Option<String>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct SendMessageResponse {
    pub id: String,
    /// `queued`, or `scheduled` with a future `send_at`.
    pub status: String,
    pub created_at: String,
    pub send_at: Option<String>,
    pub expires_at: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to 500 messages, each as for `POST /api/v1/messages`.
    #[schema(value_type = Vec<SendMessageRequest>)]
    pub messages: Vec<Box<serde_json::value::RawValue>>,
}

/// One item of a batch answer: the accepted message, or the item's own error.
#[derive(Serialize, Deserialize, ToSchema)]
pub struct BatchItem {
    pub index: usize,
    pub id: Option<String>,
    pub status: Option<String>,
    pub created_at: Option<String>,
    pub send_at: Option<String>,
    pub expires_at: Option<String>,
    /// `{"code","message","details"}` for an item that was not accepted.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct BatchResponse {
    pub data: Vec<BatchItem>,
}

/// Limits the API applies to message content.
#[derive(Debug, Clone, Copy)]
pub struct MessageLimits {
    pub max_attachment_bytes: usize,
}

/// The request's `Idempotency-Key`, with the hash of the exact body it came with.
fn idempotency_claim(
    headers: &HeaderMap,
    raw: &[u8],
) -> Result<Option<IdempotencyClaim>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let s = v
        .to_str()
        .map_err(|_| ApiError::field("Idempotency-Key", "must be printable ASCII"))?;
    if s.is_empty() || s.len() > 255 {
        return Err(ApiError::field(
            "Idempotency-Key",
            "must be 1 to 255 characters",
        ));
    }
    Ok(Some(IdempotencyClaim {
        key: s.to_string(),
        request_hash: Sha256Hex::of(&String::from_utf8_lossy(raw))
            .as_str()
            .to_string(),
    }))
}

/// Send an email. Answers 202 once the message and its delivery job are committed.
#[utoipa::path(post, path = "/api/v1/messages", tag = "messages", security(("api_key" = [])), request_body = SendMessageRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Up to 255 characters. Same key and body within 24 h replays the first response; a different body answers 409.")),
    responses((status = 202, body = SendMessageResponse), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody),
              (status = 413, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn send_message(
    State(state): State<AppState>,
    ctx: ProjectCtx,
    headers: HeaderMap,
    MessageBody(req, raw): MessageBody<SendMessageRequest>,
) -> ApiResult<Response> {
    let claim = idempotency_claim(&headers, &raw)?;
    let snap = snapshot(&state, &ctx).await?;
    let msg = prepare(&state, &ctx, &snap, req).await?;
    let accepted = state
        .engine
        .accept_message(ctx.tenant, ctx.project, msg, claim)
        .await?;
    Ok(accepted_response(accepted))
}

/// Renders the template (when the request names one), validates the request against the
/// project's settings and checks the sender policy.
async fn prepare(
    state: &AppState,
    ctx: &ProjectCtx,
    snap: &ProjectSnapshot,
    mut req: SendMessageRequest,
) -> ApiResult<ValidMessage> {
    let mut used = None;
    if let Some(t) = req.template.take() {
        if req.subject.is_some() || req.html.is_some() || req.text.is_some() {
            return Err(ApiError::field(
                "template",
                "give either a template or subject/html/text, not both",
            ));
        }
        let data = t.data.unwrap_or_else(|| Value::Object(Map::new()));
        match state
            .engine
            .render_template(ctx.tenant, ctx.project, &t.slug, &data, t.locale.as_deref())
            .await
        {
            Ok(r) => {
                used = Some(
                    serde_json::json!({"id": r.template_id, "slug": r.slug, "version": r.version, "locale": r.locale}),
                );
                req.subject = Some(r.subject);
                req.html = r.html;
                req.text = Some(r.text);
            }
            Err(e) => return Err(ApiError::validation(e.into_validation("template")?)),
        }
    }
    let mut msg = validate(req, &snap.settings, state.cfg.message_limits)?;
    check_sender(snap, &msg)?;
    msg.template = used;
    Ok(msg)
}

async fn snapshot(state: &AppState, ctx: &ProjectCtx) -> ApiResult<Arc<ProjectSnapshot>> {
    state
        .engine
        .project_snapshot(ctx.tenant, ctx.project)
        .await?
        .ok_or_else(|| ApiError::unauthorized("this API key's project no longer exists"))
}

/// The project's sender policy: a `from` outside `allowed_from_domains` is refused unless the
/// message would only reach the sandbox.
fn check_sender(snap: &ProjectSnapshot, msg: &ValidMessage) -> Result<(), ValidationErrors> {
    if snap.settings.from_allowed(&msg.from) {
        return Ok(());
    }
    let plan = snap.plan(&RoutingInput {
        from_domain: msg.from.address.domain(),
        recipient_domains: msg
            .to
            .iter()
            .chain(&msg.cc)
            .chain(&msg.bcc)
            .map(|m| m.address.domain())
            .collect(),
        tags: &msg.tags,
        metadata: &msg.metadata,
    });
    if snap.sandbox_only(&plan) {
        return Ok(());
    }
    Err(ValidationErrors::single(
        "from",
        format!(
            "the domain {} is not one of this project's allowed_from_domains",
            msg.from.address.domain()
        ),
    ))
}

/// Send up to 500 emails in one request. Valid items are accepted in one transaction; each
/// invalid item reports its own error. With an `Idempotency-Key` the whole batch is idempotent.
#[utoipa::path(post, path = "/api/v1/messages/batch", tag = "messages", security(("api_key" = [])), request_body = BatchRequest,
    params(("Idempotency-Key" = Option<String>, Header, description = "Same key and body within 24 h replays the first answer; a different body answers 409.")),
    responses((status = 202, body = BatchResponse), (status = 400, body = crate::error::ErrorBody),
              (status = 401, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody),
              (status = 413, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn send_batch(
    State(state): State<AppState>,
    ctx: ProjectCtx,
    headers: HeaderMap,
    MessageBody(req, raw): MessageBody<BatchRequest>,
) -> ApiResult<Response> {
    let claim = idempotency_claim(&headers, &raw)?;
    if req.messages.is_empty() || req.messages.len() > MAX_BATCH {
        return Err(ApiError::field(
            "messages",
            format!("1 to {MAX_BATCH} messages"),
        ));
    }
    let snap = snapshot(&state, &ctx).await?;
    let mut items = Vec::with_capacity(req.messages.len());
    for item in req.messages {
        // Each item is parsed from its own text once, so its errors carry its own paths.
        let mut de = serde_json::Deserializer::from_str(item.get());
        let parsed =
            serde_path_to_error::deserialize::<_, SendMessageRequest>(&mut de).map_err(|e| {
                let path = e.path().to_string();
                ApiError::field(
                    if path == "." { "body" } else { &path },
                    e.inner().to_string(),
                )
            });
        let msg = match parsed {
            Ok(req) => prepare(&state, &ctx, &snap, req).await,
            Err(e) => Err(e),
        };
        items.push(msg.map_err(|e| e.item_json()));
    }
    let accepted = state
        .engine
        .accept_batch(ctx.tenant, ctx.project, items, claim)
        .await?;
    Ok(accepted_response(accepted))
}

fn accepted_response(accepted: courierx_engine::accept::Accepted) -> Response {
    let status = StatusCode::from_u16(accepted.status).unwrap_or(StatusCode::ACCEPTED);
    let mut res = (status, axum::Json(accepted.body)).into_response();
    if accepted.replayed {
        res.headers_mut()
            .insert("idempotent-replayed", HttpHeaderValue::from_static("true"));
    }
    res
}

/// Cancel a message that is not being sent yet (`scheduled` or `queued`): it ends `cancelled`.
/// A message already sending or finished answers 409.
#[utoipa::path(post, path = "/api/v1/messages/{id}/cancel", tag = "messages", security(("api_key" = [])),
    params(("id" = String, Path)),
    responses((status = 200, body = MessageDetail), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn cancel_message(
    State(state): State<AppState>,
    ctx: ProjectCtx,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<MessageDetail>> {
    let id: MessageId = path_id(&id, "message")?;
    let db = &state.engine.db;
    let row = db
        .get_message(ctx.tenant, Some(ctx.project), id)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    let tenant = ctx.tenant;
    let cancelled = state
        .engine
        .write(now_ms(), move |now, tx| {
            Box::pin(courierx_store::messages::cancel_message(
                tx, tenant, id, *now,
            ))
        })
        .await?;
    if !cancelled {
        return Err(ApiError::conflict(
            "not_cancellable",
            format!(
                "the message is {} and can no longer be cancelled",
                row.status
            ),
        ));
    }
    load_detail(&state, Principal::Key(ctx), id)
        .await
        .map(axum::Json)
}
