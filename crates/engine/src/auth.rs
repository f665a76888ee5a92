//! Authentication primitives: argon2id password hashes, HS256 access tokens, opaque refresh tokens.

use crate::SecretKey;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use base64::Engine as _;
use courierx_domain::{Role, TenantId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};

pub const ACCESS_TTL_SECS: i64 = 15 * 60;
pub const REFRESH_TTL_MS: i64 = 30 * 24 * 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error("invalid token")]
    InvalidToken,
}

/// Hashes on the blocking pool: argon2id is deliberately slow and must not stall the runtime.
pub async fn hash_password(password: String) -> Result<String, AuthError> {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hash(e.to_string()))
    })
    .await
    .map_err(|e| AuthError::Hash(e.to_string()))?
}

pub async fn verify_password(password: String, hash: String) -> bool {
    tokio::task::spawn_blocking(move || {
        Argon2::default()
            .verify_password(password.as_bytes(), hash.as_str())
            .is_ok()
    })
    .await
    .unwrap_or(false)
}

/// A hash of a random password: login against an unknown email runs the same verification work,
/// so timing does not reveal whether an account exists.
pub static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    Argon2::default()
        .hash_password(b"courierx-dummy-password")
        .map(|h| h.to_string())
        .unwrap_or_default()
});

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub tid: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Debug, Clone)]
pub struct AccessClaims {
    pub user: UserId,
    pub tenant: TenantId,
    pub role: Role,
}

pub struct TokenKeys {
    enc: EncodingKey,
    dec: DecodingKey,
}

impl TokenKeys {
    pub fn derive(key: &SecretKey) -> Self {
        let k = key.derive("jwt-hs256");
        Self {
            enc: EncodingKey::from_secret(&k),
            dec: DecodingKey::from_secret(&k),
        }
    }

    pub fn issue_access(
        &self,
        user: UserId,
        tenant: TenantId,
        role: Role,
        now_secs: i64,
    ) -> Result<String, AuthError> {
        let claims = Claims {
            sub: user.to_string(),
            tid: tenant.to_string(),
            role,
            iat: now_secs,
            exp: now_secs + ACCESS_TTL_SECS,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .map_err(|e| AuthError::Hash(e.to_string()))
    }

    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &v)
            .map_err(|_| AuthError::InvalidToken)?;
        Ok(AccessClaims {
            user: data
                .claims
                .sub
                .parse()
                .map_err(|_| AuthError::InvalidToken)?,
            tenant: data
                .claims
                .tid
                .parse()
                .map_err(|_| AuthError::InvalidToken)?,
            role: data.claims.role,
        })
    }
}

/// A new opaque refresh token (only its SHA-256 is stored).
pub fn new_refresh_token() -> String {
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    format!(
        "cxr_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_and_tokens() {
        let h = hash_password("correct horse battery".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse battery".into(), h.clone()).await);
        assert!(!verify_password("wrong horse battery".into(), h).await);

        let keys = TokenKeys::derive(&SecretKey::generate());
        let (u, t) = (UserId::new(), TenantId::new());
        let now = courierx_domain::now_ms() / 1000;
        let tok = keys.issue_access(u, t, Role::Admin, now).unwrap();
        let c = keys.verify_access(&tok).unwrap();
        assert_eq!((c.user, c.tenant, c.role), (u, t, Role::Admin));
        let other = TokenKeys::derive(&SecretKey::generate());
        assert!(other.verify_access(&tok).is_err());
        let expired = keys.issue_access(u, t, Role::Admin, now - 3600).unwrap();
        assert!(keys.verify_access(&expired).is_err());
    }
}
