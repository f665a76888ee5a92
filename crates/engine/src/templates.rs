//! Email templates: MiniJinja with HTML auto-escaped (subject and text are not), strict
//! undefined that reports every missing variable, MJML compiled to HTML when saved, layouts that
//! wrap a template's HTML through `{{ content }}`, per-locale content with `fr-CA` → `fr` →
//! default fallback, and a plain-text part generated from the HTML when a template has none.
//!
//! Versions are immutable, so compiled versions are cached by (template id, version) without
//! invalidation; every render still reads which version is published, so a publish in any
//! process takes effect at once.

pub mod html_text;

use crate::Engine;
use courierx_domain::{FieldError, ProjectId, TenantId, ValidationErrors};
use courierx_store::StoreError;
use courierx_store::templates::{ContentRow, TemplateRow};
use minijinja::value::{Serde, merge_maps};
use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value as JValue, context};
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Instruction budget of one render: a tenant's template cannot loop for long.
const FUEL: u64 = 5_000_000;
/// At most this many missing names are collected, within this time (each costs a render).
const MAX_MISSING: usize = 100;
const COLLECT_BUDGET: Duration = Duration::from_millis(100);
/// Compiled versions kept per process.
const CACHE_CAPACITY: usize = 1024;

/// The parts of a template version; each is a MiniJinja template named `{locale}/{part}`.
const SUBJECT: &str = "subject";
const HTML: &str = "html";
const TEXT: &str = "text";

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("no template `{0}` in this project")]
    NotFound(String),
    #[error("template `{0}` has no version {1}")]
    VersionNotFound(String, i64),
    #[error("template `{0}` has no published version")]
    NotPublished(String),
    #[error("{0}")]
    InvalidLocale(String),
    #[error("must be a JSON object")]
    InvalidData,
    #[error("missing variables: {}", .0.join(", "))]
    MissingVariables(Vec<String>),
    /// A render failure other than a missing variable; `part` is `subject`, `html`, `text` or
    /// `layout`, and the message names the line and column.
    #[error("{part}: {message}")]
    Render { part: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TemplateError {
    /// Field errors for a request that holds the template reference at `base` (`template` in a
    /// send, empty for a preview whose fields are at the top), e.g. one `template.data.name`
    /// error per missing variable. A storage failure is handed back as is.
    pub fn into_validation(self, base: &str) -> Result<ValidationErrors, StoreError> {
        let at = |f: &str| {
            if base.is_empty() {
                f.to_string()
            } else {
                format!("{base}.{f}")
            }
        };
        let message = self.to_string();
        let errs = match self {
            Self::Store(e) => return Err(e),
            Self::NotFound(_) | Self::NotPublished(_) => {
                ValidationErrors::single(at("slug"), message)
            }
            Self::VersionNotFound(..) => ValidationErrors::single(at("version"), message),
            Self::InvalidLocale(_) => ValidationErrors::single(at("locale"), message),
            Self::InvalidData => ValidationErrors::single(at("data"), message),
            Self::MissingVariables(names) => ValidationErrors(
                names
                    .iter()
                    .map(|n| FieldError {
                        field: at(&format!("data.{n}")),
                        message: "is used by the template but missing from data".into(),
                    })
                    .collect(),
            ),
            Self::Render { .. } => {
                ValidationErrors::single(if base.is_empty() { "template" } else { base }, message)
            }
        };
        Ok(errs)
    }
}

/// What a send puts in the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedTemplate {
    pub template_id: String,
    pub slug: String,
    pub version: i64,
    /// The locale whose content was used (after fallback).
    pub locale: String,
    /// One line (line breaks from data become spaces).
    pub subject: String,
    pub html: Option<String>,
    /// The template's text part, or one generated from `html`.
    pub text: String,
}

/// Which version to render.
#[derive(Debug, Clone, Copy)]
pub enum Pick {
    /// The published version (sending).
    Published,
    /// The published version, else the latest (previews).
    PublishedOrLatest,
    Version(i64),
}

/// Normalises a locale such as `en`, `fr-CA` or `es-419` (`fr_ca` → `fr-CA`).
pub fn parse_locale(s: &str) -> Result<String, String> {
    let (lang, region) = match s.split_once(['-', '_']) {
        Some((l, r)) => (l, Some(r)),
        None => (s, None),
    };
    let lang_ok = (2..=3).contains(&lang.len()) && lang.bytes().all(|b| b.is_ascii_alphabetic());
    let region_ok = region.is_none_or(|r| {
        (r.len() == 2 && r.bytes().all(|b| b.is_ascii_alphabetic()))
            || (r.len() == 3 && r.bytes().all(|b| b.is_ascii_digit()))
    });
    if !lang_ok || !region_ok {
        return Err(format!(
            "`{s}` is not a locale like `en`, `fr-CA` or `es-419`"
        ));
    }
    let mut out = lang.to_ascii_lowercase();
    if let Some(r) = region {
        out.push('-');
        out.push_str(&r.to_ascii_uppercase());
    }
    Ok(out)
}

/// Compiles MJML to HTML (template tags inside text and attributes pass through unchanged).
pub fn compile_mjml(source: &str) -> Result<String, String> {
    let parsed = mrml::parse(source).map_err(|e| format!("invalid MJML: {e}"))?;
    parsed
        .element
        .render(&mrml::prelude::render::RenderOptions::default())
        .map_err(|e| format!("MJML could not be rendered: {e}"))
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    // Debug info names the undefined value in errors and gives spans for line/column.
    env.set_debug(true);
    // Strict, except that `{% if optional %}` may test a missing value.
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_fuel(Some(FUEL));
    env.set_auto_escape_callback(|name| {
        if name.ends_with("/html") {
            AutoEscape::Html
        } else {
            AutoEscape::None
        }
    });
    env
}

/// Checks a template's syntax; the error reads `line 3, column 7: …`.
pub fn check_syntax(source: &str) -> Result<(), String> {
    environment()
        .template_from_str(source)
        .map(|_| ())
        .map_err(|e| describe(source, &e))
}

/// `line L, column C: detail`, the column counted in characters from 1.
fn describe(source: &str, e: &minijinja::Error) -> String {
    let detail = e
        .detail()
        .map(str::to_string)
        .unwrap_or_else(|| e.kind().to_string());
    let at = e.range().and_then(|r| source.get(..r.start));
    match (at, e.line()) {
        (Some(before), _) => {
            let line = before.matches('\n').count() + 1;
            let col = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!("line {line}, column {col}: {detail}")
        }
        (None, Some(line)) => format!("line {line}: {detail}"),
        (None, None) => detail,
    }
}

/// One template version compiled for rendering: every locale's parts in one environment.
pub struct CompiledVersion {
    env: Environment<'static>,
    layout: Option<String>,
    locales: Vec<String>,
}

impl CompiledVersion {
    pub fn compile(layout: Option<String>, contents: &[ContentRow]) -> Result<Self, TemplateError> {
        let mut env = environment();
        for c in contents {
            let parts = [
                (SUBJECT, Some(&c.subject)),
                (HTML, c.html.as_ref()),
                (TEXT, c.text.as_ref()),
            ];
            for (part, source) in parts {
                if let Some(source) = source {
                    env.add_template_owned(format!("{}/{part}", c.locale), source.clone())
                        .map_err(|e| TemplateError::Render {
                            part,
                            message: describe(source, &e),
                        })?;
                }
            }
        }
        Ok(Self {
            env,
            layout,
            locales: contents.iter().map(|c| c.locale.clone()).collect(),
        })
    }

    pub fn layout(&self) -> Option<&str> {
        self.layout.as_deref()
    }

    pub fn has_html(&self) -> bool {
        self.locales
            .iter()
            .any(|l| self.env.get_template(&format!("{l}/{HTML}")).is_ok())
    }

    /// The requested locale, else its language, else `default`, else the first locale there is.
    pub fn pick_locale(&self, requested: Option<&str>, default: &str) -> Option<&str> {
        let has = |l: &str| self.locales.iter().find(|x| x.as_str() == l);
        requested
            .and_then(|r| has(r).or_else(|| r.split_once('-').and_then(|(lang, _)| has(lang))))
            .or_else(|| has(default))
            .or_else(|| self.locales.first())
            .map(String::as_str)
    }

    /// Renders one part; `Ok(None)` when this locale does not have it.
    fn part(
        &self,
        locale: &str,
        part: &'static str,
        ctx: JValue,
    ) -> Result<Option<String>, (&'static str, minijinja::Error, String)> {
        let Ok(t) = self.env.get_template(&format!("{locale}/{part}")) else {
            return Ok(None);
        };
        t.render(ctx)
            .map(Some)
            .map_err(|e| (part, e, t.source().to_string()))
    }

    /// Renders the subject, HTML (wrapped in `layout`, a compiled layout and its locale) and text
    /// for `data`. Every variable the template needs but `data` lacks is reported at once.
    pub fn render(
        &self,
        locale: &str,
        layout: Option<(&CompiledVersion, &str)>,
        data: &Value,
    ) -> Result<Rendered, TemplateError> {
        if !data.is_object() && !data.is_null() {
            return Err(TemplateError::InvalidData);
        }
        // Strict rendering stops at the first undefined value: fill each one in with a
        // placeholder and render again until none is left, so every missing name is listed.
        let mut patched: Option<Value> = None;
        let mut missing: Vec<String> = Vec::new();
        let mut tried: HashSet<String> = HashSet::new();
        // The name filled in last, whose empty string may break arithmetic (then it becomes 0).
        let mut last: Option<String> = None;
        let started = Instant::now();
        loop {
            let d = patched.as_ref().unwrap_or(data);
            let (part, err, source) = match self.render_once(locale, layout, d) {
                Ok(r) if missing.is_empty() => return Ok(r),
                Ok(_) => break,
                Err(f) => f,
            };
            match undefined_name(&err) {
                Some(name) => {
                    if !missing
                        .iter()
                        .any(|m| name == *m || name.starts_with(&format!("{m}.")))
                    {
                        missing.push(name.clone());
                    }
                    let filled = patched.get_or_insert_with(|| data.clone());
                    if !tried.insert(name.clone())
                        || missing.len() >= MAX_MISSING
                        || started.elapsed() > COLLECT_BUDGET
                        || !fill(filled, &name, Value::String(String::new()))
                    {
                        break;
                    }
                    last = Some(name);
                }
                None => match (last.take(), patched.as_mut()) {
                    (Some(name), Some(filled)) => {
                        fill(filled, &name, Value::from(0));
                    }
                    _ if missing.is_empty() => {
                        return Err(TemplateError::Render {
                            part,
                            message: describe(&source, &err),
                        });
                    }
                    _ => break,
                },
            }
        }
        Err(TemplateError::MissingVariables(missing))
    }

    fn render_once(
        &self,
        locale: &str,
        layout: Option<(&CompiledVersion, &str)>,
        data: &Value,
    ) -> Result<Rendered, (&'static str, minijinja::Error, String)> {
        let ctx = JValue::from(Serde(data));
        let subject = self.part(locale, SUBJECT, ctx.clone())?.unwrap_or_default();
        let text = self.part(locale, TEXT, ctx.clone())?;
        let mut html = self.part(locale, HTML, ctx.clone())?;
        if let (Some(inner), Some((l, l_locale))) = (&html, layout) {
            // Already rendered (and escaped) HTML goes in as is.
            // Later maps win in `merge_maps`: `content` is not overridable by data.
            let wrapped = merge_maps([
                ctx,
                context! { content => JValue::from_safe_string(inner.clone()) },
            ]);
            if let Some(out) = l
                .part(l_locale, HTML, wrapped)
                .map_err(|(_, e, s)| ("layout", e, s))?
            {
                html = Some(out);
            }
        }
        let text = match (text, &html) {
            (Some(t), _) => t,
            (None, Some(h)) => html_text::html_to_text(h),
            (None, None) => String::new(),
        };
        Ok(Rendered {
            subject: subject.replace(['\r', '\n'], " ").trim().to_string(),
            html,
            text,
        })
    }
}

/// A rendered version, before it is tied to a template row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub subject: String,
    pub html: Option<String>,
    pub text: String,
}

/// The name in MiniJinja's "`user.name` is undefined" (debug mode names the value).
fn undefined_name(e: &minijinja::Error) -> Option<String> {
    let detail = e.detail()?;
    let end = detail.find("` is undefined")?;
    let start = detail[..end].rfind('`')? + 1;
    Some(detail[start..end].to_string()).filter(|n| !n.is_empty())
}

/// Puts `value` at `path` (`a.b.c`) in `data`, turning non-objects on the way into objects.
/// False when the path is not a plain dotted name.
fn fill(data: &mut Value, path: &str, value: Value) -> bool {
    let segments: Vec<&str> = path.split('.').collect();
    if segments
        .iter()
        .any(|s| s.is_empty() || !s.chars().all(|c| c.is_alphanumeric() || c == '_'))
    {
        return false;
    }
    let mut cur = data;
    for (i, seg) in segments.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Some(obj) = cur.as_object_mut() else {
            return false;
        };
        if i + 1 == segments.len() {
            obj.insert((*seg).to_string(), value);
            return true;
        }
        cur = obj.entry(*seg).or_insert(Value::Null);
    }
    false
}

/// Compiled versions by (template id, version), oldest evicted first.
#[derive(Default)]
pub struct TemplateCache {
    inner: Mutex<CacheInner>,
}

#[derive(Default)]
struct CacheInner {
    map: HashMap<(String, i64), Arc<CompiledVersion>>,
    order: VecDeque<(String, i64)>,
}

impl TemplateCache {
    fn get(&self, id: &str, version: i64) -> Option<Arc<CompiledVersion>> {
        let inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        inner.map.get(&(id.to_string(), version)).cloned()
    }

    fn put(&self, id: &str, version: i64, compiled: Arc<CompiledVersion>) {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let key = (id.to_string(), version);
        if inner.map.insert(key.clone(), compiled).is_none() {
            inner.order.push_back(key);
        }
        while inner.order.len() > CACHE_CAPACITY {
            if let Some(old) = inner.order.pop_front() {
                inner.map.remove(&old);
            }
        }
    }
}

impl Engine {
    /// Renders a template's published version for a send: the requested locale (falling back
    /// `fr-CA` → `fr` → the template's default locale), its layout's published version, and
    /// strict variables (every missing name in `TemplateError::MissingVariables`).
    pub async fn render_template(
        &self,
        tenant: TenantId,
        project: ProjectId,
        slug: &str,
        data: &Value,
        locale: Option<&str>,
    ) -> Result<RenderedTemplate, TemplateError> {
        self.render_template_at(tenant, project, slug, data, locale, Pick::Published)
            .await
    }

    /// Like [`Engine::render_template`] for any version; a layout uses its published version,
    /// or its latest when `pick` is not `Published`.
    pub async fn render_template_at(
        &self,
        tenant: TenantId,
        project: ProjectId,
        slug: &str,
        data: &Value,
        locale: Option<&str>,
        pick: Pick,
    ) -> Result<RenderedTemplate, TemplateError> {
        let requested = locale
            .map(parse_locale)
            .transpose()
            .map_err(TemplateError::InvalidLocale)?;
        let t = self
            .db
            .get_template(tenant, project, slug)
            .await?
            .ok_or_else(|| TemplateError::NotFound(slug.to_string()))?;
        let version = pick_version(&t, pick)?;
        let body = self.compiled_version(&t, version).await?;
        let locale = body
            .pick_locale(requested.as_deref(), &t.default_locale)
            .ok_or_else(|| TemplateError::VersionNotFound(t.slug.clone(), version))?
            .to_string();
        let layout = match body.layout() {
            None => None,
            Some(layout_slug) => {
                let missing = || TemplateError::Render {
                    part: "layout",
                    message: format!("the layout `{layout_slug}` does not exist"),
                };
                let lt = self
                    .db
                    .get_template(tenant, project, layout_slug)
                    .await?
                    .ok_or_else(missing)?;
                let lpick = match pick {
                    Pick::Published => Pick::Published,
                    _ => Pick::PublishedOrLatest,
                };
                let lv = pick_version(&lt, lpick)?;
                let compiled = self.compiled_version(&lt, lv).await?;
                let l_locale = compiled
                    .pick_locale(requested.as_deref(), &lt.default_locale)
                    .map(str::to_string);
                l_locale.map(|l| (compiled, l))
            }
        };
        let r = body.render(
            &locale,
            layout.as_ref().map(|(c, l)| (c.as_ref(), l.as_str())),
            data,
        )?;
        Ok(RenderedTemplate {
            template_id: t.id,
            slug: t.slug,
            version,
            locale,
            subject: r.subject,
            html: r.html,
            text: r.text,
        })
    }

    /// A version compiled, from the cache or the database.
    pub async fn compiled_version(
        &self,
        t: &TemplateRow,
        version: i64,
    ) -> Result<Arc<CompiledVersion>, TemplateError> {
        if let Some(c) = self.templates.get(&t.id, version) {
            return Ok(c);
        }
        let (layout, contents) = self
            .db
            .get_template_version(&t.id, version)
            .await?
            .ok_or_else(|| TemplateError::VersionNotFound(t.slug.clone(), version))?;
        let compiled = Arc::new(CompiledVersion::compile(layout, &contents)?);
        self.templates.put(&t.id, version, compiled.clone());
        Ok(compiled)
    }
}

fn pick_version(t: &TemplateRow, pick: Pick) -> Result<i64, TemplateError> {
    match pick {
        Pick::Published => t
            .published_version
            .ok_or_else(|| TemplateError::NotPublished(t.slug.clone())),
        Pick::PublishedOrLatest => Ok(t.published_version.unwrap_or(t.latest_version)),
        Pick::Version(v) => Ok(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn content(locale: &str, subject: &str, html: Option<&str>, text: Option<&str>) -> ContentRow {
        ContentRow {
            locale: locale.into(),
            subject: subject.into(),
            html: html.map(Into::into),
            mjml: None,
            text: text.map(Into::into),
        }
    }

    #[test]
    fn escapes_html_only() {
        let v = CompiledVersion::compile(
            None,
            &[content(
                "en",
                "Hi {{ name }}",
                Some("<p>{{ name }}</p>"),
                Some("Hi {{ name }}"),
            )],
        )
        .unwrap();
        let r = v
            .render("en", None, &json!({"name": "<b>A&B</b>"}))
            .unwrap();
        assert_eq!(r.subject, "Hi <b>A&B</b>");
        assert_eq!(r.text, "Hi <b>A&B</b>");
        assert_eq!(
            r.html.as_deref(),
            Some("<p>&lt;b&gt;A&amp;B&lt;&#x2f;b&gt;</p>")
        );
    }

    #[test]
    fn lists_every_missing_variable() {
        let v = CompiledVersion::compile(
            None,
            &[content(
                "en",
                "{{ greeting }} {{ user.first }}",
                Some("{% if coupon %}{{ coupon }}{% endif %}{{ user.last|upper }} {{ total + 1 }} {{ order.id }}{{ order.items }}"),
                None,
            )],
        )
        .unwrap();
        let err = v
            .render("en", None, &json!({"user": {"first": "Ada"}}))
            .unwrap_err();
        let TemplateError::MissingVariables(names) = err else {
            panic!("{err:?}")
        };
        assert_eq!(names, ["greeting", "user.last", "total", "order"]);
    }

    #[test]
    fn layout_wraps_without_re_escaping() {
        let body =
            CompiledVersion::compile(None, &[content("en", "s", Some("<b>{{ name }}</b>"), None)])
                .unwrap();
        let layout = CompiledVersion::compile(
            None,
            &[content(
                "en",
                "s",
                Some("<div>{{ brand }}|{{ content }}</div>"),
                None,
            )],
        )
        .unwrap();
        let r = body
            .render(
                "en",
                Some((&layout, "en")),
                &json!({"name": "<A>", "brand": "Acme", "content": "no"}),
            )
            .unwrap();
        assert_eq!(r.html.as_deref(), Some("<div>Acme|<b>&lt;A&gt;</b></div>"));
        assert_eq!(r.text, "Acme|<A>");
    }

    #[test]
    fn locale_fallback() {
        let v = CompiledVersion::compile(
            None,
            &[
                content("en", "Hello", None, Some("x")),
                content("fr", "Bonjour", None, Some("x")),
            ],
        )
        .unwrap();
        assert_eq!(v.pick_locale(Some("fr-CA"), "en"), Some("fr"));
        assert_eq!(v.pick_locale(Some("de-DE"), "en"), Some("en"));
        assert_eq!(v.pick_locale(None, "en"), Some("en"));
        assert_eq!(parse_locale("fr_ca").unwrap(), "fr-CA");
        assert_eq!(parse_locale("es-419").unwrap(), "es-419");
        assert!(parse_locale("english").is_err());
    }

    #[test]
    fn runaway_loops_run_out_of_fuel() {
        let v = CompiledVersion::compile(
            None,
            &[content(
                "en",
                "s",
                None,
                Some("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"),
            )],
        )
        .unwrap();
        let err = v.render("en", None, &json!({})).unwrap_err();
        assert!(
            matches!(err, TemplateError::Render { part: "text", .. }),
            "{err:?}"
        );
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let e = check_syntax("Hello\n  {{ name }\n").unwrap_err();
        assert!(e.starts_with("line 2, column 11: "), "{e}");
    }
}
