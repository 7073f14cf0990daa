//! The coordinator's own HTTP server (metrics and probes), on its own address:
//!
//! - `GET /metrics`: every `rota_*` metric in the OpenMetrics text format;
//! - `GET /healthz`: 200 while the process serves HTTP (liveness);
//! - `GET /readyz`: 200 only when this replica **leads** and its controller's caches are synced,
//!   else 503 with the reason. The agents' Service selects ready pods only, so it routes agents
//!   to the leader; a standby stays alive but unready, and takes traffic once it takes over.
//!   (Point the liveness probe at `/healthz`, never at `/readyz`: a standby would be killed.)

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::leader::{LeaderState, Leadership};
use crate::metrics::{Metrics, OPENMETRICS_CONTENT_TYPE};

/// Why this replica is not ready.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Another replica leads (or none does yet).
    #[error("not the leader (leader: {})", .holder.as_deref().unwrap_or("none"))]
    NotLeader {
        /// The current leader, if known.
        holder: Option<String>,
    },
    /// This replica leads but its controller has not synced its caches yet.
    #[error("leading, but the controller's caches are not synced")]
    CachesNotSynced,
}

/// What `/readyz` reports: leadership, and the controller's "caches synced" flag.
#[derive(Clone, Debug)]
pub struct Readiness {
    leadership: Leadership,
    synced: Arc<AtomicBool>,
}

impl Readiness {
    /// Readiness that follows `leadership`; caches start unsynced.
    pub fn new(leadership: Leadership) -> Self {
        Readiness {
            leadership,
            synced: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set by the controller: true once its watches delivered their initial lists, false when
    /// it stops.
    pub fn set_synced(&self, synced: bool) {
        self.synced.store(synced, Ordering::SeqCst);
    }

    /// Ready, or why not.
    pub fn check(&self) -> Result<(), NotReady> {
        match self.leadership.state() {
            LeaderState::Follower { holder } => Err(NotReady::NotLeader { holder }),
            LeaderState::Leader { .. } if !self.synced.load(Ordering::SeqCst) => {
                Err(NotReady::CachesNotSynced)
            }
            LeaderState::Leader { .. } => Ok(()),
        }
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    readiness: Readiness,
}

/// The routes of the metrics and probes server.
pub fn router(metrics: Metrics, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { metrics, readiness })
}

/// Serves `router` on `listener` until `shutdown` resolves, then finishes open requests.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics_handler(State(state): State<AppState>) -> Response {
    match state.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "encoding metrics failed\n",
            )
                .into_response()
        }
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()).into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("{reason}\n")).into_response(),
    }
}
