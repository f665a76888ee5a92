//! Extractors: JSON bodies with the project's error shape, and the two kinds of credentials
//! (user access tokens and project API keys), each yielding a tenant-scoped context.

use crate::AppState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{StatusCode, header, request::Parts};
use courierx_domain::{ApiKeyId, ProjectId, RawApiKey, Role, TenantId, UserId, now_ms};
use courierx_engine::ttl_cache::TtlCache;
use courierx_store::users::ApiKeyAuthRow;
use serde::de::DeserializeOwned;
use std::time::Duration;

/// A JSON body. Malformed JSON → 400, a body over the limit → 413, a well-formed body of the
/// wrong shape → 422 naming the field.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        parse_json(&read_body(req, state).await?).map(Json)
    }
}

async fn read_body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the request body is larger than the limit",
            )
        } else {
            ApiError::bad_request(format!("could not read the request body: {r}"))
        }
    })
}

/// One pass over the bytes: syntax errors are 400, a well-formed body of the wrong shape is 422
/// naming the field.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    use serde_json::error::Category;
    let malformed = |e: &serde_json::Error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON: {e}"),
        )
    };
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T =
        serde_path_to_error::deserialize(&mut de).map_err(|e| match e.inner().classify() {
            Category::Data => {
                let path = e.path().to_string();
                ApiError::field(
                    if path == "." { "body" } else { &path },
                    e.inner().to_string(),
                )
            }
            Category::Syntax | Category::Eof | Category::Io => malformed(e.inner()),
        })?;
    de.end().map_err(|e| malformed(&e))?;
    Ok(value)
}

/// The parsed body together with its raw bytes, for endpoints that fingerprint the exact request
/// (idempotency).
pub struct JsonWithBytes<T>(pub T, pub Bytes);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonWithBytes<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = read_body(req, state).await?;
        Ok(JsonWithBytes(parse_json(&bytes)?, bytes))
    }
}

/// A send request's JSON with its raw bytes (for idempotency), read under the send endpoints'
/// own limit, which leaves room for attachments in base64.
pub struct MessageBody<T>(pub T, pub Bytes);

impl<T: DeserializeOwned> FromRequest<AppState> for MessageBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::to_bytes(req.into_body(), state.cfg.message_body_limit)
            .await
            .map_err(|e| {
                if std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                {
                    ApiError::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        "payload_too_large",
                        "the request body is larger than the limit",
                    )
                } else {
                    ApiError::bad_request(format!("could not read the request body: {e}"))
                }
            })?;
        Ok(MessageBody(parse_json(&bytes)?, bytes))
    }
}

fn bearer(parts: &Parts) -> Option<&str> {
    let h = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A signed-in user (from an access token).
#[derive(Debug, Clone, Copy)]
pub struct UserCtx {
    pub user: UserId,
    pub tenant: TenantId,
    pub role: Role,
}

impl UserCtx {
    pub fn require(&self, min: Role) -> Result<(), ApiError> {
        if self.role >= min {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "this action needs the {} role or higher",
                min.as_str()
            )))
        }
    }
}

impl FromRequestParts<AppState> for UserCtx {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token =
            bearer(parts).ok_or_else(|| ApiError::unauthorized("missing bearer access token"))?;
        if token.starts_with(RawApiKey::PREFIX) {
            return Err(ApiError::unauthorized(
                "this endpoint needs a user access token, not an API key",
            ));
        }
        let c = state
            .engine
            .tokens
            .verify_access(token)
            .map_err(|_| ApiError::unauthorized("invalid or expired access token"))?;
        Ok(Self {
            user: c.user,
            tenant: c.tenant,
            role: c.role,
        })
    }
}

/// A project API key (`Authorization: Bearer cx_…` or `X-API-Key: cx_…`).
#[derive(Debug, Clone, Copy)]
pub struct ProjectCtx {
    pub tenant: TenantId,
    pub project: ProjectId,
    pub key: ApiKeyId,
}

/// How often `last_used_at` is refreshed at most, so authenticating is not a write per request.
const TOUCH_EVERY_MS: i64 = 60_000;

impl FromRequestParts<AppState> for ProjectCtx {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let presented = parts
            .headers
            .get("x-api-key")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .or_else(|| bearer(parts))
            .ok_or_else(|| {
                ApiError::unauthorized("missing API key (Authorization: Bearer cx_… or X-API-Key)")
            })?;
        let key =
            RawApiKey::parse(presented).ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
        let hash = key.hash();
        let row = match state.keys.0.get(hash.as_str()) {
            Some(row) => row,
            None => {
                let read_at = state.keys.0.generation();
                let row = state
                    .engine
                    .db
                    .find_api_key_by_hash(hash.as_str())
                    .await?
                    .ok_or_else(|| ApiError::unauthorized("invalid API key"))?;
                state
                    .keys
                    .0
                    .put(hash.as_str().to_string(), row.clone(), read_at);
                row
            }
        };
        let now = now_ms();
        if row.revoked_at.is_some() {
            return Err(ApiError::unauthorized("this API key has been revoked"));
        }
        if row.expires_at.is_some_and(|e| e <= now) {
            return Err(ApiError::unauthorized("this API key has expired"));
        }
        if row.last_used_at.is_none_or(|t| now - t > TOUCH_EVERY_MS) {
            state.keys.note_use(hash.as_str(), now);
            let engine = state.engine.clone();
            let id = row.id.clone();
            tokio::spawn(async move {
                let touched = engine
                    .write((id, now), |(id, now), tx| {
                        Box::pin(courierx_store::users::touch_api_key(tx, id, *now))
                    })
                    .await;
                if let Err(e) = touched {
                    tracing::debug!(error = %e, "could not update api key last_used_at");
                }
            });
        }
        let parse = |s: &str| s.parse::<uuid::Uuid>().map_err(ApiError::internal);
        Ok(Self {
            tenant: parse(&row.tenant_id)?.into(),
            project: parse(&row.project_id)?.into(),
            key: parse(&row.id)?.into(),
        })
    }
}

/// Either credential: read endpoints for messages accept a user (tenant-wide) or a key (its project).
#[derive(Debug, Clone, Copy)]
pub enum Principal {
    User(UserCtx),
    Key(ProjectCtx),
}

impl Principal {
    pub fn tenant(&self) -> TenantId {
        match self {
            Principal::User(u) => u.tenant,
            Principal::Key(k) => k.tenant,
        }
    }
    /// The project a key is bound to; users see every project of their tenant.
    pub fn project(&self) -> Option<ProjectId> {
        match self {
            Principal::User(_) => None,
            Principal::Key(k) => Some(k.project),
        }
    }
}

impl FromRequestParts<AppState> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let is_key = parts.headers.contains_key("x-api-key")
            || bearer(parts).is_some_and(|t| t.starts_with(RawApiKey::PREFIX));
        if is_key {
            ProjectCtx::from_request_parts(parts, state)
                .await
                .map(Principal::Key)
        } else {
            UserCtx::from_request_parts(parts, state)
                .await
                .map(Principal::User)
        }
    }
}

/// How long a looked-up API key is trusted before it is read again. Revocation takes effect at
/// once: this process drops the entry, and on PostgreSQL every other process drops it when the
/// revocation's notification arrives (see `courierx_store::notify`). Without that notification
/// (SQLite, or a lost listener connection) another process trusts its entry for up to this long.
const KEY_CACHE_TTL: Duration = Duration::from_secs(5);

/// API keys recently read from the database, by hash, so authenticating a request is not a
/// database round trip each time.
pub struct KeyCache(TtlCache<ApiKeyAuthRow>);

impl Default for KeyCache {
    fn default() -> Self {
        Self(TtlCache::new(KEY_CACHE_TTL))
    }
}

impl KeyCache {
    /// Records a use in the cached row, so concurrent requests do not all write `last_used_at`.
    fn note_use(&self, hash: &str, now: i64) {
        self.0.update(hash, |row| row.last_used_at = Some(now));
    }

    /// Forgets every cached key of a project (after a revocation or the project's deletion).
    pub fn forget_project(&self, project: &str) {
        self.0.forget_where(|row| row.project_id == project);
    }

    /// Forgets every cached key (revocations elsewhere may have been missed).
    pub fn clear(&self) {
        self.0.clear();
    }
}
