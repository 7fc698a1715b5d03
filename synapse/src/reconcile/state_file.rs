//! The state file's part in the reconcile loop: the last good backends, kept on disk and
//! refreshed as the registry answers, stand in at start for services whose registry has
//! not answered within [`STATE_FILE_GRACE`] (`state_file_path`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use common::ServiceName;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::backends::{BackendSet, Discovered};
use crate::counters::Counters;
use crate::state_file::{Cached, State};

/// How long after start a service still without its first set is routed from the
/// state file instead: long enough for a reachable registry to answer first.
pub const STATE_FILE_GRACE: Duration = Duration::from_secs(3);

/// The state file and what it holds.
pub(super) struct StateFile {
    path: PathBuf,
    ttl: Duration,
    /// Read at start; a service leaves it once its watcher publishes.
    pub(super) cached: State,
    /// When `cached` may stand in for services without a first set.
    pub(super) use_after: Instant,
    /// What the file holds now (as last written or read).
    saved: State,
    /// Sets read from the registry (fresh), per service, since the last write.
    pub(super) registry: BTreeMap<ServiceName, BackendSet>,
}

impl StateFile {
    /// `cached` is what the file held at start.
    pub(super) fn new(path: PathBuf, ttl: Duration, cached: State) -> Self {
        Self {
            path,
            ttl,
            saved: cached.clone(),
            cached,
            use_after: Instant::now() + STATE_FILE_GRACE,
            registry: BTreeMap::new(),
        }
    }

    /// When the state file may stand in for services of `inputs` still without a first
    /// set.
    pub(super) fn wakeup(
        &self,
        inputs: &[(ServiceName, watch::Receiver<Option<Discovered>>)],
    ) -> Option<Instant> {
        let waiting = inputs
            .iter()
            .any(|(name, rx)| rx.borrow().is_none() && self.cached.contains_key(name));
        (waiting && Instant::now() < self.use_after).then_some(self.use_after)
    }

    /// Writes the state file when the registry's sets differ from what it holds, or
    /// its timestamps are a quarter of the TTL old (so a set that never changes does
    /// not expire). Services routed from the file keep their entries and timestamps;
    /// only `services` (the configured ones) are kept.
    pub(super) async fn save<'a>(
        &mut self,
        services: impl IntoIterator<Item = &'a ServiceName>,
        counters: &Counters,
    ) {
        let now = crate::state_file::unix_now();
        let refresh = (self.ttl / 4).as_secs().max(1);
        let mut next = State::new();
        let mut changed = false;
        for name in services {
            if let Some(set) = self.registry.get(name).filter(|s| !s.is_empty()) {
                let old = self.saved.get(name);
                let stale = old
                    .is_none_or(|o| &o.backends != set || now.saturating_sub(o.seen_at) >= refresh);
                changed |= stale;
                let seen_at = if stale {
                    now
                } else {
                    old.map_or(now, |o| o.seen_at)
                };
                next.insert(
                    name.clone(),
                    Cached {
                        backends: set.clone(),
                        seen_at,
                    },
                );
            } else if let Some(old) = self.saved.get(name) {
                next.insert(name.clone(), old.clone());
            }
        }
        changed |= next.len() != self.saved.len();
        if !changed {
            return;
        }
        match crate::state_file::save(&self.path, &next).await {
            Ok(()) => self.saved = next,
            Err(e) => {
                Counters::inc(&counters.write_failures);
                tracing::warn!(path = %self.path.display(), error = %e, "cannot write the state file");
            }
        }
    }
}
