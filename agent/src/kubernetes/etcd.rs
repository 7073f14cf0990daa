//! The node's etcd member and the agent's snapshots of it: `etcdctl snapshot save`, verified
//! with `snapshot status`, the newest few kept in one directory with their status beside them
//! (so the facts survive agent restarts), and the last failure.

use std::path::{Path, PathBuf};
use std::time::Duration;

use jiff::Timestamp;
use rota_core::model::{EtcdFacts, EtcdMember, EtcdSnapshot};
use serde::{Deserialize, Serialize};

use crate::host::{Host, HostCommand, read_text_opt};
use crate::{Error, Result};

/// Where and how snapshots are taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EtcdConfig {
    /// The member's client endpoint.
    pub endpoint: String,
    /// CA of etcd's client certificates.
    pub cacert: PathBuf,
    /// Client certificate.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
    /// Where snapshots are written (a host path).
    pub snapshot_dir: PathBuf,
    /// How many snapshots are kept.
    pub keep: usize,
    /// Timeout of `snapshot save` and `snapshot status`.
    pub timeout: Duration,
}

/// kubeadm's etcd client endpoint on a stacked member.
pub const DEFAULT_ENDPOINT: &str = "https://127.0.0.1:2379";
/// kubeadm's etcd CA.
pub const DEFAULT_CACERT: &str = "/etc/kubernetes/pki/etcd/ca.crt";
/// kubeadm's client certificate for etcd health checks (its `etcdctl` examples use it).
pub const DEFAULT_CERT: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.crt";
/// Its key.
pub const DEFAULT_KEY: &str = "/etc/kubernetes/pki/etcd/healthcheck-client.key";
/// Where the agent keeps its snapshots.
pub const DEFAULT_SNAPSHOT_DIR: &str = "/var/lib/rota/etcd-snapshots";
/// How many snapshots are kept.
pub const DEFAULT_KEEP: u16 = 3;

impl Default for EtcdConfig {
    fn default() -> Self {
        EtcdConfig {
            endpoint: DEFAULT_ENDPOINT.into(),
            cacert: PathBuf::from(DEFAULT_CACERT),
            cert: PathBuf::from(DEFAULT_CERT),
            key: PathBuf::from(DEFAULT_KEY),
            snapshot_dir: PathBuf::from(DEFAULT_SNAPSHOT_DIR),
            keep: usize::from(DEFAULT_KEEP),
            timeout: Duration::from_secs(300),
        }
    }
}

const PREFIX: &str = "etcd-snapshot-";
const SUFFIX: &str = ".db";
/// The status kept beside a verified snapshot: `<file>.json`.
const STATUS_SUFFIX: &str = ".json";
/// The last failed attempt, removed by the next verified snapshot.
const LAST_ERROR: &str = "last-error.json";
/// A note for whoever finds the directory.
const README: &str = "README";
const README_TEXT: &str = "Snapshots of this node's etcd member, taken and verified by rota-agent \
before maintenance (the newest few are kept; FILE.json holds each one's `snapshot status`).\n\
Restore one as kubeadm documents it: etcdutl snapshot restore FILE --data-dir <new dir>, then \
point the etcd static pod (/etc/kubernetes/manifests/etcd.yaml) at that directory.\n";

/// Which etcd the node runs, from kubeadm's static pod manifests in `manifests`.
pub fn member(host: &dyn Host, manifests: &Path) -> Result<EtcdMember> {
    if host.exists(&manifests.join("etcd.yaml"))? {
        Ok(EtcdMember::Stacked)
    } else if host.exists(&manifests.join("kube-apiserver.yaml"))? {
        Ok(EtcdMember::External)
    } else {
        Ok(EtcdMember::None)
    }
}

/// What `snapshot status --write-out=json` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotStatus {
    /// Hash of the snapshot's content.
    pub hash: u64,
    /// The etcd revision it holds.
    pub revision: u64,
    /// How many keys.
    pub total_key: u64,
    /// Its size in bytes.
    pub total_size: u64,
}

/// Parses `etcdutl|etcdctl --write-out=json snapshot status` output
/// (`{"hash":N,"revision":N,"totalKey":N,"totalSize":N}`); a snapshot of size 0 is refused.
pub fn parse_status(out: &str) -> Result<SnapshotStatus> {
    // etcdctl may print a deprecation line before the object.
    let json = match (out.find('{'), out.rfind('}')) {
        (Some(start), Some(end)) if start < end => &out[start..=end],
        _ => {
            return Err(Error::parse(
                "snapshot status",
                format!("no JSON in {out:?}"),
            ));
        }
    };
    let status: SnapshotStatus =
        serde_json::from_str(json).map_err(|e| Error::parse("snapshot status", e.to_string()))?;
    if status.total_size == 0 {
        return Err(Error::parse("snapshot status", "the snapshot is empty"));
    }
    Ok(status)
}

/// The file name of a snapshot taken at `at`: `etcd-snapshot-20250102T030405Z.db`.
pub fn file_name(at: Timestamp) -> String {
    format!("{PREFIX}{}{SUFFIX}", at.strftime("%Y%m%dT%H%M%SZ"))
}

/// The last failed attempt, as kept on the host.
#[derive(Serialize, Deserialize)]
struct LastError {
    error: String,
    at: Timestamp,
}

/// Whether `facts` call for a snapshot at `now`: a stacked member without a verified snapshot
/// younger than `max_age`.
pub fn needs_snapshot(facts: &EtcdFacts, max_age: Duration, now: Timestamp) -> bool {
    let since = now
        .checked_sub(jiff::SignedDuration::try_from(max_age).unwrap_or(jiff::SignedDuration::MAX))
        .unwrap_or(Timestamp::MIN);
    facts.member == EtcdMember::Stacked && facts.fresh_snapshot(since).is_none()
}

/// The node's etcd facts: its member, the newest verified snapshot in the directory, the last
/// failure (when it came after that snapshot).
pub fn facts(host: &dyn Host, manifests: &Path, config: &EtcdConfig) -> Result<EtcdFacts> {
    Ok(EtcdFacts {
        member: member(host, manifests)?,
        snapshot: newest(host, config)?,
        snapshot_error: last_error(host, config)?,
    })
}

/// The newest snapshot in the directory that was verified and is still there.
pub fn newest(host: &dyn Host, config: &EtcdConfig) -> Result<Option<EtcdSnapshot>> {
    let dir = &config.snapshot_dir;
    let mut newest: Option<EtcdSnapshot> = None;
    for name in host.list_dir(dir)? {
        let Some(db) = name.strip_suffix(STATUS_SUFFIX) else {
            continue;
        };
        if !(db.starts_with(PREFIX) && db.ends_with(SUFFIX) && host.exists(&dir.join(db))?) {
            continue;
        }
        let Some(text) = read_text_opt(host, &dir.join(&name))? else {
            continue;
        };
        match serde_json::from_str::<EtcdSnapshot>(&text) {
            Ok(s) if newest.as_ref().is_none_or(|n| s.taken_at > n.taken_at) => newest = Some(s),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(file = name, error = %e, "unreadable snapshot status; ignored")
            }
        }
    }
    Ok(newest)
}

fn last_error(host: &dyn Host, config: &EtcdConfig) -> Result<Option<String>> {
    let Some(text) = read_text_opt(host, &config.snapshot_dir.join(LAST_ERROR))? else {
        return Ok(None);
    };
    Ok(Some(match serde_json::from_str::<LastError>(&text) {
        Ok(e) => format!("{} (at {})", e.error, e.at),
        Err(_) => text.trim().to_owned(),
    }))
}

/// Takes a snapshot now, verifies it, keeps the newest [`EtcdConfig::keep`] and records the
/// outcome (the status beside the file, or the failure in `last-error.json`).
pub fn take_snapshot(host: &dyn Host, config: &EtcdConfig, now: Timestamp) -> Result<EtcdSnapshot> {
    let result = save_and_verify(host, config, now);
    let error_file = config.snapshot_dir.join(LAST_ERROR);
    match &result {
        Ok(snapshot) => {
            tracing::info!(
                path = snapshot.path,
                size = snapshot.size_bytes,
                revision = snapshot.revision,
                hash = snapshot.hash,
                "etcd snapshot taken and verified"
            );
            host.remove_file(&error_file)?;
            prune(host, config)?;
        }
        Err(e) => {
            tracing::warn!(error = %e, "etcd snapshot failed");
            let record = LastError {
                error: e.to_string(),
                at: now,
            };
            let json = serde_json::to_vec(&record)
                .map_err(|e| Error::parse("snapshot error record", e.to_string()))?;
            host.write_file_atomic(&error_file, &json)?;
        }
    }
    result
}

fn save_and_verify(host: &dyn Host, config: &EtcdConfig, now: Timestamp) -> Result<EtcdSnapshot> {
    let file = config.snapshot_dir.join(file_name(now));
    let path = file.to_string_lossy().into_owned();
    let save = HostCommand::new([
        "etcdctl".to_owned(),
        format!("--endpoints={}", config.endpoint),
        format!("--cacert={}", config.cacert.display()),
        format!("--cert={}", config.cert.display()),
        format!("--key={}", config.key.display()),
        "snapshot".to_owned(),
        "save".to_owned(),
        path.clone(),
    ])
    .timeout(config.timeout);
    // etcdctl needs the directory; the note in it also tells whoever finds it what it is.
    host.write_file_atomic(&config.snapshot_dir.join(README), README_TEXT.as_bytes())?;
    // etcdctl writes `<file>.part` and renames it: a failed save leaves no snapshot file.
    host.run(&save)?.check(&save)?;
    let status = match status(host, &path, config.timeout) {
        Ok(status) if host.exists(&file)? => status,
        Ok(_) => {
            return Err(Error::Refused(format!(
                "etcdctl snapshot save left no file {path}"
            )));
        }
        Err(e) => {
            // An unverified snapshot is no backup: do not keep it beside the verified ones.
            host.remove_file(&file)?;
            return Err(e);
        }
    };
    let snapshot = EtcdSnapshot {
        path: path.clone(),
        size_bytes: status.total_size,
        revision: status.revision,
        hash: status.hash,
        total_keys: status.total_key,
        taken_at: now,
    };
    let json = serde_json::to_vec_pretty(&snapshot)
        .map_err(|e| Error::parse("snapshot status record", e.to_string()))?;
    host.write_file_atomic(Path::new(&format!("{path}{STATUS_SUFFIX}")), &json)?;
    Ok(snapshot)
}

/// `etcdutl --write-out=json snapshot status FILE`, or etcdctl's where etcdutl is not installed
/// (etcd before 3.5 had only etcdctl's).
fn status(host: &dyn Host, file: &str, timeout: Duration) -> Result<SnapshotStatus> {
    let args = ["--write-out=json", "snapshot", "status", file];
    let etcdutl = HostCommand::new(std::iter::once("etcdutl").chain(args)).timeout(timeout);
    let out = match host.run(&etcdutl) {
        Err(Error::CommandNotFound { .. }) => {
            let etcdctl = HostCommand::new(std::iter::once("etcdctl").chain(args)).timeout(timeout);
            host.run(&etcdctl)?.check(&etcdctl)?
        }
        other => other?.check(&etcdutl)?,
    };
    parse_status(&out.stdout)
}

/// Deletes all but the newest [`EtcdConfig::keep`] snapshots (their names sort by time), with
/// their status files.
fn prune(host: &dyn Host, config: &EtcdConfig) -> Result<()> {
    let dir = &config.snapshot_dir;
    let mut snapshots: Vec<String> = host
        .list_dir(dir)?
        .into_iter()
        .filter(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        .collect();
    snapshots.sort();
    let old = snapshots.len().saturating_sub(config.keep.max(1));
    for name in &snapshots[..old] {
        host.remove_file(&dir.join(name))?;
        host.remove_file(&dir.join(format!("{name}{STATUS_SUFFIX}")))?;
        tracing::info!(file = name, "old etcd snapshot deleted");
    }
    Ok(())
}

/// Makes sure a verified snapshot younger than `max_age` exists before a stacked member is
/// touched: `Some` with it (taken now when there was none), `None` when the node runs no
/// stacked member (external etcd: not rota's to back up).
pub fn ensure_fresh(
    host: &dyn Host,
    manifests: &Path,
    config: &EtcdConfig,
    max_age: Duration,
    now: Timestamp,
) -> Result<Option<EtcdSnapshot>> {
    let facts = facts(host, manifests, config)?;
    match facts.member {
        EtcdMember::Stacked => {}
        EtcdMember::External => {
            tracing::info!("external etcd: no snapshot taken on this node");
            return Ok(None);
        }
        EtcdMember::None => return Ok(None),
    }
    if !needs_snapshot(&facts, max_age, now) {
        return Ok(facts.snapshot);
    }
    take_snapshot(host, config, now).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::MemoryHost;
    use crate::host::memory::exited;

    #[test]
    fn status_json_of_etcdutl_and_etcdctl() {
        let s = parse_status(r#"{"hash":3700895328,"revision":48213,"totalKey":1187,"totalSize":5357568,"version":"3.5.0"}"#).unwrap();
        assert_eq!(
            s,
            SnapshotStatus {
                hash: 3_700_895_328,
                revision: 48213,
                total_key: 1187,
                total_size: 5_357_568
            }
        );
        // etcdctl 3.5 warns first.
        let s = parse_status("Deprecated: Use `etcdutl snapshot status` instead.\n\n{\"hash\":1,\"revision\":2,\"totalKey\":3,\"totalSize\":4}\n").unwrap();
        assert_eq!(s.total_size, 4);
        for bad in [
            "",
            "Error: snapshot file has no data",
            r#"{"hash":1,"revision":2,"totalKey":3}"#,
            r#"{"hash":1,"revision":2,"totalKey":3,"totalSize":0}"#,
            r#"{"hash":-1,"revision":2,"totalKey":3,"totalSize":4}"#,
        ] {
            assert!(parse_status(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn file_names_sort_by_time() {
        let a = file_name("2025-01-02T03:04:05Z".parse().unwrap());
        assert_eq!(a, "etcd-snapshot-20250102T030405Z.db");
        let b = file_name("2025-01-02T13:04:05Z".parse().unwrap());
        assert!(a < b);
    }

    fn stacked_host(status: &'static str) -> MemoryHost {
        let host = MemoryHost::debian();
        host.put_file("/etc/kubernetes/manifests/etcd.yaml", "kind: Pod\n");
        let h = host.clone();
        host.on_command("etcdctl", move |argv| {
            if argv.get(5).map(String::as_str) == Some("snapshot") {
                h.put_file(&argv[7], "etcd data");
                return Ok(exited(0, ""));
            }
            Ok(exited(0, status))
        });
        host
    }

    fn at(hour: u32) -> Timestamp {
        format!("2025-01-02T{hour:02}:00:00Z").parse().unwrap()
    }

    #[test]
    fn snapshots_are_verified_kept_and_pruned() {
        let host = stacked_host(r#"{"hash":7,"revision":9,"totalKey":3,"totalSize":4096}"#);
        let config = EtcdConfig::default();
        let manifests = Path::new("/etc/kubernetes/manifests");
        let f = facts(&host, manifests, &config).unwrap();
        assert_eq!(f.member, EtcdMember::Stacked);
        assert!(needs_snapshot(&f, Duration::from_secs(3600), at(1)));
        for hour in 1..=4 {
            take_snapshot(&host, &config, at(hour)).unwrap();
        }
        let f = facts(&host, manifests, &config).unwrap();
        let newest = f.snapshot.clone().unwrap();
        assert_eq!(
            newest.path,
            "/var/lib/rota/etcd-snapshots/etcd-snapshot-20250102T040000Z.db"
        );
        assert_eq!(
            (
                newest.size_bytes,
                newest.revision,
                newest.hash,
                newest.total_keys
            ),
            (4096, 9, 7, 3)
        );
        assert_eq!(f.snapshot_error, None);
        let files = host.list_dir(&config.snapshot_dir).unwrap();
        let kept: Vec<&String> = files.iter().filter(|f| f.ends_with(".db")).collect();
        assert_eq!(kept.len(), 3, "{files:?}");
        assert!(!files.iter().any(|f| f.contains("T010000Z")), "{files:?}");
        // Fresh within the hour, not after it.
        assert!(!needs_snapshot(&f, Duration::from_secs(3600), at(4)));
        assert!(needs_snapshot(&f, Duration::from_secs(3599), at(5)));
        // ensure_fresh keeps a fresh one and takes a new one when it is stale.
        let kept =
            ensure_fresh(&host, manifests, &config, Duration::from_secs(3600), at(4)).unwrap();
        assert_eq!(kept.unwrap().taken_at, at(4));
        let new = ensure_fresh(&host, manifests, &config, Duration::from_secs(60), at(6)).unwrap();
        assert_eq!(new.unwrap().taken_at, at(6));
        // A snapshot file deleted by hand no longer counts.
        host.remove_file(Path::new(&format!(
            "{}/etcd-snapshot-20250102T060000Z.db",
            DEFAULT_SNAPSHOT_DIR
        )))
        .unwrap();
        assert_eq!(newest_taken(&host, &config), Some(at(4)));
    }

    fn newest_taken(host: &MemoryHost, config: &EtcdConfig) -> Option<Timestamp> {
        newest(host, config).unwrap().map(|s| s.taken_at)
    }

    #[test]
    fn a_failed_verification_is_recorded_and_the_file_removed() {
        let host = stacked_host("Error: invalid snapshot");
        let config = EtcdConfig::default();
        let e = take_snapshot(&host, &config, at(1)).unwrap_err();
        assert!(e.to_string().contains("snapshot status"), "{e}");
        let f = facts(&host, Path::new(super::super::DEFAULT_MANIFESTS), &config).unwrap();
        assert_eq!(f.snapshot, None);
        let error = f.snapshot_error.unwrap();
        assert!(error.contains("snapshot status"), "{error}");
        assert!(
            !host
                .exists(Path::new(
                    "/var/lib/rota/etcd-snapshots/etcd-snapshot-20250102T010000Z.db"
                ))
                .unwrap()
        );
    }

    #[test]
    fn etcdutl_verifies_when_it_is_installed_and_the_member_is_told_from_the_manifests() {
        let host = stacked_host("not asked");
        host.on_command("etcdutl", |_| {
            Ok(exited(
                0,
                r#"{"hash":1,"revision":2,"totalKey":3,"totalSize":5}"#,
            ))
        });
        let s = take_snapshot(&host, &EtcdConfig::default(), at(1)).unwrap();
        assert_eq!(s.size_bytes, 5);
        let manifests = Path::new(super::super::DEFAULT_MANIFESTS);
        let external = MemoryHost::debian();
        external.put_file("/etc/kubernetes/manifests/kube-apiserver.yaml", "");
        assert_eq!(member(&external, manifests).unwrap(), EtcdMember::External);
        assert_eq!(
            ensure_fresh(
                &external,
                manifests,
                &EtcdConfig::default(),
                Duration::from_secs(1),
                at(1)
            )
            .unwrap(),
            None
        );
        assert_eq!(
            member(&MemoryHost::debian(), manifests).unwrap(),
            EtcdMember::None
        );
    }
}
