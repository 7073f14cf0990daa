//! The Helm chart against the real kube-apiserver: what `helm template` renders, with the
//! default values and with every value the chart offers set, passes
//! `kubectl apply --dry-run=server` — the API server's own validation and admission, which the
//! strict parsing of `coordinator/tests/it/deploy_manifests.rs` does not do (formats, cross-field
//! rules). A render the values schema lets through but the server must refuse (a CPU request
//! above its limit) is refused: the check can fail. Fails, saying how to build them, when the
//! control plane or helm is not built (`tests/control-plane/build.sh`), unless
//! `ROTA_SKIP_CONTROL_PLANE=1` outside CI.

// Helpers outside #[test] functions fail the test the same way the tests do.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use rota_tests::control_plane::{ControlPlane, binaries_for_test};
use rota_tests::helm::{Helm, NAMESPACE};
use rota_tests::kubectl::Kubectl;
use serde_json::{Value, json};

/// `kubectl apply --dry-run=server` of the chart rendered with `values`: kubectl's output, or
/// its error.
async fn dry_run(helm: &Helm, kubectl: &Kubectl, values: &Value) -> Result<String, String> {
    let manifests = helm
        .template(&values.to_string())
        .unwrap_or_else(|e| panic!("helm template with {values}: {e}"));
    let file = kubectl.dir().join("chart.yaml");
    std::fs::write(&file, manifests).unwrap();
    let output = kubectl
        .command(&["apply", "--dry-run=server", "-f", file.to_str().unwrap()])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(stdout)
    } else {
        Err(format!(
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_renders_pass_the_api_servers_validation() {
    let Some(binaries) = binaries_for_test() else {
        return;
    };
    let Some(helm) = Helm::for_test() else {
        return;
    };
    let cp = ControlPlane::start(binaries).await.unwrap();
    let kubectl = Kubectl::new(&std::fs::read_to_string(cp.admin_kubeconfig()).unwrap());
    // The chart installs into a namespace the operator creates. This server has no Prometheus
    // operator (nor cert-manager): their kinds stay out.
    kubectl.run(&["create", "namespace", NAMESPACE]).await;
    let pod = |priority: &str| {
        json!({
            "image": {
                "registry": "mirror.example:5000",
                "digest": format!("sha256:{}", "ab".repeat(32)),
            },
            "resources": {
                "requests": {"cpu": "50m", "memory": "64Mi"},
                "limits": {"cpu": "1", "memory": "1Gi"},
            },
            "priorityClassName": priority,
            "nodeSelector": {"kubernetes.io/os": "linux"},
            "tolerations": [
                {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
            ],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}
                ]}]
            }}},
            "podAnnotations": {"example.com/owner": "platform"},
            "podLabels": {"team": "platform"},
            "extraArgs": ["--log=debug"],
            "extraEnv": [{"name": "TZ", "value": "UTC"},
                {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
        })
    };
    let mut coordinator = pod("system-cluster-critical");
    coordinator["replicas"] = json!(3);
    let everything = json!({
        "imagePullSecrets": [{"name": "regcred"}],
        "coordinator": coordinator,
        "agent": pod("system-node-critical"),
        "monitoring": {"enabled": false},
    });
    for values in [json!({"monitoring": {"enabled": false}}), everything] {
        let applied = dry_run(&helm, &kubectl, &values)
            .await
            .unwrap_or_else(|e| panic!("the server refuses the chart with {values}: {e}"));
        for object in [
            "customresourcedefinition.apiextensions.k8s.io/maintenancepolicies.rota.dev",
            "deployment.apps/rota-coordinator",
            "daemonset.apps/rota-agent",
            "role.rbac.authorization.k8s.io/rota-coordinator",
        ] {
            assert!(
                applied.contains(&format!("{object} created (server dry run)")),
                "{values}: {object} not in\n{applied}"
            );
        }
    }

    let refused = json!({
        "coordinator": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}},
        "monitoring": {"enabled": false},
    });
    let error = dry_run(&helm, &kubectl, &refused)
        .await
        .expect_err("a CPU request above its limit");
    assert!(
        error.contains("must be less than or equal to cpu limit"),
        "{error}"
    );

    // With the Prometheus operator's CRDs (from its Go module, at a pinned version), the whole
    // of deploy/ — base and monitoring, as `kubectl apply -k deploy/` applies it — and the chart
    // with its default values (monitoring on) pass the server's validation too.
    let crds = rota_tests::built::monitoring_crds().unwrap_or_else(|e| panic!("{e}"));
    kubectl
        .run(&["apply", "--server-side", "-f", crds.to_str().unwrap()])
        .await;
    kubectl
        .wait_established(&[
            "servicemonitors.monitoring.coreos.com",
            "prometheusrules.monitoring.coreos.com",
        ])
        .await;
    let deploy = rota_tests::shipped::deploy_dir();
    // The CRD of rota's own kind first: the base's objects do not need it, but a dry run of
    // anything that names a MaintenancePolicy would.
    kubectl
        .run(&["apply", "-k", &format!("{deploy}/crd")])
        .await;
    let applied = kubectl
        .run(&["apply", "--dry-run=server", "-k", deploy])
        .await;
    for object in [
        "deployment.apps/rota-coordinator",
        "daemonset.apps/rota-agent",
        "servicemonitor.monitoring.coreos.com/rota-coordinator",
        "prometheusrule.monitoring.coreos.com/rota",
    ] {
        assert!(
            applied.contains(object),
            "kubectl apply --dry-run=server -k deploy/: {object} not in\n{applied}"
        );
    }
    let defaults = dry_run(&helm, &kubectl, &json!({}))
        .await
        .unwrap_or_else(|e| panic!("the server refuses the chart's defaults: {e}"));
    assert!(
        defaults.contains("prometheusrule.monitoring.coreos.com/"),
        "{defaults}"
    );
}
