//! A small map of values read from the database and trusted for a short time. Every forget
//! bumps a generation, and a value read before it is not stored after it: otherwise a read that
//! raced a change (a key's revocation, a project's new settings) would be trusted for a whole TTL.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Above this many entries, expired ones are swept on insert.
const SWEEP_AT: usize = 10_000;

pub struct TtlCache<V> {
    ttl: Duration,
    inner: Mutex<Entries<V>>,
}

struct Entries<V> {
    generation: u64,
    by_key: HashMap<String, (Instant, V)>,
}

/// Taken before reading a value from the database; [`TtlCache::put`] stores the value only if
/// nothing was forgotten since.
#[derive(Debug, Clone, Copy)]
pub struct Generation(Option<u64>);

impl<V: Clone> TtlCache<V> {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            inner: Mutex::new(Entries {
                generation: 0,
                by_key: HashMap::new(),
            }),
        }
    }

    pub fn get(&self, key: &str) -> Option<V> {
        let m = self.inner.lock().ok()?;
        m.by_key
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    pub fn generation(&self) -> Generation {
        Generation(self.inner.lock().ok().map(|m| m.generation))
    }

    pub fn put(&self, key: String, value: V, read_at: Generation) {
        if let Ok(mut m) = self.inner.lock()
            && Some(m.generation) == read_at.0
        {
            if m.by_key.len() > SWEEP_AT {
                let ttl = self.ttl;
                m.by_key.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            m.by_key.insert(key, (Instant::now(), value));
        }
    }

    /// Changes a cached value in place (without renewing it).
    pub fn update(&self, key: &str, f: impl FnOnce(&mut V)) {
        if let Ok(mut m) = self.inner.lock()
            && let Some((_, v)) = m.by_key.get_mut(key)
        {
            f(v);
        }
    }

    /// Forgets every value `forget` picks.
    pub fn forget_where(&self, mut forget: impl FnMut(&V) -> bool) {
        if let Ok(mut m) = self.inner.lock() {
            m.generation += 1;
            m.by_key.retain(|_, (_, v)| !forget(v));
        }
    }

    pub fn clear(&self) {
        self.forget_where(|_| true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_from_before_a_forget_is_not_stored() {
        let c = TtlCache::new(Duration::from_secs(60));
        let before = c.generation();
        c.clear();
        c.put("k".into(), 1, before);
        assert_eq!(c.get("k"), None);
        c.put("k".into(), 2, c.generation());
        assert_eq!(c.get("k"), Some(2));
    }

    #[test]
    fn entries_expire_and_forget_where_is_selective() {
        let c = TtlCache::new(Duration::from_secs(60));
        c.put("a".into(), 1, c.generation());
        c.put("b".into(), 2, c.generation());
        c.forget_where(|v| *v == 1);
        assert_eq!((c.get("a"), c.get("b")), (None, Some(2)));
        c.update("b", |v| *v = 3);
        assert_eq!(c.get("b"), Some(3));

        let short = TtlCache::new(Duration::ZERO);
        short.put("a".into(), 1, short.generation());
        assert_eq!(short.get("a"), None);
    }
}
