//! Public recipient-facing routes: the open pixel, tracked link redirects and the one-click
//! unsubscribe page. Each is authorised only by its signed token; a token that does not verify
//! is 404 and changes nothing. A click redirects only to the link at the token's index in the
//! message's stored HTML, never to a URL taken from the request.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use courierx_domain::{EventType, now_ms};
use courierx_engine::events::Normalised;
use courierx_engine::tracking::{self, ClickSource, OpenSource, Token};
use courierx_store::messages::MessageRow;
use courierx_store::suppressions::{NewSuppression, Release, add_suppression, release_suppression};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(open_pixel))
        .routes(routes!(click))
        .routes(routes!(unsubscribe_page, unsubscribe))
}

fn user_agent(h: &HeaderMap) -> Option<String> {
    h.get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(512).collect())
}

/// The message a token names, with its single recipient when it has exactly one (opens and
/// clicks of a multi-recipient message cannot be told apart).
async fn message(state: &AppState, id: &str) -> ApiResult<(MessageRow, Option<String>)> {
    let row = state
        .engine
        .db
        .load_message_for_delivery(id)
        .await?
        .ok_or_else(|| ApiError::not_found("link"))?;
    let all: Vec<String> = [&row.to_addrs, &row.cc_addrs, &row.bcc_addrs]
        .into_iter()
        .flat_map(|l| serde_json::from_str::<Vec<String>>(l).unwrap_or_default())
        .collect();
    let single = match all.as_slice() {
        [one] => courierx_domain::Mailbox::parse(one)
            .ok()
            .map(|m| m.address.as_str().to_lowercase()),
        _ => None,
    };
    Ok((row, single))
}

/// The 1×1 open-tracking image. Every fetch is recorded as `opened`; fetches by image proxies,
/// privacy prefetchers and scanners are flagged (`detail.machine`), not hidden.
#[utoipa::path(get, path = "/t/o/{token}", tag = "tracking", params(("token" = String, Path, description = "`<token>.gif`")),
    responses((status = 200, content_type = "image/gif", body = Vec<u8>), (status = 404, body = crate::error::ErrorBody)))]
async fn open_pixel(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let raw = token.strip_suffix(".gif").unwrap_or(&token);
    let Some(Token::Open { message_id }) = state.engine.tracking.verify(raw) else {
        return Err(ApiError::not_found("image"));
    };
    let (row, recipient) = message(&state, &message_id.to_string()).await?;
    let ua = user_agent(&headers);
    let since = row.sent_at.map(|s| now_ms() - s);
    let (machine, source) = match tracking::classify_open(ua.as_deref(), since) {
        OpenSource::Human => (false, "human"),
        OpenSource::Proxy(p) => (false, p),
        OpenSource::Prefetch(p) => (true, p),
    };
    let n = Normalised {
        kind: EventType::Opened,
        bounce_type: None,
        recipient,
        occurred_at: now_ms(),
        detail: json!({"user_agent": ua, "machine": machine, "source": source}),
    };
    state.engine.record_tracking_event(&row.id, &n).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "image/gif"),
            (header::CACHE_CONTROL, "no-store, max-age=0"),
        ],
        tracking::OPEN_PIXEL_GIF,
    )
        .into_response())
}

/// A tracked link: records `clicked` and redirects (302) to the original URL.
#[utoipa::path(get, path = "/t/c/{token}", tag = "tracking", params(("token" = String, Path)),
    responses((status = 302, description = "To the link's original URL"), (status = 404, body = crate::error::ErrorBody)))]
async fn click(
    State(state): State<AppState>,
    Path(token): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let Some(Token::Click { message_id, link }) = state.engine.tracking.verify(&token) else {
        return Err(ApiError::not_found("link"));
    };
    let (row, recipient) = message(&state, &message_id.to_string()).await?;
    let target = row
        .html
        .as_deref()
        .and_then(|h| tracking::link_at(h, link))
        .and_then(|u| url::Url::parse(&u).ok())
        .filter(|u| matches!(u.scheme(), "http" | "https"))
        .ok_or_else(|| ApiError::not_found("link"))?;
    let ua = user_agent(&headers);
    let since = row.sent_at.map(|s| now_ms() - s);
    let (machine, source) = match tracking::classify_click(ua.as_deref(), since) {
        ClickSource::Human => (false, "human"),
        ClickSource::Scanner(s) => (true, s),
    };
    let n = Normalised {
        kind: EventType::Clicked,
        bounce_type: None,
        recipient,
        occurred_at: now_ms(),
        detail: json!({"url": target.as_str(), "link": link, "user_agent": ua, "machine": machine, "source": source}),
    };
    state.engine.record_tracking_event(&row.id, &n).await?;
    // 302 like every click tracker: a GET stays a GET and nothing caches it.
    Ok((
        StatusCode::FOUND,
        [
            (header::LOCATION, target.as_str()),
            (header::CACHE_CONTROL, "no-store"),
        ],
    )
        .into_response())
}

struct Unsub {
    row: MessageRow,
    email: String,
    category: String,
}

async fn unsub_token(state: &AppState, token: &str) -> ApiResult<Unsub> {
    let Some(Token::Unsubscribe {
        project_id,
        message_id,
        email,
        category,
    }) = state.engine.tracking.verify(token)
    else {
        return Err(ApiError::not_found("unsubscribe link"));
    };
    let row = state
        .engine
        .db
        .load_message_for_delivery(&message_id.to_string())
        .await?
        .filter(|r| r.project_id == project_id.to_string())
        .ok_or_else(|| ApiError::not_found("unsubscribe link"))?;
    Ok(Unsub {
        row,
        email: email.as_str().to_lowercase(),
        category,
    })
}

fn page(title: &str, text: &str, token: &str, action: &str, button: &str) -> Html<String> {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\"><title>{t}</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#111}}\
         button{{font:inherit;padding:.5rem 1rem;border:2px solid #111;border-radius:.25rem;background:#fff;cursor:pointer}}\
         button:focus{{outline:3px solid #1a5fb4;outline-offset:2px}}</style></head>\
         <body><main><h1>{t}</h1><p role=\"status\">{x}</p>\
         <form method=\"post\" action=\"/u/{tok}\"><input type=\"hidden\" name=\"action\" value=\"{a}\">\
         <button type=\"submit\">{b}</button></form></main></body></html>",
        t = esc(title),
        x = esc(text),
        tok = esc(token),
        a = action,
        b = esc(button),
    ))
}

/// The unsubscribe page: says whether the address is unsubscribed from the category, with a
/// button to change it. Viewing it changes nothing (link scanners fetch pages).
#[utoipa::path(get, path = "/u/{token}", tag = "tracking", params(("token" = String, Path)),
    responses((status = 200, content_type = "text/html", body = String), (status = 404, body = crate::error::ErrorBody)))]
async fn unsubscribe_page(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> ApiResult<Html<String>> {
    let u = unsub_token(&state, &token).await?;
    let current = state
        .engine
        .db
        .suppressed_among(
            &u.row.tenant_id,
            &u.row.project_id,
            std::slice::from_ref(&u.email),
            Some(&u.category),
            now_ms(),
        )
        .await?;
    Ok(if current.is_empty() {
        page(
            "Unsubscribe",
            &format!("Stop sending “{}” emails to {}?", u.category, u.email),
            &token,
            "unsubscribe",
            "Unsubscribe",
        )
    } else {
        page(
            "You are unsubscribed",
            &format!(
                "{} will no longer receive “{}” emails.",
                u.email, u.category
            ),
            &token,
            "resubscribe",
            "Resubscribe",
        )
    })
}

/// One-click unsubscribe (RFC 8058): a `List-Unsubscribe=One-Click` POST unsubscribes at once
/// and answers 200 with no page. The page's own form posts `action=unsubscribe|resubscribe` and
/// is sent back to the page.
#[utoipa::path(post, path = "/u/{token}", tag = "tracking", params(("token" = String, Path)),
    request_body(content = String, content_type = "application/x-www-form-urlencoded", description = "`List-Unsubscribe=One-Click` or `action=unsubscribe|resubscribe`"),
    responses((status = 200, description = "Unsubscribed"), (status = 303, description = "Back to the page"), (status = 404, body = crate::error::ErrorBody)))]
async fn unsubscribe(
    State(state): State<AppState>,
    Path(token): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let u = unsub_token(&state, &token).await?;
    let form = String::from_utf8_lossy(&body);
    let field = |name: &str| {
        form.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_string())
    };
    let action = field("action");
    let now = now_ms();
    if action.as_deref() == Some("resubscribe") {
        let input = (u.row.tenant_id, u.row.project_id, u.email, u.category);
        state
            .engine
            .write(input, move |(tenant, project, email, category), tx| {
                Box::pin(async move {
                    let r = Release {
                        tenant_id: tenant,
                        project_id: project,
                        email,
                        scope: Some(category.as_str()),
                        reason: "resubscribed",
                        actor: "recipient",
                        at: now,
                    };
                    release_suppression(tx, &r).await
                })
            })
            .await?;
    } else {
        let suppression = NewSuppression {
            tenant_id: u.row.tenant_id.clone(),
            project_id: u.row.project_id.clone(),
            email: u.email.clone(),
            scope: u.category.clone(),
            reason: "unsubscribed".into(),
            source_message_id: Some(u.row.id.clone()),
            detail: json!({"via": if action.is_some() { "page" } else { "one_click" }}),
            created_at: now,
            expires_at: None,
            actor: "recipient".into(),
        };
        state
            .engine
            .write(suppression, |s, tx| Box::pin(add_suppression(tx, s, false)))
            .await?;
        let n = Normalised {
            kind: EventType::Unsubscribed,
            bounce_type: None,
            recipient: Some(u.email.clone()),
            occurred_at: now,
            detail: json!({"category": u.category}),
        };
        state.engine.record_tracking_event(&u.row.id, &n).await?;
    }
    Ok(match action {
        Some(_) => Redirect::to(&format!("/u/{token}")).into_response(),
        None => StatusCode::OK.into_response(),
    })
}
