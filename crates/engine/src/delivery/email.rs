//! The email channel's part of a delivery: the outbound email rebuilt from its stored row, the
//! suppression check, send-time decoration (tracking, one-click unsubscribe) and the input
//! routing looks at.

use crate::Engine;
use crate::project_cache::ProjectSnapshot;
use crate::routing::RoutingInput;
use courierx_domain::{Mailbox, now_ms};
use courierx_providers::{OutboundEmail, SendError};
use courierx_store::messages::MessageRow;
use courierx_store::writer::SuppressedRecipient;

fn parse_list(json: &str) -> Vec<Mailbox> {
    serde_json::from_str::<Vec<String>>(json)
        .unwrap_or_default()
        .iter()
        .filter_map(|s| Mailbox::parse(s).ok())
        .collect()
}

/// Rebuilds the outbound email from its stored row (stored values were validated on the way in).
pub(super) fn outbound(m: &MessageRow) -> Result<OutboundEmail, SendError> {
    let from = Mailbox::parse(&m.from_addr)
        .map_err(|e| SendError::Permanent(format!("stored from address: {e}")))?;
    let headers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&m.headers).unwrap_or_default();
    Ok(OutboundEmail {
        message_id: m
            .id
            .parse()
            .map_err(|_| SendError::Permanent("stored message id is malformed".into()))?,
        created_at: m.created_at,
        from,
        to: parse_list(&m.to_addrs),
        cc: parse_list(&m.cc_addrs),
        bcc: parse_list(&m.bcc_addrs),
        reply_to: m.reply_to.as_deref().and_then(|r| Mailbox::parse(r).ok()),
        subject: m.subject.clone(),
        html: m.html.clone(),
        text: m.text_body.clone(),
        headers: headers
            .into_iter()
            .filter_map(|(k, v)| v.as_str().map(|s| (k, s.to_string())))
            .collect(),
        tags: serde_json::from_str(&m.tags).unwrap_or_default(),
        metadata: serde_json::from_str(&m.metadata).unwrap_or_default(),
        attachments: vec![],
        idempotency_key: m.idempotency_key.clone(),
    })
}

/// Adds what the project asks for at send time: open/click tracking in the HTML, and RFC 8058
/// one-click unsubscribe headers for non-transactional categories (one recipient per message,
/// enforced at accept, so the token names that recipient).
pub(super) fn decorate(
    e: &Engine,
    msg: &MessageRow,
    snap: &ProjectSnapshot,
    out: &mut OutboundEmail,
) {
    let s = &snap.settings;
    let base = e.cfg.public_url.trim_end_matches('/');
    if (s.track_opens || s.track_clicks)
        && let Some(html) = &out.html
    {
        out.html = Some(crate::tracking::instrument(
            html,
            base,
            out.message_id,
            &e.tracking,
            s.track_opens,
            s.track_clicks,
        ));
    }
    let category = msg
        .category
        .as_deref()
        .and_then(|c| courierx_domain::Category::parse(c).ok())
        .filter(|c| s.unsubscribable(c));
    let caller_set = out
        .headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("List-Unsubscribe"));
    if let (Some(category), Some(rcpt), Ok(project_id), false) =
        (category, out.to.first(), msg.project_id.parse(), caller_set)
    {
        let token = e.tracking.sign(&crate::tracking::Token::Unsubscribe {
            project_id,
            message_id: out.message_id,
            email: rcpt.address.clone(),
            category: category.to_string(),
        });
        let mut value = format!("<{base}/u/{token}>");
        if let Some(m) = &s.unsubscribe_mailto {
            value.push_str(&format!(", <mailto:{m}?subject=unsubscribe%20{token}>"));
        }
        out.headers.push(("List-Unsubscribe".into(), value));
        out.headers.push((
            "List-Unsubscribe-Post".into(),
            "List-Unsubscribe=One-Click".into(),
        ));
    }
}

/// Removes suppressed recipients from the email and says who and why. Category unsubscribes
/// count only for the project's non-transactional categories.
pub(super) async fn drop_suppressed(
    e: &Engine,
    msg: &MessageRow,
    snap: &ProjectSnapshot,
    email: &mut OutboundEmail,
) -> Result<Vec<SuppressedRecipient>, courierx_store::StoreError> {
    let all: Vec<String> = email
        .to
        .iter()
        .chain(&email.cc)
        .chain(&email.bcc)
        .map(|m| m.address.as_str().to_string())
        .collect();
    let category = msg
        .category
        .as_deref()
        .and_then(|c| courierx_domain::Category::parse(c).ok())
        .filter(|c| snap.settings.unsubscribable(c));
    let rows =
        e.db.suppressed_among(
            &msg.tenant_id,
            &msg.project_id,
            &all,
            category.as_ref().map(|c| c.as_str()),
            now_ms(),
        )
        .await?;
    let mut dropped: Vec<SuppressedRecipient> = Vec::new();
    for r in rows {
        if !dropped.iter().any(|d| d.email == r.email) {
            dropped.push(SuppressedRecipient {
                email: r.email,
                reason: r.reason,
                scope: r.scope,
            });
        }
    }
    if !dropped.is_empty() {
        let keep = |m: &Mailbox| {
            let lower = m.address.as_str().to_lowercase();
            !dropped.iter().any(|d| d.email == lower)
        };
        email.to.retain(keep);
        email.cc.retain(keep);
        email.bcc.retain(keep);
        metrics::counter!("courierx_recipients_suppressed_total").increment(dropped.len() as u64);
    }
    Ok(dropped)
}

/// The input routing looks at, from an outbound email.
pub(super) fn routing_input(email: &OutboundEmail) -> RoutingInput<'_> {
    RoutingInput {
        from_domain: email.from.address.domain(),
        recipient_domains: email
            .to
            .iter()
            .chain(&email.cc)
            .chain(&email.bcc)
            .map(|m| m.address.domain())
            .collect(),
        tags: &email.tags,
        metadata: &email.metadata,
    }
}
