//! Email templates of a project: CRUD by slug, immutable versions with one published version,
//! per-locale content, layouts, MJML, and a preview that renders any version with given data.

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, UserCtx};
use crate::v1::{clean_name, project_of, rfc3339, some_value};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use courierx_domain::{ProjectId, Role, Slug, TenantId, ValidationErrors, now_ms};
use courierx_engine::templates::{Pick, TemplateError, check_syntax, compile_mjml, parse_locale};
use courierx_store::StoreError;
use courierx_store::templates::{ContentRow, TemplateRow, VersionRow};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_template, list_templates))
        .routes(routes!(get_template, update_template, delete_template))
        .routes(routes!(list_versions))
        .routes(routes!(publish))
        .routes(routes!(preview))
}

const DEFAULT_LOCALE: &str = "en";
/// Largest template source (each of subject, html, mjml and text), in bytes.
const MAX_SOURCE: usize = 512 * 1024;
const MAX_SUBJECT: usize = 2000;

/// A template with the content of one version in one locale (by default the latest version in
/// the default locale).
#[derive(Serialize, ToSchema)]
pub struct TemplateView {
    pub id: String,
    pub project_id: String,
    pub name: String,
    pub slug: String,
    /// `draft` (nothing published), `published` or `archived`.
    pub state: String,
    pub default_locale: String,
    /// The version sends use; null unless `state` is `published`.
    pub published_version: Option<i64>,
    pub latest_version: i64,
    /// The version shown here.
    pub version: i64,
    /// The locale of the content shown here.
    pub locale: String,
    /// Every locale this version has content for.
    pub locales: Vec<String>,
    /// Slug of the template whose HTML wraps this one's through `{{ content }}`.
    pub layout: Option<String>,
    pub subject: String,
    /// The HTML template (compiled from `mjml` when that is set).
    pub html: Option<String>,
    pub mjml: Option<String>,
    pub text: Option<String>,
    pub created_at: String,
    pub updated_at: String,
}

fn view(
    t: &TemplateRow,
    version: i64,
    layout: Option<String>,
    contents: &[ContentRow],
    c: &ContentRow,
) -> TemplateView {
    TemplateView {
        id: t.id.clone(),
        project_id: t.project_id.clone(),
        name: t.name.clone(),
        slug: t.slug.clone(),
        state: t.state.clone(),
        default_locale: t.default_locale.clone(),
        published_version: t.published_version,
        latest_version: t.latest_version,
        version,
        locale: c.locale.clone(),
        locales: contents.iter().map(|c| c.locale.clone()).collect(),
        layout,
        subject: c.subject.clone(),
        html: c.html.clone(),
        mjml: c.mjml.clone(),
        text: c.text.clone(),
        created_at: rfc3339(t.created_at),
        updated_at: rfc3339(t.updated_at),
    }
}

#[derive(Serialize, ToSchema)]
pub struct TemplateSummary {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub state: String,
    pub default_locale: String,
    pub published_version: Option<i64>,
    pub latest_version: i64,
    pub created_at: String,
    pub updated_at: String,
}

impl From<&TemplateRow> for TemplateSummary {
    fn from(t: &TemplateRow) -> Self {
        Self {
            id: t.id.clone(),
            name: t.name.clone(),
            slug: t.slug.clone(),
            state: t.state.clone(),
            default_locale: t.default_locale.clone(),
            published_version: t.published_version,
            latest_version: t.latest_version,
            created_at: rfc3339(t.created_at),
            updated_at: rfc3339(t.updated_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct TemplateList {
    pub data: Vec<TemplateSummary>,
}

/// A new template; its content becomes version 1 in `locale`, which is also the default locale.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTemplateRequest {
    pub name: Option<String>,
    /// Lowercase letters, digits and dashes, unique in the project (409 when taken); derived
    /// from `name` when absent.
    pub slug: Option<String>,
    /// A template, not HTML-escaped.
    pub subject: Option<String>,
    /// A template whose output is HTML-escaped. Give `html` or `mjml`, and/or `text`.
    pub html: Option<String>,
    /// MJML, compiled to `html` when saved.
    pub mjml: Option<String>,
    /// A template, not escaped; generated from the HTML when absent.
    pub text: Option<String>,
    /// `en` (default), `fr-CA`, `es-419`…
    pub locale: Option<String>,
    /// Slug of another template of the project whose HTML wraps this one's through `{{ content }}`.
    pub layout: Option<String>,
}

/// Changes to a template. Content fields (`subject`, `html`, `mjml`, `text`, `layout`) write a
/// new version when they change something; `html`/`mjml`/`text`/`layout` take `null` to clear.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTemplateRequest {
    pub name: Option<String>,
    /// The locale the content fields write (default: the template's default locale); a locale
    /// the template does not have yet is added (then `subject` and a body are required).
    pub locale: Option<String>,
    /// Must be a locale the latest version has.
    pub default_locale: Option<String>,
    pub subject: Option<String>,
    #[serde(default, deserialize_with = "some_value")]
    #[schema(value_type = Option<String>)]
    pub html: Option<Option<String>>,
    #[serde(default, deserialize_with = "some_value")]
    #[schema(value_type = Option<String>)]
    pub mjml: Option<Option<String>>,
    #[serde(default, deserialize_with = "some_value")]
    #[schema(value_type = Option<String>)]
    pub text: Option<Option<String>>,
    #[serde(default, deserialize_with = "some_value")]
    #[schema(value_type = Option<String>)]
    pub layout: Option<Option<String>>,
    /// `archived` (sends refuse it) or `draft` (unpublish). Publishing is `POST …/publish`.
    pub state: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishRequest {
    pub version: Option<i64>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    /// The variables (a JSON object).
    #[schema(value_type = Object)]
    pub data: Option<Value>,
    /// Falls back `fr-CA` → `fr` → the template's default locale.
    pub locale: Option<String>,
    /// Default: the published version, else the latest.
    pub version: Option<i64>,
}

#[derive(Serialize, ToSchema)]
pub struct PreviewView {
    pub subject: String,
    pub html: Option<String>,
    pub text: String,
    pub version: i64,
    pub locale: String,
}

#[derive(Serialize, ToSchema)]
pub struct VersionView {
    pub version: i64,
    pub layout: Option<String>,
    pub locales: Vec<String>,
    pub published: bool,
    pub created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct VersionList {
    pub data: Vec<VersionView>,
}

#[derive(Deserialize, IntoParams)]
pub struct ShowQuery {
    /// Show this locale's content (default: the template's default locale).
    pub locale: Option<String>,
    /// Show this version (default: the latest).
    pub version: Option<String>,
}

/// Maps a render failure: unknown template 404, storage failures as usual, the rest 422 with
/// field errors under `base` (`template` for a send, empty for a preview).
pub fn template_error(e: TemplateError, base: &str) -> ApiError {
    if let TemplateError::NotFound(_) = e
        && base.is_empty()
    {
        return ApiError::not_found("template");
    }
    match e.into_validation(base) {
        Ok(v) => ApiError::validation(v),
        Err(s) => s.into(),
    }
}

async fn load(
    state: &AppState,
    ctx: &UserCtx,
    id: &str,
    slug: &str,
) -> ApiResult<(ProjectId, TemplateRow)> {
    let project = project_of(state, ctx, id).await?;
    let t = state
        .engine
        .db
        .get_template(ctx.tenant, project, slug)
        .await?
        .ok_or_else(|| ApiError::not_found("template"))?;
    Ok((project, t))
}

async fn version_of(
    state: &AppState,
    t: &TemplateRow,
    version: i64,
) -> ApiResult<(Option<String>, Vec<ContentRow>)> {
    state
        .engine
        .db
        .get_template_version(&t.id, version)
        .await?
        .ok_or_else(|| ApiError::not_found("template version"))
}

/// Treats `""` like an absent body part.
fn non_empty(v: Option<Option<String>>) -> Option<Option<String>> {
    v.map(|o| o.filter(|s| !s.is_empty()))
}

/// A source that MiniJinja can compile and that is not too large.
fn source(field: &str, s: &str, max: usize, errs: &mut ValidationErrors) -> bool {
    if s.len() > max {
        errs.add(field, format!("must be at most {max} bytes"));
        return false;
    }
    errs.check(field, check_syntax(s)).is_some()
}

/// The content fields of a request.
struct ContentInput {
    subject: Option<String>,
    html: Option<Option<String>>,
    mjml: Option<Option<String>>,
    text: Option<Option<String>>,
}

impl ContentInput {
    fn is_empty(&self) -> bool {
        self.subject.is_none() && self.html.is_none() && self.mjml.is_none() && self.text.is_none()
    }

    /// Applies the fields onto `c`, checking syntax and compiling MJML, collecting every problem.
    fn apply(self, c: &mut ContentRow, new_variant: bool, errs: &mut ValidationErrors) {
        match self.subject {
            Some(s) if source("subject", &s, MAX_SUBJECT, errs) => c.subject = s,
            None if new_variant => errs.add("subject", "is required"),
            _ => {}
        }
        let (html, mjml, text) = (
            non_empty(self.html),
            non_empty(self.mjml),
            non_empty(self.text),
        );
        // A body that was given but refused has its own error already.
        let body_given = [&html, &mjml, &text]
            .iter()
            .any(|b| matches!(b, Some(Some(_))));
        if matches!((&html, &mjml), (Some(Some(_)), Some(Some(_)))) {
            errs.add("html", "give `html` or `mjml`, not both");
        }
        match html {
            Some(Some(h)) if source("html", &h, MAX_SOURCE, errs) => {
                c.html = Some(h);
                c.mjml = None;
            }
            Some(None) => {
                c.html = None;
                c.mjml = None;
            }
            _ => {}
        }
        match mjml {
            // Template tags are checked on the MJML source, where their lines and columns are.
            Some(Some(m)) if source("mjml", &m, MAX_SOURCE, errs) => {
                if let Some(compiled) = errs.check("mjml", compile_mjml(&m))
                    && source("mjml", &compiled, MAX_SOURCE * 4, errs)
                {
                    c.html = Some(compiled);
                    c.mjml = Some(m);
                }
            }
            Some(None) => {
                c.mjml = None;
                c.html = None;
            }
            _ => {}
        }
        match text {
            Some(Some(t)) if source("text", &t, MAX_SOURCE, errs) => c.text = Some(t),
            Some(None) => c.text = None,
            _ => {}
        }
        if !body_given && c.html.is_none() && c.text.is_none() {
            errs.add("html", "give `html`, `mjml` or `text`");
        }
    }
}

/// Checks that `layout` can wrap template `own`: it exists, has HTML, has no layout itself, and
/// `own` is not the layout of another template (layouts nest one level).
async fn check_layout(
    state: &AppState,
    tenant: TenantId,
    project: ProjectId,
    own: &str,
    layout: &str,
    errs: &mut ValidationErrors,
) -> ApiResult<()> {
    if layout == own {
        errs.add("layout", "a template cannot be its own layout");
        return Ok(());
    }
    let db = &state.engine.db;
    let Some(lt) = db.get_template(tenant, project, layout).await? else {
        errs.add("layout", format!("no template `{layout}` in this project"));
        return Ok(());
    };
    let compiled = state
        .engine
        .compiled_version(&lt, lt.latest_version)
        .await
        .map_err(|e| template_error(e, "layout"))?;
    if compiled.layout().is_some() {
        errs.add(
            "layout",
            format!("`{layout}` has a layout itself; layouts nest one level"),
        );
    } else if !compiled.has_html() {
        errs.add("layout", format!("`{layout}` has no HTML to wrap with"));
    }
    let users = db.templates_using_layout(tenant, project, own).await?;
    if !users.is_empty() {
        errs.add(
            "layout",
            format!(
                "`{own}` is the layout of `{}`; layouts nest one level",
                users.join("`, `")
            ),
        );
    }
    Ok(())
}

fn valid_slug(s: &str) -> bool {
    !s.is_empty() && Slug::from_name(s, "").as_str() == s
}

/// Create a template (developer or above); its content is version 1, a draft.
#[utoipa::path(post, path = "/api/v1/projects/{id}/templates", tag = "templates", security(("user_token" = [])), request_body = CreateTemplateRequest,
    params(("id" = String, Path, description = "Project id")),
    responses((status = 201, body = TemplateView), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "The slug is taken", body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn create_template(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
    Json(req): Json<CreateTemplateRequest>,
) -> ApiResult<(StatusCode, axum::Json<TemplateView>)> {
    ctx.require(Role::Developer)?;
    let project = project_of(&state, &ctx, &id).await?;
    let mut errs = ValidationErrors::new();
    let name = clean_name("name", req.name.as_deref(), 100, &mut errs);
    let explicit = req.slug.clone();
    if let Some(s) = &explicit
        && !valid_slug(s)
    {
        errs.add(
            "slug",
            "must be 1 to 48 lowercase letters, digits and single dashes",
        );
    }
    let slug = explicit.clone().unwrap_or_else(|| {
        Slug::from_name(name.as_deref().unwrap_or_default(), "template").to_string()
    });
    let locale = match req.locale.as_deref() {
        Some(l) => errs.check("locale", parse_locale(l)).unwrap_or_default(),
        None => DEFAULT_LOCALE.to_string(),
    };
    let mut content = ContentRow {
        locale: locale.clone(),
        subject: String::new(),
        html: None,
        mjml: None,
        text: None,
    };
    ContentInput {
        subject: req.subject,
        html: req.html.map(Some),
        mjml: req.mjml.map(Some),
        text: req.text.map(Some),
    }
    .apply(&mut content, true, &mut errs);
    let layout = req.layout.filter(|l| !l.is_empty());
    if let Some(l) = &layout {
        check_layout(&state, ctx.tenant, project, &slug, l, &mut errs).await?;
    }
    errs.into_result()?;
    let name = name.ok_or_else(|| ApiError::internal("validated name missing"))?;
    let now = now_ms();
    let mut row = TemplateRow {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: ctx.tenant.to_string(),
        project_id: project.to_string(),
        name,
        slug: slug.clone(),
        default_locale: locale,
        state: "draft".into(),
        published_version: None,
        latest_version: 1,
        created_at: now,
        updated_at: now,
    };
    let contents = [content];
    let db = &state.engine.db;
    // A derived slug already in use gets a numeric suffix; an explicit one is a conflict.
    for n in 2..1000 {
        match db.create_template(&row, layout.as_deref(), &contents).await {
            Ok(()) => {
                return Ok((
                    StatusCode::CREATED,
                    axum::Json(view(&row, 1, layout, &contents, &contents[0])),
                ));
            }
            Err(StoreError::Conflict(_)) if explicit.is_none() => row.slug = format!("{slug}-{n}"),
            Err(StoreError::Conflict(_)) => {
                return Err(ApiError::conflict(
                    "slug_taken",
                    format!("a template with slug `{slug}` already exists in this project"),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::conflict(
        "slug_taken",
        "no free slug for this name",
    ))
}

/// List a project's templates, by slug.
#[utoipa::path(get, path = "/api/v1/projects/{id}/templates", tag = "templates", security(("user_token" = [])),
    params(("id" = String, Path, description = "Project id")),
    responses((status = 200, body = TemplateList), (status = 404, body = crate::error::ErrorBody)))]
async fn list_templates(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path(id): Path<String>,
) -> ApiResult<axum::Json<TemplateList>> {
    let project = project_of(&state, &ctx, &id).await?;
    let rows = state.engine.db.list_templates(ctx.tenant, project).await?;
    Ok(axum::Json(TemplateList {
        data: rows.iter().map(Into::into).collect(),
    }))
}

/// Get a template with the content of one version and locale.
#[utoipa::path(get, path = "/api/v1/projects/{id}/templates/{slug}", tag = "templates", security(("user_token" = [])),
    params(("id" = String, Path, description = "Project id"), ("slug" = String, Path), ShowQuery),
    responses((status = 200, body = TemplateView), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn get_template(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, slug)): Path<(String, String)>,
    Query(q): Query<ShowQuery>,
) -> ApiResult<axum::Json<TemplateView>> {
    let (_, t) = load(&state, &ctx, &id, &slug).await?;
    let mut errs = ValidationErrors::new();
    let version = match q.version.as_deref() {
        None => Some(t.latest_version),
        Some(v) => errs.check(
            "version",
            v.parse::<i64>().map_err(|_| "must be a version number"),
        ),
    };
    let locale = match q.locale.as_deref() {
        None => Some(t.default_locale.clone()),
        Some(l) => errs.check("locale", parse_locale(l)),
    };
    errs.into_result()?;
    let (version, locale) = version
        .zip(locale)
        .ok_or_else(|| ApiError::internal("validated query missing"))?;
    let (layout, contents) = version_of(&state, &t, version).await?;
    let c = contents
        .iter()
        .find(|c| c.locale == locale)
        .ok_or_else(|| ApiError::not_found("template locale"))?;
    Ok(axum::Json(view(&t, version, layout.clone(), &contents, c)))
}

/// Change a template (developer or above). Changed content is saved as a new version (a draft
/// until published); `{"state":"archived"}` archives it, `{"state":"draft"}` unpublishes it.
#[utoipa::path(patch, path = "/api/v1/projects/{id}/templates/{slug}", tag = "templates", security(("user_token" = [])), request_body = UpdateTemplateRequest,
    params(("id" = String, Path, description = "Project id"), ("slug" = String, Path)),
    responses((status = 200, body = TemplateView), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody),
        (status = 409, description = "Saved concurrently", body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn update_template(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, slug)): Path<(String, String)>,
    Json(req): Json<UpdateTemplateRequest>,
) -> ApiResult<axum::Json<TemplateView>> {
    ctx.require(Role::Developer)?;
    let (project, mut t) = load(&state, &ctx, &id, &slug).await?;
    let (old_layout, old_contents) = version_of(&state, &t, t.latest_version).await?;
    let mut errs = ValidationErrors::new();
    if let Some(n) = req.name.as_deref()
        && let Some(n) = clean_name("name", Some(n), 100, &mut errs)
    {
        t.name = n;
    }
    let locale = match req.locale.as_deref() {
        Some(l) => errs.check("locale", parse_locale(l)).unwrap_or_default(),
        None => t.default_locale.clone(),
    };
    let input = ContentInput {
        subject: req.subject,
        html: req.html,
        mjml: req.mjml,
        text: req.text,
    };
    let mut contents = old_contents.clone();
    if !input.is_empty() && !locale.is_empty() {
        let existing = contents.iter().position(|c| c.locale == locale);
        let mut c = existing.map(|i| contents[i].clone()).unwrap_or(ContentRow {
            locale: locale.clone(),
            subject: String::new(),
            html: None,
            mjml: None,
            text: None,
        });
        input.apply(&mut c, existing.is_none(), &mut errs);
        match existing {
            Some(i) => contents[i] = c,
            None => {
                contents.push(c);
                contents.sort_by(|a, b| a.locale.cmp(&b.locale));
            }
        }
    }
    let layout = match req.layout {
        Some(Some(l)) if !l.is_empty() => {
            check_layout(&state, ctx.tenant, project, &t.slug, &l, &mut errs).await?;
            Some(l)
        }
        Some(_) => None,
        None => old_layout.clone(),
    };
    if let Some(d) = req.default_locale.as_deref()
        && let Some(d) = errs.check("default_locale", parse_locale(d))
    {
        if contents.iter().any(|c| c.locale == d) {
            t.default_locale = d;
        } else {
            errs.add(
                "default_locale",
                format!("the template has no `{d}` content"),
            );
        }
    }
    match req.state.as_deref() {
        None => {}
        Some(s @ ("archived" | "draft")) => {
            t.state = s.to_string();
            t.published_version = None;
        }
        Some("published") => errs.add(
            "state",
            "publish a version with POST …/templates/{slug}/publish",
        ),
        Some(_) => errs.add("state", "must be `archived` or `draft`"),
    }
    errs.into_result()?;
    let db = &state.engine.db;
    t.updated_at = now_ms().max(t.updated_at + 1);
    if contents != old_contents || layout != old_layout {
        t.latest_version += 1;
        db.save_template_version(&t, layout.as_deref(), &contents)
            .await
            .map_err(|e| match e {
                StoreError::Conflict(_) => ApiError::conflict(
                    "template_changed",
                    "the template was saved by another request; reload and retry",
                ),
                e => e.into(),
            })?;
    }
    if !db.update_template(&t).await? {
        return Err(ApiError::not_found("template"));
    }
    let shown = contents
        .iter()
        .find(|c| c.locale == locale)
        .or_else(|| contents.iter().find(|c| c.locale == t.default_locale))
        .or(contents.first())
        .ok_or_else(|| ApiError::internal("template version without content"))?;
    Ok(axum::Json(view(
        &t,
        t.latest_version,
        layout,
        &contents,
        shown,
    )))
}

/// Delete a template and every version (developer or above). A template other templates use
/// as their layout cannot be deleted (409).
#[utoipa::path(delete, path = "/api/v1/projects/{id}/templates/{slug}", tag = "templates", security(("user_token" = [])),
    params(("id" = String, Path, description = "Project id"), ("slug" = String, Path)),
    responses((status = 204), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 409, body = crate::error::ErrorBody)))]
async fn delete_template(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, slug)): Path<(String, String)>,
) -> ApiResult<StatusCode> {
    ctx.require(Role::Developer)?;
    let (project, t) = load(&state, &ctx, &id, &slug).await?;
    let db = &state.engine.db;
    let users = db
        .templates_using_layout(ctx.tenant, project, &t.slug)
        .await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(
            "template_in_use",
            format!("`{}` is the layout of `{}`", t.slug, users.join("`, `")),
        ));
    }
    if !db.delete_template(ctx.tenant, project, &t.id).await? {
        return Err(ApiError::not_found("template"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// List a template's versions, newest first.
#[utoipa::path(get, path = "/api/v1/projects/{id}/templates/{slug}/versions", tag = "templates", security(("user_token" = [])),
    params(("id" = String, Path, description = "Project id"), ("slug" = String, Path)),
    responses((status = 200, body = VersionList), (status = 404, body = crate::error::ErrorBody)))]
async fn list_versions(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, slug)): Path<(String, String)>,
) -> ApiResult<axum::Json<VersionList>> {
    let (_, t) = load(&state, &ctx, &id, &slug).await?;
    let rows = state.engine.db.list_template_versions(&t.id).await?;
    let data = rows
        .into_iter()
        .map(|v: VersionRow| VersionView {
            published: t.published_version == Some(v.version),
            version: v.version,
            layout: v.layout,
            locales: v
                .locales
                .split(',')
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect(),
            created_at: rfc3339(v.created_at),
        })
        .collect();
    Ok(axum::Json(VersionList { data }))
}

/// Publish a version (developer or above): sends use it from now on. Publishing an archived
/// template restores it.
#[utoipa::path(post, path = "/api/v1/projects/{id}/templates/{slug}/publish", tag = "templates", security(("user_token" = [])), request_body = PublishRequest,
    params(("id" = String, Path, description = "Project id"), ("slug" = String, Path)),
    responses((status = 200, body = TemplateView), (status = 403, body = crate::error::ErrorBody), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn publish(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, slug)): Path<(String, String)>,
    Json(req): Json<PublishRequest>,
) -> ApiResult<axum::Json<TemplateView>> {
    ctx.require(Role::Developer)?;
    let (project, mut t) = load(&state, &ctx, &id, &slug).await?;
    let version = req
        .version
        .ok_or_else(|| ApiError::field("version", "is required"))?;
    let Some((layout, contents)) = state.engine.db.get_template_version(&t.id, version).await?
    else {
        return Err(ApiError::field(
            "version",
            format!("the template has no version {version}"),
        ));
    };
    // Sends would fail on a layout that cannot be sent.
    if let Some(l) = &layout {
        let published = state.engine.db.get_template(ctx.tenant, project, l).await?;
        match published {
            None => {
                return Err(ApiError::field(
                    "version",
                    format!("its layout `{l}` does not exist"),
                ));
            }
            Some(lt) if lt.published_version.is_none() => {
                return Err(ApiError::field(
                    "version",
                    format!("its layout `{l}` has no published version; publish it first"),
                ));
            }
            Some(_) => {}
        }
    }
    // Compiling proves the stored sources still parse, and warms the send path's cache.
    state
        .engine
        .compiled_version(&t, version)
        .await
        .map_err(|e| template_error(e, ""))?;
    t.state = "published".into();
    t.published_version = Some(version);
    t.updated_at = now_ms().max(t.updated_at + 1);
    if !state.engine.db.update_template(&t).await? {
        return Err(ApiError::not_found("template"));
    }
    let c = contents
        .iter()
        .find(|c| c.locale == t.default_locale)
        .or(contents.first())
        .ok_or_else(|| ApiError::internal("template version without content"))?;
    Ok(axum::Json(view(&t, version, layout.clone(), &contents, c)))
}

/// Render a version with `data` (viewers may preview). Every variable the template uses but
/// `data` lacks is listed in one 422, each as `data.<name>`.
#[utoipa::path(post, path = "/api/v1/projects/{id}/templates/{slug}/preview", tag = "templates", security(("user_token" = [])), request_body = PreviewRequest,
    params(("id" = String, Path, description = "Project id"), ("slug" = String, Path)),
    responses((status = 200, body = PreviewView), (status = 404, body = crate::error::ErrorBody), (status = 422, body = crate::error::ErrorBody)))]
async fn preview(
    State(state): State<AppState>,
    ctx: UserCtx,
    Path((id, slug)): Path<(String, String)>,
    Json(req): Json<PreviewRequest>,
) -> ApiResult<axum::Json<PreviewView>> {
    let project = project_of(&state, &ctx, &id).await?;
    let data = req
        .data
        .unwrap_or_else(|| Value::Object(Default::default()));
    let pick = req.version.map_or(Pick::PublishedOrLatest, Pick::Version);
    let r = state
        .engine
        .render_template_at(
            ctx.tenant,
            project,
            &slug,
            &data,
            req.locale.as_deref(),
            pick,
        )
        .await
        .map_err(|e| template_error(e, ""))?;
    Ok(axum::Json(PreviewView {
        subject: r.subject,
        html: r.html,
        text: r.text,
        version: r.version,
        locale: r.locale,
    }))
}
