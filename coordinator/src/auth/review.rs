//! Reading a TokenReview's answer: pure checks of audience and service account, and the
//! caller's claim (node, or pod on clusters before Kubernetes 1.30).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::TokenReviewStatus;

use rota_core::model::NodeName;

/// `status.user.extra` key naming the node of the pod the token is bound to (Kubernetes ≥ 1.30).
pub const NODE_NAME_EXTRA: &str = "authentication.kubernetes.io/node-name";
/// `status.user.extra` key naming the pod the token is bound to.
pub const POD_NAME_EXTRA: &str = "authentication.kubernetes.io/pod-name";
/// `status.user.extra` key with the UID of that pod.
pub const POD_UID_EXTRA: &str = "authentication.kubernetes.io/pod-uid";

/// Who may call: tokens for `audience` of the service account `namespace/service_account`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentIdentity {
    /// The audience agents' projected tokens are issued for (`rota`).
    pub audience: String,
    /// The agents' namespace.
    pub namespace: String,
    /// The agents' service account.
    pub service_account: String,
}

impl AgentIdentity {
    /// The username the API server reports for the agents' tokens:
    /// `system:serviceaccount:NAMESPACE:NAME`.
    pub fn username(&self) -> String {
        format!(
            "system:serviceaccount:{}:{}",
            self.namespace, self.service_account
        )
    }
}

/// What a valid review says about the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// The token is bound to a pod on this node.
    Node(NodeName),
    /// The token is bound to this pod; its `spec.nodeName` tells the node.
    Pod {
        /// The pod's namespace (the service account's).
        namespace: String,
        /// The pod's name.
        name: String,
        /// The pod's UID, when the review reports it (a pod re-created under the same name
        /// must not inherit the token).
        uid: Option<String>,
    },
}

/// Checks a review's status against `identity` and returns the caller's claim, or why the
/// token is refused.
pub fn claim(
    status: Option<&TokenReviewStatus>,
    identity: &AgentIdentity,
) -> Result<Claim, String> {
    let status = status.ok_or_else(|| "the TokenReview has no status".to_owned())?;
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("not authenticated");
        return Err(format!("token refused: {why}"));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.contains(&identity.audience) {
        return Err(format!(
            "the token is not for audience {:?} (it is for {audiences:?})",
            identity.audience
        ));
    }
    let user = status
        .user
        .as_ref()
        .ok_or_else(|| "the TokenReview names no user".to_owned())?;
    let username = user.username.as_deref().unwrap_or_default();
    let expected = identity.username();
    if username != expected {
        return Err(format!(
            "{username:?} is not the agents' service account ({expected})"
        ));
    }
    let extra = |key: &str| {
        user.extra
            .as_ref()
            .and_then(|e| e.get(key))
            .and_then(|values| values.first())
            .filter(|v| !v.is_empty())
            .cloned()
    };
    if let Some(node) = extra(NODE_NAME_EXTRA) {
        return Ok(Claim::Node(node));
    }
    let pod = extra(POD_NAME_EXTRA)
        .ok_or_else(|| "the token is not bound to a pod (no pod-name claim)".to_owned())?;
    Ok(Claim::Pod {
        namespace: identity.namespace.clone(),
        name: pod,
        uid: extra(POD_UID_EXTRA),
    })
}

/// The `exp` claim of a JWT, read without verifying the signature (the TokenReview verified
/// the token). Only used to keep a cache entry from outliving its token; `None` for tokens
/// that are not JWTs.
pub fn jwt_expiry(token: &str) -> Option<Timestamp> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Timestamp::from_second(claims.get("exp")?.as_i64()?).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn identity() -> AgentIdentity {
        AgentIdentity {
            audience: "rota".into(),
            namespace: "rota-system".into(),
            service_account: "rota-agent".into(),
        }
    }

    fn status(username: &str, audiences: &[&str], extra: &[(&str, &str)]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(true),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some(username.to_owned()),
                extra: Some(
                    extra
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), vec![(*v).to_owned()]))
                        .collect::<BTreeMap<_, _>>(),
                ),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    const AGENT: &str = "system:serviceaccount:rota-system:rota-agent";

    #[test]
    fn the_node_claim_wins() {
        let s = status(
            AGENT,
            &["rota"],
            &[(NODE_NAME_EXTRA, "n1"), (POD_NAME_EXTRA, "agent-x")],
        );
        assert_eq!(claim(Some(&s), &identity()), Ok(Claim::Node("n1".into())));
    }

    #[test]
    fn without_a_node_claim_the_pod_is_named() {
        let s = status(
            AGENT,
            &["rota"],
            &[(POD_NAME_EXTRA, "agent-x"), (POD_UID_EXTRA, "u1")],
        );
        assert_eq!(
            claim(Some(&s), &identity()),
            Ok(Claim::Pod {
                namespace: "rota-system".into(),
                name: "agent-x".into(),
                uid: Some("u1".into())
            })
        );
    }

    #[test]
    fn refusals() {
        let id = identity();
        let unauthenticated = TokenReviewStatus {
            authenticated: None,
            error: Some("[invalid bearer token, service account token has expired]".into()),
            ..TokenReviewStatus::default()
        };
        let cases = [
            (None, "no status"),
            (Some(unauthenticated), "has expired"),
            (
                Some(status(AGENT, &["other"], &[(NODE_NAME_EXTRA, "n1")])),
                "not for audience",
            ),
            (
                Some(status(AGENT, &[], &[(NODE_NAME_EXTRA, "n1")])),
                "not for audience",
            ),
            (
                Some(status(
                    "system:serviceaccount:default:default",
                    &["rota"],
                    &[(NODE_NAME_EXTRA, "n1")],
                )),
                "not the agents' service account",
            ),
            (Some(status(AGENT, &["rota"], &[])), "not bound to a pod"),
        ];
        for (status, expected) in cases {
            let err = claim(status.as_ref(), &id).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn jwt_expiry_is_read_from_the_payload() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"aud":["rota"],"exp":1700000000}"#);
        let token = format!("eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        assert_eq!(
            jwt_expiry(&token),
            Some(Timestamp::from_second(1_700_000_000).unwrap())
        );
        assert_eq!(jwt_expiry("rota-sim.abcdef"), None);
        assert_eq!(jwt_expiry("not-a-jwt"), None);
    }
}
