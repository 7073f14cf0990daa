//! Agent identity: the TokenReview-backed [`Authenticator`] of the gRPC edge.
//!
//! An agent sends its projected service-account token (audience `rota`) as
//! `authorization: Bearer TOKEN`. [`TokenReviewAuthenticator`] checks, cheapest first:
//!
//! 1. the token's shape ([`crate::grpc::token_shape`]: length, alphabet);
//! 2. the cache of recent outcomes (keyed by the token's digest). An accepted token is only
//!    good while its pod exists: the pod watch ([`pods`]) drops it as soon as the pod is
//!    deleted or replaced;
//! 3. a token bucket ([`throttle`]): unknown tokens beyond its rate are refused with
//!    `UNAVAILABLE` without asking the API server, so a flood of garbage costs it nothing;
//! 4. the TokenReview ([`review::claim`]: authenticated, for our audience, of the agents'
//!    service account), then the pod the token is bound to ([`review::check_pod`]): it must be
//!    controlled by the agents' DaemonSet and run on the node it claims.
//!
//! The edge then refuses calls for any other node. Accepted tokens are cached for a minute at
//! most (never past the token's own expiry), refusals for a few seconds within a byte budget,
//! API failures not at all.

pub mod cache;
pub mod pods;
pub mod review;
pub mod throttle;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

pub use cache::{Accepted, Cache, CacheConfig};
pub use pods::{AgentPods, Lookup};
pub use review::{AgentIdentity, AgentPod, Claim};
pub use throttle::{RateLimit, TokenBucket};

use crate::grpc::{AuthError, Authenticator, bearer_token};
use rota_core::model::NodeName;

/// How long one call to the API server (review or pod lookup) may take before the agent gets
/// `UNAVAILABLE` and retries.
const API_TIMEOUT: Duration = Duration::from_secs(10);

/// Checks agents' tokens with the TokenReview API (see the module docs).
pub struct TokenReviewAuthenticator {
    client: kube::Client,
    identity: AgentIdentity,
    cache: Mutex<Cache>,
    reviews: Mutex<TokenBucket>,
    pods: AgentPods,
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// An authenticator accepting tokens of `identity`, caching as `cache` says and reviewing
    /// unknown tokens at the default [`RateLimit`]. The client needs `create` on
    /// `tokenreviews`, and `get`, `list` and `watch` on pods in the agents' namespace.
    ///
    /// Run [`Self::watch_pods`] beside it: until that watch has listed the agents' pods, each
    /// review looks its pod up with a `get` and cached identities cannot be revoked.
    pub fn new(client: kube::Client, identity: AgentIdentity, cache: CacheConfig) -> Self {
        TokenReviewAuthenticator {
            client,
            identity,
            cache: Mutex::new(Cache::new(cache)),
            reviews: Mutex::new(TokenBucket::new(RateLimit::default())),
            pods: AgentPods::default(),
        }
    }

    /// Reviews at most `limit` unknown tokens.
    #[must_use]
    pub fn with_review_limit(self, limit: RateLimit) -> Self {
        TokenReviewAuthenticator {
            reviews: Mutex::new(TokenBucket::new(limit)),
            ..self
        }
    }

    /// Follows the agents' pods (never returns unless the watch ends: supervise it).
    pub fn watch_pods(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.identity.namespace);
        self.pods.clone().follow(api)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reviews `token` and checks the pod it is bound to. `Err(Unauthenticated)` outcomes are
    /// final for this token; `Err(Unavailable)` ones are worth retrying.
    async fn resolve(&self, token: &str) -> Result<Accepted, AuthError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.identity.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed =
            tokio::time::timeout(API_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| AuthError::Unavailable("the TokenReview timed out".into()))?
                .map_err(|e| AuthError::Unavailable(format!("TokenReview failed: {e}")))?;
        let claim = review::claim(reviewed.status.as_ref(), &self.identity)
            .map_err(AuthError::Unauthenticated)?;
        let pod = match self.pods.get(&claim.pod) {
            Lookup::Found(pod) => pod,
            // The review just found the pod: the watch may lag behind a new one, ask.
            Lookup::Gone | Lookup::Unknown => self.get_pod(&claim.pod).await?,
        };
        let node =
            review::check_pod(&claim, &pod, &self.identity).map_err(AuthError::Unauthenticated)?;
        Ok(Accepted {
            node,
            pod: claim.pod,
            pod_uid: pod.uid,
        })
    }

    /// Reads a pod from the API server (before the pod watch has listed).
    async fn get_pod(&self, name: &str) -> Result<AgentPod, AuthError> {
        let namespace = &self.identity.namespace;
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = tokio::time::timeout(API_TIMEOUT, pods.get_opt(name))
            .await
            .map_err(|_| AuthError::Unavailable("looking up the agent's pod timed out".into()))?
            .map_err(|e| AuthError::Unavailable(format!("looking up the agent's pod failed: {e}")))?
            .ok_or_else(|| {
                AuthError::Unauthenticated(format!("the token's pod {namespace}/{name} is gone"))
            })?;
        Ok(AgentPod::of(&pod))
    }

    /// A cached identity, unless its pod is gone or replaced (then it is forgotten).
    fn still_valid(&self, token: &str, accepted: Accepted) -> Result<NodeName, AuthError> {
        match self.pods.get(&accepted.pod) {
            Lookup::Found(pod) if pod.uid == accepted.pod_uid => Ok(accepted.node),
            // Before the first listing the identity was checked by a `get` at most a TTL ago.
            Lookup::Unknown => Ok(accepted.node),
            Lookup::Found(_) | Lookup::Gone => {
                self.cache().forget(token);
                Err(AuthError::Unauthenticated(format!(
                    "the token's pod {} is gone",
                    accepted.pod
                )))
            }
        }
    }
}

/// When a JWT's `exp` falls on the local monotonic clock.
fn expiry_instant(token: &str, now: Instant) -> Option<Instant> {
    let expiry = review::jwt_expiry(token)?;
    let left = Timestamp::now().duration_until(expiry);
    Some(match Duration::try_from(left) {
        Ok(left) => now + left,
        // Already past.
        Err(_) => now,
    })
}

impl Authenticator for TokenReviewAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<NodeName, AuthError> {
        let token = bearer_token(metadata)?;
        let cached = self.cache().get(token, Instant::now());
        match cached {
            Some(Ok(accepted)) => return self.still_valid(token, accepted),
            Some(Err(why)) => return Err(AuthError::Unauthenticated(why)),
            None => {}
        }
        let allowed = self
            .reviews
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .try_take(Instant::now());
        if !allowed {
            return Err(AuthError::Throttled);
        }
        let outcome = self.resolve(token).await;
        let now = Instant::now();
        match outcome {
            Ok(accepted) => {
                let node = accepted.node.clone();
                self.cache()
                    .accept(token, accepted, now, expiry_instant(token, now));
                Ok(node)
            }
            Err(AuthError::Unauthenticated(why)) => {
                // Logged (rate-limited) and counted by the edge.
                self.cache().refuse(token, why.clone(), now);
                Err(AuthError::Unauthenticated(why))
            }
            // Counted and summed up by the edge (reason `unavailable`): an API outage during
            // a flood must not log a line per call.
            Err(other) => Err(other),
        }
    }
}
