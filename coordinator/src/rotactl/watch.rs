//! `rotactl watch`: the rollout's progress, redrawn whenever a Node or MaintenancePolicy
//! changes (two watches, no polling). On a terminal the screen is redrawn with each pool's
//! progress bar and the nodes in maintenance; otherwise one line per change, for logs and CI.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Node;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use tokio::sync::Notify;

use super::status::{self, Filter, PoolView, View};
use super::{Error, Result};
use rota_core::policy::MaintenancePolicy;

/// Shortest time between two redraws: a burst of changes is drawn once.
const REDRAW_INTERVAL: Duration = Duration::from_millis(250);

/// What to follow.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Only this pool.
    pub pool: Option<String>,
    /// Return once nothing is queued or holds a slot.
    pub until_done: bool,
    /// Give up after this long.
    pub timeout: Option<Duration>,
}

/// Follows the rollout until interrupted, or until done with `until_done`.
pub async fn run(client: &Client, out: &mut dyn Write, options: &Options) -> Result<()> {
    let follow = follow(client, out, options);
    match options.timeout {
        Some(limit) => tokio::time::timeout(limit, follow)
            .await
            .map_err(|_| Error::Timeout(limit))?,
        None => follow.await,
    }
}

async fn follow(client: &Client, out: &mut dyn Write, options: &Options) -> Result<()> {
    let (nodes, node_writer) = reflector::store::<Node>();
    let (policies, policy_writer) = reflector::store::<MaintenancePolicy>();
    let node_changes = reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff()
    .touched_objects()
    .map_ok(|_| ())
    .map_err(|e| Error::Config(format!("watching Nodes: {e}")));
    let policy_changes = reflector(
        policy_writer,
        watcher(
            Api::<MaintenancePolicy>::all(client.clone()),
            watcher::Config::default(),
        ),
    )
    .default_backoff()
    .touched_objects()
    .map_ok(|_| ())
    .map_err(|e| Error::Config(format!("watching MaintenancePolicies: {e}")));
    // Errors of a watch are retried with back-off by the watcher; they only delay the view.
    let mut changes = std::pin::pin!(futures::stream::select(node_changes, policy_changes));
    let changed = Notify::new();
    let drive = async {
        while let Some(change) = changes.next().await {
            match change {
                Ok(()) => changed.notify_one(),
                Err(e) => tracing::debug!(error = %e, "watch error; retrying"),
            }
        }
    };
    let tty = std::io::stdout().is_terminal();
    let filter = Filter {
        pool: options.pool.clone(),
        active: false,
    };
    let draw = async {
        nodes
            .wait_until_ready()
            .await
            .map_err(|e| Error::Config(format!("watching Nodes: {e}")))?;
        policies
            .wait_until_ready()
            .await
            .map_err(|e| Error::Config(format!("watching MaintenancePolicies: {e}")))?;
        let mut last = None;
        loop {
            let now = Timestamp::now();
            let node_list: Vec<Node> = nodes.state().iter().map(|n| (**n).clone()).collect();
            let policy_list: Vec<MaintenancePolicy> =
                policies.state().iter().map(|p| (**p).clone()).collect();
            let view = status::build(&node_list, &policy_list, now).filtered(&filter);
            let frame = if tty {
                screen(&view, now)
            } else {
                lines(&view)
            };
            if last.as_ref() != Some(&frame) {
                if tty {
                    // Clear the screen and go home, then draw.
                    write!(out, "\x1b[2J\x1b[H")?;
                    write!(out, "{frame}")?;
                } else {
                    let stamp = now.strftime("%T");
                    for line in frame.lines() {
                        writeln!(out, "[{stamp}] {line}")?;
                    }
                }
                out.flush()?;
                last = Some(frame);
            }
            if options.until_done && view.is_settled() {
                writeln!(out, "rollout done: no node is queued or in maintenance")?;
                return Ok(());
            }
            // A permit stored while drawing is not lost: the next change wakes this at once.
            tokio::time::sleep(REDRAW_INTERVAL).await;
            changed.notified().await;
        }
    };
    tokio::select! {
        () = drive => Err(Error::Config("the watches ended".to_owned())),
        drawn = draw => drawn,
    }
}

/// One line per pool (or one for all nodes when there is no pool).
fn lines(view: &View) -> String {
    let mut text = String::new();
    for pool in &view.pools {
        text.push_str(&progress_line(pool));
        text.push('\n');
    }
    if view.pools.is_empty() {
        let active = view.nodes.iter().filter(|n| n.is_active()).count();
        text.push_str(&format!("no MaintenancePolicy; {active} nodes active\n"));
    }
    text
}

/// Progress bars and the nodes in maintenance.
fn screen(view: &View, now: Timestamp) -> String {
    let mut text = format!("rota rollout  {}\n\n", now.strftime("%F %T %Z"));
    text.push_str(&lines(view));
    let active: Vec<_> = view
        .nodes
        .iter()
        .filter(|n| n.is_active())
        .cloned()
        .collect();
    if !active.is_empty() {
        text.push('\n');
        text.push_str(&status::nodes_table(&active, now).trim_fmt());
        text.push('\n');
    }
    text
}

/// `workers  [########------------]  4/10 done, 1 in progress, 5 waiting, 0 failed (paused)`.
fn progress_line(pool: &PoolView) -> String {
    const WIDTH: u32 = 20;
    let filled = (pool.done * WIDTH)
        .checked_div(pool.nodes)
        .unwrap_or(0)
        .min(WIDTH);
    let bar: String = (0..WIDTH)
        .map(|i| if i < filled { '#' } else { '-' })
        .collect();
    let mut line = format!(
        "{}  [{bar}]  {}/{} done, {} in progress, {} waiting, {} failed",
        pool.name, pool.done, pool.nodes, pool.in_progress, pool.waiting, pool.failed
    );
    if pool.circuit_open {
        line.push_str(" (circuit open)");
    } else if pool.paused {
        line.push_str(" (paused)");
    }
    if let Some(upgrade) = &pool.kubernetes_upgrade {
        line.push_str(&format!(", Kubernetes {upgrade}"));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        let pool = PoolView {
            name: "workers".into(),
            paused: true,
            circuit_open: false,
            invalid: None,
            nodes: 10,
            done: 4,
            in_progress: 1,
            waiting: 5,
            failed: 0,
            waiting_reasons: Vec::new(),
            kubernetes_upgrade: None,
        };
        assert_eq!(
            progress_line(&pool),
            "workers  [########------------]  4/10 done, 1 in progress, 5 waiting, 0 failed (paused)"
        );
        let empty = PoolView {
            nodes: 0,
            done: 0,
            paused: false,
            ..pool
        };
        assert!(progress_line(&empty).contains("[--------------------]  0/0 done"));
    }
}
