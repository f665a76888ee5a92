//! Routing rules of a project, and a dry run that shows which providers a message would use.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, UserCtx};
use crate::v1::messages::{OneOrMany, parse_list};
use crate::v1::{clean_name, path_id, project_of, rfc3339};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use courierx_domain::{Mailbox, ProviderId, Role, RouteId, ValidationErrors, now_ms};
use courierx_engine::breaker::CircuitView;
use courierx_engine::routing::{
    Conditions, RouteCheck, RoutingInput, Target, check_conditions, check_targets,
};
use courierx_store::routes::RouteRow;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::HashSet;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_route, list_routes))
        .routes(routes!(get_route, update_route, delete_route))
        .routes(routes!(resolve))
}

const DEFAULT_PRIORITY: i64 = 100;

#[derive(Serialize, ToSchema)]
pub struct RouteView {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub priority: i64,
    pub conditions: Conditions,
    pub targets: Vec<Target>,
    pub enabled: bool,
    pub created_at: String,
    pub updated_at: String,
}

impl TryFrom<&RouteRow> for RouteView {
    type Error = ApiError;
    fn try_from(r: &RouteRow) -> Result<Self, ApiError> {
        Ok(Self {
            id: r.id.clone(),
            project_id: r.project_id.clone(),
            name: r.name.clone(),
            priority: r.priority,
            conditions: serde_json::from_str(&r.conditions).map_err(ApiError::internal)?,
            targets: serde_json::from_str(&r.targets).map_err(ApiError::internal)?,
            enabled: r.enabled,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
        })
    }
}

#[derive(Serialize, ToSchema)]
pub struct RouteList {
    pub data: Vec<RouteView>,
}

/// A route. On create `name` and `targets` are required; on PATCH every field is optional and
/// `conditions` / `targets` replace the stored ones as a whole.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RouteRequest {
    pub name: Option<String>,
    /// Lower is evaluated first (0 to 100000, default 100).
    pub priority: Option<i64>,
    pub conditions: Option<Conditions>,
    pub targets: Option<Vec<Target>>,
    /// Default true.
    pub enabled: Option<bool>,
}

/// Validates the request onto `row` (a fresh row on create), collecting every problem.
async fn apply(
    state: &AppState,
    ctx: &UserCtx,
    req: RouteRequest,
    row: &mut RouteRow,
    creating: bool,
) -> ApiResult<()> {
    let mut errs = ValidationErrors::new();
    if (creating || req.name.is_some())
        && let Some(n) = clean_name("name", req.name.as_deref(), 100, &mut errs)
    {
        row.name = n;
    }
    if let Some(p) = req.priority {
        if (0..=100_000).contains(&p) {
            row.priority = p;
        } else {
            errs.add("priority", "must be 0 to 100000");
        }
    }
    if let Some(mut c) = req.conditions {
        check_conditions(&mut c, "conditions", &mut errs);
        row.conditions = serde_json::to_string(&c).map_err(ApiError::internal)?;
    }
    match req.targets {
        Some(t) => {
            let known: HashSet<ProviderId> = state
                .engine
                .db
                .list_providers(ctx.tenant)
                .await?
                .iter()
                .filter_map(|p| p.id.parse().ok())
                .collect();
            check_targets(&t, &|id| known.contains(id), &mut errs);
            row.targets = serde_json::to_string(&t).map_err(ApiError::internal)?;
        }
        None if creating => errs.add("targets", "is required"),
        None => {}
    }
    if let Some(e) = req.enabled {
        row.enabled = e;
    }
    errs.into_result()?;
    Ok(())
}

/// Create a route (developer or above).
#[utoipa::path(post, path = "/api/v1/projects/{id}/routes", tag = "routing", security(("user_token" = [])), request_body = RouteRequest,
    params(("id" = String, Path, description = "Project id")),
    responses((status = 201, body = RouteView), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn create_route(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
    Json(req): Json<RouteRequest>,
) -> ApiResult<(StatusCode, axum::Json<RouteView>)> {
    ctx.require(Role::Developer)?;
    let project = project_of(&state, &ctx, &id).await?;
    let now = now_ms();
    let mut row = RouteRow {
        id: RouteId::new().to_string(),
        tenant_id: ctx.tenant.to_string(),
        project_id: project.to_string(),
        name: String::new(),
        priority: DEFAULT_PRIORITY,
        conditions: "{}".into(),
        targets: "[]".into(),
        enabled: true,
        created_at: now,
        updated_at: now,
    };
    apply(&state, &ctx, req, &mut row, true).await?;
    state.engine.db.create_route(&row).await?;
    state.engine.routing_changed();
    Ok((StatusCode::CREATED, axum::Json((&row).try_into()?)))
}

/// List a project's routes in evaluation order.
#[utoipa::path(get, path = "/api/v1/projects/{id}/routes", tag = "routing", security(("user_token" = [])),
    params(("id" = String, Path, description = "Project id")),
    responses((status = 200, body = RouteList), (status = 404, body = crate::error::ErrorBody)))]
async fn list_routes(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<RouteList>> {
    let project = project_of(&state, &ctx, &id).await?;
    let rows = state.engine.db.list_routes(ctx.tenant, project).await?;
    Ok(axum::Json(RouteList {
        data: rows
            .iter()
            .map(TryInto::try_into)
            .collect::<Result<_, _>>()?,
    }))
}

async fn load(state: &AppState, ctx: &UserCtx, id: &str, route: &str) -> ApiResult<RouteRow> {
    let project = project_of(state, ctx, id).await?;
    let route: RouteId = path_id(route, "route")?;
    state
        .engine
        .db
        .get_route(ctx.tenant, project, route)
        .await?
        .ok_or_else(|| ApiError::not_found("route"))
}

/// Get a route.
#[utoipa::path(get, path = "/api/v1/projects/{id}/routes/{route_id}", tag = "routing", security(("user_token" = [])),
    params(("id" = String, Path, description = "Project id"), ("route_id" = String, Path)),
    responses((status = 200, body = RouteView), (status = 404, body = crate::error::ErrorBody)))]
async fn get_route(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, route)): Path<(String, String)>,
) -> ApiResult<axum::Json<RouteView>> {
    Ok(axum::Json(
        (&load(&state, &ctx, &id, &route).await?).try_into()?,
    ))
}

/// Change a route.
#[utoipa::path(patch, path = "/api/v1/projects/{id}/routes/{route_id}", tag = "routing", security(("user_token" = [])), request_body = RouteRequest,
    params(("id" = String, Path, description = "Project id"), ("route_id" = String, Path)),
    responses((status = 200, body = RouteView), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn update_route(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, route)): Path<(String, String)>,
    Json(req): Json<RouteRequest>,
) -> ApiResult<axum::Json<RouteView>> {
    ctx.require(Role::Developer)?;
    let mut row = load(&state, &ctx, &id, &route).await?;
    apply(&state, &ctx, req, &mut row, false).await?;
    row.updated_at = now_ms().max(row.updated_at + 1);
    if !state.engine.db.update_route(&row).await? {
        return Err(ApiError::not_found("route"));
    }
    state.engine.routing_changed();
    Ok(axum::Json((&row).try_into()?))
}

/// Delete a route.
#[utoipa::path(delete, path = "/api/v1/projects/{id}/routes/{route_id}", tag = "routing", security(("user_token" = [])),
    params(("id" = String, Path, description = "Project id"), ("route_id" = String, Path)),
    responses((status = 204), (status = 404, body = crate::error::ErrorBody)))]
async fn delete_route(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, route)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    ctx.require(Role::Developer)?;
    let project = project_of(&state, &ctx, &id).await?;
    let route: RouteId = path_id(&route, "route")?;
    if !state
        .engine
        .db
        .delete_route(ctx.tenant, project, route)
        .await?
    {
        return Err(ApiError::not_found("route"));
    }
    state.engine.routing_changed();
    Ok(StatusCode::NO_CONTENT)
}

/// The parts of a message that routing looks at; other send fields are accepted and ignored,
/// so a send body can be pasted as is.
#[derive(Deserialize, ToSchema)]
pub struct ResolveRequest {
    /// Defaults to the project's `default_from`.
    pub from: Option<String>,
    pub to: Option<OneOrMany>,
    pub cc: Option<OneOrMany>,
    pub bcc: Option<OneOrMany>,
    pub tags: Option<Vec<String>>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Serialize, ToSchema)]
pub struct ResolvedTarget {
    pub provider_id: String,
    pub provider_name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub weight: u32,
    /// This target's share of its group's messages (0 to 1).
    pub share: f64,
    pub rate_per_second: Option<f64>,
    pub circuit: CircuitView,
}

#[derive(Serialize, ToSchema)]
pub struct ResolvedGroup {
    pub priority: i64,
    pub targets: Vec<ResolvedTarget>,
}

#[derive(Serialize, ToSchema)]
pub struct Resolution {
    /// The matching route, or null when the project's default provider is used.
    pub route_id: Option<String>,
    pub route_name: Option<String>,
    pub reason: String,
    /// Failover order: a message tries one target of the first group, then of the next.
    pub groups: Vec<ResolvedGroup>,
    /// Every route looked at, in order, and why it did or did not match.
    pub evaluated: Vec<RouteCheck>,
}

/// Dry run: which route and provider order a message would use, and why. Sends nothing.
#[utoipa::path(post, path = "/api/v1/projects/{id}/routes/resolve", tag = "routing", security(("user_token" = [])), request_body = ResolveRequest,
    params(("id" = String, Path, description = "Project id")),
    responses((status = 200, body = Resolution), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn resolve(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
    Json(req): Json<ResolveRequest>,
) -> ApiResult<axum::Json<Resolution>> {
    let project = project_of(&state, &ctx, &id).await?;
    // A dry run reflects what is stored now, not a cached view.
    state.engine.routing_changed();
    let snap = state
        .engine
        .project_snapshot(ctx.tenant, project)
        .await?
        .ok_or_else(|| ApiError::not_found("project"))?;
    let mut errs = ValidationErrors::new();
    let from = match req.from.as_deref() {
        Some(f) => errs.check("from", Mailbox::parse(f)),
        None if snap.settings.default_from.is_some() => snap.settings.default_from.clone(),
        None => {
            errs.add("from", "is required (the project has no default_from)");
            None
        }
    };
    let mut recipients = parse_list("to", req.to.as_ref(), &mut errs);
    recipients.extend(parse_list("cc", req.cc.as_ref(), &mut errs));
    recipients.extend(parse_list("bcc", req.bcc.as_ref(), &mut errs));
    errs.into_result()?;
    let from = from.ok_or_else(|| ApiError::internal("validated from missing"))?;
    let mut tags = req.tags.unwrap_or_default();
    for t in &snap.settings.tags {
        if !tags.contains(t) {
            tags.push(t.clone());
        }
    }
    let metadata = req.metadata.unwrap_or_default();
    let plan = snap.plan(&RoutingInput {
        from_domain: from.address.domain(),
        recipient_domains: recipients.iter().map(|m| m.address.domain()).collect(),
        tags: &tags,
        metadata: &metadata,
    });
    let groups = plan
        .groups
        .iter()
        .map(|g| {
            let total: u32 = g.targets.iter().map(|t| t.weight).sum();
            ResolvedGroup {
                priority: g.priority,
                targets: g
                    .targets
                    .iter()
                    .filter_map(|t| {
                        let p = snap.providers.get(&t.provider_id)?;
                        Some(ResolvedTarget {
                            provider_id: t.provider_id.clone(),
                            provider_name: p.row.name.clone(),
                            kind: p.row.kind.clone(),
                            weight: t.weight,
                            share: f64::from(t.weight) / f64::from(total.max(1)),
                            rate_per_second: p.options.rate_per_second,
                            circuit: state.engine.breakers.view(&t.provider_id),
                        })
                    })
                    .collect(),
            }
        })
        .collect();
    Ok(axum::Json(Resolution {
        route_id: plan.route_id,
        route_name: plan.route_name,
        reason: plan.reason,
        groups,
        evaluated: plan.evaluated,
    }))
}
