//! The API key's project's suppression list: list, add (up to 1,000 at once), release (audited),
//! export as CSV and read an address's audit trail.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::ProjectCtx;
use crate::v1::{opt_rfc3339, rfc3339};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use courierx_domain::{Category, EmailAddress, ValidationErrors, now_ms};
use courierx_store::suppressions::{
    NewSuppression, Release, SuppressionFilter, SuppressionRow, add_suppression,
    release_suppression,
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

const MAX_BULK: usize = 1000;
/// Reasons an entry can have; `manual` is the default for entries added through the API.
const REASONS: [&str; 5] = [
    "hard_bounce",
    "soft_bounce",
    "complaint",
    "unsubscribed",
    "manual",
];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_suppressions, add_suppressions))
        .routes(routes!(export_suppressions))
        .routes(routes!(release))
        .routes(routes!(audit))
}

#[derive(Serialize, ToSchema)]
pub struct SuppressionView {
    pub email: String,
    /// The category an unsubscribe applies to; null for all mail.
    pub category: Option<String>,
    /// `hard_bounce`, `soft_bounce`, `complaint`, `unsubscribed` or `manual`.
    pub reason: String,
    /// The message whose event caused it.
    pub source_message_id: Option<String>,
    #[schema(value_type = Object)]
    pub detail: serde_json::Value,
    pub created_at: String,
    /// After this the address is deliverable again; null: never expires.
    pub expires_at: Option<String>,
}

fn view(r: SuppressionRow) -> SuppressionView {
    SuppressionView {
        email: r.email,
        category: (!r.scope.is_empty()).then_some(r.scope),
        reason: r.reason,
        source_message_id: r.source_message_id,
        detail: serde_json::from_str(&r.detail).unwrap_or_default(),
        created_at: rfc3339(r.created_at),
        expires_at: opt_rfc3339(r.expires_at),
    }
}

#[derive(Deserialize, IntoParams)]
pub struct ListQuery {
    /// Only entries with this reason.
    pub reason: Option<String>,
    /// Only this address.
    pub email: Option<String>,
    /// 1 to 1000 (default 100).
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct SuppressionList {
    pub data: Vec<SuppressionView>,
    pub next_cursor: Option<String>,
}

fn cursor_of(r: &SuppressionRow) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}\n{}", r.email, r.scope))
}

fn parse_cursor(c: &str) -> Option<(String, String)> {
    use base64::Engine;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(c)
        .ok()?;
    let s = String::from_utf8(raw).ok()?;
    let (e, scope) = s.split_once('\n')?;
    Some((e.to_string(), scope.to_string()))
}

/// Active suppressions of the project, by address.
#[utoipa::path(get, path = "/api/v1/suppressions", tag = "suppressions", security(("api_key" = [])), params(ListQuery),
    responses((status = 200, body = SuppressionList), (status = 401, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn list_suppressions(
    State(state): State<AppState>,
    ctx: ProjectCtx,
    Query(q): Query<ListQuery>,
) -> ApiResult<axum::Json<SuppressionList>> {
    let mut errs = ValidationErrors::new();
    if let Some(r) = q.reason.as_deref()
        && !REASONS.contains(&r)
    {
        errs.add("reason", format!("must be one of {}", REASONS.join(", ")));
    }
    let email = q
        .email
        .as_deref()
        .and_then(|e| errs.check("email", EmailAddress::parse(e)));
    let limit = match q.limit.as_deref().map(str::parse::<i64>) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => {
            errs.add("limit", "must be a number from 1 to 1000");
            100
        }
    };
    let after = q.cursor.as_deref().and_then(|c| {
        let parsed = parse_cursor(c);
        if parsed.is_none() {
            errs.add("cursor", "is not a valid cursor");
        }
        parsed
    });
    errs.into_result()?;
    let mut rows = state
        .engine
        .db
        .list_suppressions(
            ctx.tenant,
            ctx.project,
            &SuppressionFilter {
                reason: q.reason.as_deref(),
                email: email.as_ref().map(|e| e.as_str()),
                after,
                limit: limit + 1,
                now: now_ms(),
            },
        )
        .await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(cursor_of)
    } else {
        None
    };
    Ok(axum::Json(SuppressionList {
        data: rows.into_iter().map(view).collect(),
        next_cursor,
    }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSuppressionInput {
    pub email: String,
    /// Default `manual`.
    pub reason: Option<String>,
    /// Suppress only this category (an unsubscribe); absent: all mail.
    pub category: Option<String>,
    /// RFC 3339; absent: never expires.
    pub expires_at: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddSuppressions {
    /// 1 to 1,000 entries. An existing entry for the same address and category is replaced.
    pub suppressions: Vec<NewSuppressionInput>,
}

#[derive(Serialize, ToSchema)]
pub struct AddedSuppressions {
    pub added: usize,
}

/// Add addresses to the suppression list (all valid or nothing is written).
#[utoipa::path(post, path = "/api/v1/suppressions", tag = "suppressions", security(("api_key" = [])),
    request_body = AddSuppressions,
    responses((status = 201, body = AddedSuppressions), (status = 401, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn add_suppressions(
    State(state): State<AppState>,
    ctx: ProjectCtx,
    crate::extract::Json(req): crate::extract::Json<AddSuppressions>,
) -> ApiResult<(StatusCode, axum::Json<AddedSuppressions>)> {
    let mut errs = ValidationErrors::new();
    if req.suppressions.is_empty() || req.suppressions.len() > MAX_BULK {
        errs.add("suppressions", format!("1 to {MAX_BULK} entries"));
    }
    let now = now_ms();
    let mut rows = Vec::with_capacity(req.suppressions.len());
    for (i, s) in req.suppressions.iter().enumerate() {
        let f = |name: &str| format!("suppressions[{i}].{name}");
        let email = errs.check(&f("email"), EmailAddress::parse(&s.email));
        let reason = s.reason.clone().unwrap_or_else(|| "manual".into());
        if !REASONS.contains(&reason.as_str()) {
            errs.add(
                f("reason"),
                format!("must be one of {}", REASONS.join(", ")),
            );
        }
        let scope = match s.category.as_deref() {
            None => Some(String::new()),
            Some(c) => errs
                .check(&f("category"), Category::parse(c))
                .map(|c| c.to_string()),
        };
        let expires_at = match s.expires_at.as_deref() {
            None => Some(None),
            Some(t) => match chrono::DateTime::parse_from_rfc3339(t) {
                Ok(at) if at.timestamp_millis() > now => Some(Some(at.timestamp_millis())),
                Ok(_) => {
                    errs.add(f("expires_at"), "must be in the future");
                    None
                }
                Err(_) => {
                    errs.add(f("expires_at"), "must be an RFC 3339 time");
                    None
                }
            },
        };
        if let (Some(email), Some(scope), Some(expires_at)) = (email, scope, expires_at) {
            rows.push(NewSuppression {
                tenant_id: ctx.tenant.to_string(),
                project_id: ctx.project.to_string(),
                email: email.as_str().to_string(),
                scope,
                reason,
                source_message_id: None,
                detail: serde_json::json!({}),
                created_at: now,
                expires_at,
                actor: format!("api_key:{}", ctx.key),
            });
        }
    }
    errs.into_result()?;
    let added = state
        .engine
        .write(rows, |rows, tx| {
            Box::pin(async move {
                let mut added = 0;
                for r in rows {
                    if add_suppression(tx, r, true).await? {
                        added += 1;
                    }
                }
                Ok(added)
            })
        })
        .await?;
    Ok((StatusCode::CREATED, axum::Json(AddedSuppressions { added })))
}

#[derive(Deserialize, IntoParams)]
pub struct ReleaseQuery {
    /// Release only this category's unsubscribe; absent: every entry of the address.
    pub category: Option<String>,
}

/// Release an address (it may receive mail again). Recorded in its audit trail.
#[utoipa::path(delete, path = "/api/v1/suppressions/{email}", tag = "suppressions", security(("api_key" = [])),
    params(("email" = String, Path), ReleaseQuery),
    responses((status = 204), (status = 401, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody)))]
async fn release(
    State(state): State<AppState>,
    ctx: ProjectCtx,
    Path(email): Path<String>,
    Query(q): Query<ReleaseQuery>,
) -> ApiResult<StatusCode> {
    let email = EmailAddress::parse(&email).map_err(|_| ApiError::not_found("suppression"))?;
    let category = match q.category.as_deref() {
        None => None,
        Some(c) => Some(Category::parse(c).map_err(|m| ApiError::field("category", m))?),
    };
    let input = (
        ctx.tenant.to_string(),
        ctx.project.to_string(),
        email.as_str().to_string(),
        category.map(|c| c.as_str().to_string()),
        format!("api_key:{}", ctx.key),
        now_ms(),
    );
    let n = state
        .engine
        .write(input, |(tenant, project, email, scope, actor, at), tx| {
            Box::pin(async move {
                let r = Release {
                    tenant_id: tenant,
                    project_id: project,
                    email,
                    scope: scope.as_deref(),
                    reason: "released",
                    actor,
                    at: *at,
                };
                release_suppression(tx, &r).await
            })
        })
        .await?;
    if n == 0 {
        return Err(ApiError::not_found("suppression"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Every active suppression of the project as CSV
/// (`email,category,reason,source_message_id,created_at,expires_at`).
#[utoipa::path(get, path = "/api/v1/suppressions/export", tag = "suppressions", security(("api_key" = [])),
    responses((status = 200, content_type = "text/csv", body = String), (status = 401, body = crate::error::ErrorBody)))]
async fn export_suppressions(
    State(state): State<AppState>,
    ctx: ProjectCtx,
) -> ApiResult<impl IntoResponse> {
    let mut out = String::from("email,category,reason,source_message_id,created_at,expires_at\r\n");
    let mut after = None;
    loop {
        let rows = state
            .engine
            .db
            .list_suppressions(
                ctx.tenant,
                ctx.project,
                &SuppressionFilter {
                    reason: None,
                    email: None,
                    after: after.clone(),
                    limit: 1000,
                    now: now_ms(),
                },
            )
            .await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some((last.email.clone(), last.scope.clone()));
        let full = rows.len() == 1000;
        for r in rows {
            // Addresses and categories are validated (no commas, quotes or line breaks), so
            // every field is safe unquoted.
            out.push_str(&format!(
                "{},{},{},{},{},{}\r\n",
                r.email,
                r.scope,
                r.reason,
                r.source_message_id.unwrap_or_default(),
                rfc3339(r.created_at),
                opt_rfc3339(r.expires_at).unwrap_or_default()
            ));
        }
        if !full {
            break;
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"suppressions.csv\"",
            ),
        ],
        out,
    ))
}

#[derive(Serialize, ToSchema)]
pub struct AuditView {
    pub email: String,
    pub category: Option<String>,
    /// `added` or `released`.
    pub action: String,
    pub reason: String,
    /// `system`, `recipient` (an unsubscribe link) or `api_key:<id>`.
    pub actor: String,
    pub at: String,
}

#[derive(Serialize, ToSchema)]
pub struct AuditList {
    pub data: Vec<AuditView>,
}

/// Who added and released an address, and when.
#[utoipa::path(get, path = "/api/v1/suppressions/{email}/audit", tag = "suppressions", security(("api_key" = [])),
    params(("email" = String, Path)),
    responses((status = 200, body = AuditList), (status = 401, body = crate::error::ErrorBody)))]
async fn audit(
    State(state): State<AppState>,
    ctx: ProjectCtx,
    Path(email): Path<String>,
) -> ApiResult<axum::Json<AuditList>> {
    let email = EmailAddress::parse(&email).map_err(|_| ApiError::not_found("suppression"))?;
    let rows = state
        .engine
        .db
        .audit_for(ctx.tenant, ctx.project, email.as_str())
        .await?;
    Ok(axum::Json(AuditList {
        data: rows
            .into_iter()
            .map(|a| AuditView {
                email: a.email,
                category: (!a.scope.is_empty()).then_some(a.scope),
                action: a.action,
                reason: a.reason,
                actor: a.actor,
                at: rfc3339(a.at),
            })
            .collect(),
    }))
}
