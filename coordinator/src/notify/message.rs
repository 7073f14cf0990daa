//! What a notification says.

use std::fmt::Write;

/// Why a pool's rollout paused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PauseCause {
    /// A human set `spec.paused` (`rotactl pause`).
    Manual,
    /// The circuit breaker: `failed` nodes reached the policy's `maxFailures`.
    CircuitOpen {
        /// Failed nodes in the pool.
        failed: u32,
    },
}

/// Something humans in the chat channel should hear about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notification {
    /// A pool started maintaining nodes (its first admission after being idle).
    RolloutStarted {
        /// The pool (MaintenancePolicy name).
        pool: String,
        /// Nodes waiting for maintenance when it started.
        nodes: u32,
    },
    /// A node's maintenance failed; its slot stays held.
    NodeFailed {
        /// The pool.
        pool: String,
        /// The node.
        node: String,
        /// The operation, e.g. `reboot`.
        operation: String,
        /// Why it failed.
        reason: String,
    },
    /// A pool's rollout paused.
    PoolPaused {
        /// The pool.
        pool: String,
        /// Why.
        cause: PauseCause,
    },
    /// A pool finished: no node holds a slot or waits for one.
    RolloutDone {
        /// The pool.
        pool: String,
        /// Nodes maintained.
        done: u32,
        /// Nodes whose maintenance failed.
        failed: u32,
    },
}

impl Notification {
    /// The message's text, with `[cluster] ` in front when a cluster name is given.
    pub fn text(&self, cluster: Option<&str>) -> String {
        let mut text = String::new();
        if let Some(cluster) = cluster.filter(|c| !c.is_empty()) {
            let _ = write!(text, "[{cluster}] ");
        }
        text.push_str(&self.summary());
        text
    }

    /// The message without the cluster name.
    pub fn summary(&self) -> String {
        match self {
            Notification::RolloutStarted { pool, nodes } => format!(
                "rota: rollout started in pool {pool}: {nodes} {} to maintain",
                plural(*nodes, "node", "nodes")
            ),
            Notification::NodeFailed {
                pool,
                node,
                operation,
                reason,
            } => format!(
                "rota: {operation} of node {node} (pool {pool}) FAILED: {reason}. The node keeps \
                 its slot; see `rotactl history {node}`, and `rotactl release {node}` once it is safe."
            ),
            Notification::PoolPaused {
                pool,
                cause: PauseCause::Manual,
            } => format!(
                "rota: pool {pool} paused (spec.paused); nodes in maintenance finish, no new \
                 node starts. `rotactl resume {pool}` to continue."
            ),
            Notification::PoolPaused {
                pool,
                cause: PauseCause::CircuitOpen { failed },
            } => format!(
                "rota: pool {pool} paused itself after {failed} failed {} (circuit breaker). \
                 Fix them (`rotactl status`), then `rotactl resume {pool}`.",
                plural(*failed, "node", "nodes")
            ),
            Notification::RolloutDone { pool, done, failed } => {
                let mut text = format!(
                    "rota: rollout done in pool {pool}: {done} {} maintained",
                    plural(*done, "node", "nodes")
                );
                if *failed > 0 {
                    let _ = write!(text, ", {failed} failed");
                }
                text
            }
        }
    }
}

fn plural(n: u32, one: &'static str, many: &'static str) -> &'static str {
    if n == 1 { one } else { many }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_name_the_pool_and_what_to_do() {
        let started = Notification::RolloutStarted {
            pool: "workers".into(),
            nodes: 1,
        };
        assert_eq!(
            started.text(Some("prod")),
            "[prod] rota: rollout started in pool workers: 1 node to maintain"
        );
        assert_eq!(
            started.text(Some("")),
            "rota: rollout started in pool workers: 1 node to maintain"
        );
        let failed = Notification::NodeFailed {
            pool: "workers".into(),
            node: "n1".into(),
            operation: "reboot".into(),
            reason: "not Ready after 15m".into(),
        }
        .text(None);
        assert!(
            failed
                .starts_with("rota: reboot of node n1 (pool workers) FAILED: not Ready after 15m.")
        );
        assert!(failed.contains("rotactl release n1"), "{failed}");
        let breaker = Notification::PoolPaused {
            pool: "db".into(),
            cause: PauseCause::CircuitOpen { failed: 2 },
        }
        .text(None);
        assert!(breaker.contains("after 2 failed nodes"), "{breaker}");
        assert!(breaker.contains("rotactl resume db"), "{breaker}");
        let manual = Notification::PoolPaused {
            pool: "db".into(),
            cause: PauseCause::Manual,
        }
        .text(None);
        assert!(manual.contains("spec.paused"), "{manual}");
        assert_eq!(
            Notification::RolloutDone {
                pool: "workers".into(),
                done: 12,
                failed: 1
            }
            .text(None),
            "rota: rollout done in pool workers: 12 nodes maintained, 1 failed"
        );
        assert_eq!(
            Notification::RolloutDone {
                pool: "workers".into(),
                done: 3,
                failed: 0
            }
            .text(None),
            "rota: rollout done in pool workers: 3 nodes maintained"
        );
    }
}
