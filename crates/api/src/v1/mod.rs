//! Version 1 of the HTTP API: one module per resource, each ending in `router()`.

pub mod auth;
pub mod messages;
pub mod projects;
pub mod providers;
pub mod recipients;
pub mod routes;
pub mod sandbox;
pub mod suppressions;
pub mod templates;
pub mod users;

use crate::error::ApiError;
pub use courierx_engine::accept::rfc3339;

/// Parses a path id; a malformed id is just an id that does not exist (404).
pub fn path_id<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, ApiError> {
    s.parse().map_err(|_| ApiError::not_found(what))
}

/// The id of a live project of the user's tenant (404 for another tenant's or a deleted one).
pub async fn project_of(
    state: &crate::AppState,
    ctx: &crate::extract::UserCtx,
    id: &str,
) -> Result<courierx_domain::ProjectId, ApiError> {
    let pid: courierx_domain::ProjectId = path_id(id, "project")?;
    state
        .engine
        .db
        .get_project(ctx.tenant, pid)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    Ok(pid)
}

/// Parses a stored id (written by us, so a failure is an internal error).
pub fn stored_id<T: std::str::FromStr>(s: &str) -> Result<T, ApiError> {
    s.parse()
        .map_err(|_| ApiError::internal(format!("malformed stored id {s}")))
}

/// Distinguishes an absent field from an explicit `null` in a PATCH body.
pub fn some_value<'de, D: serde::Deserializer<'de>, T: serde::Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    <Option<T> as serde::Deserialize>::deserialize(d).map(Some)
}

pub fn opt_rfc3339(ms: Option<i64>) -> Option<String> {
    ms.map(rfc3339)
}

/// Checks a human-readable name: trimmed, 1 to `max` characters, no control characters.
pub fn clean_name(
    field: &str,
    v: Option<&str>,
    max: usize,
    errs: &mut courierx_domain::ValidationErrors,
) -> Option<String> {
    match v.map(str::trim) {
        None | Some("") => {
            errs.add(field, "is required");
            None
        }
        Some(s) if s.chars().count() > max => {
            errs.add(field, format!("must be at most {max} characters"));
            None
        }
        Some(s) if s.chars().any(char::is_control) => {
            errs.add(field, "must not contain control characters");
            None
        }
        Some(s) => Some(s.to_string()),
    }
}
