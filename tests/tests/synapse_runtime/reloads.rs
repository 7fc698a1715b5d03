//! HAProxy's reloads and its process: hitless reloads under load, a reload HAProxy
//! refuses (reported, retried), and managed HAProxy (restarted when killed, stopped on
//! exit).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use integration_tests::{
    eventually, free_port, http_get, keep_alive_loop, loopback, new_connection_loop, Backend,
    InProcessSynapse as Synapse, MasterSocket,
};

use crate::world::{generation, routes_to, World};
use crate::TIMEOUT;

/// 100 registration changes, 20 of which force a reload (a changed server option),
/// under 50 req/s of new connections and 50 req/s on keep-alive connections: no request
/// to a healthy backend fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_changes_with_twenty_reloads_fail_no_request() {
    let w = World::start("load").await;
    let port = free_port();
    let mut pool = Vec::new();
    for i in 0..6 {
        pool.push(Backend::start(format!("b{i}")).await);
    }
    for (i, b) in pool.iter().enumerate().take(3) {
        w.register(&format!("h{i}"), b).await;
    }
    // Reloads by SIGUSR2 to the master from the pid file, confirmed on the master CLI.
    let text = w.config(
        port,
        &format!(
            r#", "reload_method": "signal", "pid_file_path": "{}", "master_socket_path": "{}""#,
            w.path("haproxy.pid").display(),
            w.path("master.sock").display()
        ),
    );
    let synapse = Synapse::start(&text);
    let haproxy = w.start_haproxy().await;
    eventually(TIMEOUT, || async { synapse.get(|c| &c.reloads) >= 1 }).await;
    routes_to(port, &["b0", "b1", "b2"]).await;
    let (reloads_before, _) = generation(haproxy.master()).await;
    let commands_before = synapse.get(|c| &c.runtime_commands);
    let reload_failures_before = synapse.get(|c| &c.reload_failures);

    let stop = Arc::new(AtomicBool::new(false));
    let every = Duration::from_millis(20);
    let (fresh, fresh_task) = new_connection_loop(port, every, 2_000, stop.clone());
    let (kept, kept_task) = keep_alive_loop(port, every, 2_000, stop.clone());

    // Registered: h0..h2 at first; h3..h5 come and go; weights and options change.
    let mut registered: BTreeSet<usize> = (0..3).collect();
    let mut maxconn = 100;
    let mut tick = tokio::time::interval(Duration::from_millis(220));
    for step in 0..100usize {
        tick.tick().await;
        if step % 5 == 0 {
            // A changed server option: only a reload applies it.
            maxconn += 1;
            let opts = format!("maxconn {maxconn}");
            w.register_with("h0", &pool[0], None, Some(&opts)).await;
            continue;
        }
        let i = 3 + step % 3;
        match step % 4 {
            0 | 2 if registered.contains(&i) && registered.len() > 2 => {
                w.deregister(&format!("h{i}")).await;
                registered.remove(&i);
            }
            0 | 2 => {
                w.register(&format!("h{i}"), &pool[i]).await;
                registered.insert(i);
            }
            _ => {
                let weight = 1 + (step % 7) as u16;
                w.register_with("h1", &pool[1], Some(weight), None).await;
            }
        }
    }
    // Settle under load: the last reload done and the routing exact; then stop.
    eventually(TIMEOUT, || async {
        let file = std::fs::read_to_string(w.path("haproxy.cfg")).unwrap_or_default();
        let p = haproxy
            .master()
            .show_proc()
            .await
            .map_err(|e| e.to_string())?;
        let done =
            p.reloads - reloads_before >= 20 && file.contains(&format!(" maxconn {maxconn}"));
        done.then_some(()).ok_or(format!("{p:?}"))
    })
    .await;
    let want: Vec<String> = registered.iter().map(|i| format!("b{i}")).collect();
    let want: Vec<&str> = want.iter().map(String::as_str).collect();
    routes_to(port, &want).await;
    stop.store(true, Ordering::SeqCst);
    let fresh_errors = fresh_task.await.expect("loop");
    let kept_errors = kept_task.await.expect("loop");

    let (reloads_after, _) = generation(haproxy.master()).await;
    let reloads = reloads_after - reloads_before;
    let commands = synapse.get(|c| &c.runtime_commands) - commands_before;
    let (ok_fresh, ok_kept) = (
        fresh.ok.load(Ordering::SeqCst),
        kept.ok.load(Ordering::SeqCst),
    );
    println!(
        "load: {ok_fresh} ok / {} failed (new connections), {ok_kept} ok / {} failed \
         (keep-alive); {reloads} reloads, {commands} runtime commands",
        fresh_errors.len(),
        kept_errors.len()
    );
    assert!(
        fresh_errors.is_empty(),
        "new-connection failures: {fresh_errors:?}"
    );
    assert!(
        kept_errors.is_empty(),
        "keep-alive failures: {kept_errors:?}"
    );
    assert!(
        ok_fresh >= 800 && ok_kept >= 800,
        "{ok_fresh} / {ok_kept} requests"
    );
    assert!(reloads >= 20, "only {reloads} reloads");
    assert!(commands >= 60, "only {commands} runtime commands");
    assert_eq!(synapse.get(|c| &c.reload_failures), reload_failures_before);
    synapse.stop().await;
}

/// Managed mode: synapse starts HAProxy, restarts it when its worker or its master is
/// killed (traffic resumes, synapse keeps running), and stops it on exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_haproxy_is_restarted_when_killed_and_stopped_on_exit() {
    let w = World::start("managed").await;
    let port = free_port();
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    w.register("host-a", &a).await;
    let text = w.config(port, r#", "managed": true, "stop_timeout": 5"#);
    let synapse = Synapse::start(&text);
    let master = MasterSocket::new(w.path("haproxy-master.sock"));
    routes_to(port, &["a"]).await;
    // Runtime changes work on the managed HAProxy too.
    w.register("host-b", &b).await;
    routes_to(port, &["a", "b"]).await;
    let first = master.show_proc().await.expect("show proc");
    assert_eq!(first.reloads, 0, "{first:?}");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(w.path("haproxy-master.sock"))
            .expect("master socket")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "master socket mode {mode:o}");
    for pid in std::iter::once(first.master_pid).chain(first.workers.iter().copied()) {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
        // cargo runs tests with CARGO_* set: none may reach HAProxy (HAPROXY_* are the
        // ones HAProxy sets itself).
        let names: Vec<String> = String::from_utf8_lossy(&environ)
            .split('\0')
            .filter_map(|kv| kv.split_once('=').map(|(k, _)| k.to_owned()))
            .collect();
        assert!(
            names
                .iter()
                .all(|n| common::child_env::is_kept(n) || n.starts_with("HAPROXY_")),
            "HAProxy {pid} inherited more than the allow-list: {names:?}"
        );
        assert!(names.iter().any(|n| n == "PATH"), "PATH kept: {names:?}");
    }

    let kill = |pid: u32, signal| {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("kill");
    };
    // The worker dies: HAProxy 2.6's master exits with it; synapse starts a new one.
    kill(first.workers[0], nix::sys::signal::Signal::SIGKILL);
    eventually(TIMEOUT, || async {
        match master.show_proc().await {
            Ok(p) if p.master_pid != first.master_pid && !p.workers.is_empty() => Ok(p),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    routes_to(port, &["a", "b"]).await;
    // The master dies.
    let second = master.show_proc().await.expect("show proc");
    kill(second.master_pid, nix::sys::signal::Signal::SIGKILL);
    eventually(TIMEOUT, || async {
        match master.show_proc().await {
            Ok(p) if p.master_pid != second.master_pid && !p.workers.is_empty() => Ok(p),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    routes_to(port, &["a", "b"]).await;
    assert!(synapse.is_running(), "synapse exited");
    assert!(synapse.get(|c| &c.haproxy_starts) >= 3);
    assert!(synapse.get(|c| &c.haproxy_exits) >= 2);

    let last = master.show_proc().await.expect("show proc");
    synapse.stop().await;
    // Stopped: the master is gone and the port refuses connections.
    let alive = std::path::Path::new(&format!("/proc/{}", last.master_pid)).exists();
    assert!(!alive, "managed HAProxy {} still runs", last.master_pid);
    assert!(tokio::net::TcpStream::connect(loopback(port))
        .await
        .is_err());
}

/// A reload HAProxy refuses (here: a new frontend's port is taken) is reported, the old
/// worker keeps serving, and synapse retries with backoff until the reload succeeds —
/// the file on disk already being right is not taken for "done".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_is_reported_and_retried_until_it_succeeds() {
    let w = World::start("refused").await;
    let (port, api_port) = (free_port(), free_port());
    let a = Backend::start("a").await;
    w.register("host-a", &a).await;
    // HAProxy runs a config with `web` only, as if written by an earlier synapse.
    std::fs::write(
        w.path("haproxy.cfg"),
        format!(
            "{}frontend web\n    bind 127.0.0.1:{port}\n    default_backend web\n\
             backend web\n    server host-a_127.0.0.1:{p} 127.0.0.1:{p} id 1\n",
            integration_tests::haproxy::preamble(&w.path("stats.sock")),
            p = a.port()
        ),
    )
    .expect("write cfg");
    let haproxy = w.start_haproxy().await;
    routes_to(port, &["a"]).await;
    let taken = std::net::TcpListener::bind(loopback(api_port)).expect("occupy the api port");
    let text = w
        .config(
            port,
            &format!(
                r#", "reload_method": "master_socket", "master_socket_path": "{}""#,
                w.path("master.sock").display()
            ),
        )
        .replace(
            r#""services": {"web": {"#,
            &format!(
                r#""services": {{"api": {{"discovery": {{"method": "etcd", "hosts": ["{}"],
                   "path": "{}/api"}}, "haproxy": {{"port": {api_port}}}}},
                   "web": {{"#,
                w.etcd_addr, w.prefix
            ),
        );
    let synapse = Synapse::start(&text);
    eventually(TIMEOUT, || async {
        let failed = synapse.get(|c| &c.reload_failures);
        (failed >= 2)
            .then_some(())
            .ok_or(format!("{failed} failed reloads"))
    })
    .await;
    // The old worker still serves `web`; synapse is still there; the file HAProxy
    // refused is not left on disk (a restart would fail on it): the last good one is
    // put back between the attempts.
    eventually(TIMEOUT, || async {
        let text = std::fs::read_to_string(w.path("haproxy.cfg")).unwrap_or_default();
        !text.contains("frontend api")
    })
    .await;
    routes_to(port, &["a"]).await;
    let procs = haproxy.master().show_proc().await.expect("show proc");
    assert!(procs.failed_reloads >= 1, "{procs:?}");
    assert!(synapse.is_running());
    assert_eq!(synapse.get(|c| &c.reloads), 0);

    drop(taken);
    eventually(TIMEOUT, || async { synapse.get(|c| &c.reloads) >= 1 }).await;
    let procs = haproxy.master().show_proc().await.expect("show proc");
    assert_eq!(procs.failed_reloads, 0, "{procs:?}");
    routes_to(port, &["a"]).await;
    // The new frontend listens (its backend is empty: 503).
    let r = http_get(loopback(api_port), "/")
        .await
        .expect("api answers");
    assert_eq!(r.status, 503);
    synapse.stop().await;
}
