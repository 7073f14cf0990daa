//! rota-core is pure by its manifest: nothing it depends on, however indirectly, may bring an
//! async runtime, a Kubernetes client, a gRPC or HTTP stack. Read from `cargo metadata`, so a new
//! dependency that drags one in fails here, not in review.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;

use serde_json::Value;

/// Crates that perform I/O or run tasks; none may be in rota-core's dependency tree.
const FORBIDDEN: [&str; 12] = [
    "tokio",
    "mio",
    "kube",
    "kube-client",
    "kube-runtime",
    "tonic",
    "hyper",
    "hyper-util",
    "axum",
    "reqwest",
    "tower",
    "rustls",
];

#[test]
fn core_depends_on_no_runtime_client_or_network_stack() -> Result<(), Box<dyn std::error::Error>> {
    // This platform only, so that metadata needs no download of other platforms' crates.
    let platform = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let output = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline"])
        .args(["--filter-platform", &platform])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()?;
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let name_of: HashMap<&str, &str> = metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["id"].as_str()?, p["name"].as_str()?)))
        .collect();
    let nodes: HashMap<&str, &Value> = metadata["resolve"]["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["id"].as_str()?, n)))
        .collect();
    let root = name_of
        .iter()
        .find(|(_, name)| **name == "rota-core")
        .map(|(id, _)| *id)
        .ok_or("rota-core is not in the workspace metadata")?;

    // Everything rota-core needs to build and run: normal dependencies, followed transitively
    // (dev-dependencies are the tests', build-dependencies run at compile time only).
    let mut seen = BTreeSet::new();
    let mut stack = vec![root];
    while let Some(id) = stack.pop() {
        if !seen.insert(id) {
            continue;
        }
        let deps = nodes.get(id).and_then(|n| n["deps"].as_array());
        for dep in deps.into_iter().flatten() {
            let normal = dep["dep_kinds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k["kind"].is_null());
            if let (true, Some(dep_id)) = (normal, dep["pkg"].as_str()) {
                stack.push(dep_id);
            }
        }
    }
    let names: BTreeSet<&str> = seen
        .iter()
        .filter_map(|id| name_of.get(id).copied())
        .collect();
    assert!(
        names.contains("jiff") && names.contains("k8s-openapi"),
        "the walk found rota-core's own dependencies: {names:?}"
    );
    let leaks: Vec<&str> = FORBIDDEN
        .iter()
        .copied()
        .filter(|f| names.contains(f))
        .collect();
    assert!(
        leaks.is_empty(),
        "rota-core must stay pure, but its dependency tree has {leaks:?}"
    );
    Ok(())
}
