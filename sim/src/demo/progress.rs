//! Live progress of a rollout: what every node is doing, slots in use, the queue and what
//! holds it back. On a terminal the view is redrawn in place; otherwise a plain line is
//! printed every few seconds.

use std::fmt::Write as _;
use std::io::Write as _;
use std::time::{Duration, Instant};

/// What a node is doing, as the demo shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum NodeState {
    /// Nothing asked for yet.
    Idle,
    /// Waiting for a slot (rota) or for the lock (kured).
    Queued,
    /// Cordoned, pods being evicted.
    Draining,
    /// Drained; the node's daemon upgrades or reboots it.
    Upgrading,
    /// Down (NotReady).
    Rebooting,
    /// Back; its health is being checked.
    Verifying,
    /// Maintained and back in service.
    Done,
    /// Maintenance failed; its slot stays held.
    Failed,
}

impl NodeState {
    /// Short label.
    pub fn label(self) -> &'static str {
        match self {
            NodeState::Idle => "idle",
            NodeState::Queued => "queued",
            NodeState::Draining => "draining",
            NodeState::Upgrading => "upgrading",
            NodeState::Rebooting => "rebooting",
            NodeState::Verifying => "verifying",
            NodeState::Done => "done",
            NodeState::Failed => "FAILED",
        }
    }
}

/// One node in a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeView {
    /// Node name.
    pub name: String,
    /// What it is doing.
    pub state: NodeState,
    /// More about it (the agent's step), may be empty.
    pub detail: String,
}

/// The fleet at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    /// `rota` or `kured`.
    pub scheduler: String,
    /// Seconds since the rollout started.
    pub elapsed: f64,
    /// Nodes holding a slot (or the lock) or down for maintenance.
    pub slots_in_use: usize,
    /// Most allowed at once.
    pub max_unavailable: usize,
    /// Nodes waiting.
    pub queued: usize,
    /// Nodes NotReady or cordoned now.
    pub unavailable_now: usize,
    /// The coordinator replica that leads (rota).
    pub leader: Option<usize>,
    /// Every node.
    pub nodes: Vec<NodeView>,
    /// What holds the queue back.
    pub blockers: Vec<String>,
}

impl Snapshot {
    fn count(&self, state: NodeState) -> usize {
        self.nodes.iter().filter(|n| n.state == state).count()
    }

    /// One line: time, done, in progress, queue, unavailable and the first blocker.
    pub fn line(&self) -> String {
        let busy = self.busy();
        let mut line = format!(
            "[{} {:>6.1}s] done {}/{} | slots {}/{} | queued {} | unavailable {}",
            self.scheduler,
            self.elapsed,
            self.count(NodeState::Done),
            self.nodes.len(),
            self.slots_in_use,
            self.max_unavailable,
            self.queued,
            self.unavailable_now,
        );
        if !busy.is_empty() {
            let _ = write!(line, " | {}", busy.join(", "));
        }
        if let Some(blocker) = self.blockers.first() {
            let _ = write!(line, " | waiting: {blocker}");
        }
        line
    }

    /// The nodes in maintenance, with what they are doing (`worker-01 upgrading (rebooting)`).
    fn busy(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| {
                !matches!(
                    n.state,
                    NodeState::Idle | NodeState::Queued | NodeState::Done
                )
            })
            .map(|n| {
                if n.detail.is_empty() {
                    format!("{} {}", n.name, n.state.label())
                } else {
                    format!("{} {} ({})", n.name, n.state.label(), n.detail)
                }
            })
            .collect()
    }

    /// The full view: a header, the nodes in columns, the nodes in maintenance and the
    /// blockers.
    pub fn view(&self, width: usize) -> Vec<String> {
        let mut header = self.header();
        truncate(&mut header, width);
        let mut lines = vec![header];
        let cell = self
            .nodes
            .iter()
            .map(|n| n.name.len() + 12)
            .max()
            .unwrap_or(20);
        let columns = (width / (cell + 2)).clamp(1, 6);
        for row in self.nodes.chunks(columns) {
            let mut line = String::new();
            for node in row {
                let label = format!("{} {}", node.name, node.state.label());
                let _ = write!(line, "{label:<width$}  ", width = cell);
            }
            lines.push(line.trim_end().to_string());
        }
        let mut busy = format!("in maintenance: {}", self.busy().join(", "));
        truncate(&mut busy, width);
        lines.push(busy);
        if self.blockers.is_empty() {
            lines.push("waiting: —".into());
        }
        for blocker in self.blockers.iter().take(3) {
            let mut text = format!("waiting: {blocker}");
            truncate(&mut text, width);
            lines.push(text);
        }
        lines
    }

    fn header(&self) -> String {
        let leader = self
            .leader
            .map(|l| format!(" | leader: coordinator-{l}"))
            .unwrap_or_default();
        format!(
            "{} {:>6.1}s | done {}/{} | slots in use {}/{} | queued {} | unavailable now {}{leader}",
            self.scheduler,
            self.elapsed,
            self.count(NodeState::Done),
            self.nodes.len(),
            self.slots_in_use,
            self.max_unavailable,
            self.queued,
            self.unavailable_now,
        )
    }
}

fn truncate(text: &mut String, width: usize) {
    if text.chars().count() > width {
        let cut: String = text.chars().take(width.saturating_sub(1)).collect();
        *text = format!("{cut}…");
    }
}

/// Prints snapshots: redrawn in place on a terminal, a plain line every `every` otherwise.
#[derive(Debug)]
pub struct Printer {
    tty: bool,
    drawn: usize,
    every: Duration,
    last: Option<Instant>,
}

impl Printer {
    /// A printer for stdout.
    pub fn stdout(every: Duration) -> Printer {
        use std::io::IsTerminal;
        Printer {
            tty: std::io::stdout().is_terminal(),
            drawn: 0,
            every,
            last: None,
        }
    }

    /// Shows `snapshot`.
    pub fn show(&mut self, snapshot: &Snapshot) {
        let mut out = std::io::stdout().lock();
        if self.tty {
            let mut text = String::new();
            if self.drawn > 0 {
                // Back to the first line of the previous view, and clear below.
                let _ = write!(text, "\x1b[{}A\x1b[J", self.drawn);
            }
            let lines = snapshot.view(terminal_width());
            for line in &lines {
                let _ = writeln!(text, "{line}");
            }
            self.drawn = lines.len();
            let _ = out.write_all(text.as_bytes());
        } else {
            let due = self.last.is_none_or(|t| t.elapsed() >= self.every);
            if !due {
                return;
            }
            self.last = Some(Instant::now());
            let _ = writeln!(out, "{}", snapshot.line());
        }
        let _ = out.flush();
    }

    /// Forgets the view on screen, so that what is printed next stays below it.
    pub fn finish(&mut self) {
        self.drawn = 0;
    }
}

/// Columns of the terminal (`COLUMNS`, else 100).
fn terminal_width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot() -> Snapshot {
        let node = |name: &str, state| NodeView {
            name: name.into(),
            state,
            detail: String::new(),
        };
        Snapshot {
            scheduler: "rota".into(),
            elapsed: 12.5,
            slots_in_use: 2,
            max_unavailable: 3,
            queued: 1,
            unavailable_now: 2,
            leader: Some(0),
            nodes: vec![
                node("cp-1", NodeState::Done),
                NodeView {
                    detail: "evicting 3 pods".into(),
                    ..node("worker-01", NodeState::Draining)
                },
                node("worker-02", NodeState::Rebooting),
                node("worker-03", NodeState::Queued),
            ],
            blockers: vec!["MaxUnavailable ×1 — worker-03: 3 of 3 nodes unavailable".into()],
        }
    }

    #[test]
    fn line_and_view_say_what_happens() {
        let s = snapshot();
        let line = s.line();
        assert!(line.contains("done 1/4"), "{line}");
        assert!(
            line.contains("worker-01 draining (evicting 3 pods), worker-02 rebooting"),
            "{line}"
        );
        assert!(line.contains("waiting: MaxUnavailable"), "{line}");
        let view = s.view(100);
        assert!(view[0].contains("leader: coordinator-0"), "{view:?}");
        assert!(
            view.iter().any(|l| l.contains("worker-03 queued")),
            "{view:?}"
        );
        assert!(
            view.iter()
                .any(|l| l.contains("in maintenance: worker-01 draining")),
            "{view:?}"
        );
        let narrow = s.view(60);
        assert!(narrow.iter().all(|l| l.chars().count() <= 60), "{narrow:?}");
        assert!(narrow[0].ends_with('…'), "{narrow:?}");
    }
}
