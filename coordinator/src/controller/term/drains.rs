//! Drains: the admission that starts one, the task that runs it, and what follows its end
//! (decided by `rota_core::controller::drained`).

use super::*;

/// A drain task's result.
pub(super) struct DrainDone {
    pub(super) node: NodeName,
    pub(super) token: FencingToken,
    pub(super) pool: Option<String>,
    pub(super) result: Result<DrainReport, Error>,
}

/// A running drain.
pub(super) struct Running {
    pub(super) token: FencingToken,
    pub(super) cancel: CancellationToken,
    /// What it was started with, to start it again.
    start: DrainStart,
    /// Its place in the slot's drains in a row (1 for the first).
    round: u32,
}

impl Term<'_> {
    /// Admits a node (persisted first), then cordons and drains it in a task. A conflict on the
    /// fencing counter ends the term.
    pub(super) async fn admit(
        &mut self,
        action: AdmitAction,
        now: Timestamp,
    ) -> Result<(), TermEnd> {
        let node = action.drain.node.clone();
        let kubelet_boot_id = self
            .cache
            .read()
            .node(&node)
            .and_then(|n| n.status.as_ref())
            .and_then(|s| s.node_info.as_ref())
            .map(|i| i.boot_id.clone());
        match self
            .service
            .admit_with_boot_id(&node, action.cordoned_by_rota, kubelet_boot_id)
            .await
        {
            Ok(token) => {
                if !action.sequential.is_empty() {
                    let budgets: Vec<String> = action
                        .sequential
                        .iter()
                        .map(|s| format!("{} ({} pods, {} at a time)", s.pdb, s.pods, s.allowed))
                        .collect();
                    info!(
                        %node,
                        token = token.0,
                        budgets = budgets.join(", "),
                        blocked_timeout = ?action.drain.spec.blocked_timeout,
                        "sequential drain: the node has these budgets to itself and evicts as replacements become Ready"
                    );
                }
                let deadline = now
                    .saturating_add(action.drain.timeout)
                    .unwrap_or(Timestamp::MAX);
                self.spawn_drain(action.drain, token, deadline, 1);
                Ok(())
            }
            Err(slots::Error::Store(StoreError::Conflict { what, expected })) => {
                Err(TermEnd::Restart(Error::Slots(slots::Error::Store(
                    StoreError::Conflict { what, expected },
                ))))
            }
            Err(error) => {
                log_refusal(&node, "admit", &error);
                Ok(())
            }
        }
    }

    /// Starts the `round`-th drain in a row of `start.node`'s slot `token`, until `deadline`.
    pub(super) fn spawn_drain(
        &mut self,
        start: DrainStart,
        token: FencingToken,
        deadline: Timestamp,
        round: u32,
    ) {
        if let Some(previous) = self.running.remove(&start.node) {
            previous.cancel.cancel();
        }
        let cancel = CancellationToken::new();
        self.running.insert(
            start.node.clone(),
            Running {
                token,
                cancel: cancel.clone(),
                start: start.clone(),
                round,
            },
        );
        let DrainStart {
            node, pool, spec, ..
        } = start;
        let left =
            Duration::try_from(deadline.duration_since(self.now())).unwrap_or(Duration::ZERO);
        let mut control = DrainControl::new(Instant::now() + left).with_cancel(cancel);
        let progress = control.progress();
        let (nodes, gate, drainer, events) = (
            self.nodes.clone(),
            self.gate.clone(),
            self.drainer.clone(),
            self.events.clone(),
        );
        let uid = self.node_uid(&node);
        let span = info_span!("drain", node = %node, token = token.0);
        self.drains.spawn(
            async move {
                let result = async {
                    let cordoned = cordon(&nodes, &gate, &node).await?;
                    if cordoned == Cordoned::BySomeoneElse {
                        info!("node was cordoned by someone else: rota leaves that cordon in place after the slot");
                    }
                    if cordoned == Cordoned::Now {
                        let _ = events.send(EventJob::Node {
                            node: node.clone(),
                            uid: uid.clone(),
                            reason: Reason::Cordoned,
                            note: format!("cordoned for maintenance slot {token}"),
                        });
                    }
                    gate.check()?;
                    let drain = drainer.drain(&node, &spec, control);
                    let blocked = report_blocked(progress, |pdbs| {
                        let names: Vec<String> = pdbs.iter().map(ToString::to_string).collect();
                        let _ = events.send(EventJob::Node {
                            node: node.clone(),
                            uid: uid.clone(),
                            reason: Reason::DrainBlocked,
                            note: format!(
                                "evictions held back by PodDisruptionBudget {}; retrying as the budget changes",
                                names.join(", ")
                            ),
                        });
                    });
                    tokio::pin!(drain);
                    tokio::select! {
                        report = &mut drain => Ok(report?),
                        never = blocked => match never {},
                    }
                }
                .await;
                DrainDone {
                    node,
                    token,
                    pool,
                    result,
                }
            }
            .instrument(span),
        );
    }

    /// A drain ended: grant the slot, or give it back with a back-off.
    pub(super) async fn on_drain_done(&mut self, done: DrainDone) -> Result<(), TermEnd> {
        let DrainDone {
            node,
            token,
            pool,
            result,
        } = done;
        let finished = match self.running.get(&node) {
            Some(r) if r.token == token => self.running.remove(&node),
            _ => None,
        };
        if let Ok(report) = &result {
            self.remember_evicted(&node, token, report);
        }
        if let (Some(pool), Ok(report)) = (&pool, &result) {
            for _ in 0..report.stats.evictions_succeeded {
                self.metrics().eviction(pool);
            }
            for _ in 0..report.stats.evictions_blocked_by_pdb {
                self.metrics().eviction_blocked(pool);
            }
        }
        let end = match &result {
            Ok(report) => DrainEnd::Outcome(&report.outcome),
            Err(Error::NotLeading(_) | Error::NodeNotFound(_)) => DrainEnd::Moot,
            Err(error) => DrainEnd::Failed(error.to_string()),
        };
        let attempts = self.attempts.get(&node).copied().unwrap_or(0);
        let backoff = pool.as_deref().and_then(|p| self.book.in_force(p)).map_or(
            Backoff {
                initial: DEFAULT_BACKOFF_INITIAL,
                max: DEFAULT_BACKOFF_MAX,
            },
            |f| f.policy.drain.backoff,
        );
        let round = finished.as_ref().map_or(1, |r| r.round);
        match after_drain(end, attempts, round, backoff, self.now()) {
            AfterDrain::Grant => {
                self.attempts.remove(&node);
                if let Err(error) = self.service.drained(&node, token).await {
                    log_refusal(&node, "grant", &error);
                }
            }
            AfterDrain::Nothing => {}
            AfterDrain::DrainAgain { why } => {
                // Without `finished`, another drain of the node already replaced this one.
                if let Some(Running { start, .. }) = finished {
                    info!(%node, token = token.0, %why, round = round + 1, "drain timed out after pods went; the node stays cordoned and drains again");
                    let deadline = self
                        .now()
                        .saturating_add(start.timeout)
                        .unwrap_or(Timestamp::MAX);
                    self.spawn_drain(start, token, deadline, round + 1);
                }
            }
            AfterDrain::GiveBack {
                not_before,
                why,
                attempts,
            } => {
                self.attempts.insert(node.clone(), attempts);
                warn!(%node, token = token.0, %why, %not_before, "drain could not finish; giving the slot back");
                if let Err(error) = self
                    .service
                    .requeue_after_drain_failure(&node, token, not_before, &why)
                    .await
                {
                    log_refusal(&node, "requeue", &error);
                }
            }
        }
        Ok(())
    }

    /// Uncordons a node rota cordoned that holds no slot any more.
    pub(super) async fn uncordon(&mut self, node: &str, why: String) {
        match uncordon_own(&self.nodes, &self.gate, node).await {
            Ok(true) => self.event(EventJob::Node {
                node: node.to_owned(),
                uid: self.node_uid(node),
                reason: Reason::Uncordoned,
                note: why,
            }),
            Ok(false) => {}
            Err(error) => warn!(node, %error, "uncordon failed; retrying on the next pass"),
        }
    }
}

/// Calls `report` with the budgets that newly hold back an eviction of a running drain, each
/// once. Never ends (the drain ending drops it).
pub(super) async fn report_blocked(
    mut progress: tokio::sync::watch::Receiver<DrainProgress>,
    mut report: impl FnMut(Vec<PdbRef>),
) -> std::convert::Infallible {
    let mut reported: BTreeSet<PdbRef> = BTreeSet::new();
    loop {
        let fresh: Vec<PdbRef> = progress
            .borrow_and_update()
            .pods
            .values()
            .filter_map(|p| match p {
                PodProgress::BlockedByPdb { pdbs, .. } => Some(pdbs.iter()),
                _ => None,
            })
            .flatten()
            .filter(|pdb| !reported.contains(*pdb))
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if !fresh.is_empty() {
            reported.extend(fresh.iter().cloned());
            report(fresh);
        }
        if progress.changed().await.is_err() {
            return std::future::pending().await;
        }
    }
}
