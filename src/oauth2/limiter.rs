//! Rate limiting of failed client authentication, per client id and per
//! source address: after `max` failures within `window`, further attempts
//! are refused until the window ends (the secret is not even checked).

use dashmap::DashMap;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct FailureLimiter {
    windows: DashMap<String, (u32, Instant)>,
}

impl FailureLimiter {
    /// `Some(retry_after)` if `key` is locked out now.
    pub fn blocked(&self, key: &str, max: u32, window: Duration) -> Option<Duration> {
        let e = self.windows.get(key)?;
        let (count, start) = *e;
        let elapsed = start.elapsed();
        (count >= max && elapsed < window).then(|| window - elapsed)
    }

    pub fn failure(&self, key: &str, window: Duration) {
        // Bounded memory: forget finished windows when the map grows.
        if self.windows.len() > 100_000 {
            self.windows
                .retain(|_, (_, start)| start.elapsed() < window);
        }
        let mut e = self
            .windows
            .entry(key.to_string())
            .or_insert((0, Instant::now()));
        if e.1.elapsed() >= window {
            *e = (0, Instant::now());
        }
        e.0 += 1;
    }
}
