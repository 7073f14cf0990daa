//! A real Kubernetes control plane for the suites and `rota-sim demo --control-plane real`:
//! etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from Go modules by `tests/control-plane/build.sh` at the versions
//! its `go.mod` files pin, started as processes on free loopback ports with certificates made
//! here, and stopped (each process group killed) when the [`ControlPlane`] is dropped, however
//! the test or the demo ends.
//!
//! The API server runs as a cluster would: TLS with a client CA, the Node and RBAC authorizers,
//! NodeRestriction admission, and a signing key so TokenRequest and TokenReview issue and check
//! real ServiceAccount JWTs. The controller-manager runs every default controller under
//! per-controller ServiceAccounts, with a short node-monitor grace period.

mod pki;

use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use rota_coordinator::kube_client::{ConfigSource, Retry, client_from_config, load_config};

use super::built;

pub use pki::{Ca, KeyedCert};

/// What can go wrong starting the control plane.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The binaries are not built.
    #[error(
        "the real control plane is not built ({missing} missing in {}): run tests/control-plane/build.sh \
         (it builds kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and etcd from Go \
         modules once, into that cache; set ROTA_CONTROL_PLANE_DIR to use another cache root)",
        dir.display()
    )]
    NotBuilt {
        /// Where the binaries were looked for.
        dir: PathBuf,
        /// What is missing.
        missing: String,
    },
    /// The pinned versions could not be read from the wrapper modules' go.mod files.
    #[error("tests/control-plane/{0}/go.mod pins no version of its module")]
    NoPin(&'static str),
    /// A certificate or key could not be made.
    #[error("certificates: {0}")]
    Pki(String),
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// A kubeconfig could not be read or a client built.
    #[error("kube client: {0}")]
    Client(String),
    /// A component exited while the control plane was starting.
    #[error("{component} exited ({status}) while starting; its log ends:\n{log}")]
    Exited {
        /// The component.
        component: &'static str,
        /// How it exited.
        status: std::process::ExitStatus,
        /// The end of its log.
        log: String,
    },
    /// A component did not become ready in time.
    #[error("{component} was not ready within {timeout:?} (last: {last}); its log ends:\n{log}")]
    NotReady {
        /// The component.
        component: &'static str,
        /// How long it had.
        timeout: Duration,
        /// The last answer or error of its readiness check.
        last: String,
        /// The end of its log.
        log: String,
    },
}

/// The harness's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// The Kubernetes and etcd versions the wrapper modules pin (`v1.34.4`, `v3.6.16`).
pub fn pinned_versions() -> Result<(String, String)> {
    let kubernetes = built::go_mod_pin(
        include_str!("../../../tests/control-plane/kubernetes/go.mod"),
        "k8s.io/kubernetes",
    )
    .ok_or(Error::NoPin("kubernetes"))?;
    let etcd = built::go_mod_pin(
        include_str!("../../../tests/control-plane/etcd/go.mod"),
        "go.etcd.io/etcd/server/v3",
    )
    .ok_or(Error::NoPin("etcd"))?;
    Ok((kubernetes, etcd))
}

/// The built control-plane binaries, in the cache `tests/control-plane/build.sh` fills.
#[derive(Clone, Debug)]
pub struct Binaries {
    dir: PathBuf,
}

impl Binaries {
    /// The component binaries every control plane needs.
    const NAMES: [&'static str; 5] = [
        "etcd",
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kubectl",
    ];

    /// The binaries of the pinned versions, or [`Error::NotBuilt`] saying how to build them.
    /// The cache root is `$ROTA_CONTROL_PLANE_DIR`, else `/var/cache/rota-test/control-plane`;
    /// the binaries are in `<root>/<k8s>-<etcd>/bin`, complete when `build.sh` wrote its stamp.
    pub fn find() -> Result<Binaries> {
        let (kubernetes, etcd) = pinned_versions()?;
        built::find(&format!("{kubernetes}-{etcd}"), &Self::NAMES)
            .map(|dir| Binaries { dir })
            .map_err(|built::NotBuilt { dir, missing }| Error::NotBuilt { dir, missing })
    }

    /// The path of binary `name` (`kubectl`, `etcd`, ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The built `kubectl`.
    pub fn kubectl(&self) -> PathBuf {
        self.path("kubectl")
    }
}

/// util-linux's `setpriv`, when the machine has it.
const SETPRIV: &str = "/usr/bin/setpriv";

/// Starts `program` with `args` in `dir`, in a process group of its own, its output appended to
/// `log`.
fn launch(name: &str, program: &Path, args: &[String], dir: &Path, log: &Path) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("open {}", log.display())))?;
    let err = out.try_clone().map_err(io("clone a log file handle"))?;
    // util-linux's setpriv execs the component with a parent-death signal, so that it dies with
    // the test process even when that is killed outright (no Drop runs then).
    let mut command = if Path::new(SETPRIV).is_file() {
        let mut command = Command::new(SETPRIV);
        command.args(["--pdeathsig", "KILL", "--"]).arg(program);
        command
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir(dir)
        // A group of its own: stopping it reaches anything it started.
        .process_group(0)
        .spawn()
        .map_err(io(format!("start {name}")))
}

/// A component process, in a process group of its own; the whole group is killed on drop.
#[derive(Debug)]
struct Process {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    child: Child,
    log: PathBuf,
}

impl Process {
    fn spawn(
        name: &'static str,
        binaries: &Binaries,
        args: &[String],
        dir: &Path,
    ) -> Result<Process> {
        let program = binaries.path(name);
        let log = dir.join(format!("{name}.log"));
        let child = launch(name, &program, args, dir, &log)?;
        Ok(Process {
            name,
            program,
            args: args.to_vec(),
            dir: dir.to_owned(),
            child,
            log,
        })
    }

    /// Stops the process and starts it again with the same arguments (its log goes on).
    fn restart(&mut self) -> Result<()> {
        self.stop();
        self.child = launch(self.name, &self.program, &self.args, &self.dir, &self.log)?;
        Ok(())
    }

    /// `Err(Exited)` when the process has exited.
    fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(Error::Exited {
                component: self.name,
                status,
                log: self.log_tail(),
            }),
            Ok(None) => Ok(()),
            Err(e) => Err(io(format!("wait for {}", self.name))(e)),
        }
    }

    /// The last lines of the component's log.
    fn log_tail(&self) -> String {
        const LINES: usize = 40;
        match std::fs::read_to_string(&self.log) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(LINES)..].join("\n")
            }
            Err(e) => format!("(cannot read {}: {e})", self.log.display()),
        }
    }

    /// SIGTERM to the group, SIGKILL after a grace period, then reaped.
    fn stop(&mut self) {
        const GRACE: Duration = Duration::from_secs(5);
        let Ok(raw) = i32::try_from(self.child.id()) else {
            return;
        };
        let group = Pid::from_raw(raw);
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = killpg(group, Signal::SIGTERM);
            let deadline = Instant::now() + GRACE;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        // Whatever is left of the group, the leader included.
        let _ = killpg(group, Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `N` distinct free TCP ports on the loopback interface (free when asked; the components bind
/// them soon after). All are held open together, so none is handed out twice.
fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io("find a free port")))
        .collect::<Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener
            .local_addr()
            .map_err(io("read a bound port"))?
            .port();
    }
    Ok(ports)
}

/// A running control plane. Dropping it stops every component, newest first, and removes its
/// directory (certificates, kubeconfigs, etcd data, logs).
#[derive(Debug)]
pub struct ControlPlane {
    // Fields drop in declaration order: the components that use the API server stop first, etcd
    // last, and the directory after them all.
    scheduler: Process,
    controller_manager: Process,
    apiserver: Process,
    etcd: Process,
    ca: Ca,
    server: String,
    binaries: Binaries,
    dir: tempfile::TempDir,
}

/// The ServiceAccount issuer (and default audience) of the tokens the API server signs.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// The ClusterIP range of Services.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "10.96.0.0/16";

/// How long a node may go silent before the node-lifecycle controller marks it Unknown.
pub const NODE_MONITOR_GRACE_PERIOD: Duration = Duration::from_secs(8);

/// How long each component has to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

impl ControlPlane {
    /// Starts etcd, kube-apiserver, kube-controller-manager and kube-scheduler from `binaries`,
    /// and waits until each is ready and the controllers have made the `default` ServiceAccount
    /// (pods cannot be created before). Prints how long it took. The node-lifecycle controller
    /// marks a node Unknown after [`NODE_MONITOR_GRACE_PERIOD`] of silence.
    pub async fn start(binaries: Binaries) -> Result<ControlPlane> {
        Self::start_with_grace(binaries, NODE_MONITOR_GRACE_PERIOD).await
    }

    /// [`Self::start`] with `node_monitor_grace` as the controller-manager's
    /// `--node-monitor-grace-period` (whole seconds).
    pub async fn start_with_grace(
        binaries: Binaries,
        node_monitor_grace: Duration,
    ) -> Result<ControlPlane> {
        let started = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("rota-control-plane-")
            .tempdir()
            .map_err(io("create the control plane's directory"))?;
        let d = dir.path();
        let write = |name: &str, content: &str| -> Result<String> {
            let path = d.join(name);
            std::fs::write(&path, content).map_err(io(format!("write {}", path.display())))?;
            Ok(path.display().to_string())
        };

        let ca = Ca::generate()?;
        let ca_file = write("ca.crt", &ca.cert_pem())?;
        let ca_key_file = write("ca.key", &ca.key_pem())?;
        let loopback = [IpAddr::V4(Ipv4Addr::LOCALHOST)];
        let serving = ca.serving(
            "kube-apiserver",
            &[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
            &[
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1)),
            ],
        )?;
        let apiserver_cert = write("apiserver.crt", &serving.cert_pem)?;
        let apiserver_key = write("apiserver.key", &serving.key_pem)?;
        let components = ca.serving("control-plane-component", &["localhost"], &loopback)?;
        let component_cert = write("component.crt", &components.cert_pem)?;
        let component_key = write("component.key", &components.key_pem)?;
        let (sa_private, sa_public) = pki::service_account_key()?;
        let sa_key = write("sa.key", &sa_private)?;
        let sa_pub = write("sa.pub", &sa_public)?;

        let [
            etcd_port,
            etcd_peer_port,
            apiserver_port,
            kcm_port,
            scheduler_port,
        ] = free_ports()?;
        let server = format!("https://127.0.0.1:{apiserver_port}");

        // etcd: plain HTTP on loopback, no fsync (the data dies with the test).
        let etcd_client = format!("http://127.0.0.1:{etcd_port}");
        let etcd_peer = format!("http://127.0.0.1:{etcd_peer_port}");
        let mut etcd = Process::spawn(
            "etcd",
            &binaries,
            &[
                "--name=default".to_owned(),
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls={etcd_client}"),
                format!("--advertise-client-urls={etcd_client}"),
                format!("--listen-peer-urls={etcd_peer}"),
                format!("--initial-advertise-peer-urls={etcd_peer}"),
                format!("--initial-cluster=default={etcd_peer}"),
                "--unsafe-no-fsync".to_owned(),
            ],
            d,
        )?;
        let etcd_probe = client_from_config(
            kube::Config::new(
                etcd_client
                    .parse()
                    .map_err(|e| Error::Client(format!("etcd URL: {e}")))?,
            ),
            Retry::Disabled,
        )
        .map_err(|e| Error::Client(e.to_string()))?;
        wait_ready(&mut etcd, &etcd_probe, "/readyz").await?;

        let mut apiserver = Process::spawn(
            "kube-apiserver",
            &binaries,
            &[
                format!("--etcd-servers={etcd_client}"),
                "--bind-address=127.0.0.1".to_owned(),
                "--advertise-address=127.0.0.1".to_owned(),
                format!("--secure-port={apiserver_port}"),
                format!("--cert-dir={}", d.display()),
                format!("--tls-cert-file={apiserver_cert}"),
                format!("--tls-private-key-file={apiserver_key}"),
                format!("--client-ca-file={ca_file}"),
                "--authorization-mode=Node,RBAC".to_owned(),
                "--enable-admission-plugins=NodeRestriction".to_owned(),
                format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"),
                format!("--service-account-key-file={sa_pub}"),
                format!("--service-account-signing-key-file={sa_key}"),
                format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
                "--allow-privileged=true".to_owned(),
                "--profiling=false".to_owned(),
            ],
            d,
        )?;
        let admin = ca.client("rota-tests-admin", &["system:masters"])?;
        let admin_kubeconfig =
            write_kubeconfig(d, "admin", &server, &ca_file, Credentials::Cert(&admin))?;
        let admin_client = client_from_kubeconfig_file(&admin_kubeconfig).await?;
        wait_ready(&mut apiserver, &admin_client, "/readyz").await?;

        // Both serve their health endpoints with a certificate of the CA, so the probes check it.
        let serving_flags = |port: u16, kubeconfig: &str| {
            vec![
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--bind-address=127.0.0.1".to_owned(),
                format!("--secure-port={port}"),
                format!("--tls-cert-file={component_cert}"),
                format!("--tls-private-key-file={component_key}"),
                "--leader-elect=false".to_owned(),
                "--profiling=false".to_owned(),
            ]
        };
        // Each component's own kubeconfig: a client certificate for the user the bootstrap RBAC
        // policy grants that component's role.
        let identity_kubeconfig = |name: &str, user: &str| -> Result<String> {
            let identity = ca.client(user, &[])?;
            let path = write_kubeconfig(d, name, &server, &ca_file, Credentials::Cert(&identity))?;
            Ok(path.display().to_string())
        };
        let kcm_kubeconfig =
            identity_kubeconfig("controller-manager", "system:kube-controller-manager")?;
        let mut kcm_args = serving_flags(kcm_port, &kcm_kubeconfig);
        kcm_args.extend([
            "--controllers=*".to_owned(),
            "--use-service-account-credentials=true".to_owned(),
            format!("--service-account-private-key-file={sa_key}"),
            format!("--root-ca-file={ca_file}"),
            format!("--cluster-signing-cert-file={ca_file}"),
            format!("--cluster-signing-key-file={ca_key_file}"),
            format!(
                "--node-monitor-grace-period={}s",
                node_monitor_grace.as_secs()
            ),
            "--node-monitor-period=2s".to_owned(),
        ]);
        let mut controller_manager =
            Process::spawn("kube-controller-manager", &binaries, &kcm_args, d)?;
        let scheduler_kubeconfig = identity_kubeconfig("scheduler", "system:kube-scheduler")?;
        let mut scheduler = Process::spawn(
            "kube-scheduler",
            &binaries,
            &serving_flags(scheduler_port, &scheduler_kubeconfig),
            d,
        )?;

        let kcm_probe = probe_client(d, kcm_port, &ca_file, &admin).await?;
        wait_ready(&mut controller_manager, &kcm_probe, "/healthz").await?;
        let scheduler_probe = probe_client(d, scheduler_port, &ca_file, &admin).await?;
        wait_ready(&mut scheduler, &scheduler_probe, "/readyz").await?;
        wait_for_default_service_account(&mut controller_manager, &admin_client).await?;

        eprintln!(
            "control plane ({}) started in {:.1}s at {server}",
            d.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(ControlPlane {
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            ca,
            server,
            binaries,
            dir,
        })
    }

    /// The API server's URL (`https://127.0.0.1:PORT`).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The control plane's directory: certificates, kubeconfigs, logs, etcd's data.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The binaries it runs (and the `kubectl` of the same version).
    pub fn binaries(&self) -> &Binaries {
        &self.binaries
    }

    /// The CA every certificate of this control plane chains to.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The admin kubeconfig (a client certificate in `system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// A kubeconfig for user `user` in `groups`, authenticated by a client certificate of the CA
    /// (`system:node:a` in `system:nodes` is node `a`). Named after `name`, in [`Self::dir`].
    pub fn kubeconfig_for(&self, name: &str, user: &str, groups: &[&str]) -> Result<PathBuf> {
        let identity = self.ca.client(user, groups)?;
        self.kubeconfig_with(name, Credentials::Cert(&identity))
    }

    /// A kubeconfig that authenticates with the bearer `token` (a ServiceAccount's, from a
    /// TokenRequest), named after `name`, in [`Self::dir`]: how a process runs as a
    /// ServiceAccount under the RBAC it is granted.
    pub fn kubeconfig_with_token(&self, name: &str, token: &str) -> Result<PathBuf> {
        self.kubeconfig_with(name, Credentials::Token(token))
    }

    fn kubeconfig_with(&self, name: &str, credentials: Credentials<'_>) -> Result<PathBuf> {
        let ca_file = self.dir.path().join("ca.crt").display().to_string();
        write_kubeconfig(self.dir.path(), name, &self.server, &ca_file, credentials)
    }

    /// A client as the admin. Like every client made here, it does not retry 429/503/504.
    pub async fn admin_client(&self) -> Result<kube::Client> {
        client_from_kubeconfig_file(&self.admin_kubeconfig()).await
    }

    /// A client as `user` in `groups` (see [`Self::kubeconfig_for`]).
    pub async fn client_for(&self, user: &str, groups: &[&str]) -> Result<kube::Client> {
        let name = user.replace(':', "-");
        client_from_kubeconfig_file(&self.kubeconfig_for(&name, user, groups)?).await
    }

    /// Stops kube-apiserver and starts it again on the same port with the same flags; returns
    /// once it is ready again, with how long it was away (about 7 s). It stops listening at
    /// SIGTERM at once but does not exit while watches are open, so this ends in SIGKILL after
    /// the 5 s grace period: a crash as much as a restart. Its clients' watches end and re-list;
    /// custom resources answer 429 "storage is (re)initializing" for a moment after `/readyz`.
    pub async fn restart_apiserver(&mut self) -> Result<Duration> {
        let started = Instant::now();
        self.apiserver.restart()?;
        let admin = self.admin_client().await?;
        wait_ready(&mut self.apiserver, &admin, "/readyz").await?;
        Ok(started.elapsed())
    }

    /// The end of each component's log, for a failing test's message.
    pub fn logs(&self) -> String {
        [
            &self.etcd,
            &self.apiserver,
            &self.controller_manager,
            &self.scheduler,
        ]
        .iter()
        .map(|p| format!("--- {} ---\n{}", p.name, p.log_tail()))
        .collect::<Vec<_>>()
        .join("\n")
    }
}

/// How a kubeconfig's user authenticates.
enum Credentials<'a> {
    /// A client certificate (written beside the kubeconfig).
    Cert(&'a KeyedCert),
    /// A bearer token (a ServiceAccount's JWT).
    Token(&'a str),
}

/// Writes `<name>.kubeconfig` in `dir`, for `server` trusting the CA in `ca_file`, authenticated
/// with `credentials`.
fn write_kubeconfig(
    dir: &Path,
    name: &str,
    server: &str,
    ca_file: &str,
    credentials: Credentials<'_>,
) -> Result<PathBuf> {
    let user = match credentials {
        Credentials::Cert(identity) => {
            let cert = dir.join(format!("{name}.crt"));
            let key = dir.join(format!("{name}.key"));
            std::fs::write(&cert, &identity.cert_pem)
                .map_err(io(format!("write {}", cert.display())))?;
            std::fs::write(&key, &identity.key_pem)
                .map_err(io(format!("write {}", key.display())))?;
            format!(
                "client-certificate: {}\n    client-key: {}",
                cert.display(),
                key.display()
            )
        }
        Credentials::Token(token) => format!("token: {token}"),
    };
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: rota-tests
  cluster:
    server: {server}
    certificate-authority: {ca_file}
users:
- name: {name}
  user:
    {user}
contexts:
- name: {name}
  context:
    cluster: rota-tests
    user: {name}
current-context: {name}
"
    );
    let path = dir.join(format!("{name}.kubeconfig"));
    std::fs::write(&path, kubeconfig).map_err(io(format!("write {}", path.display())))?;
    Ok(path)
}

/// A client from a kubeconfig file, without kube's retry of 429/503/504: a test sees every
/// answer of the real server as it is (a PDB's 429 at once, not after minutes of backoff).
pub async fn client_from_kubeconfig_file(path: &Path) -> Result<kube::Client> {
    let source = ConfigSource::Kubeconfig {
        path: path.to_owned(),
        context: None,
    };
    let config = load_config(&source)
        .await
        .map_err(|e| Error::Client(e.to_string()))?;
    client_from_config(config, Retry::Disabled).map_err(|e| Error::Client(e.to_string()))
}

/// A client for the health endpoints of a component serving on `port` with a certificate of
/// the CA.
async fn probe_client(
    dir: &Path,
    port: u16,
    ca_file: &str,
    identity: &KeyedCert,
) -> Result<kube::Client> {
    let name = format!("probe-{port}");
    let path = write_kubeconfig(
        dir,
        &name,
        &format!("https://127.0.0.1:{port}"),
        ca_file,
        Credentials::Cert(identity),
    )?;
    client_from_kubeconfig_file(&path).await
}

/// Waits until `GET path` answers `ok`, failing early when the process exits.
async fn wait_ready(process: &mut Process, client: &kube::Client, path: &str) -> Result<()> {
    let started = Instant::now();
    let mut last = String::from("no answer yet");
    while started.elapsed() < READY_TIMEOUT {
        process.check_running()?;
        let request = http::Request::get(path)
            .body(Vec::new())
            .map_err(|e| Error::Client(e.to_string()))?;
        let attempt = tokio::time::timeout(Duration::from_secs(5), client.request_text(request));
        match attempt.await {
            Ok(Ok(body)) if body.trim() == "ok" => return Ok(()),
            Ok(Ok(body)) => last = body,
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "no answer within 5s".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::NotReady {
        component: process.name,
        timeout: READY_TIMEOUT,
        last,
        log: process.log_tail(),
    })
}

/// Waits until the controller-manager has made the `default` ServiceAccount of the `default`
/// namespace: until then the ServiceAccount admission plugin refuses every pod there.
async fn wait_for_default_service_account(
    controller_manager: &mut Process,
    client: &kube::Client,
) -> Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    let started = Instant::now();
    let mut last = String::from("not there yet");
    while started.elapsed() < READY_TIMEOUT {
        controller_manager.check_running()?;
        match accounts.get_opt("default").await {
            Ok(Some(_)) => return Ok(()),
            Ok(None) => {}
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(Error::NotReady {
        component: "kube-controller-manager (the default ServiceAccount)",
        timeout: READY_TIMEOUT,
        last,
        log: controller_manager.log_tail(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_pins_of_both_wrapper_modules() {
        let (kubernetes, etcd) = pinned_versions().unwrap();
        assert!(kubernetes.starts_with("v1.34."), "{kubernetes}");
        assert!(etcd.starts_with("v3.6."), "{etcd}");
    }
}
