//! What sending needs to know about a project (settings, routes, the tenant's providers), read
//! once and shared for a short time so neither accepting nor delivering pays database reads per
//! message. Writes through this process drop the cache at once; other processes see a change
//! within [`TTL`].

use crate::Engine;
use crate::routing::{self, Plan, Route, RoutingInput};
use crate::settings::{EmailSettings, ParsedSettings, ProviderOptions};
use crate::ttl_cache::TtlCache;
use courierx_domain::{ProjectId, TenantId};
use courierx_store::StoreError;
use courierx_store::providers::ProviderRow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub const TTL: Duration = Duration::from_secs(2);

pub struct ProviderEntry {
    pub row: ProviderRow,
    pub options: ProviderOptions,
}

pub struct ProjectSnapshot {
    pub default_provider_id: Option<String>,
    pub settings: ParsedSettings,
    pub routes: Vec<Route>,
    pub providers: HashMap<String, ProviderEntry>,
}

impl ProjectSnapshot {
    pub fn plan(&self, input: &RoutingInput<'_>) -> Plan {
        routing::plan(
            &self.routes,
            self.default_provider_id.as_deref(),
            input,
            &|id| self.providers.contains_key(id),
        )
    }

    /// Whether every provider the plan could use is the sandbox (exempt from sender policy).
    pub fn sandbox_only(&self, plan: &Plan) -> bool {
        let mut targets = plan.groups.iter().flat_map(|g| &g.targets).peekable();
        targets.peek().is_some()
            && targets.all(|t| {
                self.providers
                    .get(&t.provider_id)
                    .is_some_and(|p| p.row.kind == "sandbox")
            })
    }
}

pub struct ProjectCache(TtlCache<Arc<ProjectSnapshot>>);

impl Default for ProjectCache {
    fn default() -> Self {
        Self(TtlCache::new(TTL))
    }
}

impl ProjectCache {
    pub fn clear(&self) {
        self.0.clear();
    }
}

/// Parses stored JSON that the API validated on the way in; a row that no longer parses is
/// logged and replaced by the default rather than stopping delivery for the whole project.
fn stored<T: serde::de::DeserializeOwned + Default>(what: &str, id: &str, json: &str) -> T {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::warn!(error = %e, id, "stored {what} does not parse; using defaults");
        T::default()
    })
}

impl Engine {
    /// The project's sending snapshot; `None` when the project does not exist (or was deleted).
    pub async fn project_snapshot(
        &self,
        tenant: TenantId,
        project: ProjectId,
    ) -> Result<Option<Arc<ProjectSnapshot>>, StoreError> {
        // Keyed by tenant too: a project id presented under another tenant must miss.
        let key = format!("{tenant}/{project}");
        if let Some(snap) = self.projects.0.get(&key) {
            return Ok(Some(snap));
        }
        let read_at = self.projects.0.generation();
        let Some(p) = self.db.get_project(tenant, project).await? else {
            return Ok(None);
        };
        let routes = self
            .db
            .list_routes(tenant, project)
            .await?
            .into_iter()
            .map(|r| Route {
                conditions: stored("route conditions", &r.id, &r.conditions),
                targets: stored::<Vec<routing::Target>>("route targets", &r.id, &r.targets),
                id: r.id,
                name: r.name,
                priority: r.priority,
                enabled: r.enabled,
            })
            .collect();
        let providers = self
            .db
            .list_providers(tenant)
            .await?
            .into_iter()
            .map(|row| {
                let options = stored("provider options", &row.id, &row.options);
                (row.id.clone(), ProviderEntry { row, options })
            })
            .collect();
        let settings: EmailSettings = stored("email settings", &p.id, &p.email_settings);
        let settings = settings.parse().map(|(_, s)| s).unwrap_or_default();
        let snap = Arc::new(ProjectSnapshot {
            default_provider_id: p.default_provider_id,
            settings,
            routes,
            providers,
        });
        self.projects.0.put(key, snap.clone(), read_at);
        Ok(Some(snap))
    }

    /// Drops cached snapshots after a change to projects, routes or providers.
    pub fn routing_changed(&self) {
        self.projects.clear();
    }
}
