//! The checked-in CRDs (`deploy/crd/maintenancepolicy.yaml`, `deploy/crd/maintenancerecord.yaml`)
//! are generated from the Rust types. Regenerate them with
//! `ROTA_BLESS=1 cargo test -p rota-core --test it policy_crd`.

// Test helpers panic on bad fixtures, like the tests that call them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion,
};
use kube_core::CustomResourceExt;
use rota_core::policy::{MaintenancePolicy, MaintenancePolicySpec, validate};
use rota_core::records::MaintenanceRecord;

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn generated(crd: &CustomResourceDefinition, source: &str) -> String {
    let yaml = serde_saphyr::to_string(crd).expect("CRD serializes to YAML");
    format!(
        "# Generated from {source}; do not edit.\n\
         # Regenerate: ROTA_BLESS=1 cargo test -p rota-core --test it policy_crd\n{yaml}"
    )
}

#[test]
fn checked_in_crds_match_the_rust_types() {
    for (crd, source, file) in [
        (
            MaintenancePolicy::crd(),
            "core/src/policy/crd.rs",
            "deploy/crd/maintenancepolicy.yaml",
        ),
        (
            MaintenanceRecord::crd(),
            "core/src/records/crd.rs",
            "deploy/crd/maintenancerecord.yaml",
        ),
    ] {
        check_in(&generated(&crd, source), file);
    }
}

fn check_in(want: &str, file: &str) {
    let path = repo_file(file);
    if std::env::var_os("ROTA_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, want).expect("write the CRD");
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if have == want {
        return;
    }
    let first_difference = have
        .lines()
        .zip(want.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| have.lines().count().min(want.lines().count()));
    let line = |text: &str| {
        text.lines()
            .nth(first_difference)
            .unwrap_or("<end of file>")
            .to_owned()
    };
    panic!(
        "{} is out of date (first difference at line {}):\n  checked in: {}\n  generated:  {}\n\
         Regenerate it with ROTA_BLESS=1 cargo test -p rota-core --test it policy_crd",
        path.display(),
        first_difference + 1,
        line(&have),
        line(want),
    );
}

fn printer_columns(version: &CustomResourceDefinitionVersion) -> Vec<&str> {
    version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect()
}

#[test]
fn the_record_crd_is_cluster_scoped_with_useful_printer_columns() {
    let crd = MaintenanceRecord::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("maintenancerecords.rota.dev")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["mrec".to_owned()]));
    let columns = printer_columns(&crd.spec.versions[0]);
    for wanted in [
        "Node",
        "Pool",
        "Operation",
        "Outcome",
        "Origin",
        "Started",
        "Duration",
    ] {
        assert!(
            columns.contains(&wanted),
            "{wanted} missing from {columns:?}"
        );
    }
}

#[test]
fn crd_has_the_names_scope_and_subresources_kubectl_relies_on() {
    let crd = MaintenancePolicy::crd();
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some("maintenancepolicies.rota.dev")
    );
    assert_eq!(crd.spec.scope, "Cluster");
    assert_eq!(crd.spec.names.short_names, Some(vec!["mp".to_owned()]));
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(
        version
            .subresources
            .as_ref()
            .and_then(|s| s.status.as_ref())
            .is_some()
    );
    let columns = printer_columns(version);
    for column in [
        "Paused",
        "MaxUnavailable",
        "Done",
        "InProgress",
        "Waiting",
        "Age",
    ] {
        assert!(columns.contains(&column), "missing printer column {column}");
    }
    let schema = serde_json::to_value(&version.schema).expect("schema serializes");
    let max_unavailable =
        &schema["openAPIV3Schema"]["properties"]["spec"]["properties"]["maxUnavailable"];
    assert_eq!(max_unavailable["x-kubernetes-int-or-string"], true);
}

#[test]
fn example_policy_is_valid() {
    let text = std::fs::read_to_string(repo_file("deploy/crd/examples/maintenancepolicy.yaml"))
        .expect("example exists");
    let policy: MaintenancePolicy = serde_saphyr::from_str(&text).expect("example parses");
    let validated = validate(&policy.spec).expect("example validates");
    assert_eq!(validated.windows.len(), 1);
    assert_eq!(validated.blackouts.len(), 1);
    assert_eq!(validated.blockers.pod_selectors.len(), 1);

    let minimal: MaintenancePolicySpec = serde_json::from_str("{}").expect("empty spec parses");
    assert_eq!(minimal, MaintenancePolicySpec::default());
    validate(&minimal).expect("defaults are valid");
}

/// Every field of the CRD's spec, as a dotted path (`windows[].start`); label selectors are
/// fields of their own (their inside is Kubernetes'), and so are leaves. With each path, the
/// enum values it takes (empty for other types).
fn crd_fields() -> Vec<(String, Vec<String>)> {
    fn walk(schema: &serde_json::Value, path: &str, out: &mut Vec<(String, Vec<String>)>) {
        let properties = schema.get("properties").and_then(|p| p.as_object());
        let items = schema.get("items");
        let is_selector = properties
            .is_some_and(|p| p.contains_key("matchLabels") && p.contains_key("matchExpressions"));
        match (properties, items) {
            (Some(properties), _) if !is_selector => {
                for (name, field) in properties {
                    let sub = if path.is_empty() {
                        name.clone()
                    } else {
                        format!("{path}.{name}")
                    };
                    walk(field, &sub, out);
                }
            }
            (None, Some(items)) if items.get("properties").is_some() => {
                let is_selector = items["properties"].get("matchLabels").is_some();
                if is_selector {
                    out.push((path.to_owned(), Vec::new()));
                } else {
                    walk(items, &format!("{path}[]"), out);
                }
            }
            _ => {
                let values = schema
                    .get("enum")
                    .and_then(|e| e.as_array())
                    .map(|e| {
                        e.iter()
                            .filter_map(|v| v.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default();
                out.push((path.to_owned(), values));
            }
        }
    }
    let crd = serde_json::to_value(MaintenancePolicy::crd()).expect("CRD to JSON");
    let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
    let mut out = Vec::new();
    walk(spec, "", &mut out);
    out.sort();
    out
}

/// The rows of the README's MaintenancePolicy reference: field path and the rest of the row.
fn readme_fields() -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo_file("README.md")).expect("README.md");
    let section = readme
        .split("### MaintenancePolicy")
        .nth(1)
        .expect("README has a MaintenancePolicy reference");
    let mut rows: Vec<(String, String)> = section
        .lines()
        .skip_while(|l| !l.starts_with("| field |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').splitn(2, '|').collect();
            let field = cells[0].trim().trim_matches('`').to_owned();
            (field, cells.get(1).copied().unwrap_or_default().to_owned())
        })
        .collect();
    rows.sort();
    rows
}

#[test]
fn readme_configuration_reference_matches_the_crd() {
    let crd = crd_fields();
    let readme = readme_fields();
    let crd_paths: Vec<&str> = crd.iter().map(|(p, _)| p.as_str()).collect();
    let readme_paths: Vec<&str> = readme.iter().map(|(p, _)| p.as_str()).collect();
    let missing: Vec<&&str> = crd_paths
        .iter()
        .filter(|p| !readme_paths.contains(p))
        .collect();
    let unknown: Vec<&&str> = readme_paths
        .iter()
        .filter(|p| !crd_paths.contains(p))
        .collect();
    assert!(
        missing.is_empty() && unknown.is_empty(),
        "README's MaintenancePolicy table and the CRD disagree.\n\
         In the CRD, not in the README: {missing:?}\n\
         In the README, not in the CRD: {unknown:?}"
    );
    for (path, values) in &crd {
        let row = &readme.iter().find(|(p, _)| p == path).expect("row").1;
        for value in values {
            assert!(
                row.contains(&format!("`{value}`")),
                "README's row for `{path}` does not name the value `{value}`: {row}"
            );
        }
    }
}
