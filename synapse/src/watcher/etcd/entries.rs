//! The keys below a service's etcd prefix as the watcher last saw them, and the set it
//! publishes from them: rebuilt whole after a list, changed in place by the keys a
//! watch response touched.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::ServiceName;
use tokio::time::Instant;

use crate::backends::{Backend, BackendSet, Origin};
use crate::counters::Counters;
use crate::watcher::publisher::{publish_at, Publisher};

/// The keys below the prefix, as last seen.
#[derive(Default)]
pub(super) struct Entries {
    /// Valid entries, and whether their key vouched for their `name` (identity-checked).
    pub(super) valid: BTreeMap<Vec<u8>, (Backend, bool)>,
    /// Rejected keys and the revision at which they were rejected, so that each bad value
    /// is logged and counted once, not on every re-list.
    pub(super) rejected: BTreeMap<Vec<u8>, i64>,
    /// How many valid entries claim each server name, kept up to date on every change,
    /// and how many names more than one claims: the set is built without a conflict
    /// check (as cheaply as before) while there is none.
    pub(super) names: BTreeMap<String, u32>,
    pub(super) claimed_twice: usize,
    /// Server names two entries claim now, so each conflict is counted once.
    pub(super) conflicts: BTreeSet<String>,
    /// The published set is exactly the valid entries' backends (no name claimed twice
    /// when it was published): a watch response then changes it in place, by the keys
    /// it touched, instead of building and comparing the whole set again.
    pub(super) in_step: bool,
    pub(super) reject_log: RejectLog,
}

/// Lines logged about rejected keys in the current window.
#[derive(Default)]
pub(super) struct RejectLog {
    pub(super) window_start: Option<Instant>,
    pub(super) logged: u32,
    pub(super) suppressed: u64,
}

/// At most this many "skipping invalid registration" lines per service per window.
pub(super) const REJECT_LOG_BURST: u32 = 10;
pub(super) const REJECT_LOG_WINDOW: Duration = Duration::from_secs(60);
/// A rejected key is logged cut to this many characters.
pub(super) const REJECT_LOG_KEY_CHARS: usize = 200;

impl Entries {
    pub(super) fn insert_valid(&mut self, key: Vec<u8>, backend: Backend, checked: bool) {
        self.claim(backend.server_name());
        if let Some((old, _)) = self.valid.insert(key, (backend, checked)) {
            self.release(&old.server_name());
        }
    }

    pub(super) fn remove_valid(&mut self, key: &[u8]) {
        if let Some((old, _)) = self.valid.remove(key) {
            self.release(&old.server_name());
        }
    }

    /// Replaces every valid entry (a list).
    pub(super) fn replace_valid(&mut self, valid: BTreeMap<Vec<u8>, (Backend, bool)>) {
        self.valid = BTreeMap::new();
        self.names.clear();
        self.claimed_twice = 0;
        for (key, (backend, checked)) in valid {
            self.insert_valid(key, backend, checked);
        }
    }

    /// Publishes the whole set (after a list, or while names conflict).
    pub(super) fn publish_all(
        &mut self,
        out: &Publisher,
        service: &ServiceName,
        counters: &Counters,
        revision: i64,
    ) {
        let set = self.set(service, counters);
        publish_at(out, set, true, Origin::Etcd, Some(revision));
        self.in_step = self.claimed_twice == 0 && self.conflicts.is_empty();
    }

    /// Publishes what a watch response changed: `touched` holds each key it touched
    /// with the backend the key had before (the published set is in step). O(keys
    /// touched × log n): churn on a big set costs what changes, not the set's size.
    pub(super) fn publish_touched(
        &mut self,
        out: &Publisher,
        touched: BTreeMap<Vec<u8>, Option<Backend>>,
        service: &ServiceName,
        counters: &Counters,
        revision: i64,
    ) {
        if !(self.in_step && self.claimed_twice == 0 && self.conflicts.is_empty()) {
            self.publish_all(out, service, counters, revision);
            return;
        }
        let mut published = false;
        out.send_if_modified(|cur| {
            let Some(d) = cur else {
                return false;
            };
            published = true;
            // A newer revision wakes the reconciler even when the set is the same, so
            // that it can say it has applied it (the drain barrier).
            let mut changed = !d.fresh || d.origin != Origin::Etcd || d.revision != Some(revision);
            d.fresh = true;
            d.origin = Origin::Etcd;
            d.revision = Some(revision);
            // Every old backend is one key's only (no name was claimed twice), so removing
            // the old ones and then adding the new ones gives exactly the valid entries.
            for old in touched.values().flatten() {
                changed |= d.backends.remove(old);
            }
            for key in touched.keys() {
                if let Some((new, _)) = self.valid.get(key) {
                    changed |= d.backends.insert(new.clone());
                }
            }
            changed
        });
        if !published {
            self.publish_all(out, service, counters, revision);
        }
    }

    fn claim(&mut self, name: String) {
        let n = self.names.entry(name).or_default();
        *n += 1;
        if *n == 2 {
            self.claimed_twice += 1;
        }
    }

    fn release(&mut self, name: &str) {
        if let Some(n) = self.names.get_mut(name) {
            *n -= 1;
            match *n {
                0 => {
                    self.names.remove(name);
                }
                1 => self.claimed_twice -= 1,
                _ => {}
            }
        }
    }

    /// The set to publish. When two entries claim one server name, an identity-checked
    /// one wins over a foreign-shaped one (else the first key in order); each new
    /// conflict is counted as a rejection (`identity_conflict`) and logged once.
    pub(super) fn set(&mut self, service: &ServiceName, counters: &Counters) -> BackendSet {
        if self.claimed_twice == 0 && self.conflicts.is_empty() {
            return self.valid.values().map(|(b, _)| b.clone()).collect();
        }
        let mut by_name: BTreeMap<String, (&Backend, bool)> = BTreeMap::new();
        let mut conflicts = BTreeSet::new();
        for (backend, checked) in self.valid.values() {
            let name = backend.server_name();
            match by_name.get_mut(&name) {
                None => {
                    by_name.insert(name, (backend, *checked));
                }
                Some(held) => {
                    if *checked && !held.1 {
                        *held = (backend, true);
                    }
                    conflicts.insert(name);
                }
            }
        }
        for name in conflicts.difference(&self.conflicts) {
            counters.reject("identity_conflict");
            tracing::warn!(%service, server = ?name,
                "two registrations claim one server name; the identity-checked one is used");
        }
        let set = by_name.into_values().map(|(b, _)| b.clone()).collect();
        self.conflicts = conflicts;
        set
    }
}
