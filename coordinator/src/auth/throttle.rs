//! A token bucket with an explicit `now`: how many unknown tokens may be sent to the
//! TokenReview API, so that a flood of garbage credentials costs the API server nothing.

use std::time::Duration;

use tokio::time::Instant;

/// `rate` reviews a second on average, `burst` at once.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Reviews a second, sustained.
    pub rate: f64,
    /// Reviews allowed at once after a quiet period.
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        // A thousand agents whose tokens all are new (a coordinator restart) get through in
        // about 20 s; each retries on UNAVAILABLE.
        RateLimit {
            rate: 50.0,
            burst: 100,
        }
    }
}

/// The bucket.
#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(limit: RateLimit) -> Self {
        TokenBucket {
            limit,
            tokens: f64::from(limit.burst),
            last: None,
        }
    }

    /// Takes one token at `now` if there is one.
    pub fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |last| now.saturating_duration_since(last));
        self.last = Some(now);
        let burst = f64::from(self.limit.burst);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.limit.rate.max(0.0)).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit {
            rate: 10.0,
            burst: 5,
        });
        let taken = (0..100).filter(|_| bucket.try_take(now)).count();
        assert_eq!(taken, 5);
        // Over one second, ten more (one every 100 ms), never more.
        let mut taken = 0;
        for ms in (0..=1000).step_by(10) {
            if bucket.try_take(now + Duration::from_millis(ms)) {
                taken += 1;
            }
        }
        assert!((9..=10).contains(&taken), "{taken}");
        // A long pause refills to the burst, not beyond.
        let later = now + Duration::from_secs(3600);
        let taken = (0..100).filter(|_| bucket.try_take(later)).count();
        assert_eq!(taken, 5);
    }

    #[test]
    fn a_zero_rate_allows_only_the_burst() {
        let now = Instant::now();
        let mut bucket = TokenBucket::new(RateLimit {
            rate: 0.0,
            burst: 2,
        });
        assert!(bucket.try_take(now));
        assert!(bucket.try_take(now + Duration::from_secs(10)));
        assert!(!bucket.try_take(now + Duration::from_secs(100)));
    }
}
