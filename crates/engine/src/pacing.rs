//! Per-provider send pacing (`rate_per_second`), shared by every worker of the process: a message
//! over the rate waits for its slot instead of failing. Slots are handed out in order, one every
//! `1 / rate` seconds, so the rate holds over any window. A message whose slot lies further ahead
//! than the caller can wait (its lease would run out) is not given one: the caller puts it back
//! on the queue for that time instead, so a long backlog never outlives its leases.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Pacers {
    /// Per provider: its rate and the next free slot.
    inner: Mutex<HashMap<String, (f64, Instant)>>,
}

/// A slot further ahead than the caller may wait: try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Later(pub Duration);

impl Pacers {
    /// Reserves the provider's next slot and waits for it; without a rate, returns at once.
    pub async fn wait(
        &self,
        provider: &str,
        kind: &str,
        rate: Option<f64>,
        max_wait: Duration,
    ) -> Result<(), Later> {
        let Some(rate) = rate.filter(|r| *r > 0.0) else {
            return Ok(());
        };
        let interval = Duration::from_secs_f64(1.0 / rate);
        let now = Instant::now();
        let slot = {
            let Ok(mut map) = self.inner.lock() else {
                return Ok(());
            };
            let entry = map.entry(provider.to_string()).or_insert((rate, now));
            if entry.0 != rate {
                *entry = (rate, now.max(entry.1.min(now + interval)));
            }
            let slot = entry.1.max(now);
            if slot - now > max_wait {
                return Err(Later(slot - now));
            }
            entry.1 = slot + interval;
            slot
        };
        let waited = slot - now;
        if !waited.is_zero() {
            metrics::counter!("courierx_provider_paced_total", "provider" => kind.to_string())
                .increment(1);
            tokio::time::sleep_until(slot.into()).await;
        }
        metrics::histogram!("courierx_provider_pacing_wait_seconds", "provider" => kind.to_string())
            .record(waited.as_secs_f64());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn slots_are_spaced_and_far_ones_deferred() {
        let p = Pacers::default();
        let max = Duration::from_millis(250);
        let started = Instant::now();
        for _ in 0..3 {
            p.wait("a", "x", Some(10.0), max).await.unwrap();
        }
        assert!(started.elapsed() >= Duration::from_millis(200));
        // Reserve ahead without waiting: slots at +0, +100, +200 ms are taken in turn.
        let p = Pacers::default();
        let (a, b, c) = tokio::join!(
            p.wait("a", "x", Some(10.0), max),
            p.wait("a", "x", Some(10.0), max),
            p.wait("a", "x", Some(10.0), max)
        );
        assert!(a.is_ok() && b.is_ok() && c.is_ok());
        let later = p
            .wait("a", "x", Some(10.0), Duration::from_millis(50))
            .await;
        assert!(matches!(later, Err(Later(d)) if d > Duration::from_millis(50)));
        assert!(p.wait("b", "x", None, max).await.is_ok());
    }
}
