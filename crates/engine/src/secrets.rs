//! Secrets at rest: provider credentials are sealed with AES-256-GCM under the instance's secret
//! key. The stored form is `v1.<base64 nonce>.<base64 ciphertext>`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Key};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The instance secret key: 32 bytes, given base64-encoded.
#[derive(Clone)]
pub struct SecretKey([u8; 32]);

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("must be base64 of exactly 32 bytes")]
    BadKey,
    #[error("stored secret cannot be decrypted with this secret key")]
    Undecryptable,
}

impl SecretKey {
    pub fn from_base64(s: &str) -> Result<Self, SecretError> {
        let bytes = STANDARD.decode(s.trim()).map_err(|_| SecretError::BadKey)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| SecretError::BadKey)?;
        Ok(Self(arr))
    }

    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rng().fill_bytes(&mut k);
        Self(k)
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// A sub-key for one purpose, so the JWT key and the encryption key are never the same bytes.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"courierx:");
        h.update(purpose.as_bytes());
        h.update(b":");
        h.update(self.0);
        h.finalize().into()
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(********)")
    }
}

pub struct SecretBox {
    cipher: Aes256Gcm,
}

impl SecretBox {
    pub fn new(key: &SecretKey) -> Self {
        let k = key.derive("secrets-v1");
        Self {
            cipher: Aes256Gcm::new(&Key::<Aes256Gcm>::from(k)),
        }
    }

    pub fn seal(&self, plaintext: &[u8]) -> String {
        let mut n = [0u8; 12];
        rand::rng().fill_bytes(&mut n);
        let nonce = aes_gcm::Nonce::from(n);
        // Encryption with a valid key and nonce cannot fail for inputs under 64 GiB.
        let ct = self.cipher.encrypt(&nonce, plaintext).unwrap_or_default();
        format!("v1.{}.{}", STANDARD.encode(n), STANDARD.encode(ct))
    }

    pub fn open(&self, sealed: &str) -> Result<Vec<u8>, SecretError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some("v1"), Some(n), Some(ct)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(SecretError::Undecryptable);
        };
        let n: [u8; 12] = STANDARD
            .decode(n)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or(SecretError::Undecryptable)?;
        let ct = STANDARD
            .decode(ct)
            .map_err(|_| SecretError::Undecryptable)?;
        self.cipher
            .decrypt(&aes_gcm::Nonce::from(n), ct.as_ref())
            .map_err(|_| SecretError::Undecryptable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open() {
        let key = SecretKey::generate();
        let b = SecretBox::new(&key);
        let s = b.seal(b"{\"password\":\"hunter2\"}");
        assert!(!s.contains("hunter2"));
        assert_eq!(b.open(&s).unwrap(), b"{\"password\":\"hunter2\"}");
        let other = SecretBox::new(&SecretKey::generate());
        assert!(other.open(&s).is_err());
        assert!(SecretKey::from_base64("c2hvcnQ=").is_err());
    }
}
