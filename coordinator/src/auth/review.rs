//! Reading a TokenReview's answer: pure checks of audience and service account, the caller's
//! claim (its pod, and on Kubernetes ≥ 1.30 its node), and of the pod the claim names: only a
//! pod of the agents' DaemonSet, on the node it claims, speaks for that node. Any other pod
//! running as the agents' service account (a debug pod, a copy someone started) is refused.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jiff::Timestamp;
use k8s_openapi::api::authentication::v1::TokenReviewStatus;
use k8s_openapi::api::core::v1::Pod;

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
    /// The DaemonSet (in `namespace`) whose pods are the agents; a token is only good when its
    /// pod is controlled by this DaemonSet.
    pub daemon_set: String,
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

/// What a valid review says about the caller: the pod its token is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    /// The pod's name (in the agents' namespace, the service account's).
    pub pod: String,
    /// The pod's UID, when the review reports it (a pod re-created under the same name must
    /// not inherit the token).
    pub pod_uid: Option<String>,
    /// The pod's node, when the review reports it (Kubernetes ≥ 1.30).
    pub node: Option<NodeName>,
}

/// What the authenticator needs to know of a pod in the agents' namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentPod {
    /// The pod's UID.
    pub uid: String,
    /// The node it is bound to; empty while unscheduled.
    pub node: String,
    /// Kind and name of its controller (the owner reference with `controller: true`).
    pub controller: Option<(String, String)>,
}

impl AgentPod {
    /// The facts of `pod`.
    pub fn of(pod: &Pod) -> AgentPod {
        let controller = pod
            .metadata
            .owner_references
            .iter()
            .flatten()
            .find(|o| o.controller == Some(true))
            .map(|o| (o.kind.clone(), o.name.clone()));
        AgentPod {
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            node: pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default(),
            controller,
        }
    }
}

/// Checks that the claim's pod (`pod`, looked up by the claim's name) is an agent of
/// `identity`'s DaemonSet on the node it claims, and returns that node.
pub fn check_pod(
    claim: &Claim,
    pod: &AgentPod,
    identity: &AgentIdentity,
) -> Result<NodeName, String> {
    let name = &claim.pod;
    if let Some(uid) = &claim.pod_uid
        && *uid != pod.uid
    {
        return Err(format!("the token's pod {name} was replaced"));
    }
    let agent = matches!(&pod.controller, Some((kind, owner)) if kind == "DaemonSet" && *owner == identity.daemon_set);
    if !agent {
        return Err(format!(
            "the token's pod {name} is not run by the DaemonSet {}",
            identity.daemon_set
        ));
    }
    if pod.node.is_empty() {
        return Err(format!("the token's pod {name} is not scheduled to a node"));
    }
    if let Some(node) = &claim.node
        && *node != pod.node
    {
        return Err(format!(
            "the token names node {node} but its pod {name} runs on {}",
            pod.node
        ));
    }
    Ok(pod.node.clone())
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
    let pod = extra(POD_NAME_EXTRA)
        .ok_or_else(|| "the token is not bound to a pod (no pod-name claim)".to_owned())?;
    Ok(Claim {
        pod,
        pod_uid: extra(POD_UID_EXTRA),
        node: extra(NODE_NAME_EXTRA),
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
            daemon_set: "rota-agent".into(),
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
    fn the_claim_names_the_pod_and_its_node() {
        let s = status(
            AGENT,
            &["rota"],
            &[
                (NODE_NAME_EXTRA, "n1"),
                (POD_NAME_EXTRA, "agent-x"),
                (POD_UID_EXTRA, "u1"),
            ],
        );
        assert_eq!(
            claim(Some(&s), &identity()),
            Ok(Claim {
                pod: "agent-x".into(),
                pod_uid: Some("u1".into()),
                node: Some("n1".into()),
            })
        );
        let s = status(AGENT, &["rota"], &[(POD_NAME_EXTRA, "agent-x")]);
        assert_eq!(
            claim(Some(&s), &identity()),
            Ok(Claim {
                pod: "agent-x".into(),
                pod_uid: None,
                node: None,
            })
        );
    }

    #[test]
    fn only_the_daemon_sets_pod_on_the_claimed_node_speaks_for_it() {
        let id = identity();
        let agent = AgentPod {
            uid: "u1".into(),
            node: "n1".into(),
            controller: Some(("DaemonSet".into(), "rota-agent".into())),
        };
        let claim = |uid: Option<&str>, node: Option<&str>| Claim {
            pod: "agent-x".into(),
            pod_uid: uid.map(Into::into),
            node: node.map(Into::into),
        };
        assert_eq!(
            check_pod(&claim(Some("u1"), Some("n1")), &agent, &id),
            Ok("n1".into())
        );
        assert_eq!(check_pod(&claim(None, None), &agent, &id), Ok("n1".into()));
        let with = |f: &dyn Fn(&mut AgentPod)| {
            let mut pod = agent.clone();
            f(&mut pod);
            pod
        };
        let cases = [
            (claim(Some("u0"), Some("n1")), agent.clone(), "was replaced"),
            (claim(None, Some("n2")), agent.clone(), "runs on n1"),
            (
                claim(None, None),
                with(&|p| p.controller = None),
                "not run by the DaemonSet",
            ),
            (
                claim(None, None),
                with(&|p| p.controller = Some(("DaemonSet".into(), "other".into()))),
                "not run by the DaemonSet",
            ),
            (
                claim(None, None),
                with(&|p| p.controller = Some(("ReplicaSet".into(), "rota-agent".into()))),
                "not run by the DaemonSet",
            ),
            (
                claim(None, None),
                with(&|p| p.node.clear()),
                "not scheduled",
            ),
        ];
        for (claim, pod, expected) in cases {
            let err = check_pod(&claim, &pod, &id).unwrap_err();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
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
