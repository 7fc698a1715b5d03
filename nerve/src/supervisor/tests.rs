//! The supervisor's unit tests: reloads, the desired set and the heartbeat, with
//! scripted checks.

use super::*;
use crate::config::{parse, Overrides};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

fn config(services: &str) -> Config {
    let text = format!(r#"{{"instance_id":"i1","services":{{{services}}}}}"#);
    parse(&text, &Overrides::default()).unwrap_or_else(|e| panic!("{e}"))
}

struct Running {
    desired: watch::Receiver<Desired>,
    reload: mpsc::UnboundedSender<Config>,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn start(config: Config) -> Running {
    let (tx, desired) = watch::channel(Desired::new());
    let (reload, reloads) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let status = StatusHandle::new("i1".into(), Arc::new(AtomicBool::new(false)));
    let supervisor = Supervisor::new(config, tx, status, Metrics::default(), cancel.clone());
    let task = tokio::spawn(supervisor.run(reloads));
    Running {
        desired,
        reload,
        cancel,
        task,
    }
}

async fn wait_for(
    desired: &mut watch::Receiver<Desired>,
    want: impl Fn(&Desired) -> bool,
) -> Desired {
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let d = desired.borrow_and_update().clone();
            if want(&d) {
                return d;
            }
            desired.changed().await.unwrap();
        }
    })
    .await
    .expect("desired set never matched")
}

fn ports(d: &Desired) -> Vec<(String, u16)> {
    d.iter()
        .map(|(n, e)| (n.to_string(), e.registration.port.get()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn reload_adds_removes_and_replaces_make_before_break() {
    let noop = r#""checks":[{"type":"noop"}]"#;
    let mut r = start(config(&format!(
        r#""a":{{"host":"127.0.0.1","port":1,{noop}}},"b":{{"host":"127.0.0.1","port":2,{noop}}}"#
    )));
    wait_for(&mut r.desired, |d| d.len() == 2).await;

    // b removed, c added, a changed to a check that never passes: `a` keeps its old
    // registration until the replacement settles (down after fall=2 failures).
    let failing = r#""checks":[{"type":"tcp","port":1,"timeout":0.05,"fall":2}]"#;
    r.reload
        .send(config(&format!(
            r#""a":{{"host":"127.0.0.1","port":10,{failing}}},"c":{{"host":"127.0.0.1","port":3,{noop}}}"#
        )))
        .unwrap();
    let d = wait_for(&mut r.desired, |d| {
        !d.contains_key(&ServiceName::new("b").unwrap())
    })
    .await;
    assert!(ports(&d).contains(&("a".into(), 1)), "{d:?}");
    // The old `a` is never dropped before the replacement settles, and then `a` goes
    // (the new config is down); `c` comes up.
    let d = wait_for(&mut r.desired, |d| {
        !d.contains_key(&ServiceName::new("a").unwrap())
            && d.contains_key(&ServiceName::new("c").unwrap())
    })
    .await;
    assert_eq!(ports(&d), [("c".to_owned(), 3)]);

    r.cancel.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn changed_service_swaps_in_one_step() {
    let noop = r#""checks":[{"type":"noop"}]"#;
    let mut r = start(config(&format!(
        r#""a":{{"host":"127.0.0.1","port":1,{noop}}}"#
    )));
    wait_for(&mut r.desired, |d| d.len() == 1).await;
    r.reload
        .send(config(&format!(
            r#""a":{{"host":"127.0.0.1","port":2,{noop}}}"#
        )))
        .unwrap();
    // Every published set holds `a`, first with port 1, then with port 2.
    let mut seen = Vec::new();
    loop {
        r.desired.changed().await.unwrap();
        let d = r.desired.borrow_and_update().clone();
        seen.push(ports(&d));
        if ports(&d) == [("a".to_owned(), 2)] {
            break;
        }
    }
    assert!(seen.iter().all(|p| p.len() == 1), "{seen:?}");
    r.cancel.cancel();
    r.task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn unchanged_services_keep_their_task() {
    let noop = r#""checks":[{"type":"noop"}]"#;
    let cfg = config(&format!(r#""a":{{"host":"127.0.0.1","port":1,{noop}}}"#));
    let (tx, mut desired) = watch::channel(Desired::new());
    let (reload, reloads) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let status = StatusHandle::new("i1".into(), Arc::new(AtomicBool::new(false)));
    let mut status_rx = status.subscribe();
    let supervisor = Supervisor::new(cfg.clone(), tx, status, Metrics::default(), cancel.clone());
    let task = tokio::spawn(supervisor.run(reloads));
    wait_for(&mut desired, |d| d.len() == 1).await;
    reload.send(cfg).unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    // No replacement was started, and the desired set never changed.
    assert!(!desired.has_changed().unwrap());
    let status = status_rx.borrow_and_update().clone();
    assert!(!status.services["a"].replacing);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn heartbeat_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let heartbeat = dir.path().join("hb");
    let mut cfg = config("");
    cfg.heartbeat_path = Some(heartbeat.clone());
    let r = start(cfg);
    tokio::time::timeout(Duration::from_secs(30), async {
        while !heartbeat.exists() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
    .expect("heartbeat never written");
    r.cancel.cancel();
    r.task.await.unwrap();
}
