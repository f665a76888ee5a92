//! Template rendering cost: a realistic MJML-compiled email (header with logo, greeting, two
//! paragraphs, a button, a footer) with 10 variables. `render` is what a send pays on a cache
//! hit (MiniJinja render plus the generated text part); the others are shown for context.
//!
//! `cargo bench -p courierx-engine --bench templates`

use courierx_engine::templates::html_text::html_to_text;
use courierx_engine::templates::{CompiledVersion, compile_mjml};
use courierx_store::templates::ContentRow;
use divan::{Bencher, black_box};
use serde_json::{Value, json};

fn main() {
    divan::main();
}

const MJML: &str = r##"<mjml>
  <mj-head>
    <mj-title>Your order has shipped</mj-title>
    <mj-preview>Order {{ order_id }} is on its way</mj-preview>
    <mj-attributes><mj-all font-family="Helvetica, Arial, sans-serif"></mj-all></mj-attributes>
  </mj-head>
  <mj-body background-color="#f4f4f4">
    <mj-section background-color="#ffffff" padding="20px">
      <mj-column width="30%"><mj-image src="{{ logo_url }}" alt="{{ company }}" width="80px"></mj-image></mj-column>
      <mj-column width="70%"><mj-text align="right" font-size="14px" color="#555">{{ company }}</mj-text></mj-column>
    </mj-section>
    <mj-section background-color="#ffffff" padding="0 20px">
      <mj-column>
        <mj-text font-size="22px" font-weight="bold">Hi {{ first_name }},</mj-text>
        <mj-text font-size="15px" line-height="1.5">Good news: your order <strong>{{ order_id }}</strong>
          shipped on {{ date }}. The total charged was {{ total }}.</mj-text>
        <mj-text font-size="15px" line-height="1.5">You can follow the parcel until it reaches you.
          Questions? Write to <a href="mailto:{{ support_email }}">{{ support_email }}</a>.</mj-text>
        <mj-button href="{{ tracking_url }}" background-color="#2255ff" color="#ffffff">Track your order</mj-button>
      </mj-column>
    </mj-section>
    <mj-section padding="20px">
      <mj-column>
        <mj-divider border-width="1px" border-color="#dddddd"></mj-divider>
        <mj-text font-size="12px" color="#888" align="center">{{ company }}, {{ address }}<br>
          <a href="{{ unsubscribe_url }}">Unsubscribe</a></mj-text>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>"##;

fn data() -> Value {
    json!({
        "company": "Acme & Co",
        "logo_url": "https://cdn.acme.test/logo.png",
        "first_name": "Ada",
        "order_id": "A-10293",
        "date": "Monday 3 November",
        "total": "€42.50",
        "support_email": "help@acme.test",
        "tracking_url": "https://track.acme.test/A-10293?ref=email",
        "address": "1 Main Street, Springfield",
        "unsubscribe_url": "https://acme.test/u/8f2c1e",
    })
}

fn compiled() -> CompiledVersion {
    let html = compile_mjml(MJML).expect("valid MJML");
    CompiledVersion::compile(
        None,
        &[ContentRow {
            locale: "en".into(),
            subject: "Order {{ order_id }} has shipped".into(),
            html: Some(html),
            mjml: Some(MJML.into()),
            text: None,
        }],
    )
    .expect("valid template")
}

/// Subject + HTML + generated text, as a send renders a cached version.
#[divan::bench]
fn render(b: Bencher) {
    let v = compiled();
    let data = data();
    b.bench(|| {
        v.render(black_box("en"), None, black_box(&data))
            .expect("renders")
    });
}

/// The generated text part alone.
#[divan::bench]
fn html_to_text_only(b: Bencher) {
    let v = compiled();
    let html = v
        .render("en", None, &data())
        .expect("renders")
        .html
        .unwrap_or_default();
    b.bench(|| html_to_text(black_box(&html)));
}

/// Paid once per version when it is saved.
#[divan::bench]
fn compile_mjml_on_save(b: Bencher) {
    b.bench(|| compile_mjml(black_box(MJML)).expect("valid MJML"));
}

/// Paid once per version and process (then cached).
#[divan::bench]
fn compile_version(b: Bencher) {
    b.bench(compiled);
}
