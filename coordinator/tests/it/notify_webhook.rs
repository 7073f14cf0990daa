//! The webhook notifier against a local HTTP server on 127.0.0.1: what it posts, how it
//! retries, and that it never holds up its caller.

// Test helpers panic on failure, like the tests that call them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use rota_coordinator::notify::{
    Notification, Notifier, NotifierConfig, NotifyArgs, PauseCause, Queued,
};
use tokio_util::sync::CancellationToken;

/// What the server answers, in order (then 200 for ever), and what it received.
#[derive(Default)]
struct Hook {
    script: VecDeque<(StatusCode, Option<&'static str>)>,
    received: Vec<(Option<String>, serde_json::Value)>,
    hang: bool,
}

type Shared = Arc<Mutex<Hook>>;

async fn receive(State(hook): State<Shared>, headers: HeaderMap, body: String) -> Response {
    let (answer, hang) = {
        let mut hook = hook.lock().unwrap();
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let json = serde_json::from_str(&body).unwrap_or(serde_json::Value::Null);
        hook.received.push((content_type, json));
        let answer = hook.script.pop_front().unwrap_or((StatusCode::OK, None));
        (answer, hook.hang)
    };
    if hang {
        futures::future::pending::<()>().await;
    }
    let (status, retry_after) = answer;
    let mut response = (status, "ok").into_response();
    if let Some(value) = retry_after {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static(value));
    }
    response
}

/// A webhook server on 127.0.0.1 port 0; its URL carries a secret-looking path.
async fn server(hook: Hook) -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(hook));
    let app = Router::new()
        .route("/services/T0/B0/secret", post(receive))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/services/T0/B0/secret"), shared)
}

fn fast(url: &str) -> NotifierConfig {
    NotifierConfig {
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(40),
        request_timeout: Duration::from_secs(5),
        ..NotifierConfig::new(url)
    }
}

/// Polls `check` every 10 ms until it holds; fails after 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn received(hook: &Shared) -> usize {
    hook.lock().unwrap().received.len()
}

fn started(pool: &str) -> Notification {
    Notification::RolloutStarted {
        pool: pool.into(),
        nodes: 3,
    }
}

#[tokio::test]
async fn posts_slack_and_teams_compatible_text() {
    let (url, hook) = server(Hook::default()).await;
    let config = NotifierConfig {
        cluster_name: Some("prod-eu".into()),
        ..fast(&url)
    };
    let (notifier, _task) = Notifier::spawn(config, CancellationToken::new()).unwrap();
    assert_eq!(notifier.notify(started("workers")), Queued::Queued);
    assert_eq!(
        notifier.notify(Notification::PoolPaused {
            pool: "workers".into(),
            cause: PauseCause::CircuitOpen { failed: 1 },
        }),
        Queued::Queued
    );
    eventually("two deliveries", || notifier.delivered() == 2).await;
    let hook = hook.lock().unwrap();
    let (content_type, body) = &hook.received[0];
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(
        body,
        &serde_json::json!({"text": "[prod-eu] rota: rollout started in pool workers: 3 nodes to maintain"})
    );
    let text = hook.received[1].1["text"].as_str().unwrap();
    assert!(
        text.contains("after 1 failed node (circuit breaker)"),
        "{text}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "only the text field");
}

#[tokio::test]
async fn retries_server_errors_and_throttling_then_delivers() {
    let (url, hook) = server(Hook {
        script: VecDeque::from([
            (StatusCode::SERVICE_UNAVAILABLE, None),
            (StatusCode::TOO_MANY_REQUESTS, Some("0")),
            (StatusCode::BAD_GATEWAY, None),
        ]),
        ..Hook::default()
    })
    .await;
    let (notifier, _task) = Notifier::spawn(fast(&url), CancellationToken::new()).unwrap();
    notifier.notify(started("workers"));
    eventually("delivery", || notifier.delivered() == 1).await;
    assert_eq!(received(&hook), 4, "three failures, then success");
    assert_eq!(notifier.failed(), 0);
}

#[tokio::test]
async fn a_refusal_is_not_retried_and_the_next_message_goes_through() {
    let (url, hook) = server(Hook {
        script: VecDeque::from([(StatusCode::NOT_FOUND, None)]),
        ..Hook::default()
    })
    .await;
    let (notifier, _task) = Notifier::spawn(fast(&url), CancellationToken::new()).unwrap();
    notifier.notify(started("a"));
    notifier.notify(started("b"));
    eventually("the second delivery", || notifier.delivered() == 1).await;
    assert_eq!(notifier.failed(), 1);
    let hook = hook.lock().unwrap();
    assert_eq!(hook.received.len(), 2, "the 404 was not retried");
    let second = hook.received[1].1["text"].as_str().unwrap();
    assert!(second.contains("pool b"), "{second}");
}

#[tokio::test]
async fn gives_up_after_the_last_attempt() {
    let (url, hook) = server(Hook {
        script: VecDeque::from([(StatusCode::INTERNAL_SERVER_ERROR, None); 10]),
        ..Hook::default()
    })
    .await;
    let config = NotifierConfig {
        max_attempts: 3,
        ..fast(&url)
    };
    let (notifier, _task) = Notifier::spawn(config, CancellationToken::new()).unwrap();
    notifier.notify(started("workers"));
    eventually("the give-up", || notifier.failed() == 1).await;
    assert_eq!(received(&hook), 3);
    assert_eq!(notifier.delivered(), 0);
}

#[tokio::test]
async fn an_unreachable_webhook_is_retried_without_stopping_the_queue() {
    // A port that was just free: nothing listens on it.
    let addr: SocketAddr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let config = NotifierConfig {
        max_attempts: 2,
        ..fast(&format!("http://{addr}/hook"))
    };
    let (notifier, _task) = Notifier::spawn(config, CancellationToken::new()).unwrap();
    notifier.notify(started("a"));
    notifier.notify(started("b"));
    eventually("both given up", || notifier.failed() >= 2).await;
    // Each was given up once, nothing was delivered and nothing dropped for want of room:
    // the first failure did not stop the queue.
    assert_eq!(
        (notifier.failed(), notifier.delivered(), notifier.dropped()),
        (2, 0, 0)
    );
}

#[tokio::test]
async fn a_hanging_webhook_never_holds_up_the_caller() {
    let (url, hook) = server(Hook {
        hang: true,
        ..Hook::default()
    })
    .await;
    let config = NotifierConfig {
        queue_capacity: 4,
        request_timeout: Duration::from_secs(3600),
        ..fast(&url)
    };
    let stop = CancellationToken::new();
    let (notifier, task) = Notifier::spawn(config, stop.clone()).unwrap();
    // The first message is taken off the queue and hangs in flight.
    notifier.notify(started("first"));
    eventually("the first request", || received(&hook) == 1).await;
    let outcomes: Vec<Queued> = (0..50)
        .map(|i| notifier.notify(started(&format!("p{i}"))))
        .collect();
    let queued = outcomes.iter().filter(|q| **q == Queued::Queued).count();
    let dropped = outcomes.iter().filter(|q| **q == Queued::Dropped).count();
    assert_eq!((queued, dropped), (4, 46));
    assert_eq!(notifier.dropped(), 46);

    // Stopping abandons the hanging request at once.
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the delivery task stops")
        .unwrap();
    assert_eq!(notifier.notify(started("late")), Queued::Disabled);
}

#[tokio::test]
async fn the_task_ends_when_every_notifier_is_dropped() {
    let (url, _hook) = server(Hook::default()).await;
    let (notifier, task) = Notifier::spawn(fast(&url), CancellationToken::new()).unwrap();
    drop(notifier);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the delivery task stops")
        .unwrap();
}

#[test]
fn flags_and_the_disabled_notifier() {
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[clap(flatten)]
        notify: NotifyArgs,
    }
    let none = Cli::try_parse_from(["c"]).unwrap();
    assert!(none.notify.config().is_none());
    let set = Cli::try_parse_from([
        "c",
        "--notify-webhook-url=https://hooks.example/x",
        "--notify-cluster-name=prod",
    ])
    .unwrap();
    let config = set.notify.config().unwrap();
    assert_eq!(config.webhook_url, "https://hooks.example/x");
    assert_eq!(config.cluster_name.as_deref(), Some("prod"));
    assert_eq!(
        Notifier::disabled().notify(started("x")),
        Queued::Disabled,
        "no webhook: nothing is queued"
    );
}
