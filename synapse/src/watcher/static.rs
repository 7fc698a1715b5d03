//! The `base`/`static` watcher: discovers nothing, so the service routes to its
//! `default_servers` (applied by [`crate::resolution::resolve`]).

use tokio_util::sync::CancellationToken;

use super::publisher::{Publisher, Watcher};
use crate::backends::{Discovered, Origin};

/// Publishes one empty, fresh set and waits for cancellation.
#[derive(Debug, Default)]
pub struct StaticWatcher;

impl StaticWatcher {
    pub fn new() -> Self {
        Self
    }
}

impl Watcher for StaticWatcher {
    async fn run(self, out: Publisher, cancel: CancellationToken) {
        out.send_replace(Some(Discovered {
            backends: Default::default(),
            fresh: true,
            origin: Origin::Static,
            revision: None,
        }));
        cancel.cancelled().await;
    }
}
