//! The coordinator's RBAC is exactly what its code uses.
//!
//! [`COORDINATOR_API`] is the one table of every Kubernetes API call the coordinator makes. It
//! is checked three ways:
//! 1. against the ClusterRole and Roles bound to its service account in the rendered
//!    `deploy/` (kustomize), in both directions: nothing missing, nothing extra;
//! 2. against the coordinator's source: every API resource type it touches has a row, and every
//!    row's resource is still touched;
//! 3. against the real thing: the leader election, the controller (a whole maintenance with a
//!    drain, Events and policy status), the TLS bootstrap and the agents' TokenReview run against
//!    the emulated API server through a client that records every request; each request must
//!    be allowed by the table, and each row must have been used (rows the run cannot reach say
//!    why).

use rota_core::clock::OffsetClock;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::client::ClientBuilder;
use rota_coordinator::auth::TokenReviewAuthenticator;
use rota_coordinator::config::Config;
use rota_coordinator::grpc::Authenticator;
use rota_coordinator::kube_client::Clients;
use rota_coordinator::leader::LeaderElector;
use rota_coordinator::tls::{self, TlsOptions};
use rota_core::model::Operation;
use rota_core::slots::NodeState;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tonic::metadata::{MetadataMap, MetadataValue};

use crate::controller_support::{Cluster, NS, Running, SYSTEM_NS, settings, spec, wait_until};

/// Where a permission applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Scope {
    /// Cluster-wide (ClusterRole): cluster-scoped objects, or namespaced ones in every namespace.
    Cluster,
    /// One namespace (Role).
    Namespace(&'static str),
}

/// One kind of API call the coordinator makes.
struct Access {
    scope: Scope,
    group: &'static str,
    /// Plural, `resource/subresource` for subresources.
    resource: &'static str,
    /// Object names it is limited to (empty: any).
    names: &'static [&'static str],
    verbs: &'static [&'static str],
    /// Why the coordinator needs it.
    why: &'static str,
    /// `Some(reason)` when the recorded run cannot make this call (say why).
    not_exercised: Option<&'static str>,
}

const ROTA: Scope = Scope::Namespace("rota-system");
/// Events about cluster-scoped objects (Nodes, MaintenancePolicies) live in `default`.
const EVENTS: Scope = Scope::Namespace("default");

/// Every Kubernetes API call of the coordinator.
const COORDINATOR_API: &[Access] = &[
    Access {
        scope: Scope::Cluster,
        group: "",
        resource: "nodes",
        names: &[],
        verbs: &["get", "list", "watch", "patch"],
        why: "cache; ledger load; cordon (read, then patch at that resourceVersion); slot annotations",
        not_exercised: None,
    },
    Access {
        scope: Scope::Cluster,
        group: "",
        resource: "pods",
        names: &[],
        verbs: &["list", "watch"],
        why: "cache; the drained node's pods",
        not_exercised: None,
    },
    Access {
        scope: Scope::Cluster,
        group: "",
        resource: "pods/eviction",
        names: &[],
        verbs: &["create"],
        why: "drain",
        not_exercised: None,
    },
    Access {
        scope: Scope::Cluster,
        group: "policy",
        resource: "poddisruptionbudgets",
        names: &[],
        verbs: &["list", "watch"],
        why: "admission and drain budgets",
        not_exercised: None,
    },
    Access {
        scope: Scope::Cluster,
        group: "apps",
        resource: "daemonsets",
        names: &[],
        verbs: &["list", "watch"],
        why: "health check: required DaemonSet pods Ready",
        not_exercised: None,
    },
    Access {
        scope: Scope::Cluster,
        group: "rota.dev",
        resource: "maintenancepolicies",
        names: &[],
        verbs: &["list", "watch"],
        why: "pools",
        not_exercised: None,
    },
    Access {
        scope: Scope::Cluster,
        group: "rota.dev",
        resource: "maintenancepolicies/status",
        names: &[],
        verbs: &["patch"],
        why: "progress, conditions, breaker count",
        not_exercised: None,
    },
    Access {
        scope: Scope::Cluster,
        group: "rota.dev",
        resource: "maintenancerecords",
        names: &[],
        verbs: &["get", "list", "create", "update"],
        why: "one MaintenanceRecord per maintenance: read, then created or replaced; retention lists them",
        not_exercised: None,
    },
    Access {
        scope: Scope::Cluster,
        group: "rota.dev",
        resource: "maintenancerecords",
        names: &[],
        verbs: &["delete"],
        why: "retention deletes the records it no longer keeps",
        not_exercised: Some("only when more records exist than retention keeps, or older ones"),
    },
    Access {
        scope: Scope::Cluster,
        group: "authentication.k8s.io",
        resource: "tokenreviews",
        names: &[],
        verbs: &["create"],
        why: "agents' projected tokens",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "pods",
        names: &[],
        verbs: &["get"],
        why: "the agent pod a token names must run on the node it speaks for",
        not_exercised: Some(
            "only for tokens without the node-name claim (older clusters); the emulator's carry it",
        ),
    },
    Access {
        scope: ROTA,
        group: "coordination.k8s.io",
        resource: "leases",
        names: &[],
        verbs: &["create"],
        why: "leader election: the first replica creates the Lease",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "coordination.k8s.io",
        resource: "leases",
        names: &["rota-coordinator"],
        verbs: &["get", "update"],
        why: "leader election: read, renew, take over",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "configmaps",
        names: &[],
        verbs: &["create"],
        why: "the fencing counter, the published CA and the nodes' ledger objects, created on first use",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "configmaps",
        names: &[],
        verbs: &["list", "update"],
        why: "the slot ledger: every node's ledger object listed by label when a term starts, replaced at the resourceVersion read (names follow the nodes)",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "configmaps",
        names: &[],
        verbs: &["delete"],
        why: "the slot ledger: a node's ledger object goes when the node has no slot state left",
        not_exercised: Some("only when a Node with slot state is deleted"),
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "configmaps",
        names: &["rota-fencing"],
        verbs: &["get", "update"],
        why: "the fencing counter, updated at the resourceVersion read",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "configmaps",
        names: &["rota-fleetlock-hosts"],
        verbs: &["get"],
        why: "the locks of FleetLock hosts that are not Kubernetes nodes, read when a term starts",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "configmaps",
        names: &["rota-fleetlock-hosts"],
        verbs: &["update"],
        why: "giving and taking back those locks, at the resourceVersion read",
        not_exercised: Some("only when a FleetLock host that is not a node takes a lock"),
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "secrets",
        names: &["rota-fleetlock-tokens"],
        verbs: &["get"],
        why: "the FleetLock groups' tokens",
        not_exercised: Some("only when FleetLock is served and a client asks"),
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "configmaps",
        names: &["rota-ca"],
        verbs: &["get"],
        why: "the CA certificate published for the agents",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "configmaps",
        names: &["rota-ca"],
        verbs: &["update"],
        why: "re-publishing the CA certificate when it changed",
        not_exercised: Some("only after the CA Secret was replaced by hand"),
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "secrets",
        names: &[],
        verbs: &["create"],
        why: "bootstrapped CA and serving certificate",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "secrets",
        names: &["rota-ca", "rota-coordinator-tls"],
        verbs: &["get"],
        why: "bootstrapped CA and serving certificate",
        not_exercised: None,
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "secrets",
        names: &["rota-coordinator-tls"],
        verbs: &["update"],
        why: "renewing the serving certificate",
        not_exercised: Some("only when the serving certificate nears its expiry"),
    },
    Access {
        scope: ROTA,
        group: "",
        resource: "secrets",
        names: &["rota-ca"],
        verbs: &["update"],
        why: "kept by RBAC rule granularity: one rule covers get/update of both TLS Secrets",
        not_exercised: Some("the coordinator never rewrites its CA; the rule is shared"),
    },
    Access {
        scope: EVENTS,
        group: "events.k8s.io",
        resource: "events",
        names: &[],
        verbs: &["create"],
        why: "Events on Nodes and MaintenancePolicies",
        not_exercised: None,
    },
    Access {
        scope: EVENTS,
        group: "events.k8s.io",
        resource: "events",
        names: &[],
        verbs: &["patch"],
        why: "a repeated Event becomes a series: the recorder patches its count",
        not_exercised: Some("only when an Event repeats within the recorder's series window"),
    },
];

/// One permission: (scope, group, resource, name or `*`, verb).
type Grant = (Scope, String, String, String, String);

fn table_grants() -> BTreeSet<Grant> {
    let mut grants = BTreeSet::new();
    for access in COORDINATOR_API {
        let names: Vec<&str> = if access.names.is_empty() {
            vec!["*"]
        } else {
            access.names.to_vec()
        };
        for name in names {
            for verb in access.verbs {
                grants.insert((
                    access.scope,
                    access.group.to_owned(),
                    access.resource.to_owned(),
                    name.to_owned(),
                    (*verb).to_owned(),
                ));
            }
        }
    }
    grants
}

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// `kubectl kustomize deploy/` as JSON documents.
fn rendered() -> Result<Vec<Value>> {
    // The pinned kubectl that tests/control-plane/build.sh built, not one the machine has.
    let kubectl = crate::built::kubectl().map_err(|e| anyhow::anyhow!(e))?;
    let output = std::process::Command::new(kubectl)
        .arg("kustomize")
        .arg(repo("deploy"))
        .output()
        .context("running kubectl kustomize")?;
    if !output.status.success() {
        bail!(
            "kubectl kustomize deploy failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let text = String::from_utf8(output.stdout)?;
    Ok(serde_saphyr::from_multiple(&text)?)
}

/// The grants of every Role and ClusterRole bound to `rota-system/<account>`.
fn rbac_grants(docs: &[Value], account: &str) -> Result<BTreeSet<Grant>> {
    let find = |kind: &str, namespace: Option<&str>, name: &str| {
        docs.iter().find(|d| {
            d["kind"] == kind
                && d["metadata"]["name"] == name
                && d["metadata"]["namespace"].as_str() == namespace
        })
    };
    let mut grants = BTreeSet::new();
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        let bound = binding["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| {
                s["kind"] == "ServiceAccount" && s["name"] == account && s["namespace"] == SYSTEM_NS
            });
        if !bound {
            continue;
        }
        let role_ref = &binding["roleRef"];
        let role_name = role_ref["name"].as_str().unwrap_or_default();
        let (role, scope) = if binding["kind"] == "ClusterRoleBinding" {
            (find("ClusterRole", None, role_name), Scope::Cluster)
        } else {
            let namespace = binding["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default();
            let scope = match namespace {
                "rota-system" => ROTA,
                "default" => EVENTS,
                other => bail!("a RoleBinding in namespace {other} the table does not know"),
            };
            let role = if role_ref["kind"] == "ClusterRole" {
                find("ClusterRole", None, role_name)
            } else {
                find("Role", Some(namespace), role_name)
            };
            (role, scope)
        };
        let role = role.with_context(|| format!("{role_ref} is not in deploy/"))?;
        for rule in role["rules"].as_array().into_iter().flatten() {
            let strings = |key: &str| -> Vec<String> {
                rule[key]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            };
            let mut names = strings("resourceNames");
            if names.is_empty() {
                names.push("*".to_owned());
            }
            for group in strings("apiGroups") {
                for resource in strings("resources") {
                    for name in &names {
                        for verb in strings("verbs") {
                            grants.insert((
                                scope,
                                group.clone(),
                                resource.clone(),
                                name.clone(),
                                verb,
                            ));
                        }
                    }
                }
            }
        }
    }
    Ok(grants)
}

#[test]
fn the_deployed_rbac_is_exactly_the_table() -> Result<()> {
    let docs = rendered()?;
    let deployed = rbac_grants(&docs, "rota-coordinator")?;
    let wanted = table_grants();
    let extra: Vec<_> = deployed.difference(&wanted).collect();
    let missing: Vec<_> = wanted.difference(&deployed).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "deploy/ grants the coordinator more than the table: {extra:#?}\nand lacks: {missing:#?}"
    );
    for access in COORDINATOR_API {
        assert!(
            !access.why.is_empty() && access.not_exercised.is_none_or(|why| !why.is_empty()),
            "every row says why"
        );
    }
    Ok(())
}

#[test]
fn the_agent_has_no_rbac_at_all() -> Result<()> {
    let docs = rendered()?;
    assert!(rbac_grants(&docs, "rota-agent")?.is_empty());
    for binding in docs
        .iter()
        .filter(|d| d["kind"] == "ClusterRoleBinding" || d["kind"] == "RoleBinding")
    {
        for subject in binding["subjects"].as_array().into_iter().flatten() {
            assert_ne!(subject["name"], "rota-agent", "{binding}");
        }
    }
    Ok(())
}

/// Resource types the coordinator could touch, by the Rust type (or helper) that touches them.
const KINDS: &[(&str, &str, &str)] = &[
    ("Node", "", "nodes"),
    ("Pod", "", "pods"),
    ("ConfigMap", "", "configmaps"),
    ("Secret", "", "secrets"),
    ("Service", "", "services"),
    ("ServiceAccount", "", "serviceaccounts"),
    ("Namespace", "", "namespaces"),
    ("Endpoints", "", "endpoints"),
    ("PersistentVolumeClaim", "", "persistentvolumeclaims"),
    ("PodDisruptionBudget", "policy", "poddisruptionbudgets"),
    ("DaemonSet", "apps", "daemonsets"),
    ("Deployment", "apps", "deployments"),
    ("ReplicaSet", "apps", "replicasets"),
    ("StatefulSet", "apps", "statefulsets"),
    ("Job", "batch", "jobs"),
    ("Lease", "coordination.k8s.io", "leases"),
    ("TokenReview", "authentication.k8s.io", "tokenreviews"),
    (
        "SubjectAccessReview",
        "authorization.k8s.io",
        "subjectaccessreviews",
    ),
    ("EndpointSlice", "discovery.k8s.io", "endpointslices"),
    // kube-runtime's event Recorder writes events.k8s.io Events.
    ("Recorder", "events.k8s.io", "events"),
    ("MaintenancePolicy", "rota.dev", "maintenancepolicies"),
    ("MaintenanceRecord", "rota.dev", "maintenancerecords"),
    (
        "CustomResourceDefinition",
        "apiextensions.k8s.io",
        "customresourcedefinitions",
    ),
];

/// `(group, resource)` of every API type the coordinator's non-test code names in an `Api<K>`,
/// `Api::<K>`, a turbofish `::<K, ..>` (watch helpers) or an event `Recorder`.
fn kinds_in_source() -> Result<BTreeMap<(String, String), BTreeSet<String>>> {
    let pattern = regex::Regex::new(
        r"Api\s*<\s*(\w+)\s*>|Api::<\s*(\w+)\s*>|::<\s*(\w+)\s*[,>]|\b(Recorder)\b",
    )?;
    let mut found: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    let mut files = Vec::new();
    collect_rs(&repo("coordinator/src"), &mut files)?;
    for file in files {
        let relative = file
            .strip_prefix(repo("coordinator/src"))?
            .to_string_lossy()
            .into_owned();
        // rotactl runs with its user's credentials, not the coordinator's service account.
        if relative.starts_with("rotactl") || relative.starts_with("bin/rotactl") {
            continue;
        }
        let text = std::fs::read_to_string(&file)?;
        // Unit tests sit at the end of a file, after `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for captures in pattern.captures_iter(code) {
            let Some(word) = (1..=4).find_map(|i| captures.get(i)).map(|m| m.as_str()) else {
                continue;
            };
            if let Some((_, group, resource)) = KINDS.iter().find(|(kind, ..)| *kind == word) {
                found
                    .entry(((*group).to_owned(), (*resource).to_owned()))
                    .or_default()
                    .insert(relative.clone());
            }
        }
    }
    Ok(found)
}

fn collect_rs(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_rs(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[test]
fn every_api_type_in_the_source_has_a_row_and_every_row_is_used() -> Result<()> {
    let in_source = kinds_in_source()?;
    let in_table: BTreeSet<(String, String)> = COORDINATOR_API
        .iter()
        .map(|a| {
            let base = a.resource.split('/').next().unwrap_or(a.resource);
            (a.group.to_owned(), base.to_owned())
        })
        .collect();
    for (resource, files) in &in_source {
        assert!(
            in_table.contains(resource),
            "{resource:?} is used in {files:?} but has no row in COORDINATOR_API (and so no RBAC)"
        );
    }
    for resource in &in_table {
        assert!(
            in_source.contains_key(resource),
            "COORDINATOR_API has a row for {resource:?}, which the coordinator no longer uses"
        );
    }
    Ok(())
}

/// Records every request a client sends: method and path with query.
#[derive(Clone, Default)]
struct Recorder {
    log: Arc<Mutex<Vec<(String, String)>>>,
}

impl<S> tower::Layer<S> for Recorder {
    type Service = Recording<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Recording {
            inner,
            log: self.log.clone(),
        }
    }
}

#[derive(Clone)]
struct Recording<S> {
    inner: S,
    log: Arc<Mutex<Vec<(String, String)>>>,
}

impl<S, B> tower::Service<http::Request<B>> for Recording<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request
            .uri()
            .path_and_query()
            .map_or_else(String::new, ToString::to_string);
        if let Ok(mut log) = self.log.lock() {
            log.push((request.method().to_string(), path));
        }
        self.inner.call(request)
    }
}

/// What a request asks of RBAC.
#[derive(Debug)]
struct Attributes {
    namespace: Option<String>,
    group: String,
    resource: String,
    name: Option<String>,
    verb: String,
}

/// RBAC attributes of a request, or `None` for a non-resource URL (discovery, `/version`).
fn attributes(method: &str, path_and_query: &str) -> Option<Attributes> {
    let (path, query) = path_and_query
        .split_once('?')
        .unwrap_or((path_and_query, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", _version, rest @ ..] if !rest.is_empty() => ("", rest),
        ["apis", group, _version, rest @ ..] if !rest.is_empty() => (*group, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [resource] => ((*resource).to_owned(), None),
        [resource, name] => ((*resource).to_owned(), Some((*name).to_owned())),
        [resource, name, sub] => (format!("{resource}/{sub}"), Some((*name).to_owned())),
        _ => return None,
    };
    let watching = query
        .split('&')
        .any(|p| p == "watch=true" || p == "watch=1");
    let verb = match (method, &name) {
        ("GET", Some(_)) => "get",
        ("GET", None) if watching => "watch",
        ("GET", None) => "list",
        ("POST", _) => "create",
        ("PUT", _) => "update",
        ("PATCH", _) => "patch",
        ("DELETE", Some(_)) => "delete",
        ("DELETE", None) => "deletecollection",
        _ => "unknown",
    };
    Some(Attributes {
        namespace,
        group: group.to_owned(),
        resource,
        name,
        verb: verb.to_owned(),
    })
}

/// The table rows (as grants) that allow a request; empty when none does.
fn allowing(request: &Attributes) -> Vec<Grant> {
    table_grants()
        .into_iter()
        .filter(|(scope, group, resource, name, verb)| {
            let in_scope = match scope {
                Scope::Cluster => true,
                Scope::Namespace(ns) => request.namespace.as_deref() == Some(*ns),
            };
            let named = name == "*"
                || (request.verb != "create" && request.name.as_deref() == Some(name.as_str()));
            in_scope
                && named
                && *group == request.group
                && *resource == request.resource
                && *verb == request.verb
        })
        .collect()
}

fn pdb(name: &str, app: &str) -> PodDisruptionBudget {
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(NS.into()),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            min_available: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some([("app".to_owned(), app.to_owned())].into()),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

#[tokio::test]
async fn every_request_of_a_real_run_is_in_the_table_and_every_row_is_used() -> Result<()> {
    const WITHIN: Duration = Duration::from_secs(20);
    let cluster = Cluster::start(true).await?;
    for node in ["a", "b"] {
        cluster.add_node(node, &[("pool", "workers")])?;
    }
    // A budget covers web-a (its other pod is on a node nobody maintains); api-b has none.
    cluster.add_node("c", &[])?;
    cluster.add_pod("web-a", "a", "web", 0)?;
    cluster.add_pod("web-c", "c", "web", 0)?;
    cluster.add_pod("api-b", "b", "api", 0)?;
    cluster.store.create_as(&pdb("web", "web"))?;
    cluster.create_policy("workers", spec("workers"))?;

    let recorder = Recorder::default();
    let build = |retry: bool| -> Result<kube::Client> {
        let mut config = cluster.kube_config()?;
        config.default_retry = retry;
        Ok(ClientBuilder::try_from(config)?
            .with_layer(&recorder)
            .build())
    };
    let clients = Clients {
        default: build(true)?,
        eviction: build(false)?,
    };
    // The coordinator as the binary configures it, with the Deployment's defaults.
    let config = Config::try_parse_from(["rota-coordinator", "--pod-name", "rota-coordinator-0"])?;
    let stop = CancellationToken::new();

    let tls_options = TlsOptions::default();
    tls::server_config(
        &tls_options,
        clients.default.clone(),
        &config.identity.namespace,
    )
    .await?;

    // Leader election as the binary runs it; the controller itself runs as the leader.
    let (elector, leadership) = LeaderElector::new(clients.default.clone(), config.election())?;
    let election = tokio::spawn(elector.run(stop.clone().cancelled_owned()));
    let mut settings = settings();
    settings.namespace = config.identity.namespace.clone();
    let running =
        Running::start_with(clients.clone(), settings, Arc::new(OffsetClock::default())).await?;

    // Two maintenances one after the other: the second one updates the fencing counter the
    // first one created.
    for (node, boot) in [("a", "a-boot-2"), ("b", "b-boot-2")] {
        running.report(node, &format!("{node}-boot-1")).await?;
        running.request(node, Operation::Reboot).await?;
        let token = running.wait_granted(node, WITHIN).await?;
        cluster.set_boot_id(node, boot)?;
        running.complete(node, token, true, Some(boot)).await?;
        running
            .wait_view(node, WITHIN, |v| v.state == NodeState::Done)
            .await?;
    }
    wait_until("the policy status", WITHIN, || {
        let status = cluster.policy("workers").ok()?.status?;
        (status.done == 2).then_some(())
    })
    .await?;
    wait_until("a renewal of the leader Lease", WITHIN, || {
        let renewed = leadership.is_leader()
            && recorder
                .log
                .lock()
                .ok()?
                .iter()
                .any(|(m, p)| m == "PUT" && p.contains("/leases/"));
        renewed.then_some(())
    })
    .await?;

    // An agent (a pod of the agents' DaemonSet) proves its node.
    cluster.store.create_as(&Pod {
        metadata: ObjectMeta {
            name: Some("rota-agent-a".into()),
            namespace: Some(SYSTEM_NS.into()),
            owner_references: Some(vec![OwnerReference {
                api_version: "apps/v1".into(),
                kind: "DaemonSet".into(),
                name: "rota-agent".into(),
                uid: "ds-uid".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(serde_json::from_value(json!({
            "nodeName": "a",
            "serviceAccountName": "rota-agent",
            "containers": [{"name": "agent", "image": "rota-agent"}]
        }))?),
        status: None,
    })?;
    let token = cluster.store.issue_service_account_token(
        SYSTEM_NS,
        "rota-agent-a",
        &config.agents.token_audience,
        Duration::from_secs(600),
    )?;
    let authenticator = TokenReviewAuthenticator::new(
        clients.default.clone(),
        config.agent_identity(),
        config.token_cache(),
    );
    let mut metadata = MetadataMap::new();
    metadata.insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}"))?,
    );
    let node = authenticator
        .authenticate(&metadata)
        .await
        .map_err(|e| anyhow::anyhow!("agent refused: {e:?}"))?;
    assert_eq!(node, "a");

    running.stop().await?;
    stop.cancel();
    election.await?;

    let log = recorder
        .log
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    let mut used = BTreeSet::new();
    let mut refused = Vec::new();
    for (method, path) in &log {
        let Some(request) = attributes(method, path) else {
            assert!(
                matches!(path.split('?').next(), Some("/version" | "/api" | "/apis")),
                "a non-resource request RBAC does not allow by default: {method} {path}"
            );
            continue;
        };
        let allowed = allowing(&request);
        if allowed.is_empty() {
            refused.push(format!("{method} {path} ({request:?})"));
        }
        used.extend(allowed);
    }
    assert!(
        refused.is_empty(),
        "requests the table (and so the deployed RBAC) does not allow:\n{}",
        refused.join("\n")
    );
    let rare: BTreeSet<Grant> = COORDINATOR_API
        .iter()
        .filter(|a| a.not_exercised.is_some())
        .flat_map(|a| {
            table_grants()
                .into_iter()
                .filter(move |(scope, group, resource, name, verb)| {
                    *scope == a.scope
                        && group == a.group
                        && resource == a.resource
                        && a.verbs.contains(&verb.as_str())
                        && (a.names.is_empty() || a.names.contains(&name.as_str()))
                })
        })
        .collect();
    let unused: Vec<_> = table_grants()
        .into_iter()
        .filter(|g| !used.contains(g) && !rare.contains(g))
        .collect();
    assert!(
        unused.is_empty(),
        "rows of the table the run never used (remove them, or say why the run cannot): {unused:#?}"
    );
    Ok(())
}

#[test]
fn request_attributes_follow_the_api_servers_rules() {
    let a = attributes("POST", "/api/v1/namespaces/shop/pods/web-1/eviction").unwrap();
    assert_eq!(
        (
            a.namespace.as_deref(),
            a.group.as_str(),
            a.resource.as_str(),
            a.verb.as_str()
        ),
        (Some("shop"), "", "pods/eviction", "create")
    );
    let w = attributes(
        "GET",
        "/apis/rota.dev/v1alpha1/maintenancepolicies?watch=true&resourceVersion=5",
    )
    .unwrap();
    assert_eq!(
        (w.resource.as_str(), w.verb.as_str()),
        ("maintenancepolicies", "watch")
    );
    let s = attributes(
        "PATCH",
        "/apis/rota.dev/v1alpha1/maintenancepolicies/w/status",
    )
    .unwrap();
    assert_eq!(
        (s.resource.as_str(), s.name.as_deref()),
        ("maintenancepolicies/status", Some("w"))
    );
    let l = attributes("GET", "/api/v1/nodes?limit=500").unwrap();
    assert_eq!(l.verb, "list");
    assert!(attributes("GET", "/version").is_none());
    assert!(attributes("GET", "/apis/events.k8s.io/v1").is_none());
    let lease = attributes(
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/rota-system/leases/rota-coordinator",
    )
    .unwrap();
    assert!(!allowing(&lease).is_empty());
    let other = attributes(
        "PUT",
        "/apis/coordination.k8s.io/v1/namespaces/rota-system/leases/someone-else",
    )
    .unwrap();
    assert!(allowing(&other).is_empty(), "names restrict updates");
    let secret = attributes("GET", "/api/v1/namespaces/kube-system/secrets/x").unwrap();
    assert!(
        allowing(&secret).is_empty(),
        "no Secret outside rota-system"
    );
}
