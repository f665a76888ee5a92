//! Provider configurations: validation through the provider's own kind, secrets sealed at rest and
//! masked in every response, and a cache of live provider instances (each SMTP provider keeps its
//! connection pool across messages).

use crate::SecretBox;
use courierx_domain::ValidationErrors;
use courierx_providers::{EmailProvider, ProviderKind};
use courierx_store::providers::ProviderRow;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

pub const MASK: &str = "********";

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("unknown provider type")]
    UnknownType,
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
    #[error("stored secret cannot be decrypted: check COURIERX_SECRET_KEY")]
    Undecryptable,
}

/// Splits a validated config into what may be shown (public) and what is sealed (secrets).
pub fn split_secrets(
    kind: &ProviderKind,
    config: &Value,
    secrets: &SecretBox,
) -> (Value, Option<String>) {
    let mut public = config.as_object().cloned().unwrap_or_default();
    let mut secret = Map::new();
    for f in kind.secret_fields {
        if let Some(v) = public.remove(*f)
            && !v.is_null()
        {
            secret.insert((*f).to_string(), v);
        }
    }
    let sealed =
        (!secret.is_empty()).then(|| secrets.seal(Value::Object(secret).to_string().as_bytes()));
    (Value::Object(public), sealed)
}

/// The full config (public fields plus decrypted secrets) of a stored provider.
pub fn full_config(row: &ProviderRow, secrets: &SecretBox) -> Result<Value, ProviderError> {
    let mut cfg: Map<String, Value> = serde_json::from_str(&row.config_public).unwrap_or_default();
    if let Some(sealed) = &row.secret_ciphertext {
        let plain = secrets
            .open(sealed)
            .map_err(|_| ProviderError::Undecryptable)?;
        let secret: Map<String, Value> =
            serde_json::from_slice(&plain).map_err(|_| ProviderError::Undecryptable)?;
        cfg.extend(secret);
    }
    Ok(Value::Object(cfg))
}

/// The config as shown to users: public fields, with every secret field that is set masked.
/// Optional secrets that are not set stay absent, so the view says which are configured.
pub fn masked_config(row: &ProviderRow, secrets: &SecretBox) -> Value {
    let mut cfg: Map<String, Value> = serde_json::from_str(&row.config_public).unwrap_or_default();
    let Some(kind) = courierx_providers::kind(&row.kind) else {
        return Value::Object(cfg);
    };
    let set: Option<Map<String, Value>> = row.secret_ciphertext.as_ref().map(|sealed| {
        secrets
            .open(sealed)
            .ok()
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            // Undecryptable (wrong key): mask every secret field rather than guess.
            .unwrap_or_else(|| {
                kind.secret_fields
                    .iter()
                    .map(|f| ((*f).to_string(), Value::Null))
                    .collect()
            })
    });
    for f in kind.secret_fields {
        if set.as_ref().is_some_and(|s| s.contains_key(*f)) {
            cfg.insert((*f).to_string(), Value::String(MASK.into()));
        }
    }
    Value::Object(cfg)
}

/// Merges a PATCH into the current full config: keys set to `null` are removed, and a secret
/// field sent back as the mask keeps its stored value.
pub fn merge_patch(current: &Value, patch: &Value) -> Value {
    let mut out = current.as_object().cloned().unwrap_or_default();
    if let Some(p) = patch.as_object() {
        for (k, v) in p {
            match v {
                Value::Null => {
                    out.remove(k);
                }
                Value::String(s) if s == MASK => {}
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

/// A built provider and the `updated_at` of the row it was built from.
type Built = (i64, Arc<dyn EmailProvider>);

#[derive(Default)]
pub struct ProviderCache {
    inner: RwLock<HashMap<String, Built>>,
}

impl ProviderCache {
    /// The live instance for a stored provider, rebuilt when the row changed since it was built.
    pub fn get(
        &self,
        row: &ProviderRow,
        secrets: &SecretBox,
    ) -> Result<Arc<dyn EmailProvider>, ProviderError> {
        if let Ok(map) = self.inner.read()
            && let Some((updated, p)) = map.get(&row.id)
            && *updated == row.updated_at
        {
            return Ok(p.clone());
        }
        let kind = courierx_providers::kind(&row.kind).ok_or(ProviderError::UnknownType)?;
        let cfg = full_config(row, secrets)?;
        let provider = (kind.build)(&cfg)?;
        self.pin(row, provider.clone());
        Ok(provider)
    }

    /// Uses `provider` for the stored provider `row` until the row changes: how an embedder
    /// (or a test) plugs in an implementation of its own.
    pub fn pin(&self, row: &ProviderRow, provider: Arc<dyn EmailProvider>) {
        if let Ok(mut map) = self.inner.write() {
            map.insert(row.id.clone(), (row.updated_at, provider));
        }
    }
}
