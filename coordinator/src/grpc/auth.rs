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
    /// Too many unknown tokens to review right now: refused without asking the identity
    /// backend (`UNAVAILABLE`; an agent retries, a flood of garbage tokens costs nothing).
    #[error("too many new credentials to check; retry later")]
    Throttled,
}

impl AuthError {
    /// A short, fixed label for the refusal (metrics and the refusal summary).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Unauthenticated(_) => "unauthenticated",
            AuthError::Unavailable(_) => "unavailable",
            AuthError::Throttled => "throttled",
        }
    }
}

/// Longest bearer token accepted (bytes). Projected service-account tokens are JWTs of 1-2 KB;
/// anything much longer is refused before it is hashed, cached or sent to the API server.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

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
    let token = value
        .strip_prefix("Bearer ")
        .map(str::trim)
        .filter(|token| !token.is_empty())
        .ok_or_else(|| {
            AuthError::Unauthenticated(
                "authorization metadata is not \"Bearer <token>\"".to_owned(),
            )
        })?;
    token_shape(token).map_err(|why| AuthError::Unauthenticated(why.to_owned()))?;
    Ok(token)
}

/// Cheap syntactic checks of a bearer token, before it costs a hash, a cache entry or a
/// TokenReview: at most [`MAX_TOKEN_BYTES`], the base64url alphabet with at most three
/// non-empty dot-separated segments (a JWT's shape; the emulator's opaque tokens have two).
pub fn token_shape(token: &str) -> Result<(), &'static str> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err("the bearer token is too long");
    }
    let base64url = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_';
    if !token.bytes().all(|b| base64url(b) || b == b'.') {
        return Err("the bearer token has characters a token never has");
    }
    let segments = token.split('.').count();
    if segments > 3 || token.split('.').any(str::is_empty) {
        return Err("the bearer token is not shaped like a token");
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_shapes() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJhdWQiOlsicm90YSJdfQ.c2ln-_x";
        for ok in [jwt, "rota-sim.abc123", "token-n1"] {
            assert_eq!(token_shape(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(MAX_TOKEN_BYTES + 1);
        for bad in [
            long.as_str(),
            "a.b.c.d",
            "a..b",
            ".a",
            "a b",
            "a+b/c=",
            "tok\u{7f}en",
        ] {
            assert!(token_shape(bad).is_err(), "{bad:?}");
        }
        assert_eq!(token_shape(&"a".repeat(MAX_TOKEN_BYTES)), Ok(()));
    }
}
