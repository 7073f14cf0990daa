//! The guest image: Debian bookworm from `debootstrap` (minbase, systemd, udev, the Debian
//! kernel, apt, curl), a local apt repository of test packages at `/srv/repo`, and the guest's
//! end of the command channel. Nothing of rota: the agent comes over the 9p share.
//!
//! Built once per recipe into `$ROTA_VM_CACHE` (default `/var/cache/rota-test/vm`), in a
//! directory named after the SHA-256 of the recipe ([`recipe`]), as a raw ext4 file system
//! made by `mkfs.ext4 -d` (no loop mount), with the kernel and initramfs beside it for qemu's
//! direct kernel boot. A stamp marks a complete build; later runs reuse it, and a changed
//! recipe builds a new directory. Guests boot from qcow2 overlays of it, so it never changes.
//!
//! The repository's packages:
//! - `kubelet` 1.30.1-1.1: the kubelet stand-in (see [`KUBELET`]) and its systemd unit;
//! - `containerd` 1.0, with a security update 1.0+sec1 in suite `runtime-security`: the
//!   container runtime, whose update restarts the kubelet (no reboot);
//! - `linux-image-rota` 1.0, with 1.1 in suite `kernel-security`: a kernel-like package whose
//!   postinst writes `/var/run/reboot-required`;
//! - `slowpkg` 1.0, with 1.0+sec1 in suite `slow-security`: its postinst says it started
//!   (`/run/rota-test/postinst-started`) and waits until the test lets it finish
//!   (`/run/rota-test/postinst-release`), so a test can kill the agent in the middle of it.
//!
//! The image enables only suite `rota` (what is installed); a test enables an update suite
//! with [`enable_suite_script`].

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::debs::{self, run};

/// Where cached images live unless `ROTA_VM_CACHE` says otherwise.
const DEFAULT_CACHE: &str = "/var/cache/rota-test/vm";
const MIRROR: &str = "http://deb.debian.org/debian";
/// What `debootstrap --include` adds to minbase (which has apt).
const INCLUDE: &str = "systemd-sysv,udev,linux-image-amd64,kmod,curl,ca-certificates";
/// The root file system's size (sparse; about 900 MiB are used).
const IMAGE_SIZE: &str = "3G";
/// The repository inside the guest.
pub const REPO: &str = "/srv/repo";
/// The kubelet package's version; its upstream part is what `kubelet --version` says.
pub const KUBELET_PACKAGE_VERSION: &str = "1.30.1-1.1";
/// Where the 9p share is mounted in the guest.
pub const SHARE: &str = "/mnt/rota";
/// The 9p share's mount tag.
pub const SHARE_TAG: &str = "rota";
/// The virtio-serial port of the command channel.
pub const CHANNEL_PORT: &str = "rota.cmd";
/// The suites with updates, and the one package each updates: (suite, package, old, new).
pub const UPDATES: [(&str, &str, &str, &str); 3] = [
    ("runtime-security", "containerd", "1.0", "1.0+sec1"),
    ("kernel-security", "linux-image-rota", "1.0", "1.1"),
    ("slow-security", "slowpkg", "1.0", "1.0+sec1"),
];
/// What the slow package's postinst writes when it starts, and waits for.
pub const POSTINST_STARTED: &str = "/run/rota-test/postinst-started";
/// What lets the slow package's postinst finish.
pub const POSTINST_RELEASE: &str = "/run/rota-test/postinst-release";

/// The kubelet stand-in, `/usr/bin/kubelet` of the `kubelet` package (`@VERSION@` replaced):
/// `kubelet --version` answers as the real one does; run as the `kubelet` service, it reports
/// its Node to the API server as a kubelet does — registered, `Ready` with a heartbeat every 2 s
/// while it runs (and `NotReady` when stopped), the guest's real boot id, machine id, kernel and
/// OS, its own version — and, as the kubelet reports the pods it runs, the status of the
/// agent's DaemonSet pod from the systemd unit that plays its container.
const KUBELET: &str = r#"#!/bin/bash
# kubelet stand-in of rota's VM tests: reports this node (and the agent pod's container, a
# systemd unit) to the API server as a kubelet does. Configured by /etc/default/kubelet:
# KUBELET_APISERVER (URL), KUBELET_NODE_NAME, KUBELET_POD (namespace/name), KUBELET_POD_UNIT.
set -u
if [ "${1:-}" = --version ]; then echo "Kubernetes v@VERSION@"; exit 0; fi
: "${KUBELET_APISERVER:?}" "${KUBELET_NODE_NAME:?}"
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }
api() { # METHOD PATH BODY
  curl -sS --max-time 10 -o /dev/null -w '%{http_code}' -X "$1" \
    -H "Content-Type: application/merge-patch+json" --data-binary "$3" "$KUBELET_APISERVER$2"
}
boot_id=$(cat /proc/sys/kernel/random/boot_id)
machine_id=$(cat /etc/machine-id)
kernel=$(uname -r)
os_image=$(. /etc/os-release && echo "$PRETTY_NAME")
runtime=$(dpkg-query -W -f='${Version}' containerd 2>/dev/null)
started=$(now)
node_status() { # STATUS REASON
  printf '{"status":{"conditions":[{"type":"Ready","status":"%s","reason":"%s","message":"kubelet stand-in","lastHeartbeatTime":"%s","lastTransitionTime":"%s"}],"nodeInfo":{"bootID":"%s","machineID":"%s","systemUUID":"%s","kernelVersion":"%s","osImage":"%s","containerRuntimeVersion":"containerd://%s","kubeletVersion":"v@VERSION@","kubeProxyVersion":"v@VERSION@","operatingSystem":"linux","architecture":"amd64"}}}' \
    "$1" "$2" "$(now)" "$started" "$boot_id" "$machine_id" "$machine_id" "$kernel" "$os_image" "$runtime"
}
pod_status() {
  local unit=${KUBELET_POD_UNIT:-rota-agent.service} ready=False since state
  since=$(systemctl show -P ActiveEnterTimestamp "$unit")
  if systemctl is-active --quiet "$unit" && [ -n "$since" ]; then
    ready=True; since=$(date -u -d "$since" +%Y-%m-%dT%H:%M:%SZ)
    state="{\"running\":{\"startedAt\":\"$since\"}}"
  else
    since=$(now); state='{"waiting":{"reason":"CrashLoopBackOff"}}'
  fi
  printf '{"status":{"phase":"Running","conditions":[{"type":"Ready","status":"%s","lastTransitionTime":"%s"}],"containerStatuses":[{"name":"agent","image":"rota-agent","imageID":"","restartCount":0,"ready":%s,"state":%s}]}}' \
    "$ready" "$since" "$( [ $ready = True ] && echo true || echo false )" "$state"
}
stopping=
trap 'stopping=1' TERM INT
code=$(api POST /api/v1/nodes "{\"apiVersion\":\"v1\",\"kind\":\"Node\",\"metadata\":{\"name\":\"$KUBELET_NODE_NAME\",\"labels\":{\"kubernetes.io/hostname\":\"$KUBELET_NODE_NAME\"}}}")
echo "registering node $KUBELET_NODE_NAME: HTTP $code (boot $boot_id)"
while [ -z "$stopping" ]; do
  code=$(api PATCH "/api/v1/nodes/$KUBELET_NODE_NAME/status" "$(node_status True KubeletReady)")
  [ "$code" = 200 ] || echo "node status: HTTP $code"
  if [ -n "${KUBELET_POD:-}" ]; then
    code=$(api PATCH "/api/v1/namespaces/${KUBELET_POD%%/*}/pods/${KUBELET_POD#*/}/status" "$(pod_status)")
    [ "$code" = 200 ] || echo "pod status: HTTP $code"
  fi
  sleep 2 & wait $!
done
api PATCH "/api/v1/nodes/$KUBELET_NODE_NAME/status" "$(node_status False KubeletStopped)" >/dev/null
echo "stopped"
"#;

/// The kubelet package's unit.
const KUBELET_UNIT: &str = "[Unit]
Description=kubelet (rota VM test stand-in)
After=network.target rota-vm-channel.service
ConditionPathExists=/etc/default/kubelet

[Service]
EnvironmentFile=/etc/default/kubelet
ExecStart=/usr/bin/kubelet
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
";

/// The slow package's postinst: when it upgrades the package, says it started, then waits (at
/// most 10 minutes) for the test.
const SLOW_POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] && [ -n \"$2\" ]; then
  mkdir -p /run/rota-test
  date +%s.%N >> /run/rota-test/postinst-started
  i=0
  while [ ! -e /run/rota-test/postinst-release ] && [ $i -lt 6000 ]; do sleep 0.1; i=$((i+1)); done
  [ -e /run/rota-test/postinst-release ]
fi
";

/// The guest's end of the command channel (virtio-serial port `rota.cmd`): it announces the
/// boot (`READY <boot id>`), sets the clock to the host's (`TIME <epoch seconds>`, the NTP of
/// these guests) before systemd goes on, then runs each `<id> <base64 script>` with bash and
/// answers `DONE <id> <exit code> <base64 output>`.
const CHANNEL: &str = r#"#!/bin/bash
set -u
port=/dev/virtio-ports/rota.cmd
exec 3<>"$port"
printf 'READY %s\n' "$(cat /proc/sys/kernel/random/boot_id)" >&3
read -r word now <&3
if [ "$word" = TIME ]; then date -u -s "@$now" >/dev/null; fi
systemd-notify --ready
while read -r id script <&3; do
  printf '%s' "$script" | base64 -d > /run/rota-cmd.sh
  bash /run/rota-cmd.sh > /run/rota-cmd.out 2>&1 < /dev/null
  rc=$?
  printf 'DONE %s %s %s\n' "$id" "$rc" "$(base64 -w0 < /run/rota-cmd.out)" >&3
done
"#;

const CHANNEL_UNIT: &str = "[Unit]
Description=rota VM test command channel
After=systemd-udevd.service
Before=network.target

[Service]
Type=notify
NotifyAccess=all
ExecStartPre=/bin/udevadm wait --timeout=120 /dev/virtio-ports/rota.cmd
ExecStart=/usr/local/sbin/rota-vm-channel
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
";

/// Guest files outside packages: (path, content, mode).
fn guest_files() -> Vec<(&'static str, String, u32)> {
    vec![
        ("etc/hostname", "rota-vm\n".into(), 0o644),
        ("etc/hosts", "127.0.0.1 localhost rota-vm\n".into(), 0o644),
        (
            "etc/fstab",
            format!(
                "/dev/vda / ext4 rw,errors=remount-ro 0 1\n{SHARE_TAG} {SHARE} 9p trans=virtio,version=9p2000.L,ro,nofail 0 0\n"
            ),
            0o644,
        ),
        (
            "etc/modules-load.d/rota-vm.conf",
            "virtio_console\n9pnet_virtio\n9p\n".into(),
            0o644,
        ),
        (
            "etc/systemd/network/10-eth.network",
            "[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n".into(),
            0o644,
        ),
        ("usr/local/sbin/rota-vm-channel", CHANNEL.into(), 0o755),
        (
            "etc/systemd/system/rota-vm-channel.service",
            CHANNEL_UNIT.into(),
            0o644,
        ),
        ("etc/apt/sources.list", String::new(), 0o644),
        (
            "etc/apt/sources.list.d/rota.list",
            debs::source_line(REPO, "rota"),
            0o644,
        ),
    ]
}

/// Units enabled in the image (`systemctl enable` in the root).
const ENABLE: [&str; 3] = ["systemd-networkd", "rota-vm-channel", "kubelet"];
/// Units masked: apt's timers would take apt's lock in the middle of a test.
const MASK: [&str; 2] = ["apt-daily.timer", "apt-daily-upgrade.timer"];

/// Changed whenever what the image is made of changes in code the recipe's text does not hold
/// (how `debs` writes a repository).
const BUILD_FORMAT: u32 = 2;

/// Everything the image is made of, as text: its hash names the cache directory.
pub fn recipe() -> String {
    let mut text = format!(
        "format {BUILD_FORMAT}\ndebootstrap --variant=minbase --include={INCLUDE} bookworm {MIRROR}\nsize {IMAGE_SIZE}\nenable {ENABLE:?}\nmask {MASK:?}\n{UPDATES:?}\n{KUBELET}\n{KUBELET_UNIT}\n{SLOW_POSTINST}\n{}\n{KUBELET_PACKAGE_VERSION}\n",
        debs::kernel_postinst("linux-image-rota")
    );
    for (path, content, mode) in guest_files() {
        text.push_str(&format!("{path} {mode:o}\n{content}\n"));
    }
    text
}

/// A built image: the root file system and the kernel to boot it with.
#[derive(Clone, Debug)]
pub struct Image {
    /// The raw ext4 root file system (never written: guests use overlays).
    pub rootfs: PathBuf,
    /// The guest's kernel.
    pub kernel: PathBuf,
    /// Its initramfs.
    pub initrd: PathBuf,
}

fn sha256(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout)[..16].to_owned()
}

/// The cache directory of this recipe's image.
pub fn cache_dir() -> PathBuf {
    let root =
        std::env::var_os("ROTA_VM_CACHE").map_or(PathBuf::from(DEFAULT_CACHE), PathBuf::from);
    root.join(sha256(&recipe()))
}

/// The image of this recipe: from the cache, or built now (about 3–4 minutes on 2 cores with
/// Debian's mirror reachable).
pub fn image() -> Image {
    let dir = cache_dir();
    let image = Image {
        rootfs: dir.join("rootfs.ext4"),
        kernel: dir.join("vmlinuz"),
        initrd: dir.join("initrd.img"),
    };
    if dir.join("complete").is_file() {
        return image;
    }
    let began = std::time::Instant::now();
    let parent = dir.parent().unwrap();
    fs::create_dir_all(parent).unwrap();
    let build = parent.join(format!(
        "build-{}.{}",
        dir.file_name().unwrap().to_string_lossy(),
        std::process::id()
    ));
    // Builds of runs that died half-way.
    for entry in fs::read_dir(parent).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some((_, pid)) = name.strip_prefix("build-").and_then(|n| n.rsplit_once('.'))
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
    let _ = fs::remove_dir_all(&build);
    fs::create_dir_all(&build).unwrap();
    let root = build.join("root");
    run(Command::new("debootstrap")
        .args([
            "--variant=minbase",
            &format!("--include={INCLUDE}"),
            "bookworm",
        ])
        .arg(&root)
        .arg(MIRROR));
    prepare_root(&root);
    // The Debian kernel and its initramfs (virtio drivers as modules), for direct boot.
    let boot = fs::read_dir(root.join("boot")).unwrap();
    let mut names: Vec<String> = boot
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let kernel = names
        .iter()
        .rfind(|n| n.starts_with("vmlinuz-"))
        .expect("the image has a kernel")
        .clone();
    let release = kernel.trim_start_matches("vmlinuz-");
    fs::copy(root.join("boot").join(&kernel), build.join("vmlinuz")).unwrap();
    fs::copy(
        root.join(format!("boot/initrd.img-{release}")),
        build.join("initrd.img"),
    )
    .unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "rota-root", "-d"])
        .arg(&root)
        .arg(build.join("rootfs.ext4"))
        .arg(IMAGE_SIZE));
    fs::remove_dir_all(&root).unwrap();
    fs::write(build.join("recipe"), recipe()).unwrap();
    fs::write(build.join("complete"), "").unwrap();
    // Another run may have finished the same build meanwhile: its result is as good.
    if fs::rename(&build, &dir).is_err() {
        let _ = fs::remove_dir_all(&build);
        assert!(
            dir.join("complete").is_file(),
            "cannot store {}",
            dir.display()
        );
    }
    println!(
        "built the VM image {} in {:.0} s",
        dir.display(),
        began.elapsed().as_secs_f64()
    );
    image
}

fn write(root: &Path, path: &str, content: &str, mode: u32) {
    let p = root.join(path);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(&p, content).unwrap();
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
}

fn chroot(root: &Path, args: &[&str]) -> String {
    run(Command::new("chroot")
        .arg(root)
        .args(args)
        .env_clear()
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        ))
}

/// The repository, the installed packages and the guest's own files.
fn prepare_root(root: &Path) {
    for (path, content, mode) in guest_files() {
        write(root, path, &content, mode);
    }
    let repo = root.join(REPO.trim_start_matches('/'));
    let work = tempfile::tempdir().unwrap();
    let base = repo.join("pool/rota");
    // The upstream part of the package's version, which the recipe's hash covers.
    let version = KUBELET_PACKAGE_VERSION
        .split_once('-')
        .map_or(KUBELET_PACKAGE_VERSION, |(upstream, _)| upstream);
    let kubelet = KUBELET.replace("@VERSION@", version);
    let kubelet_files: Vec<debs::PackageFile> = vec![
        ("usr/bin/kubelet", kubelet, 0o755),
        (
            "lib/systemd/system/kubelet.service",
            KUBELET_UNIT.into(),
            0o644,
        ),
    ];
    debs::deb(
        work.path(),
        &base,
        "kubelet",
        KUBELET_PACKAGE_VERSION,
        &kubelet_files,
        None,
    );
    let kernel_postinst = debs::kernel_postinst("linux-image-rota");
    let postinst = |package: &str| match package {
        "linux-image-rota" => Some(kernel_postinst.as_str()),
        "slowpkg" => Some(SLOW_POSTINST),
        _ => None,
    };
    let mut suites = vec![("rota".to_owned(), "pool/rota".to_owned())];
    for (suite, package, old, new) in UPDATES {
        debs::deb(work.path(), &base, package, old, &[], postinst(package));
        let pool = format!("pool/{suite}");
        debs::deb(
            work.path(),
            &repo.join(&pool),
            package,
            new,
            &[],
            postinst(package),
        );
        suites.push((suite.to_owned(), pool));
    }
    let suites: Vec<(&str, &str)> = suites
        .iter()
        .map(|(s, p)| (s.as_str(), p.as_str()))
        .collect();
    debs::index(&repo, &suites);
    chroot(root, &["apt-get", "-q", "update"]);
    let mut install = vec![
        "apt-get".to_owned(),
        "-q".into(),
        "-y".into(),
        "install".into(),
        format!("kubelet={KUBELET_PACKAGE_VERSION}"),
    ];
    install.extend(UPDATES.iter().map(|(_, p, old, _)| format!("{p}={old}")));
    let install: Vec<&str> = install.iter().map(String::as_str).collect();
    chroot(root, &install);
    // The kernel's postinst asked for a reboot; the guest boots fresh.
    for f in ["run/reboot-required", "run/reboot-required.pkgs"] {
        let _ = fs::remove_file(root.join(f));
    }
    let mut enable = vec!["systemctl", "enable"];
    enable.extend(ENABLE);
    chroot(root, &enable);
    let mut mask = vec!["systemctl", "mask"];
    mask.extend(MASK);
    chroot(root, &mask);
    // No root password: the console can log in when someone debugs a guest by hand.
    chroot(root, &["passwd", "-d", "root"]);
    chroot(root, &["apt-get", "clean"]);
    // A machine id per boot of a fresh overlay, as on a cloud image's first boot.
    fs::write(root.join("etc/machine-id"), "").unwrap();
}

/// A script that enables the update suite `suite` in the guest and refreshes apt's lists.
pub fn enable_suite_script(suite: &str) -> String {
    format!(
        "printf '%s' '{}' > /etc/apt/sources.list.d/{suite}.list\napt-get -q update\n",
        debs::source_line(REPO, suite).trim_end()
    )
}
