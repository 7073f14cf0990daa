//! The Prometheus alert blocker against local HTTP servers (axum on 127.0.0.1:0) serving the
//! alerts API: firing alerts block, pending ones do not, the policy's filter is honoured, a
//! Prometheus that cannot be asked blocks with a clear reason (fail closed), and recovery
//! unblocks. The reports go through the real scheduler to check what they mean for admission.
use rota_core::blockers::{AlertReport, AlertReports, urls};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use jiff::Timestamp;

use rota_coordinator::blockers::{AlertSettings, AlertWatch};
use rota_core::model::{Operation, Origin, SlotRequest};
use rota_core::policy::{KubeVersion, MaintenancePolicySpec, validate};
use rota_core::scheduler::{NodeState, Pool, Snapshot, schedule};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(10);

/// What the fake Prometheus answers.
#[derive(Clone)]
enum Answer {
    Json(StatusCode, Value),
    Text(StatusCode, &'static str),
    /// Never answers (until the test ends).
    Hang,
}

#[derive(Clone)]
struct Served {
    answer: Arc<Mutex<Answer>>,
    requests: Arc<AtomicU64>,
}

/// A fake Prometheus on a free local port.
struct Prometheus {
    url: String,
    served: Served,
    task: JoinHandle<()>,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn alerts(State(served): State<Served>) -> (StatusCode, String) {
    served.requests.fetch_add(1, Ordering::SeqCst);
    let answer = served
        .answer
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    match answer {
        Answer::Json(status, body) => (status, body.to_string()),
        Answer::Text(status, body) => (status, body.to_owned()),
        Answer::Hang => std::future::pending().await,
    }
}

impl Prometheus {
    /// Serves under `prefix` (e.g. `/prometheus` behind a proxy) with `answer`.
    async fn start(prefix: &str, answer: Answer) -> Result<Prometheus> {
        let served = Served {
            answer: Arc::new(Mutex::new(answer)),
            requests: Arc::new(AtomicU64::new(0)),
        };
        let app = Router::new()
            .route(&format!("{prefix}/api/v1/alerts"), get(alerts))
            .with_state(served.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}{prefix}", listener.local_addr()?);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Prometheus { url, served, task })
    }

    fn answer(&self, answer: Answer) {
        *self
            .served
            .answer
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = answer;
    }

    fn requests(&self) -> u64 {
        self.served.requests.load(Ordering::SeqCst)
    }
}

fn alert(name: &str, state: &str) -> Value {
    json!({
        "labels": {"alertname": name, "severity": "critical"},
        "annotations": {"summary": "something"},
        "state": state,
        "activeAt": "2025-06-04T11:58:00Z",
        "value": "1e+00",
    })
}

fn alert_list(alerts: &[Value]) -> Answer {
    Answer::Json(
        StatusCode::OK,
        json!({"status": "success", "data": {"alerts": alerts}}),
    )
}

fn settings() -> AlertSettings {
    AlertSettings {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        ..AlertSettings::default()
    }
}

/// Waits until the report for `url` satisfies `pred`.
async fn wait_report(
    watch: &AlertWatch,
    url: &str,
    pred: impl Fn(&AlertReport) -> bool,
) -> Result<AlertReport> {
    let mut reports = watch.subscribe();
    let found =
        tokio::time::timeout(WITHIN, reports.wait_for(|r| r.get(url).is_some_and(&pred))).await;
    match found {
        Ok(Ok(reports)) => reports.get(url).cloned().context("report present"),
        Ok(Err(_)) => bail!("the alert watch stopped"),
        Err(_) => bail!(
            "{url}: no matching report within {WITHIN:?}; last: {:?}",
            watch.reports().get(url)
        ),
    }
}

fn now() -> Timestamp {
    Timestamp::from_second(1_749_038_400).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A pool whose policy names `url` with an optional filter, one node queued in it.
fn pool(url: &str, filter: Option<(&str, bool)>) -> Result<Pool> {
    let mut prometheus = json!({"url": url});
    if let Some((regex, match_only)) = filter {
        prometheus["alertFilter"] = json!(regex);
        prometheus["alertFilterMatchOnly"] = json!(match_only);
    }
    let spec: MaintenancePolicySpec = serde_json::from_value(json!({
        "maxUnavailable": 1,
        "blockers": {"prometheus": prometheus},
    }))?;
    let policy = validate(&spec).map_err(|e| anyhow::anyhow!("invalid test policy: {e:?}"))?;
    Ok(Pool {
        name: "workers".into(),
        policy: Arc::new(policy),
        failures: 0,
        firing_alerts: Vec::new(),
        alerts_unknown: None,
        rollout_held: None,
    })
}

/// Why node `a` of `pool` waits given `reports`; empty when it is admitted.
fn wait_reasons(mut pool: Pool, reports: &AlertReports) -> Vec<String> {
    reports.apply(std::slice::from_mut(&mut pool));
    let snapshot = Snapshot {
        pools: vec![pool],
        nodes: vec![NodeState {
            name: "a".into(),
            pools: vec!["workers".into()],
            ready: true,
            kubelet_version: Some(KubeVersion::new(1, 33, 1)),
            ..NodeState::default()
        }],
        queue: vec![SlotRequest {
            node: "a".into(),
            operation: Operation::Reboot,
            origin: Origin::Agent,
            requested_at: now(),
            not_before: None,
        }],
        ..Snapshot::default()
    };
    let plan = schedule(&snapshot, now());
    plan.waiting
        .get("a")
        .map(|w| w.reasons.iter().map(ToString::to_string).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn firing_alerts_block_pending_ones_do_not_and_the_filter_is_honoured() -> Result<()> {
    let prometheus = Prometheus::start(
        "",
        alert_list(&[alert("NodeDown", "firing"), alert("DiskFilling", "pending")]),
    )
    .await?;
    let url = prometheus.url.clone();
    let watch = AlertWatch::spawn(settings());
    watch.set_urls(BTreeSet::from([url.clone()]));
    let report = wait_report(&watch, &url, |r| matches!(r, AlertReport::Firing(_))).await?;
    assert_eq!(report, AlertReport::Firing(vec!["NodeDown".into()]));
    let reports = watch.reports();
    assert_eq!(
        wait_reasons(pool(&url, None)?, &reports),
        ["alert NodeDown firing"]
    );
    // kured's default: the filter names alerts to ignore.
    assert!(wait_reasons(pool(&url, Some(("^Node", false)))?, &reports).is_empty());
    // Match-only: only alerts the filter names block.
    assert!(wait_reasons(pool(&url, Some(("^Disk", true)))?, &reports).is_empty());
    assert_eq!(
        wait_reasons(pool(&url, Some(("^Node", true)))?, &reports),
        ["alert NodeDown firing"]
    );

    // The alert resolves; the pending one is still pending: nothing blocks.
    prometheus.answer(alert_list(&[alert("DiskFilling", "pending")]));
    wait_report(&watch, &url, |r| *r == AlertReport::Firing(Vec::new())).await?;
    assert!(wait_reasons(pool(&url, None)?, &watch.reports()).is_empty());

    // The pending alert starts firing: the pool is held again.
    prometheus.answer(alert_list(&[alert("DiskFilling", "firing")]));
    wait_report(&watch, &url, |r| {
        *r == AlertReport::Firing(vec!["DiskFilling".into()])
    })
    .await?;
    assert_eq!(
        wait_reasons(pool(&url, None)?, &watch.reports()),
        ["alert DiskFilling firing"]
    );
    Ok(())
}

#[tokio::test]
async fn a_prometheus_that_cannot_be_asked_blocks_until_it_recovers() -> Result<()> {
    let prometheus = Prometheus::start("/prometheus", alert_list(&[])).await?;
    let url = prometheus.url.clone();
    // A port nobody listens on.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        format!("http://{}", listener.local_addr()?)
    };
    let watch = AlertWatch::spawn(settings());
    watch.set_urls(BTreeSet::from([url.clone(), closed.clone()]));

    let refused = wait_report(&watch, &closed, |r| matches!(r, AlertReport::Unknown(_))).await?;
    let AlertReport::Unknown(why) = &refused else {
        bail!("{refused:?}")
    };
    assert!(why.to_lowercase().contains("connect"), "{why}");
    let reasons = wait_reasons(pool(&closed, None)?, &watch.reports());
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert!(
        reasons[0].starts_with(&format!("cannot reach Prometheus at {closed}: ")),
        "{reasons:?}"
    );
    // The reachable one (behind a path prefix) answers meanwhile.
    wait_report(&watch, &url, |r| *r == AlertReport::Firing(Vec::new())).await?;
    assert!(wait_reasons(pool(&url, None)?, &watch.reports()).is_empty());

    let cases: [(Answer, &str); 5] = [
        (
            Answer::Text(StatusCode::OK, "<html>Sign in</html>"),
            "the answer is not a Prometheus alerts list",
        ),
        (
            Answer::Text(StatusCode::SERVICE_UNAVAILABLE, "upstream connect error"),
            "HTTP 503 Service Unavailable: upstream connect error",
        ),
        (
            Answer::Json(
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"status": "error", "errorType": "execution", "error": "rules not loaded"}),
            ),
            "Prometheus refused: execution: rules not loaded",
        ),
        (
            Answer::Json(
                StatusCode::OK,
                json!({"status": "success", "data": {"groups": []}}),
            ),
            "the answer is not a Prometheus alerts list",
        ),
        (Answer::Hang, "no answer within 500ms"),
    ];
    for (answer, expected) in cases {
        prometheus.answer(answer);
        let report = wait_report(
            &watch,
            &url,
            |r| matches!(r, AlertReport::Unknown(why) if why.contains(expected)),
        )
        .await?;
        let reasons = wait_reasons(pool(&url, None)?, &watch.reports());
        assert_eq!(
            reasons,
            [format!(
                "cannot reach Prometheus at {url}: {}",
                match &report {
                    AlertReport::Unknown(why) => why.as_str(),
                    AlertReport::Firing(_) => "",
                }
            )],
            "{expected}"
        );
        // Recovery unblocks.
        prometheus.answer(alert_list(&[alert("Watchdog", "pending")]));
        wait_report(&watch, &url, |r| *r == AlertReport::Firing(Vec::new())).await?;
        assert!(wait_reasons(pool(&url, None)?, &watch.reports()).is_empty());
    }
    Ok(())
}

#[tokio::test]
async fn urls_come_and_go_and_an_unchanged_answer_wakes_nobody() -> Result<()> {
    let first = Prometheus::start("", alert_list(&[alert("A", "firing")])).await?;
    let second = Prometheus::start("", alert_list(&[alert("B", "firing")])).await?;
    let watch = AlertWatch::spawn(settings());

    // Policies name the URLs; the same URL twice is asked once.
    let pools = vec![
        pool(&first.url, None)?,
        pool(&first.url, Some(("^A$", false)))?,
        pool(&second.url, None)?,
    ];
    let wanted = urls(&pools);
    assert_eq!(wanted.len(), 2);
    watch.set_urls(wanted);
    wait_report(&watch, &second.url, |r| matches!(r, AlertReport::Firing(_))).await?;
    wait_report(&watch, &first.url, |r| matches!(r, AlertReport::Firing(_))).await?;
    let mut pools = pools;
    watch.reports().apply(&mut pools);
    let firing: Vec<&[String]> = pools.iter().map(|p| p.firing_alerts.as_slice()).collect();
    assert_eq!(
        firing,
        [&["A".to_owned()][..], &["A".to_owned()], &["B".to_owned()]]
    );

    // Unchanged answers do not wake a subscriber, however many rounds go by.
    let mut subscriber = watch.subscribe();
    subscriber.borrow_and_update();
    let asked = first.requests();
    let deadline = Instant::now() + WITHIN;
    while first.requests() < asked + 3 {
        if Instant::now() > deadline {
            bail!("Prometheus was not asked again");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        !subscriber.has_changed()?,
        "an unchanged answer woke the controller"
    );
    // Setting the same URLs again asks nobody early either.
    watch.set_urls(urls(&pools));
    assert!(!subscriber.has_changed()?);

    // A URL no policy names any more is forgotten (and not asked any more); a new one is
    // asked at once.
    watch.set_urls(BTreeSet::from([second.url.clone()]));
    tokio::time::timeout(WITHIN, subscriber.wait_for(|r| r.get(&first.url).is_none())).await??;
    assert!(watch.reports().get(&second.url).is_some());
    let mut pools = vec![pool(&first.url, None)?];
    watch.reports().apply(&mut pools);
    assert_eq!(pools[0].alerts_unknown.as_deref(), Some("no answer yet"));
    Ok(())
}

#[test]
fn a_pool_whose_prometheus_was_not_asked_yet_waits() -> Result<()> {
    let reasons = wait_reasons(
        pool("http://prometheus:9090", None)?,
        &AlertReports::default(),
    );
    assert_eq!(
        reasons,
        ["cannot reach Prometheus at http://prometheus:9090: no answer yet"]
    );
    // A report for another URL says nothing about this one.
    let other = AlertReports::from_reports([(
        "http://other:9090".to_owned(),
        AlertReport::Firing(Vec::new()),
    )]);
    assert_eq!(
        wait_reasons(pool("http://prometheus:9090", None)?, &other).len(),
        1
    );
    Ok(())
}
