//! `courierx admin …`: operator commands that work directly on the database.

use crate::app::open_db;
use crate::config::Settings;
use anyhow::{Context, bail};
use base64::Engine as _;
use courierx_domain::{EmailAddress, ProviderId, Role, Slug, TenantId, UserId, now_ms};
use courierx_engine::auth::hash_password;
use courierx_store::users::{NewTenantBundle, NewUser};
use rand::RngCore;

pub struct CreatedUser {
    pub email: String,
    pub tenant_slug: String,
    pub password: String,
}

/// Creates a user in the tenant named by slug (created when missing, with the user as owner) and
/// returns a generated password that is shown once.
pub async fn create_user(
    s: &Settings,
    email: &str,
    tenant: &str,
    name: Option<&str>,
    role: Option<&str>,
) -> anyhow::Result<CreatedUser> {
    let email = EmailAddress::parse(email).map_err(|e| anyhow::anyhow!("--email {e}"))?;
    let tenant = tenant.trim();
    if tenant.is_empty() {
        bail!("--tenant must not be empty");
    }
    let db = open_db(s).await?;
    let mut bytes = [0u8; 18];
    rand::rng().fill_bytes(&mut bytes);
    let password = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let hash = hash_password(password.clone())
        .await
        .context("hashing password")?;
    let name = name
        .unwrap_or_else(|| email.as_str().split('@').next().unwrap_or("user"))
        .to_string();
    let slug = Slug::from_name(tenant, "tenant");
    let existing = db.find_tenant_by_slug(slug.as_str()).await?;
    let now = now_ms();
    let user_id = UserId::new();
    let result = match existing {
        Some(t) => {
            let role: Role = role
                .unwrap_or("admin")
                .parse()
                .map_err(|e| anyhow::anyhow!("--role {e}"))?;
            let tenant_id: TenantId = t.id.parse().context("stored tenant id")?;
            db.create_user(&NewUser {
                id: user_id,
                tenant_id,
                email: email.as_str(),
                name: &name,
                password_hash: &hash,
                role: role.as_str(),
                now,
            })
            .await
            .map_err(|e| anyhow::anyhow!("creating user: {e}"))?;
            t.slug
        }
        None => {
            let tenant_id = TenantId::new();
            let bundle = NewTenantBundle {
                tenant_id,
                name: tenant,
                slug: slug.as_str(),
                owner: NewUser {
                    id: user_id,
                    tenant_id,
                    email: email.as_str(),
                    name: &name,
                    password_hash: &hash,
                    role: Role::Owner.as_str(),
                    now,
                },
                sandbox_provider_id: ProviderId::new(),
            };
            db.create_tenant_with_owner(&bundle, false)
                .await
                .map_err(|e| anyhow::anyhow!("creating tenant and user: {e}"))?
                .slug
        }
    };
    db.close().await;
    Ok(CreatedUser {
        email: email.as_str().to_string(),
        tenant_slug: result,
        password,
    })
}
