//! Email addresses parsed once at the edge (RFC 5322 `addr-spec`, with an optional display name).

use serde::{Serialize, Serializer};
use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("must not be empty")]
    Empty,
    #[error("is not a valid email address")]
    Invalid,
    #[error("is too long")]
    TooLong,
    #[error("is not a valid domain name")]
    InvalidDomain,
    #[error("must not contain control characters or line breaks")]
    Control,
}

/// A bare address (`local@domain`): dot-atom local part, a domain of LDH labels with at least one dot.
/// The domain is kept lower-cased; the local part as given (it may be case-sensitive).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EmailAddress(String);

fn is_atext(c: char) -> bool {
    c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~".contains(c)
}

impl EmailAddress {
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if s.chars().any(|c| c.is_control()) {
            return Err(EmailError::Control);
        }
        if s.len() > 254 {
            return Err(EmailError::TooLong);
        }
        let (local, domain) = s.rsplit_once('@').ok_or(EmailError::Invalid)?;
        if local.is_empty()
            || local.len() > 64
            || !local
                .split('.')
                .all(|a| !a.is_empty() && a.chars().all(is_atext))
        {
            return Err(EmailError::Invalid);
        }
        if !is_domain(domain) {
            return Err(EmailError::Invalid);
        }
        Ok(Self(format!("{local}@{}", domain.to_ascii_lowercase())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn domain(&self) -> &str {
        self.0.rsplit_once('@').map(|(_, d)| d).unwrap_or("")
    }
}

/// LDH labels, at least two, and a top-level label that is not all digits.
fn is_domain(domain: &str) -> bool {
    let labels: Vec<&str> = domain.split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    domain.len() <= 253
        && labels.len() >= 2
        && labels.iter().all(label_ok)
        && !labels
            .last()
            .is_some_and(|t| t.chars().all(|c| c.is_ascii_digit()))
}

/// A lower-cased DNS domain name such as `mail.acme.com` (the domain part of an address).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let s = input.trim();
        if s.is_empty() {
            return Err(EmailError::Empty);
        }
        if !is_domain(s) {
            return Err(EmailError::InvalidDomain);
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for EmailAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for EmailAddress {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// An address with an optional display name: `Ada Lovelace <ada@example.com>` or `ada@example.com`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    pub name: Option<String>,
    pub address: EmailAddress,
}

impl Mailbox {
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let s = input.trim();
        if s.chars().any(|c| c.is_control()) {
            return Err(EmailError::Control);
        }
        if let Some(open) = s.rfind('<') {
            let rest = &s[open + 1..];
            let close = rest.find('>').ok_or(EmailError::Invalid)?;
            if !rest[close + 1..].trim().is_empty() {
                return Err(EmailError::Invalid);
            }
            let address = EmailAddress::parse(&rest[..close])?;
            let raw_name = s[..open].trim();
            let name = if let Some(q) = raw_name.strip_prefix('"') {
                let inner = q.strip_suffix('"').ok_or(EmailError::Invalid)?;
                inner.replace("\\\"", "\"").replace("\\\\", "\\")
            } else {
                if raw_name.contains(['<', '>', '"']) {
                    return Err(EmailError::Invalid);
                }
                raw_name.to_string()
            };
            if name.len() > 256 {
                return Err(EmailError::TooLong);
            }
            Ok(Self {
                name: (!name.is_empty()).then_some(name),
                address,
            })
        } else {
            Ok(Self {
                name: None,
                address: EmailAddress::parse(s)?,
            })
        }
    }
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => {
                let needs_quotes = n
                    .chars()
                    .any(|c| !(c.is_alphanumeric() || c == ' ' || is_atext(c)));
                if needs_quotes {
                    write!(
                        f,
                        "\"{}\" <{}>",
                        n.replace('\\', "\\\\").replace('"', "\\\""),
                        self.address
                    )
                } else {
                    write!(f, "{n} <{}>", self.address)
                }
            }
            None => write!(f, "{}", self.address),
        }
    }
}

impl Serialize for Mailbox {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_named() {
        assert_eq!(
            EmailAddress::parse(" Bob@Example.COM ").unwrap().as_str(),
            "Bob@example.com"
        );
        let m = Mailbox::parse("Ada Lovelace <ada@example.com>").unwrap();
        assert_eq!(m.name.as_deref(), Some("Ada Lovelace"));
        assert_eq!(m.to_string(), "Ada Lovelace <ada@example.com>");
        let q = Mailbox::parse("\"Doe, Jane\" <jane@example.org>").unwrap();
        assert_eq!(q.name.as_deref(), Some("Doe, Jane"));
        assert_eq!(q.to_string(), "\"Doe, Jane\" <jane@example.org>");
        assert_eq!(Mailbox::parse(&q.to_string()).unwrap(), q);
    }

    #[test]
    fn rejects_bad_addresses() {
        for bad in [
            "",
            "plain",
            "a@b",
            "a@@b.com",
            ".a@b.com",
            "a..b@c.com",
            "a@-b.com",
            "a@b.123",
            "a b@c.com",
            "x@y.com\r\nBcc: evil@z.com",
            "Name <a@b.com> trailing",
            "<a@b.com",
        ] {
            assert!(Mailbox::parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
