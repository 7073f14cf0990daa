//! Service-account tokens the emulator issues, and the TokenReview API that validates them.
//!
//! A token is bound to a pod, as a projected token is: a review answers with the service
//! account's username, its groups, and `extra` claims naming the pod and its node (what the API
//! server reports since Kubernetes 1.30). It fails once the token has expired, when the
//! requested audiences do not intersect the token's, or when the pod is gone or replaced.

use std::sync::Arc;

use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};

use super::error::{Error, Result};
use super::meta;
use super::resources::GroupResource;
use super::store::{ResourceKey, State, Store, new_uid};

/// The audience of tokens reviewed without explicit audiences (the API server's own).
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// What the emulator remembers about a token it issued.
#[derive(Clone, Debug)]
pub(crate) struct IssuedToken {
    namespace: String,
    service_account: String,
    pod: String,
    pod_uid: String,
    node: String,
    node_uid: String,
    audiences: Vec<String>,
    expires: Timestamp,
    id: String,
}

impl Store {
    /// Issue a token for the pod's service account, bound to the pod (and its node), valid for
    /// `audience` during `ttl`. Fails with 404 when the pod does not exist.
    pub fn issue_service_account_token(
        &self,
        namespace: &str,
        pod: &str,
        audience: &str,
        ttl: std::time::Duration,
    ) -> Result<String> {
        let now = self.now();
        let mut state = self.lock();
        let pod_obj = state.get(&ResourceKey::new(
            GroupResource::core("pods"),
            Some(namespace),
            pod,
        ))?;
        let node = meta::str_at(&pod_obj, "/spec/nodeName").to_string();
        let node_uid = if node.is_empty() {
            String::new()
        } else {
            state
                .get(&ResourceKey::new(GroupResource::core("nodes"), None, &node))
                .map(|n| meta::uid(&n).to_string())
                .unwrap_or_default()
        };
        let ttl = SignedDuration::try_from(ttl)
            .map_err(|e| Error::BadRequest(format!("token ttl: {e}")))?;
        let expires = now
            .checked_add(ttl)
            .map_err(|e| Error::BadRequest(format!("token ttl: {e}")))?;
        let id = new_uid();
        let token = format!("rota-sim.{}", id.replace('-', ""));
        let service_account = match meta::str_at(&pod_obj, "/spec/serviceAccountName") {
            "" => "default".to_string(),
            sa => sa.to_string(),
        };
        state.tokens.insert(
            token.clone(),
            IssuedToken {
                namespace: namespace.to_string(),
                service_account,
                pod: pod.to_string(),
                pod_uid: meta::uid(&pod_obj).to_string(),
                node,
                node_uid,
                audiences: vec![audience.to_string()],
                expires,
                id,
            },
        );
        Ok(token)
    }
}

impl State {
    /// Answer a TokenReview (create-only resource; nothing is stored).
    pub(crate) fn review_token(&self, review: &Value, now: Timestamp) -> Result<Arc<Value>> {
        let token = review
            .pointer("/spec/token")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let requested: Vec<String> = meta::strings(review.pointer("/spec/audiences"))
            .map(str::to_string)
            .collect();
        let requested = if requested.is_empty() {
            vec![API_AUDIENCE.to_string()]
        } else {
            requested
        };
        let status = match self.check_token(token, &requested, now) {
            Ok((issued, audiences)) => {
                let sa_uid = self
                    .get(&ResourceKey::new(
                        GroupResource::core("serviceaccounts"),
                        Some(&issued.namespace),
                        &issued.service_account,
                    ))
                    .map(|sa| meta::uid(&sa).to_string())
                    .unwrap_or_default();
                let mut extra = json!({
                    "authentication.kubernetes.io/credential-id": [format!("JTI={}", issued.id)],
                    "authentication.kubernetes.io/pod-name": [issued.pod],
                    "authentication.kubernetes.io/pod-uid": [issued.pod_uid],
                });
                if !issued.node.is_empty() {
                    extra["authentication.kubernetes.io/node-name"] = json!([issued.node]);
                    extra["authentication.kubernetes.io/node-uid"] = json!([issued.node_uid]);
                }
                json!({
                    "authenticated": true,
                    "user": {
                        "username": format!("system:serviceaccount:{}:{}", issued.namespace, issued.service_account),
                        "uid": sa_uid,
                        "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", issued.namespace), "system:authenticated"],
                        "extra": extra,
                    },
                    "audiences": audiences,
                })
            }
            Err(message) => json!({"user": {}, "error": message}),
        };
        let mut out = review.clone();
        if let Some(m) = out.as_object_mut() {
            m.insert("apiVersion".into(), json!("authentication.k8s.io/v1"));
            m.insert("kind".into(), json!("TokenReview"));
            m.entry("metadata").or_insert_with(|| json!({}));
            m.insert("status".into(), status);
        }
        Ok(Arc::new(out))
    }

    fn check_token(
        &self,
        token: &str,
        requested: &[String],
        now: Timestamp,
    ) -> std::result::Result<(IssuedToken, Vec<String>), String> {
        let issued = self
            .tokens
            .get(token)
            .ok_or_else(|| "[invalid bearer token, token lookup failed]".to_string())?;
        let audiences: Vec<String> = requested
            .iter()
            .filter(|a| issued.audiences.contains(a))
            .cloned()
            .collect();
        if audiences.is_empty() {
            return Err("[invalid bearer token, token audiences is invalid]".into());
        }
        if now >= issued.expires {
            return Err("[invalid bearer token, service account token has expired]".into());
        }
        match self.get(&ResourceKey::new(
            GroupResource::core("pods"),
            Some(&issued.namespace),
            &issued.pod,
        )) {
            Ok(pod) if meta::uid(&pod) == issued.pod_uid => Ok((issued.clone(), audiences)),
            Ok(pod) => Err(format!(
                "[invalid bearer token, pod UID ({}) does not match claim ({})]",
                meta::uid(&pod),
                issued.pod_uid
            )),
            Err(_) => Err(format!(
                "[invalid bearer token, pods \"{}\" not found]",
                issued.pod
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn review(store: &Store, token: &str, audiences: &[&str]) -> Value {
        let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token, "audiences": audiences}});
        (*store
            .create(
                &GroupResource::new("authentication.k8s.io", "tokenreviews"),
                None,
                body,
            )
            .unwrap())
        .clone()
    }

    #[test]
    fn review_checks_token_audience_and_pod() {
        let store = Store::new();
        store
            .create(
                &GroupResource::core("nodes"),
                None,
                json!({"metadata": {"name": "n1"}}),
            )
            .unwrap();
        store
            .create(
                &GroupResource::core("pods"),
                Some("kube-system"),
                json!({"metadata": {"name": "agent-x"}, "spec": {"nodeName": "n1", "serviceAccountName": "rota-agent", "containers": [{"name": "a", "image": "i"}]}}),
            )
            .unwrap();
        let token = store
            .issue_service_account_token("kube-system", "agent-x", "rota", Duration::from_secs(600))
            .unwrap();
        let ok = review(&store, &token, &["rota"]);
        assert_eq!(ok["status"]["authenticated"], true);
        assert_eq!(
            ok["status"]["user"]["username"],
            "system:serviceaccount:kube-system:rota-agent"
        );
        assert_eq!(
            ok["status"]["user"]["extra"]["authentication.kubernetes.io/node-name"][0],
            "n1"
        );
        assert_eq!(ok["status"]["audiences"], json!(["rota"]));
        let wrong_aud = review(&store, &token, &["other"]);
        assert!(wrong_aud["status"].get("authenticated").is_none());
        assert!(
            wrong_aud["status"]["error"]
                .as_str()
                .unwrap()
                .contains("audiences")
        );
        let default_aud = review(&store, &token, &[]);
        assert!(default_aud["status"]["error"].is_string());
        let bogus = review(&store, "nope", &["rota"]);
        assert!(bogus["status"]["error"].is_string());
        store
            .delete(
                &ResourceKey::new(GroupResource::core("pods"), Some("kube-system"), "agent-x"),
                &crate::apiserver::DeleteOptions {
                    grace_period_seconds: Some(0),
                    ..Default::default()
                },
            )
            .unwrap();
        assert!(
            review(&store, &token, &["rota"])["status"]["error"]
                .as_str()
                .unwrap()
                .contains("not found")
        );
    }
}
