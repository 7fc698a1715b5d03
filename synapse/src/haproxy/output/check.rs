//! The periodic check's slices, read beside the loop: the `show servers state` of a
//! slice (at 100,000 servers, 1,000 servers take HAProxy and synapse ~3 ms) runs in a
//! task of its own, so a change that arrives meanwhile is applied at once instead of
//! waiting for it. The loop plans the slice once it is read, leaving out the backends
//! that a runtime pass touched since the read began: that pass read them afresh.

use std::collections::BTreeSet;

use tokio::time::Instant;

use super::{CheckRead, HaproxyOutput, PendingCheck, RuntimePass};
use crate::haproxy::plan::Desired;
use crate::haproxy::runtime::Session;

impl Drop for PendingCheck {
    fn drop(&mut self) {
        // Only reads: nothing is left half-done.
        self.task.abort();
    }
}

impl PendingCheck {
    pub(super) fn reading(&self) -> bool {
        self.done.is_none()
    }

    /// Resolves when the read ends (at once when it has). Cancel-safe.
    pub(super) async fn ended(&mut self) {
        if self.done.is_none() {
            let read = (&mut self.task).await;
            // A read that panicked reads as nothing: the slice is checked next round.
            self.done = Some(read.unwrap_or_default());
        }
    }
}

impl HaproxyOutput {
    /// A runtime pass of `backends` is beginning: a slice read before it does not
    /// plan them.
    pub(super) fn note_touched(&mut self, backends: &[String]) {
        if let Some(p) = &mut self.pending_check {
            p.touched.extend(backends.iter().cloned());
        }
    }

    /// Starts reading the periodic check's next slice beside the loop, when it is due
    /// and none is being read.
    pub(super) fn start_check(&mut self, desired: &Desired) {
        if self.pending_check.is_some() || self.next_verify_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let backends = self.verify_chunk(desired);
        if backends.is_empty() {
            return;
        }
        let (paths, names) = (self.config.socket_file_paths.clone(), backends.clone());
        let task = tokio::spawn(async move {
            let mut read = CheckRead::new();
            for path in paths {
                let snapshot = match Session::open(&path).await {
                    Ok(mut session) => session.running(Some(&names)).await,
                    Err(e) => Err(e),
                };
                read.push((path, snapshot));
            }
            read
        });
        self.pending_check = Some(PendingCheck {
            backends,
            touched: BTreeSet::new(),
            task,
            done: None,
        });
    }

    /// Once the slice being read beside the loop is read: plans it against `desired`
    /// (without the backends a runtime pass touched since the read began) and sends
    /// the commands. `None` while it is being read (or none is).
    pub(super) async fn finish_check(&mut self, desired: &Desired) -> Option<RuntimePass> {
        let p = self.pending_check.as_mut()?;
        if p.reading() && !p.task.is_finished() {
            return None;
        }
        p.ended().await;
        let started = Instant::now();
        let mut p = self.pending_check.take()?;
        let read = p.done.take()?;
        let backends: Vec<String> = std::mem::take(&mut p.backends)
            .into_iter()
            .filter(|b| !p.touched.contains(b))
            .collect();
        let mut pass = RuntimePass::default();
        let mut failed = false;
        for (path, snapshot) in read {
            let applied = match snapshot {
                Ok(snapshot) => {
                    self.apply_snapshot(None, &path, &snapshot, desired, Some(&backends), &mut pass)
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = applied {
                failed = true;
                self.socket_failed(&path, &e, desired, &mut pass);
            }
        }
        self.pass_ended(failed, false, &pass);
        tracing::debug!(backends = backends.len(), took = ?started.elapsed(), commands = pass.commands, "periodic check slice");
        Some(pass)
    }
}
