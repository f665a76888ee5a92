//! Domain types for CourierX. Everything here is parsed once at the edge (API, CLI, config) so the
//! rest of the system never re-checks strings. No I/O lives in this crate.

pub mod attachment;
pub mod email;
pub mod error;
pub mod ids;
pub mod keys;
pub mod message;
pub mod role;
pub mod text;

pub use attachment::{Attachment, AttachmentError};
pub use email::{DomainName, EmailAddress, Mailbox};
pub use error::{FieldError, ValidationErrors};
pub use ids::*;
pub use keys::{ApiKeyHash, RawApiKey, Sha256Hex};
pub use message::{Category, EventType, MessageStatus, Priority};
pub use role::Role;
pub use text::{HeaderName, HeaderValue, Password, Slug};

/// Milliseconds since the Unix epoch: the one time representation stored in both databases.
pub type Millis = i64;

/// The current time in epoch milliseconds.
pub fn now_ms() -> Millis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
