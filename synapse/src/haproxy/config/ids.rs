//! Stable server ids (`id N` on each server line), kept per backend across renders
//! and restarts.

use std::collections::{BTreeMap, BTreeSet};

/// Stable server ids per backend: a server keeps its id for as long as it exists; a new
/// server gets the lowest free id. Seeded from the file on disk at start-up, so a
/// restarted synapse renders the same ids (and the same bytes) as before.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerIds {
    by_backend: BTreeMap<String, BTreeMap<String, u32>>,
}

impl ServerIds {
    /// Reads `server <name> <addr> id <n>` lines of an existing haproxy.cfg.
    pub fn from_config(text: &str) -> Self {
        let mut ids = Self::default();
        let mut backend: Option<String> = None;
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let Some(first) = words.next() else { continue };
            if !line.starts_with(char::is_whitespace) {
                backend = (first == "backend")
                    .then(|| words.next().map(str::to_owned))
                    .flatten();
                continue;
            }
            let (Some(b), "server") = (&backend, first) else {
                continue;
            };
            let Some(name) = words.next() else { continue };
            let rest: Vec<&str> = words.collect();
            if let Some(id) = rest
                .windows(2)
                .find(|w| w[0] == "id")
                .and_then(|w| w[1].parse::<u32>().ok())
            {
                ids.by_backend
                    .entry(b.clone())
                    .or_default()
                    .insert(name.to_owned(), id);
            }
        }
        ids
    }

    /// Gives every server of every backend an id, keeping existing ones and forgetting
    /// servers (and backends) that are gone.
    pub fn assign(&mut self, wanted: &BTreeMap<String, BTreeSet<String>>, max_id: u32) {
        self.assign_reserving(wanted, max_id, &BTreeMap::new());
    }

    /// Like [`ServerIds::assign`], but a new server never gets an id in `reserved` (per
    /// backend): the ids of servers HAProxy still has although they are no longer wanted
    /// (in maintenance, deleted once their connections end). HAProxy refuses `add server`
    /// with an id in use, which would turn a runtime change into a reload.
    pub fn assign_reserving(
        &mut self,
        wanted: &BTreeMap<String, BTreeSet<String>>,
        max_id: u32,
        reserved: &BTreeMap<String, BTreeSet<u32>>,
    ) {
        self.by_backend.retain(|b, _| wanted.contains_key(b));
        let none = BTreeSet::new();
        for (backend, servers) in wanted {
            let reserved = reserved.get(backend).unwrap_or(&none);
            self.assign_backend(backend, servers, max_id, reserved);
        }
    }

    /// [`ServerIds::assign_reserving`] for one backend, leaving the others alone: what
    /// a change to one service needs.
    pub fn assign_backend(
        &mut self,
        backend: &str,
        servers: &BTreeSet<String>,
        max_id: u32,
        reserved: &BTreeSet<u32>,
    ) {
        let ids = self.by_backend.entry(backend.to_owned()).or_default();
        ids.retain(|s, id| servers.contains(s) && *id >= 1 && *id <= max_id);
        // Two servers restored with one id (a hand-edited file): keep the first.
        let mut used = BTreeSet::new();
        ids.retain(|_, id| used.insert(*id));
        used.extend(reserved);
        let mut next = 1u32;
        for s in servers {
            if ids.contains_key(s) {
                continue;
            }
            while used.contains(&next) {
                next += 1;
            }
            // Past max_id HAProxy would refuse the id; render the server without one.
            if next > max_id {
                break;
            }
            ids.insert(s.clone(), next);
            used.insert(next);
        }
    }

    pub fn get(&self, backend: &str, server: &str) -> Option<u32> {
        self.by_backend.get(backend)?.get(server).copied()
    }

    /// Gives `server` of `backend` the id `id` unless it has one: a server HAProxy still
    /// runs under that id (e.g. removed and registered again before its deletion
    /// finished) keeps it, rather than getting a new one HAProxy would have to reload for.
    pub fn adopt(&mut self, backend: &str, server: &str, id: u32) {
        self.by_backend
            .entry(backend.to_owned())
            .or_default()
            .entry(server.to_owned())
            .or_insert(id);
    }

    /// Every id of one backend, by server name.
    pub fn backend(&self, backend: &str) -> Option<&BTreeMap<String, u32>> {
        self.by_backend.get(backend)
    }
}
