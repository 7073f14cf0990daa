//! Agent identity: the TokenReview-backed [`Authenticator`] of the gRPC edge.
//!
//! An agent sends its projected service-account token (audience `rota`) as
//! `authorization: Bearer TOKEN`. [`TokenReviewAuthenticator`] asks the API server to review it
//! ([`review::claim`] checks the answer: authenticated, for our audience, of the agents' service
//! account) and returns the node the token's pod runs on: the `node-name` claim, or on clusters
//! before Kubernetes 1.30 the pod's `spec.nodeName` (the pod's UID must match the token's).
//! The edge then refuses calls for any other node. Accepted tokens are cached for a minute at
//! most (never past the token's own expiry), refusals for a few seconds, API failures not at all.

pub mod cache;
pub mod review;

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use tokio::time::Instant;
use tonic::metadata::MetadataMap;

pub use cache::{Cache, CacheConfig};
pub use review::{AgentIdentity, Claim};

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
}

impl std::fmt::Debug for TokenReviewAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewAuthenticator")
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl TokenReviewAuthenticator {
    /// An authenticator accepting tokens of `identity`, caching as `cache` says. The client
    /// needs `create` on `tokenreviews` and `get` on pods in the agents' namespace.
    pub fn new(client: kube::Client, identity: AgentIdentity, cache: CacheConfig) -> Self {
        TokenReviewAuthenticator {
            client,
            identity,
            cache: Mutex::new(Cache::new(cache)),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reviews `token` and resolves the caller's node. `Err(Unauthenticated)` outcomes are
    /// final for this token; `Err(Unavailable)` ones are worth retrying.
    async fn resolve(&self, token: &str) -> Result<NodeName, AuthError> {
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
        match claim {
            Claim::Node(node) => Ok(node),
            Claim::Pod {
                namespace,
                name,
                uid,
            } => self.node_of_pod(&namespace, &name, uid.as_deref()).await,
        }
    }

    /// The node a pod runs on (clusters without the node-name claim).
    async fn node_of_pod(
        &self,
        namespace: &str,
        name: &str,
        uid: Option<&str>,
    ) -> Result<NodeName, AuthError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pod = tokio::time::timeout(API_TIMEOUT, pods.get_opt(name))
            .await
            .map_err(|_| AuthError::Unavailable("looking up the agent's pod timed out".into()))?
            .map_err(|e| AuthError::Unavailable(format!("looking up the agent's pod failed: {e}")))?
            .ok_or_else(|| {
                AuthError::Unauthenticated(format!("the token's pod {namespace}/{name} is gone"))
            })?;
        if let Some(uid) = uid
            && pod.metadata.uid.as_deref() != Some(uid)
        {
            return Err(AuthError::Unauthenticated(format!(
                "the token's pod {namespace}/{name} was replaced"
            )));
        }
        pod.spec
            .and_then(|s| s.node_name)
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                AuthError::Unauthenticated(format!(
                    "the token's pod {namespace}/{name} is not scheduled to a node"
                ))
            })
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
        let token = bearer_token(metadata)?.to_owned();
        if let Some(outcome) = self.cache().get(&token, Instant::now()) {
            return outcome.map_err(AuthError::Unauthenticated);
        }
        let outcome = self.resolve(&token).await;
        let now = Instant::now();
        match &outcome {
            Ok(node) => {
                self.cache()
                    .accept(&token, node.clone(), now, expiry_instant(&token, now));
            }
            Err(AuthError::Unauthenticated(why)) => {
                tracing::info!(reason = %why, "agent token refused");
                self.cache().refuse(&token, why.clone(), now);
            }
            Err(AuthError::Unavailable(why)) => {
                tracing::warn!(reason = %why, "cannot check an agent's token");
            }
        }
        outcome
    }
}
