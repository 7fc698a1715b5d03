//! The `base`/`static` watcher: discovers nothing, so the service routes to its
//! `default_servers` (applied by [`crate::backends::resolve`]).

use tokio_util::sync::CancellationToken;

use super::{Publisher, Watcher};
use crate::backends::Discovered;

/// Publishes one empty set and waits for cancellation.
pub struct StaticWatcher {
    fresh: bool,
}

impl StaticWatcher {
    pub fn new() -> Self {
        Self { fresh: true }
    }

    /// A stand-in for a source that is not available: its empty set is marked stale, so
    /// a `multi` sequential resolver prefers any working source over it.
    pub fn stale() -> Self {
        Self { fresh: false }
    }
}

impl Default for StaticWatcher {
    fn default() -> Self {
        Self::new()
    }
}

impl Watcher for StaticWatcher {
    async fn run(self, out: Publisher, cancel: CancellationToken) {
        out.send_replace(Some(Discovered {
            backends: Default::default(),
            fresh: self.fresh,
        }));
        cancel.cancelled().await;
    }
}
