//! RFC 5322 / MIME rendering shared by every provider that takes raw messages.

use crate::{OutboundEmail, SendError};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Attachment as LAttachment, Mailbox as LMailbox, MultiPart, SinglePart};
use lettre::{Address, Message};
use std::time::{Duration, UNIX_EPOCH};

#[derive(Debug, Clone)]
pub struct RenderedMime {
    /// The `Message-ID` header value, with angle brackets.
    pub message_id: String,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub bytes: Vec<u8>,
}

fn mailbox(m: &courierx_domain::Mailbox) -> Result<LMailbox, SendError> {
    let addr: Address = m
        .address
        .as_str()
        .parse()
        .map_err(|e| SendError::Permanent(format!("address {}: {e}", m.address)))?;
    Ok(LMailbox::new(m.name.clone(), addr))
}

fn attachment_part(a: &courierx_domain::Attachment) -> Result<SinglePart, SendError> {
    let ct = ContentType::parse(&a.content_type)
        .map_err(|e| SendError::Permanent(format!("attachment {}: {e}", a.filename)))?;
    let builder = match &a.content_id {
        Some(cid) => LAttachment::new_inline(cid.clone()),
        None => LAttachment::new(a.filename.clone()),
    };
    Ok(builder.body(a.data.to_vec(), ct))
}

/// The body tree: text and HTML as alternatives; inline images (`cid:`) beside the HTML in
/// multipart/related; other attachments beside all of it in multipart/mixed.
fn body(email: &OutboundEmail) -> Result<Either, SendError> {
    let html_part = |h: &String| {
        SinglePart::builder()
            .header(ContentType::TEXT_HTML)
            .body(h.clone())
    };
    let text_part = |t: &String| {
        SinglePart::builder()
            .header(ContentType::TEXT_PLAIN)
            .body(t.clone())
    };
    let (inline, files): (Vec<_>, Vec<_>) = email
        .attachments
        .iter()
        .partition(|a| a.content_id.is_some() && email.html.is_some());
    // The HTML with its inline images, when there are any.
    let html_tree = |h: &String| -> Result<Either, SendError> {
        if inline.is_empty() {
            return Ok(Either::Single(html_part(h)));
        }
        let mut related = MultiPart::related().singlepart(html_part(h));
        for a in &inline {
            related = related.singlepart(attachment_part(a)?);
        }
        Ok(Either::Multi(related))
    };
    let content = match (&email.text, &email.html) {
        (Some(t), Some(h)) => {
            let alt = MultiPart::alternative().singlepart(text_part(t));
            Either::Multi(match html_tree(h)? {
                Either::Single(p) => alt.singlepart(p),
                Either::Multi(m) => alt.multipart(m),
            })
        }
        (None, Some(h)) => html_tree(h)?,
        (Some(t), None) => Either::Single(text_part(t)),
        (None, None) => return Err(SendError::Permanent("message has no body".into())),
    };
    if files.is_empty() {
        return Ok(content);
    }
    let mut mixed = match content {
        Either::Single(p) => MultiPart::mixed().singlepart(p),
        Either::Multi(m) => MultiPart::mixed().multipart(m),
    };
    for a in files {
        mixed = mixed.singlepart(attachment_part(a)?);
    }
    Ok(Either::Multi(mixed))
}

enum Either {
    Single(SinglePart),
    Multi(MultiPart),
}

/// Builds the message: `Message-ID` under the sender's domain, `Date` from the acceptance time,
/// multipart/alternative when both parts exist, RFC 2047 subjects; Bcc goes to the envelope only.
pub fn render(email: &OutboundEmail) -> Result<RenderedMime, SendError> {
    let message_id = format!("<{}@{}>", email.message_id, email.from.address.domain());
    let mut b = Message::builder()
        .from(mailbox(&email.from)?)
        .subject(email.subject.clone())
        .message_id(Some(message_id.clone()))
        .date(UNIX_EPOCH + Duration::from_millis(email.created_at.max(0) as u64));
    for m in &email.to {
        b = b.to(mailbox(m)?);
    }
    for m in &email.cc {
        b = b.cc(mailbox(m)?);
    }
    for m in &email.bcc {
        b = b.bcc(mailbox(m)?);
    }
    if let Some(r) = &email.reply_to {
        b = b.reply_to(mailbox(r)?);
    }
    for (name, value) in &email.headers {
        let name = HeaderName::new_from_ascii(name.clone())
            .map_err(|e| SendError::Permanent(format!("header {name}: {e}")))?;
        b = b.raw_header(HeaderValue::new(name, value.clone()));
    }
    let built = match body(email)? {
        Either::Single(p) => b.singlepart(p),
        Either::Multi(m) => b.multipart(m),
    }
    .map_err(|e| SendError::Permanent(format!("cannot build message: {e}")))?;
    let env = built.envelope();
    Ok(RenderedMime {
        message_id,
        envelope_from: env.from().map(|a| a.to_string()).unwrap_or_default(),
        envelope_to: env.to().iter().map(|a| a.to_string()).collect(),
        bytes: built.formatted(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use courierx_domain::{Mailbox, MessageId};

    fn email() -> OutboundEmail {
        OutboundEmail {
            message_id: MessageId::new(),
            created_at: 1_700_000_000_000,
            from: Mailbox::parse("Acme <noreply@acme.test>").unwrap(),
            to: vec![Mailbox::parse("bob@example.test").unwrap()],
            cc: vec![],
            bcc: vec![Mailbox::parse("hidden@example.test").unwrap()],
            reply_to: None,
            subject: "Grüße aus Köln".into(),
            html: Some("<p>Hi</p>".into()),
            text: Some("Hi".into()),
            headers: vec![("X-Campaign".into(), "spring".into())],
            tags: vec![],
            metadata: Default::default(),
            attachments: vec![],
            idempotency_key: None,
        }
    }

    #[test]
    fn renders_alternative_without_bcc_header() {
        let r = render(&email()).unwrap();
        let s = String::from_utf8(r.bytes).unwrap();
        assert!(s.contains("multipart/alternative"));
        assert!(s.contains("Subject: =?utf-8?"), "{s}");
        assert!(!s.to_ascii_lowercase().contains("hidden@example.test"));
        assert!(s.contains("X-Campaign: spring"));
        assert!(r.envelope_to.contains(&"hidden@example.test".to_string()));
        assert!(s.contains(&format!("Message-ID: {}", r.message_id)));
    }

    #[test]
    fn attachments_and_inline_images_nest_correctly() {
        use mail_parser::{MessageParser, MimeHeaders, PartType};
        let mut e = email();
        e.html = Some(r#"<p>Hi <img src="cid:logo"></p>"#.into());
        e.attachments = vec![
            courierx_domain::Attachment::parse("logo.png", "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==", None, Some("logo")).unwrap(),
            courierx_domain::Attachment::parse("report.csv", "YSxiCjEsMgo=", None, None).unwrap(),
        ];
        let r = render(&e).unwrap();
        let m = MessageParser::default().parse(&r.bytes).unwrap();
        let ct = |i: usize| {
            let c = m.parts[i].content_type().unwrap();
            format!("{}/{}", c.ctype(), c.subtype().unwrap_or(""))
        };
        assert_eq!(ct(0), "multipart/mixed");
        assert_eq!(ct(1), "multipart/alternative");
        assert_eq!(ct(2), "text/plain");
        assert_eq!(ct(3), "multipart/related");
        assert_eq!(ct(4), "text/html");
        assert_eq!(ct(5), "image/png");
        assert_eq!(m.parts[5].content_id(), Some("logo"));
        assert_eq!(ct(6), "text/csv");
        assert_eq!(m.parts[6].attachment_name(), Some("report.csv"));
        assert!(
            matches!(&m.parts[6].body, PartType::Text(t) if t.as_ref() == "a,b\n1,2\n")
                || matches!(&m.parts[6].body, PartType::Binary(b) if b.as_ref() == b"a,b\n1,2\n")
        );
        assert_eq!(m.attachment_count(), 2);
    }
}
