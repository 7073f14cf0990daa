//! The leader hands its Lease over when its own node is cordoned, against the emulated API
//! server: the cordon is seen through the real field-selected Node watch, another replica
//! takes over at once and the cordoned one does not take the Lease back; alone, the cordoned
//! replica releases, takes the Lease back after one lease duration, and tries again later.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use rota_coordinator::handover::{self, Handover};
use rota_coordinator::leader::{ElectionConfig, LeaderElector, Leadership};
use rota_core::election::Timings;
use rota_sim::apiserver::{ApiServer, ServerHandle, Store};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NAMESPACE: &str = "kube-system";
const LEASE: &str = "rota-coordinator";

fn timings() -> Timings {
    Timings {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
    }
}

const RETRY: Duration = Duration::from_secs(3);

async fn emulator() -> ServerHandle {
    ApiServer::start(Store::new(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
}

fn client(url: &str) -> kube::Client {
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

async fn add_node(url: &str, name: &str) {
    let node = Node {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ..Node::default()
    };
    Api::<Node>::all(client(url))
        .create(&PostParams::default(), &node)
        .await
        .unwrap();
}

/// Cordons or uncordons a node as `kubectl cordon` does.
async fn cordon(url: &str, name: &str, unschedulable: bool) {
    let value = if unschedulable {
        serde_json::json!(true)
    } else {
        serde_json::Value::Null
    };
    Api::<Node>::all(client(url))
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Strategic(serde_json::json!({ "spec": { "unschedulable": value } })),
        )
        .await
        .unwrap();
}

/// A running elector on a node: its leadership, its shutdown switch and its tasks.
struct Replica {
    leadership: Leadership,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    node_watch: JoinHandle<()>,
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.task.abort();
        self.node_watch.abort();
    }
}

fn replica(url: &str, id: &str, node: &str, log: &Log) -> Replica {
    let config = ElectionConfig {
        namespace: NAMESPACE.into(),
        lease_name: LEASE.into(),
        identity: id.into(),
        timings: timings(),
    };
    let (cordoned, follow) = watch::channel(false);
    let node_watch = tokio::spawn(handover::follow_node(
        Api::all(client(url)),
        node.into(),
        cordoned,
    ));
    let (elector, leadership) = LeaderElector::new(client(url), config).unwrap();
    let elector = elector
        .with_handover(Handover {
            cordoned: follow,
            retry: RETRY,
        })
        .unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(elector.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    log.follow(id, &leadership);
    Replica {
        leadership,
        stop,
        task,
        node_watch,
    }
}

/// Every observed change of every replica's leadership, in order.
#[derive(Clone, Default)]
struct Log(Arc<Mutex<Vec<(Instant, String, bool)>>>);

impl Log {
    fn follow(&self, id: &str, leadership: &Leadership) {
        let mut rx = leadership.subscribe();
        let (log, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            loop {
                let leading = rx.borrow_and_update().is_leader();
                log.push(&id, leading);
                if rx.changed().await.is_err() {
                    log.push(&id, false);
                    return;
                }
            }
        });
    }

    fn push(&self, id: &str, leading: bool) {
        self.0
            .lock()
            .unwrap()
            .push((Instant::now(), id.to_owned(), leading));
    }

    /// When `id` started leading at or after `since`, each time.
    fn acquisitions(&self, id: &str, since: Instant) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(at, who, leading)| *at >= since && who == id && *leading)
            .map(|(at, _, _)| *at)
            .collect()
    }

    fn assert_one_leader_at_a_time(&self) {
        let entries = self.0.lock().unwrap().clone();
        let mut leading: Vec<String> = Vec::new();
        for (_, id, is_leader) in entries {
            leading.retain(|l| *l != id);
            if is_leader {
                leading.push(id);
            }
            assert!(leading.len() <= 1, "two leaders at once: {leading:?}");
        }
    }
}

async fn until<T>(what: &str, within: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = probe() {
            return found;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn holder(url: &str) -> Option<String> {
    Api::<Lease>::namespaced(client(url), NAMESPACE)
        .get_opt(LEASE)
        .await
        .unwrap()
        .and_then(|l| l.spec?.holder_identity)
        .filter(|h| !h.is_empty())
}

async fn renew_time(url: &str) -> Option<jiff::Timestamp> {
    Api::<Lease>::namespaced(client(url), NAMESPACE)
        .get_opt(LEASE)
        .await
        .unwrap()
        .and_then(|l| l.spec?.renew_time)
        .map(|t| t.0)
}

#[tokio::test]
async fn cordoning_the_leaders_node_hands_leadership_to_the_other_replica() {
    let server = emulator().await;
    let url = server.url();
    let log = Log::default();
    add_node(&url, "node-a").await;
    add_node(&url, "node-b").await;
    let a = replica(&url, "a", "node-a", &log);
    let b = replica(&url, "b", "node-b", &log);
    let replicas = [("a", "node-a", &a), ("b", "node-b", &b)];
    let first = until("a leader", Duration::from_secs(10), || {
        let leaders: Vec<usize> = (0..2)
            .filter(|i| replicas[*i].2.leadership.is_leader())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await;
    let (old_id, old_node, old) = replicas[first];
    let (new_id, _, new) = replicas[1 - first];

    let cordoned_at = Instant::now();
    cordon(&url, old_node, true).await;
    // The standby takes a released lease on its next poll; the cordoned replica could only
    // take it back after a lease duration, so the other one wins well within it.
    until(
        "the other replica to lead",
        timings().lease_duration,
        || new.leadership.is_leader().then_some(()),
    )
    .await;
    let handed_over = Instant::now();
    println!(
        "handover took {:?} from the cordon",
        handed_over - cordoned_at
    );
    assert!(!old.leadership.is_leader());

    // The cordoned replica stands by while the new leader keeps renewing: watch for longer
    // than any expiry it could act on.
    let window = 3 * timings().lease_duration + RETRY;
    while Instant::now() < handed_over + window {
        assert_eq!(holder(&url).await.as_deref(), Some(new_id));
        tokio::time::sleep(timings().retry_period).await;
    }
    assert!(new.leadership.is_leader());
    assert_eq!(log.acquisitions(old_id, cordoned_at), Vec::<Instant>::new());

    // With the new leader gone, the cordoned replica is the only one left: it takes over, but
    // only after leaving the lease to others for a lease duration.
    let stopped_at = Instant::now();
    new.stop.send(true).unwrap();
    until(
        "the cordoned replica to lead again",
        Duration::from_secs(5),
        || old.leadership.is_leader().then_some(()),
    )
    .await;
    let waited = Instant::now() - stopped_at;
    assert!(
        waited >= timings().lease_duration,
        "took over after {waited:?}"
    );
    log.assert_one_leader_at_a_time();
    old.stop.send(true).unwrap();
}

#[tokio::test]
async fn a_lone_cordoned_leader_releases_then_leads_again_and_retries_later() {
    let server = emulator().await;
    let url = server.url();
    let log = Log::default();
    add_node(&url, "node-a").await;
    let a = replica(&url, "a", "node-a", &log);
    until("a leader", Duration::from_secs(10), || {
        a.leadership.is_leader().then_some(())
    })
    .await;

    let cordoned_at = Instant::now();
    cordon(&url, "node-a", true).await;
    until("the release", Duration::from_secs(2), || {
        (!a.leadership.is_leader()).then_some(())
    })
    .await;
    let released = Instant::now();
    assert_eq!(holder(&url).await, None, "released, not expired");
    // Nobody took it: the lone replica leads again after one lease duration.
    until("leading again", timings().lease_duration * 3, || {
        a.leadership.is_leader().then_some(())
    })
    .await;
    let back = Instant::now();
    assert!(
        back - released >= timings().lease_duration - timings().retry_period,
        "took the lease back after {:?}",
        back - released
    );
    println!(
        "released {:?} after the cordon, led again {:?} later",
        released - cordoned_at,
        back - released
    );

    // It tries the handover again after the retry, and takes the lease back again.
    until("the second attempt", RETRY * 2, || {
        (!a.leadership.is_leader()).then_some(())
    })
    .await;
    let second = Instant::now();
    assert!(second - back >= RETRY - timings().retry_period);
    until(
        "leading after the second attempt",
        timings().lease_duration * 3,
        || a.leadership.is_leader().then_some(()),
    )
    .await;

    // Uncordoned, it keeps leading; cordoned again, it hands over at once (no retry wait).
    cordon(&url, "node-a", false).await;
    let uncordoned = Instant::now();
    let renewed_after = jiff::Timestamp::now() + jiff::SignedDuration::from_millis(300);
    let deadline = uncordoned + Duration::from_secs(5);
    while renew_time(&url).await < Some(renewed_after) {
        assert!(Instant::now() < deadline, "no renewal after the uncordon");
        tokio::time::sleep(timings().retry_period).await;
    }
    assert!(a.leadership.is_leader());
    assert_eq!(log.acquisitions("a", uncordoned), Vec::<Instant>::new());
    cordon(&url, "node-a", true).await;
    until(
        "the release after a fresh cordon",
        Duration::from_secs(2),
        || (!a.leadership.is_leader()).then_some(()),
    )
    .await;
    log.assert_one_leader_at_a_time();
    a.stop.send(true).unwrap();
}
