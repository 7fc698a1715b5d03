//! The etcd watcher: an explicit list-then-watch state machine (kube-runtime's watcher).
//!
//! ```text
//!            ┌──────────── compacted / resync due / revision went back ─────────────┐
//!            ▼                                                                       │
//!   List ──(paginated Get at one revision R; publish the complete set)──► Watch{R+1} │
//!            ▲                                                              │        │
//!            │ error (backoff)                                              ▼        │
//!            └──────────────────────────────────────── Watching{stream, last rev} ──┘
//!                                     stream error / silence / cancel (backoff) ──► Watch{last+1}
//! ```
//!
//! - Only complete sets are published: the first after the whole first list.
//! - The revision to resume from is the last *event's* revision (or the list's), never a
//!   progress notification's: etcd 3.4.23 can send those out of step with events (etcd
//!   #15220), so they only serve as proof that the stream is alive.
//! - A `request_progress` every `progress_interval` and an idle timeout of three of them
//!   catch a silent stream; `require_leader` makes an isolated member cancel the stream.
//! - While etcd is away the last published set stays (marked stale), and the watcher
//!   retries with backoff forever: synapse never exits because etcd is unreachable.

mod entries;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::error::error_chain;
use common::etcd::{ConnectError, EtcdSettings};
use common::{Backoff, ParsedKey, Registration, RegistrationError, ServiceName};
use etcd_client::{Client, EventType, GetOptions, KeyValue, WatchOptions, WatchStream};
use tokio::time::{interval, sleep, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use self::entries::{
    Entries, RejectLog, REJECT_LOG_BURST, REJECT_LOG_KEY_CHARS, REJECT_LOG_WINDOW,
};
use super::publisher::{mark_stale, Publisher, Watcher};
use crate::backends::Backend;
use crate::config::EtcdDiscovery;
use crate::counters::Counters;

/// Keys per list page. Small enough that pages of maximal (1.5 MiB) junk values still
/// fit the decode limit; see [`MAX_DECODE_BYTES`].
const PAGE_SIZE: i64 = 64;
/// Decode limit for list pages and watch responses (etcd-client's default is 4 MiB, which
/// three junk values would exceed, making every re-list fail: reliability F21).
const MAX_DECODE_BYTES: usize = 128 * 1024 * 1024;
/// A stream silent for this many progress intervals is taken as dead.
const IDLE_PROGRESS_INTERVALS: u32 = 3;

/// Why a step failed. All are retried with backoff by [`EtcdWatcher::run`].
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot connect to etcd at {endpoints}")]
    Connect {
        endpoints: String,
        #[source]
        source: ConnectError,
    },
    #[error("listing {prefix} on {endpoints} failed")]
    List {
        prefix: String,
        /// The configured endpoints (never with credentials: config rejects those).
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("a list response had no header")]
    NoHeader,
    #[error("starting the watch on {prefix} on {endpoints} failed")]
    WatchStart {
        prefix: String,
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("the watch stream failed")]
    Stream(#[source] etcd_client::Error),
    #[error("the watch stream ended")]
    StreamEnded,
    #[error("the watch stream was silent for {0:?}")]
    Silent(Duration),
    #[error("etcd cancelled the watch: {0}")]
    Cancelled(String),
    #[error("{prefix} holds more than {what}; keeping the last good set")]
    OverCap { prefix: String, what: String },
}

/// Shared etcd clients, one per distinct connection settings.
#[derive(Default)]
pub struct EtcdClients {
    clients: tokio::sync::Mutex<Vec<(EtcdSettings, Client)>>,
}

impl EtcdClients {
    /// A client for these settings, connecting on first use.
    pub async fn get(&self, settings: &EtcdSettings) -> Result<Client, ConnectError> {
        let mut clients = self.clients.lock().await;
        if let Some((_, c)) = clients.iter().find(|(s, _)| s == settings) {
            return Ok(c.clone());
        }
        let opts = settings
            .connect_options()?
            .with_require_leader(true)
            .with_auto_token_refresh(true);
        let client = Client::connect(&settings.endpoints, Some(opts)).await?;
        clients.push((settings.clone(), client.clone()));
        Ok(client)
    }
}

/// Watches one service's etcd directory.
pub struct EtcdWatcher {
    service: ServiceName,
    config: EtcdDiscovery,
    clients: Arc<EtcdClients>,
    counters: Arc<Counters>,
    /// The prefix: the service path plus `/`.
    dir: String,
}

/// The watcher's states.
enum State {
    /// Read the whole prefix.
    List,
    /// Open a watch from this revision.
    Watch { from: i64 },
    /// Follow a watch; `revision` is the last revision whose events were applied.
    Watching {
        stream: Box<WatchStream>,
        revision: i64,
    },
}

impl EtcdWatcher {
    pub fn new(
        service: ServiceName,
        config: EtcdDiscovery,
        clients: Arc<EtcdClients>,
        counters: Arc<Counters>,
    ) -> Self {
        let dir = config.path.dir();
        Self {
            service,
            config,
            clients,
            counters,
            dir,
        }
    }

    fn idle_timeout(&self) -> Duration {
        self.config.progress_interval * IDLE_PROGRESS_INTERVALS
    }

    /// One state transition. On error, also returns the state to retry from.
    async fn step(
        &self,
        state: State,
        entries: &mut Entries,
        out: &Publisher,
        resync_at: &mut Instant,
    ) -> Result<State, (WatchError, State)> {
        match state {
            State::List => {
                let revision = self.list(entries).await.map_err(|e| (e, State::List))?;
                Counters::inc(&self.counters.relists);
                self.counters.services.etcd_listed(&self.service, revision);
                *resync_at = Instant::now() + self.config.resync_interval;
                entries.publish_all(out, &self.service, &self.counters, revision);
                Ok(State::Watch { from: revision + 1 })
            }
            State::Watch { from } => {
                let stream = self
                    .start_watch(from)
                    .await
                    .map_err(|e| (e, State::Watch { from }))?;
                self.counters
                    .services
                    .etcd_watching(&self.service, from - 1);
                Ok(State::Watching {
                    stream: Box::new(stream),
                    revision: from - 1,
                })
            }
            State::Watching { stream, revision } => {
                self.follow(stream, revision, entries, out, *resync_at)
                    .await
            }
        }
    }

    async fn client(&self) -> Result<Client, WatchError> {
        self.clients
            .get(&self.config.settings)
            .await
            .map_err(|source| WatchError::Connect {
                endpoints: self.endpoints(),
                source,
            })
    }

    /// Which cap `keys` and `bytes` exceed, if any.
    fn over_cap(&self, keys: u64, bytes: u64) -> Option<String> {
        if keys > self.config.max_keys {
            Some(format!("{} keys (max_keys)", self.config.max_keys))
        } else if bytes > self.config.max_bytes {
            Some(format!("{} bytes (max_bytes)", self.config.max_bytes))
        } else {
            None
        }
    }

    fn over_cap_error(&self, what: String) -> WatchError {
        Counters::inc(&self.counters.registry_over_cap);
        WatchError::OverCap {
            prefix: self.dir.clone(),
            what,
        }
    }

    /// The configured endpoints, for error messages: `https://a:2379,https://b:2379`.
    fn endpoints(&self) -> String {
        self.config.settings.endpoints.join(",")
    }

    /// Lists the prefix page by page at one revision and replaces `entries`.
    async fn list(&self, entries: &mut Entries) -> Result<i64, WatchError> {
        let client = self.client().await?;
        let mut kv = client
            .kv_client()
            .max_decoding_message_size(MAX_DECODE_BYTES);
        let list_err = |source| WatchError::List {
            prefix: self.dir.clone(),
            endpoints: self.endpoints(),
            source,
        };
        let end = prefix_end(self.dir.as_bytes());
        let mut key = self.dir.as_bytes().to_vec();
        let mut revision = 0;
        // Decoded page by page: raw values (up to etcd's 1.5 MiB each) live for one page,
        // never the whole prefix. Rejected keys keep only their key and revision.
        let mut valid = BTreeMap::new();
        let mut rejected = BTreeMap::new();
        let mut keys = 0usize;
        let mut bytes = 0u64;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(PAGE_SIZE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let mut resp = kv.get(key.clone(), Some(opts)).await.map_err(list_err)?;
            if revision == 0 {
                revision = resp.header().ok_or(WatchError::NoHeader)?.revision();
            }
            let more = resp.more();
            let page = resp.take_kvs();
            let Some(last) = page.last() else { break };
            key = last.key().to_vec();
            key.push(0);
            keys += page.len();
            bytes += page
                .iter()
                .map(|kv| (kv.key().len() + kv.value().len()) as u64)
                .sum::<u64>();
            if let Some(what) = self.over_cap(keys as u64, bytes) {
                // What was decoded stays known, so it is not counted again on the retry.
                entries.rejected.extend(rejected);
                return Err(self.over_cap_error(what));
            }
            for kv in page {
                match self.decode(kv.key(), kv.value()) {
                    Decoded::Valid(b, checked) => {
                        valid.insert(kv.key().to_vec(), (b, checked));
                    }
                    Decoded::Rejected(e) => {
                        // Logged and counted once per (key, revision), across re-lists.
                        if entries.rejected.get(kv.key()) != Some(&kv.mod_revision()) {
                            self.report_rejected(entries, kv.key(), &e);
                        }
                        rejected.insert(kv.key().to_vec(), kv.mod_revision());
                    }
                    Decoded::Ignored => {}
                }
            }
            if !more {
                break;
            }
        }
        // Keys gone since the last list are forgotten.
        entries.rejected = rejected;
        entries.replace_valid(valid);
        tracing::debug!(
            service = %self.service,
            revision,
            keys,
            valid = entries.valid.len(),
            "listed etcd prefix"
        );
        Ok(revision)
    }

    async fn start_watch(&self, from: i64) -> Result<WatchStream, WatchError> {
        let client = self.client().await?;
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from)
            .with_progress_notify();
        let mut watch_client = client
            .watch_client()
            .max_decoding_message_size(MAX_DECODE_BYTES);
        // A watch is a stream, which the client's request timeout does not bound: a
        // channel stuck reconnecting would hang here forever.
        timeout(
            self.config.settings.request_timeout,
            watch_client.watch(self.dir.clone(), Some(opts)),
        )
        .await
        .map_err(|_| WatchError::Silent(self.config.settings.request_timeout))?
        .map_err(|source| WatchError::WatchStart {
            prefix: self.dir.clone(),
            endpoints: self.endpoints(),
            source,
        })
    }

    /// Follows a watch stream until it breaks, is compacted, or a resync is due.
    async fn follow(
        &self,
        mut stream: Box<WatchStream>,
        mut revision: i64,
        entries: &mut Entries,
        out: &Publisher,
        resync_at: Instant,
    ) -> Result<State, (WatchError, State)> {
        let mut progress = interval(self.config.progress_interval);
        progress.set_missed_tick_behavior(MissedTickBehavior::Delay);
        progress.tick().await;
        let idle = self.idle_timeout();
        loop {
            let resume = |revision: i64| State::Watch { from: revision + 1 };
            tokio::select! {
                _ = sleep_until(resync_at) => {
                    tracing::debug!(service = %self.service, "periodic resync: re-listing");
                    return Ok(State::List);
                }
                _ = progress.tick() => {
                    if let Err(e) = stream.request_progress().await {
                        return Err((WatchError::Stream(e), resume(revision)));
                    }
                }
                msg = timeout(idle, stream.message()) => {
                    let resp = match msg {
                        Err(_) => return Err((WatchError::Silent(idle), resume(revision))),
                        Ok(Err(e)) => return Err((WatchError::Stream(e), resume(revision))),
                        Ok(Ok(None)) => return Err((WatchError::StreamEnded, resume(revision))),
                        Ok(Ok(Some(resp))) => resp,
                    };
                    if resp.compact_revision() > 0 {
                        // kube: "we have desynced and need to start over and re-list".
                        tracing::info!(
                            service = %self.service,
                            revision,
                            compact_revision = resp.compact_revision(),
                            "etcd compacted past our revision: re-listing"
                        );
                        return Ok(State::List);
                    }
                    if resp.canceled() {
                        return Err((
                            WatchError::Cancelled(resp.cancel_reason().to_owned()),
                            resume(revision),
                        ));
                    }
                    if let Some(h) = resp.header() {
                        if h.revision() < revision {
                            tracing::warn!(
                                service = %self.service,
                                revision,
                                etcd_revision = h.revision(),
                                "etcd's revision went backwards (restored or replaced?): re-listing"
                            );
                            return Ok(State::List);
                        }
                    }
                    // Any message (created, progress, events) proves the stream live, so
                    // the set is current again: publish it fresh even without events, or a
                    // `multi` resolver would keep preferring a fallback after a reconnect.
                    let mut touched: BTreeMap<Vec<u8>, Option<Backend>> = BTreeMap::new();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        revision = revision.max(kv.mod_revision());
                        if !touched.contains_key(kv.key()) {
                            let before = entries.valid.get(kv.key()).map(|(b, _)| b.clone());
                            touched.insert(kv.key().to_vec(), before);
                        }
                        match ev.event_type() {
                            EventType::Put => self.apply_put(entries, kv),
                            EventType::Delete => {
                                entries.remove_valid(kv.key());
                                entries.rejected.remove(kv.key());
                            }
                        }
                    }
                    let held = (entries.valid.len() + entries.rejected.len()) as u64;
                    if let Some(what) = self.over_cap(held, 0) {
                        // Drop the state: the re-list refuses it too until the prefix
                        // shrinks; the published set stays the last good one.
                        *entries = Entries {
                            rejected: std::mem::take(&mut entries.rejected),
                            ..Entries::default()
                        };
                        return Err((self.over_cap_error(what), State::List));
                    }
                    entries.publish_touched(out, touched, &self.service, &self.counters, revision);
                    self.counters.services.etcd_watching(&self.service, revision);
                }
            }
        }
    }

    fn apply_put(&self, entries: &mut Entries, kv: &KeyValue) {
        match self.decode(kv.key(), kv.value()) {
            Decoded::Valid(b, checked) => {
                entries.rejected.remove(kv.key());
                entries.insert_valid(kv.key().to_vec(), b, checked);
            }
            Decoded::Rejected(e) => {
                entries.remove_valid(kv.key());
                self.note_rejected(entries, kv.key(), kv.mod_revision(), &e);
            }
            Decoded::Ignored => {}
        }
    }

    fn decode(&self, key: &[u8], value: &[u8]) -> Decoded {
        let parsed = match self.config.path.parse_key(key) {
            Ok(k) => k,
            Err(common::KeyError::InvalidUtf8) => {
                return Decoded::Rejected(RegistrationError::InvalidUtf8)
            }
            // The directory key itself (`<path>/`): not a registration.
            Err(_) => return Decoded::Ignored,
        };
        if self.config.strict_keys && !matches!(parsed, ParsedKey::Nerve(_)) {
            return Decoded::Rejected(RegistrationError::ForeignKey);
        }
        match validate(&parsed, value, &self.config.policy) {
            Ok(b) => Decoded::Valid(b, parsed.is_identity_checked()),
            Err(e) => Decoded::Rejected(e),
        }
    }

    fn note_rejected(
        &self,
        entries: &mut Entries,
        key: &[u8],
        mod_revision: i64,
        e: &RegistrationError,
    ) {
        if entries.rejected.insert(key.to_vec(), mod_revision) == Some(mod_revision) {
            return;
        }
        self.report_rejected(entries, key, e);
    }

    /// Counts a rejection, and logs it within [`REJECT_LOG_BURST`] lines per
    /// [`REJECT_LOG_WINDOW`] per service (then one line saying how many went unlogged),
    /// the key escaped and cut at [`REJECT_LOG_KEY_CHARS`] characters.
    fn report_rejected(&self, entries: &mut Entries, key: &[u8], e: &RegistrationError) {
        self.counters.reject(e.reason());
        let now = Instant::now();
        let log = &mut entries.reject_log;
        if log
            .window_start
            .is_none_or(|s| now >= s + REJECT_LOG_WINDOW)
        {
            if log.suppressed > 0 {
                tracing::warn!(service = %self.service, suppressed = log.suppressed,
                    "more invalid registrations were skipped than logged (all are counted)");
            }
            *log = RejectLog {
                window_start: Some(now),
                ..RejectLog::default()
            };
        }
        if log.logged >= REJECT_LOG_BURST {
            log.suppressed += 1;
            return;
        }
        log.logged += 1;
        let text = String::from_utf8_lossy(key);
        let shown: String = text.chars().take(REJECT_LOG_KEY_CHARS).collect();
        // `?` (Debug) escapes the key: a hostile key cannot forge log lines.
        tracing::warn!(
            service = %self.service,
            key = ?shown,
            key_truncated = shown.len() < text.len(),
            reason = e.reason(),
            error = %e,
            "skipping invalid registration"
        );
    }
}

enum Decoded {
    /// A backend, and whether its key vouched for its name.
    Valid(Backend, bool),
    Rejected(RegistrationError),
    Ignored,
}

/// Decodes and checks one registration: the contract, the reader's address policy, and
/// the key/value identity check for keys in nerve's shape.
fn validate(
    key: &ParsedKey,
    value: &[u8],
    policy: &common::AddressPolicy,
) -> Result<Backend, RegistrationError> {
    let reg = Registration::decode(value)?;
    policy.check(&reg.host)?;
    key.check_identity(&reg)?;
    Ok(Backend::from(reg))
}

/// The end of the key range that has `prefix` as a prefix.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Watcher for EtcdWatcher {
    async fn run(self, out: Publisher, cancel: CancellationToken) {
        // Back within 2 s of etcd's return after an outage; jittered (1–2 s at the cap),
        // so a fleet of synapses does not come back in step.
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut entries = Entries::default();
        let mut state = State::List;
        let mut resync_at = Instant::now() + self.config.resync_interval;
        loop {
            let step = tokio::select! {
                biased;
                _ = cancel.cancelled() => return,
                step = self.step(state, &mut entries, &out, &mut resync_at) => step,
            };
            match step {
                Ok(next) => {
                    if matches!(next, State::Watching { .. }) {
                        if backoff.attempts() > 0 {
                            // The end of the trouble the warning announced: one line each.
                            tracing::info!(service = %self.service, attempts = backoff.attempts(), "etcd watch resumed");
                        }
                        backoff.reset();
                    }
                    state = next;
                }
                Err((e, next)) => {
                    Counters::inc(&self.counters.watch_restarts);
                    mark_stale(&out);
                    let delay = backoff.next_delay();
                    let level_warn = backoff.attempts() <= 1 || backoff.attempts() % 10 == 0;
                    let chain = error_chain(&e);
                    self.counters
                        .services
                        .etcd_interrupted(&self.service, &chain);
                    if level_warn {
                        tracing::warn!(service = %self.service, error = %chain, retry_in = ?delay, "etcd watch interrupted; keeping the last known backends");
                    } else {
                        tracing::debug!(service = %self.service, error = %chain, retry_in = ?delay, "etcd watch interrupted");
                    }
                    tokio::select! {
                        biased;
                        _ = cancel.cancelled() => return,
                        _ = sleep(delay) => {}
                    }
                    state = next;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
