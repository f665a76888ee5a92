//! sendgrid event webhook (being written).

/// Checks the webhook key's format when the provider config is saved.
pub fn check_key(_key: &str) -> Result<(), String> {
    Ok(())
}
