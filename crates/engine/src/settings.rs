//! Project email settings (defaults and policy applied to every message of a project) and
//! provider options that apply to any provider type (pacing, circuit breaker).

use crate::breaker::BreakerConfig;
use courierx_domain::{
    Category, DomainName, EmailAddress, HeaderName, HeaderValue, Mailbox, ValidationErrors,
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use utoipa::ToSchema;

const MAX_TAGS: usize = 20;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// Sender used when a message has no `from`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_from: Option<String>,
    /// `Reply-To` used when a message has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Headers added to every message; a message's own header of the same name wins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_headers: BTreeMap<String, String>,
    /// Tags added to every message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// When set, a `from` outside these domains is refused (422) unless the message would go
    /// only through the sandbox provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_from_domains: Vec<String>,
    /// Adds a 1×1 tracking image to HTML messages (`opened` events).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_opens: bool,
    /// Rewrites HTML links through CourierX (`clicked` events).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub track_clicks: bool,
    /// The categories messages may carry. Non-transactional ones get RFC 8058 one-click
    /// `List-Unsubscribe` headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub categories: BTreeMap<String, CategorySettings>,
    /// Address for `mailto:` unsubscribes in `List-Unsubscribe`, besides the HTTPS URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsubscribe_mailto: Option<String>,
    /// Soft bounces within 7 days that suppress an address (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soft_bounce_threshold: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategorySettings {
    /// Transactional mail (receipts, password resets) carries no unsubscribe headers and
    /// ignores category unsubscribes; only suppressions for all mail stop it.
    #[serde(default)]
    pub transactional: bool,
}

pub const DEFAULT_SOFT_BOUNCE_THRESHOLD: u32 = 3;

/// Settings parsed into domain types, ready to apply to messages.
#[derive(Debug, Clone, Default)]
pub struct ParsedSettings {
    pub default_from: Option<Mailbox>,
    pub reply_to: Option<Mailbox>,
    pub custom_headers: Vec<(HeaderName, HeaderValue)>,
    pub tags: Vec<String>,
    pub allowed_from_domains: Vec<DomainName>,
    pub track_opens: bool,
    pub track_clicks: bool,
    /// Category name → transactional.
    pub categories: BTreeMap<Category, bool>,
    pub unsubscribe_mailto: Option<EmailAddress>,
    soft_bounce_threshold: Option<u32>,
}

impl EmailSettings {
    /// Checks every field (errors named `email_settings.<field>`) and returns the normalised
    /// settings with their parsed form.
    pub fn parse(mut self) -> Result<(Self, ParsedSettings), ValidationErrors> {
        let mut errs = ValidationErrors::new();
        let p = "email_settings";
        let default_from = self
            .default_from
            .as_deref()
            .and_then(|f| errs.check(&format!("{p}.default_from"), Mailbox::parse(f)));
        let reply_to = self
            .reply_to
            .as_deref()
            .and_then(|f| errs.check(&format!("{p}.reply_to"), Mailbox::parse(f)));
        let mut custom_headers = Vec::new();
        if self.custom_headers.len() > 50 {
            errs.add(format!("{p}.custom_headers"), "at most 50 headers");
        }
        for (n, v) in &self.custom_headers {
            let field = format!("{p}.custom_headers.{n}");
            let name = errs.check(&field, HeaderName::parse(n));
            let value = errs.check(&field, HeaderValue::parse(v));
            if let (Some(n), Some(v)) = (name, value) {
                custom_headers.push((n, v));
            }
        }
        if self.tags.len() > MAX_TAGS {
            errs.add(format!("{p}.tags"), format!("at most {MAX_TAGS} tags"));
        }
        for (i, t) in self.tags.iter().enumerate() {
            if t.is_empty() || t.len() > 64 || t.chars().any(char::is_control) {
                errs.add(
                    format!("{p}.tags[{i}]"),
                    "must be 1 to 64 characters without control characters",
                );
            }
        }
        let mut allowed = Vec::new();
        if self.allowed_from_domains.len() > 100 {
            errs.add(format!("{p}.allowed_from_domains"), "at most 100 domains");
        }
        for (i, d) in self.allowed_from_domains.iter().enumerate() {
            if let Some(dn) = errs.check(
                &format!("{p}.allowed_from_domains[{i}]"),
                DomainName::parse(d),
            ) {
                allowed.push(dn);
            }
        }
        if let (Some(f), false) = (&default_from, allowed.is_empty())
            && !allowed.iter().any(|d| d.as_str() == f.address.domain())
        {
            errs.add(
                format!("{p}.default_from"),
                "its domain is not in allowed_from_domains",
            );
        }
        let mut categories = BTreeMap::new();
        if self.categories.len() > 50 {
            errs.add(format!("{p}.categories"), "at most 50 categories");
        }
        for (name, c) in &self.categories {
            if let Some(cat) = errs.check(&format!("{p}.categories.{name}"), Category::parse(name))
            {
                categories.insert(cat, c.transactional);
            }
        }
        let unsubscribe_mailto = self
            .unsubscribe_mailto
            .as_deref()
            .and_then(|m| errs.check(&format!("{p}.unsubscribe_mailto"), EmailAddress::parse(m)));
        if let Some(t) = self.soft_bounce_threshold
            && !(1..=100).contains(&t)
        {
            errs.add(format!("{p}.soft_bounce_threshold"), "must be 1 to 100");
        }
        errs.into_result()?;
        self.allowed_from_domains = allowed.iter().map(|d| d.to_string()).collect();
        let parsed = ParsedSettings {
            default_from,
            reply_to,
            custom_headers,
            tags: self.tags.clone(),
            allowed_from_domains: allowed,
            track_opens: self.track_opens,
            track_clicks: self.track_clicks,
            categories,
            unsubscribe_mailto,
            soft_bounce_threshold: self.soft_bounce_threshold,
        };
        Ok((self, parsed))
    }
}

impl ParsedSettings {
    /// Whether a message of this category gets unsubscribe headers: declared and not
    /// transactional.
    pub fn unsubscribable(&self, category: &Category) -> bool {
        self.categories.get(category) == Some(&false)
    }

    /// Soft bounces within 7 days that suppress an address.
    pub fn soft_bounce_threshold(&self) -> u32 {
        self.soft_bounce_threshold
            .unwrap_or(DEFAULT_SOFT_BOUNCE_THRESHOLD)
    }

    pub fn from_allowed(&self, from: &Mailbox) -> bool {
        self.allowed_from_domains.is_empty()
            || self
                .allowed_from_domains
                .iter()
                .any(|d| d.as_str() == from.address.domain())
    }
}

/// Options every provider has, whatever its type.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProviderOptions {
    /// Most messages per second this process hands to the provider; more wait their turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_second: Option<f64>,
    #[serde(default)]
    pub circuit_breaker: BreakerConfig,
}

impl ProviderOptions {
    pub fn check(&self, errs: &mut ValidationErrors) {
        if let Some(r) = self.rate_per_second
            && !(0.01..=100_000.0).contains(&r)
        {
            errs.add("rate_per_second", "must be 0.01 to 100000");
        }
        if !(1..=1000).contains(&self.circuit_breaker.failure_threshold) {
            errs.add("circuit_breaker.failure_threshold", "must be 1 to 1000");
        }
        if !(100..=3_600_000).contains(&self.circuit_breaker.cooldown_ms) {
            errs.add("circuit_breaker.cooldown_ms", "must be 100 to 3600000");
        }
    }
}
