//! A bounded cache of authentication outcomes with explicit `now` (pure, no clock of its own).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use rota_core::model::NodeName;

/// How long outcomes are kept, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheConfig {
    /// How long an accepted token is trusted without asking the API server again (capped at
    /// the token's own expiry when it can be read).
    pub ttl: Duration,
    /// How long a refused token stays refused without asking again; short, so that a token
    /// that was refused because its pod was not scheduled yet works soon after. Zero turns
    /// the negative cache off.
    pub failure_ttl: Duration,
    /// Most tokens kept; the entries closest to expiry go first when full.
    pub capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(60),
            failure_ttl: Duration::from_secs(5),
            capacity: 16_384,
        }
    }
}

/// A cached outcome: the caller's node, or why the token was refused.
pub type Outcome = Result<NodeName, String>;

#[derive(Clone, Debug)]
struct Entry {
    outcome: Outcome,
    expires: Instant,
}

/// Outcomes by token.
#[derive(Debug)]
pub struct Cache {
    config: CacheConfig,
    entries: HashMap<String, Entry>,
}

impl Cache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        Cache {
            config,
            entries: HashMap::new(),
        }
    }

    /// The outcome for `token` if it is cached and still fresh at `now`.
    pub fn get(&mut self, token: &str, now: Instant) -> Option<Outcome> {
        let entry = self.entries.get(token)?;
        if now >= entry.expires {
            self.entries.remove(token);
            return None;
        }
        Some(entry.outcome.clone())
    }

    /// Remembers an accepted token until `now + ttl`, or until `token_expiry` if sooner.
    pub fn accept(
        &mut self,
        token: &str,
        node: NodeName,
        now: Instant,
        token_expiry: Option<Instant>,
    ) {
        let mut expires = now + self.config.ttl;
        if let Some(expiry) = token_expiry {
            expires = expires.min(expiry);
        }
        self.insert(token, Ok(node), expires, now);
    }

    /// Remembers a refused token for the short failure TTL.
    pub fn refuse(&mut self, token: &str, why: String, now: Instant) {
        if self.config.failure_ttl.is_zero() {
            return;
        }
        self.insert(token, Err(why), now + self.config.failure_ttl, now);
    }

    /// How many entries are held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn insert(&mut self, token: &str, outcome: Outcome, expires: Instant, now: Instant) {
        if expires <= now || self.config.capacity == 0 {
            return;
        }
        if !self.entries.contains_key(token) && self.entries.len() >= self.config.capacity {
            self.entries.retain(|_, e| e.expires > now);
            if self.entries.len() >= self.config.capacity {
                let soonest = self
                    .entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(k, _)| k.clone());
                if let Some(key) = soonest {
                    self.entries.remove(&key);
                }
            }
        }
        self.entries
            .insert(token.to_owned(), Entry { outcome, expires });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(capacity: usize) -> CacheConfig {
        CacheConfig {
            ttl: Duration::from_secs(60),
            failure_ttl: Duration::from_secs(5),
            capacity,
        }
    }

    #[test]
    fn accepted_tokens_expire_after_the_ttl() {
        let now = Instant::now();
        let mut cache = Cache::new(config(10));
        cache.accept("t", "n1".into(), now, None);
        assert_eq!(
            cache.get("t", now + Duration::from_secs(59)),
            Some(Ok("n1".into()))
        );
        assert_eq!(cache.get("t", now + Duration::from_secs(60)), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_token_never_outlives_its_own_expiry() {
        let now = Instant::now();
        let mut cache = Cache::new(config(10));
        cache.accept("t", "n1".into(), now, Some(now + Duration::from_secs(3)));
        assert!(cache.get("t", now + Duration::from_secs(2)).is_some());
        assert_eq!(cache.get("t", now + Duration::from_secs(3)), None);
        // Already expired: not cached at all.
        cache.accept("old", "n1".into(), now, Some(now));
        assert_eq!(cache.get("old", now), None);
    }

    #[test]
    fn refusals_are_kept_briefly() {
        let now = Instant::now();
        let mut cache = Cache::new(config(10));
        cache.refuse("bad", "expired".into(), now);
        assert_eq!(
            cache.get("bad", now + Duration::from_secs(4)),
            Some(Err("expired".into()))
        );
        assert_eq!(cache.get("bad", now + Duration::from_secs(5)), None);
        let mut off = Cache::new(CacheConfig {
            failure_ttl: Duration::ZERO,
            ..config(10)
        });
        off.refuse("bad", "expired".into(), now);
        assert!(off.is_empty());
    }

    #[test]
    fn size_is_bounded_and_the_soonest_to_expire_goes_first() {
        let now = Instant::now();
        let mut cache = Cache::new(config(3));
        cache.accept("a", "n1".into(), now, None);
        cache.refuse("b", "no".into(), now);
        cache.accept("c", "n3".into(), now, None);
        cache.accept("d", "n4".into(), now, None);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("b", now), None, "the refusal expires first");
        for key in ["a", "c", "d"] {
            assert!(cache.get(key, now).is_some(), "{key}");
        }
        // Replacing an entry does not evict another.
        cache.accept("a", "n1".into(), now, None);
        assert_eq!(cache.len(), 3);
    }
}
