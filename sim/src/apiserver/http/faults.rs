//! Fault injection at the HTTP layer, changeable while the server runs: a share of requests
//! answered with 500/429/503, added latency, and abrupt closing of open watch streams.
//!
//! Faults apply when a request arrives; a watch stream that is already open is never turned
//! into an error (only [`Faults::drop_watches`] ends it).

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use tokio::sync::watch;

use crate::apiserver::error::Error;

/// What to inject.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FaultConfig {
    /// Share of API requests (0.0..=1.0) answered with an error instead of being served.
    pub error_rate: f64,
    /// The status codes to pick from (500, 429, 503); empty means all three.
    pub error_codes: Vec<u16>,
    /// Latency added before each API request is served.
    pub latency: Duration,
    /// While set, `/readyz` answers 500 naming this failed check, as a kube-apiserver does when
    /// one of its readiness checks (its etcd, say) fails.
    pub not_ready: Option<String>,
}

struct Inner {
    config: Mutex<FaultConfig>,
    drops: watch::Sender<u64>,
}

/// A shared, run-time adjustable fault configuration.
#[derive(Clone)]
pub struct Faults {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("config", &*self.inner.config.lock())
            .finish()
    }
}

impl Default for Faults {
    fn default() -> Self {
        let (drops, _) = watch::channel(0);
        Faults {
            inner: Arc::new(Inner {
                config: Mutex::new(FaultConfig::default()),
                drops,
            }),
        }
    }
}

impl Faults {
    /// Replace the configuration.
    pub fn set(&self, config: FaultConfig) {
        *self.inner.config.lock() = config;
    }

    /// Stop injecting faults.
    pub fn clear(&self) {
        self.set(FaultConfig::default());
    }

    /// The current configuration.
    pub fn config(&self) -> FaultConfig {
        self.inner.config.lock().clone()
    }

    /// Close every open watch stream abruptly (the connection ends without the final chunk).
    pub fn drop_watches(&self) {
        self.inner.drops.send_modify(|n| *n += 1);
    }

    /// A receiver that changes whenever [`Faults::drop_watches`] is called.
    pub(crate) fn drop_signal(&self) -> watch::Receiver<u64> {
        self.inner.drops.subscribe()
    }

    /// Decide the fate of one arriving request: the latency to add and maybe an error.
    pub(crate) fn roll(&self) -> (Duration, Option<Error>) {
        let config = self.config();
        if config.error_rate <= 0.0 {
            return (config.latency, None);
        }
        let mut rng = rand::rng();
        if !rng.random_bool(config.error_rate.clamp(0.0, 1.0)) {
            return (config.latency, None);
        }
        let codes = if config.error_codes.is_empty() {
            vec![500, 429, 503]
        } else {
            config.error_codes
        };
        let code = codes[rng.random_range(0..codes.len())];
        let error = match code {
            429 => Error::TooManyRequests {
                message: "the server has received too many requests and has asked us to try again later (injected fault)"
                    .into(),
                retry_after_seconds: 1,
                causes: Vec::new(),
            },
            503 => Error::ServiceUnavailable("the server is currently unable to handle the request (injected fault)".into()),
            _ => Error::Internal("injected fault".into()),
        };
        (config.latency, Some(error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates() {
        let f = Faults::default();
        assert!(f.roll().1.is_none());
        f.set(FaultConfig {
            error_rate: 1.0,
            error_codes: vec![503],
            latency: Duration::from_millis(5),
            ..FaultConfig::default()
        });
        let (latency, err) = f.roll();
        assert_eq!(latency, Duration::from_millis(5));
        assert_eq!(err.unwrap().code(), 503);
        f.clear();
        assert!(f.roll().1.is_none());
    }
}
