//! Discovery documents: `/api`, `/apis`, `/apis/GROUP`, `/api/v1`, `/apis/GROUP/VERSION`,
//! `/version`. They are the legacy (unaggregated) forms; clients asking for aggregated
//! discovery also accept plain JSON and fall back to these.

use serde_json::{Value, json};

use crate::apiserver::error::{Error, Result};
use crate::apiserver::resources::{GroupResource, Registry};
use crate::apiserver::{ListOptions, Store};

/// The Kubernetes version the emulator claims to be when no kube-apiserver runs in it.
pub const KUBERNETES_VERSION: (&str, &str, &str) = ("1", "33", "v1.33.1");

/// `/version`: the version of the oldest kube-apiserver whose mirror pod runs in
/// `kube-system` (a client behind a load balancer may reach any of them, and the oldest is
/// the one the version skew policy counts), else [`KUBERNETES_VERSION`].
pub fn version(store: &Store) -> Value {
    let oldest = store
        .list(
            &GroupResource::core("pods"),
            Some("kube-system"),
            &ListOptions {
                label_selector: Some("component=kube-apiserver".into()),
                ..ListOptions::default()
            },
        )
        .ok()
        .into_iter()
        .flat_map(|list| list.items)
        .filter_map(|pod| {
            rota_core::upgrade::image_version(pod.pointer("/spec/containers/0/image")?.as_str()?)
        })
        .min();
    let (major, minor, git) = match oldest {
        Some(v) => (v.major.to_string(), v.minor.to_string(), format!("v{v}")),
        None => {
            let (major, minor, git) = KUBERNETES_VERSION;
            (major.to_owned(), minor.to_owned(), git.to_owned())
        }
    };
    json!({
        "major": major,
        "minor": minor,
        "gitVersion": git,
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-05-15T00:00:00Z",
        "goVersion": "go1.24.2",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

/// `/api`.
pub fn core_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

fn group_json(name: &str, versions: &[String]) -> Value {
    let versions: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": versions,
        "preferredVersion": versions.first().cloned().unwrap_or(Value::Null),
    })
}

/// `/apis`.
pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .iter()
        .filter(|(g, _)| !g.is_empty())
        .map(|(g, vs)| group_json(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/GROUP`.
pub fn group(registry: &Registry, name: &str) -> Result<Value> {
    let groups = registry.groups();
    let versions = groups
        .get(name)
        .filter(|_| !name.is_empty())
        .ok_or(Error::UnknownResource)?;
    let mut g = group_json(name, versions);
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Ok(g)
}

/// `/api/v1` or `/apis/GROUP/VERSION`.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Result<Value> {
    let mut resources = Vec::new();
    for info in registry
        .all()
        .filter(|i| i.group == group && i.versions.iter().any(|v| v == version))
    {
        let mut r = json!({
            "name": info.plural,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": info.verbs(),
        });
        if !info.short_names.is_empty() {
            r["shortNames"] = json!(info.short_names);
        }
        if !info.categories.is_empty() {
            r["categories"] = json!(info.categories);
        }
        resources.push(r);
        for sub in info.subresources() {
            let r = match sub {
                "eviction" => json!({
                    "name": format!("{}/eviction", info.plural),
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "group": "policy",
                    "version": "v1",
                    "kind": "Eviction",
                    "verbs": ["create"],
                }),
                _ => json!({
                    "name": format!("{}/{sub}", info.plural),
                    "singularName": "",
                    "namespaced": info.namespaced,
                    "kind": info.kind,
                    "verbs": ["get", "patch", "update"],
                }),
            };
            resources.push(r);
        }
    }
    if resources.is_empty() {
        return Err(Error::UnknownResource);
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Ok(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_v1_lists_pod_eviction() {
        let reg = Registry::new();
        let list = resource_list(&reg, "", "v1").unwrap();
        let names: Vec<&str> = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert!(names.contains(&"pods"));
        assert!(names.contains(&"pods/eviction"));
        assert!(names.contains(&"nodes/status"));
        let groups = group_list(&reg);
        assert!(
            groups["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "policy")
        );
        assert!(resource_list(&reg, "nope", "v1").is_err());
    }
}
