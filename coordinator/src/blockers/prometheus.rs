//! Blocking alerts from Prometheus (`spec.blockers.prometheus`, kured's `--prometheus-url`).
//!
//! [`AlertWatch`] asks every distinct Prometheus URL of the policies in force for its active
//! alerts (`GET <url>/api/v1/alerts`, which Prometheus, Thanos Ruler and vmalert serve) on a
//! timer, all URLs at once, and publishes what each said ([`AlertReports`]) on a watch channel:
//! a change wakes the controller's pass, an unchanged answer wakes nothing. Only alerts in
//! state `firing` count; `pending` ones may still resolve and do not block.
//!
//! Fail closed: a Prometheus that cannot be reached, does not answer in time, answers with an
//! HTTP or API error, or answers something that is not an alert list is reported as
//! [`AlertReport::Unknown`] with why, and [`AlertReports::apply`] turns that (and a URL not
//! asked yet) into a reason that holds the pool back. Not knowing whether an alert fires must
//! never look like "no alert fires".
//!
//! The answers are parsed by the pure [`parse_alerts`]; the HTTP client is the tree's one stack
//! (hyper 1 through hyper-util, rustls with the system's CA certificates for https).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::{ClientConfig, RootCertStore};
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, instrument, warn};

use super::{Error, Result};
use rota_core::blockers::{AlertReport, AlertReports};

/// The alerts endpoint, relative to the policy's base URL.
const ALERTS_PATH: &str = "/api/v1/alerts";
/// How much of an error answer's body a reason quotes.
const QUOTED_BYTES: usize = 200;

/// How Prometheus is polled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertSettings {
    /// Time between two rounds of questions.
    pub interval: Duration,
    /// Longest wait for one answer; a Prometheus slower than this blocks its pools.
    pub timeout: Duration,
    /// Largest answer read; a larger one blocks its pools.
    pub max_answer_bytes: usize,
}

impl Default for AlertSettings {
    fn default() -> Self {
        AlertSettings {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            max_answer_bytes: 16 * 1024 * 1024,
        }
    }
}

/// The alerts endpoint of a Prometheus base URL (which may carry a path prefix, e.g. behind a
/// proxy: `http://monitoring/prometheus`).
pub fn alerts_uri(base: &str) -> Result<Uri> {
    let invalid = |why: String| Error::Url {
        url: base.to_owned(),
        why,
    };
    let base_uri: Uri = base
        .trim()
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
    if !matches!(base_uri.scheme_str(), Some("http" | "https")) {
        return Err(invalid("the scheme must be http or https".to_owned()));
    }
    if base_uri.authority().is_none() {
        return Err(invalid("it names no host".to_owned()));
    }
    if base_uri.query().is_some() {
        return Err(invalid("a base URL takes no query".to_owned()));
    }
    let text = format!("{}{ALERTS_PATH}", base.trim().trim_end_matches('/'));
    text.parse()
        .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))
}

/// The answer of `GET /api/v1/alerts`.
#[derive(Deserialize)]
struct Answer {
    status: String,
    #[serde(default)]
    data: Option<AnswerData>,
    #[serde(default, rename = "errorType")]
    error_type: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct AnswerData {
    alerts: Vec<ActiveAlert>,
}

#[derive(Deserialize)]
struct ActiveAlert {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    state: String,
}

/// The names of the firing alerts in an answer of the alerts API, sorted, each once. An answer
/// that is not one (not JSON, another shape, `"status": "error"`, a firing alert without an
/// `alertname`) is an error: what it means for maintenance cannot be told.
pub fn parse_alerts(body: &[u8]) -> Result<Vec<String>> {
    let answer: Answer =
        serde_json::from_slice(body).map_err(|e| Error::Decode(quote_error(&e, body)))?;
    match answer.status.as_str() {
        "success" => {}
        "error" => {
            let kind = answer.error_type.unwrap_or_else(|| "error".to_owned());
            let message = answer.error.unwrap_or_default();
            return Err(Error::Api(format!("{kind}: {message}")));
        }
        other => return Err(Error::Decode(format!("unknown status {other:?}"))),
    }
    let data = answer
        .data
        .ok_or_else(|| Error::Decode("a successful answer without data".to_owned()))?;
    let mut firing = Vec::new();
    for alert in data.alerts.into_iter().filter(|a| a.state == "firing") {
        match alert.labels.get("alertname") {
            Some(name) => firing.push(name.clone()),
            None => {
                return Err(Error::Decode(
                    "a firing alert has no alertname label".to_owned(),
                ));
            }
        }
    }
    firing.sort_unstable();
    firing.dedup();
    Ok(firing)
}

fn quote_error(error: &serde_json::Error, body: &[u8]) -> String {
    let start = String::from_utf8_lossy(&body[..body.len().min(QUOTED_BYTES / 4)]);
    format!("{error} (answer begins {start:?})")
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client for http and https URLs. The system's CA certificates verify https; without any,
/// https URLs fail their TLS handshake and block their pools.
fn http_client() -> std::result::Result<HttpClient, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = match HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider.clone())
    {
        Ok(builder) => builder,
        Err(error) => {
            warn!(%error, "no system CA certificates: https Prometheus URLs cannot be verified and block their pools");
            let config = ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .map_err(|e| format!("no TLS configuration: {e}"))?
                .with_root_certificates(RootCertStore::empty())
                .with_no_client_auth();
            HttpsConnectorBuilder::new().with_tls_config(config)
        }
    };
    let connector = builder.https_or_http().enable_http1().build();
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// An error with its causes (hyper's own message says only "client error (Connect)").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = cause.source();
    }
    text
}

/// Asks one Prometheus for its firing alerts.
#[instrument(level = "debug", skip(client, settings))]
async fn ask(client: &HttpClient, url: &str, settings: &AlertSettings) -> Result<Vec<String>> {
    let uri = alerts_uri(url)?;
    let request = Request::builder()
        .method(Method::GET)
        .uri(uri)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("rota/", env!("CARGO_PKG_VERSION")),
        )
        .body(Empty::new())
        .map_err(|e| Error::Request(format!("building the request: {e}")))?;
    let exchange = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| Error::Request(with_causes(&e)))?;
        let status = response.status();
        let limit = settings.max_answer_bytes;
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    Error::TooLarge(limit)
                } else {
                    Error::Body(with_causes(e.as_ref()))
                }
            })?
            .to_bytes();
        Ok::<_, Error>((status, body))
    };
    let (status, body) = tokio::time::timeout(settings.timeout, exchange)
        .await
        .map_err(|_| Error::Timeout(settings.timeout))??;
    if status != StatusCode::OK {
        // Prometheus answers API errors (bad_data, timeout, ...) with 4xx/5xx and a JSON body
        // that says more than the status; anything else (a proxy's page) is quoted.
        return Err(match parse_alerts(&body) {
            Err(error @ Error::Api(_)) => error,
            _ => Error::Status {
                status,
                body: String::from_utf8_lossy(&body[..body.len().min(QUOTED_BYTES)])
                    .trim()
                    .to_owned(),
            },
        });
    }
    parse_alerts(&body)
}

/// Polls the Prometheus URLs it is given and publishes their answers. The polling task ends
/// when the watch is dropped.
#[derive(Debug)]
pub struct AlertWatch {
    urls: watch::Sender<BTreeSet<String>>,
    reports: watch::Receiver<AlertReports>,
    task: JoinHandle<()>,
}

impl Drop for AlertWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl AlertWatch {
    /// Starts polling (nothing until [`AlertWatch::set_urls`] names a URL).
    pub fn spawn(settings: AlertSettings) -> Self {
        let (urls, urls_rx) = watch::channel(BTreeSet::new());
        let (reports_tx, reports) = watch::channel(AlertReports::default());
        let task = tokio::spawn(
            poll(settings, urls_rx, reports_tx).instrument(info_span!("prometheus alerts")),
        );
        AlertWatch {
            urls,
            reports,
            task,
        }
    }

    /// Sets the URLs to poll; new ones are asked at once. Setting the same set again does
    /// nothing.
    pub fn set_urls(&self, wanted: BTreeSet<String>) {
        self.urls.send_if_modified(|urls| {
            if *urls == wanted {
                false
            } else {
                *urls = wanted;
                true
            }
        });
    }

    /// What every Prometheus said last.
    pub fn reports(&self) -> AlertReports {
        self.reports.borrow().clone()
    }

    /// A receiver that sees every change of the reports (to wake on).
    pub fn subscribe(&self) -> watch::Receiver<AlertReports> {
        self.reports.clone()
    }
}

async fn poll(
    settings: AlertSettings,
    mut urls: watch::Receiver<BTreeSet<String>>,
    reports: watch::Sender<AlertReports>,
) {
    let client = http_client();
    loop {
        let wanted: Vec<String> = urls.borrow_and_update().iter().cloned().collect();
        let answers = futures::future::join_all(wanted.iter().map(|url| async {
            match &client {
                Ok(client) => match ask(client, url, &settings).await {
                    Ok(firing) => AlertReport::Firing(firing),
                    Err(error) => AlertReport::Unknown(error.to_string()),
                },
                Err(why) => AlertReport::Unknown(why.clone()),
            }
        }))
        .await;
        let fresh = AlertReports::from_reports(wanted.into_iter().zip(answers));
        reports.send_if_modified(|current| {
            if *current == fresh {
                return false;
            }
            log_changes(current, &fresh);
            *current = fresh;
            true
        });
        tokio::select! {
            () = tokio::time::sleep(settings.interval) => {}
            changed = urls.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
    }
}

/// Logs what changed, once per change (not on every round).
fn log_changes(before: &AlertReports, after: &AlertReports) {
    for (url, report) in after.iter() {
        let previous = before.get(url);
        if previous == Some(report) {
            continue;
        }
        match report {
            AlertReport::Unknown(why) => {
                warn!(%url, %why, "cannot read alerts from Prometheus: its pools are held until it answers");
            }
            AlertReport::Firing(firing) => match previous {
                Some(AlertReport::Unknown(_)) | None => {
                    info!(%url, ?firing, "Prometheus answers");
                }
                Some(AlertReport::Firing(_)) => info!(%url, ?firing, "firing alerts changed"),
            },
        }
    }
    for (url, _) in before.iter().filter(|(u, _)| !after.contains(u)) {
        debug!(%url, "no policy names this Prometheus any more");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_firing_alerts_count() {
        let body = br#"{"status":"success","data":{"alerts":[
            {"labels":{"alertname":"NodeDown","instance":"a"},"state":"firing","value":"1e+00"},
            {"labels":{"alertname":"NodeDown","instance":"b"},"state":"firing"},
            {"labels":{"alertname":"DiskFilling"},"state":"pending"},
            {"labels":{"alertname":"EtcdNoLeader"},"state":"firing"},
            {"labels":{},"state":"pending"}
        ]}}"#;
        assert_eq!(parse_alerts(body).unwrap(), ["EtcdNoLeader", "NodeDown"]);
        let none = br#"{"status":"success","data":{"alerts":[]}}"#;
        assert!(parse_alerts(none).unwrap().is_empty());
    }

    #[test]
    fn anything_else_is_an_error() {
        for (body, expected) in [
            (&b"<html>login</html>"[..], "not a Prometheus alerts list"),
            (b"", "not a Prometheus alerts list"),
            (br#"{"status":"success"}"#, "without data"),
            (
                br#"{"status":"success","data":{}}"#,
                "not a Prometheus alerts list",
            ),
            (
                br#"{"status":"maybe","data":{"alerts":[]}}"#,
                "unknown status",
            ),
            (
                br#"{"status":"error","errorType":"unavailable","error":"rule manager not ready"}"#,
                "Prometheus refused: unavailable: rule manager not ready",
            ),
            (
                br#"{"status":"success","data":{"alerts":[{"labels":{},"state":"firing"}]}}"#,
                "no alertname",
            ),
        ] {
            let error = parse_alerts(body).unwrap_err().to_string();
            assert!(
                error.contains(expected),
                "{:?}: {error}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_endpoint_follows_the_base_url() {
        for (base, expected) in [
            (
                "http://prometheus:9090",
                "http://prometheus:9090/api/v1/alerts",
            ),
            (
                "http://prometheus:9090/",
                "http://prometheus:9090/api/v1/alerts",
            ),
            (
                "https://monitoring.example/prometheus/",
                "https://monitoring.example/prometheus/api/v1/alerts",
            ),
        ] {
            assert_eq!(alerts_uri(base).unwrap().to_string(), expected);
        }
        for bad in [
            "prometheus:9090",
            "ftp://p/",
            "/relative",
            "http://p/?x=1",
            "",
        ] {
            assert!(alerts_uri(bad).is_err(), "{bad}");
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("client error (Connect)")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("tcp connect error: {0}")]
    struct Middle(#[source] std::io::Error);

    #[test]
    fn causes_are_spelled_out_once() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(
            with_causes(&Outer(Middle(refused))),
            "client error (Connect): tcp connect error: refused"
        );
        assert_eq!(
            with_causes(&Error::Timeout(Duration::from_secs(2))),
            "no answer within 2s"
        );
    }
}
