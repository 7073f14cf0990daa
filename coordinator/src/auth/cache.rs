//! A bounded cache of authentication outcomes with explicit `now` (pure, no clock of its own).
//!
//! Entries are keyed by the SHA-256 digest of the token, never by its text: a flood of large
//! garbage tokens costs 32 bytes of key each, however long they are, and the cache holds no
//! credential. A refusal's reason is cut to [`MAX_REASON_BYTES`], and refusals together hold at
//! most [`CacheConfig::refusal_budget`] bytes: a flood of unknown tokens can push out other
//! refusals, never accepted tokens, and never grows the cache past that budget.

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
    /// Most bytes the refusals may hold together; the refusal closest to expiry goes first.
    pub refusal_budget: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(60),
            failure_ttl: Duration::from_secs(5),
            capacity: 16_384,
            refusal_budget: 1024 * 1024,
        }
    }
}

/// Who an accepted token speaks for: the node, and the agent pod the token is bound to (a
/// cached identity is only good while that very pod exists).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    /// The caller's node.
    pub node: NodeName,
    /// The agent pod's name (in the agents' namespace).
    pub pod: String,
    /// That pod's UID.
    pub pod_uid: String,
}

/// A cached outcome: who the caller is, or why the token was refused.
pub type Outcome = Result<Accepted, String>;

/// Longest reason kept for a refused token.
pub const MAX_REASON_BYTES: usize = 256;

/// A token's cache key: its SHA-256 digest.
type Key = [u8; 32];

fn key(token: &str) -> Key {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut key = [0; 32];
    key.copy_from_slice(digest.as_ref());
    key
}

#[derive(Clone, Debug)]
struct Entry {
    outcome: Outcome,
    expires: Instant,
}

impl Entry {
    fn footprint(&self) -> usize {
        let text = match &self.outcome {
            Ok(who) => who.node.len() + who.pod.len() + who.pod_uid.len(),
            Err(why) => why.len(),
        };
        std::mem::size_of::<Key>() + std::mem::size_of::<Entry>() + text
    }
}

/// Outcomes by token.
#[derive(Debug)]
pub struct Cache {
    config: CacheConfig,
    entries: HashMap<Key, Entry>,
    /// Bytes held by refusals.
    refused_bytes: usize,
}

impl Cache {
    /// An empty cache.
    pub fn new(config: CacheConfig) -> Self {
        Cache {
            config,
            entries: HashMap::new(),
            refused_bytes: 0,
        }
    }

    /// The outcome for `token` if it is cached and still fresh at `now`.
    pub fn get(&mut self, token: &str, now: Instant) -> Option<Outcome> {
        let key = key(token);
        let entry = self.entries.get(&key)?;
        if now >= entry.expires {
            if let Some(entry) = self.entries.remove(&key) {
                self.release(&entry);
            }
            return None;
        }
        Some(entry.outcome.clone())
    }

    /// Remembers an accepted token until `now + ttl`, or until `token_expiry` if sooner.
    pub fn accept(
        &mut self,
        token: &str,
        accepted: Accepted,
        now: Instant,
        token_expiry: Option<Instant>,
    ) {
        let mut expires = now + self.config.ttl;
        if let Some(expiry) = token_expiry {
            expires = expires.min(expiry);
        }
        self.insert(token, Ok(accepted), expires, now);
    }

    /// Remembers a refused token for the short failure TTL.
    pub fn refuse(&mut self, token: &str, why: String, now: Instant) {
        if self.config.failure_ttl.is_zero() {
            return;
        }
        let why = rota_core::text::printable_within(&why, MAX_REASON_BYTES);
        self.insert(token, Err(why), now + self.config.failure_ttl, now);
    }

    /// Forgets `token` (its pod is gone).
    pub fn forget(&mut self, token: &str) {
        if let Some(entry) = self.entries.remove(&key(token)) {
            self.release(&entry);
        }
    }

    /// Bytes the entries hold (keys, outcomes, expiry), for the bound on memory.
    pub fn footprint(&self) -> usize {
        self.entries.values().map(Entry::footprint).sum()
    }

    /// Bytes the refusals hold (at most [`CacheConfig::refusal_budget`]).
    pub fn refusal_footprint(&self) -> usize {
        self.refused_bytes
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
        let key = key(token);
        if let Some(old) = self.entries.remove(&key) {
            self.release(&old);
        }
        let entry = Entry { outcome, expires };
        let size = entry.footprint();
        let refusal = entry.outcome.is_err();
        if refusal && size > self.config.refusal_budget {
            return;
        }
        if self.entries.len() >= self.config.capacity
            || (refusal && self.refused_bytes + size > self.config.refusal_budget)
        {
            self.purge(now);
        }
        if self.entries.len() >= self.config.capacity {
            self.evict_soonest(|_| true);
        }
        while refusal && self.refused_bytes + size > self.config.refusal_budget {
            if !self.evict_soonest(|e| e.outcome.is_err()) {
                break;
            }
        }
        if refusal {
            self.refused_bytes += size;
        }
        self.entries.insert(key, entry);
    }

    /// Drops the expired entries.
    fn purge(&mut self, now: Instant) {
        let mut freed = 0;
        self.entries.retain(|_, e| {
            let keep = e.expires > now;
            if !keep && e.outcome.is_err() {
                freed += e.footprint();
            }
            keep
        });
        self.refused_bytes = self.refused_bytes.saturating_sub(freed);
    }

    /// Drops the entry closest to expiry among those `which` selects; false if there is none.
    fn evict_soonest(&mut self, which: impl Fn(&Entry) -> bool) -> bool {
        let soonest = self
            .entries
            .iter()
            .filter(|(_, e)| which(e))
            .min_by_key(|(_, e)| e.expires)
            .map(|(k, _)| *k);
        match soonest.and_then(|k| self.entries.remove(&k)) {
            Some(entry) => {
                self.release(&entry);
                true
            }
            None => false,
        }
    }

    /// Accounts for an entry that left.
    fn release(&mut self, entry: &Entry) {
        if entry.outcome.is_err() {
            self.refused_bytes = self.refused_bytes.saturating_sub(entry.footprint());
        }
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
            refusal_budget: 1024 * 1024,
        }
    }

    fn who(node: &str) -> Accepted {
        Accepted {
            node: node.into(),
            pod: format!("agent-{node}"),
            pod_uid: format!("uid-{node}"),
        }
    }

    #[test]
    fn accepted_tokens_expire_after_the_ttl() {
        let now = Instant::now();
        let mut cache = Cache::new(config(10));
        cache.accept("t", who("n1"), now, None);
        assert_eq!(
            cache.get("t", now + Duration::from_secs(59)),
            Some(Ok(who("n1")))
        );
        assert_eq!(cache.get("t", now + Duration::from_secs(60)), None);
        assert!(cache.is_empty());
    }

    #[test]
    fn a_token_never_outlives_its_own_expiry() {
        let now = Instant::now();
        let mut cache = Cache::new(config(10));
        cache.accept("t", who("n1"), now, Some(now + Duration::from_secs(3)));
        assert!(cache.get("t", now + Duration::from_secs(2)).is_some());
        assert_eq!(cache.get("t", now + Duration::from_secs(3)), None);
        // Already expired: not cached at all.
        cache.accept("old", who("n1"), now, Some(now));
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

    /// 1,000 distinct 15 KB garbage tokens, each refused with a long reason: the cache holds a
    /// digest and a short reason for each, not 15 MB of tokens.
    #[test]
    fn garbage_tokens_cost_a_digest_not_their_length() {
        let now = Instant::now();
        let mut cache = Cache::new(config(16_384));
        for i in 0..1000 {
            let token = format!("{i:05}{}", "x".repeat(15_000));
            cache.refuse(&token, format!("not a JWT: {}", "\u{1b}".repeat(500)), now);
            assert!(cache.get(&token, now).is_some());
        }
        assert_eq!(cache.len(), 1000);
        let per_entry = cache.footprint() / cache.len();
        assert!(per_entry <= 400, "{per_entry} bytes per refused token");
        assert_eq!(cache.get("00000", now), None, "a prefix is another token");
    }

    #[test]
    fn size_is_bounded_and_the_soonest_to_expire_goes_first() {
        let now = Instant::now();
        let mut cache = Cache::new(config(3));
        cache.accept("a", who("n1"), now, None);
        cache.refuse("b", "no".into(), now);
        cache.accept("c", who("n3"), now, None);
        cache.accept("d", who("n4"), now, None);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get("b", now), None, "the refusal expires first");
        for key in ["a", "c", "d"] {
            assert!(cache.get(key, now).is_some(), "{key}");
        }
        // Replacing an entry does not evict another.
        cache.accept("a", who("n1"), now, None);
        assert_eq!(cache.len(), 3);
    }

    /// A flood of refusals stays within the byte budget, pushing out older refusals only:
    /// accepted tokens stay.
    #[test]
    fn refusals_stay_within_their_byte_budget() {
        let now = Instant::now();
        let mut cache = Cache::new(CacheConfig {
            refusal_budget: 10_000,
            ..config(16_384)
        });
        cache.accept("good", who("n1"), now, None);
        for i in 0..10_000 {
            cache.refuse(&format!("garbage-{i}"), "x".repeat(200), now);
            assert!(cache.refusal_footprint() <= 10_000);
        }
        assert!(cache.refusal_footprint() > 5_000, "the budget is used");
        assert!(cache.get("garbage-9999", now).is_some(), "the newest stays");
        assert_eq!(cache.get("good", now), Some(Ok(who("n1"))));
        // Forgetting gives the bytes back.
        let before = cache.refusal_footprint();
        cache.forget("garbage-9999");
        assert!(cache.refusal_footprint() < before);
        cache.forget("good");
        assert_eq!(cache.get("good", now), None);
    }
}
