//! The etcd watcher's unit tests: key validation, the reject log, name conflicts,
//! staleness.

use super::*;
use crate::backends::{BackendSet, Origin};
use crate::watcher::publisher::publish_at;
use common::ServicePath;

#[test]
fn prefix_end_increments_the_last_byte() {
    assert_eq!(prefix_end(b"/svc/web/"), b"/svc/web0");
    assert_eq!(prefix_end(&[b'a', 0xff]), b"b");
    assert_eq!(prefix_end(&[0xff]), vec![0]);
}

#[test]
fn validate_applies_policy_and_identity() {
    let path = ServicePath::new("/svc/web").unwrap();
    let policy = common::AddressPolicy::default();
    let nerve = path
        .parse_key(b"/svc/web/host-a/web_0000000000000001")
        .unwrap();
    let ok = br#"{"host":"10.0.0.1","port":80,"name":"host-a"}"#;
    assert_eq!(
        validate(&nerve, ok, &policy).unwrap().server_name(),
        "host-a_10.0.0.1:80"
    );
    let other = br#"{"host":"10.0.0.1","port":80,"name":"host-b"}"#;
    assert_eq!(
        validate(&nerve, other, &policy).unwrap_err().reason(),
        "identity_mismatch"
    );
    let foreign = path.parse_key(b"/svc/web/anything").unwrap();
    assert!(validate(&foreign, other, &policy).is_ok());
    let imds = br#"{"host":"169.254.169.254","port":80,"name":"x"}"#;
    assert_eq!(
        validate(&foreign, imds, &policy).unwrap_err().reason(),
        "disallowed_address"
    );
}

use std::io::Write;
use std::sync::Mutex;

/// A log sink for one test.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);
impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Buf {
    fn subscriber(&self) -> impl tracing::Subscriber {
        let writer = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish()
    }

    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

fn test_watcher() -> (EtcdWatcher, Arc<Counters>) {
    let config = crate::config::Config::parse(
        r#"{"services": {"web": {"discovery": {"method": "etcd", "path": "/svc/web"}}},
            "file_output": {"output_directory": "/tmp/x"}}"#,
        None,
    )
    .unwrap();
    let svc = config.services.into_values().next().unwrap();
    let crate::config::DiscoveryConfig::Etcd(discovery) = svc.discovery else {
        panic!()
    };
    let counters = Arc::new(Counters::default());
    let watcher = EtcdWatcher::new(svc.name, discovery, Arc::default(), counters.clone());
    (watcher, counters)
}

/// A hostile writer's flood of bad keys: every one counted, at most
/// `REJECT_LOG_BURST` lines logged per window, each key cut short.
#[test]
fn rejected_key_logs_are_rate_limited_and_truncated() {
    let (watcher, counters) = test_watcher();
    let buf = Buf::default();
    let long = "k".repeat(10_000);
    tracing::subscriber::with_default(buf.subscriber(), || {
        let mut entries = Entries::default();
        for i in 0..100 {
            let key = format!("/svc/web/{long}{i}");
            let Decoded::Rejected(e) = watcher.decode(key.as_bytes(), b"junk") else {
                panic!("accepted")
            };
            watcher.note_rejected(&mut entries, key.as_bytes(), i, &e);
        }
        assert_eq!(entries.reject_log.suppressed, 90);
    });
    let out = buf.text();
    assert_eq!(out.lines().count(), REJECT_LOG_BURST as usize, "{out}");
    assert!(
        out.lines().all(|l| l.len() < REJECT_LOG_KEY_CHARS + 400),
        "a line is not truncated"
    );
    assert_eq!(counters.rejected_total(), 100);
}

/// B24: a rejected entry's key goes to the log Debug-escaped: one physical line, no
/// forged `level=INFO` line; the value is never logged.
#[test]
fn rejected_entries_cannot_forge_log_lines() {
    let (watcher, counters) = test_watcher();
    let buf = Buf::default();
    let subscriber = buf.subscriber();
    let key = b"/svc/web/x\n level=INFO msg=\"all good\"";
    let value = br#"{"host":"10.0.0.1","port":80,"name":"a\n level=INFO msg=\"all good\""}"#;
    tracing::subscriber::with_default(subscriber, || {
        let mut entries = Entries::default();
        let Decoded::Rejected(e) = watcher.decode(key, value) else {
            panic!("accepted")
        };
        watcher.note_rejected(&mut entries, key, 7, &e);
        // The same key at the same revision (a re-list) is not logged or counted again.
        watcher.note_rejected(&mut entries, key, 7, &e);
    });
    let out = buf.text();
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains("invalid_name"), "{out}");
    assert!(!out.contains("\n level=INFO"), "{out}");
    assert_eq!(counters.rejected_total(), 1);
}

#[test]
fn conflicts_are_tracked_per_change_and_resolved_for_the_checked_entry() {
    use crate::backends::tests_support::backend;
    let service = ServiceName::new("web").unwrap();
    let counters = Counters::default();
    let mut entries = Entries::default();
    let foreign = backend("a", "10.0.0.1", 80);
    let mut checked = backend("a", "10.0.0.1", 80);
    checked.weight = common::Weight::new(5);
    entries.insert_valid(b"k1".to_vec(), foreign.clone(), false);
    entries.insert_valid(b"k2".to_vec(), checked.clone(), true);
    entries.insert_valid(b"k3".to_vec(), backend("b", "10.0.0.2", 80), false);
    assert_eq!(entries.claimed_twice, 1);
    let set = entries.set(&service, &counters);
    assert_eq!(set.len(), 2);
    assert!(set.contains(&checked), "{set:?}");
    assert_eq!(counters.rejected().get("identity_conflict"), Some(&1));
    // Published again: not counted again.
    entries.set(&service, &counters);
    assert_eq!(counters.rejected_total(), 1);
    // The checked one goes: the foreign one is used, the conflict is over.
    entries.remove_valid(b"k2");
    assert_eq!(entries.claimed_twice, 0);
    assert!(entries.set(&service, &counters).contains(&foreign));
    assert!(entries.conflicts.is_empty());
    // A put replacing a key's value releases its old name.
    entries.insert_valid(b"k1".to_vec(), backend("c", "10.0.0.3", 80), false);
    assert_eq!(entries.names.len(), 2, "{:?}", entries.names);
}

proptest::proptest! {
    /// A watch response applied in place (by the keys it touched) publishes exactly
    /// what a whole rebuild would: with puts, deletes, renames, a key that moves
    /// between two values within one response, and names claimed twice meanwhile.
    #[test]
    fn a_response_applied_in_place_equals_the_whole_set(
        batches in proptest::collection::vec(
            proptest::collection::vec((0u8..6, proptest::option::of(0u8..5)), 1..6),
            1..12,
        )
    ) {
        use crate::backends::tests_support::backend;
        let service = ServiceName::new("web").unwrap();
        let counters = Counters::default();
        let mut entries = Entries::default();
        let (tx, rx) = tokio::sync::watch::channel(None);
        entries.publish_all(&tx, &service, &counters, 1);
        for batch in batches {
            let mut touched: BTreeMap<Vec<u8>, Option<Backend>> = BTreeMap::new();
            for (key, value) in batch {
                let key = vec![b'k', key];
                if !touched.contains_key(&key) {
                    touched.insert(key.clone(), entries.valid.get(&key).map(|(b, _)| b.clone()));
                }
                match value {
                    Some(v) => entries.insert_valid(
                        key,
                        backend(&format!("s{v}"), "10.0.0.1", 80 + u16::from(v)),
                        false,
                    ),
                    None => entries.remove_valid(&key),
                }
            }
            entries.publish_touched(&tx, touched, &service, &counters, 1);
            let published = rx.borrow().as_ref().map(|d| d.backends.clone());
            proptest::prop_assert_eq!(published, Some(entries.set(&service, &counters)));
        }
    }
}

#[test]
fn mark_stale_keeps_backends() {
    let (tx, rx) = tokio::sync::watch::channel(None);
    mark_stale(&tx);
    assert_eq!(*rx.borrow(), None);
    let set: BackendSet = [crate::backends::tests_support::backend("a", "10.0.0.1", 80)].into();
    publish_at(&tx, set.clone(), true, Origin::Etcd, Some(7));
    mark_stale(&tx);
    assert_eq!(
        *rx.borrow(),
        Some(crate::backends::Discovered {
            backends: set,
            fresh: false,
            origin: Origin::Etcd,
            revision: Some(7),
        })
    );
}
