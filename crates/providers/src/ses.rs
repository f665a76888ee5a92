//! Amazon SES through the v2 HTTP API: `SendEmail` with the MIME we render as `Content.Raw`,
//! signed with SigV4 (service name `ses`). No AWS SDK: one signed JSON request per message.
//!
//! Events come back through Amazon SNS: point a configuration set's SNS event destination (or
//! an identity's bounce/complaint/delivery notifications) at a topic, and subscribe this
//! provider's webhook URL to it over HTTPS. Each SNS message is verified against its signing
//! certificate (see [`crate::webhooks::ses`]) and subscription confirmations are answered
//! automatically.
//!
//! Webhook config:
//! - `sns_topic_arns`: the SNS topic ARNs (`arn:aws:sns:<region>:<account>:<name>`) whose
//!   messages this provider accepts; any other topic is refused as unauthorized, confirmation
//!   included. Empty (the default) accepts any topic: SNS's signature proves the message came
//!   from SNS, not that the topic is yours, so set it in production.

use crate::http::{self, Answer};
use crate::{
    EmailProvider, HealthReport, OutboundEmail, ProviderKind, SendError, SendReceipt, parse_config,
};
use async_trait::async_trait;
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine;
use courierx_domain::{Mailbox, ValidationErrors};
use reqwest::{Method, RequestBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::SystemTime;

pub static KIND: ProviderKind = ProviderKind {
    name: "ses",
    secret_fields: &["secret_access_key", "session_token"],
    validate,
    build,
    delivers_externally: true,
    webhook: Some(crate::webhooks::ses::parse),
};

/// SES takes 1 to 50 recipients per message.
const MAX_RECIPIENTS: usize = 50;

// No Debug: the config holds credentials.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SesConfig {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub secret_access_key: String,
    /// For temporary (STS) credentials.
    pub session_token: Option<String>,
    pub configuration_set: Option<String>,
    /// `https://email.{region}.amazonaws.com` when absent.
    pub base_url: Option<String>,
    #[serde(default = "http::default_timeout")]
    pub timeout_ms: u64,
    /// SNS topics whose event messages the webhook accepts; empty: any topic.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sns_topic_arns: Vec<String>,
}

/// `arn:<partition>:sns:<region>:<12-digit account>:<topic>`, the topic name being letters,
/// digits, `-` and `_` (up to 256, `.fifo` allowed at the end).
fn topic_arn_ok(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    let [prefix, partition, service, region, account, topic] = parts.as_slice() else {
        return false;
    };
    let name = topic.strip_suffix(".fifo").unwrap_or(topic);
    *prefix == "arn"
        && partition.starts_with("aws")
        && partition
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '-')
        && *service == "sns"
        && region_ok(region)
        && account.len() == 12
        && account.chars().all(|c| c.is_ascii_digit())
        && !name.is_empty()
        && topic.len() <= 256
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// `us-east-1`, `ap-southeast-2`, `us-gov-west-1`: lowercase words and a number.
fn region_ok(r: &str) -> bool {
    let parts: Vec<&str> = r.split('-').collect();
    parts.len() >= 3
        && parts.iter().all(|p| !p.is_empty())
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_lowercase()))
        && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
}

fn validate(v: &Value) -> Result<Value, ValidationErrors> {
    let mut c: SesConfig = parse_config(v)?;
    let mut errs = ValidationErrors::new();
    if !region_ok(&c.region) {
        errs.add("config.region", "must be an AWS region such as eu-west-1");
    }
    http::check_secret(&mut errs, "access_key_id", &c.access_key_id);
    http::check_secret(&mut errs, "secret_access_key", &c.secret_access_key);
    c.session_token = c.session_token.filter(|t| !t.is_empty());
    if let Some(t) = &c.session_token {
        http::check_secret(&mut errs, "session_token", t);
    }
    c.configuration_set = c.configuration_set.filter(|s| !s.is_empty());
    if let Some(set) = &c.configuration_set
        && (set.len() > 64
            || !set
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'))
    {
        errs.add(
            "config.configuration_set",
            "must be a configuration set name (letters, digits, - and _, up to 64)",
        );
    }
    c.base_url = http::check_base_url(&mut errs, c.base_url.as_deref());
    for (i, arn) in c.sns_topic_arns.iter().enumerate() {
        if !topic_arn_ok(arn) {
            errs.add(
                format!("config.sns_topic_arns[{i}]"),
                "must be an SNS topic ARN such as arn:aws:sns:eu-west-1:123456789012:ses-events",
            );
        }
    }
    http::check_timeout(&mut errs, c.timeout_ms);
    errs.into_result()?;
    serde_json::to_value(&c).map_err(|e| ValidationErrors::single("config", e.to_string()))
}

fn build(v: &Value) -> Result<Arc<dyn EmailProvider>, ValidationErrors> {
    let c: SesConfig = parse_config(&validate(v)?)?;
    let base = c
        .base_url
        .unwrap_or_else(|| format!("https://email.{}.amazonaws.com", c.region));
    let identity = Credentials::new(
        c.access_key_id,
        c.secret_access_key.clone(),
        c.session_token.clone(),
        None,
        "courierx",
    )
    .into();
    Ok(Arc::new(Ses {
        client: http::client(c.timeout_ms)?,
        base,
        region: c.region,
        identity,
        configuration_set: c.configuration_set,
        secrets: [Some(c.secret_access_key), c.session_token]
            .into_iter()
            .flatten()
            .collect(),
    }))
}

pub struct Ses {
    client: reqwest::Client,
    base: String,
    region: String,
    identity: Identity,
    configuration_set: Option<String>,
    /// Blanked out of any provider message quoted in an error.
    secrets: Vec<String>,
}

fn bare(list: &[Mailbox]) -> Value {
    list.iter().map(|m| m.address.as_str()).collect()
}

impl Ses {
    /// A request to `path` signed for this moment. Only `content-type` is signed besides what
    /// SigV4 requires (`host`, `x-amz-date`, the session token): reqwest adds the rest later.
    fn signed(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<RequestBuilder, SendError> {
        let sign_err = |e: &dyn std::fmt::Display| {
            SendError::ProviderDown(format!("ses: cannot sign request: {e}"))
        };
        let url = format!("{}{path}", self.base);
        let headers: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        let signable = SignableRequest::new(
            method.as_str(),
            url.as_str(),
            headers.iter().copied(),
            SignableBody::Bytes(&body),
        )
        .map_err(|e| sign_err(&e))?;
        let params: aws_sigv4::http_request::SigningParams<'_> = v4::SigningParams::builder()
            .identity(&self.identity)
            .region(&self.region)
            .name("ses")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| sign_err(&e))?
            .into();
        let (instructions, _signature) = sign(signable, &params)
            .map_err(|e| sign_err(&e))?
            .into_parts();
        let mut req = self.client.request(method, &url);
        for (name, value) in headers.iter().copied().chain(instructions.headers()) {
            req = req.header(name, value);
        }
        Ok(req.body(body))
    }

    /// The error type comes in `x-amzn-ErrorType` (`Name:namespace`), the text in the body's
    /// `message`.
    fn error(&self, a: &Answer) -> SendError {
        let json = a.json();
        let kind = a
            .header("x-amzn-errortype")
            .or_else(|| json["__type"].as_str())
            .and_then(|t| t.split(':').next())
            .map(|t| t.rsplit('#').next().unwrap_or(t))
            .unwrap_or("")
            .to_string();
        let message = json["message"]
            .as_str()
            .or_else(|| json["Message"].as_str())
            .map(str::to_string)
            .unwrap_or_else(|| a.snippet());
        let secrets: Vec<&str> = self.secrets.iter().map(String::as_str).collect();
        let message = http::detail(&message, &secrets);
        let text = if kind.is_empty() {
            format!("ses {}: {message}", a.status.as_u16())
        } else {
            format!("ses {} {kind}: {message}", a.status.as_u16())
        };
        match kind.as_str() {
            "TooManyRequestsException"
            | "LimitExceededException"
            | "ThrottlingException"
            | "Throttling"
            | "ServiceUnavailable"
            | "InternalFailure" => SendError::Transient(text),
            // The account, the credentials or the configured set, not this message.
            "AccountSuspendedException"
            | "SendingPausedException"
            | "SignatureDoesNotMatch"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "UnrecognizedClientException"
            | "InvalidClientTokenId"
            | "MissingAuthenticationToken"
            | "ExpiredToken"
            | "ExpiredTokenException"
            | "AccessDeniedException"
            | "NotFoundException" => SendError::ProviderDown(text),
            "MessageRejected" | "MailFromDomainNotVerifiedException" | "BadRequestException" => {
                SendError::Permanent(text)
            }
            _ => http::classify(a.status, text),
        }
    }
}

#[async_trait]
impl EmailProvider for Ses {
    async fn send(&self, email: &OutboundEmail) -> Result<SendReceipt, SendError> {
        let recipients = email.to.len() + email.cc.len() + email.bcc.len();
        if recipients > MAX_RECIPIENTS {
            return Err(SendError::Permanent(format!(
                "ses accepts at most {MAX_RECIPIENTS} recipients per message, got {recipients}"
            )));
        }
        let mime = crate::mime::render(email)?;
        let mut destination = json!({ "ToAddresses": bare(&email.to) });
        if !email.cc.is_empty() {
            destination["CcAddresses"] = bare(&email.cc);
        }
        if !email.bcc.is_empty() {
            destination["BccAddresses"] = bare(&email.bcc);
        }
        let mut body = json!({
            "FromEmailAddress": email.from.address.as_str(),
            "Destination": destination,
            "Content": { "Raw": {
                "Data": base64::engine::general_purpose::STANDARD.encode(&mime.bytes)
            } },
        });
        if let Some(set) = &self.configuration_set {
            body["ConfigurationSetName"] = set.as_str().into();
        }
        let tags = http::name_value_tags(&email.tags, &email.metadata);
        if !tags.is_empty() {
            body["EmailTags"] = tags
                .into_iter()
                .map(|(name, value)| json!({ "Name": name, "Value": value }))
                .collect();
        }
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| SendError::Permanent(format!("ses: cannot encode request: {e}")))?;
        let req = self.signed(Method::POST, "/v2/email/outbound-emails", bytes)?;
        let a = http::exchange("ses", req).await?;
        if !a.status.is_success() {
            return Err(self.error(&a));
        }
        Ok(SendReceipt {
            provider_message_id: a.json()["MessageId"].as_str().map(str::to_string),
            captured: None,
        })
    }

    /// `GetAccount`: proves the credentials and says whether the account may send, and how much.
    async fn health(&self) -> HealthReport {
        let answer = match self.signed(Method::GET, "/v2/email/account", Vec::new()) {
            Ok(req) => http::exchange("ses", req).await,
            Err(e) => Err(e),
        };
        let (healthy, detail) = match answer {
            Err(e) => (false, e.to_string()),
            Ok(a) if a.status.is_success() => {
                let json = a.json();
                let enabled = json["SendingEnabled"].as_bool().unwrap_or(true);
                let mut detail = if enabled {
                    "sending enabled".to_string()
                } else {
                    "sending is paused for this account".to_string()
                };
                let quota = &json["SendQuota"];
                if let (Some(max), Some(rate)) = (
                    quota["Max24HourSend"].as_f64(),
                    quota["MaxSendRate"].as_f64(),
                ) {
                    let sent = quota["SentLast24Hours"].as_f64().unwrap_or(0.0);
                    detail += &format!(
                        "; SendQuota: Max24HourSend {max}, MaxSendRate {rate}/s, \
                         SentLast24Hours {sent}"
                    );
                }
                if json["ProductionAccessEnabled"] == false {
                    detail += "; sandbox: verified recipients only";
                }
                (enabled, detail)
            }
            Ok(a) => (false, self.error(&a).to_string()),
        };
        HealthReport { healthy, detail }
    }
}
