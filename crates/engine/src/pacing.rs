//! Per-provider send pacing (`rate_per_second`), shared by every worker of the process: a message
//! over the rate waits for its slot instead of failing. GCRA through `governor`, burst 1, so the
//! rate holds over any window.

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

type Limiter = (f64, Arc<DefaultDirectRateLimiter>);

#[derive(Default)]
pub struct Pacers {
    inner: Mutex<HashMap<String, Limiter>>,
}

impl Pacers {
    fn limiter(&self, provider: &str, rate: f64) -> Option<Arc<DefaultDirectRateLimiter>> {
        let mut map = self.inner.lock().ok()?;
        if let Some((r, l)) = map.get(provider)
            && *r == rate
        {
            return Some(l.clone());
        }
        let quota = Quota::with_period(Duration::from_secs_f64(1.0 / rate))?;
        let l = Arc::new(RateLimiter::direct(quota));
        map.insert(provider.to_string(), (rate, l.clone()));
        Some(l)
    }

    /// Waits until the provider may take one more message (no wait without a rate).
    pub async fn wait(&self, provider: &str, kind: &str, rate: Option<f64>) {
        let Some(l) = rate.and_then(|r| self.limiter(provider, r)) else {
            return;
        };
        let started = Instant::now();
        l.until_ready().await;
        let waited = started.elapsed();
        if waited >= Duration::from_millis(1) {
            metrics::counter!("courierx_provider_paced_total", "provider" => kind.to_string())
                .increment(1);
        }
        metrics::histogram!("courierx_provider_pacing_wait_seconds", "provider" => kind.to_string())
            .record(waited.as_secs_f64());
    }
}
