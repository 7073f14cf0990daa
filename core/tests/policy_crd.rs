//! The checked-in CRD (`deploy/crd/maintenancepolicy.yaml`) is generated from the Rust types.
//! Regenerate it with `ROTA_BLESS=1 cargo test -p rota-coordinator --test policy_crd`.

// Test helpers panic on bad fixtures, like the tests that call them.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::path::PathBuf;

use kube_core::CustomResourceExt;
use rota_core::policy::{MaintenancePolicy, MaintenancePolicySpec, validate};

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

fn generated() -> String {
    let yaml = serde_saphyr::to_string(&MaintenancePolicy::crd()).expect("CRD serializes to YAML");
    format!(
        "# Generated from core/src/policy/crd.rs; do not edit.\n\
         # Regenerate: ROTA_BLESS=1 cargo test -p rota-coordinator --test policy_crd\n{yaml}"
    )
}

#[test]
fn checked_in_crd_matches_the_rust_types() {
    let want = generated();
    let path = repo_file("deploy/crd/maintenancepolicy.yaml");
    if std::env::var_os("ROTA_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&path, &want).expect("write the CRD");
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
         Regenerate it with ROTA_BLESS=1 cargo test -p rota-coordinator --test policy_crd",
        path.display(),
        first_difference + 1,
        line(&have),
        line(&want),
    );
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
    let columns: Vec<&str> = version
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
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
