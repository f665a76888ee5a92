//! API keys: the raw key is shown once; only its SHA-256 hash is stored and looked up.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;

/// A lowercase hex SHA-256 digest of a secret token (API key or refresh token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sha256Hex(String);

impl Sha256Hex {
    pub fn of(secret: &str) -> Self {
        Self(hex::encode(Sha256::digest(secret.as_bytes())))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub type ApiKeyHash = Sha256Hex;

/// A freshly minted or presented API key: `cx_` followed by 43 characters of base64url.
#[derive(Clone, PartialEq, Eq)]
pub struct RawApiKey(String);

impl RawApiKey {
    pub const PREFIX: &'static str = "cx_";

    pub fn generate() -> Self {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        Self(format!(
            "{}{}",
            Self::PREFIX,
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        ))
    }

    /// Accepts a presented key of the right shape; anything else is simply not a key.
    pub fn parse(s: &str) -> Option<Self> {
        let body = s.strip_prefix(Self::PREFIX)?;
        (body.len() == 43
            && body
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then(|| Self(s.to_string()))
    }

    /// The first characters, stored in clear so users can tell keys apart.
    pub fn prefix(&self) -> &str {
        &self.0[..Self::PREFIX.len() + 8]
    }

    pub fn hash(&self) -> ApiKeyHash {
        Sha256Hex::of(&self.0)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RawApiKey({}…)", self.prefix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_hash_stably() {
        let k = RawApiKey::generate();
        let parsed = RawApiKey::parse(k.expose()).unwrap();
        assert_eq!(parsed.hash(), k.hash());
        assert!(k.prefix().starts_with("cx_"));
        assert!(RawApiKey::parse("cx_short").is_none());
        assert!(RawApiKey::parse("nope").is_none());
    }
}
