//! Storage for CourierX: one `Db` over SQLite (embedded default) or PostgreSQL (scale-out), with
//! tenant-scoped repositories and the database-backed job queue.
//!
//! Every query is written once with `$n` placeholders (SQLite accepts them) and compiled for both
//! backends by the `on!` macro; ids are UUIDv7 text and times are epoch milliseconds on both.

mod db;
pub mod erasure;
pub mod error;
pub mod housekeeping;
pub mod idempotency;
pub mod jobs;
pub mod messages;
pub mod notify;
pub mod outcomes;
pub mod projects;
pub mod provider_events;
pub mod providers;
pub mod routes;
pub mod sandbox;
pub mod stats;
pub mod suppressions;
pub mod templates;
pub mod users;
pub mod writer;

pub use db::{Backend, Db, Tx};
pub use error::StoreError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Serialises a value that is known to be serialisable (our own structs and JSON values).
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}
