//! What the HTTP API providers share: one reqwest client per provider instance, checks for the
//! common config fields, bounded reads of provider answers and the default reading of an HTTP
//! status as a [`SendError`].

use crate::SendError;
use courierx_domain::ValidationErrors;
use reqwest::{RequestBuilder, StatusCode, header::HeaderMap};
use serde_json::{Map, Value};
use std::time::Duration;

pub(crate) fn default_timeout() -> u64 {
    10_000
}

/// Provider answers are small JSON documents; anything longer is cut here.
const MAX_BODY: usize = 256 * 1024;
/// Longest provider message quoted in an error string.
const MAX_DETAIL: usize = 300;

/// A client with the provider's timeout. Redirects are not followed: an API that redirects is
/// not the API the config names, and the auth headers must not travel elsewhere.
pub(crate) fn client(timeout_ms: u64) -> Result<reqwest::Client, ValidationErrors> {
    reqwest::Client::builder()
        .timeout(Duration::from_millis(timeout_ms))
        .connect_timeout(Duration::from_millis(timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("CourierX/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| ValidationErrors::single("config", format!("cannot build HTTP client: {e}")))
}

pub(crate) fn check_timeout(errs: &mut ValidationErrors, timeout_ms: u64) {
    if !(100..=300_000).contains(&timeout_ms) {
        errs.add("config.timeout_ms", "must be 100 to 300000");
    }
}

/// Checks an optional `base_url` and returns it without trailing slashes, so paths can be
/// appended as `{base}/v3/...`.
pub(crate) fn check_base_url(errs: &mut ValidationErrors, value: Option<&str>) -> Option<String> {
    let raw = value?;
    let problem = match reqwest::Url::parse(raw) {
        Err(e) => Some(format!("is not a URL: {e}")),
        Ok(u) if !matches!(u.scheme(), "http" | "https") => Some("must be an http(s) URL".into()),
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("has no host".into()),
        Ok(u) if !u.username().is_empty() || u.password().is_some() => {
            Some("must not contain credentials".into())
        }
        Ok(u) if u.query().is_some() || u.fragment().is_some() => {
            Some("must not have a query or fragment".into())
        }
        Ok(u) => return Some(u.as_str().trim_end_matches('/').to_string()),
    };
    if let Some(p) = problem {
        errs.add("config.base_url", p);
    }
    None
}

/// A credential must be present and fit in an HTTP header as is.
pub(crate) fn check_secret(errs: &mut ValidationErrors, field: &str, value: &str) {
    if value.is_empty() {
        errs.add(format!("config.{field}"), "is required");
    } else if value.len() > 4096 || !value.bytes().all(|b| b.is_ascii_graphic()) {
        errs.add(
            format!("config.{field}"),
            "must be printable ASCII without spaces",
        );
    }
}

/// A provider's HTTP answer, read completely (up to [`MAX_BODY`]).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as a short one-line quote, for answers without a structured error.
    pub fn snippet(&self) -> String {
        let text = self.body.split_whitespace().collect::<Vec<_>>().join(" ");
        if text.is_empty() {
            self.status
                .canonical_reason()
                .unwrap_or("no message")
                .to_string()
        } else {
            text
        }
    }
}

/// Sends a request and reads the answer. Failures to connect, time-outs and broken answers are
/// transient: the provider may be back on the next attempt. A request that cannot even be built
/// (say, a header value with a line break) would fail the same way every time.
pub(crate) async fn exchange(provider: &str, req: RequestBuilder) -> Result<Answer, SendError> {
    let transport = |e: reqwest::Error| {
        let text = format!("{provider}: {}", describe(&e));
        if e.is_builder() {
            SendError::Permanent(text)
        } else {
            SendError::Transient(text)
        }
    };
    let mut resp = req.send().await.map_err(transport)?;
    let status = resp.status();
    let headers = resp.headers().clone();
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(transport)? {
        let room = MAX_BODY - body.len();
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if body.len() == MAX_BODY {
            break;
        }
    }
    Ok(Answer {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// reqwest's own message ("error sending request") hides the cause; name it instead. URLs are
/// left out: they add length, not meaning.
fn describe(e: &reqwest::Error) -> String {
    let what = if e.is_builder() {
        "cannot build request"
    } else if e.is_timeout() {
        "request timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "broken response"
    } else {
        "request failed"
    };
    let mut root = None;
    let mut next = std::error::Error::source(e);
    while let Some(cause) = next {
        root = Some(cause);
        next = cause.source();
    }
    match root {
        Some(cause) => format!("{what}: {cause}"),
        None => what.to_string(),
    }
}

/// The default reading of a status: rate limits, time-outs and server errors are retried;
/// 401/403 mean the key or account is broken, so the provider (not the message) is at fault;
/// other 4xx refuse this message. Anything else (a redirect, an informational answer) means
/// `base_url` does not point at the API.
pub(crate) fn classify(status: StatusCode, text: String) -> SendError {
    match status.as_u16() {
        408 | 425 | 429 | 500..=599 => SendError::Transient(text),
        401 | 403 => SendError::ProviderDown(text),
        400..=499 => SendError::Permanent(text),
        _ => SendError::ProviderDown(text),
    }
}

/// Shortens a provider's message and blanks out any credential it echoes back.
pub(crate) fn detail(text: &str, secrets: &[&str]) -> String {
    let mut out = text.trim().to_string();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        out = out.replace(s, "[redacted]");
    }
    if out.chars().count() > MAX_DETAIL {
        out = out.chars().take(MAX_DETAIL).collect::<String>() + "…";
    }
    out
}

/// Metadata values as strings: strings as they are, anything else as its JSON text.
pub(crate) fn metadata_strings(m: &Map<String, Value>) -> impl Iterator<Item = (&str, String)> {
    m.iter().map(|(k, v)| {
        let s = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        (k.as_str(), s)
    })
}

/// SES and Resend tag names and values allow only ASCII letters, digits, `_` and `-`, up to 256
/// characters: other characters become `_`.
pub(crate) fn tag_token(s: &str) -> Option<String> {
    let out: String = s
        .trim()
        .chars()
        .take(256)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    (!out.is_empty()).then_some(out)
}

/// Name/value tags for SES and Resend: each tag as `name=true`, then string metadata as
/// `key=value`; first name wins, at most 50.
pub(crate) fn name_value_tags(
    tags: &[String],
    metadata: &Map<String, Value>,
) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let tags = tags.iter().map(|t| (t.as_str(), "true".to_string()));
    for (name, value) in tags.chain(metadata_strings(metadata)) {
        if out.len() == 50 {
            break;
        }
        if let (Some(n), Some(v)) = (tag_token(name), tag_token(&value))
            && !out.iter().any(|(seen, _)| *seen == n)
        {
            out.push((n, v));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_is_normalised_and_checked() {
        let mut errs = ValidationErrors::new();
        assert_eq!(
            check_base_url(&mut errs, Some("https://api.example.test/")).as_deref(),
            Some("https://api.example.test")
        );
        assert_eq!(
            check_base_url(&mut errs, Some("http://127.0.0.1:8080/proxy/")).as_deref(),
            Some("http://127.0.0.1:8080/proxy")
        );
        assert!(errs.is_empty());
        for bad in [
            "ftp://x.test",
            "not a url",
            "https://user:pw@x.test",
            "https://x.test/?a=1",
        ] {
            let mut errs = ValidationErrors::new();
            assert_eq!(check_base_url(&mut errs, Some(bad)), None, "{bad}");
            assert_eq!(errs.0[0].field, "config.base_url", "{bad}");
        }
    }

    #[test]
    fn statuses_are_classified() {
        let kind = |s: u16| match classify(StatusCode::from_u16(s).unwrap(), String::new()) {
            SendError::Transient(_) => "transient",
            SendError::Permanent(_) => "permanent",
            SendError::ProviderDown(_) => "down",
        };
        assert_eq!(kind(429), "transient");
        assert_eq!(kind(503), "transient");
        assert_eq!(kind(400), "permanent");
        assert_eq!(kind(422), "permanent");
        assert_eq!(kind(401), "down");
        assert_eq!(kind(403), "down");
        assert_eq!(kind(302), "down");
    }

    #[test]
    fn detail_redacts_and_truncates() {
        let long = "x".repeat(1000);
        assert_eq!(detail(&long, &[]).chars().count(), MAX_DETAIL + 1);
        assert_eq!(
            detail("bad key SG.secret here", &["SG.secret"]),
            "bad key [redacted] here"
        );
    }

    #[test]
    fn tags_are_sanitised_and_deduplicated() {
        assert_eq!(tag_token("Spring sale!").as_deref(), Some("Spring_sale_"));
        assert_eq!(tag_token("  "), None);
        assert_eq!(tag_token(&"a".repeat(300)).map(|s| s.len()), Some(256));
        let meta = serde_json::json!({"plan": "pro tier", "welcome": "x", "n": 3});
        let tags = name_value_tags(
            &["welcome".into(), "welcome".into()],
            meta.as_object().unwrap(),
        );
        let mut tags: Vec<_> = tags.iter().map(|(n, v)| format!("{n}={v}")).collect();
        tags.sort();
        assert_eq!(tags, ["n=3", "plan=pro_tier", "welcome=true"]);
    }
}

/// The config of a provider that needs only an API key (SendGrid, Resend).
// No Debug: the config holds credentials.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    #[serde(default)]
    pub api_key: String,
    /// The provider's public API (or a regional one) when absent.
    pub base_url: Option<String>,
    #[serde(default = "default_timeout")]
    pub timeout_ms: u64,
    /// What the provider's event webhook is verified with (SendGrid: the ECDSA verification
    /// key; Resend: the `whsec_` signing secret). Without it, webhook calls are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_signing_key: Option<String>,
}

/// Checks an API-key config; `check_webhook_key` checks the provider's webhook key format.
pub fn validate_api_key_config(
    v: &Value,
    check_webhook_key: fn(&str) -> Result<(), String>,
) -> Result<Value, ValidationErrors> {
    let mut c: ApiKeyConfig = crate::parse_config(v)?;
    let mut errs = ValidationErrors::new();
    check_secret(&mut errs, "api_key", &c.api_key);
    c.webhook_signing_key = c
        .webhook_signing_key
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty());
    if let Some(k) = &c.webhook_signing_key
        && let Err(e) = check_webhook_key(k)
    {
        errs.add("config.webhook_signing_key", e);
    }
    c.base_url = check_base_url(&mut errs, c.base_url.as_deref());
    check_timeout(&mut errs, c.timeout_ms);
    errs.into_result()?;
    serde_json::to_value(&c).map_err(|e| ValidationErrors::single("config", e.to_string()))
}
