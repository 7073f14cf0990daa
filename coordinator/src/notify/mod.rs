//! Chat notifications: a webhook that hears about rollouts starting and finishing, nodes
//! failing and pools pausing.
//!
//! The body is `{"text": "..."}`, which both Slack incoming webhooks and Microsoft Teams
//! incoming webhooks accept. Delivery never holds up the controller: [`Notifier::notify`] puts
//! the message on a bounded queue and returns at once (a full queue drops the message and says
//! so), and one background task posts the queue in order, retrying failures with exponential
//! back-off (honouring `Retry-After`) before it gives up on a message and moves on.

mod message;
mod sender;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use clap::Args;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, warn};

pub use message::{Notification, PauseCause};
use sender::Sender;

/// Errors of the notifier's set-up (delivery failures are logged, never returned).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The webhook URL is not an absolute `http://` or `https://` URL.
    #[error("webhook URL {url:?} is invalid: {why}")]
    Url {
        /// The URL given (with its path elided: webhook paths are secrets).
        url: String,
        /// Why.
        why: String,
    },
    /// The system's CA certificates could not be loaded for an `https://` webhook.
    #[error("loading the system CA certificates for the webhook: {0}")]
    Roots(#[source] std::io::Error),
    /// The TLS configuration could not be built.
    #[error("building the webhook's TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Command-line flags of the notifier, for the coordinator's configuration (`#[clap(flatten)]`).
#[derive(Clone, Debug, Args)]
pub struct NotifyArgs {
    /// Slack- or Teams-compatible incoming webhook that hears about rollouts, failed nodes and
    /// paused pools (unset: no notifications). It holds a secret: set it from a Secret.
    #[clap(long, env = "ROTA_NOTIFY_WEBHOOK_URL")]
    pub notify_webhook_url: Option<String>,
    /// Name of the cluster, put in front of every message.
    #[clap(long, env = "ROTA_NOTIFY_CLUSTER_NAME")]
    pub notify_cluster_name: Option<String>,
}

impl NotifyArgs {
    /// The notifier's configuration, `None` when no webhook is set.
    pub fn config(&self) -> Option<NotifierConfig> {
        let url = self.notify_webhook_url.as_deref()?.trim();
        if url.is_empty() {
            return None;
        }
        Some(NotifierConfig {
            cluster_name: self.notify_cluster_name.clone(),
            ..NotifierConfig::new(url)
        })
    }
}

/// How the notifier delivers.
#[derive(Clone, Debug)]
pub struct NotifierConfig {
    /// The webhook URL.
    pub webhook_url: String,
    /// Put in front of every message, e.g. `prod-eu`.
    pub cluster_name: Option<String>,
    /// Messages waiting for delivery; more are dropped.
    pub queue_capacity: usize,
    /// Attempts per message, the first included.
    pub max_attempts: u32,
    /// Wait after the first failed attempt; doubled after each further one.
    pub initial_backoff: Duration,
    /// Longest wait between attempts (also caps a server's `Retry-After`).
    pub max_backoff: Duration,
    /// Longest one attempt may take, connecting included.
    pub request_timeout: Duration,
}

impl NotifierConfig {
    /// Defaults for `webhook_url`: 256 queued messages, 6 attempts over about a minute, 10 s
    /// per attempt.
    pub fn new(webhook_url: impl Into<String>) -> Self {
        NotifierConfig {
            webhook_url: webhook_url.into(),
            cluster_name: None,
            queue_capacity: 256,
            max_attempts: 6,
            initial_backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(30),
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// What [`Notifier::notify`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Queued {
    /// It waits for delivery.
    Queued,
    /// The queue was full (the webhook is slow or down): it was dropped.
    Dropped,
    /// No webhook is configured, or the delivery task has stopped.
    Disabled,
}

/// Counts of what happened to messages since start.
#[derive(Debug, Default)]
struct Counters {
    delivered: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
}

/// The controller's handle on the webhook; clones share the queue. Cheap to call from any
/// task: it never waits.
#[derive(Clone, Debug)]
pub struct Notifier {
    queue: Option<mpsc::Sender<Notification>>,
    counters: Arc<Counters>,
}

impl Notifier {
    /// A notifier that sends nothing (no webhook configured).
    pub fn disabled() -> Self {
        Notifier {
            queue: None,
            counters: Arc::default(),
        }
    }

    /// Starts the delivery task on the current Tokio runtime. It runs until `stop` is cancelled
    /// or every clone of the returned notifier is dropped; a message being retried when `stop`
    /// comes is abandoned.
    pub fn spawn(
        config: NotifierConfig,
        stop: CancellationToken,
    ) -> Result<(Self, JoinHandle<()>)> {
        let sender = Sender::new(&config)?;
        let (queue, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(
            deliver(sender, config, receiver, counters.clone(), stop)
                .instrument(tracing::info_span!("notifier")),
        );
        Ok((
            Notifier {
                queue: Some(queue),
                counters,
            },
            task,
        ))
    }

    /// Queues `notification` for delivery and returns at once.
    pub fn notify(&self, notification: Notification) -> Queued {
        let Some(queue) = &self.queue else {
            return Queued::Disabled;
        };
        match queue.try_send(notification) {
            Ok(()) => Queued::Queued,
            Err(mpsc::error::TrySendError::Full(dropped)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                warn!(message = %dropped.summary(), "notification queue full; message dropped");
                Queued::Dropped
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Queued::Disabled,
        }
    }

    /// Messages the webhook accepted.
    pub fn delivered(&self) -> u64 {
        self.counters.delivered.load(Ordering::Relaxed)
    }

    /// Messages dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.counters.dropped.load(Ordering::Relaxed)
    }

    /// Messages given up on after their last attempt (or refused for good by the webhook).
    pub fn failed(&self) -> u64 {
        self.counters.failed.load(Ordering::Relaxed)
    }
}

/// The delivery task: one message at a time, in order.
async fn deliver(
    sender: Sender,
    config: NotifierConfig,
    mut receiver: mpsc::Receiver<Notification>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let notification = tokio::select! {
            received = receiver.recv() => match received {
                Some(notification) => notification,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        let text = notification.text(config.cluster_name.as_deref());
        let delivered = tokio::select! {
            delivered = sender.deliver_with_retries(&text, &config) => delivered,
            () = stop.cancelled() => return,
        };
        let counter = if delivered {
            &counters.delivered
        } else {
            &counters.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
