//! Idle footprint of `rota-agent run`: starts the built binary as the daemon with the
//! machine's own `/` as the host (`--host-root /`, so no namespaces are needed) against a
//! coordinator address where nothing listens (127.0.0.1:9, the agent keeps retrying with
//! back-off), lets start-up detection finish, then samples resident memory and CPU time over
//! ~10 s. Targets: RSS < 15 MiB, CPU near 0.
//!
//! `cargo bench -p rota-agent --bench footprint`

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_rota-agent");

/// Resident set size in KiB, from `/proc/PID/status`.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// User + system CPU time in clock ticks, from `/proc/PID/stat`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn main() {
    let state = std::env::temp_dir().join(format!("rota-footprint-{}.json", std::process::id()));
    let mut child = match Command::new(AGENT)
        .args([
            "run",
            "--coordinator",
            "http://127.0.0.1:9",
            "--insecure-plaintext",
            "--node",
            "bench",
            "--host-root",
            "/",
            "--upgrade",
            "none",
            "--log",
            "error",
            "--sentinel",
            "/run/rota-footprint-sentinel",
        ])
        .arg("--state-path")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot start {AGENT}: {e}");
            std::process::exit(1);
        }
    };
    let pid = child.id();
    // Start-up detection (apt simulation, version probes) is not idle time.
    std::thread::sleep(Duration::from_secs(5));
    // USER_HZ, the unit of /proc/PID/stat times, is 100 on Linux.
    let ticks_per_sec = 100.0;
    let window = Duration::from_secs(10);
    let start = Instant::now();
    let cpu0 = cpu_ticks(pid);
    let mut peak = 0;
    while start.elapsed() < window {
        std::thread::sleep(Duration::from_millis(500));
        peak = peak.max(rss_kib(pid).unwrap_or(0));
    }
    let cpu1 = cpu_ticks(pid);
    let elapsed = start.elapsed().as_secs_f64();
    let rss = rss_kib(pid).unwrap_or(0);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&state);
    match (cpu0, cpu1) {
        (Some(a), Some(b)) => {
            let cpu_s = (b.saturating_sub(a)) as f64 / ticks_per_sec;
            println!(
                "rota-agent run, idle: rss {:.1} MiB (peak {:.1} MiB, target < 15), cpu {:.2} s over {:.1} s = {:.2}%",
                rss as f64 / 1024.0,
                peak as f64 / 1024.0,
                cpu_s,
                elapsed,
                100.0 * cpu_s / elapsed
            );
        }
        _ => {
            eprintln!("the agent exited early; no measurement");
            std::process::exit(1);
        }
    }
}
