//! Per-provider circuit breakers, shared by every worker of the process. After `failure_threshold`
//! consecutive transient failures a provider is skipped for `cooldown_ms`; then one probe goes
//! through (half-open): success closes the circuit, failure opens it again. An authentication
//! failure (the provider is down for everyone) opens it at once.

use courierx_domain::now_ms;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive transient failures that open the circuit (default 5).
    #[serde(default = "default_threshold")]
    pub failure_threshold: u32,
    /// How long an open circuit skips the provider before a probe (default 30000).
    #[serde(default = "default_cooldown")]
    pub cooldown_ms: u64,
}

fn default_threshold() -> u32 {
    5
}
fn default_cooldown() -> u64 {
    30_000
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_threshold(),
            cooldown_ms: default_cooldown(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

impl CircuitState {
    fn gauge(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::Open => 1.0,
            CircuitState::HalfOpen => 2.0,
        }
    }
}

/// A breaker as shown by the API (`GET /api/v1/providers/{id}`, `/ready`).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CircuitView {
    pub state: CircuitState,
    pub consecutive_failures: u32,
    /// When an open circuit lets the next probe through (epoch ms), if open.
    pub retry_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Breaker {
    state: CircuitState,
    failures: u32,
    /// Open: when the cool-down ends. Half-open: when the probe in flight counts as lost.
    until: i64,
    last_error: Option<String>,
}

impl Default for Breaker {
    fn default() -> Self {
        Self {
            state: CircuitState::Closed,
            failures: 0,
            until: 0,
            last_error: None,
        }
    }
}

#[derive(Default)]
pub struct Breakers {
    inner: Mutex<HashMap<String, Breaker>>,
}

fn set_state(provider: &str, b: &mut Breaker, to: CircuitState) {
    if b.state != to {
        b.state = to;
        metrics::gauge!("courierx_provider_circuit_state", "provider_id" => provider.to_string())
            .set(to.gauge());
        metrics::counter!("courierx_provider_circuit_transitions_total", "provider_id" => provider.to_string(), "to" => format!("{to:?}").to_lowercase())
            .increment(1);
        tracing::info!(provider_id = provider, state = ?to, "circuit breaker changed state");
    }
}

impl Breakers {
    /// Whether a message may go to the provider now. Moving from open to half-open hands out the
    /// one probe; the caller must report its result with `success` or `failure`.
    pub fn allow(&self, provider: &str, cfg: &BreakerConfig) -> bool {
        let Ok(mut map) = self.inner.lock() else {
            return true;
        };
        let Some(b) = map.get_mut(provider) else {
            return true;
        };
        let now = now_ms();
        match b.state {
            CircuitState::Closed => true,
            CircuitState::Open | CircuitState::HalfOpen if now >= b.until => {
                // A probe whose result never came (its task died) does not block forever.
                set_state(provider, b, CircuitState::HalfOpen);
                b.until = now + cfg.cooldown_ms as i64;
                true
            }
            CircuitState::Open | CircuitState::HalfOpen => false,
        }
    }

    pub fn success(&self, provider: &str) {
        if let Ok(mut map) = self.inner.lock()
            && let Some(b) = map.get_mut(provider)
        {
            b.failures = 0;
            b.last_error = None;
            set_state(provider, b, CircuitState::Closed);
        }
    }

    /// Counts a transient failure; `down` (bad credentials and the like) opens the circuit at once.
    pub fn failure(&self, provider: &str, cfg: &BreakerConfig, down: bool, error: &str) {
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        let b = map.entry(provider.to_string()).or_default();
        b.failures = b.failures.saturating_add(1);
        b.last_error = Some(error.chars().take(500).collect());
        let open = down || b.state == CircuitState::HalfOpen || b.failures >= cfg.failure_threshold;
        if open {
            b.until = now_ms() + cfg.cooldown_ms as i64;
            set_state(provider, b, CircuitState::Open);
        }
    }

    pub fn view(&self, provider: &str) -> CircuitView {
        let map = self.inner.lock().ok();
        match map.as_ref().and_then(|m| m.get(provider)) {
            None => CircuitView {
                state: CircuitState::Closed,
                consecutive_failures: 0,
                retry_at_ms: None,
                last_error: None,
            },
            Some(b) => CircuitView {
                state: b.state,
                consecutive_failures: b.failures,
                retry_at_ms: (b.state == CircuitState::Open).then_some(b.until),
                last_error: b.last_error.clone(),
            },
        }
    }

    /// Providers whose circuit is not closed, for `/ready`.
    pub fn not_closed(&self) -> Vec<(String, CircuitView)> {
        let Ok(map) = self.inner.lock() else {
            return Vec::new();
        };
        let mut ids: Vec<String> = map
            .iter()
            .filter(|(_, b)| b.state != CircuitState::Closed)
            .map(|(id, _)| id.clone())
            .collect();
        drop(map);
        ids.sort();
        ids.into_iter()
            .map(|id| {
                let v = self.view(&id);
                (id, v)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_half_opens_and_closes() {
        let b = Breakers::default();
        let cfg = BreakerConfig {
            failure_threshold: 3,
            cooldown_ms: 50,
        };
        for _ in 0..2 {
            assert!(b.allow("p", &cfg));
            b.failure("p", &cfg, false, "503");
        }
        assert_eq!(b.view("p").state, CircuitState::Closed);
        b.failure("p", &cfg, false, "503");
        assert_eq!(b.view("p").state, CircuitState::Open);
        assert!(!b.allow("p", &cfg));
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(b.allow("p", &cfg), "one probe after the cool-down");
        assert_eq!(b.view("p").state, CircuitState::HalfOpen);
        assert!(!b.allow("p", &cfg), "only one probe at a time");
        b.failure("p", &cfg, false, "503");
        assert_eq!(b.view("p").state, CircuitState::Open);
        std::thread::sleep(std::time::Duration::from_millis(60));
        assert!(b.allow("p", &cfg));
        b.success("p");
        assert_eq!(b.view("p").state, CircuitState::Closed);
        assert_eq!(b.view("p").consecutive_failures, 0);
    }

    #[test]
    fn provider_down_opens_at_once() {
        let b = Breakers::default();
        b.failure("p", &BreakerConfig::default(), true, "401");
        assert_eq!(b.view("p").state, CircuitState::Open);
    }
}
