//! The controller against the emulated API server with a policy whose Prometheus blocker points
//! at a local fake Prometheus: a firing alert holds the node, its resolution lets it through;
//! an unreachable Prometheus holds the pool (with the reason in the node's view and the
//! policy's status) until the policy names one that answers.

use rota_core::clock::OffsetClock;

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Result;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use rota_core::model::Operation;
use rota_core::policy::crd::PrometheusBlocker;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::controller_support::{Cluster, Running, settings, spec, wait_until};

const WITHIN: Duration = Duration::from_secs(15);

/// A fake Prometheus answering the alerts API with a list that the test changes.
struct Prometheus {
    url: String,
    firing: Arc<Mutex<Vec<String>>>,
    task: JoinHandle<()>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn alerts(State(firing): State<Arc<Mutex<Vec<String>>>>) -> axum::Json<Value> {
    let firing = firing
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let alerts: Vec<Value> = firing
        .iter()
        .map(|name| json!({"labels": {"alertname": name}, "state": "firing"}))
        .chain([json!({"labels": {"alertname": "Pending"}, "state": "pending"})])
        .collect();
    axum::Json(json!({"status": "success", "data": {"alerts": alerts}}))
}

impl Prometheus {
    async fn start(firing: &[&str]) -> Result<Prometheus> {
        let firing = Arc::new(Mutex::new(firing.iter().map(|s| (*s).to_owned()).collect()));
        let app = Router::new()
            .route("/api/v1/alerts", get(alerts))
            .with_state(firing.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Prometheus { url, firing, task })
    }

    fn set_firing(&self, firing: &[&str]) {
        *self.firing.lock().unwrap_or_else(PoisonError::into_inner) =
            firing.iter().map(|s| (*s).to_owned()).collect();
    }
}

fn settings_with_fast_alerts() -> rota_coordinator::controller::Settings {
    let mut settings = settings();
    settings.alerts.interval = Duration::from_millis(50);
    settings.alerts.timeout = Duration::from_secs(2);
    settings
}

fn blocker(url: &str) -> Option<PrometheusBlocker> {
    Some(PrometheusBlocker {
        url: url.to_owned(),
        alert_filter: Some("^Watchdog$".into()),
        alert_filter_match_only: false,
    })
}

#[tokio::test]
async fn a_firing_alert_holds_the_pool_until_it_resolves() -> Result<()> {
    let prometheus = Prometheus::start(&["NodeDown", "Watchdog"]).await?;
    let cluster = Cluster::start(false).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    let mut policy = spec("workers");
    policy.blockers.prometheus = blocker(&prometheus.url);
    cluster.create_policy("workers", policy)?;
    let coordinator = Running::start(
        &cluster,
        settings_with_fast_alerts(),
        Arc::new(OffsetClock::default()),
    )
    .await?;
    coordinator.report("a", "a-boot-1").await?;
    coordinator.request("a", Operation::Reboot).await?;

    let waiting = coordinator
        .wait_view("a", WITHIN, |v| {
            v.waiting_reasons
                .iter()
                .any(|r| r == "alert NodeDown firing")
        })
        .await?;
    assert_eq!(
        waiting.waiting_reasons,
        ["alert NodeDown firing"],
        "Watchdog is filtered out, the pending alert does not count"
    );
    assert_eq!(cluster.slot("a"), None);
    wait_until("AlertFiring in the policy status", WITHIN, || {
        let status = cluster.policy("workers").ok()?.status?;
        status
            .waiting_reasons
            .iter()
            .any(|r| r.reason == "AlertFiring")
            .then_some(())
    })
    .await?;

    // Resolved: the next answer wakes the controller, which admits the node.
    prometheus.set_firing(&["Watchdog"]);
    coordinator.wait_granted("a", WITHIN).await?;
    coordinator.stop().await
}

#[tokio::test]
async fn an_unreachable_prometheus_holds_the_pool_until_one_answers() -> Result<()> {
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        format!("http://{}", listener.local_addr()?)
    };
    let cluster = Cluster::start(false).await?;
    cluster.add_node("a", &[("pool", "workers")])?;
    let mut policy = spec("workers");
    policy.blockers.prometheus = blocker(&closed);
    cluster.create_policy("workers", policy)?;
    let coordinator = Running::start(
        &cluster,
        settings_with_fast_alerts(),
        Arc::new(OffsetClock::default()),
    )
    .await?;
    coordinator.report("a", "a-boot-1").await?;
    coordinator.request("a", Operation::Reboot).await?;

    let prefix = format!("cannot reach Prometheus at {closed}: ");
    let waiting = coordinator
        .wait_view("a", WITHIN, |v| {
            v.waiting_reasons.iter().any(|r| r.starts_with(&prefix))
        })
        .await?;
    assert!(
        waiting
            .waiting_reasons
            .iter()
            .any(|r| r.contains("Connection refused")),
        "{:?}",
        waiting.waiting_reasons
    );
    wait_until("AlertsUnknown in the policy status", WITHIN, || {
        let status = cluster.policy("workers").ok()?.status?;
        status
            .waiting_reasons
            .iter()
            .find(|r| r.reason == "AlertsUnknown")
            .filter(|r| r.examples.get("a").is_some_and(|e| e.starts_with(&prefix)))
            .map(|_| ())
    })
    .await?;
    assert_eq!(cluster.slot("a"), None, "fail closed: nothing is admitted");

    // The policy is pointed at a Prometheus that answers: the new URL is asked at once.
    let prometheus = Prometheus::start(&[]).await?;
    let url = prometheus.url.clone();
    cluster.update_policy("workers", |s| s.blockers.prometheus = blocker(&url))?;
    coordinator.wait_granted("a", WITHIN).await?;
    coordinator.stop().await
}
