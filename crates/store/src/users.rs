//! Tenants, users, refresh tokens and login-failure accounting.

use crate::{Db, Result, StoreError, Tx, on, on_tx};
use courierx_domain::{Millis, ProviderId, TenantId, UserId};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub tenant_id: String,
    pub email: String,
    pub name: String,
    pub password_hash: String,
    pub role: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshTokenRow {
    pub id: String,
    pub tenant_id: String,
    pub user_id: String,
    pub family_id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

pub struct NewUser<'a> {
    pub id: UserId,
    pub tenant_id: TenantId,
    pub email: &'a str,
    pub name: &'a str,
    pub password_hash: &'a str,
    pub role: &'a str,
    pub now: Millis,
}

pub struct NewTenantBundle<'a> {
    pub tenant_id: TenantId,
    pub name: &'a str,
    pub slug: &'a str,
    pub owner: NewUser<'a>,
    pub sandbox_provider_id: ProviderId,
}

const USER_COLS: &str = "id, tenant_id, email, name, password_hash, role, created_at";

impl Db {
    pub async fn count_users(&self) -> Result<i64> {
        Ok(
            on!(self, p => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users").fetch_one(p).await)?,
        )
    }

    /// Creates a tenant, its owner and its sandbox provider in one transaction. The tenant slug is
    /// made unique by suffixing; a taken email is a conflict. With `only_if_no_users`, the
    /// transaction re-checks inside itself that no user exists (first-user signup).
    pub async fn create_tenant_with_owner(
        &self,
        b: &NewTenantBundle<'_>,
        only_if_no_users: bool,
    ) -> Result<TenantRow> {
        let mut tx = self.begin().await?;
        if only_if_no_users {
            let n: i64 = on_tx!(&mut tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&mut *c).await)?;
            if n > 0 {
                return Err(StoreError::Conflict("signup_closed"));
            }
        }
        let mut slug = b.slug.to_string();
        for n in 2.. {
            let taken: i64 = on_tx!(&mut tx, c => sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE slug = $1")
                .bind(&slug).fetch_one(&mut *c).await)?;
            if taken == 0 {
                break;
            }
            slug = format!("{}-{n}", b.slug);
        }
        let now = b.owner.now;
        on_tx!(&mut tx, c => sqlx::query("INSERT INTO tenants (id, name, slug, created_at) VALUES ($1, $2, $3, $4)")
            .bind(b.tenant_id.to_string()).bind(b.name).bind(&slug).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        insert_user(&mut tx, &b.owner).await?;
        on_tx!(&mut tx, c => sqlx::query(
            "INSERT INTO providers (id, tenant_id, name, type, config_public, secret_ciphertext, key_version, created_at, updated_at)
             VALUES ($1, $2, 'Sandbox', 'sandbox', '{}', NULL, 1, $3, $3)")
            .bind(b.sandbox_provider_id.to_string()).bind(b.tenant_id.to_string()).bind(now).execute(&mut *c).await.map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(TenantRow {
            id: b.tenant_id.to_string(),
            name: b.name.to_string(),
            slug,
            created_at: now,
        })
    }

    pub async fn create_user(&self, u: &NewUser<'_>) -> Result<()> {
        let mut tx = self.begin().await?;
        insert_user(&mut tx, u).await?;
        tx.commit().await
    }

    pub async fn find_user_by_email(&self, email: &str) -> Result<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE lower(email) = lower($1)");
        Ok(
            on!(self, p => sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql)).bind(email).fetch_optional(p).await)?,
        )
    }

    pub async fn get_user(&self, tenant: TenantId, id: UserId) -> Result<Option<UserRow>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE tenant_id = $1 AND id = $2");
        Ok(
            on!(self, p => sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql))
            .bind(tenant.to_string()).bind(id.to_string()).fetch_optional(p).await)?,
        )
    }

    pub async fn list_users(&self, tenant: TenantId) -> Result<Vec<UserRow>> {
        let sql = format!("SELECT {USER_COLS} FROM users WHERE tenant_id = $1 ORDER BY id");
        Ok(
            on!(self, p => sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(sql)).bind(tenant.to_string()).fetch_all(p).await)?,
        )
    }

    pub async fn get_tenant(&self, id: TenantId) -> Result<Option<TenantRow>> {
        Ok(
            on!(self, p => sqlx::query_as::<_, TenantRow>("SELECT id, name, slug, created_at FROM tenants WHERE id = $1")
            .bind(id.to_string()).fetch_optional(p).await)?,
        )
    }

    pub async fn insert_refresh_token(
        &self,
        tenant: TenantId,
        user: UserId,
        family: &str,
        token_hash: &str,
        expires_at: Millis,
        now: Millis,
    ) -> Result<()> {
        on!(self, p => sqlx::query(
            "INSERT INTO refresh_tokens (id, tenant_id, user_id, family_id, token_hash, expires_at, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(uuid_v7()).bind(tenant.to_string()).bind(user.to_string()).bind(family).bind(token_hash)
            .bind(expires_at).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn find_refresh_token(&self, token_hash: &str) -> Result<Option<RefreshTokenRow>> {
        Ok(on!(self, p => sqlx::query_as::<_, RefreshTokenRow>(
            "SELECT id, tenant_id, user_id, family_id, expires_at, used_at, revoked_at FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash).fetch_optional(p).await)?)
    }

    /// Marks a refresh token used; false when it was already used (a replay).
    pub async fn use_refresh_token(&self, id: &str, now: Millis) -> Result<bool> {
        let r = on!(self, p => sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL")
            .bind(now).bind(id).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    pub async fn revoke_refresh_family(&self, family: &str, now: Millis) -> Result<()> {
        on!(self, p => sqlx::query("UPDATE refresh_tokens SET revoked_at = $1 WHERE family_id = $2 AND revoked_at IS NULL")
            .bind(now).bind(family).execute(p).await.map(|r| r.rows_affected()))?;
        Ok(())
    }

    pub async fn record_login_failure(&self, keys: &[&str], now: Millis) -> Result<()> {
        for k in keys {
            on!(self, p => sqlx::query("INSERT INTO login_failures (key, at) VALUES ($1, $2)").bind(*k).bind(now).execute(p).await.map(|r| r.rows_affected()))?;
        }
        Ok(())
    }

    /// Failures recorded for `key` since `since`, with the oldest one's time (for `retry-after`).
    pub async fn login_failures_since(
        &self,
        key: &str,
        since: Millis,
    ) -> Result<(i64, Option<i64>)> {
        Ok(
            on!(self, p => sqlx::query_as::<_, (i64, Option<i64>)>("SELECT COUNT(*), MIN(at) FROM login_failures WHERE key = $1 AND at > $2")
            .bind(key).bind(since).fetch_one(p).await)?,
        )
    }
}

async fn insert_user(tx: &mut Tx, u: &NewUser<'_>) -> Result<()> {
    on_tx!(tx, c => sqlx::query(
        "INSERT INTO users (id, tenant_id, email, name, password_hash, role, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
        .bind(u.id.to_string()).bind(u.tenant_id.to_string()).bind(u.email).bind(u.name).bind(u.password_hash)
        .bind(u.role).bind(u.now).execute(&mut *c).await.map(|r| r.rows_affected()))
    .map_err(|e| StoreError::unique(e, "email_taken"))?;
    Ok(())
}

pub(crate) fn uuid_v7() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The project an API key belongs to and the key's own state, as needed to authenticate a request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyAuthRow {
    pub id: String,
    pub tenant_id: String,
    pub project_id: String,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

impl Db {
    pub async fn find_api_key_by_hash(&self, hash: &str) -> Result<Option<ApiKeyAuthRow>> {
        Ok(on!(self, p => sqlx::query_as::<_, ApiKeyAuthRow>(
            "SELECT k.id, k.tenant_id, k.project_id, k.expires_at, k.revoked_at, k.last_used_at
             FROM api_keys k JOIN projects pr ON pr.id = k.project_id
             WHERE k.key_hash = $1 AND pr.deleted_at IS NULL")
            .bind(hash).fetch_optional(p).await)?)
    }
}

pub async fn touch_api_key(tx: &mut Tx, id: &str, now: Millis) -> Result<()> {
    on_tx!(tx, c => sqlx::query("UPDATE api_keys SET last_used_at = $1 WHERE id = $2").bind(now).bind(id).execute(&mut *c).await.map(|r| r.rows_affected()))?;
    Ok(())
}

/// Parses a stored id column; a malformed one means the database was edited by hand.
pub fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T> {
    s.parse()
        .map_err(|_| StoreError::Corrupt(format!("bad id `{s}`")))
}

impl Db {
    pub async fn find_tenant_by_slug(&self, slug: &str) -> Result<Option<TenantRow>> {
        Ok(
            on!(self, p => sqlx::query_as::<_, TenantRow>("SELECT id, name, slug, created_at FROM tenants WHERE slug = $1")
            .bind(slug).fetch_optional(p).await)?,
        )
    }
}
