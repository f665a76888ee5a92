//! Small string newtypes that carry their validation with them.

use std::fmt;

/// A URL-safe identifier derived from a name: lowercase ASCII letters, digits and single dashes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct Slug(String);

impl Slug {
    /// Derives a slug from a display name; falls back to `fallback` when nothing usable remains.
    pub fn from_name(name: &str, fallback: &str) -> Self {
        let mut out = String::new();
        for c in name.chars().flat_map(|c| c.to_lowercase()) {
            if c.is_ascii_alphanumeric() {
                out.push(c);
            } else if !out.is_empty() && !out.ends_with('-') {
                out.push('-');
            }
        }
        let trimmed: String = out.trim_end_matches('-').chars().take(48).collect();
        let trimmed = trimmed.trim_end_matches('-');
        Self(if trimmed.is_empty() {
            fallback.to_string()
        } else {
            trimmed.to_string()
        })
    }

    pub fn with_suffix(&self, n: u32) -> Self {
        Self(format!("{}-{n}", self.0))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A password that meets the policy (12 to 1024 characters). Never printed.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub const MIN_CHARS: usize = 12;

    pub fn parse(s: &str) -> Result<Self, String> {
        let n = s.chars().count();
        if n < Self::MIN_CHARS {
            return Err(format!("must be at least {} characters", Self::MIN_CHARS));
        }
        if n > 1024 {
            return Err("must be at most 1024 characters".into());
        }
        Ok(Self(s.to_string()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(********)")
    }
}

/// Headers CourierX writes itself; a caller may not set them through `headers`.
const RESERVED_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "subject",
    "message-id",
    "date",
    "mime-version",
    "reply-to",
    "sender",
    "return-path",
];

/// A custom header name a caller may set: RFC 5322 field-name characters, not one CourierX owns.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct HeaderName(String);

impl HeaderName {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 76 {
            return Err("header name must be 1 to 76 characters".into());
        }
        if !s.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err("header name may only contain printable ASCII without `:`".into());
        }
        let lower = s.to_ascii_lowercase();
        if RESERVED_HEADERS.contains(&lower.as_str()) || lower.starts_with("content-") {
            return Err(format!(
                "header `{s}` is set by CourierX and cannot be overridden"
            ));
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A single-line header value (no CR or LF, so no header injection).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct HeaderValue(String);

impl HeaderValue {
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.contains(['\r', '\n']) {
            return Err("must not contain CR or LF".into());
        }
        if s.len() > 998 {
            return Err("must be at most 998 characters".into());
        }
        Ok(Self(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs() {
        assert_eq!(
            Slug::from_name("  Acme Corp, Inc. ", "x").as_str(),
            "acme-corp-inc"
        );
        assert_eq!(Slug::from_name("!!!", "project").as_str(), "project");
    }

    #[test]
    fn headers() {
        assert!(HeaderName::parse("X-Campaign").is_ok());
        assert!(HeaderName::parse("Bcc").is_err());
        assert!(HeaderName::parse("content-type").is_err());
        assert!(HeaderValue::parse("a\r\nBcc: x").is_err());
        assert!(Password::parse("short").is_err());
    }
}
