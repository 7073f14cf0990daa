//! The FleetLock endpoint: Fedora CoreOS, Flatcar and other image-based hosts whose updater
//! (Zincati) asks a lock server before it reboots take a rota slot for their Node, under the
//! same rules as every other node ([`rota_core::fleetlock`] says how the protocol maps onto
//! rota).
//!
//! - `POST /v1/pre-reboot` and `POST /v1/steady-state` on their own address
//!   (`--fleetlock-addr`), over TLS with the gRPC server's certificate (offering `http/1.1`)
//!   unless the coordinator serves plain text;
//! - every request carries `fleet-lock-protocol: true` and its group's token, as
//!   `Authorization: Bearer TOKEN` or as the password of HTTP basic authentication (what
//!   Zincati sends for a `base_url` of `https://GROUP:TOKEN@host/`). The tokens are files in
//!   `--fleetlock-tokens-dir`, one per group, named after it (a Secret mounted there); a group
//!   without a file is refused, and the files are read on each request, so a rotated Secret
//!   takes effect without a restart;
//! - every replica serves it; only the leader's controller answers (a standby answers 503
//!   `not_leader`, and is not ready, so the Service routes to the leader).

mod backend;
pub mod hosts;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use clap::Args;
use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::{Api, Client};
use ring::{digest, hmac};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::Mutex;

use rota_core::fleetlock::{
    self, ClientParams, Kind, PRE_REBOOT, PROTOCOL_HEADER, Refusal, STEADY_STATE, ZINCATI_APP_ID,
};

use crate::core_gate::Slot;
use crate::metrics::Metrics;

pub use backend::{Backend, Locks};
pub use hosts::HostLocks;

/// The FleetLock endpoint's flags.
#[derive(Clone, Debug, Args)]
#[clap(group = clap::ArgGroup::new("fleetlock_tokens").multiple(false))]
pub struct FleetLockArgs {
    /// Serve the FleetLock protocol (`/v1/pre-reboot`, `/v1/steady-state`) on this address,
    /// for Zincati and other FleetLock clients. Off unless set; needs the groups' tokens
    /// (`--fleetlock-tokens-secret` or `--fleetlock-tokens-dir`).
    #[clap(long, env = "ROTA_FLEETLOCK_ADDR", requires = "fleetlock_tokens")]
    pub fleetlock_addr: Option<SocketAddr>,
    /// Secret in the coordinator's namespace with one key per FleetLock group, named after the
    /// group, holding the token its clients must present (read through the API, at most every
    /// 10 s; a group without a key is refused, and so is everyone while the Secret is missing).
    #[clap(long, env = "ROTA_FLEETLOCK_TOKENS_SECRET", group = "fleetlock_tokens")]
    pub fleetlock_tokens_secret: Option<String>,
    /// Directory with one file per FleetLock group instead, named after the group, read on
    /// each request.
    #[clap(long, env = "ROTA_FLEETLOCK_TOKENS_DIR", group = "fleetlock_tokens")]
    pub fleetlock_tokens_dir: Option<PathBuf>,
    /// Serve FleetLock over plain HTTP even when the coordinator has a TLS certificate (behind
    /// a TLS-terminating proxy, or for local tests).
    #[clap(long, env = "ROTA_FLEETLOCK_INSECURE_PLAINTEXT")]
    pub fleetlock_insecure_plaintext: bool,
}

impl FleetLockArgs {
    /// Where the groups' tokens come from, when FleetLock is served.
    pub fn tokens(&self, client: &Client, namespace: &str) -> Option<Tokens> {
        self.fleetlock_addr?;
        match (&self.fleetlock_tokens_secret, &self.fleetlock_tokens_dir) {
            (Some(secret), _) => Some(Tokens::secret(client.clone(), namespace, secret)),
            (None, Some(dir)) => Some(Tokens::dir(dir)),
            (None, None) => None,
        }
    }
}

/// Where the leader's [`Locks`] are installed for its term; closed otherwise.
pub type Gate = Slot<dyn Locks>;

/// How long the tokens read from a Secret are used before it is read again.
const SECRET_TTL: Duration = Duration::from_secs(10);

/// The groups' tokens: the keys of a Secret, or the files of a directory, named after the
/// groups.
#[derive(Clone)]
pub struct Tokens {
    source: TokenSource,
}

/// The keys of a Secret as read last, and when.
type Cached = Option<(Instant, BTreeMap<String, String>)>;

#[derive(Clone)]
enum TokenSource {
    Dir(PathBuf),
    Secret(Box<SecretTokens>),
}

#[derive(Clone)]
struct SecretTokens {
    api: Api<Secret>,
    name: String,
    cache: Arc<Mutex<Cached>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            TokenSource::Dir(dir) => f.debug_tuple("Tokens::Dir").field(dir).finish(),
            TokenSource::Secret(secret) => {
                f.debug_tuple("Tokens::Secret").field(&secret.name).finish()
            }
        }
    }
}

impl Tokens {
    /// Tokens read from the files of `dir` on each request.
    pub fn dir(dir: impl Into<PathBuf>) -> Self {
        Tokens {
            source: TokenSource::Dir(dir.into()),
        }
    }

    /// Tokens read from the keys of the Secret `name` in `namespace`.
    pub fn secret(client: Client, namespace: &str, name: &str) -> Self {
        Tokens {
            source: TokenSource::Secret(Box::new(SecretTokens {
                api: Api::namespaced(client, namespace),
                name: name.to_owned(),
                cache: Arc::new(Mutex::new(None)),
            })),
        }
    }

    /// `group`'s token, if it has one.
    async fn token_of(&self, group: &str) -> Option<String> {
        match &self.source {
            TokenSource::Dir(dir) => {
                let text = std::fs::read_to_string(dir.join(group)).ok()?;
                Some(text.trim().to_owned())
            }
            TokenSource::Secret(secret) => {
                let SecretTokens { api, name, cache } = secret.as_ref();
                let mut cached = cache.lock().await;
                let fresh = cached
                    .as_ref()
                    .is_some_and(|(read, _)| read.elapsed() < SECRET_TTL);
                if !fresh {
                    let keys = match api.get_opt(name).await {
                        Ok(secret) => secret
                            .and_then(|s| s.data)
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|(k, v)| {
                                String::from_utf8(v.0)
                                    .ok()
                                    .map(|v| (k, v.trim().to_owned()))
                            })
                            .collect(),
                        Err(error) => {
                            tracing::warn!(secret = %name, %error, "FleetLock tokens not readable; refusing every group");
                            BTreeMap::new()
                        }
                    };
                    *cached = Some((Instant::now(), keys));
                }
                cached
                    .as_ref()
                    .and_then(|(_, keys)| keys.get(group).cloned())
            }
        }
    }

    /// Whether `presented` is `group`'s token.
    async fn admits(&self, group: &str, presented: &str) -> Result<(), Refusal> {
        // Groups are `[a-zA-Z0-9.-]+`: one that starts with a dot could name `..` or a
        // Secret volume's own entries.
        let unknown = || {
            Refusal::new(
                Kind::Unauthorized,
                format!("group {group} is not configured, or the token is not its token"),
            )
        };
        if group.starts_with('.') {
            return Err(unknown());
        }
        let expected = self
            .token_of(group)
            .await
            .filter(|t| !t.is_empty())
            .ok_or_else(unknown)?;
        // Digests of both, compared: the time taken says nothing about the token.
        let want = digest::digest(&digest::SHA256, expected.as_bytes());
        let got = digest::digest(&digest::SHA256, presented.as_bytes());
        if want.as_ref() == got.as_ref() {
            Ok(())
        } else {
            Err(unknown())
        }
    }
}

/// The token of a request: `Bearer TOKEN`, or the password of `Basic`.
fn presented_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = value.split_once(' ')?;
    if scheme.eq_ignore_ascii_case("bearer") {
        return Some(rest.trim().to_owned());
    }
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(rest.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (_, password) = text.split_once(':')?;
        return Some(password.to_owned());
    }
    None
}

/// Zincati's id for a machine id: systemd's `sd_id128_get_machine_app_specific` with
/// Zincati's application id (HMAC-SHA256 keyed by the machine id, first 16 bytes, made a
/// version-4 UUID), as lower-case hex. `None` when `machine_id` is not 32 hex digits.
pub fn zincati_id(machine_id: &str) -> Option<String> {
    let hex: String = machine_id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let key: Vec<u8> = (0..16)
        .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), &ZINCATI_APP_ID);
    let mut id: Vec<u8> = tag.as_ref().iter().take(16).copied().collect();
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    Some(id.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Clone)]
struct AppState {
    gate: Gate,
    tokens: Tokens,
    metrics: Metrics,
}

/// The FleetLock routes.
pub fn router(gate: Gate, tokens: Tokens, metrics: Metrics) -> Router {
    Router::new()
        .route(PRE_REBOOT, post(pre_reboot))
        .route(STEADY_STATE, post(steady_state))
        .with_state(AppState {
            gate,
            tokens,
            metrics,
        })
}

async fn pre_reboot(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&state, "pre-reboot", &headers, &body).await
}

async fn steady_state(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(&state, "steady-state", &headers, &body).await
}

async fn handle(
    state: &AppState,
    endpoint: &'static str,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let (group, result) = answer(state, endpoint, headers, body).await;
    let label = match &result {
        Ok(()) => "ok",
        Err(refusal) => refusal.kind.as_str(),
    };
    state
        .metrics
        .fleetlock_request(endpoint, group.as_deref().unwrap_or(""), label);
    match result {
        Ok(()) => (StatusCode::OK, axum::Json(serde_json::json!({}))).into_response(),
        Err(refusal) => {
            tracing::debug!(endpoint, kind = refusal.kind.as_str(), value = %refusal.value, "FleetLock request refused");
            let status = StatusCode::from_u16(refusal.kind.status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, axum::Json(refusal.body())).into_response()
        }
    }
}

/// The result, and the group once the caller proved it belongs to it.
async fn answer(
    state: &AppState,
    endpoint: &'static str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Option<String>, Result<(), Refusal>) {
    let protocol = headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok());
    let client = match fleetlock::parse(protocol, body) {
        Ok(client) => client,
        Err(refusal) => return (None, Err(refusal)),
    };
    let Some(token) = presented_token(headers) else {
        return (
            None,
            Err(Refusal::new(
                Kind::Unauthorized,
                "no credentials: send the group's token as `Authorization: Bearer TOKEN` or as the password of basic authentication",
            )),
        );
    };
    if let Err(refusal) = state.tokens.admits(&client.group, &token).await {
        return (None, Err(refusal));
    }
    let group = Some(client.group.clone());
    let Some(locks) = state.gate.get() else {
        return (
            group,
            Err(Refusal::new(
                Kind::NotLeader,
                "this coordinator replica does not lead (or is still starting); ask again",
            )),
        );
    };
    let result = match endpoint {
        "pre-reboot" => locks.lock(&client).await,
        _ => locks.unlock(&client).await,
    };
    log(endpoint, &client, &result);
    (group, result)
}

fn log(endpoint: &str, client: &ClientParams, result: &Result<(), Refusal>) {
    match result {
        Ok(()) => {
            tracing::info!(endpoint, id = %client.id, group = %client.group, "FleetLock request granted")
        }
        Err(refusal) => {
            tracing::debug!(endpoint, id = %client.id, group = %client.group, kind = refusal.kind.as_str(), "FleetLock request not granted: {}", refusal.value)
        }
    }
}

/// Serves `router` on plain TCP connections until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Serves `router` on the connections `incoming` yields (TLS) until `shutdown`.
pub async fn serve_incoming<I, IO>(
    incoming: I,
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    I: Stream<Item = std::io::Result<IO>> + Send + Unpin + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    axum::serve(Incoming { incoming, addr }, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// A stream of connections as an axum listener.
struct Incoming<I> {
    incoming: I,
    addr: SocketAddr,
}

impl<I, IO> axum::serve::Listener for Incoming<I>
where
    I: Stream<Item = std::io::Result<IO>> + Send + Unpin + 'static,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Io = IO;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.incoming.next().await {
                Some(Ok(io)) => return (io, self.addr),
                Some(Err(error)) => tracing::debug!(%error, "FleetLock connection failed"),
                // The TLS stream never ends; should it, accept nothing more.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zincati_ids_are_systemds_app_specific_ids() {
        // `systemd-id128 machine-id --app-specific=de35106b6ec24688b63afddaa156679b` on a
        // machine whose /etc/machine-id is 3d1219c7c4c5404aaa1f6d2a48adfda4.
        assert_eq!(
            zincati_id("3d1219c7c4c5404aaa1f6d2a48adfda4").as_deref(),
            Some("975228d46dc94622b9bbe16671e2b58d")
        );
        assert_eq!(zincati_id("not-a-machine-id"), None);
        assert_eq!(zincati_id("3d1219c7c4c5404aaa1f6d2a48adfdzz"), None);
    }

    #[test]
    fn tokens_come_as_bearer_or_basic_password() {
        let mut headers = HeaderMap::new();
        assert_eq!(presented_token(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert_eq!(presented_token(&headers).as_deref(), Some("s3cret"));
        let basic = base64::engine::general_purpose::STANDARD.encode("workers:s3cret");
        headers.insert(
            header::AUTHORIZATION,
            format!("Basic {basic}").parse().unwrap(),
        );
        assert_eq!(presented_token(&headers).as_deref(), Some("s3cret"));
        headers.insert(header::AUTHORIZATION, "Digest x".parse().unwrap());
        assert_eq!(presented_token(&headers), None);
    }

    /// Tokens from a Secret read through the API: a key per group; while the Secret is missing
    /// every group is refused; a new token is taken once the cached read is older than its TTL.
    #[tokio::test]
    async fn tokens_come_from_the_secrets_keys() {
        use rota_sim::apiserver::{ApiServer, Store};
        use std::net::{Ipv4Addr, SocketAddr};
        let server = ApiServer::start(Store::new(), SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
            .await
            .unwrap();
        let client =
            kube::Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap();
        let tokens = Tokens::secret(client.clone(), "rota-system", "rota-fleetlock-tokens");
        let refused = tokens.admits("workers", "s3cret").await.unwrap_err();
        assert_eq!(refused.kind, Kind::Unauthorized);
        let secret: Secret = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "rota-fleetlock-tokens", "namespace": "rota-system"},
            "data": {"workers": base64::engine::general_purpose::STANDARD.encode("s3cret\n")},
        }))
        .unwrap();
        let namespace: k8s_openapi::api::core::v1::Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "rota-system"}}))
                .unwrap();
        Api::all(client.clone())
            .create(&kube::api::PostParams::default(), &namespace)
            .await
            .unwrap();
        let secrets: Api<Secret> = Api::namespaced(client, "rota-system");
        secrets
            .create(&kube::api::PostParams::default(), &secret)
            .await
            .unwrap();
        // A fresh reader sees it at once (the first one keeps its cached read for a while).
        let tokens = Tokens::secret(
            secrets.clone().into_client(),
            "rota-system",
            "rota-fleetlock-tokens",
        );
        assert_eq!(tokens.admits("workers", "s3cret").await, Ok(()));
        for (group, token) in [("workers", "other"), ("other", "s3cret")] {
            let refused = tokens.admits(group, token).await.unwrap_err();
            assert_eq!(refused.kind, Kind::Unauthorized, "{group} {token}");
        }
    }

    #[tokio::test]
    async fn a_group_is_admitted_only_with_its_own_token() {
        let dir =
            std::env::temp_dir().join(format!("rota-fleetlock-tokens-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("workers"), "s3cret\n").unwrap();
        std::fs::write(dir.join("empty"), "\n").unwrap();
        let tokens = Tokens::dir(&dir);
        assert_eq!(tokens.admits("workers", "s3cret").await, Ok(()));
        for (group, token) in [
            ("workers", "wrong"),
            ("workers", ""),
            ("other", "s3cret"),
            ("empty", ""),
            ("..", "s3cret"),
        ] {
            let refused = tokens.admits(group, token).await.unwrap_err();
            assert_eq!(refused.kind, Kind::Unauthorized, "{group} {token}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
