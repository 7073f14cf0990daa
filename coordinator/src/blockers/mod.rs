//! Blockers that live outside Kubernetes: what the scheduler must know before it admits a node
//! but cannot read from the cluster cache.
//!
//! - [`prometheus`]: firing alerts of the Prometheus each policy names
//!   (`spec.blockers.prometheus`), polled on a timer and published on a watch channel that wakes
//!   the controller's pass. A Prometheus that cannot be asked blocks its pools (fail closed).
//!
//! Blocking pods (`spec.blockers.podSelectors`) need no module here: the controller finds them in
//! its pod cache when it builds the scheduler's snapshot.

pub mod prometheus;

pub use prometheus::{AlertSettings, AlertWatch};

/// Errors of the blockers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The policy's URL cannot be turned into the alerts endpoint.
    #[error("{url:?} is not an http(s) URL: {why}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: String,
    },
    /// The request did not get an answer (connection refused, DNS, TLS, reset).
    #[error("{0}")]
    Request(String),
    /// No answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(std::time::Duration),
    /// An HTTP status other than 200.
    #[error("HTTP {status}: {body}")]
    Status {
        /// The status.
        status: http::StatusCode,
        /// The start of the answer's body.
        body: String,
    },
    /// The answer's body could not be read.
    #[error("reading the answer: {0}")]
    Body(String),
    /// The answer is larger than the coordinator accepts.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
    /// The answer is not the JSON of the alerts API.
    #[error("the answer is not a Prometheus alerts list: {0}")]
    Decode(String),
    /// Prometheus answered with an error (`"status": "error"`).
    #[error("Prometheus refused: {0}")]
    Api(String),
}

/// Result alias of the blockers.
pub type Result<T, E = Error> = std::result::Result<T, E>;
