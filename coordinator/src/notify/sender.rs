//! Posting one message to the webhook, with retries.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};
use tracing::{debug, warn};

use super::{Error, NotifierConfig, Result};

/// How one attempt went.
#[derive(Debug)]
enum Attempt {
    /// The webhook accepted the message (2xx).
    Delivered,
    /// Worth another try: a network failure, a timeout, 408, 429 or 5xx.
    Retry {
        /// The server's `Retry-After`, if it gave one in seconds.
        after: Option<Duration>,
        why: String,
    },
    /// The webhook refused the message for good (another status): retrying cannot help.
    Refused { why: String },
}

/// An HTTP(S) client bound to the webhook.
pub(super) struct Sender {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    uri: Uri,
    /// The URL for logs: scheme and authority only, since webhook paths are secrets.
    shown: String,
}

impl Sender {
    pub(super) fn new(config: &NotifierConfig) -> Result<Self> {
        let invalid = |why: &str| Error::Url {
            url: redact(&config.webhook_url),
            why: why.to_owned(),
        };
        let uri: Uri = config
            .webhook_url
            .trim()
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(invalid("the scheme must be http or https")),
        };
        let Some(authority) = uri.authority() else {
            return Err(invalid("it names no host"));
        };
        let shown = format!("{}://{authority}", if https { "https" } else { "http" });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = if https {
            builder
                .with_provider_and_native_roots(provider)
                .map_err(Error::Roots)?
        } else {
            // A plain-http webhook never uses TLS; an empty trust store keeps it that way.
            builder.with_tls_config(
                ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(RootCertStore::empty())
                    .with_no_client_auth(),
            )
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(Sender { client, uri, shown })
    }

    /// Posts `text` until the webhook takes it, refuses it for good, or the attempts run out.
    /// Returns whether it was delivered.
    pub(super) async fn deliver_with_retries(&self, text: &str, config: &NotifierConfig) -> bool {
        let body = Bytes::from(serde_json::json!({ "text": text }).to_string());
        let mut backoff = config.initial_backoff;
        let attempts = config.max_attempts.max(1);
        for attempt in 1..=attempts {
            match self.attempt(body.clone(), config.request_timeout).await {
                Attempt::Delivered => {
                    debug!(webhook = %self.shown, attempt, "notification delivered");
                    return true;
                }
                Attempt::Refused { why } => {
                    warn!(webhook = %self.shown, %why, "webhook refused the notification; dropped");
                    return false;
                }
                Attempt::Retry { after, why } if attempt < attempts => {
                    let wait = after.unwrap_or(backoff).min(config.max_backoff);
                    debug!(webhook = %self.shown, attempt, %why, ?wait, "notification failed; retrying");
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(config.max_backoff);
                }
                Attempt::Retry { why, .. } => {
                    warn!(webhook = %self.shown, attempts, %why, "notification not delivered; dropped");
                }
            }
        }
        false
    }

    async fn attempt(&self, body: Bytes, timeout: Duration) -> Attempt {
        let request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                header::USER_AGENT,
                concat!("rota/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body));
        let request = match request {
            Ok(request) => request,
            Err(e) => {
                return Attempt::Refused {
                    why: format!("building the request: {e}"),
                };
            }
        };
        let response = match tokio::time::timeout(timeout, self.client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(e)) => {
                return Attempt::Retry {
                    after: None,
                    why: format!("request failed: {e}"),
                };
            }
            Err(_) => {
                return Attempt::Retry {
                    after: None,
                    why: format!("no response within {timeout:?}"),
                };
            }
        };
        classify(response.status(), response.headers())
    }
}

fn classify(status: StatusCode, headers: &http::HeaderMap) -> Attempt {
    if status.is_success() {
        return Attempt::Delivered;
    }
    let why = format!("HTTP {status}");
    if status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
        || status.is_server_error()
    {
        let after = headers
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Attempt::Retry { after, why }
    } else {
        Attempt::Refused { why }
    }
}

/// The URL without its path and query, for error messages.
fn redact(url: &str) -> String {
    match url.trim().parse::<Uri>() {
        Ok(uri) => match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(authority)) => format!("{scheme}://{authority}/…"),
            _ => "<unparsable URL>".to_owned(),
        },
        Err(_) => "<unparsable URL>".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry_after(status: StatusCode, value: Option<&str>) -> Attempt {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = value {
            headers.insert(header::RETRY_AFTER, value.parse().unwrap());
        }
        classify(status, &headers)
    }

    #[test]
    fn statuses_are_classified() {
        assert!(matches!(
            retry_after(StatusCode::OK, None),
            Attempt::Delivered
        ));
        assert!(matches!(
            retry_after(StatusCode::NO_CONTENT, None),
            Attempt::Delivered
        ));
        assert!(matches!(
            retry_after(StatusCode::TOO_MANY_REQUESTS, Some("7")),
            Attempt::Retry { after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(matches!(
            retry_after(StatusCode::SERVICE_UNAVAILABLE, Some("soon")),
            Attempt::Retry { after: None, .. }
        ));
        assert!(matches!(
            retry_after(StatusCode::NOT_FOUND, None),
            Attempt::Refused { .. }
        ));
        assert!(matches!(
            retry_after(StatusCode::FOUND, None),
            Attempt::Refused { .. }
        ));
    }

    #[test]
    fn urls_are_checked_and_never_logged_whole() {
        let secret = "https://hooks.slack.com/services/T000/B000/XXXXSECRET";
        assert_eq!(redact(secret), "https://hooks.slack.com/…");
        for bad in ["ftp://example.com/x", "/relative/path", "not a url"] {
            let err = Sender::new(&NotifierConfig::new(bad)).err();
            let err = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains("invalid"), "{bad}: {err}");
        }
        let err = Sender::new(&NotifierConfig::new("ftp://h/SECRET"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(!err.contains("SECRET"), "{err}");
        // https uses the system's CA certificates (distroless/cc ships them too).
        assert!(Sender::new(&NotifierConfig::new("https://hooks.example/x")).is_ok());
    }
}
