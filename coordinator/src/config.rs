//! The `rota-coordinator` command line. Every flag can also be set from a `ROTA_*`
//! environment variable (the Deployment sets the pod name and namespace from the downward API).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

use crate::auth::{AgentIdentity, CacheConfig, RateLimit};
use crate::controller::Settings;
use crate::fleetlock::FleetLockArgs;
use crate::grpc::EdgeLimits;
use crate::kube_client::ConfigSource;
use crate::leader::ElectionConfig;
use crate::notify::NotifyArgs;
use crate::records::RecordSettings;
use crate::telemetry::LogFormat;
use crate::tls::TlsOptions;
use rota_core::election::Timings;
use rota_core::records::Retention;

/// rota's coordinator: hands out maintenance slots to node agents, drains nodes, and keeps the
/// fleet's safety invariants.
#[derive(Clone, Debug, Parser)]
#[command(name = "rota-coordinator", version)]
pub struct Config {
    /// Where the Kubernetes API is.
    #[clap(flatten)]
    pub kube: KubeArgs,
    /// Where the coordinator listens.
    #[clap(flatten)]
    pub listen: ListenArgs,
    /// Who this replica is.
    #[clap(flatten)]
    pub identity: IdentityArgs,
    /// Leader election between replicas.
    #[clap(flatten)]
    pub election: ElectionArgs,
    /// Which callers count as agents.
    #[clap(flatten)]
    pub agents: AgentAuthArgs,
    /// TLS of the agents' gRPC server.
    #[clap(flatten)]
    pub tls: TlsOptions,
    /// The FleetLock endpoint (Zincati and other FleetLock clients).
    #[clap(flatten)]
    pub fleetlock: FleetLockArgs,
    /// The controller.
    #[clap(flatten)]
    pub controller: ControllerArgs,
    /// Maintenance records.
    #[clap(flatten)]
    pub records: RecordArgs,
    /// Chat notifications.
    #[clap(flatten)]
    pub notify: NotifyArgs,
    /// Logging.
    #[clap(flatten)]
    pub log: LogArgs,
    /// Shutdown.
    #[clap(flatten)]
    pub shutdown: ShutdownArgs,
}

/// Kubernetes client configuration.
#[derive(Clone, Debug, Args)]
pub struct KubeArgs {
    /// Kubeconfig file to use (default: `KUBECONFIG`, `~/.kube/config`, else in-cluster).
    #[clap(long, env = "ROTA_KUBECONFIG", conflicts_with = "in_cluster")]
    pub kubeconfig: Option<PathBuf>,
    /// Context of the kubeconfig to use instead of its current one.
    #[clap(long, env = "ROTA_KUBE_CONTEXT", requires = "kubeconfig")]
    pub kube_context: Option<String>,
    /// Use the pod's service account only.
    #[clap(long, env = "ROTA_IN_CLUSTER")]
    pub in_cluster: bool,
}

impl KubeArgs {
    /// Where the client configuration comes from.
    pub fn source(&self) -> ConfigSource {
        match (&self.kubeconfig, self.in_cluster) {
            (Some(path), _) => ConfigSource::Kubeconfig {
                path: path.clone(),
                context: self.kube_context.clone(),
            },
            (None, true) => ConfigSource::InCluster,
            (None, false) => ConfigSource::Infer,
        }
    }
}

/// Listen addresses.
#[derive(Clone, Debug, Args)]
pub struct ListenArgs {
    /// Address of the agents' gRPC server.
    #[clap(long, env = "ROTA_GRPC_ADDR", default_value = "0.0.0.0:9443")]
    pub grpc_addr: SocketAddr,
    /// Address of the HTTP server for `/metrics`, `/healthz` and `/readyz`.
    #[clap(long, env = "ROTA_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Most open gRPC connections (one per agent, plus rotactl); more are closed at once.
    /// Raise it above the number of nodes on very large clusters (and the memory limit with it).
    #[clap(long, env = "ROTA_GRPC_MAX_CONNECTIONS", default_value_t = EdgeLimits::default().max_connections)]
    pub grpc_max_connections: usize,
    /// Most authenticated gRPC calls handled at once, all connections together; more get
    /// RESOURCE_EXHAUSTED.
    #[clap(long, env = "ROTA_GRPC_MAX_CONCURRENT_CALLS", default_value_t = EdgeLimits::default().max_concurrent_calls)]
    pub grpc_max_concurrent_calls: usize,
}

/// This replica's identity.
#[derive(Clone, Debug, Args)]
pub struct IdentityArgs {
    /// The coordinator's namespace (its leader Lease lives there).
    #[clap(long, env = "ROTA_NAMESPACE", default_value = "rota-system")]
    pub namespace: String,
    /// This pod's name (downward API `metadata.name`): the leader identity and Event reporter.
    #[clap(long, env = "ROTA_POD_NAME")]
    pub pod_name: String,
    /// The node this pod runs on (downward API `spec.nodeName`). When set, the leader hands
    /// its Lease over while that node is cordoned, so that the node can drain.
    #[clap(long, env = "ROTA_NODE_NAME")]
    pub node_name: Option<String>,
}

/// Leader election settings; see `leader` for how they bound a takeover.
#[derive(Clone, Debug, Args)]
pub struct ElectionArgs {
    /// Elect a leader among replicas (turn off only when running exactly one replica).
    #[clap(long, env = "ROTA_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_elect: bool,
    /// Name of the leader Lease.
    #[clap(long, env = "ROTA_LEASE_NAME", default_value = "rota-coordinator")]
    pub lease_name: String,
    /// How long a leader's lease lasts after its last renewal.
    #[clap(long, env = "ROTA_LEASE_DURATION", default_value = "10s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// The leader stops acting when it could not renew for this long.
    #[clap(long, env = "ROTA_RENEW_DEADLINE", default_value = "7s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// How often the leader renews and standbys poll.
    #[clap(long, env = "ROTA_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// While this replica's node is cordoned and no other replica took the Lease it released,
    /// how long it leads before it tries to hand over again (at least the lease duration).
    #[clap(long, env = "ROTA_HANDOVER_RETRY", default_value = "1m", value_parser = parse_duration)]
    pub handover_retry: Duration,
}

/// Agents' identity checks.
#[derive(Clone, Debug, Args)]
pub struct AgentAuthArgs {
    /// Namespace of the agents' DaemonSet (default: the coordinator's namespace).
    #[clap(long, env = "ROTA_AGENT_NAMESPACE")]
    pub agent_namespace: Option<String>,
    /// Service account of the agents; tokens of any other are refused.
    #[clap(long, env = "ROTA_AGENT_SERVICE_ACCOUNT", default_value = "rota-agent")]
    pub agent_service_account: String,
    /// The agents' DaemonSet: a token is only accepted from a pod this DaemonSet controls.
    #[clap(long, env = "ROTA_AGENT_DAEMONSET", default_value = "rota-agent")]
    pub agent_daemonset: String,
    /// Unknown tokens sent to the TokenReview API per second, at most; beyond it (after the
    /// burst) callers with new tokens get UNAVAILABLE and retry.
    #[clap(long, env = "ROTA_TOKEN_REVIEW_RATE", default_value_t = RateLimit::default().rate, value_parser = parse_rate)]
    pub token_review_rate: f64,
    /// Unknown tokens reviewed at once after a quiet period.
    #[clap(long, env = "ROTA_TOKEN_REVIEW_BURST", default_value_t = RateLimit::default().burst)]
    pub token_review_burst: u32,
    /// Audience of the agents' projected tokens.
    #[clap(long, env = "ROTA_TOKEN_AUDIENCE", default_value = "rota")]
    pub token_audience: String,
    /// How long an accepted token is trusted before it is reviewed again (at most 5m: a
    /// deleted agent pod's token stops working within it).
    #[clap(long, env = "ROTA_TOKEN_CACHE_TTL", default_value = "60s", value_parser = parse_token_cache_ttl)]
    pub token_cache_ttl: Duration,
    /// Most tokens kept in the cache.
    #[clap(long, env = "ROTA_TOKEN_CACHE_SIZE", default_value_t = 16_384)]
    pub token_cache_size: usize,
}

/// Controller settings.
#[derive(Clone, Debug, Args)]
pub struct ControllerArgs {
    /// Time-to-live of a maintenance slot's lease; agents renew well within it.
    #[clap(long, env = "ROTA_SLOT_LEASE_TTL", default_value = "90s", value_parser = parse_duration)]
    pub slot_lease_ttl: Duration,
    /// Longest a PodDisruptionBudget may hold one eviction back before the drain gives its slot
    /// back and retries later (capped by the policy's drain timeout).
    #[clap(long, env = "ROTA_DRAIN_BLOCKED_TIMEOUT", default_value = "2m", value_parser = parse_duration)]
    pub drain_blocked_timeout: Duration,
    /// Shortest time between two controller passes: changes that arrive closer together are
    /// handled in one pass.
    #[clap(long, env = "ROTA_PASS_INTERVAL", default_value = "200ms", value_parser = parse_positive_duration)]
    pub pass_interval: Duration,
    /// How often the Prometheus servers named by policies' alert blockers are asked for their
    /// firing alerts.
    #[clap(long, env = "ROTA_PROMETHEUS_INTERVAL", default_value = "30s", value_parser = parse_positive_duration)]
    pub prometheus_interval: Duration,
    /// Longest wait for a Prometheus answer; a slower (or unreachable) Prometheus holds back
    /// the pools that name it.
    #[clap(long, env = "ROTA_PROMETHEUS_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub prometheus_timeout: Duration,
}

/// Retention of the MaintenanceRecords the leader writes (one per maintenance).
#[derive(Clone, Debug, Args)]
pub struct RecordArgs {
    /// Most MaintenanceRecords kept; the oldest that ended go first (0: no limit by count).
    #[clap(long, env = "ROTA_RECORDS_KEEP", default_value_t = Retention::default().keep)]
    pub records_keep: usize,
    /// MaintenanceRecords that ended longer ago than this are deleted (0s: kept whatever
    /// their age). Default 180 days.
    #[clap(long, env = "ROTA_RECORDS_MAX_AGE", default_value = "4320h", value_parser = parse_duration)]
    pub records_max_age: Duration,
    /// How often the leader deletes the records retention no longer keeps (and once when it
    /// starts to lead).
    #[clap(long, env = "ROTA_RECORDS_PRUNE_INTERVAL", default_value = "10m", value_parser = parse_positive_duration)]
    pub records_prune_interval: Duration,
}

/// Logging settings.
#[derive(Clone, Debug, Args)]
pub struct LogArgs {
    /// Log line format.
    #[clap(long, env = "ROTA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain)]
    pub log_format: LogFormat,
    /// `RUST_LOG`-style filter, e.g. `info,rota_coordinator=debug` (default: `RUST_LOG`, else
    /// `info`).
    #[clap(long, env = "ROTA_LOG")]
    pub log_filter: Option<String>,
}

/// Shutdown settings.
#[derive(Clone, Debug, Args)]
pub struct ShutdownArgs {
    /// After SIGTERM/SIGINT, how long to wait for work to finish before exiting anyway (keep
    /// it below the pod's `terminationGracePeriodSeconds`).
    #[clap(long, env = "ROTA_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

impl Config {
    /// The leader-election settings.
    pub fn election(&self) -> ElectionConfig {
        ElectionConfig {
            namespace: self.identity.namespace.clone(),
            lease_name: self.election.lease_name.clone(),
            identity: self.identity.pod_name.clone(),
            timings: Timings {
                lease_duration: self.election.lease_duration,
                renew_deadline: self.election.renew_deadline,
                retry_period: self.election.retry_period,
            },
        }
    }

    /// Who counts as an agent.
    pub fn agent_identity(&self) -> AgentIdentity {
        AgentIdentity {
            audience: self.agents.token_audience.clone(),
            namespace: self
                .agents
                .agent_namespace
                .clone()
                .unwrap_or_else(|| self.identity.namespace.clone()),
            service_account: self.agents.agent_service_account.clone(),
            daemon_set: self.agents.agent_daemonset.clone(),
        }
    }

    /// How many unknown tokens are reviewed.
    pub fn token_reviews(&self) -> RateLimit {
        RateLimit {
            rate: self.agents.token_review_rate,
            burst: self.agents.token_review_burst,
        }
    }

    /// The limits of the agents' gRPC edge.
    pub fn edge_limits(&self) -> EdgeLimits {
        EdgeLimits {
            max_connections: self.listen.grpc_max_connections,
            max_concurrent_calls: self.listen.grpc_max_concurrent_calls,
            ..EdgeLimits::default()
        }
    }

    /// The controller's settings.
    pub fn controller(&self) -> Settings {
        let mut settings = Settings::new(self.identity.namespace.clone());
        // Durations from the command line are far below jiff's range; saturate regardless.
        settings.lease_ttl = jiff::SignedDuration::try_from(self.controller.slot_lease_ttl)
            .unwrap_or(jiff::SignedDuration::MAX);
        settings.drain_blocked_timeout = self.controller.drain_blocked_timeout;
        settings.pass_interval = self.controller.pass_interval;
        settings.alerts.interval = self.controller.prometheus_interval;
        settings.alerts.timeout = self.controller.prometheus_timeout;
        settings.records = RecordSettings {
            retention: Retention {
                keep: self.records.records_keep,
                max_age: jiff::SignedDuration::try_from(self.records.records_max_age)
                    .unwrap_or(jiff::SignedDuration::MAX),
            },
            prune_interval: self.records.records_prune_interval,
        };
        settings
    }

    /// The token cache settings.
    pub fn token_cache(&self) -> CacheConfig {
        CacheConfig {
            ttl: self.agents.token_cache_ttl,
            capacity: self.agents.token_cache_size,
            ..CacheConfig::default()
        }
    }
}

/// Parses `10s`, `1m30s`, `PT10S` and the like.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let signed: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("not a duration ({e}); write e.g. 10s or 1m30s"))?;
    Duration::try_from(signed).map_err(|_| "a duration cannot be negative".to_owned())
}

/// Longest `--token-cache-ttl`.
const MAX_TOKEN_CACHE_TTL: Duration = Duration::from_secs(300);

/// How long an accepted token is trusted: bounded, since revoking it (deleting its pod) only
/// takes effect when its entry expires.
fn parse_token_cache_ttl(s: &str) -> Result<Duration, String> {
    let ttl = parse_duration(s)?;
    if ttl > MAX_TOKEN_CACHE_TTL {
        return Err(format!(
            "at most {}s: a revoked agent token stays accepted until its cache entry expires",
            MAX_TOKEN_CACHE_TTL.as_secs()
        ));
    }
    Ok(ttl)
}

/// A rate that is a finite number, not negative.
fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s.parse().map_err(|e| format!("not a number ({e})"))?;
    if !rate.is_finite() || rate < 0.0 {
        return Err("the rate must be a finite number, not negative".to_owned());
    }
    Ok(rate)
}

/// A duration that must not be zero (a zero poll interval would spin).
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    let duration = parse_duration(s)?;
    if duration.is_zero() {
        return Err("the duration must be positive".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_is_well_formed() {
        Config::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_env_var() {
        let command = Config::command();
        for arg in command.get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = arg
                .get_env()
                .unwrap_or_else(|| panic!("--{id} has no env var"));
            assert!(env.to_string_lossy().starts_with("ROTA_"), "{id}: {env:?}");
        }
    }

    #[test]
    fn defaults_and_derived_settings() {
        let config = Config::try_parse_from(["rota-coordinator", "--pod-name", "coord-0"]).unwrap();
        let election = config.election();
        assert_eq!(election.identity, "coord-0");
        assert_eq!(election.namespace, "rota-system");
        assert_eq!(election.timings, Timings::default());
        election.timings.validate().unwrap();
        let agents = config.agent_identity();
        assert_eq!(
            agents.username(),
            "system:serviceaccount:rota-system:rota-agent"
        );
        assert_eq!(agents.audience, "rota");
        assert_eq!(agents.daemon_set, "rota-agent");
        assert_eq!(config.token_reviews(), RateLimit::default());
        assert_eq!(config.edge_limits(), EdgeLimits::default());
        assert!(config.election.leader_elect);
        assert_eq!(config.identity.node_name, None);
        assert_eq!(
            config.election.handover_retry,
            crate::handover::DEFAULT_RETRY
        );
        assert_eq!(config.kube.source(), ConfigSource::Infer);
        assert_eq!(config.token_cache().ttl, Duration::from_secs(60));
        assert!(!config.tls.grpc_insecure_plaintext);
        let settings = config.controller();
        assert_eq!(settings.namespace, "rota-system");
        assert_eq!(settings.lease_ttl, jiff::SignedDuration::from_secs(90));
        assert_eq!(settings.drain_blocked_timeout, Duration::from_secs(120));
        assert_eq!(
            settings.pass_interval,
            Settings::new("rota-system").pass_interval
        );
        assert_eq!(settings.alerts, crate::blockers::AlertSettings::default());
        assert_eq!(settings.records.retention, Retention::default());
        assert_eq!(settings.records, RecordSettings::default());
    }

    #[test]
    fn flags_override_defaults() {
        let config = Config::try_parse_from([
            "rota-coordinator",
            "--pod-name=coord-1",
            "--namespace=ops",
            "--agent-namespace=agents",
            "--leader-elect=false",
            "--lease-duration=1m",
            "--renew-deadline=45s",
            "--retry-period=5s",
            "--node-name=node-7",
            "--handover-retry=2m",
            "--kubeconfig=/tmp/kc",
            "--kube-context=lab",
            "--log-format=json",
            "--log-filter=debug",
            "--prometheus-interval=1m",
            "--prometheus-timeout=5s",
            "--pass-interval=100ms",
            "--agent-daemonset=agents-ds",
            "--token-review-rate=2.5",
            "--grpc-max-connections=10",
            "--records-keep=100",
            "--records-max-age=720h",
            "--records-prune-interval=1m",
        ])
        .unwrap();
        let records = config.controller().records;
        assert_eq!(records.retention.keep, 100);
        assert_eq!(
            records.retention.max_age,
            jiff::SignedDuration::from_hours(720)
        );
        assert_eq!(records.prune_interval, Duration::from_secs(60));
        assert_eq!(config.agent_identity().daemon_set, "agents-ds");
        assert_eq!(config.token_reviews().rate, 2.5);
        assert_eq!(config.edge_limits().max_connections, 10);
        let alerts = config.controller().alerts;
        assert_eq!(alerts.interval, Duration::from_secs(60));
        assert_eq!(alerts.timeout, Duration::from_secs(5));
        assert_eq!(
            config.controller().pass_interval,
            Duration::from_millis(100)
        );
        assert!(!config.election.leader_elect);
        assert_eq!(config.election.lease_duration, Duration::from_secs(60));
        assert_eq!(config.identity.node_name.as_deref(), Some("node-7"));
        assert_eq!(config.election.handover_retry, Duration::from_secs(120));
        assert_eq!(config.agent_identity().namespace, "agents");
        assert_eq!(config.log.log_format, LogFormat::Json);
        assert_eq!(
            config.kube.source(),
            ConfigSource::Kubeconfig {
                path: "/tmp/kc".into(),
                context: Some("lab".into())
            }
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for args in [
            vec!["rota-coordinator"],
            vec!["rota-coordinator", "--pod-name=p", "--lease-duration=soon"],
            vec!["rota-coordinator", "--pod-name=p", "--retry-period=-2s"],
            vec!["rota-coordinator", "--pod-name=p", "--log-format=xml"],
            vec![
                "rota-coordinator",
                "--pod-name=p",
                "--prometheus-interval=0s",
            ],
            vec![
                "rota-coordinator",
                "--pod-name=p",
                "--in-cluster",
                "--kubeconfig=/k",
            ],
            vec!["rota-coordinator", "--pod-name=p", "--token-cache-ttl=1h"],
        ] {
            assert!(Config::try_parse_from(&args).is_err(), "{args:?}");
        }
        let bounded =
            Config::try_parse_from(["rota-coordinator", "--pod-name=p", "--token-cache-ttl=5m"]);
        assert!(bounded.is_ok(), "{bounded:?}");
    }
}
