//! The `rota.v1.Agent` service over an [`AgentCore`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rota_proto::convert as wire;
use rota_proto::v1 as pb;
use rota_proto::v1::agent_server::{Agent, AgentServer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;
use tonic::transport::server::Connected;
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::{MAX_MESSAGE_BYTES, convert, status};
use rota_core::agent_api::AgentCore;
use rota_core::model::NodeName;
use rota_core::slots::{Release, SlotView};

/// The `rota.v1.Agent` gRPC service: authenticates, validates and forwards to the core.
///
/// [`serve`] runs it on plain connections. With TLS or other server settings, build the tonic
/// server yourself: `Server::builder().tls_config(..)?.add_service(agent.into_service())
/// .serve_with_incoming_shutdown(incoming, async { signal.await; handle.shutdown() })`, with
/// `handle` taken from [`AgentGrpc::shutdown_handle`] before `into_service`.
pub struct AgentGrpc<C, A> {
    core: Arc<C>,
    auth: A,
    shutdown: watch::Sender<bool>,
}

impl<C: AgentCore, A: Authenticator> AgentGrpc<C, A> {
    /// A service over `core` that identifies callers with `auth`.
    pub fn new(core: Arc<C>, auth: A) -> Self {
        AgentGrpc {
            core,
            auth,
            shutdown: watch::Sender::new(false),
        }
    }

    /// A handle that ends every open `WatchSlot` stream (call it when the server shuts down, so
    /// that graceful shutdown does not wait on streams that never end).
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// The tonic service with rota's message-size limits.
    pub fn into_service(self) -> AgentServer<Self> {
        AgentServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Authenticates the caller, validates the node it names, and checks they match.
    async fn authorize<T>(&self, request: &Request<T>, node: &str) -> Result<NodeName, Status> {
        let caller = self
            .auth
            .authenticate(request.metadata())
            .await
            .map_err(|e| status::unauthenticated(&e))?;
        let node = wire::node_name("node", node).map_err(|e| status::invalid_argument(&e))?;
        if caller != node {
            return Err(status::permission_denied(&caller, &node));
        }
        Ok(node)
    }
}

/// Ends every `WatchSlot` stream of one [`AgentGrpc`].
#[derive(Clone, Debug)]
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    /// Ends the streams; new `WatchSlot` calls get `UNAVAILABLE`.
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// Serves `agent` on `incoming` connections until `signal` completes, then ends the open
/// `WatchSlot` streams and drains the connections. HTTP/2 keep-alives detect dead agents.
pub async fn serve<C, A, I, IO, IE>(
    agent: AgentGrpc<C, A>,
    incoming: I,
    signal: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error>
where
    C: AgentCore,
    A: Authenticator,
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let handle = agent.shutdown_handle();
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(agent.into_service())
        .serve_with_incoming_shutdown(incoming, async move {
            signal.await;
            handle.shutdown();
        })
        .await
}

type SlotStream = Pin<Box<dyn Stream<Item = Result<pb::SlotStatus, Status>> + Send + 'static>>;

/// The core's `views` on the wire: the node's current view at once, then every change (as
/// [`AgentCore::SlotUpdates`] promises); ends when the node is deleted (the views end) or the
/// server shuts down.
fn slot_stream<V>(views: V, mut shutdown: watch::Receiver<bool>) -> SlotStream
where
    V: Stream<Item = SlotView> + Send + 'static,
{
    // A dropped sender (the service is gone) ends the stream as a shutdown does.
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    let stream = views
        .take_until(stopped)
        .map(|view| Ok(convert::slot_status(&view)));
    Box::pin(stream.fuse())
}

#[tonic::async_trait]
impl<C: AgentCore, A: Authenticator> Agent for AgentGrpc<C, A> {
    async fn report_facts(
        &self,
        request: Request<pb::ReportFactsRequest>,
    ) -> Result<Response<pb::ReportFactsResponse>, Status> {
        let node = self.authorize(&request, &request.get_ref().node).await?;
        let facts =
            wire::facts(request.into_inner().facts).map_err(|e| status::invalid_argument(&e))?;
        let policy = self
            .core
            .report_facts(&node, facts)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(pb::ReportFactsResponse {
            policy: policy.as_ref().map(pb::NodePolicy::from),
        }))
    }

    async fn request_slot(
        &self,
        request: Request<pb::RequestSlotRequest>,
    ) -> Result<Response<pb::SlotStatus>, Status> {
        let node = self.authorize(&request, &request.get_ref().node).await?;
        let operation = wire::operation(request.into_inner().operation)
            .map_err(|e| status::invalid_argument(&e))?;
        let view = self
            .core
            .request_slot(&node, operation)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(convert::slot_status(&view)))
    }

    type WatchSlotStream = SlotStream;

    async fn watch_slot(
        &self,
        request: Request<pb::WatchSlotRequest>,
    ) -> Result<Response<Self::WatchSlotStream>, Status> {
        let node = self.authorize(&request, &request.get_ref().node).await?;
        let shutdown = self.shutdown.subscribe();
        if *shutdown.borrow() {
            return Err(Status::unavailable("the coordinator is shutting down"));
        }
        let views = self
            .core
            .watch_slot(&node)
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(slot_stream(views, shutdown)))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::RenewResponse>, Status> {
        let node = self.authorize(&request, &request.get_ref().node).await?;
        let token = wire::token("token", request.get_ref().token)
            .map_err(|e| status::invalid_argument(&e))?;
        let ttl = self
            .core
            .renew(&node, token)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(pb::RenewResponse {
            lease_ttl_seconds: convert::ttl_seconds(ttl),
        }))
    }

    async fn report_progress(
        &self,
        request: Request<pb::ReportProgressRequest>,
    ) -> Result<Response<pb::ReportProgressResponse>, Status> {
        let node = self.authorize(&request, &request.get_ref().node).await?;
        let req = request.into_inner();
        let parsed = wire::token("token", req.token).and_then(|token| {
            let step = wire::text("step", req.step, wire::MAX_IDENT_BYTES)?;
            let message = wire::text("message", req.message, wire::MAX_TEXT_BYTES)?;
            Ok((token, step, message))
        });
        let (token, step, message) = parsed.map_err(|e| status::invalid_argument(&e))?;
        self.core
            .report_progress(&node, token, step, message)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(pb::ReportProgressResponse {}))
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::SlotStatus>, Status> {
        let node = self.authorize(&request, &request.get_ref().node).await?;
        let req = request.into_inner();
        let parsed =
            wire::token("token", req.token).and_then(|t| Ok((t, convert::completion(req)?)));
        let (token, completion) = parsed.map_err(|e| status::invalid_argument(&e))?;
        let view = self
            .core
            .complete(&node, token, completion)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(convert::slot_status(&view)))
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let node = self.authorize(&request, &request.get_ref().node).await?;
        let req = request.into_inner();
        let release = match req.token {
            0 => Release::Withdraw,
            token => Release::Holder(rota_core::model::FencingToken(token)),
        };
        let reason = wire::text("reason", req.reason, wire::MAX_TEXT_BYTES)
            .map_err(|e| status::invalid_argument(&e))?;
        self.core
            .release(&node, release, reason)
            .await
            .map_err(|e| status::from_slots(&e))?;
        Ok(Response::new(pb::ReleaseResponse {}))
    }
}
