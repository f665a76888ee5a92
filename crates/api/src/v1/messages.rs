//! Sending and reading messages. Sending takes a project API key; reading takes a key (its
//! project) or a user token (the whole tenant).

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{MessageBody, Principal, ProjectCtx};
use crate::v1::{opt_rfc3339, path_id, rfc3339};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue as HttpHeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use courierx_domain::{
    Attachment, Category, HeaderName, HeaderValue, Mailbox, MessageId, MessageStatus, Priority,
    ProjectId, Sha256Hex, ValidationErrors, now_ms,
};
use courierx_engine::accept::{IdempotencyClaim, ValidMessage};
use courierx_engine::project_cache::ProjectSnapshot;
use courierx_engine::routing::RoutingInput;
use courierx_engine::settings::ParsedSettings;
use courierx_store::messages::{MessageFilter, MessageRow};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send_message, list_messages))
        .routes(routes!(send_batch))
        .routes(routes!(get_message))
        .routes(routes!(cancel_message))
}

pub const MAX_BATCH: usize = 500;
const MAX_ATTACHMENTS: usize = 10;
/// How far ahead `send_at` may be.
const MAX_SCHEDULE_MS: i64 = 30 * 24 * 3_600_000;

pub const MAX_RECIPIENTS: usize = 50;
const MAX_TAGS: usize = 20;
const MAX_METADATA_BYTES: usize = 8 * 1024;

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

pub fn parse_list(field: &str, v: Option<&OneOrMany>, errs: &mut ValidationErrors) -> Vec<Mailbox> {
    let Some(v) = v else { return Vec::new() };
    let items = v.items();
    let multi = matches!(v, OneOrMany::Many(_));
    items
        .iter()
        .enumerate()
        .filter_map(|(i, s)| {
            let f = if multi {
                format!("{field}[{i}]")
            } else {
                field.to_string()
            };
            errs.check(&f, Mailbox::parse(s))
        })
        .collect()
}

fn single_line(field: &str, v: &str, errs: &mut ValidationErrors) {
    if v.contains(['\r', '\n']) {
        errs.add(field, "must not contain CR or LF");
    }
}

/// Turns the request into a message that the core can trust, collecting every problem at once.
/// The project's settings fill in `from` and `reply_to` when absent and add their headers and tags.
pub fn validate(
    req: SendMessageRequest,
    settings: &ParsedSettings,
    limits: MessageLimits,
) -> Result<ValidMessage, ValidationErrors> {
    let mut errs = ValidationErrors::new();
    let from = match req.from.as_deref() {
        None if settings.default_from.is_some() => settings.default_from.clone(),
        None => {
            errs.add("from", "is required");
            None
        }
        Some(f) => errs.check("from", Mailbox::parse(f)),
    };
    if req.to.is_none() {
        errs.add("to", "is required");
    }
    let to = parse_list("to", req.to.as_ref(), &mut errs);
    let cc = parse_list("cc", req.cc.as_ref(), &mut errs);
    let bcc = parse_list("bcc", req.bcc.as_ref(), &mut errs);
    let recipient_count = [&req.to, &req.cc, &req.bcc]
        .iter()
        .map(|l| l.as_ref().map_or(0, |l| l.items().len()))
        .sum::<usize>();
    if req.to.is_some() && (recipient_count == 0 || recipient_count > MAX_RECIPIENTS) {
        errs.add(
            "to",
            format!("1 to {MAX_RECIPIENTS} recipients in total over to, cc and bcc"),
        );
    }
    let reply_to = match req.reply_to.as_deref() {
        Some(r) => errs.check("reply_to", Mailbox::parse(r)),
        None => settings.reply_to.clone(),
    };
    match req.subject.as_deref() {
        None | Some("") => errs.add("subject", "is required"),
        Some(s) => {
            single_line("subject", s, &mut errs);
            if s.chars().count() > 998 {
                errs.add("subject", "must be at most 998 characters");
            }
        }
    }
    if req.html.is_none() && req.text.is_none() {
        errs.add("html", "one of html or text is required");
    }
    let mut headers = Vec::new();
    for (name, value) in req.headers.iter().flatten() {
        let field = format!("headers.{name}");
        let n = errs.check(&field, HeaderName::parse(name));
        let v = match value {
            Value::String(s) => errs.check(&field, HeaderValue::parse(s)),
            _ => {
                errs.add(&field, "must be a string");
                None
            }
        };
        if let (Some(n), Some(v)) = (n, v) {
            headers.push((n, v));
        }
    }
    for (n, v) in &settings.custom_headers {
        if !headers
            .iter()
            .any(|(h, _): &(HeaderName, HeaderValue)| h.as_str().eq_ignore_ascii_case(n.as_str()))
        {
            headers.push((n.clone(), v.clone()));
        }
    }
    let mut tags = req.tags.unwrap_or_default();
    for t in &settings.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    if tags.len() > MAX_TAGS {
        errs.add("tags", format!("at most {MAX_TAGS} tags"));
    }
    for (i, t) in tags.iter().enumerate() {
        if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
            errs.add(
                format!("tags[{i}]"),
                "must be 1 to 64 characters without control characters",
            );
        }
    }
    let metadata = req.metadata.unwrap_or_default();
    if Value::Object(metadata.clone()).to_string().len() > MAX_METADATA_BYTES {
        errs.add(
            "metadata",
            format!("must be at most {MAX_METADATA_BYTES} bytes as JSON"),
        );
    }
    let mut attachments = Vec::new();
    let list = req.attachments.unwrap_or_default();
    if list.len() > MAX_ATTACHMENTS {
        errs.add(
            "attachments",
            format!("at most {MAX_ATTACHMENTS} attachments"),
        );
    }
    for (i, a) in list.iter().enumerate() {
        if let Some(a) = errs.check(
            &format!("attachments[{i}]"),
            Attachment::parse(
                &a.filename,
                &a.content,
                a.content_type.as_deref(),
                a.content_id.as_deref(),
            ),
        ) {
            attachments.push(a);
        }
    }
    let total: usize = attachments.iter().map(|a| a.data.len()).sum();
    if total > limits.max_attachment_bytes {
        errs.add(
            "attachments",
            format!(
                "at most {} bytes in total once decoded (these are {total})",
                limits.max_attachment_bytes
            ),
        );
    }
    let now = now_ms();
    let send_at = match req.send_at.as_deref() {
        None => None,
        Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
            Err(_) => {
                errs.add(
                    "send_at",
                    "must be an RFC 3339 time such as 2026-01-31T09:00:00Z",
                );
                None
            }
            Ok(at) if at.timestamp_millis() > now + MAX_SCHEDULE_MS => {
                errs.add("send_at", "must be at most 30 days ahead");
                None
            }
            Ok(at) => Some(at.timestamp_millis()),
        },
    };
    let priority = match req.priority.as_deref() {
        None => Priority::Normal,
        Some(p) => errs
            .check("priority", Priority::parse(p))
            .unwrap_or_default(),
    };
    let expires_at = match (req.expires_at.as_deref(), req.ttl_seconds) {
        (None, None) => None,
        (Some(_), Some(_)) => {
            errs.add("ttl_seconds", "give expires_at or ttl_seconds, not both");
            None
        }
        (None, Some(ttl)) if !(1..=MAX_SCHEDULE_MS / 1000).contains(&ttl) => {
            errs.add("ttl_seconds", "must be 1 to 2592000 (30 days)");
            None
        }
        (None, Some(ttl)) => Some(now + ttl * 1000),
        (Some(t), None) => match chrono::DateTime::parse_from_rfc3339(t) {
            Err(_) => {
                errs.add(
                    "expires_at",
                    "must be an RFC 3339 time such as 2026-01-31T09:00:00Z",
                );
                None
            }
            Ok(at) if at.timestamp_millis() <= now => {
                errs.add("expires_at", "must be in the future");
                None
            }
            Ok(at) if at.timestamp_millis() > now + 2 * MAX_SCHEDULE_MS => {
                errs.add("expires_at", "must be at most 60 days ahead");
                None
            }
            Ok(at) => Some(at.timestamp_millis()),
        },
    };
    if let (Some(exp), Some(at)) = (expires_at, send_at)
        && exp <= at
    {
        errs.add("expires_at", "must be after send_at");
    }
    let category = req.category.as_deref().and_then(|c| {
        let cat = errs.check("category", Category::parse(c))?;
        match settings.categories.get(&cat) {
            None => {
                errs.add(
                    "category",
                    "is not declared in the project's email_settings.categories",
                );
                None
            }
            Some(false) if recipient_count != 1 => {
                errs.add(
                    "category",
                    "a non-transactional category takes exactly one recipient (each gets its own unsubscribe link); send one message per recipient or use the batch endpoint",
                );
                None
            }
            Some(_) => Some(cat),
        }
    });
    errs.into_result()?;
    let from = from.ok_or_else(|| ValidationErrors::single("from", "is required"))?;
    Ok(ValidMessage {
        priority,
        expires_at,
        category,
        attachments,
        send_at,
        template: None,
        from,
        to,
        cc,
        bcc,
        reply_to,
        subject: req.subject.unwrap_or_default(),
        html: req.html,
        text: req.text,
        headers,
        tags,
        metadata,
    })
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

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only messages in this status.
    pub status: Option<String>,
    /// Only messages carrying this tag.
    pub tag: Option<String>,
    /// 1 to 100 (default 20).
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// With a user token: only this project.
    pub project_id: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageSummary {
    pub id: String,
    pub project_id: String,
    pub status: String,
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub tags: Vec<String>,
    pub provider_id: Option<String>,
    pub attempts: i64,
    pub created_at: String,
    pub sent_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct MessageList {
    pub data: Vec<MessageSummary>,
    /// Pass as `cursor` for the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

fn json_list(s: &str) -> Vec<String> {
    serde_json::from_str(s).unwrap_or_default()
}

/// List messages, newest first.
#[utoipa::path(get, path = "/api/v1/messages", tag = "messages", security(("api_key" = []), ("user_token" = [])), params(ListQuery),
    responses((status = 200, body = MessageList), (status = 401, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn list_messages(
    State(state): State<AppState>,
    who: Principal,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<MessageList>> {
    let mut errs = ValidationErrors::new();
    let status = q
        .status
        .as_deref()
        .and_then(|s| errs.check("status", s.parse::<MessageStatus>()));
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => match l.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                errs.add("limit", "must be a number from 1 to 100");
                20
            }
        },
    };
    let before = q.cursor.as_deref().and_then(|c| {
        errs.check(
            "cursor",
            c.parse::<MessageId>().map_err(|_| "is not a valid cursor"),
        )
    });
    let project = match (who.project(), q.project_id.as_deref()) {
        (Some(p), _) => Some(p),
        (None, Some(p)) => errs.check(
            "project_id",
            p.parse::<ProjectId>()
                .map_err(|_| "is not a valid project id"),
        ),
        (None, None) => None,
    };
    errs.into_result()?;
    let filter = MessageFilter {
        project,
        status: status.map(|s| s.as_str()),
        tag: q.tag.as_deref(),
        before,
        limit: limit + 1,
    };
    let mut rows = state.engine.db.list_messages(who.tenant(), &filter).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|r| r.id.clone())
    } else {
        None
    };
    let data = rows
        .into_iter()
        .map(|r| MessageSummary {
            id: r.id,
            project_id: r.project_id,
            status: r.status,
            from: r.from_addr,
            to: json_list(&r.to_addrs),
            subject: r.subject,
            tags: json_list(&r.tags),
            provider_id: r.provider_id,
            attempts: r.attempts,
            created_at: rfc3339(r.created_at),
            sent_at: opt_rfc3339(r.sent_at),
        })
        .collect();
    Ok(axum::Json(MessageList { data, next_cursor }))
}

#[derive(Serialize, ToSchema)]
pub struct EventView {
    #[serde(rename = "type")]
    pub kind: String,
    pub at: String,
    pub provider_id: Option<String>,
    /// The recipient the event is about, for per-recipient events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipient: Option<String>,
    #[schema(value_type = Object)]
    pub detail: Value,
}

#[derive(Serialize, ToSchema)]
pub struct MessageDetail {
    pub id: String,
    pub project_id: String,
    pub status: String,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub reply_to: Option<String>,
    pub subject: String,
    pub tags: Vec<String>,
    #[schema(value_type = Object)]
    pub metadata: Value,
    pub provider_id: Option<String>,
    pub provider_message_id: Option<String>,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub created_at: String,
    pub sent_at: Option<String>,
    /// When a scheduled message is due.
    pub send_at: Option<String>,
    /// `high`, `normal` or `low`.
    pub priority: String,
    /// When the message expires unsent (status `expired`).
    pub expires_at: Option<String>,
    /// The template the content came from: `{"slug","version","locale"}`.
    #[schema(value_type = Option<Object>)]
    pub template: Option<Value>,
    pub attachments: Vec<AttachmentView>,
    /// The sending category, if any.
    pub category: Option<String>,
    /// Each recipient's own state: `queued`…`sent` like the message until the provider reports
    /// on it, then `deferred`, `delivered`, `bounced` or `complained`; `suppressed` when it was
    /// skipped. The message `status` summarises them (the furthest a recipient got).
    pub recipients: Vec<RecipientView>,
    pub events: Vec<EventView>,
}

#[derive(Serialize, ToSchema)]
pub struct RecipientView {
    pub email: String,
    pub status: String,
    /// The event that set the status (bounce type and diagnostic, suppression reason…).
    #[schema(value_type = Option<Object>)]
    pub detail: Option<Value>,
    pub updated_at: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct AttachmentView {
    pub filename: String,
    pub content_type: String,
    pub content_id: Option<String>,
    pub size: i64,
}

fn detail(
    r: MessageRow,
    attachments: Vec<AttachmentView>,
    states: Vec<courierx_store::provider_events::RecipientRow>,
    events: Vec<EventView>,
) -> MessageDetail {
    let before_reports = match r.status.as_str() {
        "delivered" | "bounced" | "complained" => "sent",
        s => s,
    };
    let recipients = [&r.to_addrs, &r.cc_addrs, &r.bcc_addrs]
        .into_iter()
        .flat_map(|l| json_list(l))
        .map(|m| {
            let email = Mailbox::parse(&m).map_or(m, |mb| mb.address.as_str().to_string());
            let key = email.to_lowercase();
            match states.iter().find(|s| s.email == key) {
                Some(s) => RecipientView {
                    email,
                    status: s.status.clone(),
                    detail: serde_json::from_str(&s.detail).ok(),
                    updated_at: Some(rfc3339(s.updated_at)),
                },
                None => RecipientView {
                    email,
                    status: before_reports.to_string(),
                    detail: None,
                    updated_at: None,
                },
            }
        })
        .collect();
    MessageDetail {
        category: r.category.clone(),
        recipients,
        send_at: opt_rfc3339(r.send_at),
        expires_at: opt_rfc3339(r.expires_at),
        priority: r.priority.clone(),
        template: r
            .template
            .as_deref()
            .and_then(|t| serde_json::from_str(t).ok()),
        attachments,
        to: json_list(&r.to_addrs),
        cc: json_list(&r.cc_addrs),
        bcc: json_list(&r.bcc_addrs),
        tags: json_list(&r.tags),
        metadata: serde_json::from_str(&r.metadata).unwrap_or(Value::Object(Map::new())),
        id: r.id,
        project_id: r.project_id,
        status: r.status,
        from: r.from_addr,
        reply_to: r.reply_to,
        subject: r.subject,
        provider_id: r.provider_id,
        provider_message_id: r.provider_message_id,
        attempts: r.attempts,
        last_error: r.last_error,
        created_at: rfc3339(r.created_at),
        sent_at: opt_rfc3339(r.sent_at),
        events,
    }
}

/// Get one message with its event timeline.
#[utoipa::path(get, path = "/api/v1/messages/{id}", tag = "messages", security(("api_key" = []), ("user_token" = [])),
    params(("id" = String, Path)), responses((status = 200, body = MessageDetail), (status = 404, body = crate::error::ErrorBody)))]
async fn get_message(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<MessageDetail>> {
    let id: MessageId = path_id(&id, "message")?;
    load_detail(&state, who, id).await.map(axum::Json)
}

async fn load_detail(state: &AppState, who: Principal, id: MessageId) -> ApiResult<MessageDetail> {
    let rows = state
        .engine
        .db
        .message_detail(who.tenant(), who.project(), id)
        .await?
        .ok_or_else(|| ApiError::not_found("message"))?;
    let attachments = rows
        .attachments
        .into_iter()
        .map(|a| AttachmentView {
            filename: a.filename,
            content_type: a.content_type,
            content_id: a.content_id,
            size: a.size,
        })
        .collect();
    let events = rows
        .events
        .into_iter()
        .map(|e| EventView {
            recipient: e.recipient,
            kind: e.kind,
            at: rfc3339(e.at),
            provider_id: e.provider_id,
            detail: serde_json::from_str(&e.detail).unwrap_or(Value::Object(Map::new())),
        })
        .collect();
    Ok(detail(rows.message, attachments, rows.recipients, events))
}
