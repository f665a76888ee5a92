//! A readable plain-text alternative generated from rendered HTML: blocks become lines,
//! paragraphs and headings are separated by a blank line, lists get `- ` / `1. ` markers, links
//! read `text (url)`, images their `alt`, and scripts, styles and hidden elements are dropped.
//! Built on the html5gum tokenizer (which decodes entities); no line wrapping.

use html5gum::Tokenizer;
use html5gum::emitters::callback::{CallbackEmitter, CallbackEvent};

/// Elements whose content is never text.
const SKIPPED: &[&str] = &[
    "head", "script", "style", "title", "template", "noscript", "svg", "object",
];
/// Elements that end a line.
const BLOCKS: &[&str] = &[
    "div",
    "section",
    "article",
    "header",
    "footer",
    "nav",
    "aside",
    "main",
    "address",
    "figure",
    "figcaption",
    "form",
    "fieldset",
    "center",
    "dl",
    "dt",
    "dd",
    "tr",
    "body",
    "html",
    "li",
];
/// Elements separated from their surroundings by a blank line.
const PARAGRAPHS: &[&str] = &[
    "p",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "pre",
    "table",
];
const VOID: &[&str] = &[
    "area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track",
    "wbr",
];

#[derive(Default)]
struct Writer {
    out: String,
    /// Line breaks owed before the next text (0, 1 or 2; merged, never added up, except `<br>`).
    breaks: usize,
    /// Whitespace seen since the last character written on this line.
    space: bool,
    pre: usize,
    /// Open lists: `None` for `ul`, the next number for `ol`.
    lists: Vec<Option<u32>>,
    /// Open links: href and where their text starts in `out`.
    links: Vec<(String, usize)>,
    /// An element being skipped: its name and how deep same-named elements are nested in it.
    skip: Option<(String, usize)>,
}

impl Writer {
    fn block(&mut self, n: usize) {
        self.breaks = self.breaks.max(n);
        self.space = false;
    }

    /// Writes owed line breaks and a pending space before the next visible character.
    fn start_text(&mut self) {
        if self.out.is_empty() {
            self.breaks = 0;
            self.space = false;
            return;
        }
        if self.breaks > 0 {
            trim_line_end(&mut self.out);
            for _ in 0..self.breaks.min(2) {
                self.out.push('\n');
            }
            self.breaks = 0;
            self.space = false;
        } else if self.space {
            if !self.out.ends_with(['\n', ' ']) {
                self.out.push(' ');
            }
            self.space = false;
        }
    }

    fn text(&mut self, s: &str) {
        if self.pre > 0 {
            if !s.is_empty() {
                self.start_text();
                self.out.push_str(s);
            }
            return;
        }
        for c in s.chars() {
            match c {
                // Invisible characters email templates use to pad preview text.
                '\u{200b}' | '\u{200c}' | '\u{200d}' | '\u{feff}' | '\u{34f}' | '\u{ad}' => {}
                c if c.is_whitespace() => self.space = true,
                c => {
                    self.start_text();
                    self.out.push(c);
                }
            }
        }
    }

    /// Text written directly (list markers, link targets), after owed breaks.
    fn literal(&mut self, s: &str) {
        self.start_text();
        self.out.push_str(s);
    }

    fn start(&mut self, name: &str, tag: &Tag) {
        if let Some((skipped, depth)) = &mut self.skip {
            // A `<head>` left open ends where the body starts.
            if skipped == "head" && name == "body" {
                self.skip = None;
            } else {
                if skipped == name && !VOID.contains(&name) {
                    *depth += 1;
                }
                return;
            }
        }
        if (SKIPPED.contains(&name) || tag.hidden) && !VOID.contains(&name) {
            self.skip = Some((name.to_string(), 1));
            return;
        }
        match name {
            "br" => {
                self.breaks += 1;
                self.space = false;
            }
            "hr" => {
                self.block(2);
                self.literal("---");
                self.block(2);
            }
            "img" => {
                if let Some(alt) = tag.alt.as_deref().filter(|a| !a.trim().is_empty()) {
                    self.space = true;
                    self.text(alt);
                    self.space = true;
                }
            }
            "ul" | "ol" => {
                self.block(if self.lists.is_empty() { 2 } else { 1 });
                self.lists.push((name == "ol").then(|| {
                    tag.start
                        .as_deref()
                        .and_then(|s| s.trim().parse().ok())
                        .unwrap_or(1)
                }));
            }
            "li" => {
                self.block(1);
                let depth = self.lists.len().saturating_sub(1);
                let marker = match self.lists.last_mut() {
                    Some(Some(n)) => {
                        *n += 1;
                        format!("{}. ", *n - 1)
                    }
                    _ => "- ".to_string(),
                };
                self.literal(&format!("{}{marker}", "  ".repeat(depth)));
            }
            "a" => {
                let href = tag.href.as_deref().unwrap_or_default().trim().to_string();
                self.links.push((href, self.out.len()));
            }
            "td" | "th" => self.space = true,
            "pre" => {
                self.block(2);
                self.pre += 1;
            }
            n if PARAGRAPHS.contains(&n) => self.block(2),
            n if BLOCKS.contains(&n) => self.block(1),
            _ => {}
        }
    }

    fn end(&mut self, name: &str) {
        if let Some((skipped, depth)) = &mut self.skip {
            if skipped == name {
                *depth -= 1;
                if *depth == 0 {
                    self.skip = None;
                }
            }
            return;
        }
        match name {
            "ul" | "ol" => {
                self.lists.pop();
                self.block(if self.lists.is_empty() { 2 } else { 1 });
            }
            "a" => {
                if let Some((href, at)) = self.links.pop() {
                    self.link_target(&href, at);
                }
            }
            "td" | "th" => self.space = true,
            "pre" => {
                self.pre = self.pre.saturating_sub(1);
                self.block(2);
            }
            n if PARAGRAPHS.contains(&n) => self.block(2),
            n if BLOCKS.contains(&n) => self.block(1),
            _ => {}
        }
    }

    /// Appends ` (url)` after a link's text, unless the text already says it.
    fn link_target(&mut self, href: &str, at: usize) {
        let lower = href.to_ascii_lowercase();
        if href.is_empty() || href.starts_with('#') || lower.starts_with("javascript:") {
            return;
        }
        let shown = href
            .strip_prefix("mailto:")
            .or_else(|| href.strip_prefix("tel:"))
            .unwrap_or(href);
        let text = self.out.get(at..).unwrap_or_default().trim();
        if text.is_empty() {
            self.literal(shown);
        } else if text != shown && text != href {
            self.literal(&format!(" ({shown})"));
        }
    }
}

fn trim_line_end(s: &mut String) {
    let keep = s.trim_end_matches([' ', '\t']).len();
    s.truncate(keep);
}

/// The parts of a start tag the converter looks at.
#[derive(Default)]
struct Tag {
    name: String,
    attr: Vec<u8>,
    href: Option<String>,
    alt: Option<String>,
    start: Option<String>,
    /// `hidden`, or a style with `display:none`.
    hidden: bool,
}

impl Tag {
    fn value(&mut self, v: &[u8]) {
        let text = || String::from_utf8_lossy(v).into_owned();
        match self.attr.as_slice() {
            b"href" if self.href.is_none() => self.href = Some(text()),
            b"alt" if self.alt.is_none() => self.alt = Some(text()),
            b"start" if self.start.is_none() => self.start = Some(text()),
            b"style" => self.hidden |= hides(v),
            _ => {}
        }
    }
}

/// Whether a style attribute says `display: none` (any case and spacing).
fn hides(style: &[u8]) -> bool {
    style.split(|b| *b == b';').any(|decl| {
        let mut kv = decl.splitn(2, |b| *b == b':');
        let (Some(k), Some(v)) = (kv.next(), kv.next()) else {
            return false;
        };
        k.trim_ascii().eq_ignore_ascii_case(b"display")
            && v.trim_ascii()
                .get(..4)
                .is_some_and(|v| v.eq_ignore_ascii_case(b"none"))
    })
}

/// Converts rendered HTML into a readable plain-text alternative.
pub fn html_to_text(html: &str) -> String {
    let mut w = Writer::default();
    let mut tag = Tag::default();
    // Events go straight to the writer: no token or attribute map is built.
    let mut emitter = CallbackEmitter::new(|ev: CallbackEvent<'_>, _: html5gum::Span<()>| {
        match ev {
            CallbackEvent::OpenStartTag { name } => {
                // The tokenizer lowercases names; the buffer is reused from tag to tag.
                tag.name.clear();
                tag.name.push_str(&String::from_utf8_lossy(name));
                tag.href = None;
                tag.alt = None;
                tag.start = None;
                tag.hidden = false;
            }
            CallbackEvent::AttributeName { name } => {
                tag.attr.clear();
                tag.attr.extend_from_slice(name);
                tag.hidden |= name == b"hidden";
            }
            CallbackEvent::AttributeValue { value } => tag.value(value),
            CallbackEvent::CloseStartTag { self_closing } => {
                w.start(&tag.name, &tag);
                if self_closing && !VOID.contains(&tag.name.as_str()) {
                    w.end(&tag.name);
                }
            }
            CallbackEvent::EndTag { name } => w.end(&String::from_utf8_lossy(name)),
            CallbackEvent::String { value } if w.skip.is_none() => {
                w.text(&String::from_utf8_lossy(value));
            }
            _ => {}
        }
        None::<()>
    });
    // Treat script/style/title content as raw text, as a browser would.
    emitter.naively_switch_states(true);
    Tokenizer::new_with_emitter(html, emitter).for_each(drop);
    let mut out = String::with_capacity(w.out.len());
    for line in w.out.lines() {
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out.trim_matches('\n').to_string()
}

#[cfg(test)]
mod tests {
    use super::html_to_text;

    #[test]
    fn paragraphs_headings_and_breaks() {
        let t = html_to_text(
            "<h1>Welcome,   Ada</h1><p>First line<br>second line</p>\n<p>Next\n paragraph</p><div>a</div><div>b</div>",
        );
        assert_eq!(
            t,
            "Welcome, Ada\n\nFirst line\nsecond line\n\nNext paragraph\n\na\nb"
        );
    }

    #[test]
    fn links_keep_their_target() {
        let t = html_to_text(
            r##"<p>Read <a href="https://x.test/a?b=1&amp;c=2">the docs</a>, or <a href="https://x.test">https://x.test</a>.</p>
               <p><a href="mailto:help@x.test">help@x.test</a> <a href="#top">top</a> <a href="https://x.test/i"><img src="i.png"></a></p>"##,
        );
        assert_eq!(
            t,
            "Read the docs (https://x.test/a?b=1&c=2), or https://x.test.\n\nhelp@x.test top https://x.test/i"
        );
    }

    #[test]
    fn lists() {
        let t = html_to_text(
            "<p>Items:</p><ul><li>One</li><li>Two<ol><li>a</li><li>b</li></ol></li></ul><p>End</p>",
        );
        assert_eq!(t, "Items:\n\n- One\n- Two\n  1. a\n  2. b\n\nEnd");
    }

    #[test]
    fn drops_scripts_styles_head_and_hidden() {
        let t = html_to_text(
            r#"<!doctype html><html><head><title>T</title><style>p { color: red }</style></head>
               <body><div style="display: none; max-height:0">preview text</div><script>var x = "<p>";</script>
               <!-- comment --><p>Visible</p><img src="x.png" style="display:none" alt="Logo"><p hidden>no</p></body></html>"#,
        );
        assert_eq!(t, "Visible\n\nLogo");
    }

    #[test]
    fn entities_decoded_and_whitespace_collapsed() {
        let t = html_to_text("<p>Tom &amp; Jerry&nbsp;&lt;3 &#x263A;\u{200c}</p>");
        assert_eq!(t, "Tom & Jerry <3 \u{263a}");
        assert_eq!(
            html_to_text("<P>x<BR>y</P><P STYLE='DISPLAY : None'>z</P>"),
            "x\ny"
        );
    }

    #[test]
    fn tables_and_pre() {
        let t = html_to_text(
            "<table><tr><td>Item</td><td>Qty</td></tr><tr><td>Tea</td><td>2</td></tr></table><pre>a\n  b</pre><hr><p>x</p>",
        );
        assert_eq!(t, "Item Qty\nTea 2\n\na\n  b\n\n---\n\nx");
    }

    #[test]
    fn mjml_output_reads_well() {
        let mjml = r#"<mjml><mj-head><mj-preview>Hidden preview</mj-preview></mj-head><mj-body>
            <mj-section><mj-column><mj-image src="https://x.test/logo.png" alt="Acme"></mj-image>
            <mj-text><h1>Hello Ada</h1><p>Your order shipped.</p></mj-text>
            <mj-button href="https://x.test/track">Track it</mj-button></mj-column></mj-section>
            <mj-section><mj-column><mj-text>Acme Inc.</mj-text></mj-column></mj-section></mj-body></mjml>"#;
        let html = crate::templates::compile_mjml(mjml).expect("valid mjml");
        let t = html_to_text(&html);
        assert_eq!(
            t,
            "Acme\n\nHello Ada\n\nYour order shipped.\n\nTrack it (https://x.test/track)\n\nAcme Inc."
        );
    }
}
