//! Open and click tracking: signed tokens, HTML instrumentation and bot/prefetch flags.
//! Pure functions only; the routes and the storage live elsewhere.
//!
//! How the pieces fit:
//! - **Sending**: [`instrument`] rewrites every tracked link of a message's HTML to
//!   `{base_url}/t/c/{token}` and adds an open pixel `{base_url}/t/o/{token}.gif`. The HTML stored
//!   with the message must stay the *original* (un-instrumented) one.
//! - **Open** (`GET /t/o/{token}.gif`): strip the `.gif` suffix, require
//!   `keys.verify(token) == Some(Token::Open { .. })`, answer [`OPEN_PIXEL_GIF`] (`image/gif`,
//!   `Cache-Control: no-store`) whatever happens, and record the open with [`classify_open`].
//! - **Click** (`GET /t/c/{token}`): require `Some(Token::Click { message_id, link })`, load that
//!   message's stored original HTML and redirect to [`link_at`]`(html, link)`. That is the only
//!   allowed target, so a token can never redirect anywhere the message did not link to. The URL
//!   is returned as written in the HTML (entities decoded, may contain non-ASCII): normalise it
//!   (e.g. with `url::Url::parse`) before putting it in a `Location` header. Record the click with
//!   [`classify_click`].
//! - **Unsubscribe**: sign a [`Token::Unsubscribe`] into whatever URL the caller serves, and mark
//!   that link `data-cx-notrack` if it is placed in the HTML.
//!
//! Which links are tracked (the same code path enumerates and rewrites, so indexes line up): every
//! `<a>` with an `href` whose value, entity-decoded and stripped as a browser strips URLs, starts
//! with `http://` or `https://` (any case) and contains no control character, in document order,
//! except links carrying a `data-cx-notrack` attribute. `mailto:`, `tel:`, `#anchors`, relative
//! links and links inside comments, `<script>`, `<style>` or `<textarea>` are neither rewritten nor
//! counted.

use aws_lc_rs::{constant_time, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use courierx_domain::{EmailAddress, MessageId, ProjectId};
use lol_html::html_content::{ContentType, Element};
use lol_html::{RewriteStrSettings, element, end, end_tag, rewrite_str};
use std::cell::Cell;
use std::rc::Rc;
use uuid::Uuid;

/// A 1x1 transparent GIF (GIF89a, 43 bytes): the body of every open-pixel response.
#[rustfmt::skip]
pub const OPEN_PIXEL_GIF: &[u8] = &[
    b'G', b'I', b'F', b'8', b'9', b'a', // header
    0x01, 0x00, 0x01, 0x00, // 1x1
    0x80, 0x00, 0x00, // global colour table of 2 entries, background 0, no aspect ratio
    0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, // black, white
    0x21, 0xF9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, // graphic control: colour 0 is transparent
    0x2C, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, // image at 0,0, 1x1
    0x02, 0x02, 0x44, 0x01, 0x00, // LZW data: clear, pixel 0, end
    0x3B, // trailer
];

/// The attribute that keeps an `<a>` out of click tracking (e.g. unsubscribe links).
pub const NOTRACK_ATTRIBUTE: &str = "data-cx-notrack";

/// Longest token string [`TrackingKeys::verify`] looks at; longer input is rejected unread.
/// Open and click tokens are about 50 characters; an unsubscribe token grows with its email
/// (at most 254 bytes) and category, so categories up to [`MAX_CATEGORY_LEN`] always fit.
pub const MAX_TOKEN_LEN: usize = 2048;

/// Longest unsubscribe category (in bytes) whose token is guaranteed to verify. Categories must be
/// capped at or below this where they are accepted; [`TrackingKeys::sign`] does not truncate.
pub const MAX_CATEGORY_LEN: usize = 1024;

const VERSION: u8 = 1;
const KIND_OPEN: u8 = 1;
const KIND_CLICK: u8 = 2;
const KIND_UNSUBSCRIBE: u8 = 3;
/// Truncated HMAC-SHA256 tag: 128 bits puts forgery far beyond online guessing.
const TAG_LEN: usize = 16;

/// What a tracking token authorises.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    /// The open pixel of one message.
    Open { message_id: MessageId },
    /// The `link`-th tracked link (see [`tracked_links`]) of one message's original HTML.
    Click { message_id: MessageId, link: u32 },
    /// Unsubscribe `email` from `category` ('' meaning all mail) in a project.
    Unsubscribe {
        project_id: ProjectId,
        message_id: MessageId,
        email: EmailAddress,
        category: String,
    },
}

/// The HMAC key for tracking tokens, derived from the instance secret key. Tokens carry no
/// expiry, so links in old mail keep working (unsubscribe links must); rotating the secret key
/// invalidates every token.
#[derive(Clone)]
pub struct TrackingKeys {
    key: hmac::Key,
}

impl std::fmt::Debug for TrackingKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrackingKeys(********)")
    }
}

impl TrackingKeys {
    pub fn new(secret_key: &crate::SecretKey) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret_key.derive("tracking-v1")),
        }
    }

    /// The URL-safe token (base64url without padding) of `token`: a compact binary payload
    /// followed by a 16-byte HMAC-SHA256 tag. Deterministic: the same token always signs the same.
    ///
    /// Layout: `version=1 | kind | message_id (16)`, then for a click `link (u32 BE)`, for an
    /// unsubscribe `project_id (16) | email len (u16 BE) | email | category len (u16 BE) |
    /// category`.
    pub fn sign(&self, token: &Token) -> String {
        let mut buf = encode(token);
        let tag = hmac::sign(&self.key, &buf);
        buf.extend_from_slice(&tag.as_ref()[..TAG_LEN]);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// The token `s` stands for, or `None` if it was not signed by these keys, was altered or cut,
    /// or is not a token at all. Never panics; input longer than [`MAX_TOKEN_LEN`] is rejected.
    pub fn verify(&self, s: &str) -> Option<Token> {
        if s.len() > MAX_TOKEN_LEN {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
        let (payload, tag) = raw.split_at_checked(raw.len().checked_sub(TAG_LEN)?)?;
        let expected = hmac::sign(&self.key, payload);
        constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_LEN], tag).ok()?;
        decode(payload)
    }
}

fn encode(token: &Token) -> Vec<u8> {
    let mut b = Vec::with_capacity(64);
    b.push(VERSION);
    match token {
        Token::Open { message_id } => {
            b.push(KIND_OPEN);
            b.extend_from_slice(message_id.as_uuid().as_bytes());
        }
        Token::Click { message_id, link } => {
            b.push(KIND_CLICK);
            b.extend_from_slice(message_id.as_uuid().as_bytes());
            b.extend_from_slice(&link.to_be_bytes());
        }
        Token::Unsubscribe {
            project_id,
            message_id,
            email,
            category,
        } => {
            b.push(KIND_UNSUBSCRIBE);
            b.extend_from_slice(message_id.as_uuid().as_bytes());
            b.extend_from_slice(project_id.as_uuid().as_bytes());
            put_str(&mut b, email.as_str());
            put_str(&mut b, category);
        }
    }
    b
}

/// A u16-length-prefixed string. Anything longer than u16 could not fit in [`MAX_TOKEN_LEN`]
/// anyway; the clamp keeps `sign` total and such a token simply never verifies.
fn put_str(b: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(s.as_bytes());
}

/// Reads a signed payload; every byte must be consumed.
fn decode(payload: &[u8]) -> Option<Token> {
    let mut r = Reader(payload);
    if r.byte()? != VERSION {
        return None;
    }
    let kind = r.byte()?;
    let message_id = MessageId::from(r.uuid()?);
    let token = match kind {
        KIND_OPEN => Token::Open { message_id },
        KIND_CLICK => Token::Click {
            message_id,
            link: u32::from_be_bytes(r.take()?),
        },
        KIND_UNSUBSCRIBE => {
            let project_id = ProjectId::from(r.uuid()?);
            let email = EmailAddress::parse(r.str()?).ok()?;
            let category = r.str()?.to_owned();
            Token::Unsubscribe {
                project_id,
                message_id,
                email,
                category,
            }
        }
        _ => return None,
    };
    r.0.is_empty().then_some(token)
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.bytes(N)?.try_into().ok()
    }
    fn byte(&mut self) -> Option<u8> {
        Some(self.take::<1>()?[0])
    }
    fn uuid(&mut self) -> Option<Uuid> {
        Some(Uuid::from_bytes(self.take()?))
    }
    fn str(&mut self) -> Option<&'a str> {
        let len = u16::from_be_bytes(self.take()?);
        std::str::from_utf8(self.bytes(usize::from(len))?).ok()
    }
}

/// The hrefs of the tracked links of `html`, decoded, in document order (index = position).
pub fn tracked_links(html: &str) -> Vec<String> {
    let mut links = Vec::new();
    let _ = walk(
        html,
        Some(&mut |_, url| {
            links.push(url);
            None
        }),
        None,
    );
    links
}

/// The `index`-th tracked link of `html` (see [`tracked_links`]): the only legitimate redirect
/// target of a click token. Pass the message's original HTML, not the instrumented one.
pub fn link_at(html: &str, index: u32) -> Option<String> {
    let mut found = None;
    let _ = walk(
        html,
        Some(&mut |i, url| {
            if i == index {
                found = Some(url);
            }
            None
        }),
        None,
    );
    found
}

/// `html` with tracking added: with `clicks`, every tracked link's href becomes
/// `{base_url}/t/c/{click token}`; with `opens`, an invisible 1x1 image `{base_url}/t/o/{open
/// token}.gif` is inserted just before the first `</body>` (appended at the end if there is none).
/// Everything else is kept byte for byte, except that a rewritten `<a>` tag is re-serialised
/// (single spaces between attributes). `base_url` is the public origin of the tracking routes,
/// with or without a trailing slash. Parsing is lenient, so this only fails on allocation
/// failure, in which case the HTML is returned untracked and a warning is logged.
pub fn instrument(
    html: &str,
    base_url: &str,
    message_id: MessageId,
    keys: &TrackingKeys,
    opens: bool,
    clicks: bool,
) -> String {
    let base = base_url.trim_end_matches('/');
    let mut rewrite_link = |link: u32, _: String| {
        let token = keys.sign(&Token::Click { message_id, link });
        Some(attr_escape(&format!("{base}/t/c/{token}")))
    };
    let pixel = opens.then(|| {
        let src = format!("{base}/t/o/{}.gif", keys.sign(&Token::Open { message_id }));
        // Hidden by size rather than `display:none`, so clients that skip undisplayed images
        // still fetch it.
        format!(
            r#"<img src="{}" width="1" height="1" alt="" style="display:block;width:1px;height:1px;max-width:1px;max-height:1px;border:0;margin:0;padding:0;overflow:hidden" />"#,
            attr_escape(&src)
        )
    });
    let on_link: Option<&mut LinkFn<'_>> = if clicks {
        Some(&mut rewrite_link)
    } else {
        None
    };
    walk(html, on_link, pixel).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not instrument HTML for tracking; sending it untracked");
        html.to_owned()
    })
}

/// Called with each tracked link's index and decoded URL; returns the raw (already
/// attribute-escaped) replacement href, if any.
type LinkFn<'a> = dyn FnMut(u32, String) -> Option<String> + 'a;

/// The single pass behind [`tracked_links`], [`link_at`] and [`instrument`].
fn walk(
    html: &str,
    on_link: Option<&mut LinkFn<'_>>,
    pixel: Option<String>,
) -> Result<String, lol_html::errors::RewritingError> {
    let mut next: Option<u32> = Some(0);
    let inserted = Rc::new(Cell::new(false));
    let mut settings = RewriteStrSettings::new()
        // Best effort on odd markup instead of an error: mail HTML is often non-conforming.
        .with_strict(false)
        .with_enable_esi_tags(false);
    if let Some(on_link) = on_link {
        settings = settings.append_element_content_handler(element!("a[href]", |el| {
            let (Some(index), Some(url)) = (next, tracked_url(el)) else {
                return Ok(());
            };
            next = index.checked_add(1);
            if let Some(href) = on_link(index, url) {
                el.set_attribute("href", &href)?;
            }
            Ok(())
        }));
    }
    if let Some(pixel) = &pixel {
        let flag = inserted.clone();
        let pixel_html = pixel.clone();
        settings = settings
            .append_element_content_handler(element!("body", move |el| {
                let (flag, pixel_html) = (flag.clone(), pixel_html.clone());
                if let Some(handlers) = el.end_tag_handlers() {
                    handlers.push(end_tag!(move |end| {
                        if !flag.replace(true) {
                            end.before(&pixel_html, ContentType::Html);
                        }
                        Ok(())
                    }));
                }
                Ok(())
            }))
            .append_document_content_handler(end!(|end| {
                if !inserted.replace(true) {
                    end.append(pixel, ContentType::Html);
                }
                Ok(())
            }));
    }
    rewrite_str(html, settings)
}

/// The URL of a link that is tracked, per the rules in the module docs.
fn tracked_url(el: &Element<'_, '_>) -> Option<String> {
    if el.has_attribute(NOTRACK_ATTRIBUTE) {
        return None;
    }
    let url = clean_url(&decode_attr(&el.get_attribute("href")?));
    let scheme_end = url.find("://")?;
    let scheme = &url[..scheme_end];
    let tracked = (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        && url.len() > scheme_end + 3
        && !url.chars().any(char::is_control);
    tracked.then_some(url)
}

/// What a browser navigates to: leading/trailing C0 controls and spaces stripped, tabs and
/// newlines removed (WHATWG URL parsing).
fn clean_url(s: &str) -> String {
    s.trim_matches(|c: char| c <= ' ')
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect()
}

/// Decodes character references in a raw attribute value exactly as HTML does (named, numeric,
/// and the legacy no-semicolon rules for attributes), using the html5gum tokenizer on a one-tag
/// document. `"` is re-encoded first so the value cannot end the synthetic attribute.
fn decode_attr(raw: &str) -> String {
    if !raw.contains('&') {
        return raw.to_owned();
    }
    let doc = format!("<a href=\"{}\">", raw.replace('"', "&quot;"));
    for token in html5gum::Tokenizer::new(doc.as_str()).flatten() {
        if let html5gum::Token::StartTag(tag) = token {
            return tag
                .attributes
                .get(b"href".as_slice())
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
        }
    }
    raw.to_owned()
}

/// Escapes a value for a double-quoted attribute.
fn attr_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;")
}

/// Who fetched an open pixel. A flag for reporting: every open is recorded either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenSource {
    /// A mail client showing the message to its reader, as far as we can tell.
    Human,
    /// A mailbox provider's image proxy (Gmail, Yahoo): normally fetched when the reader opens
    /// the message, but the device is hidden and the proxy may cache or fetch ahead.
    Proxy(&'static str),
    /// Fetched by a machine without a reader: privacy prefetch, security scanner, crawler, HTTP
    /// library, or too soon after sending. The reason is a short stable label.
    Prefetch(&'static str),
}

/// Who followed a tracked link. A flag for reporting: every click is recorded and redirected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClickSource {
    Human,
    /// A link scanner, crawler, HTTP library, or too soon after sending. Short stable label.
    Scanner(&'static str),
}

/// Opens or clicks sooner than this after sending are machine-made: no reader is that fast.
pub const TOO_SOON_MS: i64 = 2_000;

/// Image proxies of mailbox providers, matched case-insensitively as substrings. Gmail's reads
/// `... (via ggpht.com GoogleImageProxy)`, Yahoo's `YahooMailProxy; https://help.yahoo.com/...`.
const IMAGE_PROXIES: &[(&str, &str)] = &[
    ("googleimageproxy", "google-image-proxy"),
    ("yahoomailproxy", "yahoo-mail-proxy"),
];

/// Automated fetchers, matched case-insensitively as substrings: mail security gateways
/// (Barracuda, Mimecast, Proofpoint), Microsoft's link preview (`BingPreview`, used by
/// Outlook.com) and Office's pre-click probe (`Microsoft Office Existence Discovery`), headless
/// browsers, HTTP libraries, and crawlers (which name themselves `...bot/` or add `+http://...`).
/// Scanners that present an ordinary browser user agent (e.g. Defender Safe Links detonation) are
/// only caught by [`TOO_SOON_MS`].
const SCANNERS: &[(&str, &str)] = &[
    ("barracuda", "barracuda"),
    ("mimecast", "mimecast"),
    ("proofpoint", "proofpoint"),
    ("bingpreview", "microsoft-link-preview"),
    ("existence discovery", "microsoft-office-probe"),
    ("headlesschrome", "headless-browser"),
    ("phantomjs", "headless-browser"),
    ("curl/", "http-library"),
    ("wget/", "http-library"),
    ("python-requests", "http-library"),
    ("python-urllib", "http-library"),
    ("aiohttp", "http-library"),
    ("go-http-client", "http-library"),
    ("okhttp", "http-library"),
    ("apache-httpclient", "http-library"),
    ("java/", "http-library"),
    ("libwww-perl", "http-library"),
    ("node-fetch", "http-library"),
    ("axios/", "http-library"),
    ("bot/", "crawler"),
    ("+http", "crawler"),
    ("spider", "crawler"),
    ("crawler", "crawler"),
];

/// Exactly `Mozilla/5.0` and nothing else: no browser or mail client sends that; Apple Mail
/// Privacy Protection's proxy, which fetches every image on delivery, does.
const BARE_MOZILLA: &str = "mozilla/5.0";
/// Exactly `Mozilla/4.0 (compatible;)`: web security gateways that prefetch every URL they see.
const GATEWAY_UA: &str = "mozilla/4.0 (compatible;)";

enum UaClass {
    Proxy(&'static str),
    Machine(&'static str),
    BareMozilla,
    Unremarkable,
}

fn classify_user_agent(user_agent: Option<&str>) -> UaClass {
    let ua = user_agent.unwrap_or("").trim().to_ascii_lowercase();
    let find = |table: &[(&str, &'static str)]| {
        table
            .iter()
            .find(|(needle, _)| ua.contains(needle))
            .map(|&(_, reason)| reason)
    };
    if ua.is_empty() {
        UaClass::Machine("no-user-agent")
    } else if ua == BARE_MOZILLA {
        UaClass::BareMozilla
    } else if ua == GATEWAY_UA {
        UaClass::Machine("security-gateway")
    } else if let Some(reason) = find(IMAGE_PROXIES) {
        UaClass::Proxy(reason)
    } else if let Some(reason) = find(SCANNERS) {
        UaClass::Machine(reason)
    } else {
        UaClass::Unremarkable
    }
}

fn too_soon(millis_since_sent: Option<i64>) -> bool {
    millis_since_sent.is_some_and(|ms| ms < TOO_SOON_MS)
}

/// Flags an open pixel fetch from its `User-Agent` header and the time since the message was sent
/// (`None` if unknown). User-agent evidence wins over timing; a missing user agent is a machine.
pub fn classify_open(user_agent: Option<&str>, millis_since_sent: Option<i64>) -> OpenSource {
    match classify_user_agent(user_agent) {
        UaClass::Proxy(reason) => OpenSource::Proxy(reason),
        UaClass::Machine(reason) => OpenSource::Prefetch(reason),
        UaClass::BareMozilla => OpenSource::Prefetch("apple-mail-privacy"),
        UaClass::Unremarkable if too_soon(millis_since_sent) => OpenSource::Prefetch("too-soon"),
        UaClass::Unremarkable => OpenSource::Human,
    }
}

/// Flags a click the same way. Image proxies do not follow links, so one doing so is a scanner.
pub fn classify_click(user_agent: Option<&str>, millis_since_sent: Option<i64>) -> ClickSource {
    match classify_user_agent(user_agent) {
        UaClass::Proxy(reason) | UaClass::Machine(reason) => ClickSource::Scanner(reason),
        UaClass::BareMozilla => ClickSource::Scanner("bare-user-agent"),
        UaClass::Unremarkable if too_soon(millis_since_sent) => ClickSource::Scanner("too-soon"),
        UaClass::Unremarkable => ClickSource::Human,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SecretKey;

    fn keys() -> TrackingKeys {
        TrackingKeys::new(&SecretKey::generate())
    }

    fn all_kinds() -> Vec<Token> {
        vec![
            Token::Open {
                message_id: MessageId::new(),
            },
            Token::Click {
                message_id: MessageId::new(),
                link: 4_000_000_123,
            },
            Token::Unsubscribe {
                project_id: ProjectId::new(),
                message_id: MessageId::new(),
                email: EmailAddress::parse("Jane.Doe+news@Example.ORG").unwrap(),
                category: "marketing".into(),
            },
            Token::Unsubscribe {
                project_id: ProjectId::new(),
                message_id: MessageId::new(),
                email: EmailAddress::parse("a@b.co").unwrap(),
                category: String::new(),
            },
        ]
    }

    #[test]
    fn tokens_round_trip_for_every_kind() {
        let k = keys();
        for t in all_kinds() {
            let s = k.sign(&t);
            assert!(
                s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{s}"
            );
            assert_eq!(k.sign(&t), s, "deterministic");
            assert_eq!(k.verify(&s), Some(t));
        }
    }

    #[test]
    fn longest_category_and_email_fit() {
        let k = keys();
        let t = Token::Unsubscribe {
            project_id: ProjectId::new(),
            message_id: MessageId::new(),
            email: EmailAddress::parse(&format!(
                "{}@{d}.{d}.{d}.com",
                "a".repeat(64),
                d = "b".repeat(61)
            ))
            .unwrap(),
            category: "é".repeat(MAX_CATEGORY_LEN / 2),
        };
        let Token::Unsubscribe {
            email, category, ..
        } = &t
        else {
            unreachable!()
        };
        assert_eq!(
            (email.as_str().len(), category.len()),
            (254, MAX_CATEGORY_LEN)
        );
        let s = k.sign(&t);
        assert!(s.len() <= MAX_TOKEN_LEN, "{}", s.len());
        assert_eq!(k.verify(&s), Some(t));
    }

    #[test]
    fn altered_tokens_are_rejected() {
        let k = keys();
        for t in all_kinds() {
            let s = k.sign(&t);
            let raw = URL_SAFE_NO_PAD.decode(&s).unwrap();
            // Every single-bit flip anywhere (payload or tag).
            for i in 0..raw.len() {
                for bit in 0..8 {
                    let mut r = raw.clone();
                    r[i] ^= 1 << bit;
                    assert_eq!(k.verify(&URL_SAFE_NO_PAD.encode(&r)), None, "byte {i}");
                }
            }
            // Every truncation, by bytes and by characters.
            for n in 0..raw.len() {
                assert_eq!(k.verify(&URL_SAFE_NO_PAD.encode(&raw[..n])), None);
            }
            for n in 0..s.len() {
                assert_eq!(k.verify(&s[..n]), None);
            }
            // Appended bytes, and another key.
            let mut longer = raw.clone();
            longer.push(0);
            assert_eq!(k.verify(&URL_SAFE_NO_PAD.encode(&longer)), None);
            assert_eq!(keys().verify(&s), None);
        }
    }

    #[test]
    fn garbage_is_rejected_without_panicking() {
        let k = keys();
        let huge = "A".repeat(MAX_TOKEN_LEN + 1);
        for s in [
            "",
            "x",
            "====",
            "not a token!",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
            "ü€😀",
            "a/b+c=",
            huge.as_str(),
        ] {
            assert_eq!(k.verify(s), None, "{s:?}");
        }
        // A padded form of a valid token is not accepted either.
        let s = k.sign(&all_kinds()[0]);
        assert_eq!(k.verify(&format!("{s}==")), None);
    }

    /// A correctly tagged payload whose content is wrong must still be refused.
    #[test]
    fn well_signed_but_malformed_payloads_are_rejected() {
        let k = keys();
        let id = *MessageId::new().as_uuid().as_bytes();
        let sign_raw = |payload: &[u8]| {
            let mut b = payload.to_vec();
            b.extend_from_slice(&hmac::sign(&k.key, payload).as_ref()[..TAG_LEN]);
            URL_SAFE_NO_PAD.encode(b)
        };
        let with = |prefix: &[u8], rest: &[u8]| [prefix, &id, rest].concat();
        // Sanity: the helper makes valid tokens.
        assert!(
            k.verify(&sign_raw(&with(&[VERSION, KIND_OPEN], &[])))
                .is_some()
        );
        for payload in [
            with(&[2, KIND_OPEN], &[]),                  // unknown version
            with(&[VERSION, 9], &[]),                    // unknown kind
            with(&[VERSION, KIND_OPEN], &[0]),           // trailing byte
            with(&[VERSION, KIND_CLICK], &[0, 0, 1]),    // short link index
            with(&[VERSION, KIND_UNSUBSCRIBE], &id[..]), // no email
            [
                &[VERSION, KIND_UNSUBSCRIBE][..],
                &id,
                &id,
                &[0, 3],
                b"bad",
                &[0, 0],
            ]
            .concat(), // invalid email
            [
                &[VERSION, KIND_UNSUBSCRIBE][..],
                &id,
                &id,
                &[0, 5],
                b"a@b.c",
                &[0, 2],
                &[0xC3, 0x28],
            ]
            .concat(), // category not UTF-8
        ] {
            assert_eq!(k.verify(&sign_raw(&payload)), None, "{payload:?}");
        }
    }

    #[test]
    fn open_pixel_is_a_1x1_transparent_gif() {
        assert_eq!(OPEN_PIXEL_GIF.len(), 43);
        assert_eq!(&OPEN_PIXEL_GIF[..6], b"GIF89a");
        assert_eq!(&OPEN_PIXEL_GIF[6..10], &[1, 0, 1, 0]);
        // Graphic control extension with the transparency flag set.
        assert_eq!(&OPEN_PIXEL_GIF[19..23], &[0x21, 0xF9, 0x04, 0x01]);
        assert_eq!(OPEN_PIXEL_GIF.last(), Some(&0x3B));
    }

    const DOC: &str = concat!(
        "<!DOCTYPE html>\n<html><head><title>Hi &amp; welcome</title>",
        "<style>a[href=\"https://style.example/\"]{color:red}</style></head>\n",
        "<body class=\"main\">\n",
        "<p>Plain <a href=\"https://example.com/a?x=1&amp;y=2\" class='btn'>one</a>\n",
        "<A HREF='HTTP://Example.com/Caps'>caps</A>\n",
        "<a href=\"mailto:x@example.com\">mail</a> <a href=\"tel:+123\">tel</a>\n",
        "<a href=\"#top\">anchor</a> <a href=\"/relative\">rel</a> <a href=\"//proto.rel/x\">pr</a>\n",
        "<a href=\"javascript:alert(1)\">js</a> <a name=\"nohref\">name</a>\n",
        "<a data-cx-notrack href=\"https://example.com/unsubscribe\">unsub</a>\n",
        "<!-- <a href=\"https://comment.example/\">c</a> -->\n",
        "<script>var s = '<a href=\"https://script.example/\">';</script>\n",
        "<a href=\"https://例え.jp/パス?q=ü\">non-ascii</a>\n",
        "<a href=\"  https://example.com/spaced\n  \">spaced</a>\n",
        "<a href=https://example.com/unquoted>unquoted</a>\n",
        "<a href=\"https://example.com/a?x=1&amp;y=2\">again</a>\n",
        "<img src=\"https://example.com/logo.png\" alt=\"logo\">\n",
        "</p></body></html>\n"
    );

    const DOC_LINKS: &[&str] = &[
        "https://example.com/a?x=1&y=2",
        "HTTP://Example.com/Caps",
        "https://例え.jp/パス?q=ü",
        "https://example.com/spaced",
        "https://example.com/unquoted",
        "https://example.com/a?x=1&y=2",
    ];

    #[test]
    fn tracked_links_follow_the_documented_rules() {
        assert_eq!(tracked_links(DOC), DOC_LINKS);
        for (i, url) in DOC_LINKS.iter().enumerate() {
            assert_eq!(
                link_at(DOC, u32::try_from(i).unwrap()).as_deref(),
                Some(*url)
            );
        }
        assert_eq!(link_at(DOC, 6), None);
        assert_eq!(link_at(DOC, u32::MAX), None);
        assert!(tracked_links("").is_empty());
        assert!(tracked_links("<a href=\"https://\">empty host</a>").is_empty());
        assert!(tracked_links("<a href=\"https://x.example/a\u{7}b\">bell</a>").is_empty());
    }

    #[test]
    fn entities_in_hrefs_are_decoded_as_a_browser_would() {
        let html = concat!(
            "<a href=\"https://e.com/?a=1&amp;b=2&#38;c=3&#x26;d=4\">x</a>",
            "<a href=\"https://e.com/?q=&quot;hi&quot;&nbsp;\">x</a>",
            // Legacy rule: `&copy` followed by `=` is not a reference inside an attribute.
            "<a href=\"https://e.com/?x=1&copy=2&lt;3\">x</a>",
            "<a href='https://e.com/?say=\"hi\"&amp;'>x</a>",
        );
        assert_eq!(
            tracked_links(html),
            [
                "https://e.com/?a=1&b=2&c=3&d=4",
                "https://e.com/?q=\"hi\"\u{a0}",
                "https://e.com/?x=1&copy=2<3",
                "https://e.com/?say=\"hi\"&",
            ]
        );
    }

    /// The open pixel's `src` and each rewritten `href`, parsed back out of instrumented HTML.
    fn hrefs(html: &str) -> Vec<String> {
        let mut out = Vec::new();
        rewrite_str(
            html,
            RewriteStrSettings::new().append_element_content_handler(element!("a[href]", |el| {
                out.push(decode_attr(&el.get_attribute("href").unwrap_or_default()));
                Ok(())
            })),
        )
        .unwrap();
        out
    }

    #[test]
    fn instrumented_links_lead_back_to_every_original_url() {
        let k = keys();
        let id = MessageId::new();
        let out = instrument(DOC, "https://t.example.com/", id, &k, true, true);
        let prefix = "https://t.example.com/t/c/";
        let rewritten: Vec<String> = hrefs(&out)
            .into_iter()
            .filter(|h| h.starts_with(prefix))
            .collect();
        assert_eq!(rewritten.len(), DOC_LINKS.len());
        for (i, href) in rewritten.iter().enumerate() {
            let Some(Token::Click { message_id, link }) = k.verify(&href[prefix.len()..]) else {
                panic!("not a click token: {href}");
            };
            assert_eq!(message_id, id);
            assert_eq!(link, u32::try_from(i).unwrap());
            // The redirect target comes from the original HTML only.
            assert_eq!(link_at(DOC, link).as_deref(), Some(DOC_LINKS[i]));
        }
        // The instrumented HTML has no tracked links left that point elsewhere.
        assert!(tracked_links(&out).iter().all(|u| u.starts_with(prefix)));
        // Same input, same output.
        assert_eq!(
            instrument(DOC, "https://t.example.com", id, &k, true, true),
            out
        );
    }

    #[test]
    fn untracked_links_and_other_html_are_unchanged() {
        let k = keys();
        let out = instrument(
            DOC,
            "https://t.example.com",
            MessageId::new(),
            &k,
            false,
            true,
        );
        for kept in [
            "<a href=\"mailto:x@example.com\">mail</a> <a href=\"tel:+123\">tel</a>\n",
            "<a href=\"#top\">anchor</a> <a href=\"/relative\">rel</a> <a href=\"//proto.rel/x\">pr</a>\n",
            "<a href=\"javascript:alert(1)\">js</a> <a name=\"nohref\">name</a>\n",
            "<a data-cx-notrack href=\"https://example.com/unsubscribe\">unsub</a>\n",
            "<!-- <a href=\"https://comment.example/\">c</a> -->\n",
            "<script>var s = '<a href=\"https://script.example/\">';</script>\n",
            "<!DOCTYPE html>\n<html><head><title>Hi &amp; welcome</title>",
            "<img src=\"https://example.com/logo.png\" alt=\"logo\">\n</p></body></html>\n",
        ] {
            assert!(out.contains(kept), "lost {kept:?} in {out}");
        }
        // Replacing each rewritten href by its original gives back the input exactly, so
        // nothing outside the rewritten tags moved.
        let mut rebuilt = out.clone();
        for (tag_out, tag_in) in [
            (
                ">one",
                "<a href=\"https://example.com/a?x=1&amp;y=2\" class='btn'>one",
            ),
            (">caps", "<A HREF='HTTP://Example.com/Caps'>caps"),
            (
                ">non-ascii",
                "<a href=\"https://例え.jp/パス?q=ü\">non-ascii",
            ),
            (
                ">spaced",
                "<a href=\"  https://example.com/spaced\n  \">spaced",
            ),
            (">unquoted", "<a href=https://example.com/unquoted>unquoted"),
            (
                ">again",
                "<a href=\"https://example.com/a?x=1&amp;y=2\">again",
            ),
        ] {
            let end = rebuilt.find(tag_out).unwrap() + tag_out.len();
            let start = rebuilt[..end].rfind('<').unwrap();
            assert!(rebuilt[start..end].contains("https://t.example.com/t/c/"));
            rebuilt.replace_range(start..end, tag_in);
        }
        assert_eq!(rebuilt, DOC);
        // No pixel when opens are off, and nothing at all changes with both off.
        assert!(!out.contains("/t/o/"));
        assert_eq!(
            instrument(DOC, "https://t", MessageId::new(), &k, false, false),
            DOC
        );
    }

    #[test]
    fn pixel_goes_just_before_the_body_end_tag() {
        let k = keys();
        let id = MessageId::new();
        let html = "<html><body><p>Hello</p></body></html>";
        let out = instrument(html, "https://t.example.com", id, &k, true, false);
        let token = k.sign(&Token::Open { message_id: id });
        let pixel_start = format!(
            "<img src=\"https://t.example.com/t/o/{token}.gif\" width=\"1\" height=\"1\" alt=\"\""
        );
        let (before, after) = out.split_once(&pixel_start).unwrap();
        assert_eq!(before, "<html><body><p>Hello</p>");
        assert!(after.ends_with(" /></body></html>"), "{after}");
        assert_eq!(out.matches("<img").count(), 1);
        // Case-insensitive end tag, and a `</body>` inside a comment or script is not it.
        let html = "<BODY><!-- </body> --><script>'</body>'</script><p>x</p></BODY>\n";
        let out = instrument(html, "https://t.example.com", id, &k, true, false);
        assert!(out.starts_with("<BODY><!-- </body> --><script>'</body>'</script><p>x</p><img "));
        assert!(out.ends_with(" /></BODY>\n"));
        // The token in the pixel verifies as this message's open.
        let src = out
            .split("/t/o/")
            .nth(1)
            .unwrap()
            .split(".gif")
            .next()
            .unwrap();
        assert_eq!(k.verify(src), Some(Token::Open { message_id: id }));
    }

    #[test]
    fn pixel_is_appended_when_there_is_no_body_end_tag() {
        let k = keys();
        let id = MessageId::new();
        for html in ["<p>Just a fragment</p>", "<html><body><p>Unclosed", ""] {
            let out = instrument(html, "https://t.example.com", id, &k, true, false);
            let (before, after) = out.split_once("<img ").unwrap();
            assert_eq!(before, html);
            assert!(after.ends_with(" />"));
            assert!(after.contains("/t/o/"));
        }
        // Two body end tags (malformed): still a single pixel, at the first.
        let out = instrument(
            "<body>a</body><body>b</body>",
            "https://t",
            id,
            &k,
            true,
            false,
        );
        assert_eq!(out.matches("<img").count(), 1);
        assert!(out.starts_with("<body>a<img "));
    }

    #[test]
    fn base_url_is_escaped_in_attributes() {
        let k = keys();
        let out = instrument(
            "<a href=\"https://x.example/\">x</a>",
            "https://t.example.com/p?a=1&b=\"2\"",
            MessageId::new(),
            &k,
            true,
            true,
        );
        assert!(out.contains("href=\"https://t.example.com/p?a=1&amp;b=&quot;2&quot;/t/c/"));
        assert!(out.contains("src=\"https://t.example.com/p?a=1&amp;b=&quot;2&quot;/t/o/"));
    }

    const CHROME: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0.0.0 Safari/537.36";
    const APPLE_MAIL: &str =
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)";
    const GMAIL_PROXY: &str =
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)";
    const YAHOO_PROXY: &str =
        "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html";

    #[test]
    fn opens_are_classified() {
        let minute = Some(60_000);
        for (ua, when, expected) in [
            (Some(CHROME), minute, OpenSource::Human),
            (Some(APPLE_MAIL), minute, OpenSource::Human),
            (Some(APPLE_MAIL), None, OpenSource::Human),
            (
                Some(APPLE_MAIL),
                Some(1_500),
                OpenSource::Prefetch("too-soon"),
            ),
            (Some(APPLE_MAIL), Some(2_000), OpenSource::Human),
            (
                Some("Mozilla/5.0"),
                minute,
                OpenSource::Prefetch("apple-mail-privacy"),
            ),
            (
                Some(" mozilla/5.0 "),
                minute,
                OpenSource::Prefetch("apple-mail-privacy"),
            ),
            (
                Some(GMAIL_PROXY),
                minute,
                OpenSource::Proxy("google-image-proxy"),
            ),
            (
                Some(GMAIL_PROXY),
                Some(500),
                OpenSource::Proxy("google-image-proxy"),
            ),
            (
                Some(YAHOO_PROXY),
                minute,
                OpenSource::Proxy("yahoo-mail-proxy"),
            ),
            (
                Some("Barracuda Sentinel (EE)"),
                minute,
                OpenSource::Prefetch("barracuda"),
            ),
            (
                Some("Mimecast-URL-Protect/1.0"),
                minute,
                OpenSource::Prefetch("mimecast"),
            ),
            (
                Some(
                    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/120.0.0.0 Safari/537.36",
                ),
                minute,
                OpenSource::Prefetch("headless-browser"),
            ),
            (
                Some("curl/8.5.0"),
                minute,
                OpenSource::Prefetch("http-library"),
            ),
            (
                Some("python-requests/2.31.0"),
                minute,
                OpenSource::Prefetch("http-library"),
            ),
            (
                Some("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"),
                minute,
                OpenSource::Prefetch("crawler"),
            ),
            (
                Some("Mozilla/4.0 (compatible;)"),
                minute,
                OpenSource::Prefetch("security-gateway"),
            ),
            (None, minute, OpenSource::Prefetch("no-user-agent")),
            (Some("  "), minute, OpenSource::Prefetch("no-user-agent")),
        ] {
            assert_eq!(classify_open(ua, when), expected, "{ua:?} {when:?}");
        }
    }

    #[test]
    fn clicks_are_classified() {
        let minute = Some(60_000);
        for (ua, when, expected) in [
            (Some(CHROME), minute, ClickSource::Human),
            (Some(CHROME), None, ClickSource::Human),
            (Some(CHROME), Some(1_999), ClickSource::Scanner("too-soon")),
            (Some(CHROME), Some(-5_000), ClickSource::Scanner("too-soon")),
            (
                Some(
                    "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534+ (KHTML, like Gecko) BingPreview/1.0b",
                ),
                minute,
                ClickSource::Scanner("microsoft-link-preview"),
            ),
            (
                Some("Microsoft Office Existence Discovery"),
                minute,
                ClickSource::Scanner("microsoft-office-probe"),
            ),
            (
                Some("Proofpoint URL Defense"),
                minute,
                ClickSource::Scanner("proofpoint"),
            ),
            (
                Some("Go-http-client/2.0"),
                minute,
                ClickSource::Scanner("http-library"),
            ),
            (
                Some("Mozilla/5.0"),
                minute,
                ClickSource::Scanner("bare-user-agent"),
            ),
            (
                Some(GMAIL_PROXY),
                minute,
                ClickSource::Scanner("google-image-proxy"),
            ),
            (None, minute, ClickSource::Scanner("no-user-agent")),
        ] {
            assert_eq!(classify_click(ua, when), expected, "{ua:?} {when:?}");
        }
    }
}
