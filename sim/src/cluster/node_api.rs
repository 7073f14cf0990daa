//! What a simulated kubelet asks of the API server, as one narrow interface with two ends: the
//! emulator's in-process [`Store`], and a real kube-apiserver reached as the node's own
//! identity ([`super::remote::RemoteApi`], `system:node:<name>`), where the Node authorizer and
//! NodeRestriction judge every call.

use std::future::Future;
use std::sync::Arc;

use serde_json::Value;

use crate::apiserver::{DeleteOptions, GroupResource, ListOptions, Part, ResourceKey, Store};

/// A refused or failed call: the HTTP status (0 when no answer came) and the message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct CallError {
    /// HTTP status code of the answer; 0 when the call got none (connection failed).
    pub code: u16,
    /// The server's message.
    pub message: String,
}

impl CallError {
    /// The object does not exist.
    pub(crate) fn not_found(&self) -> bool {
        self.code == 404
    }
}

impl From<crate::apiserver::Error> for CallError {
    fn from(e: crate::apiserver::Error) -> Self {
        CallError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// The result of a kubelet's API call.
pub type CallResult<T> = Result<T, CallError>;

/// The API calls a kubelet makes.
pub(crate) trait NodeApi: Clone + Send + Sync + 'static {
    /// The time to stamp on what the kubelet writes.
    fn now(&self) -> jiff::Timestamp;

    /// The Node object to register, from the one the kubelet would like: an identity under
    /// NodeRestriction drops the labels a kubelet may not set on itself.
    fn registration(&self, node: Value) -> Value {
        node
    }

    /// Create an object.
    fn create(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        obj: Value,
    ) -> impl Future<Output = CallResult<Arc<Value>>> + Send;

    /// Read an object.
    fn get(&self, key: &ResourceKey) -> impl Future<Output = CallResult<Arc<Value>>> + Send;

    /// The pods bound to `node` (`spec.nodeName=NODE`).
    fn pods_on(&self, node: &str) -> impl Future<Output = CallResult<Vec<Arc<Value>>>> + Send;

    /// Delete an object.
    fn delete(
        &self,
        key: &ResourceKey,
        opts: &DeleteOptions,
    ) -> impl Future<Output = CallResult<()>> + Send;

    /// Read-modify-write `part` of an object, retrying on conflicts: `edit` changes a copy of
    /// the current object and says whether to write it.
    fn modify<F>(
        &self,
        key: &ResourceKey,
        part: Part,
        edit: F,
    ) -> impl Future<Output = CallResult<()>> + Send
    where
        F: FnMut(&mut Value) -> bool + Send;
}

/// The field selector of the pods bound to `node`.
pub(crate) fn bound_to(node: &str) -> String {
    format!("spec.nodeName={node}")
}

impl NodeApi for Store {
    fn now(&self) -> jiff::Timestamp {
        Store::now(self)
    }

    async fn create(
        &self,
        resource: &GroupResource,
        namespace: Option<&str>,
        obj: Value,
    ) -> CallResult<Arc<Value>> {
        Ok(Store::create(self, resource, namespace, obj)?)
    }

    async fn get(&self, key: &ResourceKey) -> CallResult<Arc<Value>> {
        Ok(Store::get(self, key)?)
    }

    async fn pods_on(&self, node: &str) -> CallResult<Vec<Arc<Value>>> {
        let list = self.list(
            &super::objects::pods(),
            None,
            &ListOptions::fields(&bound_to(node)),
        )?;
        Ok(list.items)
    }

    async fn delete(&self, key: &ResourceKey, opts: &DeleteOptions) -> CallResult<()> {
        Store::delete(self, key, opts)?;
        Ok(())
    }

    async fn modify<F>(&self, key: &ResourceKey, part: Part, mut edit: F) -> CallResult<()>
    where
        F: FnMut(&mut Value) -> bool + Send,
    {
        Store::modify(self, key, part, |obj| Ok(edit(obj)))?;
        Ok(())
    }
}
