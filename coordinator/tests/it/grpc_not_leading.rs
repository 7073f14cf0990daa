//! A replica that does not lead refuses agents with `UNAVAILABLE` and a clear message, and
//! does not log that normal refusal as an error; a real backend failure still is one.
use rota_coordinator::slot_service::{SlotService, SlotServiceConfig};
use rota_core::clock::SystemClock;

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rota_coordinator::core_gate::CoreGate;
use rota_coordinator::grpc::{AgentGrpc, StaticAuthenticator, serve};
use rota_core::model::{Operation, Origin};
use rota_core::slots::{self, LedgerStore, MemoryStore, StoreError, StoredState};
use rota_proto::v1 as pb;
use rota_proto::v1::agent_client::AgentClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::Code;
use tonic::metadata::MetadataValue;
use tracing_subscriber::fmt::MakeWriter;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything logged while it is the thread's subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }

    fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Log lines at `level` (the plain format writes the level after the timestamp).
    fn lines_at(&self, level: &str) -> Vec<String> {
        self.text()
            .lines()
            .filter(|l| l.split_whitespace().nth(1) == Some(level))
            .map(str::to_owned)
            .collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

fn capture() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(captured.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    (captured, guard)
}

fn facts(node: &str) -> tonic::Request<pb::ReportFactsRequest> {
    let mut request = tonic::Request::new(pb::ReportFactsRequest {
        node: node.into(),
        facts: Some(pb::NodeFacts {
            boot_id: "boot-1".into(),
            ..pb::NodeFacts::default()
        }),
    });
    let token = MetadataValue::from_static("Bearer token-n1");
    request.metadata_mut().insert("authorization", token);
    request
}

fn reboot(node: &str) -> tonic::Request<pb::RequestSlotRequest> {
    let mut request = tonic::Request::new(pb::RequestSlotRequest {
        node: node.into(),
        operation: Some(pb::Operation {
            kind: Some(pb::operation::Kind::Reboot(pb::Reboot {})),
        }),
    });
    let token = MetadataValue::from_static("Bearer token-n1");
    request.metadata_mut().insert("authorization", token);
    request
}

// A current-thread runtime (tokio::test's default) runs the server's tasks on the test's thread,
// where the capturing subscriber is the default.
#[tokio::test]
async fn a_standby_answers_unavailable_without_logging_an_error() -> Result<(), BoxError> {
    let (logs, _guard) = capture();
    let gate = CoreGate::new();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let agent = AgentGrpc::new(
        Arc::new(gate.clone()),
        StaticAuthenticator::new([("token-n1", "n1")]),
    );
    let server = tokio::spawn(serve(agent, TcpListenerStream::new(listener), async {
        let _ = stopped.await;
    }));
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = AgentClient::new(channel);

    for _ in 0..3 {
        let refused = client.report_facts(facts("n1")).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert!(
            refused.message().contains("does not lead") && refused.message().contains("retry"),
            "{refused:?}"
        );
    }
    let refused = client.request_slot(reboot("n1")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert!(
        logs.lines_at("ERROR").is_empty() && logs.lines_at("WARN").is_empty(),
        "a standby's refusal is not an error:\n{}",
        logs.text()
    );
    assert!(
        logs.lines_at("DEBUG")
            .iter()
            .any(|l| l.contains("not leading")),
        "the refusal is still visible at debug level:\n{}",
        logs.text()
    );

    // The same capture sees a real backend failure, logged as an error.
    let store = MemoryStore::with_nodes(["n1"]);
    let (core, _events) =
        SlotService::load(store, SlotServiceConfig::default(), Arc::new(SystemClock)).await?;
    let core = Arc::new(core);
    let _installed = gate.install(core.clone());
    client.report_facts(facts("n1")).await?;
    core.store().set_failing(true);
    logs.clear();
    let failed = client.request_slot(reboot("n1")).await.unwrap_err();
    assert_eq!(failed.code(), Code::Unavailable, "{failed:?}");
    assert!(failed.message().contains("could not persist"), "{failed:?}");
    assert!(
        logs.lines_at("ERROR")
            .iter()
            .any(|l| l.contains("injected store failure")),
        "a failing backend is an error:\n{}",
        logs.text()
    );

    let _ = stop.send(());
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), server).await???;
    Ok(())
}

/// A store whose writes are refused by a closed write gate, as the Kubernetes store's are when
/// the term ends while an agent's call is in flight (it reports `StoreError::NotLeading`).
struct GateClosed(MemoryStore);

impl LedgerStore for GateClosed {
    async fn load(&self) -> Result<StoredState, StoreError> {
        self.0.load().await
    }

    async fn store_counter(
        &self,
        _last_token: u64,
        _expected: Option<&str>,
    ) -> Result<String, StoreError> {
        Err(StoreError::NotLeading)
    }

    async fn store_node(
        &self,
        _node: &str,
        _annotations: &slots::persist::NodeAnnotations,
    ) -> Result<(), StoreError> {
        Err(StoreError::NotLeading)
    }

    async fn store_mirror(
        &self,
        _node: &str,
        _annotations: &slots::persist::NodeAnnotations,
    ) -> Result<(), StoreError> {
        Err(StoreError::NotLeading)
    }

    async fn forget_node(&self, _node: &str) -> Result<(), StoreError> {
        Err(StoreError::NotLeading)
    }
}

#[tokio::test]
async fn losing_leadership_mid_call_is_not_leading_not_a_store_failure() -> Result<(), BoxError> {
    let (service, _events) = SlotService::load(
        GateClosed(MemoryStore::with_nodes(["n1"])),
        SlotServiceConfig::default(),
        Arc::new(SystemClock),
    )
    .await?;
    let refused = service
        .request("n1", Operation::Reboot, Origin::Agent)
        .await
        .unwrap_err();
    assert!(matches!(refused, slots::Error::NotLeading), "{refused:?}");
    assert_eq!(
        rota_coordinator::grpc::status::code(&refused),
        Code::Unavailable
    );
    // Nothing changed: the request was undone.
    assert!(service.read(|l| l.queue().count()).await == 0);

    // Any other backend failure stays a store failure.
    let other = slots::Error::from(StoreError::Backend(Box::new(std::io::Error::other("boom"))));
    assert!(matches!(other, slots::Error::Store(_)), "{other:?}");
    Ok(())
}
