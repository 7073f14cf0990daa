//! What the leader needs to hand its Lease over when its own node is cordoned: whether that
//! node is cordoned, followed by a watch of the one Node ([`follow_node`]), and how often to try
//! again when nobody took the Lease. Why and how a cordoned leader hands over is the rule of
//! [`rota_core::election::handover`]; the elector (`leader`) applies it each round with this.

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, watcher};
use rota_core::node::is_unschedulable;
use tokio::sync::watch;

/// Default time between two handover attempts of a cordoned replica that found no taker.
pub const DEFAULT_RETRY: Duration = Duration::from_secs(60);

/// What the elector needs to hand over: whether its node is cordoned, kept current by
/// [`follow_node`], and the time between attempts.
#[derive(Clone, Debug)]
pub struct Handover {
    /// `true` while this replica's node is cordoned.
    pub cordoned: watch::Receiver<bool>,
    /// Time between two handover attempts that found no taker.
    pub retry: Duration,
}

/// Keeps `cordoned` equal to `spec.unschedulable` of the Node `name`, through a watch of that
/// one object (field selector `metadata.name`). A missing Node counts as not cordoned. Watch
/// errors are logged and retried with backoff, keeping the last known value meanwhile; this
/// runs until the stream ends, which it does not on its own.
#[tracing::instrument(skip(api, cordoned))]
pub async fn follow_node(api: Api<Node>, name: String, cordoned: watch::Sender<bool>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let events = watcher(api, config).default_backoff();
    futures::pin_mut!(events);
    // Whether the current (re)list has shown the node yet.
    let mut listed = false;
    while let Some(event) = events.next().await {
        let next = match event {
            Ok(watcher::Event::Init) => {
                listed = false;
                None
            }
            Ok(watcher::Event::InitApply(node)) => {
                listed = true;
                Some(is_unschedulable(&node))
            }
            Ok(watcher::Event::InitDone) => (!listed).then_some(false),
            Ok(watcher::Event::Apply(node)) => Some(is_unschedulable(&node)),
            Ok(watcher::Event::Delete(_)) => Some(false),
            Err(e) => {
                tracing::warn!(error = %e, "watching this replica's node failed; retrying");
                None
            }
        };
        if let Some(next) = next {
            let changed = cordoned.send_if_modified(|c| std::mem::replace(c, next) != next);
            if changed {
                tracing::info!(node = %name, cordoned = next, "this replica's node changed");
            }
        }
    }
}
