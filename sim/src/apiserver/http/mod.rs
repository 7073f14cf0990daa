//! The HTTP face of the emulated API server: the REST paths, verbs, content types, status codes
//! and watch protocol that kube-rs and kubectl speak.

mod discovery;
mod faults;
mod openapi;
mod table;
mod watch;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use tokio::sync::watch as tokio_watch;
use tokio::task::JoinHandle;

pub use discovery::KUBERNETES_VERSION;
pub use faults::{FaultConfig, Faults};
pub use table::{IncludeObject, human_duration};

use super::error::{Error, Result};
use super::meta;
use super::patch::PatchKind;
use super::resources::ResourceInfo;
use super::store::{DeleteOptions, ListOptions, ResourceKey, Store};

/// Largest request body accepted (the API server's default limit).
const MAX_BODY: usize = 3 * 1024 * 1024;

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// How often an idle watch that allows bookmarks gets one.
    pub bookmark_interval: Duration,
    /// Watch duration when the client gives no `timeoutSeconds`.
    pub default_watch_timeout: Duration,
    /// Run the disruption controller alongside the server.
    pub disruption_controller: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bookmark_interval: Duration::from_secs(60),
            default_watch_timeout: Duration::from_secs(1800),
            disruption_controller: true,
        }
    }
}

struct App {
    store: Store,
    faults: Faults,
    config: ServerConfig,
    shutdown: tokio_watch::Receiver<bool>,
    addr: SocketAddr,
}

/// Starts the emulated API server.
#[derive(Debug)]
pub struct ApiServer;

impl ApiServer {
    /// Serve `store` on `addr` (port 0 picks a free port) with the default configuration,
    /// including the disruption controller.
    pub async fn start(store: Store, addr: SocketAddr) -> std::io::Result<ServerHandle> {
        Self::start_with(store, addr, ServerConfig::default()).await
    }

    /// Serve with a given configuration.
    pub async fn start_with(
        store: Store,
        addr: SocketAddr,
        config: ServerConfig,
    ) -> std::io::Result<ServerHandle> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (shutdown_tx, shutdown_rx) = tokio_watch::channel(false);
        let faults = Faults::default();
        let controller = config
            .disruption_controller
            .then(|| super::disruption::spawn(store.clone()));
        let app = Arc::new(App {
            store,
            faults: faults.clone(),
            config,
            shutdown: shutdown_rx.clone(),
            addr,
        });
        let router = Router::new().fallback(handle).with_state(app);
        let mut signal = shutdown_rx;
        let server = tokio::spawn(async move {
            let stopped = async move {
                // Either a shutdown request or the handle being dropped ends the server.
                let _ = signal.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, router)
                .with_graceful_shutdown(stopped)
                .await
            {
                tracing::error!(error = %e, "API server failed");
            }
        });
        tracing::info!(%addr, "emulated API server listening");
        Ok(ServerHandle {
            addr,
            faults,
            shutdown: shutdown_tx,
            server: Some(server),
            controller,
        })
    }
}

/// A running server. Dropping it stops the server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    faults: Faults,
    shutdown: tokio_watch::Sender<bool>,
    server: Option<JoinHandle<()>>,
    controller: Option<JoinHandle<()>>,
}

impl ServerHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The fault-injection controls.
    pub fn faults(&self) -> &Faults {
        &self.faults
    }

    /// A kubeconfig pointing at this server without authentication.
    pub fn kubeconfig(&self) -> String {
        kubeconfig_yaml(&self.url())
    }

    /// Stop accepting requests, end open watches cleanly and wait for the server to finish.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
        if let Some(controller) = self.controller.take() {
            controller.abort();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(controller) = self.controller.take() {
            controller.abort();
        }
    }
}

/// A kubeconfig for `server` with no authentication.
pub fn kubeconfig_yaml(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {server}\n  name: rota-sim\ncontexts:\n- context:\n    cluster: rota-sim\n    user: rota-sim\n  name: rota-sim\ncurrent-context: rota-sim\npreferences: {{}}\nusers:\n- name: rota-sim\n  user: {{}}\n"
    )
}

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Target {
    CoreVersions,
    Groups,
    Group(String),
    Resources { group: String, version: String },
    Resource(Route),
}

/// A resource path.
#[derive(Debug, PartialEq, Eq)]
struct Route {
    group: String,
    version: String,
    namespace: Option<String>,
    plural: String,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let (group, version, rest) = match segs.as_slice() {
        ["api"] => return Some(Target::CoreVersions),
        ["api", v] => {
            return Some(Target::Resources {
                group: String::new(),
                version: v.to_string(),
            });
        }
        ["api", v, rest @ ..] => (String::new(), v.to_string(), rest),
        ["apis"] => return Some(Target::Groups),
        ["apis", g] => return Some(Target::Group(g.to_string())),
        ["apis", g, v] => {
            return Some(Target::Resources {
                group: g.to_string(),
                version: v.to_string(),
            });
        }
        ["apis", g, v, rest @ ..] => (g.to_string(), v.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, ..] if !(rest.len() == 3 && matches!(*r, "status" | "finalize")) => {
            (Some(ns.to_string()), &rest[2..])
        }
        _ => (None, rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (p, None, None),
        [p, n] => (p, Some(n.to_string()), None),
        [p, n, s] => (p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    Some(Target::Resource(Route {
        group,
        version,
        namespace,
        plural: plural.to_string(),
        name,
        sub,
    }))
}

fn parse_query(query: Option<&str>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(hi), Some(lo)) => {
                        out.push((hi * 16 + lo) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How the client wants objects represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Repr {
    Full,
    Table(IncludeObject),
    Metadata,
}

fn negotiate(headers: &HeaderMap, query: &HashMap<String, String>) -> Result<Repr> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accept.trim().is_empty() {
        return Ok(Repr::Full);
    }
    for media in accept.split(',') {
        let mut parts = media.split(';').map(str::trim);
        let essence = parts.next().unwrap_or_default();
        let params: HashMap<&str, &str> = parts.filter_map(|p| p.split_once('=')).collect();
        if !matches!(essence, "application/json" | "application/*" | "*/*") {
            continue;
        }
        match params.get("as") {
            None => return Ok(Repr::Full),
            Some(&"Table") => {
                return Ok(Repr::Table(IncludeObject::parse(
                    query.get("includeObject").map(String::as_str),
                )));
            }
            Some(&"PartialObjectMetadata") | Some(&"PartialObjectMetadataList") => {
                return Ok(Repr::Metadata);
            }
            Some(_) => continue,
        }
    }
    Err(Error::NotAcceptable(
        "only the following media types are accepted: application/json, application/json;as=Table;v=v1;g=meta.k8s.io"
            .into(),
    ))
}

fn json_response(code: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    bytes_response(code, bytes)
}

fn bytes_response(code: StatusCode, bytes: Vec<u8>) -> Response {
    let mut resp = Response::new(Body::from(bytes));
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(err: &Error) -> Response {
    let code = StatusCode::from_u16(err.code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = json_response(code, &err.to_status());
    if let Some(secs) = err.retry_after()
        && let Ok(v) = HeaderValue::from_str(&secs.to_string())
    {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}

async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = parse_query(req.uri().query());
    let headers = req.headers().clone();
    tracing::debug!(%method, %path, query = ?req.uri().query(), content_type = ?headers.get(header::CONTENT_TYPE), accept = ?headers.get(header::ACCEPT), "request");

    for probe in ["/healthz", "/readyz", "/livez"] {
        if path == probe || path.starts_with(&format!("{probe}/")) {
            let failed = app.faults.config().not_ready.filter(|_| probe == "/readyz");
            let mut resp = match failed {
                None => Response::new(Body::from("ok")),
                Some(check) => {
                    let mut resp = Response::new(Body::from(format!(
                        "[-]{check} failed: reason withheld\nreadyz check failed\n"
                    )));
                    *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    resp
                }
            };
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            return resp;
        }
    }
    if path == "/version" || path == "/version/" {
        return json_response(StatusCode::OK, &discovery::version(&app.store));
    }
    if method == Method::GET && (path == "/openapi/v3" || path.starts_with("/openapi/v3/")) {
        let registry = app.store.registry();
        return match path.trim_start_matches("/openapi/v3").trim_matches('/') {
            "" => json_response(StatusCode::OK, &openapi::root(&registry)),
            gv => match openapi::group_version(&registry, gv) {
                Ok(doc) => json_response(StatusCode::OK, &doc),
                Err(e) => error_response(&e),
            },
        };
    }
    let Some(target) = parse_path(&path) else {
        return error_response(&Error::UnknownResource);
    };

    let (latency, fault) = app.faults.roll();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(fault) = fault {
        return error_response(&fault);
    }

    let body = match axum::body::to_bytes(req.into_body(), MAX_BODY).await {
        Ok(b) => b,
        Err(_) => {
            return error_response(&Error::Failure {
                code: 413,
                message: "Request entity too large".into(),
            });
        }
    };
    match dispatch(&app, &method, target, &query, &headers, body).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(%method, %path, code = e.code(), error = %e, "request failed");
            error_response(&e)
        }
    }
}

async fn dispatch(
    app: &Arc<App>,
    method: &Method,
    target: Target,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let discovery_get = |v: Result<Value>| -> Result<Response> {
        if method != Method::GET {
            return Err(Error::MethodNotAllowed);
        }
        Ok(json_response(StatusCode::OK, &v?))
    };
    match target {
        Target::CoreVersions => discovery_get(Ok(discovery::core_versions(&app.addr.to_string()))),
        Target::Groups => discovery_get(Ok(discovery::group_list(&app.store.registry()))),
        Target::Group(g) => discovery_get(discovery::group(&app.store.registry(), &g)),
        Target::Resources { group, version } => discovery_get(discovery::resource_list(
            &app.store.registry(),
            &group,
            &version,
        )),
        Target::Resource(route) => resource(app, method, route, query, headers, body).await,
    }
}

fn list_options(query: &HashMap<String, String>) -> Result<ListOptions> {
    let limit = match query.get("limit").filter(|l| !l.is_empty()) {
        Some(l) => Some(
            l.parse::<usize>()
                .map_err(|_| Error::BadRequest(format!("invalid limit {l:?}")))?,
        ),
        None => None,
    };
    Ok(ListOptions {
        label_selector: query.get("labelSelector").cloned(),
        field_selector: query.get("fieldSelector").cloned(),
        limit,
        continue_token: query.get("continue").cloned(),
    })
}

fn parse_body(body: &Bytes) -> Result<Value> {
    serde_json::from_slice(body)
        .map_err(|e| Error::BadRequest(format!("couldn't get version/kind; json parse error: {e}")))
}

fn require_json(headers: &HeaderMap) -> Result<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct.split(';').next().unwrap_or_default().trim();
    if essence.is_empty() || essence == "application/json" || essence == "*/*" {
        Ok(())
    } else {
        Err(Error::UnsupportedMediaType(
            "application/json, application/yaml, application/vnd.kubernetes.protobuf, application/cbor".into(),
        ))
    }
}

fn require_kind(obj: &Value, body: &Bytes) -> Result<()> {
    if obj
        .get("kind")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        let text = String::from_utf8_lossy(body);
        return Err(Error::BadRequest(format!(
            "Object 'Kind' is missing in '{}'",
            text.trim()
        )));
    }
    Ok(())
}

fn dry_run(query: &HashMap<String, String>) -> bool {
    query.get("dryRun").is_some_and(|d| d == "All")
}

fn reject_dry_run(query: &HashMap<String, String>) -> Result<()> {
    if dry_run(query) {
        return Err(Error::BadRequest(
            "dryRun is only supported for delete and eviction by this API server".into(),
        ));
    }
    Ok(())
}

/// Render one object for the client.
fn render(info: &ResourceInfo, obj: &Value, repr: Repr, now: jiff::Timestamp) -> Value {
    match repr {
        Repr::Full => obj.clone(),
        Repr::Table(include) => table::table(
            info,
            [obj],
            meta::resource_version(obj).unwrap_or(0),
            None,
            include,
            now,
        ),
        Repr::Metadata => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
        }),
    }
}

fn list_kind(info: &ResourceInfo) -> String {
    format!("{}List", info.kind)
}

async fn resource(
    app: &Arc<App>,
    method: &Method,
    route: Route,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response> {
    let store = &app.store;
    let info = store
        .registry()
        .get_versioned(&route.group, &route.version, &route.plural)?
        .clone();
    if route.namespace.is_some() && !info.namespaced {
        return Err(Error::UnknownResource);
    }
    if let Some(sub) = &route.sub
        && !info.subresources().contains(&sub.as_str())
    {
        return Err(Error::UnknownResource);
    }
    if info.create_only && !(method == Method::POST && route.name.is_none()) {
        return Err(Error::MethodNotAllowed);
    }
    let gr = info.group_resource();
    let ns = route.namespace.as_deref();
    let key = |name: &str| ResourceKey::new(gr.clone(), ns, name);
    let now = store.now();
    let is_watch = query.get("watch").is_some_and(|w| w == "true" || w == "1");

    match (method.clone(), route.name.as_deref(), route.sub.as_deref()) {
        (Method::GET, None, None) if is_watch => {
            let repr = negotiate(headers, query)?;
            let opts = list_options(query)?;
            Ok(watch::serve(app, &info, ns, opts, query, repr))
        }
        (Method::GET, None, None) => {
            let repr = negotiate(headers, query)?;
            let opts = list_options(query)?;
            let list = store.list(&gr, ns, &opts)?;
            Ok(list_response(&info, list, repr, now))
        }
        (Method::GET, Some(name), None | Some("status")) => {
            let repr = negotiate(headers, query)?;
            let obj = store.get(&key(name))?;
            Ok(json_response(
                StatusCode::OK,
                &render(&info, &obj, repr, now),
            ))
        }
        (Method::POST, None, None) => {
            if info.namespaced && ns.is_none() {
                return Err(Error::MethodNotAllowed);
            }
            require_json(headers)?;
            reject_dry_run(query)?;
            let obj = parse_body(&body)?;
            require_kind(&obj, &body)?;
            let created = store.create_with_strategy(&gr, ns, obj)?;
            Ok(json_response(StatusCode::CREATED, &created))
        }
        (Method::POST, Some(name), Some("eviction")) => {
            require_json(headers)?;
            let eviction = parse_body(&body)?;
            let status = store.evict(ns.unwrap_or_default(), name, &eviction, dry_run(query))?;
            Ok(json_response(StatusCode::CREATED, &status))
        }
        (Method::PUT, Some(name), sub @ (None | Some("status"))) => {
            require_json(headers)?;
            reject_dry_run(query)?;
            let obj = parse_body(&body)?;
            require_kind(&obj, &body)?;
            let updated = if sub.is_some() {
                store.update_status(&key(name), obj)?
            } else {
                store.update(&key(name), obj)?
            };
            Ok(json_response(StatusCode::OK, &updated))
        }
        (Method::PATCH, Some(name), sub @ (None | Some("status"))) => {
            reject_dry_run(query)?;
            let ct = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let force = query.get("force").is_some_and(|f| f == "true");
            let kind = PatchKind::from_content_type(
                ct,
                query.get("fieldManager").map(String::as_str),
                force,
            )?;
            let patch_body = match kind {
                PatchKind::Apply { .. } => parse_apply_body(&body)?,
                _ => serde_json::from_slice(&body)
                    .map_err(|e| Error::BadRequest(format!("error decoding patch: {e}")))?,
            };
            let creating =
                matches!(kind, PatchKind::Apply { .. }) && store.get(&key(name)).is_err();
            let patched = if sub.is_some() {
                store.patch_status(&key(name), &kind, &patch_body)?
            } else {
                store.patch(&key(name), &kind, &patch_body)?
            };
            let code = if creating {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            Ok(json_response(code, &patched))
        }
        (Method::DELETE, Some(name), None) => {
            let opts = delete_options(query, &body)?;
            let deleted = store.delete(&key(name), &opts)?;
            Ok(json_response(
                StatusCode::OK,
                &delete_body(&info, &deleted.object),
            ))
        }
        (Method::DELETE, None, None) => {
            let opts = delete_options(query, &body)?;
            let list = store.list(&gr, ns, &list_options(query)?)?;
            let mut items = Vec::new();
            for obj in &list.items {
                match store.delete(&ResourceKey::for_object(gr.clone(), obj), &opts) {
                    Ok(d) => items.push(d.object),
                    Err(Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            let list = super::store::ObjectList {
                items,
                resource_version: store.resource_version(),
                continue_token: None,
            };
            Ok(list_response(&info, list, Repr::Full, now))
        }
        _ => Err(Error::MethodNotAllowed),
    }
}

fn parse_apply_body(body: &Bytes) -> Result<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return Ok(v);
    }
    let text = std::str::from_utf8(body)
        .map_err(|e| Error::BadRequest(format!("error decoding YAML: {e}")))?;
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| Error::BadRequest(format!("error decoding YAML: {e}")))
}

fn delete_options(query: &HashMap<String, String>, body: &Bytes) -> Result<DeleteOptions> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        parse_body(body)?
    };
    let mut opts = DeleteOptions::from_json(&body, dry_run(query));
    if let Some(g) = query.get("gracePeriodSeconds").filter(|g| !g.is_empty()) {
        opts.grace_period_seconds = Some(
            g.parse()
                .map_err(|_| Error::BadRequest(format!("invalid gracePeriodSeconds {g:?}")))?,
        );
    }
    Ok(opts)
}

/// Pods and namespaces answer a delete with the object; other resources with a `Status`.
fn delete_body(info: &ResourceInfo, obj: &Value) -> Value {
    if info.group.is_empty() && matches!(info.plural.as_str(), "pods" | "namespaces") {
        return obj.clone();
    }
    let mut details = json!({"name": meta::name(obj), "kind": info.plural, "uid": meta::uid(obj)});
    if !info.group.is_empty() {
        details["group"] = json!(info.group);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": details})
}

fn list_response(
    info: &ResourceInfo,
    list: super::store::ObjectList,
    repr: Repr,
    now: jiff::Timestamp,
) -> Response {
    match repr {
        Repr::Table(include) => {
            let t = table::table(
                info,
                list.items.iter().map(|o| &**o),
                list.resource_version,
                list.continue_token.as_deref(),
                include,
                now,
            );
            json_response(StatusCode::OK, &t)
        }
        Repr::Full | Repr::Metadata => {
            let (kind, api_version) = if repr == Repr::Metadata {
                (
                    "PartialObjectMetadataList".to_string(),
                    "meta.k8s.io/v1".to_string(),
                )
            } else {
                (list_kind(info), info.api_version())
            };
            let mut buf: Vec<u8> = Vec::with_capacity(64 + list.items.len() * 1024);
            let mut metadata = json!({"resourceVersion": list.resource_version.to_string()});
            if let Some(c) = &list.continue_token {
                metadata["continue"] = json!(c);
            }
            let head =
                json!({"kind": kind, "apiVersion": api_version, "metadata": metadata}).to_string();
            // Splice `"items":[...]` into the head object without building one big Value.
            buf.extend_from_slice(&head.as_bytes()[..head.len() - 1]);
            buf.extend_from_slice(b",\"items\":[");
            for (i, item) in list.items.iter().enumerate() {
                if i > 0 {
                    buf.push(b',');
                }
                let written = if repr == Repr::Metadata {
                    serde_json::to_writer(&mut buf, &render(info, item, Repr::Metadata, now))
                } else {
                    serde_json::to_writer(&mut buf, &**item)
                };
                if let Err(e) = written {
                    return error_response(&Error::Internal(format!("encoding list: {e}")));
                }
            }
            buf.extend_from_slice(b"]}");
            bytes_response(StatusCode::OK, buf)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("/api"), Some(Target::CoreVersions));
        assert_eq!(
            parse_path("/api/v1/namespaces/default/pods/p/eviction"),
            Some(Target::Resource(Route {
                group: String::new(),
                version: "v1".into(),
                namespace: Some("default".into()),
                plural: "pods".into(),
                name: Some("p".into()),
                sub: Some("eviction".into()),
            }))
        );
        let Some(Target::Resource(r)) = parse_path("/api/v1/namespaces/default") else {
            panic!()
        };
        assert_eq!(
            (r.plural.as_str(), r.name.as_deref(), r.namespace),
            ("namespaces", Some("default"), None)
        );
        let Some(Target::Resource(r)) = parse_path("/api/v1/namespaces/default/status") else {
            panic!()
        };
        assert_eq!(
            (r.name.as_deref(), r.sub.as_deref()),
            (Some("default"), Some("status"))
        );
        let Some(Target::Resource(r)) = parse_path("/apis/apps/v1/deployments") else {
            panic!()
        };
        assert_eq!((r.group.as_str(), r.namespace), ("apps", None));
        assert_eq!(parse_path("/foo"), None);
        assert_eq!(parse_path("/api/v1/a/b/c/d"), None);
    }

    #[test]
    fn query_decoding() {
        let q = parse_query(Some("labelSelector=app%3Dweb%2Ctier+in+%28a%29&watch=1"));
        assert_eq!(q["labelSelector"], "app=web,tier in (a)");
        assert_eq!(q["watch"], "1");
        assert_eq!(decode("100%"), "100%");
    }

    #[test]
    fn accept_negotiation() {
        let mut h = HeaderMap::new();
        let q = HashMap::new();
        assert_eq!(negotiate(&h, &q).unwrap(), Repr::Full);
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static(
                "application/json;as=Table;v=v1;g=meta.k8s.io,application/json",
            ),
        );
        assert_eq!(
            negotiate(&h, &q).unwrap(),
            Repr::Table(IncludeObject::Metadata)
        );
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/vnd.kubernetes.protobuf"),
        );
        assert_eq!(negotiate(&h, &q).unwrap_err().code(), 406);
    }
}
