//! Exponential backoff with full jitter: attempt n waits a random time in [d/2, d], where
//! d = base · 2^(n-1) capped at max. The jitter keeps retries of a failed burst from arriving
//! together.

use rand::Rng;

pub fn delay_ms(attempt: i64, base_ms: i64, max_ms: i64) -> i64 {
    let exp = (attempt - 1).clamp(0, 30) as u32;
    let d = base_ms.saturating_mul(1i64 << exp).min(max_ms).max(1);
    rand::rng().random_range(d / 2..=d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        for _ in 0..100 {
            let a = delay_ms(1, 30_000, 3_600_000);
            assert!((15_000..=30_000).contains(&a));
            let c = delay_ms(3, 30_000, 3_600_000);
            assert!((60_000..=120_000).contains(&c));
            let m = delay_ms(20, 30_000, 3_600_000);
            assert!((1_800_000..=3_600_000).contains(&m));
        }
    }
}
