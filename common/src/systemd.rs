//! systemd readiness (`Type=notify`): tell the service manager `READY=1` the first time
//! the daemon's readiness flag (the one `/readyz` answers from) turns true, and
//! `STOPPING=1` when shutdown begins. Outside systemd (`NOTIFY_SOCKET` unset: a
//! terminal, a container, the tests) every call is a no-op.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// How often the readiness flag is looked at. Readiness is a one-time event at start, so
/// a short poll costs nothing and keeps the daemons' cores free of a notification path.
const POLL: Duration = Duration::from_millis(50);

/// Spawns the task that notifies systemd (if it supervises this process): `READY=1`
/// once `ready` is first true, `STOPPING=1` when `cancel` fires. Must be called inside a
/// Tokio runtime. The task ends after `STOPPING=1`.
pub fn notify_when_ready(ready: Arc<AtomicBool>, cancel: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = tick.tick() => {
                    if ready.load(Ordering::Relaxed) {
                        send(&[NotifyState::Ready]);
                        break;
                    }
                }
            }
        }
        cancel.cancelled().await;
        send(&[NotifyState::Stopping]);
    });
}

fn send(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}
