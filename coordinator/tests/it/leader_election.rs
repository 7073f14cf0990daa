//! Leader election against the emulated API server: one leader at a time, takeover when the
//! leader dies or is cut off (and the cut-off leader stops first), immediate handover on
//! graceful release.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use rota_coordinator::leader::{ElectionConfig, LeaderElector, LeaderState, Leadership};
use rota_core::election::Timings;
use rota_sim::apiserver::{ApiServer, ServerHandle, Store};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const NAMESPACE: &str = "kube-system";
const LEASE: &str = "rota-coordinator";

async fn emulator() -> ServerHandle {
    ApiServer::start(Store::new(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .await
        .unwrap()
}

fn client(url: &str) -> kube::Client {
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

fn fast() -> Timings {
    Timings {
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(600),
        retry_period: Duration::from_millis(100),
    }
}

/// A running elector: its leadership, its shutdown switch and its task.
struct Replica {
    id: String,
    leadership: Leadership,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn replica(url: &str, id: &str, timings: Timings, log: &Log) -> Replica {
    let config = ElectionConfig {
        namespace: NAMESPACE.into(),
        lease_name: LEASE.into(),
        identity: id.into(),
        timings,
    };
    let (elector, leadership) = LeaderElector::new(client(url), config).unwrap();
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(elector.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));
    log.follow(id, &leadership);
    Replica {
        id: id.into(),
        leadership,
        stop,
        task,
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
                log.0
                    .lock()
                    .unwrap()
                    .push((Instant::now(), id.clone(), leading));
                if rx.changed().await.is_err() {
                    log.0
                        .lock()
                        .unwrap()
                        .push((Instant::now(), id.clone(), false));
                    return;
                }
            }
        });
    }

    /// Checks that no two replicas ever led at the same time.
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

async fn lease(url: &str) -> Lease {
    Api::<Lease>::namespaced(client(url), NAMESPACE)
        .get(LEASE)
        .await
        .unwrap()
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

/// Index of the single leader among `replicas`, once there is one.
async fn leader_of(replicas: &[&Replica], within: Duration) -> usize {
    until("a leader", within, || {
        let leaders: Vec<usize> = (0..replicas.len())
            .filter(|i| replicas[*i].leadership.is_leader())
            .collect();
        (leaders.len() == 1).then(|| leaders[0])
    })
    .await
}

#[tokio::test]
async fn three_replicas_elect_exactly_one_leader() {
    let server = emulator().await;
    let url = server.url();
    let log = Log::default();
    let replicas: Vec<Replica> = ["a", "b", "c"]
        .iter()
        .map(|id| replica(&url, id, fast(), &log))
        .collect();
    let refs: Vec<&Replica> = replicas.iter().collect();
    let leader = leader_of(&refs, Duration::from_secs(5)).await;
    let leader_id = replicas[leader].id.clone();
    // Several lease durations pass: leadership stays put and the others follow it.
    let settle = Instant::now() + Duration::from_secs(3);
    while Instant::now() < settle {
        assert_eq!(leader_of(&refs, Duration::from_secs(1)).await, leader);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (i, r) in replicas.iter().enumerate() {
        if i != leader {
            assert_eq!(
                r.leadership.state(),
                LeaderState::Follower {
                    holder: Some(leader_id.clone())
                }
            );
        }
    }
    assert_eq!(
        holder(&lease(&url).await).as_deref(),
        Some(leader_id.as_str())
    );
    log.assert_one_leader_at_a_time();
}

#[tokio::test]
async fn a_killed_leader_is_replaced_within_the_lease_bound() {
    let server = emulator().await;
    let url = server.url();
    let log = Log::default();
    let timings = fast();
    let a = replica(&url, "a", timings, &log);
    let first = leader_of(&[&a], Duration::from_secs(5)).await;
    assert_eq!(first, 0);
    let b = replica(&url, "b", timings, &log);
    // b has seen a's lease.
    until("b to follow a", Duration::from_secs(5), || {
        (b.leadership.state()
            == LeaderState::Follower {
                holder: Some("a".into()),
            })
        .then_some(())
    })
    .await;
    let before = lease(&url).await;

    let killed = Instant::now();
    a.task.abort();
    // A dead elector's leadership is over at once.
    tokio::time::timeout(Duration::from_secs(1), a.leadership.lost())
        .await
        .unwrap();
    until("b to lead", Duration::from_secs(5), || {
        b.leadership.is_leader().then_some(())
    })
    .await;
    let took = killed.elapsed();
    println!(
        "takeover after the leader was killed: {took:?} (lease {:?})",
        timings.lease_duration
    );
    // Worst case: one poll to see the last renewal, then one lease duration.
    assert!(
        took <= timings.lease_duration + timings.retry_period + Duration::from_millis(500),
        "{took:?}"
    );
    let after = lease(&url).await;
    assert_eq!(holder(&after).as_deref(), Some("b"));
    let transitions = |l: &Lease| l.spec.as_ref().and_then(|s| s.lease_transitions);
    assert_eq!(transitions(&after), transitions(&before).map(|t| t + 1));
    log.assert_one_leader_at_a_time();
    drop(b.stop);
}

#[tokio::test]
async fn with_default_timings_a_standby_takes_over_within_fifteen_seconds() {
    let server = emulator().await;
    let url = server.url();
    let log = Log::default();
    let timings = Timings::default();
    let a = replica(&url, "a", timings, &log);
    leader_of(&[&a], Duration::from_secs(5)).await;
    let b = replica(&url, "b", timings, &log);
    until("b to follow a", Duration::from_secs(5), || {
        (b.leadership.state()
            == LeaderState::Follower {
                holder: Some("a".into()),
            })
        .then_some(())
    })
    .await;
    // Die right after a renewal, the worst moment for the standby.
    let renewed = lease(&url).await.metadata.resource_version;
    let mut current = renewed.clone();
    while current == renewed {
        tokio::time::sleep(Duration::from_millis(10)).await;
        current = lease(&url).await.metadata.resource_version;
    }
    let killed = Instant::now();
    a.task.abort();
    until("b to lead", Duration::from_secs(20), || {
        b.leadership.is_leader().then_some(())
    })
    .await;
    let took = killed.elapsed();
    println!("takeover with default timings: {took:?}");
    assert!(took < Duration::from_secs(15), "{took:?}");
    log.assert_one_leader_at_a_time();
    drop(b.stop);
}

#[tokio::test]
async fn graceful_release_hands_over_at_once() {
    let server = emulator().await;
    let url = server.url();
    let log = Log::default();
    // A long lease: only the release can explain a quick handover.
    let timings = Timings {
        lease_duration: Duration::from_secs(10),
        renew_deadline: Duration::from_secs(5),
        retry_period: Duration::from_millis(100),
    };
    let a = replica(&url, "a", timings, &log);
    leader_of(&[&a], Duration::from_secs(5)).await;
    let b = replica(&url, "b", timings, &log);
    until("b to follow a", Duration::from_secs(5), || {
        (b.leadership.state()
            == LeaderState::Follower {
                holder: Some("a".into()),
            })
        .then_some(())
    })
    .await;

    let released = Instant::now();
    a.stop.send_replace(true);
    a.task.await.unwrap();
    assert!(!a.leadership.is_leader());
    until("b to lead", Duration::from_secs(5), || {
        b.leadership.is_leader().then_some(())
    })
    .await;
    let took = released.elapsed();
    println!("handover after a graceful release: {took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(holder(&lease(&url).await).as_deref(), Some("b"));
    log.assert_one_leader_at_a_time();

    // The new leader releases too when it stops.
    b.stop.send_replace(true);
    b.task.await.unwrap();
    assert_eq!(holder(&lease(&url).await), None);
}

/// A TCP proxy in front of the API server whose traffic can be cut (a network partition).
struct Proxy {
    url: String,
    cut: watch::Sender<bool>,
}

async fn proxy(upstream: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (cut, cut_rx) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                return;
            };
            if *cut_rx.borrow() {
                continue;
            }
            let mut cut_rx = cut_rx.clone();
            tokio::spawn(async move {
                let Ok(mut outbound) = TcpStream::connect(upstream).await else {
                    return;
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    _ = cut_rx.wait_for(|c| *c) => {}
                }
            });
        }
    });
    Proxy { url, cut }
}

#[tokio::test]
async fn a_cut_off_leader_stops_acting_before_the_standby_takes_over() {
    let server = emulator().await;
    let url = server.url();
    let log = Log::default();
    let timings = Timings {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(100),
    };
    let a_path = proxy(server.addr()).await;
    let a = replica(&a_path.url, "a", timings, &log);
    leader_of(&[&a], Duration::from_secs(5)).await;
    let b = replica(&url, "b", timings, &log);
    until("b to follow a", Duration::from_secs(5), || {
        (b.leadership.state()
            == LeaderState::Follower {
                holder: Some("a".into()),
            })
        .then_some(())
    })
    .await;

    let cut = Instant::now();
    a_path.cut.send_replace(true);
    tokio::time::timeout(Duration::from_secs(3), a.leadership.lost())
        .await
        .expect("the cut-off leader must stop acting");
    let stopped = cut.elapsed();
    assert!(
        !b.leadership.is_leader(),
        "the standby must not lead before the old leader stopped"
    );
    until("b to lead", Duration::from_secs(5), || {
        b.leadership.is_leader().then_some(())
    })
    .await;
    let took_over = cut.elapsed();
    println!("cut-off leader stopped after {stopped:?}; standby led after {took_over:?}");
    assert!(
        stopped <= timings.renew_deadline + Duration::from_millis(300),
        "{stopped:?}"
    );
    assert!(stopped < took_over);
    log.assert_one_leader_at_a_time();
    // a's elector keeps running as a follower while cut off.
    assert!(!a.task.is_finished());
    a.task.abort();
    drop(b.stop);
}
