//! Reading messages: the filtered listing and one message's detail with its timeline.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Principal;
use crate::v1::{opt_rfc3339, path_id, rfc3339};
use axum::extract::{Path, Query, State};
use courierx_domain::{Mailbox, MessageId, MessageStatus, ProjectId, ValidationErrors};
use courierx_store::messages::{MessageFilter, MessageRow};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, ToSchema};

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
pub(super) async fn list_messages(
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
pub(super) async fn get_message(
    State(state): State<AppState>,
    who: Principal,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<MessageDetail>> {
    let id: MessageId = path_id(&id, "message")?;
    load_detail(&state, who, id).await.map(axum::Json)
}

pub(super) async fn load_detail(
    state: &AppState,
    who: Principal,
    id: MessageId,
) -> ApiResult<MessageDetail> {
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
