//! The resource types the emulator serves: built-in kinds plus those registered by CRDs.
//!
//! Storage is keyed by [`GroupResource`] (group + plural) and is version-less: every served
//! version of a resource reads and writes the same objects, as a CRD without conversion does.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

use super::error::{Cause, Error, Result};
use super::meta;

/// A resource without its version: `("apps", "deployments")`, `("", "pods")`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    /// API group; empty for the core group.
    pub group: String,
    /// Plural resource name.
    pub resource: String,
}

impl GroupResource {
    /// A resource of the given group.
    pub fn new(group: impl Into<String>, resource: impl Into<String>) -> Self {
        GroupResource {
            group: group.into(),
            resource: resource.into(),
        }
    }

    /// A resource of the core (`""`) group.
    pub fn core(resource: impl Into<String>) -> Self {
        Self::new("", resource)
    }

    /// The resource of a `k8s-openapi` type.
    pub fn of<K: k8s_openapi::Resource>() -> Self {
        Self::new(K::GROUP, K::URL_PATH_SEGMENT)
    }

    /// `pods` or `deployments.apps`, as error messages spell it.
    pub fn qualified(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for GroupResource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// A column of `kubectl get` output declared by a CRD (`additionalPrinterColumns`).
#[derive(Clone, Debug, PartialEq)]
pub struct PrinterColumn {
    /// Header.
    pub name: String,
    /// OpenAPI type (`string`, `integer`, `date`, ...).
    pub column_type: String,
    /// Simple JSONPath such as `.status.phase`.
    pub json_path: String,
    /// 0 = always shown; higher only with `-o wide`.
    pub priority: i64,
}

/// Everything the server needs to know about one resource.
#[derive(Clone, Debug)]
pub struct ResourceInfo {
    /// API group.
    pub group: String,
    /// Served versions, preferred first.
    pub versions: Vec<String>,
    /// Plural name (URL segment).
    pub plural: String,
    /// Singular name.
    pub singular: String,
    /// Kind.
    pub kind: String,
    /// Namespaced or cluster-scoped.
    pub namespaced: bool,
    /// `kubectl` short names.
    pub short_names: Vec<String>,
    /// Whether `/status` exists (then the main resource ignores status changes).
    pub status_subresource: bool,
    /// Whether `metadata.generation` is bumped on spec changes.
    pub tracks_generation: bool,
    /// Only `create` is served (TokenReview).
    pub create_only: bool,
    /// Defined by a CRD (strategic merge patch is refused for these, as upstream does).
    pub custom: bool,
    /// Extra printer columns for `kubectl get` (CRDs).
    pub printer_columns: Vec<PrinterColumn>,
    /// Discovery categories (`all`).
    pub categories: Vec<String>,
}

impl ResourceInfo {
    /// The group/resource key.
    pub fn group_resource(&self) -> GroupResource {
        GroupResource::new(self.group.clone(), self.plural.clone())
    }

    /// `apiVersion` of the preferred version.
    pub fn api_version(&self) -> String {
        let version = self.versions.first().map(String::as_str).unwrap_or("v1");
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    /// The verbs discovery advertises.
    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        }
    }

    /// Subresources this resource serves, e.g. `status`, `eviction`.
    pub fn subresources(&self) -> Vec<&'static str> {
        let mut subs = Vec::new();
        if self.status_subresource {
            subs.push("status");
        }
        if self.group.is_empty() && self.plural == "pods" {
            subs.push("eviction");
        }
        subs
    }
}

/// (group, version, plural, kind, namespaced, short names, status subresource, generation,
/// in the `all` category)
type Builtin = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
    &'static [&'static str],
    bool,
    bool,
    bool,
);

#[rustfmt::skip]
const BUILTINS: &[Builtin] = &[
    ("", "v1", "nodes", "Node", false, &["no"], true, false, false),
    ("", "v1", "pods", "Pod", true, &["po"], true, false, true),
    ("", "v1", "namespaces", "Namespace", false, &["ns"], true, false, false),
    ("", "v1", "events", "Event", true, &["ev"], false, false, false),
    ("", "v1", "configmaps", "ConfigMap", true, &["cm"], false, false, false),
    ("", "v1", "secrets", "Secret", true, &[], false, false, false),
    ("", "v1", "serviceaccounts", "ServiceAccount", true, &["sa"], false, false, false),
    ("", "v1", "services", "Service", true, &["svc"], true, false, true),
    ("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", true, &["pdb"], true, true, false),
    ("", "v1", "replicationcontrollers", "ReplicationController", true, &["rc"], true, true, true),
    ("apps", "v1", "deployments", "Deployment", true, &["deploy"], true, true, true),
    ("apps", "v1", "replicasets", "ReplicaSet", true, &["rs"], true, true, true),
    ("apps", "v1", "statefulsets", "StatefulSet", true, &["sts"], true, true, true),
    ("apps", "v1", "daemonsets", "DaemonSet", true, &["ds"], true, true, true),
    ("coordination.k8s.io", "v1", "leases", "Lease", true, &[], false, false, false),
    ("events.k8s.io", "v1", "events", "Event", true, &["ev"], false, false, false),
    ("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", false, &[], false, false, false),
    ("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition", false, &["crd", "crds"], true, true, false),
    ("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", false, &[], false, false, false),
    ("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", false, &[], false, false, false),
    ("rbac.authorization.k8s.io", "v1", "roles", "Role", true, &[], false, false, false),
    ("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", true, &[], false, false, false),
];

/// The set of served resources.
#[derive(Clone, Debug)]
pub struct Registry {
    by_resource: BTreeMap<GroupResource, ResourceInfo>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// The built-in resources.
    pub fn new() -> Self {
        let mut by_resource = BTreeMap::new();
        for &(group, version, plural, kind, namespaced, short, status, generation, all) in BUILTINS
        {
            let info = ResourceInfo {
                group: group.to_string(),
                versions: vec![version.to_string()],
                plural: plural.to_string(),
                singular: kind.to_lowercase(),
                kind: kind.to_string(),
                namespaced,
                short_names: short.iter().map(|s| s.to_string()).collect(),
                status_subresource: status,
                tracks_generation: generation,
                create_only: plural == "tokenreviews",
                custom: false,
                printer_columns: Vec::new(),
                categories: if all {
                    vec!["all".to_string()]
                } else {
                    Vec::new()
                },
            };
            by_resource.insert(info.group_resource(), info);
        }
        Registry { by_resource }
    }

    /// Info for a resource, or 404.
    pub fn get(&self, gr: &GroupResource) -> Result<&ResourceInfo> {
        self.by_resource.get(gr).ok_or(Error::UnknownResource)
    }

    /// Info for a resource served at `group/version`, or 404.
    pub fn get_versioned(&self, group: &str, version: &str, plural: &str) -> Result<&ResourceInfo> {
        let info = self.get(&GroupResource::new(group, plural))?;
        if info.versions.iter().any(|v| v == version) {
            Ok(info)
        } else {
            Err(Error::UnknownResource)
        }
    }

    /// All resources, ordered by group then plural.
    pub fn all(&self) -> impl Iterator<Item = &ResourceInfo> {
        self.by_resource.values()
    }

    /// Groups with their versions (preferred first); the core group is `""`.
    pub fn groups(&self) -> BTreeMap<String, Vec<String>> {
        let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for info in self.by_resource.values() {
            let versions = groups.entry(info.group.clone()).or_default();
            for v in &info.versions {
                if !versions.contains(v) {
                    versions.push(v.clone());
                }
            }
        }
        groups
    }

    /// Register (or replace) a resource defined by a CRD object.
    pub fn register_crd(&mut self, crd: &Value) -> Result<GroupResource> {
        let info = crd_to_info(crd)?;
        let gr = info.group_resource();
        self.by_resource.insert(gr.clone(), info);
        Ok(gr)
    }

    /// Forget a CRD-defined resource.
    pub fn unregister(&mut self, gr: &GroupResource) {
        if self.by_resource.get(gr).is_some_and(|i| i.custom) {
            self.by_resource.remove(gr);
        }
    }
}

fn crd_invalid(name: &str, field: &str, message: &str) -> Error {
    Error::invalid(
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        name,
        vec![Cause {
            reason: "FieldValueRequired".into(),
            message: format!("{field}: Required value: {message}"),
            field: Some(field.into()),
        }],
    )
}

/// Validate a CRD and derive the resource it defines.
pub fn crd_to_info(crd: &Value) -> Result<ResourceInfo> {
    let name = crd
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let spec = crd
        .get("spec")
        .ok_or_else(|| crd_invalid(name, "spec", "spec is required"))?;
    let group = spec
        .get("group")
        .and_then(Value::as_str)
        .filter(|g| !g.is_empty())
        .ok_or_else(|| crd_invalid(name, "spec.group", "must be specified"))?;
    let names = spec.get("names").cloned().unwrap_or(Value::Null);
    let plural = names
        .get("plural")
        .and_then(Value::as_str)
        .filter(|p| !p.is_empty())
        .ok_or_else(|| crd_invalid(name, "spec.names.plural", "must be specified"))?;
    let kind = names
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| crd_invalid(name, "spec.names.kind", "must be specified"))?;
    if name != format!("{plural}.{group}") {
        return Err(Error::invalid(
            "CustomResourceDefinition",
            "apiextensions.k8s.io",
            name,
            vec![Cause {
                reason: "FieldValueInvalid".into(),
                message: format!(
                    "metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"
                ),
                field: Some("metadata.name".into()),
            }],
        ));
    }
    let singular = names
        .get("singular")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| kind.to_lowercase());
    let strings =
        |v: Option<&Value>| -> Vec<String> { meta::strings(v).map(str::to_string).collect() };
    let short_names = strings(names.get("shortNames"));
    let categories = strings(names.get("categories"));
    let namespaced = spec.get("scope").and_then(Value::as_str) != Some("Cluster");
    let versions_json = spec
        .get("versions")
        .and_then(Value::as_array)
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            crd_invalid(
                name,
                "spec.versions",
                "must have exactly one version marked as storage version",
            )
        })?;
    let mut versions = Vec::new();
    let mut status_subresource = false;
    let mut printer_columns = Vec::new();
    for v in versions_json {
        let vname = v.get("name").and_then(Value::as_str).unwrap_or_default();
        if vname.is_empty() || v.get("served").and_then(Value::as_bool) == Some(false) {
            continue;
        }
        let storage = v.get("storage").and_then(Value::as_bool) == Some(true);
        if v.pointer("/subresources/status").is_some() {
            status_subresource = true;
        }
        if (storage || printer_columns.is_empty())
            && let Some(cols) = v.get("additionalPrinterColumns").and_then(Value::as_array)
        {
            printer_columns = cols
                .iter()
                .filter_map(|c| {
                    Some(PrinterColumn {
                        name: c.get("name")?.as_str()?.to_string(),
                        column_type: c
                            .get("type")
                            .and_then(Value::as_str)
                            .unwrap_or("string")
                            .to_string(),
                        json_path: c.get("jsonPath")?.as_str()?.to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    })
                })
                .collect();
        }
        if storage {
            versions.insert(0, vname.to_string());
        } else {
            versions.push(vname.to_string());
        }
    }
    if versions.is_empty() {
        return Err(crd_invalid(
            name,
            "spec.versions",
            "must have at least one served version",
        ));
    }
    Ok(ResourceInfo {
        group: group.to_string(),
        versions,
        plural: plural.to_string(),
        singular,
        kind: kind.to_string(),
        namespaced,
        short_names,
        status_subresource,
        tracks_generation: true,
        create_only: false,
        custom: true,
        printer_columns,
        categories,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn crd_registers_its_resource() {
        let mut reg = Registry::new();
        let crd = json!({
            "metadata": {"name": "maintenancepolicies.rota.dev"},
            "spec": {
                "group": "rota.dev",
                "scope": "Cluster",
                "names": {"plural": "maintenancepolicies", "kind": "MaintenancePolicy", "shortNames": ["mp"]},
                "versions": [{"name": "v1alpha1", "served": true, "storage": true, "subresources": {"status": {}}}]
            }
        });
        let gr = reg.register_crd(&crd).unwrap();
        let info = reg
            .get_versioned("rota.dev", "v1alpha1", "maintenancepolicies")
            .unwrap();
        assert_eq!(gr, GroupResource::new("rota.dev", "maintenancepolicies"));
        assert!(!info.namespaced);
        assert!(info.status_subresource);
        assert_eq!(info.short_names, vec!["mp"]);
        assert!(
            reg.get_versioned("rota.dev", "v1", "maintenancepolicies")
                .is_err()
        );
    }

    #[test]
    fn crd_name_must_match() {
        let crd = json!({
            "metadata": {"name": "wrong"},
            "spec": {"group": "g.io", "names": {"plural": "xs", "kind": "X"}, "versions": [{"name": "v1", "served": true, "storage": true}]}
        });
        assert_eq!(crd_to_info(&crd).unwrap_err().code(), 422);
    }
}
