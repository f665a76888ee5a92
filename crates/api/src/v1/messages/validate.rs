//! What a send request may contain: every field checked at once, the project's defaults filled
//! in, the result a [`ValidMessage`] the engine takes as it is.

use super::{MessageLimits, OneOrMany, SendMessageRequest};
use courierx_domain::{
    Attachment, Category, HeaderName, HeaderValue, Mailbox, Priority, ValidationErrors, now_ms,
};
use courierx_engine::accept::ValidMessage;
use courierx_engine::settings::ParsedSettings;
use serde_json::Value;

const MAX_ATTACHMENTS: usize = 10;
/// How far ahead `send_at` may be.
const MAX_SCHEDULE_MS: i64 = 30 * 24 * 3_600_000;

pub const MAX_RECIPIENTS: usize = 50;
const MAX_TAGS: usize = 20;
const MAX_METADATA_BYTES: usize = 8 * 1024;

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
