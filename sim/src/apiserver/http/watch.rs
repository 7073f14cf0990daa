//! The watch protocol: `?watch=true` answers 200 with a chunked stream of newline-delimited
//! `{"type": ..., "object": ...}` events, bookmarks when allowed, the initial-events-end
//! bookmark for `sendInitialEvents=true`, an `ERROR` event with a 410 `Status` for a too old
//! resourceVersion, and a clean end at `timeoutSeconds`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::{App, Repr, render};
use crate::apiserver::error::{Error, Result};
use crate::apiserver::resources::ResourceInfo;
use crate::apiserver::store::{ListOptions, Subscription, WatchEvent, WatchEventType};

type Chunk = std::result::Result<Bytes, std::io::Error>;

struct WatchParams {
    from: Option<u64>,
    send_initial_events: bool,
    bookmarks: bool,
    timeout: Duration,
}

fn params(app: &App, query: &HashMap<String, String>) -> Result<WatchParams> {
    let send_initial_events = query.get("sendInitialEvents").is_some_and(|v| v == "true");
    let from = match query.get("resourceVersion").map(String::as_str) {
        _ if send_initial_events => None,
        None | Some("") | Some("0") => None,
        Some(rv) => Some(rv.parse::<u64>().map_err(|_| {
            Error::BadRequest(format!(
                "resourceVersion: Invalid value: \"{rv}\": must be a valid resource version"
            ))
        })?),
    };
    let timeout = match query.get("timeoutSeconds").filter(|t| !t.is_empty()) {
        Some(t) => Duration::from_secs(
            t.parse::<u64>()
                .map_err(|_| Error::BadRequest(format!("invalid timeoutSeconds {t:?}")))?,
        ),
        None => app.config.default_watch_timeout,
    };
    Ok(WatchParams {
        from,
        send_initial_events,
        bookmarks: query
            .get("allowWatchBookmarks")
            .is_some_and(|v| v == "true"),
        timeout,
    })
}

fn line(event_type: WatchEventType, object: &Value) -> Bytes {
    let mut buf = Vec::with_capacity(256);
    buf.extend_from_slice(b"{\"type\":\"");
    buf.extend_from_slice(event_type.as_str().as_bytes());
    buf.extend_from_slice(b"\",\"object\":");
    // Writing a Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut buf, object);
    buf.extend_from_slice(b"}\n");
    Bytes::from(buf)
}

fn bookmark(info: &ResourceInfo, rv: u64, initial_events_end: bool) -> Value {
    let mut metadata = json!({"resourceVersion": rv.to_string()});
    if initial_events_end {
        metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": info.kind, "apiVersion": info.api_version(), "metadata": metadata})
}

/// Answer a watch request. Errors that upstream reports inside the stream (410) become an
/// `ERROR` event; request errors (bad selectors) are plain error responses.
pub(super) fn serve(
    app: &Arc<App>,
    info: &ResourceInfo,
    namespace: Option<&str>,
    opts: ListOptions,
    query: &HashMap<String, String>,
    repr: Repr,
) -> Response {
    match start(app, info, namespace, opts, query, repr) {
        Ok(resp) => resp,
        Err(e) => super::error_response(&e),
    }
}

fn start(
    app: &Arc<App>,
    info: &ResourceInfo,
    namespace: Option<&str>,
    opts: ListOptions,
    query: &HashMap<String, String>,
    repr: Repr,
) -> Result<Response> {
    let params = params(app, query)?;
    let gr = info.group_resource();
    let (tx, rx) = mpsc::channel::<Chunk>(256);
    match app.store.subscribe(&gr, namespace, &opts, params.from) {
        Ok(sub) => {
            tokio::spawn(pump(app.clone(), info.clone(), sub, params, repr, tx));
        }
        // Bad selectors are refused before the stream starts, as upstream does.
        Err(e @ Error::BadRequest(_)) => return Err(e),
        Err(e) => {
            let _ = tx.try_send(Ok(line(WatchEventType::Error, &e.to_status())));
        }
    }
    let mut resp = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Ok(resp)
}

async fn pump(
    app: Arc<App>,
    info: ResourceInfo,
    mut sub: Subscription,
    params: WatchParams,
    repr: Repr,
    tx: mpsc::Sender<Chunk>,
) {
    let send = |event: &WatchEvent| {
        let object = match event.event_type {
            WatchEventType::Bookmark | WatchEventType::Error => (*event.object).clone(),
            _ => render(&info, &event.object, repr, app.store.now()),
        };
        line(event.event_type, &object)
    };
    let mut shutdown = app.shutdown.clone();
    let mut drops = app.faults.drop_signal();
    drops.mark_unchanged();
    let deadline = Instant::now() + params.timeout;

    for event in std::mem::take(&mut sub.initial) {
        if tx.send(Ok(send(&event))).await.is_err() {
            return;
        }
    }
    if params.send_initial_events {
        let end = bookmark(&info, sub.start_resource_version, true);
        if tx
            .send(Ok(line(WatchEventType::Bookmark, &end)))
            .await
            .is_err()
        {
            return;
        }
    }
    let mut ticker = tokio::time::interval_at(
        Instant::now() + app.config.bookmark_interval,
        app.config.bookmark_interval,
    );
    loop {
        tokio::select! {
            event = sub.next() => match event {
                Some(event) => {
                    if tx.send(Ok(send(&event))).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            _ = ticker.tick(), if params.bookmarks => {
                let b = bookmark(&info, sub.last_resource_version, false);
                if tx.send(Ok(line(WatchEventType::Bookmark, &b))).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(deadline) => return,
            _ = stopped(&mut shutdown) => return,
            changed = drops.changed() => {
                if changed.is_ok() {
                    // An error chunk makes hyper abort the connection without the final chunk.
                    let _ = tx.send(Err(std::io::Error::other("watch dropped by fault injection"))).await;
                }
                return;
            }
            _ = tx.closed() => return,
        }
    }
}

/// Resolves once the server shuts down.
async fn stopped(rx: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
