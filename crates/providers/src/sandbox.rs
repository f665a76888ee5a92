//! The built-in sandbox: renders the exact MIME a real provider would get and keeps it (readable
//! through `GET /api/v1/sandbox/messages`) instead of sending it anywhere.

use crate::{EmailProvider, HealthReport, OutboundEmail, ProviderKind, SendError, SendReceipt};
use async_trait::async_trait;
use courierx_domain::ValidationErrors;
use serde_json::Value;
use std::sync::Arc;

pub static KIND: ProviderKind = ProviderKind {
    name: "sandbox",
    secret_fields: &[],
    validate,
    build,
    delivers_externally: false,
    webhook: None,
};

fn validate(v: &Value) -> Result<Value, ValidationErrors> {
    match v {
        Value::Object(m) if m.is_empty() => Ok(Value::Object(Default::default())),
        Value::Null => Ok(Value::Object(Default::default())),
        _ => Err(ValidationErrors::single(
            "config",
            "the sandbox provider takes no settings",
        )),
    }
}

fn build(_: &Value) -> Result<Arc<dyn EmailProvider>, ValidationErrors> {
    Ok(Arc::new(Sandbox))
}

pub struct Sandbox;

#[async_trait]
impl EmailProvider for Sandbox {
    async fn send(&self, email: &OutboundEmail) -> Result<SendReceipt, SendError> {
        let mime = crate::mime::render(email)?;
        Ok(SendReceipt {
            provider_message_id: Some(mime.message_id.clone()),
            captured: Some(mime),
        })
    }

    async fn health(&self) -> HealthReport {
        HealthReport {
            healthy: true,
            detail: "sandbox keeps messages in the database".into(),
        }
    }
}
