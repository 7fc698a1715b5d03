//! Server changes through HAProxy's runtime API, without reloads: adds, removals,
//! weights and options in place, `slots` on a static balance algorithm, a new server up
//! at once, and drift undone by the periodic full check while haproxy.cfg follows.

use std::collections::BTreeSet;

use integration_tests::{eventually, free_port, Backend, InProcessSynapse as Synapse};

use crate::world::{generation, routes_to, three_backends, World};
use crate::TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_changes_apply_through_the_runtime_api_without_reloads() {
    let w = World::start("runtime").await;
    let port = free_port();
    let (a, b, c) = three_backends().await;
    w.register("host-a", &a).await;
    w.register("host-b", &b).await;
    let (synapse, haproxy) = w.start_with_master_socket(port).await;
    routes_to(port, &["a", "b"]).await;
    let before = generation(haproxy.master()).await;
    let reloads_before = synapse.get(|c| &c.reloads);
    // (Before HAProxy started, its socket failed.)
    let failures_before = synapse.get(|c| &c.runtime_failures);

    // Add.
    w.register("host-c", &c).await;
    routes_to(port, &["a", "b", "c"]).await;
    // Remove.
    w.deregister("host-a").await;
    routes_to(port, &["b", "c"]).await;
    // Weight: 0 takes b out of rotation, 3 brings it back at weight 3.
    w.register_with("host-b", &b, Some(0), None).await;
    routes_to(port, &["c"]).await;
    w.register_with("host-b", &b, Some(3), None).await;
    routes_to(port, &["b", "c"]).await;
    let b_server = format!("host-b_127.0.0.1:{}", b.port());
    let state = haproxy.show_servers_state("web").await.expect("state");
    let b_state = state.iter().find(|s| s.name == b_server).expect("b runs");
    assert_eq!(b_state.weight, 3);
    // Health, as HAProxy's checks see it (on the server added at runtime, c)...
    c.set_healthy(false);
    routes_to(port, &["b"]).await;
    c.set_healthy(true);
    routes_to(port, &["b", "c"]).await;
    // ... and as nerve reports it (the registration goes and comes back).
    w.deregister("host-c").await;
    routes_to(port, &["b"]).await;
    w.register("host-c", &c).await;
    routes_to(port, &["b", "c"]).await;
    // The registry's `disabled`: maintenance, and back.
    w.register_with("host-c", &c, None, Some("disabled")).await;
    routes_to(port, &["b"]).await;
    w.register("host-c", &c).await;
    routes_to(port, &["b", "c"]).await;

    assert_eq!(
        generation(haproxy.master()).await,
        before,
        "HAProxy reloaded (reload count, workers)"
    );
    assert_eq!(synapse.get(|c| &c.reloads), reloads_before);
    assert!(synapse.get(|c| &c.runtime_commands) >= 10);
    assert_eq!(synapse.get(|c| &c.runtime_failures), failures_before);

    // The file says what runs: the deleted server is gone once its idle connections
    // are, and a reload (or restart) of that file routes the same.
    eventually(TIMEOUT, || async {
        let running: BTreeSet<String> = haproxy
            .show_servers_state("web")
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|s| s.name)
            .collect();
        let lines = w.server_lines();
        let in_file: BTreeSet<String> = lines
            .iter()
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .collect();
        if running == in_file && in_file.len() == 2 {
            Ok(())
        } else {
            Err(format!("running {running:?}, file {lines:?}"))
        }
    })
    .await;
    assert!(
        w.server_lines()
            .iter()
            .any(|l| l.starts_with(&format!("server {b_server} ")) && l.ends_with(" weight 3")),
        "{:?}",
        w.server_lines()
    );
    haproxy.reload().await.expect("reload");
    routes_to(port, &["b", "c"]).await;
    let state = haproxy.show_servers_state("web").await.expect("state");
    assert_eq!(
        state.iter().find(|s| s.name == b_server).map(|s| s.weight),
        Some(3)
    );
    assert!(synapse.is_running());
    synapse.stop().await;
}

/// `dynamic_servers: slots` on a backend whose balance algorithm refuses dynamic servers
/// (`balance source`): servers fill and leave pre-allocated `slot<N>` servers through
/// `set server addr` and `state`, without reloads; filling the last free slot grows the
/// backend by a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_take_servers_without_reloads_on_a_static_algorithm() {
    let w = World::start("slots").await;
    let port = free_port();
    let mut pool = Vec::new();
    for id in ["a", "b", "c", "d"] {
        pool.push(Backend::start(id).await);
    }
    let [a, b, c, d] = [&pool[0], &pool[1], &pool[2], &pool[3]];
    w.register("host-a", a).await;
    let text = w
        .config(
            port,
            &format!(
                r#", "reload_method": "master_socket", "master_socket_path": "{}",
                   "dynamic_servers": "slots", "server_slots": 4"#,
                w.path("master.sock").display()
            ),
        )
        .replace(r#""balance roundrobin""#, r#""balance source""#);
    let synapse = Synapse::start(&text);
    let haproxy = w.start_haproxy().await;
    eventually(TIMEOUT, || async { synapse.get(|c| &c.reloads) >= 1 }).await;
    routes_to(port, &["a"]).await;
    let before = generation(haproxy.master()).await;
    // (slot, port, in maintenance) as the file says and as HAProxy runs.
    let in_file = || -> Vec<(String, u16, bool)> {
        w.server_lines()
            .iter()
            .map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let port = f[2].rsplit(':').next().and_then(|p| p.parse().ok());
                (f[1].to_owned(), port.unwrap_or(0), l.ends_with(" disabled"))
            })
            .collect()
    };
    let running = || async {
        let mut s: Vec<(String, u16, bool)> = haproxy
            .show_servers_state("web")
            .await
            .expect("show servers state")
            .into_iter()
            .map(|s| (s.name, s.port, s.admin_state.is_maint()))
            .collect();
        s.sort();
        s
    };
    let settled = |want: Vec<(&'static str, u16, bool)>| {
        let want: Vec<(String, u16, bool)> = want
            .into_iter()
            .map(|(n, p, m)| (n.to_owned(), p, m))
            .collect();
        let (in_file, running) = (&in_file, &running);
        eventually(TIMEOUT, move || {
            let want = want.clone();
            async move {
                let (file, run) = (in_file(), running().await);
                if file == want && run == want {
                    Ok(())
                } else {
                    Err(format!("file {file:?}, running {run:?}, want {want:?}"))
                }
            }
        })
    };
    // `balance source` sends one client to one server: take a out to see b.
    w.register("host-b", b).await;
    w.deregister("host-a").await;
    routes_to(port, &["b"]).await;
    // a's slot is free again (maintenance, parked at 127.0.0.1:1); c takes it.
    w.register("host-c", c).await;
    w.deregister("host-b").await;
    routes_to(port, &["c"]).await;
    settled(vec![
        ("slot1", c.port(), false),
        ("slot2", 1, true),
        ("slot3", 1, true),
        ("slot4", 1, true),
    ])
    .await;
    assert_eq!(
        generation(haproxy.master()).await,
        before,
        "HAProxy reloaded"
    );
    // Filling the last free slot: served at once, and the backend grows by a reload.
    for (i, backend) in [a, b, d].into_iter().enumerate() {
        w.register(&format!("host-{}", ["a", "b", "d"][i]), backend)
            .await;
    }
    eventually(TIMEOUT, || async {
        let run = running().await;
        let ready = run.iter().filter(|(_, _, maint)| !maint).count();
        (run.len() == 8 && ready == 4)
            .then_some(())
            .ok_or(format!("{run:?}"))
    })
    .await;
    assert!(generation(haproxy.master()).await.0 > before.0);
    synapse.stop().await;
}

/// A server nerve registers (nerve has health-checked it) takes traffic as soon as it is
/// added, without waiting for HAProxy's first checks, and HAProxy's own checks still
/// run and take it out. `rise 5 inter 1s`: a server that started down would stay down
/// for seconds, which polling `show servers state` from the put on would see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_server_takes_traffic_at_once_and_haproxy_checks_still_take_it_down() {
    use integration_tests::OpState;
    let w = World::start("up-at-once").await;
    let port = free_port();
    let (a, c) = (Backend::start("a").await, Backend::start("c").await);
    w.register("host-a", &a).await;
    let (synapse, haproxy) = w.start_with_master_socket(port).await;
    routes_to(port, &["a"]).await;
    let before = generation(haproxy.master()).await;

    let rounds = [
        ("host-c", "rise 5 inter 1s"),
        ("host-d", "rise 5 inter 1s slowstart 2s"),
    ];
    for (round, options) in rounds {
        let c_server = format!("{round}_127.0.0.1:{}", c.port());
        w.register_with(round, &c, None, Some(options)).await;
        // Every state HAProxy reports for c from the put until c is in rotation.
        let seen = std::sync::Mutex::new(Vec::new());
        eventually(TIMEOUT, || async {
            let state = haproxy
                .show_servers_state("web")
                .await
                .map_err(|e| e.to_string())?;
            if let Some(s) = state.iter().find(|s| s.name == c_server) {
                seen.lock()
                    .expect("lock")
                    .push((s.op_state, s.admin_state.is_maint()));
                if !s.admin_state.is_maint() {
                    return Ok(());
                }
            }
            Err(format!("{round}: c not ready yet"))
        })
        .await;
        let seen = seen.into_inner().expect("lock");
        assert!(
            seen.iter()
                .all(|(op, maint)| *maint || matches!(op, OpState::Running | OpState::Starting)),
            "{round}: c was down out of maintenance (waited for checks): {seen:?}"
        );
        // The first requests after the put reach c (slowstart: eventually, as it ramps).
        routes_to(port, &["a", "c"]).await;
        // HAProxy's check (fall 1) takes it out; back in once healthy again.
        c.set_healthy(false);
        routes_to(port, &["a"]).await;
        c.set_healthy(true);
        routes_to(port, &["a", "c"]).await;
        w.deregister(round).await;
        routes_to(port, &["a"]).await;
    }
    assert_eq!(
        generation(haproxy.master()).await,
        before,
        "HAProxy reloaded (reload count, workers)"
    );
    synapse.stop().await;
}

/// Model first, text last: a registry change goes out by the runtime API for its own
/// backend, and haproxy.cfg follows (written from the model shortly after, and accepted
/// by `haproxy -c`); a hand-made change to a server the registry did not touch is undone
/// by the periodic full check, without any registry change (desired-state reconcile);
/// and none of it reloads HAProxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_undone_without_a_registry_change_and_the_file_follows_the_runtime_api() {
    let w = World::start("drift").await;
    let port = free_port();
    let (a, b, c) = three_backends().await;
    w.register("host-a", &a).await;
    w.register("host-b", &b).await;
    let (synapse, haproxy) = w.start_with_master_socket(port).await;
    routes_to(port, &["a", "b"]).await;
    let before = generation(haproxy.master()).await;
    let reloads_before = synapse.get(|c| &c.reloads);

    // Drift: b put in maintenance by hand, behind synapse's back. Twice: the second time
    // after a periodic check has run, so the runtime-only path (which follows a full
    // apply in sync, e.g. that check) is the one that must undo it.
    let b_server = format!("host-b_127.0.0.1:{}", b.port());
    for _ in 0..2 {
        let answer = haproxy
            .runtime()
            .command(&format!("set server web/{b_server} state maint"))
            .await
            .expect("set server");
        assert!(answer.trim().is_empty(), "{answer}");
        // Nothing changes in the registry: the periodic check alone brings b back.
        eventually(TIMEOUT, || async {
            let state = haproxy
                .show_servers_state("web")
                .await
                .map_err(|e| e.to_string())?;
            match state.iter().find(|s| s.name == b_server) {
                Some(s) if !s.admin_state.is_maint() => Ok(()),
                other => Err(format!("b: {other:?}")),
            }
        })
        .await;
        routes_to(port, &["a", "b"]).await;
    }

    // A registry change: routed by the runtime API, then written to the file.
    w.register("host-c", &c).await;
    routes_to(port, &["a", "b", "c"]).await;
    let c_server = format!("host-c_127.0.0.1:{}", c.port());
    eventually(TIMEOUT, || async {
        let lines = w.server_lines();
        if lines.len() == 3 && lines.iter().any(|l| l.contains(&c_server)) {
            Ok(())
        } else {
            Err(format!("haproxy.cfg servers: {lines:?}"))
        }
    })
    .await;
    integration_tests::haproxy::check_config(&w.path("haproxy.cfg")).expect("haproxy -c");

    assert_eq!(
        generation(haproxy.master()).await,
        before,
        "HAProxy reloaded"
    );
    assert_eq!(synapse.get(|c| &c.reloads), reloads_before);
    synapse.stop().await;
}
