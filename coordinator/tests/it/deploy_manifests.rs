//! `deploy/` (kustomize and the Helm chart) and the Dockerfile, checked against the code.
//!
//! - Every manifest parses strictly into its Kubernetes type: deserialized into the k8s-openapi
//!   type (or, for the Prometheus-operator kinds, a struct that denies unknown fields),
//!   serialized again, and the original must be contained in the result, so a misspelled
//!   field, which the type would silently drop, fails.
//! - The security settings operators rely on (non-root, read-only root, no privilege
//!   escalation, no capabilities, RuntimeDefault seccomp for the coordinator; no API token, no
//!   host mounts for the agent).
//! - Flags: the containers' environment is parsed by the binaries' own command lines, and what
//!   it configures (ports, namespace, audience, service account, CA) matches the objects.
//! - Alerts and the dashboard only use metrics the coordinator exports.
//! - The Helm chart, through the real `helm` (`helm lint --strict`, `helm template`; built by
//!   `tests/control-plane/build.sh`): rendered with its default values it equals the kustomize
//!   output; every value users of other charts expect changes what it should, and only that;
//!   `values.schema.json` refuses bad values, naming the field.
//! - The Dockerfile builds binaries that exist, into the images the manifests name.
//!
//! `ROTA_BLESS=1 cargo test -p rota-coordinator --test it deploy_manifests` refreshes the chart's
//! copies of the generated CRD and the dashboard.

// Test helpers panic on bad fixtures, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::helm::Helm;
use clap::{CommandFactory, Parser};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, PodSpec, Service, ServiceAccount,
};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use rota_coordinator::config::Config;
use rota_coordinator::metrics::Metrics;
use rota_core::policy::{MaintenancePolicy, validate};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const NAMESPACE: &str = crate::helm::NAMESPACE;

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn yaml_documents(text: &str, what: &str) -> Vec<Value> {
    let docs: Vec<Value> =
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

/// `kubectl kustomize deploy/<dir>` (offline, with the pinned kubectl `build.sh` built).
fn kustomize(dir: &str) -> Vec<Value> {
    // The pinned kubectl that tests/control-plane/build.sh built, not one the machine has.
    let kubectl = crate::built::kubectl().unwrap_or_else(|e| panic!("{e}"));
    let output = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(repo(dir))
        .output()
        .expect("kubectl runs");
    assert!(
        output.status.success(),
        "kubectl kustomize {dir}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    yaml_documents(&String::from_utf8(output.stdout).unwrap(), dir)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} missing"))
}

fn typed<K: DeserializeOwned>(doc: &Value) -> K {
    serde_json::from_value(doc.clone()).unwrap_or_else(|e| panic!("{doc}: {e}"))
}

// ---------------------------------------------------------------------------------------
// Strict parsing

/// `original` must be contained in `round_trip`: every field of it present with the same
/// value (the round trip may add defaults, never lose a field).
fn assert_contained(path: &str, original: &Value, round_trip: &Value) {
    match (original, round_trip) {
        (Value::Object(a), Value::Object(b)) => {
            for (key, value) in a {
                let Some(other) = b.get(key) else {
                    panic!("{path}.{key}: unknown field (dropped by the type)");
                };
                assert_contained(&format!("{path}.{key}"), value, other);
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            assert_eq!(a.len(), b.len(), "{path}: list length");
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert_contained(&format!("{path}[{i}]"), x, y);
            }
        }
        (Value::Number(a), Value::Number(b)) => {
            assert_eq!(a.as_f64(), b.as_f64(), "{path}");
        }
        (a, b) => assert_eq!(a, b, "{path}"),
    }
}

fn round_trip<K: DeserializeOwned + Serialize>(doc: &Value) -> Value {
    let object: K = typed(doc);
    serde_json::to_value(object).unwrap()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitor {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: ServiceMonitorSpec,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ServiceMonitorSpec {
    selector: LabelSelector,
    endpoints: Vec<MonitorEndpoint>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct MonitorEndpoint {
    port: String,
    path: String,
    interval: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PrometheusRule {
    api_version: String,
    kind: String,
    metadata: ObjectMeta,
    spec: RuleSpec,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    groups: Vec<RuleGroup>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<AlertRule>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertRule {
    alert: String,
    expr: String,
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// Parses `doc` strictly into its type; returns its kind.
fn strict(doc: &Value) -> String {
    let api_version = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
    let again = match (api_version, kind.as_str()) {
        ("v1", "Namespace") => round_trip::<Namespace>(doc),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(doc),
        ("v1", "Service") => round_trip::<Service>(doc),
        ("v1", "ConfigMap") => round_trip::<ConfigMap>(doc),
        ("apps/v1", "Deployment") => round_trip::<Deployment>(doc),
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(doc),
        ("policy/v1", "PodDisruptionBudget") => round_trip::<PodDisruptionBudget>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(doc),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(doc)
        }
        ("rbac.authorization.k8s.io/v1", "Role") => round_trip::<Role>(doc),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => round_trip::<RoleBinding>(doc),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
            round_trip::<CustomResourceDefinition>(doc)
        }
        ("monitoring.coreos.com/v1", "ServiceMonitor") => round_trip::<ServiceMonitor>(doc),
        ("monitoring.coreos.com/v1", "PrometheusRule") => round_trip::<PrometheusRule>(doc),
        ("rota.dev/v1alpha1", "MaintenancePolicy") => {
            let policy: MaintenancePolicy = typed(doc);
            validate(&policy.spec).unwrap_or_else(|e| panic!("invalid example policy: {e:?}"));
            serde_json::to_value(policy).unwrap()
        }
        other => panic!("no strict type for {other:?}; add one"),
    };
    let name = doc["metadata"]["name"].as_str().unwrap_or_default();
    assert_contained(&format!("{kind}/{name}"), doc, &again);
    kind
}

#[test]
fn every_manifest_parses_strictly() {
    let mut kinds = BTreeSet::new();
    for dir in ["deploy", "deploy/base"] {
        for doc in kustomize(dir) {
            kinds.insert(strict(&doc));
        }
    }
    for dir in [
        "deploy/base",
        "deploy/monitoring",
        "deploy/crd",
        "deploy/crd/examples",
    ] {
        for entry in std::fs::read_dir(repo(dir)).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if !name.ends_with(".yaml") || name == "kustomization.yaml" {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in yaml_documents(&text, &name) {
                kinds.insert(strict(&doc));
            }
        }
    }
    if let Some(helm) = Helm::for_test() {
        for doc in render(&helm, &defaults()) {
            strict(&doc);
        }
    }
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "DaemonSet",
        "Deployment",
        "MaintenancePolicy",
        "Namespace",
        "PodDisruptionBudget",
        "PrometheusRule",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
        "ServiceMonitor",
    ];
    assert_eq!(kinds, expected.iter().map(|k| k.to_string()).collect());
}

#[test]
fn a_misspelled_field_is_caught() {
    let doc: Value = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"replicas": 2, "selector": {}, "template": {"spec": {"containers": [
            {"name": "c", "image": "i", "securityContext": {"readOnlyRootFileSystem": true}}
        ]}}}
    });
    let caught = std::panic::catch_unwind(|| strict(&doc));
    assert!(
        caught.is_err(),
        "readOnlyRootFileSystem (capital S) must be refused"
    );
}

// ---------------------------------------------------------------------------------------
// Security

fn pod_spec<K: DeserializeOwned>(doc: &Value) -> PodSpec {
    let value = &doc["spec"]["template"]["spec"];
    let _: K = typed(doc);
    typed(value)
}

fn env_value(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

fn env_field(container: &Container, name: &str) -> Option<String> {
    container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value_from.as_ref())
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.clone())
}

#[test]
fn the_coordinator_is_locked_down_probed_and_highly_available() {
    let docs = kustomize("deploy");
    let doc = find(&docs, "Deployment", "rota-coordinator");
    let deployment: Deployment = typed(doc);
    assert_eq!(deployment.metadata.namespace.as_deref(), Some(NAMESPACE));
    let spec = deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    assert_eq!(
        spec.strategy.as_ref().and_then(|s| s.type_.as_deref()),
        Some("Recreate"),
        "only the leader is ever Ready: a rolling update would never finish"
    );
    let pod = pod_spec::<Deployment>(doc);
    assert_eq!(
        pod.service_account_name.as_deref(),
        Some("rota-coordinator")
    );
    let security = pod.security_context.as_ref().unwrap();
    assert_eq!(security.run_as_non_root, Some(true));
    assert!(security.run_as_user.is_some_and(|u| u > 0));
    assert_eq!(
        security.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
        Some("RuntimeDefault")
    );
    let affinity = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref());
    assert!(affinity.is_some(), "replicas spread over nodes");
    assert_eq!(pod.containers.len(), 1);
    let container = &pod.containers[0];
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_ne!(sc.privileged, Some(true));
    let dropped = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.drop.clone())
        .unwrap_or_default();
    assert_eq!(dropped, ["ALL"]);
    assert!(sc.capabilities.as_ref().unwrap().add.is_none());
    assert!(pod.volumes.is_none(), "the coordinator needs no volume");
    let resources = container.resources.as_ref().unwrap();
    assert!(
        resources
            .requests
            .as_ref()
            .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory"))
    );
    assert!(
        resources
            .limits
            .as_ref()
            .is_some_and(|r| r.contains_key("memory"))
    );
    let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
        probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        probe_path(&container.liveness_probe).as_deref(),
        Some("/healthz")
    );
    assert_eq!(
        probe_path(&container.readiness_probe).as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        env_field(container, "ROTA_POD_NAME").as_deref(),
        Some("metadata.name")
    );
    assert_eq!(
        env_field(container, "ROTA_NAMESPACE").as_deref(),
        Some("metadata.namespace")
    );
    let grace = pod.termination_grace_period_seconds.unwrap();
    let config = coordinator_config(container);
    assert!(
        config.shutdown.shutdown_grace.as_secs() < u64::try_from(grace).unwrap(),
        "the shutdown grace fits in the pod's termination grace period"
    );

    let pdb: PodDisruptionBudget = typed(find(&docs, "PodDisruptionBudget", "rota-coordinator"));
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    let selector = pdb.spec.unwrap().selector.unwrap().match_labels.unwrap();
    assert!(
        selector
            .iter()
            .all(|(k, v)| template_labels.get(k) == Some(v))
    );
}

#[test]
fn the_agent_has_no_api_token_no_rbac_and_no_host_mounts() {
    let docs = kustomize("deploy");
    let doc = find(&docs, "DaemonSet", "rota-agent");
    let pod = pod_spec::<DaemonSet>(doc);
    assert_eq!(pod.automount_service_account_token, Some(false));
    let account: ServiceAccount = typed(find(&docs, "ServiceAccount", "rota-agent"));
    assert_eq!(account.automount_service_account_token, Some(false));
    assert_eq!(pod.service_account_name.as_deref(), Some("rota-agent"));
    assert_eq!(pod.host_pid, Some(true), "it enters PID 1's namespaces");
    assert_ne!(pod.host_network, Some(true));
    assert_ne!(pod.host_ipc, Some(true));
    let volumes = pod.volumes.clone().unwrap_or_default();
    assert!(
        volumes.iter().all(|v| v.host_path.is_none()),
        "the agent reaches host files through /proc/1/root, never a hostPath"
    );
    let tolerates_all =
        pod.tolerations.iter().flatten().any(|t| {
            t.operator.as_deref() == Some("Exists") && t.key.is_none() && t.effect.is_none()
        });
    assert!(
        tolerates_all,
        "every node is maintained, whatever its taints"
    );
    let container = &pod.containers[0];
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.privileged, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let resources = container.resources.as_ref().unwrap();
    assert!(resources.requests.is_some() && resources.limits.is_some());
    assert_eq!(
        env_field(container, "ROTA_NODE_NAME").as_deref(),
        Some("spec.nodeName")
    );

    // The projected token: audience rota, short-lived, mounted where ROTA_TOKEN_FILE points.
    let projected = volumes
        .iter()
        .find_map(|v| {
            let sources = v.projected.as_ref()?.sources.as_ref()?;
            let token = sources
                .iter()
                .find_map(|s| s.service_account_token.clone())?;
            Some((v.name.clone(), token))
        })
        .expect("a projected service-account token");
    let coordinator = coordinator_config(
        &pod_spec::<Deployment>(find(&docs, "Deployment", "rota-coordinator")).containers[0],
    );
    assert_eq!(
        projected.1.audience.as_deref(),
        Some(coordinator.agents.token_audience.as_str())
    );
    assert!(
        projected
            .1
            .expiration_seconds
            .is_some_and(|s| (600..=3600).contains(&s))
    );
    let mount = |volume: &str| {
        container
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == volume)
            .map(|m| (m.mount_path.clone(), m.read_only))
            .unwrap_or_else(|| panic!("{volume} not mounted"))
    };
    let (token_dir, read_only) = mount(&projected.0);
    assert_eq!(read_only, Some(true));
    assert_eq!(
        env_value(container, "ROTA_TOKEN_FILE"),
        Some(format!("{token_dir}/{}", projected.1.path))
    );
    // The coordinator's CA, from the ConfigMap the TLS bootstrap publishes.
    let ca = volumes
        .iter()
        .find(|v| {
            v.config_map
                .as_ref()
                .is_some_and(|c| c.name == rota_coordinator::tls::CA_CONFIGMAP)
        })
        .expect("the CA ConfigMap is mounted");
    let (ca_dir, _) = mount(&ca.name);
    assert_eq!(
        env_value(container, "ROTA_CA_FILE"),
        Some(format!("{ca_dir}/ca.crt"))
    );
}

// ---------------------------------------------------------------------------------------
// Flags

/// Every env var of a command line, with the argument it sets.
fn env_args(command: &clap::Command) -> BTreeMap<String, clap::Arg> {
    command
        .get_arguments()
        .filter_map(|a| Some((a.get_env()?.to_string_lossy().into_owned(), a.clone())))
        .collect()
}

/// The container's env as command-line arguments of `command` (downward-API values stand in
/// as given), failing on a variable the binary does not read.
fn env_as_args(
    container: &Container,
    command: &clap::Command,
    downward: &BTreeMap<&str, &str>,
) -> Vec<String> {
    let known = env_args(command);
    let mut args = Vec::new();
    for var in container.env.iter().flatten() {
        let arg = known.get(&var.name).unwrap_or_else(|| {
            panic!(
                "{}: the binary reads no {} (its variables: {:?})",
                container.name,
                var.name,
                known.keys().collect::<Vec<_>>()
            )
        });
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(from)) => match (&from.field_ref, &from.secret_key_ref) {
                (Some(field), _) => downward
                    .get(field.field_path.as_str())
                    .unwrap_or_else(|| panic!("no stand-in for {}", field.field_path))
                    .to_string(),
                // A secret's value is the operator's; any well-formed one stands in.
                (None, Some(_)) => "https://hooks.example/services/T0/B0/x".to_owned(),
                (None, None) => panic!("{}: only downward API and Secret values", var.name),
            },
            (None, None) => panic!("{} has no value", var.name),
        };
        let long = arg.get_long().expect("env args have a long flag");
        if arg.get_action().takes_values() {
            args.push(format!("--{long}={value}"));
        } else if value == "true" {
            args.push(format!("--{long}"));
        }
    }
    args
}

fn coordinator_config(container: &Container) -> Config {
    let downward = BTreeMap::from([
        ("metadata.name", "rota-coordinator-0"),
        ("metadata.namespace", NAMESPACE),
        ("spec.nodeName", "node-1"),
    ]);
    let mut argv = vec!["rota-coordinator".to_owned()];
    argv.extend(env_as_args(container, &Config::command(), &downward));
    argv.extend(container.args.iter().flatten().cloned());
    Config::try_parse_from(&argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"))
}

#[test]
fn the_coordinator_reads_its_environment_and_it_matches_the_objects() {
    let docs = kustomize("deploy");
    let pod = pod_spec::<Deployment>(find(&docs, "Deployment", "rota-coordinator"));
    let container = &pod.containers[0];
    let config = coordinator_config(container);
    assert_eq!(config.identity.namespace, NAMESPACE);
    assert!(
        !config.tls.grpc_insecure_plaintext,
        "agents' tokens never travel in clear text"
    );
    assert!(
        config.notify.config().is_some(),
        "the webhook is read from its Secret"
    );
    let secret = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "ROTA_NOTIFY_WEBHOOK_URL")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .expect("the webhook URL comes from a Secret (it is a credential)");
    assert_eq!(
        secret.optional,
        Some(true),
        "no Secret: no notifications, still starts"
    );
    assert!(config.election.leader_elect);
    assert_eq!(
        config.identity.node_name.as_deref(),
        Some("node-1"),
        "the leader knows its node, to hand over when it is cordoned"
    );
    let port = |name: &str| {
        container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| u16::try_from(p.container_port).unwrap())
            .unwrap_or_else(|| panic!("port {name}"))
    };
    assert_eq!(config.listen.grpc_addr.port(), port("grpc"));
    assert_eq!(config.listen.http_addr.port(), port("http"));
    let agents = config.agent_identity();
    assert_eq!(agents.namespace, NAMESPACE);
    let daemonset = find(&docs, "DaemonSet", "rota-agent");
    assert_eq!(daemonset["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        pod_spec::<DaemonSet>(daemonset)
            .service_account_name
            .as_deref(),
        Some(agents.service_account.as_str())
    );
    // The leader Lease and the fencing counter are the objects the Role names.
    let role = find(&docs, "Role", "rota-coordinator").to_string();
    assert!(
        role.contains(&format!("\"{}\"", config.election.lease_name)),
        "{role}"
    );
    assert!(
        role.contains(&format!(
            "\"{}\"",
            rota_core::slots::persist::COUNTER_CONFIGMAP
        )),
        "{role}"
    );
}

/// `rota-agent run` with the global flags (logging) of the top-level command.
fn agent_run_command() -> clap::Command {
    let cli = rota_agent::cli::Cli::command();
    let mut run = cli.find_subcommand("run").expect("rota-agent run").clone();
    for arg in cli.get_arguments() {
        if arg.is_global_set() {
            run = run.arg(arg.clone());
        }
    }
    run
}

#[test]
fn the_agent_reads_its_environment_and_reaches_the_coordinators_service() {
    let docs = kustomize("deploy");
    let pod = pod_spec::<DaemonSet>(find(&docs, "DaemonSet", "rota-agent"));
    let container = &pod.containers[0];
    let args = container.args.clone().unwrap_or_default();
    assert_eq!(args, ["run"]);
    let downward = BTreeMap::from([("spec.nodeName", "node-1")]);
    let mut argv = vec!["rota-agent".to_owned(), "run".to_owned()];
    argv.extend(env_as_args(container, &agent_run_command(), &downward));
    let parsed = rota_agent::cli::Cli::try_parse_from(&argv);
    assert!(parsed.is_ok(), "{argv:?}: {:?}", parsed.err());

    let url = env_value(container, "ROTA_COORDINATOR").unwrap();
    let service: Service = typed(find(&docs, "Service", "rota-coordinator"));
    let grpc_port = service
        .spec
        .as_ref()
        .unwrap()
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("grpc"))
        .unwrap()
        .port;
    assert_eq!(
        url,
        format!("https://rota-coordinator.{NAMESPACE}.svc:{grpc_port}"),
        "TLS to the Service's name, which the bootstrapped certificate carries"
    );
    assert!(service.spec.as_ref().unwrap().publish_not_ready_addresses != Some(true));
}

#[test]
fn services_and_the_service_monitor_select_the_coordinator() {
    let docs = kustomize("deploy");
    let pod_labels: BTreeMap<String, String> = serde_json::from_value(
        find(&docs, "Deployment", "rota-coordinator")["spec"]["template"]["metadata"]["labels"]
            .clone(),
    )
    .unwrap();
    let ports: BTreeSet<String> =
        pod_spec::<Deployment>(find(&docs, "Deployment", "rota-coordinator")).containers[0]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.name.clone())
            .collect();
    for name in ["rota-coordinator", "rota-coordinator-metrics"] {
        let service: Service = typed(find(&docs, "Service", name));
        let spec = service.spec.unwrap();
        for (k, v) in spec.selector.unwrap() {
            assert_eq!(pod_labels.get(&k), Some(&v), "{name} selects the pods");
        }
        for port in spec.ports.unwrap() {
            let target = serde_json::to_value(&port.target_port).unwrap();
            assert!(ports.contains(target.as_str().unwrap()), "{name}: {target}");
        }
    }
    let metrics: Service = typed(find(&docs, "Service", "rota-coordinator-metrics"));
    assert_eq!(
        metrics.spec.as_ref().unwrap().publish_not_ready_addresses,
        Some(true),
        "standbys are scraped too"
    );
    let monitor: ServiceMonitor = typed(find(&docs, "ServiceMonitor", "rota-coordinator"));
    let labels = metrics.metadata.labels.unwrap();
    for (k, v) in monitor.spec.selector.match_labels.unwrap() {
        assert_eq!(labels.get(&k), Some(&v));
    }
    let metric_ports: BTreeSet<String> = metrics
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .filter_map(|p| p.name)
        .collect();
    for endpoint in monitor.spec.endpoints {
        assert!(metric_ports.contains(&endpoint.port));
        assert_eq!(endpoint.path, "/metrics");
    }
}

// ---------------------------------------------------------------------------------------
// Metrics

/// Every series name the coordinator exports (`_total` for counters, `_bucket`/`_sum`/
/// `_count` for histograms): every family populated once through its setter, then encoded.
fn exported_series() -> BTreeSet<String> {
    use rota_coordinator::metrics::Outcome;
    use rota_core::model::Operation;
    let metrics = Metrics::new();
    metrics.set_slots("p", 1, 1);
    metrics.set_drains_in_progress("p", 1);
    metrics.eviction("p");
    metrics.eviction_blocked("p");
    metrics.maintenance_outcome("p", &Operation::Reboot, Outcome::Failed);
    metrics.set_pool_state("p", true, true);
    metrics.set_rollout_progress("p", 1, 2);
    metrics.set_kubernetes_upgrade_phase("p", Some("PreflightFailed"));
    metrics.lease_expired("p");
    metrics.set_leader(true);
    metrics.grpc_request(
        "Renew",
        tonic::Code::Ok,
        std::time::Duration::from_millis(3),
    );
    metrics.grpc_refused("unauthenticated");
    metrics.ledger_mismatch("differs");
    metrics.record_written();
    metrics.records_pruned(1);
    metrics.record_failed("write");
    metrics.fleetlock_request("pre-reboot", "workers", "ok");
    let text = metrics.encode().unwrap();
    let families = text.lines().filter(|l| l.starts_with("# TYPE ")).count();
    let documented = read("coordinator/src/metrics.rs")
        .lines()
        .filter(|l| l.starts_with("//! | `rota_"))
        .count();
    assert_eq!(
        families, documented,
        "every documented family is populated here"
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn metrics_in(expr: &str) -> BTreeSet<String> {
    regex::Regex::new(r"\brota_[a-z_]+")
        .unwrap()
        .find_iter(expr)
        .map(|m| m.as_str().to_owned())
        .collect()
}

#[test]
fn alerts_and_the_dashboard_use_metrics_that_exist() {
    let exported = exported_series();
    assert!(exported.contains("rota_evictions_total"), "{exported:?}");
    let docs = kustomize("deploy");
    let rule: PrometheusRule = typed(find(&docs, "PrometheusRule", "rota"));
    let mut alerts = BTreeSet::new();
    for rule in rule.spec.groups.iter().flat_map(|g| &g.rules) {
        let used = metrics_in(&rule.expr);
        assert!(!used.is_empty(), "{}: uses no rota metric", rule.alert);
        for metric in used {
            assert!(
                exported.contains(&metric),
                "{}: {metric} is not exported",
                rule.alert
            );
        }
        assert!(rule.labels.contains_key("severity"), "{}", rule.alert);
        assert!(rule.annotations.contains_key("summary"), "{}", rule.alert);
        alerts.insert(rule.alert.clone());
    }
    for wanted in [
        "RotaDrainStuck",
        "RotaNodeMaintenanceFailed",
        "RotaPoolPaused",
        "RotaCircuitOpen",
        "RotaSlotHeldTooLong",
    ] {
        assert!(alerts.contains(wanted), "missing alert {wanted}");
    }

    let dashboard = find(&docs, "ConfigMap", "rota-grafana-dashboard");
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json: Value = serde_json::from_str(dashboard["data"]["rota.json"].as_str().unwrap())
        .expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&json, &mut exprs);
    assert!(exprs.len() >= 8, "{} queries", exprs.len());
    for expr in exprs {
        for metric in metrics_in(&expr) {
            assert!(
                exported.contains(&metric),
                "dashboard: {metric} is not exported"
            );
        }
    }
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr" | "query", Value::String(s)) => out.push(s.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Helm

/// `helm template` with `values` over the chart's defaults: the objects, or helm's error.
fn try_render(helm: &Helm, values: &Value) -> Result<Vec<Value>, String> {
    // JSON is YAML.
    helm.template(&values.to_string())
        .map(|out| yaml_documents(&out, "helm template"))
}

/// The objects the chart renders with `values`; helm must succeed.
fn render(helm: &Helm, values: &Value) -> Vec<Value> {
    try_render(helm, values).unwrap_or_else(|e| panic!("helm template with {values}: {e}"))
}

/// No values over the chart's defaults.
fn defaults() -> Value {
    json!({})
}

/// Objects keyed by kind, namespace and name.
fn by_id(docs: Vec<Value>) -> BTreeMap<(String, String, String), Value> {
    docs.into_iter()
        .map(|d| {
            let id = (
                d["kind"].as_str().unwrap_or_default().to_owned(),
                d["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                d["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            );
            (id, d)
        })
        .collect()
}

/// The chart with `values` renders, field for field, what `kubectl kustomize DIR` renders but
/// its Namespace: the chart installs into a namespace the operator creates (and labels for
/// privileged pods).
fn assert_renders_like_kustomize(helm: &Helm, values: &Value, dir: &str) {
    let rendered = by_id(render(helm, values));
    let built = by_id(
        kustomize(dir)
            .into_iter()
            .filter(|d| d["kind"] != "Namespace")
            .collect(),
    );
    assert_eq!(
        rendered.keys().collect::<BTreeSet<_>>(),
        built.keys().collect::<BTreeSet<_>>(),
        "the objects of helm with {values} and of {dir}"
    );
    for (id, object) in &built {
        assert_eq!(
            &rendered[id], object,
            "{id:?} differs between helm with {values} and {dir}"
        );
    }
}

#[test]
fn the_helm_chart_renders_what_kustomize_renders() {
    let Some(helm) = Helm::for_test() else {
        return;
    };
    assert_renders_like_kustomize(&helm, &defaults(), "deploy");
    assert_renders_like_kustomize(
        &helm,
        &json!({"monitoring": {"enabled": false}}),
        "deploy/base",
    );
}

#[test]
fn the_chart_passes_helm_lint_strict() {
    let Some(helm) = Helm::for_test() else {
        return;
    };
    for values in [
        defaults(),
        json!({"coordinator": {"tls": {"source": "secret", "secretName": "rota-grpc-tls",
            "selfSignedCA": {"enabled": true}}}}),
        json!({
            "imagePullSecrets": [{"name": "regcred"}],
            "agent": {"priorityClassName": "system-node-critical", "extraArgs": ["--refresh"],
                "image": {"digest": format!("sha256:{}", "ab".repeat(32))}},
        }),
    ] {
        let report = helm
            .lint(&values.to_string())
            .unwrap_or_else(|e| panic!("helm lint --strict with {values}: {e}"));
        assert!(
            report.contains("1 chart(s) linted, 0 chart(s) failed"),
            "{values}: {report}"
        );
    }
}

type Id = (String, String, String);

fn id(kind: &str, namespace: &str, name: &str) -> Id {
    (kind.to_owned(), namespace.to_owned(), name.to_owned())
}

fn coordinator_deployment() -> Id {
    id("Deployment", NAMESPACE, "rota-coordinator")
}

fn agent_daemonset() -> Id {
    id("DaemonSet", NAMESPACE, "rota-agent")
}

/// How many variables the first container of a Deployment or DaemonSet has.
fn env_len(workload: &Value) -> usize {
    workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .map_or(0, Vec::len)
}

/// The JSON pointer of the variable `name` of the first container of a Deployment or
/// DaemonSet.
fn env_pointer(workload: &Value, name: &str) -> String {
    let env = workload["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .unwrap();
    let i = env.iter().position(|e| e["name"] == name).unwrap();
    format!("/spec/template/spec/containers/0/env/{i}")
}

/// Removes what the JSON pointer `pointer` addresses in `value` (a field of an object, an
/// element of a list) and returns it; `Null` when nothing is there.
fn take(value: &mut Value, pointer: &str) -> Value {
    let (parent, last) = pointer.rsplit_once('/').expect("a JSON pointer");
    let last = last.replace("~1", "/").replace("~0", "~");
    match value.pointer_mut(parent) {
        Some(Value::Object(map)) => map.remove(&last).unwrap_or(Value::Null),
        Some(Value::Array(list)) => match last.parse::<usize>() {
            Ok(i) if i < list.len() => list.remove(i),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

/// Values over the chart's defaults, and all that they change: at `pointer` of an object, the
/// value found there (`Null`: nothing), and the objects only these values render.
struct Case {
    values: Value,
    changes: Vec<(Id, String, Value)>,
    added: Vec<Id>,
}

impl Case {
    fn new(values: Value) -> Case {
        Case {
            values,
            changes: Vec::new(),
            added: Vec::new(),
        }
    }

    fn at(mut self, object: Id, pointer: &str, want: Value) -> Case {
        self.changes.push((object, pointer.to_owned(), want));
        self
    }

    fn adds(mut self, object: Id) -> Case {
        self.added.push(object);
        self
    }

    /// Renders the values: each change is there, every object parses strictly, and with the
    /// changes and the added objects taken out the render is the defaults' one.
    fn check(&self, helm: &Helm, defaults: &BTreeMap<Id, Value>) -> BTreeMap<Id, Value> {
        let values = &self.values;
        let rendered = by_id(render(helm, values));
        for doc in rendered.values() {
            let group = doc["apiVersion"].as_str().unwrap_or_default();
            // The cert-manager and trust-manager kinds have no strict type here; the test of
            // the secret TLS source compares them with deploy/cert-manager.
            if !group.contains("cert-manager.io") {
                strict(doc);
            }
        }
        let mut after = rendered.clone();
        let mut before = defaults.clone();
        for (object, pointer, want) in &self.changes {
            let doc = after
                .get_mut(object)
                .unwrap_or_else(|| panic!("{values}: no {object:?}"));
            assert_eq!(&take(doc, pointer), want, "{values}: {object:?} {pointer}");
            if let Some(doc) = before.get_mut(object) {
                take(doc, pointer);
            }
        }
        for object in &self.added {
            assert!(
                after.remove(object).is_some() && !before.contains_key(object),
                "{values} adds {object:?}"
            );
        }
        for (object, doc) in &before {
            assert_eq!(
                after.get(object),
                Some(doc),
                "{values} changes {object:?} beyond {:?}",
                self.changes
            );
        }
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>(),
            "{values}: the objects"
        );
        rendered
    }
}

/// What users of kured's and cert-manager's charts expect to set, each through `helm template`:
/// it lands where it should, and changes nothing else.
#[test]
fn every_value_lands_where_it_should_and_nowhere_else() {
    let Some(helm) = Helm::for_test() else {
        return;
    };
    let defaults = by_id(render(&helm, &defaults()));
    let pod = "/spec/template/spec";
    let container = "/spec/template/spec/containers/0";
    let digest = format!("sha256:{}", "0123456789abcdef".repeat(4));
    let node_affinity = json!({"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [
            {"key": "pool", "operator": "In", "values": ["infra"]}
        ]}]
    }});
    let mut cases = vec![
        // Maps merge with the defaults: the coordinator keeps its anti-affinity...
        Case::new(json!({"coordinator": {"affinity": {"nodeAffinity": node_affinity}}})).at(
            coordinator_deployment(),
            &format!("{pod}/affinity/nodeAffinity"),
            node_affinity.clone(),
        ),
        // ... unless null drops it.
        Case::new(json!({"coordinator": {"affinity": null}})).at(
            coordinator_deployment(),
            &format!("{pod}/affinity"),
            Value::Null,
        ),
        Case::new(json!({"agent": {"affinity": {"nodeAffinity": node_affinity}}})).at(
            agent_daemonset(),
            &format!("{pod}/affinity"),
            json!({"nodeAffinity": node_affinity}),
        ),
    ];
    for (component, object) in [
        ("coordinator", coordinator_deployment()),
        ("agent", agent_daemonset()),
    ] {
        let with = |field: &str, value: Value| json!({ component: { field: value } });
        let resources = json!({
            "requests": {"cpu": "1", "memory": "1Gi"},
            "limits": {"cpu": "2", "memory": "2Gi"},
        });
        let toleration = json!([
            {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
        ]);
        let env = json!({"name": "TZ", "value": "UTC"});
        let image = |values: Value, want: String| {
            Case::new(with("image", values)).at(
                object.clone(),
                &format!("{container}/image"),
                Value::String(want),
            )
        };
        cases.extend([
            Case::new(with("resources", resources.clone())).at(
                object.clone(),
                &format!("{container}/resources"),
                resources,
            ),
            Case::new(with("tolerations", toleration.clone())).at(
                object.clone(),
                &format!("{pod}/tolerations"),
                toleration,
            ),
            Case::new(with("nodeSelector", json!({"pool": "infra"}))).at(
                object.clone(),
                &format!("{pod}/nodeSelector"),
                json!({"pool": "infra"}),
            ),
            Case::new(with("priorityClassName", "rota-critical".into())).at(
                object.clone(),
                &format!("{pod}/priorityClassName"),
                "rota-critical".into(),
            ),
            Case::new(with(
                "podAnnotations",
                json!({"example.com/owner": "platform"}),
            ))
            .at(
                object.clone(),
                "/spec/template/metadata/annotations",
                json!({"example.com/owner": "platform"}),
            ),
            Case::new(with("podLabels", json!({"team": "platform"}))).at(
                object.clone(),
                "/spec/template/metadata/labels/team",
                "platform".into(),
            ),
            Case::new(with("extraEnv", json!([env]))).at(
                object.clone(),
                &format!("{container}/env/{}", env_len(&defaults[&object])),
                env,
            ),
            image(
                json!({"registry": "mirror.example:5000", "repository": "ops/rota", "tag": "2"}),
                "mirror.example:5000/ops/rota:2".to_owned(),
            ),
            image(
                json!({"digest": digest}),
                format!("ghcr.io/rota-dev/rota-{component}@{digest}"),
            ),
            image(
                json!({"registry": ""}),
                format!("rota-dev/rota-{component}:0.1.0"),
            ),
            // Quoted: a filter may hold what YAML would read otherwise.
            Case::new(with("logFilter", "info,rota=debug: x".into())).at(
                object.clone(),
                &env_pointer(&defaults[&object], "ROTA_LOG"),
                json!({"name": "ROTA_LOG", "value": "info,rota=debug: x"}),
            ),
            Case::new(with("logFormat", "plain".into())).at(
                object.clone(),
                &env_pointer(&defaults[&object], "ROTA_LOG_FORMAT"),
                json!({"name": "ROTA_LOG_FORMAT", "value": "plain"}),
            ),
            Case::new(with("image", json!({"pullPolicy": "Always"}))).at(
                object.clone(),
                &format!("{container}/imagePullPolicy"),
                "Always".into(),
            ),
        ]);
    }
    cases.extend([
        Case::new(json!({"agent": {"upgrade": "all"}})).at(
            agent_daemonset(),
            &env_pointer(&defaults[&agent_daemonset()], "ROTA_UPGRADE"),
            json!({"name": "ROTA_UPGRADE", "value": "all"}),
        ),
        Case::new(json!({"agent": {"maxUnavailable": 3}})).at(
            agent_daemonset(),
            "/spec/updateStrategy/rollingUpdate/maxUnavailable",
            3.into(),
        ),
        Case::new(json!({"monitoring": {"scrapeInterval": "1m"}})).at(
            id("ServiceMonitor", NAMESPACE, "rota-coordinator"),
            "/spec/endpoints/0/interval",
            "1m".into(),
        ),
        Case::new(json!({"coordinator": {"replicas": 3}})).at(
            coordinator_deployment(),
            "/spec/replicas",
            3.into(),
        ),
        Case::new(json!({"coordinator": {"extraArgs": ["--slot-lease-ttl=2m"]}})).at(
            coordinator_deployment(),
            &format!("{container}/args"),
            json!(["--slot-lease-ttl=2m"]),
        ),
        Case::new(json!({"agent": {"extraArgs": ["--reboot-timeout=900"]}})).at(
            agent_daemonset(),
            &format!("{container}/args/1"),
            "--reboot-timeout=900".into(),
        ),
        Case::new(json!({"imagePullSecrets": [{"name": "regcred"}]}))
            .at(
                coordinator_deployment(),
                &format!("{pod}/imagePullSecrets"),
                json!([{"name": "regcred"}]),
            )
            .at(
                agent_daemonset(),
                &format!("{pod}/imagePullSecrets"),
                json!([{"name": "regcred"}]),
            ),
    ]);
    for case in &cases {
        case.check(&helm, &defaults);
    }
}

/// The flags and variables added with `extraArgs` and `extraEnv` are read by the binaries'
/// own command lines, as the chart's own are.
#[test]
fn extra_args_and_env_reach_the_binaries() {
    let Some(helm) = Helm::for_test() else {
        return;
    };
    let docs = render(
        &helm,
        &json!({
            "coordinator": {
                "extraArgs": ["--slot-lease-ttl=2m"],
                "extraEnv": [{"name": "ROTA_TOKEN_CACHE_SIZE", "value": "100"}],
            },
            "agent": {
                "extraArgs": ["--reboot-timeout=900"],
                "extraEnv": [{"name": "ROTA_REFRESH", "value": "true"}],
            },
        }),
    );
    let pod = pod_spec::<Deployment>(find(&docs, "Deployment", "rota-coordinator"));
    let config = coordinator_config(&pod.containers[0]);
    assert_eq!(
        config.controller.slot_lease_ttl,
        std::time::Duration::from_secs(120)
    );
    assert_eq!(config.agents.token_cache_size, 100);

    let pod = pod_spec::<DaemonSet>(find(&docs, "DaemonSet", "rota-agent"));
    let container = &pod.containers[0];
    let mut argv = vec!["rota-agent".to_owned()];
    argv.extend(container.args.iter().flatten().cloned());
    argv.extend(env_as_args(
        container,
        &agent_run_command(),
        &BTreeMap::from([("spec.nodeName", "node-1")]),
    ));
    assert_eq!(argv[1..3], ["run", "--reboot-timeout=900"]);
    assert!(argv.contains(&"--refresh".to_owned()), "{argv:?}");
    let parsed = rota_agent::cli::Cli::try_parse_from(&argv);
    assert!(parsed.is_ok(), "{argv:?}: {:?}", parsed.err());
}

/// `coordinator.tls.source=secret` renders what `deploy/cert-manager` adds to the base: with the
/// example issuer chain, the same objects; with another Secret, the coordinator serves it and
/// may read it, and nothing else may.
#[test]
fn the_secret_tls_source_renders_the_cert_manager_overlay() {
    let Some(helm) = Helm::for_test() else {
        return;
    };
    assert_renders_like_kustomize(
        &helm,
        &json!({
            "coordinator": {"tls": {"source": "secret", "selfSignedCA": {"enabled": true}}},
            "monitoring": {"enabled": false},
        }),
        "deploy/cert-manager",
    );

    let defaults = by_id(render(&helm, &defaults()));
    let env = "/spec/template/spec/containers/0/env";
    let first = env_len(&defaults[&coordinator_deployment()]);
    let docs = Case::new(json!({
        "coordinator": {"tls": {"source": "secret", "secretName": "rota-grpc-tls",
            "issuerRef": {"group": "cert-manager.io", "kind": "Issuer", "name": "corporate"}}},
    }))
    .at(
        coordinator_deployment(),
        &format!("{env}/{}", first + 1),
        json!({"name": "ROTA_TLS_SECRET", "value": "rota-grpc-tls"}),
    )
    .at(
        coordinator_deployment(),
        &format!("{env}/{first}"),
        json!({"name": "ROTA_TLS_SOURCE", "value": "secret"}),
    )
    .adds(id("Certificate", NAMESPACE, "rota-coordinator"))
    .adds(id("Bundle", "", "rota-ca"))
    .adds(id("Role", NAMESPACE, "rota-coordinator-tls"))
    .adds(id("RoleBinding", NAMESPACE, "rota-coordinator-tls"))
    .check(&helm, &defaults);
    let docs: Vec<Value> = docs.into_values().collect();
    let pod = pod_spec::<Deployment>(find(&docs, "Deployment", "rota-coordinator"));
    let config = coordinator_config(&pod.containers[0]);
    assert_eq!(
        config.tls.source(),
        rota_coordinator::tls::TlsSource::Secret
    );
    assert_eq!(config.tls.tls_secret, "rota-grpc-tls");
    let certificate = find(&docs, "Certificate", "rota-coordinator");
    assert_eq!(certificate["spec"]["secretName"], "rota-grpc-tls");
    assert_eq!(certificate["spec"]["issuerRef"]["name"], "corporate");
    let role = find(&docs, "Role", "rota-coordinator-tls");
    assert_eq!(
        role["rules"],
        json!([{
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["rota-grpc-tls"],
            "verbs": ["get"],
        }])
    );
    assert_eq!(
        secret_readers(&docs),
        BTreeSet::from([format!("ServiceAccount/{NAMESPACE}/rota-coordinator")])
    );
}

/// `values.schema.json` refuses bad values before anything renders, and helm's message names
/// the field.
#[test]
fn the_values_schema_refuses_bad_values_naming_the_field() {
    let Some(helm) = Helm::for_test() else {
        return;
    };
    for (values, named) in [
        (json!({"agent": {"upgrade": "sometimes"}}), "/agent/upgrade"),
        (
            json!({"coordinator": {"replicas": -1}}),
            "/coordinator/replicas",
        ),
        (
            json!({"coordinator": {"replicas": "two"}}),
            "/coordinator/replicas",
        ),
        (
            json!({"coordinatr": {"replicas": 3}}),
            "'coordinatr' not allowed",
        ),
        (
            json!({"agent": {"tolerence": []}}),
            "'tolerence' not allowed",
        ),
        (
            json!({"coordinator": {"tls": {"source": "files"}}}),
            "/coordinator/tls/source",
        ),
        (
            json!({"coordinator": {"tls": {"secretName": "Not_A_Name"}}}),
            "/coordinator/tls/secretName",
        ),
        (
            json!({"coordinator": {"logFormat": "yaml"}}),
            "/coordinator/logFormat",
        ),
        (
            json!({"agent": {"maxUnavailable": 0}}),
            "/agent/maxUnavailable",
        ),
        (
            json!({"agent": {"maxUnavailable": "150%"}}),
            "/agent/maxUnavailable",
        ),
        (
            json!({"coordinator": {"resources": {"limits": {"memory": "lots"}}}}),
            "/coordinator/resources/limits/memory",
        ),
        (
            json!({"agent": {"image": {"digest": "latest"}}}),
            "/agent/image/digest",
        ),
        (
            json!({"agent": {"podLabels": {"app.kubernetes.io/name": "x"}}}),
            "/agent/podLabels/app.kubernetes.io~1name",
        ),
        (
            json!({"coordinator": {"extraEnv": [{"value": "x"}]}}),
            "/coordinator/extraEnv/0",
        ),
        (
            json!({"imagePullSecrets": ["regcred"]}),
            "/imagePullSecrets/0",
        ),
        (
            json!({"monitoring": {"enabled": "yes"}}),
            "/monitoring/enabled",
        ),
    ] {
        for (what, result) in [
            (
                "helm template",
                try_render(&helm, &values).map(|_| String::new()),
            ),
            ("helm lint --strict", helm.lint(&values.to_string())),
        ] {
            let Err(error) = result else {
                panic!("{what} accepts {values}");
            };
            assert!(
                error.contains("values don't meet the specifications of the schema")
                    && error.contains(named),
                "{what} with {values}: the message does not name {named}: {error}"
            );
        }
    }
}

/// The first column of the tables in the section "Helm" of `deploy/README.md`:
/// `coordinator.replicas`, `<component>.resources`, ...
fn documented_values() -> BTreeSet<String> {
    let readme = read("deploy/README.md");
    let (_, section) = readme.split_once("\n## Helm\n").expect("a section Helm");
    let section = section.split("\n## ").next().unwrap_or_default();
    section
        .lines()
        .filter_map(|line| line.strip_prefix("| `"))
        .filter_map(|cell| cell.split_once("` |").map(|(value, _)| value.to_owned()))
        .collect()
}

/// Every value of `values.yaml` is in the README's table (a map either as a whole or each of
/// its keys), and every row of the table is a value of `values.yaml`.
#[test]
fn the_readme_documents_every_value() {
    let values = yaml_documents(&read("deploy/helm/rota/values.yaml"), "values.yaml").remove(0);
    let documented = documented_values();
    let as_documented = |path: &str| {
        for component in ["coordinator.", "agent."] {
            if let Some(rest) = path.strip_prefix(component) {
                return format!("<component>.{rest}");
            }
        }
        path.to_owned()
    };
    let mut undocumented = Vec::new();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<(String, &Value)> = vec![(String::new(), &values)];
    while let Some((path, value)) = stack.pop() {
        let row = as_documented(&path);
        if documented.contains(&path) || documented.contains(&row) {
            seen.insert(if documented.contains(&path) {
                path
            } else {
                row
            });
        } else if let Value::Object(map) = value {
            let prefix = if path.is_empty() {
                path
            } else {
                format!("{path}.")
            };
            stack.extend(map.iter().map(|(k, v)| (format!("{prefix}{k}"), v)));
        } else {
            undocumented.push(path);
        }
    }
    assert_eq!(
        undocumented,
        Vec::<String>::new(),
        "values deploy/README.md does not list"
    );
    assert_eq!(
        documented, seen,
        "rows of deploy/README.md's values table that are no value"
    );
}

/// The chart carries copies of generated files (Helm cannot reach outside its directory).
#[test]
fn the_charts_copies_are_current() {
    for (original, copy) in [
        (
            "deploy/crd/maintenancepolicy.yaml",
            "deploy/helm/rota/crds/maintenancepolicy.yaml",
        ),
        (
            "deploy/crd/maintenancerecord.yaml",
            "deploy/helm/rota/crds/maintenancerecord.yaml",
        ),
        (
            "deploy/monitoring/dashboards/rota.json",
            "deploy/helm/rota/dashboards/rota.json",
        ),
    ] {
        let want = read(original);
        if std::env::var_os("ROTA_BLESS").is_some_and(|v| v == "1") {
            std::fs::write(repo(copy), &want).unwrap();
            continue;
        }
        assert!(
            read(copy) == want,
            "{copy} differs from {original}; refresh it with \
             ROTA_BLESS=1 cargo test -p rota-coordinator --test it deploy_manifests"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Dockerfile

/// Binary targets of the workspace, by package.
fn workspace_binaries() -> BTreeMap<String, BTreeSet<String>> {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(repo(""))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let mut bins: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for package in metadata["packages"].as_array().unwrap() {
        for target in package["targets"].as_array().unwrap() {
            if target["kind"]
                .as_array()
                .unwrap()
                .iter()
                .any(|k| k == "bin")
            {
                bins.entry(package["name"].as_str().unwrap().to_owned())
                    .or_default()
                    .insert(target["name"].as_str().unwrap().to_owned());
            }
        }
    }
    bins
}

#[test]
fn the_dockerfile_builds_binaries_that_exist_into_the_images_the_manifests_name() {
    let dockerfile = read("Dockerfile");
    let bins = workspace_binaries();
    let all: BTreeSet<&String> = bins.values().flatten().collect();
    // `-p PACKAGE --bin NAME ...` and `target/release/NAME`.
    let build_command = dockerfile
        .split("cargo build")
        .nth(1)
        .and_then(|rest| rest.split("&&").next())
        .expect("a cargo build command");
    let words: Vec<&str> = build_command.split_whitespace().collect();
    let mut current = None;
    for pair in words.windows(2) {
        match pair {
            ["-p", name] => {
                assert!(
                    bins.contains_key(*name),
                    "Dockerfile builds unknown package {name}"
                );
                current = Some(*name);
            }
            ["--bin", name] => {
                let package = current.expect("--bin after -p");
                assert!(
                    bins[package].contains(*name),
                    "{package} has no binary {name}"
                );
            }
            _ => {}
        }
    }
    let copied = regex::Regex::new(r"target/release/([A-Za-z0-9_-]+)").unwrap();
    let mut names = BTreeSet::new();
    for captures in copied.captures_iter(&dockerfile) {
        let name = captures[1].to_owned();
        assert!(
            all.contains(&name),
            "the Dockerfile copies {name}, which no package builds"
        );
        names.insert(name);
    }
    for wanted in ["rota-coordinator", "rota-agent", "rotactl"] {
        assert!(
            names.contains(wanted),
            "the Dockerfile does not build {wanted}"
        );
    }
    assert!(dockerfile.contains("ARG RUST_IMAGE=rust:1-bookworm"));

    // Stages and what they run.
    let mut stages: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut stage = String::new();
    for line in dockerfile.lines() {
        if let Some(from) = line.strip_prefix("FROM ") {
            stage = from
                .split(" AS ")
                .nth(1)
                .unwrap_or_default()
                .trim()
                .to_owned();
        }
        stages
            .entry(stage.clone())
            .or_default()
            .push(line.to_owned());
    }
    let stage_text = |name: &str| stages.get(name).map(|l| l.join("\n")).unwrap_or_default();
    let coordinator = stage_text("coordinator");
    assert!(coordinator.contains("FROM gcr.io/distroless/cc-debian12"));
    assert!(coordinator.contains(r#"ENTRYPOINT ["/usr/local/bin/rota-coordinator"]"#));
    let agent = stage_text("agent");
    assert!(agent.contains(r#"ENTRYPOINT ["/usr/local/bin/rota-agent"]"#));
    assert!(!agent.contains("chroot"), "the agent image needs no chroot");

    // The images the manifests run are the ones the Dockerfile's usage builds, and the
    // coordinator's user is the one its securityContext asks for.
    let docs = kustomize("deploy");
    let deployment = pod_spec::<Deployment>(find(&docs, "Deployment", "rota-coordinator"));
    let run_as = deployment.security_context.unwrap().run_as_user.unwrap();
    assert!(
        coordinator.contains(&format!("USER {run_as}:{run_as}")),
        "{coordinator}"
    );
    let usage = dockerfile.split_whitespace().collect::<Vec<_>>().join(" ");
    for (kind, name, target) in [
        ("Deployment", "rota-coordinator", "coordinator"),
        ("DaemonSet", "rota-agent", "agent"),
    ] {
        let image = find(&docs, kind, name)["spec"]["template"]["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap()
            .to_owned();
        let build = format!("--target {target} -t {image} .");
        assert!(
            usage.contains(&build),
            "the Dockerfile's usage does not build {image} (want `{build}`)"
        );
    }
}

/// Every subject of a RoleBinding or ClusterRoleBinding in `docs` that may get, list or watch
/// Secrets, as `kind/namespace/name` (wildcards in groups, resources and verbs count).
fn secret_readers(docs: &[Value]) -> BTreeSet<String> {
    let grants_secrets = |rules: &Value| {
        rules.as_array().into_iter().flatten().any(|rule| {
            let has = |field: &str, wanted: &[&str]| {
                rule[field]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|v| v.as_str().is_some_and(|v| wanted.contains(&v)))
            };
            has("apiGroups", &["", "*"])
                && has("resources", &["secrets", "*"])
                && has("verbs", &["get", "list", "watch", "*"])
        })
    };
    let mut readers = BTreeSet::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "RoleBinding" || d["kind"] == "ClusterRoleBinding")
    {
        let role_kind = binding["roleRef"]["kind"].as_str().unwrap();
        let role_name = &binding["roleRef"]["name"];
        let role = docs
            .iter()
            .find(|d| {
                d["kind"] == role_kind
                    && d["metadata"]["name"] == *role_name
                    && (role_kind == "ClusterRole"
                        || d["metadata"]["namespace"] == binding["metadata"]["namespace"])
            })
            .unwrap_or_else(|| panic!("{binding}: its role is not in deploy/"));
        if !grants_secrets(&role["rules"]) {
            continue;
        }
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            readers.insert(format!(
                "{}/{}/{}",
                subject["kind"].as_str().unwrap_or_default(),
                subject["namespace"].as_str().unwrap_or_default(),
                subject["name"].as_str().unwrap_or_default()
            ));
        }
    }
    readers
}

/// The Secrets a pod mounts as volumes (directly or projected).
fn mounted_secrets(pod: &PodSpec) -> Vec<String> {
    let mut mounted = Vec::new();
    for volume in pod.volumes.iter().flatten() {
        if let Some(secret) = &volume.secret {
            mounted.push(secret.secret_name.clone().unwrap_or_default());
        }
        for source in volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
        {
            if let Some(secret) = &source.secret {
                mounted.push(secret.name.clone());
            }
        }
    }
    mounted
}

/// The CA's private key is read by the coordinator through the API and by nobody else: no
/// binding lets any other subject read Secrets, and no pod mounts one (a mounted Secret is
/// readable by the node's kubelet).
#[test]
fn only_the_coordinators_service_account_can_read_secrets() {
    let coordinator = BTreeSet::from([format!("ServiceAccount/{NAMESPACE}/rota-coordinator")]);
    let mut renders = vec![
        ("deploy", kustomize("deploy")),
        ("deploy/base", kustomize("deploy/base")),
        ("deploy/cert-manager", kustomize("deploy/cert-manager")),
    ];
    if let Some(helm) = Helm::for_test() {
        renders.push(("helm", render(&helm, &defaults())));
    }
    for (what, docs) in renders {
        assert_eq!(secret_readers(&docs), coordinator, "{what}");
        // The coordinator's own read is by name only: no list or watch of every Secret.
        let role = find(&docs, "Role", "rota-coordinator");
        let mut readable = BTreeSet::new();
        for rule in role["rules"].as_array().unwrap() {
            if rule["resources"]
                .as_array()
                .unwrap()
                .contains(&"secrets".into())
            {
                let verbs = rule["verbs"].as_array().unwrap();
                assert!(
                    !verbs.contains(&"list".into()) && !verbs.contains(&"watch".into()),
                    "{what}: {rule}"
                );
                if verbs.contains(&"get".into()) {
                    readable.extend(
                        rule["resourceNames"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|n| n.as_str().unwrap().to_owned()),
                    );
                }
            }
        }
        // Its CA and serving certificate, and the FleetLock groups' tokens (read only).
        let expected: BTreeSet<String> = [
            rota_coordinator::tls::CA_SECRET,
            rota_coordinator::tls::SERVING_SECRET,
            "rota-fleetlock-tokens",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        assert_eq!(readable, expected, "{what}");
        for (kind, name) in [
            ("Deployment", "rota-coordinator"),
            ("DaemonSet", "rota-agent"),
        ] {
            let doc = find(&docs, kind, name);
            let pod = if kind == "Deployment" {
                pod_spec::<Deployment>(doc)
            } else {
                pod_spec::<DaemonSet>(doc)
            };
            assert_eq!(
                mounted_secrets(&pod),
                Vec::<String>::new(),
                "{what}: {name}"
            );
        }
    }

    // The check finds a reader: the agents' service account bound to a Role that reads
    // Secrets, and a wildcard ClusterRole bound to a group.
    let mut docs = kustomize("deploy/base");
    docs.extend(yaml_documents(
        r#"
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: peek, namespace: rota-system}
rules: [{apiGroups: [""], resources: [secrets], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: peek, namespace: rota-system}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: peek}
subjects: [{kind: ServiceAccount, name: rota-agent, namespace: rota-system}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: everything}
rules: [{apiGroups: ["*"], resources: ["*"], verbs: ["*"]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: everything}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: everything}
subjects: [{kind: Group, name: ops}]
"#,
        "fixture",
    ));
    assert_eq!(
        secret_readers(&docs),
        BTreeSet::from([
            "Group//ops".to_owned(),
            format!("ServiceAccount/{NAMESPACE}/rota-agent"),
            format!("ServiceAccount/{NAMESPACE}/rota-coordinator"),
        ])
    );
}

/// `deploy/cert-manager` builds, and its pieces fit: the coordinator serves the Secret the
/// Certificate names, the Certificate carries every name the coordinator is reached by, and the
/// agents mount the ConfigMap trust-manager's Bundle writes, under the key they read.
#[test]
fn the_cert_manager_overlay_builds_and_its_pieces_fit() {
    let docs = kustomize("deploy/cert-manager");
    let pod = pod_spec::<Deployment>(find(&docs, "Deployment", "rota-coordinator"));
    let config = coordinator_config(&pod.containers[0]);
    assert_eq!(
        config.tls.source(),
        rota_coordinator::tls::TlsSource::Secret
    );

    let certificate = find(&docs, "Certificate", "rota-coordinator");
    assert_eq!(certificate["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        certificate["spec"]["secretName"],
        config.tls.tls_secret.as_str()
    );
    let dns: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    let names = config.tls.subject_names(NAMESPACE).unwrap();
    assert_eq!(dns, names.dns());
    assert!(dns.contains(&rota_agent::tls::DEFAULT_SERVER_NAME));
    let issuer = &certificate["spec"]["issuerRef"];
    find(
        &docs,
        issuer["kind"].as_str().unwrap(),
        issuer["name"].as_str().unwrap(),
    );

    let bundle = find(&docs, "Bundle", "rota-ca");
    let agent = pod_spec::<DaemonSet>(find(&docs, "DaemonSet", "rota-agent"));
    let ca_volume = agent
        .volumes
        .iter()
        .flatten()
        .find_map(|v| v.config_map.as_ref())
        .expect("the agents mount the CA ConfigMap");
    assert_eq!(ca_volume.name, "rota-ca");
    let ca_file = env_value(&agent.containers[0], "ROTA_CA_FILE").unwrap();
    assert_eq!(
        Path::new(&ca_file).file_name().unwrap().to_str().unwrap(),
        bundle["spec"]["target"]["configMap"]["key"]
            .as_str()
            .unwrap()
    );
    let target_ns = &bundle["spec"]["target"]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"];
    assert_eq!(target_ns, NAMESPACE);
    // The example CA it trusts is the one its ClusterIssuer signs with.
    let source = bundle["spec"]["sources"][0]["secret"]["name"]
        .as_str()
        .unwrap();
    let ca_issuer = find(&docs, "ClusterIssuer", issuer["name"].as_str().unwrap());
    assert_eq!(ca_issuer["spec"]["ca"]["secretName"], source);

    // Everything of the base is there, unchanged but for the coordinator's TLS source.
    let base = by_id(kustomize("deploy/base"));
    let overlay = by_id(docs.clone());
    for (id, object) in &base {
        if id.0 == "Deployment" {
            continue;
        }
        assert_eq!(overlay.get(id), Some(object), "{id:?}");
    }
}
