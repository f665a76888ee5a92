//! RFC 5322 / MIME rendering shared by every provider that takes raw messages.

use crate::{OutboundEmail, SendError};
use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox as LMailbox, MultiPart, SinglePart};
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
    let built = match (&email.text, &email.html) {
        (Some(t), Some(h)) => b.multipart(MultiPart::alternative_plain_html(t.clone(), h.clone())),
        (None, Some(h)) => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_HTML)
                .body(h.clone()),
        ),
        (Some(t), None) => b.singlepart(
            SinglePart::builder()
                .header(ContentType::TEXT_PLAIN)
                .body(t.clone()),
        ),
        (None, None) => return Err(SendError::Permanent("message has no body".into())),
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
}
