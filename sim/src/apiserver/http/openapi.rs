//! A minimal OpenAPI v3 surface. kubectl validates manifests before `apply`/`create` unless
//! the server advertises server-side field validation; it learns that from the
//! `fieldValidation` parameter on each kind's PATCH operation in `/openapi/v3/<group-version>`.
//! The documents carry only those operations, no schemas (kubectl then computes strategic
//! merge patches from its built-in types, and uses JSON merge patches for custom resources).

use serde_json::{Map, Value, json};

use crate::apiserver::error::{Error, Result};
use crate::apiserver::resources::Registry;

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// `/openapi/v3`: the index of group-version documents.
pub fn root(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, versions) in registry.groups() {
        for version in versions {
            let p = gv_path(&group, &version);
            paths.insert(
                p.clone(),
                json!({"serverRelativeURL": format!("/openapi/v3/{p}?hash=rota-sim")}),
            );
        }
    }
    json!({"paths": paths})
}

/// `/openapi/v3/<api/v1 | apis/GROUP/VERSION>`.
pub fn group_version(registry: &Registry, gv: &str) -> Result<Value> {
    let mut paths = Map::new();
    for info in registry.all() {
        for version in &info.versions {
            if gv_path(&info.group, version) != gv || info.create_only {
                continue;
            }
            let ns = if info.namespaced {
                "namespaces/{namespace}/"
            } else {
                ""
            };
            let path = format!("/{gv}/{ns}{}/{{name}}", info.plural);
            paths.insert(
                path,
                json!({
                    "patch": {
                        "operationId": format!("patch{}", info.kind),
                        "x-kubernetes-action": "patch",
                        "x-kubernetes-group-version-kind": {"group": info.group, "version": version, "kind": info.kind},
                        "parameters": [
                            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
                            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
                        ],
                        "responses": {"200": {"description": "OK"}},
                    }
                }),
            );
        }
    }
    if paths.is_empty() {
        return Err(Error::UnknownResource);
    }
    Ok(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": super::KUBERNETES_VERSION.2},
        "paths": paths,
        "components": {"schemas": {}},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_advertise_field_validation() {
        let reg = Registry::new();
        let root = root(&reg);
        assert!(
            root["paths"]["api/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/api/v1")
        );
        let doc = group_version(&reg, "apis/policy/v1").unwrap();
        let op = &doc["paths"]["/apis/policy/v1/namespaces/{namespace}/poddisruptionbudgets/{name}"]
            ["patch"];
        assert_eq!(
            op["x-kubernetes-group-version-kind"]["kind"],
            "PodDisruptionBudget"
        );
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
        assert!(group_version(&reg, "apis/nope/v1").is_err());
    }
}
