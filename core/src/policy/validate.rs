//! From what a user wrote ([`MaintenancePolicySpec`]) to what the coordinator can act on
//! ([`ValidatedPolicy`]), or a list of every problem with its field path.

use std::fmt;
use std::str::FromStr;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use regex::Regex;

use super::crd::{
    BackoffSpec, BlockersSpec, DrainSpec, EtcdSpec, HealthSpec, MaintenancePolicySpec,
    MaintenanceWindow, RebootMode, RebootSpec, UpgradeMode, UpgradeSpec, Weekday,
};
use super::selector::Selector;
use super::version::KubeVersion;
use super::window::{self, BlackoutPeriod, Window, WindowState};
use crate::model::EtcdSnapshotPolicy;

/// One problem in a spec: where (`spec.windows[0].start`) and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct PolicyError {
    /// Field path from the object root, e.g. `spec.drain.timeout`.
    pub field: String,
    /// Why the value is rejected, with the value itself.
    pub message: String,
}

/// A namespaced object's name, rendered `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamespacedName {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

impl NamespacedName {
    /// From its parts.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// Most nodes of a pool unavailable at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaxUnavailable {
    /// A fixed count (at least 1).
    Count(u32),
    /// A percentage (1 to 100) of the pool's nodes.
    Percent(u32),
}

impl MaxUnavailable {
    /// The limit for a pool of `pool_size` nodes. A percentage is rounded down but never below 1,
    /// so that every pool can make progress: 25% of 10 nodes is 2, 10% of 5 nodes is 1.
    pub fn resolve(self, pool_size: usize) -> u32 {
        match self {
            MaxUnavailable::Count(n) => n.max(1),
            MaxUnavailable::Percent(p) => {
                let scaled = (pool_size as u64).saturating_mul(u64::from(p)) / 100;
                u32::try_from(scaled).unwrap_or(u32::MAX).max(1)
            }
        }
    }
}

impl fmt::Display for MaxUnavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MaxUnavailable::Count(n) => write!(f, "{n}"),
            MaxUnavailable::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// What the agents upgrade, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// Which package upgrades.
    pub mode: UpgradeMode,
    /// Held packages.
    pub holds: Vec<String>,
    /// Target kubelet version.
    pub kubernetes_version: Option<KubeVersion>,
}

/// Reboot settings, checked. What the policy leaves unset stays unset: the agents' own
/// settings (their flags) apply there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reboot {
    /// Whether nodes reboot.
    pub mode: RebootMode,
    /// Absolute host paths whose existence means a reboot is required; `None`: the agent's own
    /// (an empty list turns sentinel files off).
    pub sentinel_files: Option<Vec<String>>,
    /// Host command (argv) whose exit status 0 means a reboot is required; empty: the agent's
    /// own.
    pub sentinel_command: Vec<String>,
    /// Reboot command (argv); empty: the agent's own.
    pub command: Vec<String>,
}

/// Exponential back-off after a drain that could not finish.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay (positive).
    pub initial: SignedDuration,
    /// The longest delay (at least `initial`).
    pub max: SignedDuration,
}

impl Backoff {
    /// Delay before retry number `attempt` (0 for the first retry): `initial * 2^attempt`,
    /// capped at `max`.
    pub fn delay(self, attempt: u32) -> SignedDuration {
        let factor = 2_i32.checked_pow(attempt.min(30)).unwrap_or(i32::MAX);
        self.initial
            .checked_mul(factor)
            .map_or(self.max, |d| d.min(self.max))
    }
}

/// Drain settings with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drain {
    /// How long a drain may take (positive).
    pub timeout: SignedDuration,
    /// Grace period for evicted pods; `None` uses each pod's own.
    pub grace_period_seconds: Option<i64>,
    /// Evict pods with emptyDir volumes.
    pub delete_empty_dir_data: bool,
    /// Delete unmanaged pods.
    pub force: bool,
    /// Pods to evict (everything by default).
    pub pod_selector: Selector,
    /// Back-off after an unfinished drain.
    pub backoff: Backoff,
}

/// Which firing alerts block.
#[derive(Clone, Debug)]
pub struct AlertFilter {
    regex: Option<Regex>,
    match_only: bool,
}

impl AlertFilter {
    /// Whether a firing alert with this name blocks maintenance.
    pub fn blocks(&self, alert_name: &str) -> bool {
        match &self.regex {
            None => true,
            Some(re) => re.is_match(alert_name) == self.match_only,
        }
    }
}

/// Where blocking alerts come from.
#[derive(Clone, Debug)]
pub struct AlertSource {
    /// Prometheus base URL (http or https).
    pub url: String,
    /// Which alerts block.
    pub filter: AlertFilter,
}

/// Blockers, checked.
#[derive(Clone, Debug, Default)]
pub struct Blockers {
    /// Prometheus alerts, if configured.
    pub prometheus: Option<AlertSource>,
    /// A pod matching any of these on a node blocks that node.
    pub pod_selectors: Vec<Selector>,
}

impl Blockers {
    /// Whether a pod with these labels blocks maintenance of its node.
    pub fn blocks_pod(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        self.pod_selectors.iter().any(|s| s.matches(labels))
    }
}

/// Health check settings with defaults applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Health {
    /// How long a node may take to be healthy after maintenance (positive).
    pub ready_timeout: SignedDuration,
    /// DaemonSets whose pod on the node must be Ready.
    pub required_daemon_sets: Vec<NamespacedName>,
}

/// A policy the coordinator can act on: every field checked, defaults applied, strings parsed.
#[derive(Clone, Debug)]
pub struct ValidatedPolicy {
    /// Nodes of the pool.
    pub node_selector: Selector,
    /// Most unavailable nodes at once.
    pub max_unavailable: MaxUnavailable,
    /// Maintenance windows; empty means always open.
    pub windows: Vec<Window>,
    /// Blackout periods.
    pub blackouts: Vec<BlackoutPeriod>,
    /// Rollout paused by a human.
    pub paused: bool,
    /// Upgrade settings.
    pub upgrade: Upgrade,
    /// Reboot settings.
    pub reboot: Reboot,
    /// Drain settings.
    pub drain: Drain,
    /// Blockers.
    pub blockers: Blockers,
    /// Health check settings.
    pub health: Health,
    /// Failures that open the circuit breaker; 0: the breaker is off.
    pub max_failures: u32,
    /// The control-plane quorum guard.
    pub control_plane: ControlPlane,
    /// FleetLock ids of the pool's hosts that are not Kubernetes nodes, normalized
    /// ([`crate::fleetlock::normalize_id`]), without repeats.
    pub fleetlock_hosts: Vec<String>,
    /// Snapshots of stacked etcd members before maintenance.
    pub etcd: EtcdSnapshotPolicy,
}

/// The control-plane quorum guard's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlPlane {
    /// Most control-plane nodes unavailable at once in the whole cluster (at least 1).
    pub max_unavailable: u32,
    /// A member of an etcd with fewer than three members may be maintained.
    pub allow_etcd_quorum_loss: bool,
}

impl Default for ControlPlane {
    fn default() -> Self {
        ControlPlane {
            max_unavailable: DEFAULT_CONTROL_PLANE_MAX_UNAVAILABLE,
            allow_etcd_quorum_loss: false,
        }
    }
}

impl ValidatedPolicy {
    /// Whether the policy's windows and blackouts allow maintenance to start at `now`.
    pub fn window_state(&self, now: Timestamp) -> WindowState {
        window::is_open(&self.windows, &self.blackouts, now)
    }
}

impl ValidatedPolicy {
    /// Whether `failures` failed nodes open the circuit breaker (pause the pool).
    pub fn circuit_open(&self, failures: u32) -> bool {
        self.max_failures > 0 && failures >= self.max_failures
    }
}

/// Default drain timeout.
pub const DEFAULT_DRAIN_TIMEOUT: SignedDuration = SignedDuration::from_mins(15);
/// Default post-maintenance readiness timeout.
pub const DEFAULT_READY_TIMEOUT: SignedDuration = SignedDuration::from_mins(15);
/// Default first back-off delay.
pub const DEFAULT_BACKOFF_INITIAL: SignedDuration = SignedDuration::from_mins(1);
/// Default longest back-off delay.
pub const DEFAULT_BACKOFF_MAX: SignedDuration = SignedDuration::from_mins(30);
/// Default `controlPlane.maxUnavailable`: with the three stacked etcd members of a usual kubeadm
/// control plane, one down keeps quorum; two down lose it.
pub const DEFAULT_CONTROL_PLANE_MAX_UNAVAILABLE: u32 = 1;

/// Checks a spec. Returns the policy, or every problem found (not just the first), each with its
/// field path, so that one `kubectl apply` round trip is enough to fix them all.
pub fn validate(spec: &MaintenancePolicySpec) -> Result<ValidatedPolicy, Vec<PolicyError>> {
    let mut v = Validator::default();
    let node_selector = v.selector(&spec.node_selector, "spec.nodeSelector");
    let max_unavailable = v.max_unavailable(spec.max_unavailable.as_ref());
    let windows = spec
        .windows
        .iter()
        .enumerate()
        .filter_map(|(i, w)| v.window(w, &format!("spec.windows[{i}]")))
        .collect();
    let blackouts = spec
        .blackouts
        .iter()
        .enumerate()
        .filter_map(|(i, b)| {
            let field = format!("spec.blackouts[{i}]");
            let start = v.timestamp(&b.start, &format!("{field}.start"));
            let end = v.timestamp(&b.end, &format!("{field}.end"));
            let (start, end) = (start?, end?);
            if end <= start {
                v.error(
                    format!("{field}.end"),
                    format!("end {} must be after start {}", b.end, b.start),
                );
                return None;
            }
            Some(BlackoutPeriod {
                start,
                end,
                reason: b.reason.clone(),
            })
        })
        .collect();
    let upgrade = v.upgrade(&spec.upgrade);
    let reboot = v.reboot(&spec.reboot);
    let drain = v.drain(&spec.drain);
    let blockers = v.blockers(&spec.blockers);
    let health = v.health(&spec.health);
    let max_failures = match u32::try_from(spec.max_failures) {
        Ok(n) => n,
        Err(_) => {
            v.error(
                "spec.maxFailures",
                format!(
                    "{} is negative; use 0 to turn the circuit breaker off",
                    spec.max_failures
                ),
            );
            0
        }
    };
    let max_unavailable_control_plane = match spec.control_plane.max_unavailable {
        None => DEFAULT_CONTROL_PLANE_MAX_UNAVAILABLE,
        Some(n) if n >= 1 => n.unsigned_abs(),
        Some(n) => {
            v.error(
                "spec.controlPlane.maxUnavailable",
                format!("{n} is not a count of at least 1"),
            );
            DEFAULT_CONTROL_PLANE_MAX_UNAVAILABLE
        }
    };
    let mut fleetlock_hosts: Vec<String> = Vec::new();
    for (i, host) in spec.fleet_lock.hosts.iter().enumerate() {
        let field = format!("spec.fleetLock.hosts[{i}]");
        match crate::fleetlock::check_id(host) {
            Err(problem) => v.error(field, problem),
            Ok(()) => {
                let id = crate::fleetlock::normalize_id(host);
                if fleetlock_hosts.contains(&id) {
                    v.error(field, format!("{host:?} is listed twice"));
                } else {
                    fleetlock_hosts.push(id);
                }
            }
        }
    }
    let etcd = v.etcd(&spec.etcd);
    match (node_selector, max_unavailable, drain, health, etcd) {
        (Some(node_selector), Some(max_unavailable), Some(drain), Some(health), Some(etcd))
            if v.errors.is_empty() =>
        {
            Ok(ValidatedPolicy {
                node_selector,
                max_unavailable,
                windows,
                blackouts,
                paused: spec.paused,
                upgrade,
                reboot,
                drain,
                blockers,
                health,
                max_failures,
                control_plane: ControlPlane {
                    max_unavailable: max_unavailable_control_plane,
                    allow_etcd_quorum_loss: spec.control_plane.allow_etcd_quorum_loss,
                },
                fleetlock_hosts,
                etcd,
            })
        }
        _ => Err(v.errors),
    }
}

#[derive(Default)]
struct Validator {
    errors: Vec<PolicyError>,
}

impl Validator {
    fn error(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.errors.push(PolicyError {
            field: field.into(),
            message: message.into(),
        });
    }

    fn selector(&mut self, selector: &LabelSelector, field: &str) -> Option<Selector> {
        match Selector::parse(selector) {
            Ok(s) => Some(s),
            Err(problems) => {
                for p in problems {
                    self.error(format!("{field}.{}", p.field), p.message);
                }
                None
            }
        }
    }

    fn max_unavailable(&mut self, value: Option<&IntOrString>) -> Option<MaxUnavailable> {
        const FIELD: &str = "spec.maxUnavailable";
        let Some(value) = value else {
            return Some(MaxUnavailable::Count(1));
        };
        match value {
            IntOrString::Int(n) if *n >= 1 => u32::try_from(*n).ok().map(MaxUnavailable::Count),
            IntOrString::Int(n) => {
                self.error(
                    FIELD,
                    format!("{n} must be at least 1 (use paused: true to stop maintenance)"),
                );
                None
            }
            IntOrString::String(s) => {
                let percent = s
                    .strip_suffix('%')
                    .filter(|digits| {
                        !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
                    })
                    .and_then(|digits| digits.parse::<u32>().ok());
                match percent {
                    Some(p) if (1..=100).contains(&p) => Some(MaxUnavailable::Percent(p)),
                    Some(p) => {
                        self.error(FIELD, format!("{p}% must be between 1% and 100%"));
                        None
                    }
                    None => {
                        self.error(
                            FIELD,
                            format!("{s:?} is neither an integer nor a percentage like \"25%\""),
                        );
                        None
                    }
                }
            }
        }
    }

    fn window(&mut self, w: &MaintenanceWindow, field: &str) -> Option<Window> {
        let start = self.clock_time(&w.start, &format!("{field}.start"));
        let end = self.clock_time(&w.end, &format!("{field}.end"));
        let zone_name = w.time_zone.as_deref().unwrap_or("UTC");
        let tz = match TimeZone::get(zone_name) {
            Ok(tz) => Some(tz),
            Err(_) => {
                self.error(
                    format!("{field}.timeZone"),
                    format!(
                        "unknown time zone {zone_name:?} (use an IANA name like Europe/Berlin)"
                    ),
                );
                None
            }
        };
        let (start, end, tz) = (start?, end?, tz?);
        if start == end {
            self.error(
                format!("{field}.end"),
                format!(
                    "end equals start ({}); a window must have a length (omit windows to allow \
                     any time)",
                    w.start
                ),
            );
            return None;
        }
        let days = w.days.iter().copied().map(weekday).collect();
        Some(Window::new(days, start, end, tz, zone_name.to_owned()))
    }

    fn clock_time(&mut self, text: &str, field: &str) -> Option<Time> {
        let parsed = text.split_once(':').and_then(|(h, m)| {
            let digits = |s: &str, max_len| {
                !s.is_empty() && s.len() <= max_len && s.bytes().all(|b| b.is_ascii_digit())
            };
            if !digits(h, 2) || !digits(m, 2) || m.len() != 2 {
                return None;
            }
            let (h, m) = (h.parse::<i8>().ok()?, m.parse::<i8>().ok()?);
            Time::new(h, m, 0, 0).ok()
        });
        if parsed.is_none() {
            self.error(
                field,
                format!("{text:?} is not a time of day HH:MM (00:00 to 23:59)"),
            );
        }
        parsed
    }

    fn timestamp(&mut self, text: &str, field: &str) -> Option<jiff::Timestamp> {
        match jiff::Timestamp::from_str(text) {
            Ok(t) => Some(t),
            Err(_) => {
                self.error(
                    field,
                    format!("{text:?} is not an RFC 3339 timestamp like 2025-12-20T00:00:00Z"),
                );
                None
            }
        }
    }

    /// A positive duration such as `10m` or `1h30m` (jiff's friendly format or ISO 8601).
    fn duration(
        &mut self,
        text: Option<&str>,
        default: SignedDuration,
        field: &str,
    ) -> Option<SignedDuration> {
        let Some(text) = text else {
            return Some(default);
        };
        match SignedDuration::from_str(text) {
            Ok(d) if d.is_positive() => Some(d),
            Ok(_) => {
                self.error(field, format!("{text:?} must be longer than zero"));
                None
            }
            Err(_) => {
                self.error(
                    field,
                    format!("{text:?} is not a duration like 90s, 10m or 1h30m"),
                );
                None
            }
        }
    }

    fn etcd(&mut self, e: &EtcdSpec) -> Option<EtcdSnapshotPolicy> {
        let default = EtcdSnapshotPolicy::default();
        let max_age = self.duration(
            e.max_snapshot_age.as_deref(),
            SignedDuration::from_secs(default.max_age_seconds.cast_signed()),
            "spec.etcd.maxSnapshotAge",
        )?;
        Some(EtcdSnapshotPolicy {
            before: e.snapshot_before.unwrap_or(default.before),
            max_age_seconds: max_age.as_secs().unsigned_abs(),
        })
    }

    fn upgrade(&mut self, u: &UpgradeSpec) -> Upgrade {
        for (i, hold) in u.holds.iter().enumerate() {
            if hold.trim().is_empty() {
                self.error(format!("spec.upgrade.holds[{i}]"), "empty package name");
            } else if hold.chars().any(char::is_whitespace) {
                self.error(
                    format!("spec.upgrade.holds[{i}]"),
                    format!("{hold:?} is not a package name (it contains whitespace)"),
                );
            }
        }
        let kubernetes_version = u.kubernetes_version.as_deref().and_then(|text| {
            text.parse::<KubeVersion>()
                .map_err(|e| self.error("spec.upgrade.kubernetesVersion", e.to_string()))
                .ok()
        });
        Upgrade {
            mode: u.mode,
            holds: u.holds.clone(),
            kubernetes_version,
        }
    }

    fn reboot(&mut self, r: &RebootSpec) -> Reboot {
        let sentinel_files = r.sentinel_files.clone();
        for (i, path) in sentinel_files.iter().flatten().enumerate() {
            if !path.starts_with('/') {
                self.error(
                    format!("spec.reboot.sentinelFiles[{i}]"),
                    format!("{path:?} is not an absolute path"),
                );
            }
        }
        self.argv(&r.sentinel_command, "spec.reboot.sentinelCommand");
        self.argv(&r.command, "spec.reboot.command");
        Reboot {
            mode: r.mode,
            sentinel_files,
            sentinel_command: r.sentinel_command.clone(),
            command: r.command.clone(),
        }
    }

    fn argv(&mut self, argv: &[String], field: &str) {
        if argv
            .first()
            .is_some_and(|program| program.trim().is_empty())
        {
            self.error(format!("{field}[0]"), "the program name is empty");
        }
    }

    fn drain(&mut self, d: &DrainSpec) -> Option<Drain> {
        let timeout = self.duration(
            d.timeout.as_deref(),
            DEFAULT_DRAIN_TIMEOUT,
            "spec.drain.timeout",
        );
        let grace_period_seconds = match d.grace_period_seconds {
            None | Some(-1) => None,
            Some(s) if s >= 0 => Some(s),
            Some(s) => {
                self.error(
                    "spec.drain.gracePeriodSeconds",
                    format!("{s} is negative; use -1 (or leave it out) for each pod's own"),
                );
                None
            }
        };
        let pod_selector = match &d.pod_selector {
            Some(s) => self.selector(s, "spec.drain.podSelector"),
            None => Some(Selector::everything()),
        };
        let backoff = self.backoff(&d.backoff);
        Some(Drain {
            timeout: timeout?,
            grace_period_seconds,
            delete_empty_dir_data: d.delete_empty_dir_data,
            force: d.force,
            pod_selector: pod_selector?,
            backoff: backoff?,
        })
    }

    fn backoff(&mut self, b: &BackoffSpec) -> Option<Backoff> {
        let initial = self.duration(
            b.initial.as_deref(),
            DEFAULT_BACKOFF_INITIAL,
            "spec.drain.backoff.initial",
        );
        let max = self.duration(
            b.max.as_deref(),
            DEFAULT_BACKOFF_MAX,
            "spec.drain.backoff.max",
        );
        let (initial, max) = (initial?, max?);
        if max < initial {
            self.error(
                "spec.drain.backoff.max",
                format!("{max:#} is shorter than initial {initial:#}"),
            );
            return None;
        }
        Some(Backoff { initial, max })
    }

    fn blockers(&mut self, b: &BlockersSpec) -> Blockers {
        let prometheus = b.prometheus.as_ref().and_then(|p| {
            let url_ok = p.url.parse::<http::Uri>().is_ok_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some()
            });
            if !url_ok {
                self.error(
                    "spec.blockers.prometheus.url",
                    format!("{:?} is not an http(s) URL with a host", p.url),
                );
            }
            let regex = match &p.alert_filter {
                Some(text) => match Regex::new(text) {
                    Ok(re) => Some(re),
                    Err(e) => {
                        self.error(
                            "spec.blockers.prometheus.alertFilter",
                            format!("invalid regular expression {text:?}: {e}"),
                        );
                        return None;
                    }
                },
                None if p.alert_filter_match_only => {
                    self.error(
                        "spec.blockers.prometheus.alertFilterMatchOnly",
                        "needs alertFilter (the alerts that block)",
                    );
                    return None;
                }
                None => None,
            };
            url_ok.then(|| AlertSource {
                url: p.url.clone(),
                filter: AlertFilter {
                    regex,
                    match_only: p.alert_filter_match_only,
                },
            })
        });
        let pod_selectors = b
            .pod_selectors
            .iter()
            .enumerate()
            .filter_map(|(i, s)| {
                let field = format!("spec.blockers.podSelectors[{i}]");
                let selector = self.selector(s, &field)?;
                if selector.is_everything() {
                    self.error(
                        field,
                        "an empty selector would match every pod and block every node",
                    );
                    return None;
                }
                Some(selector)
            })
            .collect();
        Blockers {
            prometheus,
            pod_selectors,
        }
    }

    fn health(&mut self, h: &HealthSpec) -> Option<Health> {
        let ready_timeout = self.duration(
            h.ready_timeout.as_deref(),
            DEFAULT_READY_TIMEOUT,
            "spec.health.readyTimeout",
        );
        let required_daemon_sets = h
            .required_daemon_sets
            .iter()
            .enumerate()
            .filter_map(|(i, text)| match text.split_once('/') {
                Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
                    Some(NamespacedName::new(ns, name))
                }
                _ => {
                    self.error(
                        format!("spec.health.requiredDaemonSets[{i}]"),
                        format!("{text:?} is not namespace/name"),
                    );
                    None
                }
            })
            .collect();
        Some(Health {
            ready_timeout: ready_timeout?,
            required_daemon_sets,
        })
    }
}

fn weekday(day: Weekday) -> jiff::civil::Weekday {
    match day {
        Weekday::Mon => jiff::civil::Weekday::Monday,
        Weekday::Tue => jiff::civil::Weekday::Tuesday,
        Weekday::Wed => jiff::civil::Weekday::Wednesday,
        Weekday::Thu => jiff::civil::Weekday::Thursday,
        Weekday::Fri => jiff::civil::Weekday::Friday,
        Weekday::Sat => jiff::civil::Weekday::Saturday,
        Weekday::Sun => jiff::civil::Weekday::Sunday,
    }
}
