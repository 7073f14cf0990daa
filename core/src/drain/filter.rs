//! Which pods a drain evicts, skips, or refuses to touch: `kubectl drain --ignore-daemonsets`
//! semantics (upstream `staging/src/k8s.io/kubectl/pkg/drain/filters.go`), as a pure function.
//!
//! The filters run in kubectl's order and the first one that does not let a pod through decides:
//! 1. deleted longer ago than the skip-wait-for-delete timeout → skip;
//! 2. owned by a DaemonSet → skip (its controller would recreate it on the cordoned node anyway);
//! 3. a mirror pod (`kubernetes.io/config.mirror`) → skip (the kubelet owns it, the API cannot
//!    delete it);
//! 4. an emptyDir volume → blocking error unless `delete_empty_dir_data` (its data would be lost);
//! 5. no controller → blocking error unless `force` (nothing would recreate it).
//!
//! Finished pods (Succeeded/Failed) pass rules 4 and 5: nothing of value is lost by deleting
//! them, and the API server deletes them without consulting any budget.
//!
//! On top of kubectl, a pod the API server would check against two or more budgets is a blocking
//! error up front: the eviction subresource refuses such pods with a 500, and finding that out
//! before the first eviction keeps a drain that cannot finish from disrupting anything.

use std::collections::BTreeMap;
use std::fmt;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Pod;
use kube_core::SelectorExt;
use serde::Serialize;

use super::pdb::{PdbIndex, PdbRef};
use super::{DrainSpec, PodRef};

/// The annotation the kubelet puts on the API mirror of a static pod.
pub const MIRROR_POD_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Why a pod is left on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum SkipReason {
    /// Its deletion started longer ago than the skip-wait-for-delete timeout.
    AlreadyDeleted {
        /// Its `deletionTimestamp`.
        since: Timestamp,
    },
    /// It is owned by this DaemonSet.
    DaemonSet {
        /// The DaemonSet's name.
        name: String,
    },
    /// It is the API mirror of a static pod.
    MirrorPod,
    /// It does not match the drain's pod selector.
    NotSelected,
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SkipReason::AlreadyDeleted { since } => {
                write!(f, "already being deleted since {since}")
            }
            SkipReason::DaemonSet { name } => write!(f, "managed by DaemonSet {name}"),
            SkipReason::MirrorPod => f.write_str("mirror pod of a static pod"),
            SkipReason::NotSelected => f.write_str("not matched by the drain's pod selector"),
        }
    }
}

/// A pod left on the node, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SkippedPod {
    /// The pod.
    pub pod: PodRef,
    /// Why it is left alone.
    pub reason: SkipReason,
}

/// Why a drain refuses to start.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum RefusalReason {
    /// The pod uses emptyDir volumes and the policy does not allow deleting their data.
    LocalStorage {
        /// Names of its emptyDir volumes.
        volumes: Vec<String>,
    },
    /// No controller would recreate the pod and the policy does not force its deletion.
    NoController,
    /// More than one budget covers the pod; the eviction API cannot evict it.
    MultiplePdbs {
        /// The budgets covering it.
        pdbs: Vec<PdbRef>,
    },
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefusalReason::LocalStorage { volumes } => write!(
                f,
                "cannot delete Pods with local storage (emptyDir {}) unless deleteEmptyDirData is set",
                volumes.join(", ")
            ),
            RefusalReason::NoController => {
                f.write_str("cannot delete Pods that declare no controller unless force is set")
            }
            RefusalReason::MultiplePdbs { pdbs } => {
                let names: Vec<String> = pdbs.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support ({})",
                    names.join(", ")
                )
            }
        }
    }
}

/// A pod that keeps the drain from starting, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PodRefusal {
    /// The pod.
    pub pod: PodRef,
    /// Why it cannot be evicted.
    pub reason: RefusalReason,
}

impl fmt::Display for PodRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.pod, self.reason)
    }
}

/// What evicting a pod costs beyond the pod itself (kubectl prints these as warnings).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum EvictionWarning {
    /// Its emptyDir data is lost.
    DeletesLocalStorage,
    /// Nothing recreates it.
    NoController,
}

/// A pod the drain evicts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodToEvict {
    /// The pod.
    pub pod: PodRef,
    /// Its labels, to find the budgets covering it.
    pub labels: BTreeMap<String, String>,
    /// Succeeded or Failed: the API server deletes it without a budget check.
    pub terminal: bool,
    /// What is lost with it.
    pub warnings: Vec<EvictionWarning>,
}

/// What a drain does with a node's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrainPlan {
    /// Pods to evict.
    pub evict: Vec<PodToEvict>,
    /// Pods left on the node.
    pub skipped: Vec<SkippedPod>,
    /// Pods that keep the drain from starting. When not empty, nothing is evicted.
    pub refusals: Vec<PodRefusal>,
}

/// The verdict of the filters on one pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Evict it.
    Evict {
        /// Succeeded or Failed.
        terminal: bool,
        /// What is lost with it.
        warnings: Vec<EvictionWarning>,
    },
    /// Leave it.
    Skip(SkipReason),
    /// Refuse to drain because of it.
    Refuse(RefusalReason),
}

/// Classifies a node's pods for a drain.
///
/// `pdbs` are the cluster's budgets (for the more-than-one-budget check); `now` is the caller's
/// clock, compared with deletion timestamps.
pub fn plan(pods: &[Pod], pdbs: &PdbIndex, spec: &DrainSpec, now: Timestamp) -> DrainPlan {
    let mut plan = DrainPlan::default();
    for pod in pods {
        let pod_ref = PodRef::of(pod);
        match classify(pod, pdbs, spec, now) {
            Verdict::Evict { terminal, warnings } => plan.evict.push(PodToEvict {
                pod: pod_ref,
                labels: pod.metadata.labels.clone().unwrap_or_default(),
                terminal,
                warnings,
            }),
            Verdict::Skip(reason) => plan.skipped.push(SkippedPod {
                pod: pod_ref,
                reason,
            }),
            Verdict::Refuse(reason) => plan.refusals.push(PodRefusal {
                pod: pod_ref,
                reason,
            }),
        }
    }
    plan
}

/// Runs the filters on one pod.
pub fn classify(pod: &Pod, pdbs: &PdbIndex, spec: &DrainSpec, now: Timestamp) -> Verdict {
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    if let Some(selector) = &spec.pod_selector
        && !selector.matches(&labels)
    {
        return Verdict::Skip(SkipReason::NotSelected);
    }

    let deleted_at = pod.metadata.deletion_timestamp.as_ref().map(|t| t.0);
    if let (Some(since), Some(timeout)) = (deleted_at, spec.skip_wait_for_delete_timeout) {
        // kubectl: a timeout of 0 disables the rule; so does one too large to represent.
        if let Ok(timeout) = SignedDuration::try_from(timeout)
            && !timeout.is_zero()
            && now.duration_since(since) > timeout
        {
            return Verdict::Skip(SkipReason::AlreadyDeleted { since });
        }
    }

    let controller = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|owner| owner.controller == Some(true));
    if let Some(owner) = controller
        && owner.kind == "DaemonSet"
    {
        return Verdict::Skip(SkipReason::DaemonSet {
            name: owner.name.clone(),
        });
    }

    if pod
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|annotations| annotations.contains_key(MIRROR_POD_ANNOTATION))
    {
        return Verdict::Skip(SkipReason::MirrorPod);
    }

    let phase = pod
        .status
        .as_ref()
        .and_then(|status| status.phase.as_deref());
    let terminal = matches!(phase, Some("Succeeded" | "Failed"));
    let mut warnings = Vec::new();

    if !terminal {
        let empty_dirs: Vec<String> = pod
            .spec
            .iter()
            .flat_map(|spec| spec.volumes.iter().flatten())
            .filter(|volume| volume.empty_dir.is_some())
            .map(|volume| volume.name.clone())
            .collect();
        if !empty_dirs.is_empty() {
            if !spec.delete_empty_dir_data {
                return Verdict::Refuse(RefusalReason::LocalStorage {
                    volumes: empty_dirs,
                });
            }
            warnings.push(EvictionWarning::DeletesLocalStorage);
        }

        if controller.is_none() {
            if !spec.force {
                return Verdict::Refuse(RefusalReason::NoController);
            }
            warnings.push(EvictionWarning::NoController);
        }
    }

    // The API server checks budgets only for running pods that are not terminating yet; for the
    // others it deletes the pod outright, so several budgets do not matter there.
    let budget_checked = !terminal && phase != Some("Pending") && deleted_at.is_none();
    if budget_checked {
        let covering = pdbs.covering(
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            &labels,
        );
        if covering.len() > 1 {
            return Verdict::Refuse(RefusalReason::MultiplePdbs { pdbs: covering });
        }
    }

    Verdict::Evict { terminal, warnings }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use k8s_openapi::api::core::v1::{EmptyDirVolumeSource, PodSpec, PodStatus, Volume};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
    use kube_core::{Expression, Selector};

    use super::super::pdb::tests::{labels, match_labels, pdb};
    use super::*;

    fn now() -> Timestamp {
        "2025-06-01T12:00:00Z".parse().unwrap()
    }

    /// A running pod owned by a ReplicaSet, in namespace `a`, labelled `app=web`.
    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                namespace: Some("a".into()),
                name: Some("p".into()),
                uid: Some("uid-p".into()),
                labels: Some(labels(&[("app", "web")])),
                owner_references: Some(vec![owner("ReplicaSet", "web-1", true)]),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec::default()),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                ..PodStatus::default()
            }),
        }
    }

    fn owner(kind: &str, name: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: kind.into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    fn with_owners(owners: Vec<OwnerReference>) -> impl Fn(&mut Pod) {
        move |p: &mut Pod| p.metadata.owner_references = Some(owners.clone())
    }

    fn bare(p: &mut Pod) {
        p.metadata.owner_references = None;
    }

    fn phase(value: &'static str) -> impl Fn(&mut Pod) {
        move |p: &mut Pod| p.status.as_mut().unwrap().phase = Some(value.into())
    }

    fn empty_dir(p: &mut Pod) {
        p.spec.as_mut().unwrap().volumes = Some(vec![
            Volume {
                name: "scratch".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Volume::default()
            },
            Volume {
                name: "config".into(),
                ..Volume::default()
            },
        ]);
    }

    fn mirror(p: &mut Pod) {
        p.metadata.annotations = Some(labels(&[(MIRROR_POD_ANNOTATION, "hash")]));
    }

    fn deleted_ago(secs: i64) -> impl Fn(&mut Pod) {
        move |p: &mut Pod| {
            p.metadata.deletion_timestamp = Some(Time(now() - SignedDuration::from_secs(secs)));
        }
    }

    fn spec() -> DrainSpec {
        DrainSpec::default()
    }

    fn evict(warnings: Vec<EvictionWarning>) -> Verdict {
        Verdict::Evict {
            terminal: false,
            warnings,
        }
    }

    fn terminal() -> Verdict {
        Verdict::Evict {
            terminal: true,
            warnings: vec![],
        }
    }

    type Edit = Box<dyn Fn(&mut Pod)>;

    #[test]
    fn kubectl_filter_table() {
        let two_pdbs = PdbIndex::from_objects([
            &pdb("a", "one", match_labels(&[("app", "web")]), 1),
            &pdb("a", "two", match_labels(&[("app", "web")]), 1),
        ]);
        let one_pdb =
            PdbIndex::from_objects([&pdb("a", "one", match_labels(&[("app", "web")]), 0)]);
        let none = PdbIndex::default();
        let skip_wait = DrainSpec {
            skip_wait_for_delete_timeout: Some(Duration::from_secs(60)),
            ..spec()
        };
        let forced = DrainSpec {
            force: true,
            ..spec()
        };
        let delete_data = DrainSpec {
            delete_empty_dir_data: true,
            ..spec()
        };
        let both = DrainSpec {
            force: true,
            delete_empty_dir_data: true,
            ..spec()
        };
        let selecting = |selector: Selector| DrainSpec {
            pod_selector: Some(selector),
            ..spec()
        };
        let no_edit: Edit = Box::new(|_| {});
        let local = || RefusalReason::LocalStorage {
            volumes: vec!["scratch".into()],
        };

        // (case, pod edit, spec, budgets, expected verdict)
        let cases: Vec<(&str, Edit, DrainSpec, &PdbIndex, Verdict)> = vec![
            (
                "replicated running pod",
                Box::new(|_| {}),
                spec(),
                &none,
                evict(vec![]),
            ),
            (
                "under one budget allowing 0: evicted (the API decides)",
                Box::new(|_| {}),
                spec(),
                &one_pdb,
                evict(vec![]),
            ),
            (
                "DaemonSet-owned",
                Box::new(with_owners(vec![owner("DaemonSet", "ds", true)])),
                spec(),
                &none,
                Verdict::Skip(SkipReason::DaemonSet { name: "ds".into() }),
            ),
            (
                "DaemonSet owner that is not the controller",
                Box::new(with_owners(vec![owner("DaemonSet", "ds", false)])),
                spec(),
                &none,
                Verdict::Refuse(RefusalReason::NoController),
            ),
            (
                "DaemonSet wins over emptyDir and no-controller rules",
                Box::new(|p: &mut Pod| {
                    with_owners(vec![owner("DaemonSet", "ds", true)])(p);
                    empty_dir(p)
                }),
                spec(),
                &none,
                Verdict::Skip(SkipReason::DaemonSet { name: "ds".into() }),
            ),
            (
                "mirror pod",
                Box::new(|p: &mut Pod| {
                    bare(p);
                    mirror(p)
                }),
                spec(),
                &none,
                Verdict::Skip(SkipReason::MirrorPod),
            ),
            (
                "mirror pod even with force",
                Box::new(|p: &mut Pod| {
                    bare(p);
                    mirror(p)
                }),
                forced.clone(),
                &none,
                Verdict::Skip(SkipReason::MirrorPod),
            ),
            (
                "emptyDir refused",
                Box::new(empty_dir),
                spec(),
                &none,
                Verdict::Refuse(local()),
            ),
            (
                "emptyDir with deleteEmptyDirData",
                Box::new(empty_dir),
                delete_data.clone(),
                &none,
                evict(vec![EvictionWarning::DeletesLocalStorage]),
            ),
            (
                "emptyDir rule comes before the controller rule",
                Box::new(|p: &mut Pod| {
                    bare(p);
                    empty_dir(p)
                }),
                spec(),
                &none,
                Verdict::Refuse(local()),
            ),
            (
                "bare emptyDir pod with deleteEmptyDirData only",
                Box::new(|p: &mut Pod| {
                    bare(p);
                    empty_dir(p)
                }),
                delete_data.clone(),
                &none,
                Verdict::Refuse(RefusalReason::NoController),
            ),
            (
                "bare emptyDir pod with both",
                Box::new(|p: &mut Pod| {
                    bare(p);
                    empty_dir(p)
                }),
                both,
                &none,
                evict(vec![
                    EvictionWarning::DeletesLocalStorage,
                    EvictionWarning::NoController,
                ]),
            ),
            (
                "bare pod refused",
                Box::new(bare),
                spec(),
                &none,
                Verdict::Refuse(RefusalReason::NoController),
            ),
            (
                "bare pod with force",
                Box::new(bare),
                forced.clone(),
                &none,
                evict(vec![EvictionWarning::NoController]),
            ),
            (
                "owner that is not a controller counts as none",
                Box::new(with_owners(vec![owner("ReplicaSet", "rs", false)])),
                spec(),
                &none,
                Verdict::Refuse(RefusalReason::NoController),
            ),
            (
                "succeeded bare pod",
                Box::new(|p: &mut Pod| {
                    bare(p);
                    phase("Succeeded")(p)
                }),
                spec(),
                &none,
                terminal(),
            ),
            (
                "failed emptyDir pod",
                Box::new(|p: &mut Pod| {
                    empty_dir(p);
                    phase("Failed")(p)
                }),
                spec(),
                &none,
                terminal(),
            ),
            (
                "terminal pod under two budgets",
                Box::new(phase("Succeeded")),
                spec(),
                &two_pdbs,
                terminal(),
            ),
            (
                "two budgets refused",
                Box::new(|_| {}),
                spec(),
                &two_pdbs,
                Verdict::Refuse(RefusalReason::MultiplePdbs {
                    pdbs: vec![
                        PdbRef {
                            namespace: "a".into(),
                            name: "one".into(),
                        },
                        PdbRef {
                            namespace: "a".into(),
                            name: "two".into(),
                        },
                    ],
                }),
            ),
            (
                "pending pod under two budgets",
                Box::new(phase("Pending")),
                spec(),
                &two_pdbs,
                evict(vec![]),
            ),
            (
                "terminating pod under two budgets",
                Box::new(deleted_ago(5)),
                spec(),
                &two_pdbs,
                evict(vec![]),
            ),
            (
                "deleted long ago",
                Box::new(deleted_ago(61)),
                skip_wait.clone(),
                &none,
                Verdict::Skip(SkipReason::AlreadyDeleted {
                    since: now() - SignedDuration::from_secs(61),
                }),
            ),
            (
                "deleted long ago wins over DaemonSet",
                Box::new(|p: &mut Pod| {
                    deleted_ago(61)(p);
                    with_owners(vec![owner("DaemonSet", "ds", true)])(p)
                }),
                skip_wait.clone(),
                &none,
                Verdict::Skip(SkipReason::AlreadyDeleted {
                    since: now() - SignedDuration::from_secs(61),
                }),
            ),
            (
                "deleted recently: still waited for",
                Box::new(deleted_ago(59)),
                skip_wait.clone(),
                &none,
                evict(vec![]),
            ),
            (
                "deleted long ago without a skip timeout",
                Box::new(deleted_ago(3600)),
                spec(),
                &none,
                evict(vec![]),
            ),
            (
                "skip timeout 0 disables the rule",
                Box::new(deleted_ago(3600)),
                DrainSpec {
                    skip_wait_for_delete_timeout: Some(Duration::ZERO),
                    ..spec()
                },
                &none,
                evict(vec![]),
            ),
            (
                "pod selector matches",
                Box::new(|_| {}),
                selecting(Expression::Equal("app".into(), "web".into()).into()),
                &none,
                evict(vec![]),
            ),
            (
                "pod selector does not match",
                Box::new(|_| {}),
                selecting(Expression::Equal("app".into(), "db".into()).into()),
                &none,
                Verdict::Skip(SkipReason::NotSelected),
            ),
            (
                "unselected bare pod is not an error",
                Box::new(bare),
                selecting(Expression::Exists("other".into()).into()),
                &none,
                Verdict::Skip(SkipReason::NotSelected),
            ),
            ("no edit", no_edit, spec(), &none, evict(vec![])),
        ];
        for (case, edit, spec, pdbs, want) in cases {
            let mut p = pod();
            edit(&mut p);
            assert_eq!(classify(&p, pdbs, &spec, now()), want, "{case}");
        }
    }

    #[test]
    fn plan_sorts_pods_into_evict_skip_refuse() {
        let mut ds = pod();
        ds.metadata.name = Some("ds".into());
        with_owners(vec![owner("DaemonSet", "ds", true)])(&mut ds);
        let mut bare_pod = pod();
        bare_pod.metadata.name = Some("bare".into());
        bare(&mut bare_pod);
        let mut done = pod();
        done.metadata.name = Some("done".into());
        phase("Succeeded")(&mut done);

        let plan = plan(
            &[pod(), ds, bare_pod, done],
            &PdbIndex::default(),
            &spec(),
            now(),
        );
        let names =
            |refs: Vec<&PodRef>| refs.into_iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(
            names(plan.evict.iter().map(|e| &e.pod).collect()),
            ["p", "done"]
        );
        assert!(plan.evict[1].terminal);
        assert_eq!(plan.evict[0].labels, labels(&[("app", "web")]));
        assert_eq!(names(plan.skipped.iter().map(|s| &s.pod).collect()), ["ds"]);
        assert_eq!(
            names(plan.refusals.iter().map(|r| &r.pod).collect()),
            ["bare"]
        );
        assert_eq!(
            plan.refusals[0].to_string(),
            "a/bare: cannot delete Pods that declare no controller unless force is set"
        );
    }
}
