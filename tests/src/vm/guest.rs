//! One guest: qemu (TCG) booting the image from its own qcow2 overlay, with user networking
//! (the host's loopback is 10.0.2.2 to the guest), a 9p share of a host directory, the serial
//! console written to a file, and the command channel on a virtio-serial port whose host end
//! is a Unix socket. qemu keeps running across guest reboots, so the disk, the share and the
//! channel's connection survive them.
//!
//! The guest is killed (SIGKILL, by PID) when the [`Guest`] is dropped — a test that panics
//! included — and, through `setpriv --pdeathsig`, when the test process dies outright.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, watch};

use super::image::{CHANNEL_PORT, Image, SHARE_TAG};

/// How long a boot (or a reboot) may take under TCG on a busy 2-core machine.
pub const BOOT: Duration = Duration::from_secs(240);

/// What a command run in the guest left.
#[derive(Clone, Debug)]
pub struct Output {
    /// Its exit code.
    pub code: i32,
    /// Its standard output and error, interleaved.
    pub text: String,
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Output>>>>;

/// A running guest.
pub struct Guest {
    child: Child,
    dir: tempfile::TempDir,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
    boots: watch::Receiver<Vec<String>>,
    next_id: u64,
    reader: tokio::task::JoinHandle<()>,
}

impl Guest {
    /// Boots `image` with `share` as its 9p share and waits until the guest's channel answers
    /// and systemd has finished booting.
    pub async fn boot(image: &Image, share: &Path) -> Guest {
        let dir = tempfile::Builder::new()
            .prefix("rota-vm.")
            .tempdir_in("/var/tmp")
            .unwrap();
        let overlay = dir.path().join("overlay.qcow2");
        let made = std::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&image.rootfs)
            .arg(&overlay)
            .output()
            .expect("qemu-img");
        assert!(made.status.success(), "qemu-img: {made:?}");
        let socket = dir.path().join("channel.sock");
        let console = dir.path().join("console.log");
        let qemu_log = std::fs::File::create(dir.path().join("qemu.log")).unwrap();
        let child = Command::new("setpriv")
            .args(["--pdeathsig", "KILL", "--", "qemu-system-x86_64"])
            .args(["-accel", "tcg", "-m", "1024", "-smp", "1"])
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .arg("-kernel")
            .arg(&image.kernel)
            .arg("-initrd")
            .arg(&image.initrd)
            .args([
                "-append",
                "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1",
            ])
            .arg("-drive")
            .arg(format!("file={},if=virtio,format=qcow2", overlay.display()))
            .args([
                "-netdev",
                "user,id=net0",
                "-device",
                "virtio-net-pci,netdev=net0",
            ])
            .arg("-fsdev")
            .arg(format!(
                "local,id=share,path={},security_model=none,readonly=on",
                share.display()
            ))
            .arg("-device")
            .arg(format!("virtio-9p-pci,fsdev=share,mount_tag={SHARE_TAG}"))
            .args(["-device", "virtio-serial-pci", "-chardev"])
            .arg(format!(
                "socket,id=channel,path={},server=on,wait=off",
                socket.display()
            ))
            .arg("-device")
            .arg(format!(
                "virtserialport,chardev=channel,name={CHANNEL_PORT}"
            ))
            .arg("-serial")
            .arg(format!("file:{}", console.display()))
            .args(["-rtc", "base=utc"])
            .stdin(Stdio::null())
            .stdout(qemu_log.try_clone().unwrap())
            .stderr(qemu_log)
            .kill_on_drop(true)
            .spawn()
            .expect("qemu-system-x86_64");
        let stream = connect(&socket).await;
        let (read, write) = stream.into_split();
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let pending: Pending = Arc::default();
        let (boots_tx, boots) = watch::channel(Vec::new());
        let reader = tokio::spawn(read_channel(
            BufReader::new(read),
            writer.clone(),
            pending.clone(),
            boots_tx,
        ));
        let mut guest = Guest {
            child,
            dir,
            writer,
            pending,
            boots,
            next_id: 0,
            reader,
        };
        guest.wait_boot(1).await;
        guest
    }

    /// The boot ids the guest announced, oldest first.
    pub fn boots(&self) -> Vec<String> {
        self.boots.borrow().clone()
    }

    /// The current boot id.
    pub fn boot_id(&self) -> String {
        self.boots().last().cloned().unwrap_or_default()
    }

    /// Waits until the guest announced its `n`th boot and systemd finished booting it.
    pub async fn wait_boot(&mut self, n: usize) {
        let mut boots = self.boots.clone();
        let announced = tokio::time::timeout(BOOT, boots.wait_for(|b| b.len() >= n)).await;
        assert!(
            matches!(announced, Ok(Ok(_))),
            "the guest did not announce boot {n} within {BOOT:?}"
        );
        let state = self
            .sh("systemctl is-system-running --wait || true", BOOT)
            .await;
        assert!(
            ["running", "degraded"].contains(&state.text.trim()),
            "the guest did not finish booting: {}",
            state.text
        );
    }

    /// Runs `script` with bash in the guest (as root, in the host's namespaces) and returns
    /// what it left; panics (with the console) when no answer comes within `timeout`.
    pub async fn sh(&mut self, script: &str, timeout: Duration) -> Output {
        match self.try_sh(script, timeout).await {
            Some(out) => out,
            None => panic!("no answer from the guest within {timeout:?} to:\n{script}"),
        }
    }

    /// [`Guest::sh`], `None` when no answer came (the guest rebooted, or it took too long).
    async fn try_sh(&mut self, script: &str, timeout: Duration) -> Option<Output> {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let line = format!("{id} {}\n", BASE64.encode(script));
        self.writer
            .lock()
            .await
            .write_all(line.as_bytes())
            .await
            .ok()?;
        let answer = tokio::time::timeout(timeout, rx).await;
        self.pending.lock().unwrap().remove(&id);
        answer.ok()?.ok()
    }

    /// Runs `script` and returns its output; panics with it unless it exits 0.
    pub async fn ok(&mut self, script: &str) -> String {
        let out = self.sh(script, Duration::from_secs(180)).await;
        assert_eq!(
            out.code, 0,
            "in the guest:\n{script}\nfailed:\n{}",
            out.text
        );
        out.text
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        let raw = std::fs::read(self.dir.path().join("console.log")).unwrap_or_default();
        String::from_utf8_lossy(&raw).into_owned()
    }

    /// What a failure message shows: qemu's own output and the whole console (every boot, and
    /// the agent's and the kubelet's logs, which go there too).
    pub fn diagnostics(&self) -> String {
        let qemu = std::fs::read_to_string(self.dir.path().join("qemu.log")).unwrap_or_default();
        format!(
            "\n--- qemu ---\n{qemu}\n--- guest console ---\n{}\n",
            self.console()
        )
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // A failing test shows what the guest went through.
        if std::thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        self.reader.abort();
        // kill_on_drop sends SIGKILL to qemu; setpriv exec'd it, so the PID is qemu's.
        let _ = self.child.start_kill();
    }
}

async fn connect(socket: &Path) -> UnixStream {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match UnixStream::connect(socket).await {
            Ok(stream) => return stream,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "qemu did not open its channel socket {}: {e}",
                    socket.display()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Reads the guest's lines: `READY <boot id>` (answered with the host's clock), `DONE <id>
/// <code> <base64 output>` (handed to whoever waits for `id`).
async fn read_channel(
    mut read: BufReader<tokio::net::unix::OwnedReadHalf>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    pending: Pending,
    boots: watch::Sender<Vec<String>>,
) {
    let mut line = String::new();
    loop {
        line.clear();
        match read.read_line(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let mut words = line.split_whitespace();
        match words.next() {
            Some("READY") => {
                let boot = words.next().unwrap_or_default().to_owned();
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let time = format!("TIME {}.{:03}\n", now.as_secs(), now.subsec_millis());
                let _ = writer.lock().await.write_all(time.as_bytes()).await;
                boots.send_modify(|b| b.push(boot));
            }
            Some("DONE") => {
                let id: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
                let code: i32 = words.next().and_then(|w| w.parse().ok()).unwrap_or(-1);
                let text = words
                    .next()
                    .and_then(|w| BASE64.decode(w).ok())
                    .map(|b| String::from_utf8_lossy(&b).into_owned())
                    .unwrap_or_default();
                if let Some(tx) = pending.lock().unwrap().remove(&id) {
                    let _ = tx.send(Output { code, text });
                }
            }
            _ => {}
        }
    }
}
