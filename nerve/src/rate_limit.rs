//! A token bucket on state-change reports (SmartStack nerve's `rate_limiting`): a service
//! that flaps faster than `average_rate` changes per second (after a burst of
//! `max_burst`) has its reports held back until a token is free, so a flapping service
//! cannot turn into a stream of etcd writes and HAProxy changes everywhere.
//!
//! Pure: the caller passes the current time in.

use tokio::time::Instant;

/// The limit, as configured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    /// Only log and count what would be throttled (SmartStack's default).
    pub shadow_mode: bool,
    /// Tokens added per second.
    pub average_rate: f64,
    /// Bucket size, and the tokens it starts with.
    pub max_burst: u32,
}

/// The bucket of one service.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    updated: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: &RateLimit, now: Instant) -> Self {
        let capacity = f64::from(limit.max_burst.max(1));
        Self {
            rate: limit.average_rate.max(0.0),
            capacity,
            tokens: capacity,
            updated: now,
        }
    }

    /// Takes a token if one is available.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.updated).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        self.updated = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    fn limit(rate: f64, burst: u32) -> RateLimit {
        RateLimit {
            shadow_mode: false,
            average_rate: rate,
            max_burst: burst,
        }
    }

    #[test]
    fn burst_then_average_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(&limit(2.0, 3), t0);
        assert!(b.try_take(t0) && b.try_take(t0) && b.try_take(t0));
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_millis(499)));
        assert!(b.try_take(t0 + Duration::from_millis(1000)));
        // Refill is capped at the burst size.
        let later = t0 + Duration::from_secs(100);
        assert!(b.try_take(later) && b.try_take(later) && b.try_take(later));
        assert!(!b.try_take(later));
    }

    proptest! {
        /// Over any window the bucket grants at most burst + rate × window tokens.
        #[test]
        fn never_exceeds_rate(rate in 0.1f64..20.0, burst in 1u32..10, steps in proptest::collection::vec(0u64..500, 1..200)) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(&limit(rate, burst), t0);
            let mut now = t0;
            let mut granted = 0u32;
            for step in steps {
                now += Duration::from_millis(step);
                if b.try_take(now) {
                    granted += 1;
                }
            }
            let window = now.duration_since(t0).as_secs_f64();
            prop_assert!(f64::from(granted) <= f64::from(burst) + rate * window + 1e-6);
        }
    }
}
