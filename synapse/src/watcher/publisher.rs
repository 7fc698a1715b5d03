//! What every watcher shares: the [`Watcher`] trait and the channel it publishes
//! complete sets to.

use std::future::Future;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backends::{BackendSet, Discovered, Origin};

/// Where a watcher publishes.
pub type Publisher = watch::Sender<Option<Discovered>>;

/// Publishes a complete set from a source of kind `origin`, waking the reconciler only
/// if it changed. Returns whether it did.
pub(crate) fn publish(out: &Publisher, backends: BackendSet, fresh: bool, origin: Origin) -> bool {
    publish_at(out, backends, fresh, origin, None)
}

/// [`publish`], with the etcd revision the set is complete as of: a newer revision wakes
/// the reconciler even when the set is the same, so that it can say it has applied it.
pub(crate) fn publish_at(
    out: &Publisher,
    backends: BackendSet,
    fresh: bool,
    origin: Origin,
    revision: Option<i64>,
) -> bool {
    out.send_if_modified(|cur| {
        let new = Discovered {
            backends,
            fresh,
            origin,
            revision,
        };
        let changed = cur.as_ref() != Some(&new);
        *cur = Some(new);
        changed
    })
}

/// Marks the published set stale (the source is away), keeping its backends.
pub(crate) fn mark_stale(out: &Publisher) {
    out.send_if_modified(|cur| match cur {
        Some(d) if d.fresh => {
            d.fresh = false;
            true
        }
        _ => false,
    });
}

/// A source of backends for one service. Runs until cancelled.
pub trait Watcher: Send + 'static {
    /// Publishes each complete backend set. The first publish happens after the first
    /// complete read of the source (kube's `InitDone`).
    fn run(self, out: Publisher, cancel: CancellationToken) -> impl Future<Output = ()> + Send;
}
