//! Who is calling: an agent proves which node it runs on with a bearer token in the
//! `authorization` metadata.

use std::collections::HashMap;
use std::future::Future;

use tonic::metadata::MetadataMap;

use rota_core::model::NodeName;

/// Why a caller could not be authenticated.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No credential, a malformed one, or one that does not check out (`UNAUTHENTICATED`).
    #[error("{0}")]
    Unauthenticated(String),
    /// The identity backend (e.g. the TokenReview API) could not answer (`UNAVAILABLE`).
    #[error("cannot check the caller's identity: {0}")]
    Unavailable(String),
}

/// Tells which node a request comes from. The TokenReview-backed implementation checks the
/// projected service-account token (audience `rota`) and its node-name claim.
pub trait Authenticator: Send + Sync + 'static {
    /// The caller's node, from the request metadata.
    fn authenticate(
        &self,
        metadata: &MetadataMap,
    ) -> impl Future<Output = Result<NodeName, AuthError>> + Send;
}

/// The bearer token of the `authorization` metadata (`Bearer <token>`).
pub fn bearer_token(metadata: &MetadataMap) -> Result<&str, AuthError> {
    let value = metadata
        .get("authorization")
        .ok_or_else(|| AuthError::Unauthenticated("missing authorization metadata".to_owned()))?;
    let value = value.to_str().map_err(|_| {
        AuthError::Unauthenticated("authorization metadata is not valid ASCII".to_owned())
    })?;
    value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            AuthError::Unauthenticated(
                "authorization metadata is not \"Bearer <token>\"".to_owned(),
            )
        })
}

/// A fixed table of bearer tokens to node names (tests, the simulator, static deployments).
#[derive(Clone, Debug, Default)]
pub struct StaticAuthenticator {
    tokens: HashMap<String, NodeName>,
}

impl StaticAuthenticator {
    /// An authenticator that accepts exactly these `(token, node)` pairs.
    pub fn new<I, T, N>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (T, N)>,
        T: Into<String>,
        N: Into<NodeName>,
    {
        StaticAuthenticator {
            tokens: pairs
                .into_iter()
                .map(|(t, n)| (t.into(), n.into()))
                .collect(),
        }
    }
}

impl Authenticator for StaticAuthenticator {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<NodeName, AuthError> {
        let token = bearer_token(metadata)?;
        self.tokens
            .get(token)
            .cloned()
            .ok_or_else(|| AuthError::Unauthenticated("unknown bearer token".to_owned()))
    }
}
