//! A token bucket, sans-IO: the caller passes the time.

use std::time::Instant;

/// Allows `rate` events per second on average and `burst` at once.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket at `now`.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Changes the rate and burst from `now` on, keeping the tokens earned so
    /// far (at most the new burst).
    pub fn set(&mut self, now: Instant, rate: f64, burst: f64) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(burst);
        self.last = now;
        self.rate = rate;
        self.burst = burst;
    }

    /// The rate it allows now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Takes a token if there is one.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.allow_n(now, 1.0)
    }

    /// Whether the bucket would be full at `now`: nothing to remember, so a
    /// table of limiters may forget it.
    pub fn idle(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens + elapsed * self.rate >= self.burst
    }

    /// Takes `n` tokens (bytes, say) if there are that many.
    pub fn allow_n(&mut self, now: Instant, n: f64) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut l = RateLimit::new(10.0, 5.0, t0);
        assert_eq!((0..10).filter(|_| l.allow(t0)).count(), 5);
        // One second later: ten more tokens, capped at the burst of five.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!((0..10).filter(|_| l.allow(t1)).count(), 5);
        let t2 = t1 + Duration::from_millis(100);
        assert!(l.allow(t2));
        assert!(!l.allow(t2));
    }
}
