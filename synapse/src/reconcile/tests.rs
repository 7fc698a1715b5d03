//! Unit tests of `reconcile.rs`, kept apart so that the module reads in one go.

use super::*;

fn reconciler(extra: &str) -> (Reconciler, Arc<Notify>) {
    let text = format!(
        r#"{{"services": {{"web": {{"discovery": {{"method": "base"}}}}}},
                "file_output": {{"output_directory": "/tmp/x"}}{extra}}}"#
    );
    let config = Arc::new(Config::parse(&text, None).unwrap());
    let changed = Arc::new(Notify::new());
    let r = Reconciler::new(
        config,
        Vec::new(),
        changed.clone(),
        None,
        None,
        Arc::default(),
    );
    (r, changed)
}

/// Calls `debounce` with changes arriving every `every` for `for_`; how long it took.
async fn debounce_with(
    r: &mut Reconciler,
    changed: &Arc<Notify>,
    every: Duration,
    for_: Duration,
) -> Duration {
    let changed = changed.clone();
    let stream = tokio::spawn(async move {
        let end = Instant::now() + for_;
        while Instant::now() < end {
            sleep(every).await;
            changed.notify_one();
        }
    });
    let start = Instant::now();
    assert!(r.debounce(&CancellationToken::new()).await);
    stream.abort();
    start.elapsed()
}

#[tokio::test(start_paused = true)]
async fn a_change_after_quiet_is_applied_at_once_and_a_burst_coalesces() {
    let (mut r, changed) = reconciler("");
    let none = Duration::ZERO;
    let ms = Duration::from_millis;
    // The first change: at once.
    assert_eq!(debounce_with(&mut r, &changed, ms(1000), none).await, none);
    // The next within `debounce` (0.1 s): part of a burst, waits for 0.1 s of quiet.
    sleep(ms(30)).await;
    assert_eq!(
        debounce_with(&mut r, &changed, ms(1000), none).await,
        ms(100)
    );
    // An apply ending now starts a window too.
    r.busy_until = Some(Instant::now());
    sleep(ms(60)).await;
    assert_eq!(
        debounce_with(&mut r, &changed, ms(1000), none).await,
        ms(100)
    );
    // After a quiet period: at once again.
    sleep(ms(100)).await;
    assert_eq!(debounce_with(&mut r, &changed, ms(1000), none).await, none);
    // A stream of changes every 50 ms is cut at `debounce_max_wait` (1 s).
    assert_eq!(
        debounce_with(&mut r, &changed, ms(50), Duration::from_secs(5)).await,
        Duration::from_secs(1)
    );
}

/// The revisions an apply reports: only sets that are what discovery found.
#[tokio::test]
async fn only_sets_as_discovered_report_their_revision() {
    use crate::backends::tests_support::backend;
    use crate::backends::Origin;
    let config = Arc::new(
        Config::parse(
            r#"{"services": {"web": {"discovery": {"method": "etcd", "path": "/svc/web"}}},
                    "file_output": {"output_directory": "/tmp/x"}}"#,
            None,
        )
        .unwrap(),
    );
    let web = ServiceName::new("web").unwrap();
    let (tx, rx) = watch::channel(None);
    let (applied_tx, applied_rx) = watch::channel(BTreeMap::new());
    let mut r = Reconciler::new(
        config,
        vec![(web.clone(), rx)],
        Arc::new(Notify::new()),
        None,
        None,
        Arc::default(),
    )
    .with_applied(Some(AppliedRevisions::from_sender(applied_tx)));
    let found = |hosts: &[&str], revision| Discovered {
        backends: hosts.iter().map(|h| backend("a", h, 80)).collect(),
        fresh: true,
        origin: Origin::Etcd,
        revision: Some(revision),
    };
    // (found, its revision, the revision reported after the apply). At 9 discovery
    // is empty: `use_previous_backends` keeps 10.0.0.1, so the deletion at 9 is not
    // what the outputs run.
    let steps: [(&[&str], i64, i64); 4] = [
        (&["10.0.0.1", "10.0.0.2"], 5, 5),
        (&["10.0.0.1"], 7, 7),
        (&[], 9, 7),
        (&["10.0.0.3"], 11, 11),
    ];
    for (hosts, revision, reported) in steps {
        tx.send_replace(Some(found(hosts, revision)));
        assert!(r.resolve_changed());
        r.apply().await.unwrap();
        assert_eq!(
            applied_rx.borrow().get(&web),
            Some(&reported),
            "after revision {revision}"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn trailing_mode_always_waits_for_quiet() {
    let (mut r, changed) = reconciler(r#", "debounce_mode": "trailing", "debounce": 0.2"#);
    let d = debounce_with(&mut r, &changed, Duration::from_secs(1), Duration::ZERO).await;
    assert_eq!(d, Duration::from_millis(200));
}
