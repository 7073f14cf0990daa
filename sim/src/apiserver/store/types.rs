//! The values the store's API takes and returns: object keys, list and delete options, list
//! pages, delete results and the change events it publishes.

use std::sync::Arc;

use serde_json::Value;

use crate::apiserver::error::{Error, Result};
use crate::apiserver::meta;
use crate::apiserver::resources::GroupResource;

/// Identifies one object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    /// Its resource.
    pub resource: GroupResource,
    /// Namespace (`None` for cluster-scoped objects).
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
}

impl ResourceKey {
    /// A key from parts.
    pub fn new(resource: GroupResource, namespace: Option<&str>, name: &str) -> Self {
        ResourceKey {
            resource,
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    /// The key of an object of a `k8s-openapi` type.
    pub fn of<K: k8s_openapi::Resource>(namespace: Option<&str>, name: &str) -> Self {
        Self::new(GroupResource::of::<K>(), namespace, name)
    }

    /// The key of `obj`, a `resource`, from its `metadata.namespace` and `metadata.name`.
    pub fn for_object(resource: GroupResource, obj: &Value) -> Self {
        Self::new(resource, meta::namespace_opt(obj), meta::name(obj))
    }
}

/// List and watch filters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Label selector in string form.
    pub label_selector: Option<String>,
    /// Field selector in string form.
    pub field_selector: Option<String>,
    /// Page size (`limit`).
    pub limit: Option<usize>,
    /// `continue` token of the previous page.
    pub continue_token: Option<String>,
}

impl ListOptions {
    /// Options with a label selector.
    pub fn labels(selector: &str) -> Self {
        ListOptions {
            label_selector: Some(selector.to_string()),
            ..Default::default()
        }
    }

    /// Options with a field selector.
    pub fn fields(selector: &str) -> Self {
        ListOptions {
            field_selector: Some(selector.to_string()),
            ..Default::default()
        }
    }
}

/// A page of a list.
#[derive(Clone, Debug)]
pub struct ObjectList {
    /// Matching objects, ordered by namespace then name.
    pub items: Vec<Arc<Value>>,
    /// The store's resourceVersion when the list was taken.
    pub resource_version: u64,
    /// Set when more items remain (pass it back as `continue`).
    pub continue_token: Option<String>,
}

/// `DeleteOptions.preconditions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preconditions {
    /// The object's uid must equal this.
    pub uid: Option<String>,
    /// The object's resourceVersion must equal this.
    pub resource_version: Option<String>,
}

impl Preconditions {
    /// Check them against `obj` (the current `name` of resource `qualified`); a mismatch is a
    /// 409 Conflict, as upstream's "Precondition failed".
    pub(crate) fn check(&self, qualified: &str, name: &str, obj: &Value) -> Result<()> {
        let conflict = |detail: String| Error::Conflict {
            qualified: qualified.to_string(),
            name: name.to_string(),
            detail,
        };
        if let Some(uid) = self.uid.as_deref().filter(|u| !u.is_empty())
            && uid != meta::uid(obj)
        {
            return Err(conflict(format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                meta::uid(obj)
            )));
        }
        if let Some(rv) = self.resource_version.as_deref().filter(|r| !r.is_empty()) {
            let current = meta::str_at(obj, "/metadata/resourceVersion");
            if rv != current {
                return Err(conflict(format!(
                    "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {current}"
                )));
            }
        }
        Ok(())
    }
}

/// The parts of `DeleteOptions` the emulator honours.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeleteOptions {
    /// Grace period; `None` uses the object's own (pods: `terminationGracePeriodSeconds`).
    pub grace_period_seconds: Option<i64>,
    /// Preconditions.
    pub preconditions: Preconditions,
    /// `dryRun=All`: check, change nothing.
    pub dry_run: bool,
}

impl DeleteOptions {
    /// The options a `DeleteOptions` JSON body asks for (`Null`: none); a dry run when the body
    /// says `dryRun: ["All"]` or `query_dry_run` (the request's `?dryRun=All`).
    pub(crate) fn from_json(body: &Value, query_dry_run: bool) -> Self {
        let body_dry_run = body
            .get("dryRun")
            .and_then(Value::as_array)
            .is_some_and(|d| d.iter().any(|v| v == "All"));
        DeleteOptions {
            grace_period_seconds: body.get("gracePeriodSeconds").and_then(Value::as_i64),
            preconditions: Preconditions {
                uid: body
                    .pointer("/preconditions/uid")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                resource_version: body
                    .pointer("/preconditions/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string),
            },
            dry_run: query_dry_run || body_dry_run,
        }
    }
}

/// The result of a delete.
#[derive(Clone, Debug)]
pub struct Deleted {
    /// The object as deleted, or with its `deletionTimestamp` when deletion is pending.
    pub object: Arc<Value>,
    /// Whether the object is gone (false: graceful deletion or finalizers pending).
    pub finished: bool,
}

/// The type of a store write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Created.
    Added,
    /// Changed.
    Modified,
    /// Removed.
    Deleted,
}

/// One write, as published to watchers and controllers.
#[derive(Clone, Debug)]
pub struct StoreEvent {
    /// What happened.
    pub event_type: EventType,
    /// Resource of the object.
    pub resource: GroupResource,
    /// The write's resourceVersion.
    pub resource_version: u64,
    /// The object after the write (for deletions: its last state, with the deletion's RV).
    pub object: Arc<Value>,
    /// The object before the write (modifications only).
    pub previous: Option<Arc<Value>>,
}
