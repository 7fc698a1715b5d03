//! synapse ↔ HAProxy without reloads: the runtime API, hitless reloads under load, and
//! managed HAProxy. Real etcd, real HAProxy 2.6 (master-worker), real HTTP backends,
//! real requests through HAProxy; "no reload" is HAProxy's own reload counter and worker
//! PID (`show proc`), not synapse's word for it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    Host, InstanceId, Port, Registration, ServerOptions, ServiceName, ServicePath, Weight,
};
use etcd_client::Client;
use integration_tests::{
    eventually, free_port, http_get, init_tracing, keep_alive_loop, loopback, new_connection_loop,
    Backend, Etcd, Haproxy, HaproxyOptions, InProcessNerve, InProcessSynapse as Synapse,
    MasterSocket, Workdir,
};

const TIMEOUT: Duration = Duration::from_secs(20);

struct World {
    dir: Workdir,
    _etcd: Etcd,
    etcd_addr: SocketAddr,
    client: Client,
    prefix: String,
}

impl World {
    async fn start(test: &str) -> Self {
        init_tracing();
        let etcd = Etcd::start().await;
        let client = etcd.client().await;
        Self {
            dir: Workdir::new(),
            etcd_addr: etcd.client_addr(),
            _etcd: etcd,
            client,
            prefix: format!("/it/{test}"),
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.join(p)
    }

    fn service_path(&self) -> ServicePath {
        ServicePath::new(&format!("{}/web", self.prefix)).expect("service path")
    }

    /// A synapse config for one service `web` on `port`, with the runtime API on, the
    /// hitless settings, and `haproxy` keys appended.
    fn config(&self, port: u16, haproxy: &str) -> String {
        format!(
            r#"{{
              "services": {{"web": {{
                "discovery": {{"method": "etcd", "hosts": ["{etcd}"], "path": "{path}"}},
                "haproxy": {{"port": {port},
                             "server_options": "check inter 300ms rise 1 fall 1",
                             "listen": ["balance roundrobin", "option httpchk GET /health"]}}
              }}}},
              "debounce": 0.02,
              "debounce_max_wait": 0.2,
              "haproxy": {{
                "config_file_path": "{cfg}",
                "socket_file_path": "{stats}",
                "use_nerve_weights": true,
                "restart_interval": 0.2,
                "bind_address": "127.0.0.1",
                "server_order_seed": 1,
                "global": ["stats socket {stats} mode 600 level admin expose-fd listeners",
                           "server-state-file {state}", "hard-stop-after 10s"],
                "defaults": ["mode http", "timeout connect 1s", "timeout client 10s",
                             "timeout server 10s", "timeout http-keep-alive 10s",
                             "retries 2", "option redispatch 1",
                             "option idle-close-on-response",
                             "load-server-state-from-file global"]
                {haproxy}
              }}
            }}"#,
            etcd = self.etcd_addr,
            path = self.service_path(),
            cfg = self.path("haproxy.cfg").display(),
            stats = self.path("stats.sock").display(),
            state = self.path("server-state").display(),
        )
    }

    /// Starts HAProxy on synapse's first config, as an external HAProxy ("another
    /// container"), and links its master socket and pid file where synapse looks.
    async fn start_haproxy(&self) -> Haproxy {
        let cfg = self.path("haproxy.cfg");
        eventually(TIMEOUT, || async { cfg.exists() }).await;
        let haproxy =
            Haproxy::start(HaproxyOptions::new(&cfg).stats_socket(self.path("stats.sock"))).await;
        std::os::unix::fs::symlink(haproxy.master_socket(), self.path("master.sock"))
            .expect("link master socket");
        std::os::unix::fs::symlink(haproxy.pidfile(), self.path("haproxy.pid"))
            .expect("link pid file");
        haproxy
    }

    /// synapse with `config(port)` reloading through the master socket, and HAProxy
    /// started on its first config; returns once synapse has reloaded that HAProxy.
    async fn start_with_master_socket(&self, port: u16) -> (Synapse, Haproxy) {
        let text = self.config(
            port,
            &format!(
                r#", "reload_method": "master_socket", "master_socket_path": "{}""#,
                self.path("master.sock").display()
            ),
        );
        let synapse = Synapse::start(&text);
        let haproxy = self.start_haproxy().await;
        // synapse's first config needs one reload of the HAProxy started on it meanwhile.
        eventually(TIMEOUT, || async { synapse.get(|c| &c.reloads) >= 1 }).await;
        (synapse, haproxy)
    }

    fn key(&self, instance: &str) -> String {
        self.service_path().nerve_key(
            &InstanceId::new(instance).expect("instance id"),
            &ServiceName::new("web").expect("service name"),
            1,
        )
    }

    async fn register_with(
        &self,
        instance: &str,
        backend: &Backend,
        weight: Option<u16>,
        options: Option<&str>,
    ) {
        let reg = Registration {
            host: Host::Ip(backend.addr().ip()),
            port: Port::new(backend.port()).expect("port"),
            name: InstanceId::new(instance).expect("instance id"),
            weight: weight.map(|w| Weight::new(w).expect("weight")),
            haproxy_server_options: options.map(|o| ServerOptions::parse(o).expect("options")),
            labels: Default::default(),
        };
        self.client
            .kv_client()
            .put(self.key(instance), reg.encode(), None)
            .await
            .expect("put");
    }

    async fn register(&self, instance: &str, backend: &Backend) {
        self.register_with(instance, backend, None, None).await;
    }

    async fn deregister(&self, instance: &str) {
        self.client
            .kv_client()
            .delete(self.key(instance), None)
            .await
            .expect("delete");
    }

    fn server_lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("haproxy.cfg"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.trim_start().starts_with("server "))
            .map(|l| l.trim().to_owned())
            .collect()
    }
}

/// Backends answering `a`, `b` and `c`.
async fn three_backends() -> (Backend, Backend, Backend) {
    (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    )
}

/// The backend ids that answer `n` requests to `port`.
async fn ids_seen(port: u16, n: usize) -> Result<BTreeSet<String>, String> {
    let mut ids = BTreeSet::new();
    for _ in 0..n {
        let resp = http_get(loopback(port), "/")
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if resp.status != 200 {
            return Err(format!("status {}", resp.status));
        }
        ids.insert(resp.body.trim().to_owned());
    }
    Ok(ids)
}

/// Waits until requests to `port` reach exactly `want`.
async fn routes_to(port: u16, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    eventually(TIMEOUT, || {
        let want = want.clone();
        async move {
            let seen = ids_seen(port, 3 * want.len().max(1) + 3).await?;
            if seen == want {
                Ok(())
            } else {
                Err(format!("routed to {seen:?}, want {want:?}"))
            }
        }
    })
    .await;
}

/// HAProxy's reload count and current workers.
async fn generation(master: &MasterSocket) -> (u32, Vec<u32>) {
    // The master CLI may reset a connection while the master re-executes itself (a
    // reload, or a start still settling): ask again.
    let p = eventually(TIMEOUT, || master.show_proc()).await;
    (p.reloads, p.workers)
}

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

impl World {
    /// Puts a raw value under `instance`'s key (values the test types would refuse).
    async fn put_raw(&self, instance: &str, value: &str) {
        self.client
            .kv_client()
            .put(self.key(instance), value, None)
            .await
            .expect("put");
    }

    /// `haproxy -c` on the file synapse left on disk.
    fn file_passes_check(&self) -> Result<(), String> {
        integration_tests::haproxy::check_config(&self.path("haproxy.cfg"))
    }

    /// Records every version of haproxy.cfg (read every 5 ms) until `stop` is cancelled.
    fn record_file_versions(
        &self,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<Vec<String>> {
        let path = self.path("haproxy.cfg");
        tokio::spawn(async move {
            let mut versions: Vec<String> = Vec::new();
            while !stop.is_cancelled() {
                if let Ok(text) = std::fs::read_to_string(&path) {
                    if versions.last() != Some(&text) {
                        versions.push(text);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            versions
        })
    }
}

/// The quarantined servers of `web` in synapse's `/status`: name → HAProxy's error.
fn quarantined(synapse: &Synapse) -> std::collections::BTreeMap<String, String> {
    quarantined_in(synapse, "web")
}

/// The quarantined servers of `service` in synapse's `/status`.
fn quarantined_in(synapse: &Synapse, service: &str) -> std::collections::BTreeMap<String, String> {
    let status = synapse.counters.services.snapshot();
    status.services[service]
        .quarantined
        .iter()
        .map(|q| (q.name.clone(), q.error.clone()))
        .collect()
}

/// Issue 17, a blast radius of one: registrations HAProxy would refuse never break the
/// host. With the default config (`do_checks` unset): an out-of-range option is refused
/// by the decoder (counted), a host name HAProxy cannot resolve is quarantined (HAProxy's
/// error line in `/status`); a valid registration put after them is routed through the
/// runtime API without a reload; the file on disk passes `haproxy -c` throughout; a
/// reload and a cold restart of HAProxy from it work; fixing the value in etcd routes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_registrations_are_quarantined_and_the_rest_is_routed() {
    let w = World::start("quarantine").await;
    let port = free_port();
    let (a, b, c) = three_backends().await;
    w.register("host-a", &a).await;
    let (synapse, haproxy) = w
        .with_haproxy(port, |t| {
            t.replace(
                r#""discovery": {"method": "etcd","#,
                r#""discovery": {"method": "etcd", "allow_hostnames": true,"#,
            )
        })
        .await;
    routes_to(port, &["a"]).await;
    let before = generation(haproxy.master()).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let recorder = w.record_file_versions(stop.clone());

    // Two refused registrations, then a valid one.
    let bad_option = format!(
        r#"{{"host":"127.0.0.1","port":{},"name":"bad-option","haproxy_server_options":"check inter 0"}}"#,
        c.port()
    );
    w.put_raw("bad-option", &bad_option).await;
    let bad_dns = format!(
        r#"{{"host":"no-such-host.invalid","port":{},"name":"bad-dns"}}"#,
        c.port()
    );
    w.put_raw("bad-dns", &bad_dns).await;
    let put = tokio::time::Instant::now();
    let dns_server = format!("bad-dns_no-such-host.invalid:{}", c.port());
    eventually(TIMEOUT, || async {
        let q = quarantined(&synapse);
        match q.get(&dns_server) {
            Some(e) if e.contains("could not resolve") => Ok(()),
            _ => Err(format!("quarantined: {q:?}")),
        }
    })
    .await;
    let quarantined_after = put.elapsed();
    assert_eq!(synapse.counters.rejected().get("invalid_option"), Some(&1));
    let put = tokio::time::Instant::now();
    w.register("host-b", &b).await;
    routes_to(port, &["a", "b"]).await;
    let routed_after = put.elapsed();
    // Through the runtime API: HAProxy did not reload.
    assert_eq!(generation(haproxy.master()).await, before);
    // Reported: the metric, labelled by service.
    let summary = synapse.counters.services.summaries();
    assert_eq!(summary[0].quarantined, 1, "{summary:?}");
    // The file on disk holds the valid servers only (written right after the runtime
    // pass) and passes the check.
    eventually(TIMEOUT, || async { w.server_lines().len() == 2 }).await;
    w.file_passes_check()
        .expect("haproxy -c on the file on disk");
    let lines = w.server_lines();
    assert!(!lines.iter().any(|l| l.contains("bad-")), "{lines:?}");
    // A reload and a cold restart from that file work.
    haproxy.reload().await.expect("reload");
    routes_to(port, &["a", "b"]).await;
    haproxy.stop().await;
    let _ = std::fs::remove_file(w.path("master.sock"));
    let _ = std::fs::remove_file(w.path("haproxy.pid"));
    let haproxy = w.start_haproxy().await;
    routes_to(port, &["a", "b"]).await;

    // Fixing the values in etcd routes them.
    w.put_raw(
        "bad-dns",
        &bad_dns.replace("no-such-host.invalid", "127.0.0.1"),
    )
    .await;
    w.put_raw("bad-option", &bad_option.replace("inter 0", "inter 300ms"))
        .await;
    let fixed = tokio::time::Instant::now();
    routes_to(port, &["a", "b", "c"]).await;
    println!(
        "quarantine: quarantined {quarantined_after:?} after the put, next valid one routed \
         {routed_after:?} after its put (0 reloads), fixed value routed {:?} after its put; \
         check failures {}",
        fixed.elapsed(),
        synapse.get(|c| &c.check_failures)
    );
    eventually(TIMEOUT, || async { quarantined(&synapse).is_empty() }).await;
    w.file_passes_check()
        .expect("haproxy -c on the file on disk");
    // No version of the file synapse wrote meanwhile fails the check.
    stop.cancel();
    let versions = recorder.await.expect("recorder");
    for (i, text) in versions.iter().enumerate() {
        let copy = w.path(&format!("version-{i}.cfg"));
        std::fs::write(&copy, text).expect("copy");
        if let Err(e) = integration_tests::haproxy::check_config(&copy) {
            panic!("version {i} of haproxy.cfg fails haproxy -c: {e}\n{text}");
        }
    }
    println!(
        "quarantine: {} versions of haproxy.cfg, all pass haproxy -c",
        versions.len()
    );
    assert!(synapse.is_running());
    drop(haproxy);
    synapse.stop().await;
}

/// Issue 17: with `do_checks` unset, the operator's own lines breaking the check (the
/// `errorfile` the defaults name disappears) keep the last good file on disk, and
/// traffic flows: a new server still goes in through the runtime API. Once the file is
/// back, the new render is written, and it passes `haproxy -c`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_lines_breaking_the_check_keep_the_last_good_file() {
    let w = World::start("operator").await;
    let port = free_port();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    let errorfile = w.path("503.http");
    let page = "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain\r\n\r\ndown\n";
    std::fs::write(&errorfile, page).expect("errorfile");
    w.register("host-a", &a).await;
    let (synapse, haproxy) = w
        .with_haproxy(port, |t| {
            t.replace(
                r#""retries 2","#,
                &format!(r#""retries 2", "errorfile 503 {}","#, errorfile.display()),
            )
        })
        .await;
    routes_to(port, &["a"]).await;
    let good = std::fs::read_to_string(w.path("haproxy.cfg")).expect("file");

    std::fs::remove_file(&errorfile).expect("remove errorfile");
    let checks = synapse.get(|c| &c.check_failures);
    w.register("host-b", &b).await;
    eventually(TIMEOUT, || async {
        synapse.get(|c| &c.check_failures) > checks
    })
    .await;
    routes_to(port, &["a", "b"]).await;
    assert_eq!(
        std::fs::read_to_string(w.path("haproxy.cfg")).expect("file"),
        good,
        "a file that fails the check was written"
    );
    // Nobody is blamed for the operator's lines.
    assert!(quarantined(&synapse).is_empty());

    let failed_checks = synapse.get(|c| &c.check_failures) - checks;
    std::fs::write(&errorfile, page).expect("errorfile");
    let back = tokio::time::Instant::now();
    eventually(TIMEOUT, || async { w.server_lines().len() == 2 }).await;
    println!(
        "operator lines: {failed_checks} failed checks, file unchanged, b routed meanwhile; \
         written {:?} after the errorfile returned",
        back.elapsed()
    );
    w.file_passes_check()
        .expect("haproxy -c on the file on disk");
    routes_to(port, &["a", "b"]).await;
    assert!(synapse.is_running());
    drop(haproxy);
    synapse.stop().await;
}

// === the mass-removal guard, on with its defaults (issue 17) ===

/// The nerves' lease TTL in the guard tests.
const NERVE_TTL: Duration = Duration::from_secs(3);

impl World {
    /// A nerve registering `backend` as `host-<id>` under `web`, checking its `/health`.
    fn nerve(&self, id: &str, backend: &Backend) -> InProcessNerve {
        let config = serde_json::json!({
            "instance_id": format!("host-{id}"),
            "etcd": {"endpoints": [format!("http://{}", self.etcd_addr)],
                     "dial_timeout": 1, "request_timeout": 1},
            "lease_ttl": NERVE_TTL.as_secs(),
            "reconcile_interval": 2,
            "shutdown_timeout": 2,
            "services": {"web": {
                "host": "127.0.0.1", "port": backend.port(), "reporter_type": "etcd",
                "etcd_path": self.service_path().as_str(), "check_interval": 0.25,
                "checks": [{"type": "http", "uri": "/health", "timeout": 0.2,
                            "rise": 1, "fall": 3}],
            }},
        });
        InProcessNerve::start(&config.to_string())
    }

    /// A synapse (defaults: the guard on, checks on) reloading through the master CLI,
    /// its config text passed through `tweak` first; and HAProxy on its first file.
    async fn with_haproxy(
        &self,
        port: u16,
        tweak: impl FnOnce(String) -> String,
    ) -> (Synapse, Haproxy) {
        let text = self.config(
            port,
            &format!(
                r#", "reload_method": "master_socket", "master_socket_path": "{}""#,
                self.path("master.sock").display()
            ),
        );
        let synapse = Synapse::start(&tweak(text));
        let haproxy = self.start_haproxy().await;
        eventually(TIMEOUT, || async { synapse.get(|c| &c.reloads) >= 1 }).await;
        (synapse, haproxy)
    }

    /// Registers `n` instances `i-NN` on the ports of `backends` (round robin), in one
    /// transaction.
    async fn register_many(&self, names: std::ops::Range<usize>, backends: &[&Backend]) {
        let ops: Vec<etcd_client::TxnOp> = names
            .map(|i| {
                let b = backends[i % backends.len()];
                let value = format!(
                    r#"{{"host":"127.0.0.1","port":{},"name":"i-{i:02}"}}"#,
                    b.port()
                );
                etcd_client::TxnOp::put(self.key(&format!("i-{i:02}")), value, None)
            })
            .collect();
        self.client
            .kv_client()
            .txn(etcd_client::Txn::new().and_then(ops))
            .await
            .expect("txn");
    }

    /// HAProxy's servers of `web`, by name.
    async fn live_servers(haproxy: &Haproxy) -> BTreeSet<String> {
        haproxy
            .show_servers_state("web")
            .await
            .map(|s| s.into_iter().map(|s| s.name).collect())
            .unwrap_or_default()
    }
}

/// A 3-instance service: one nerve stopped cleanly (SIGTERM), another killed (SIGKILL)
/// 2 s later. Both removals are applied as they come (the second when its key expires),
/// not held: 2 of 3 is under the guard's minimum of 3 servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_three_nerves_leaving_within_seconds_are_unrouted_at_once() {
    let w = World::start("guard-2of3").await;
    let port = free_port();
    let (a, b, c) = three_backends().await;
    let (na, nb, _nc) = (w.nerve("a", &a), w.nerve("b", &b), w.nerve("c", &c));
    let (synapse, _haproxy) = w.with_haproxy(port, |t| t).await;
    routes_to(port, &["a", "b", "c"]).await;

    let stopped = tokio::time::Instant::now();
    na.terminate().await;
    routes_to(port, &["b", "c"]).await;
    let a_unrouted = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(stopped.elapsed())).await;
    let killed = tokio::time::Instant::now();
    nb.kill();
    // b's backend still answers: only its key's expiry takes it out.
    routes_to(port, &["c"]).await;
    let b_unrouted = killed.elapsed();
    assert_eq!(synapse.get(|c| &c.mass_removal_trips), 0);
    assert!(
        a_unrouted < Duration::from_secs(5),
        "a unrouted after {a_unrouted:?}"
    );
    // Key expiry (TTL, and etcd's lease check) plus the apply; a held removal would take
    // the guard's 30 s hold.
    assert!(
        b_unrouted < NERVE_TTL + Duration::from_secs(8),
        "b unrouted {b_unrouted:?} after the kill"
    );
    println!(
        "guard 2 of 3: a unrouted {a_unrouted:?} after SIGTERM, b {b_unrouted:?} after SIGKILL"
    );
    synapse.stop().await;
}

/// 3 stable servers, and a canary added and deleted again every 2.5 s, 8 times: every
/// deletion is applied (the guard counts losses against the stable set only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_churn_never_trips_the_guard() {
    let w = World::start("guard-churn").await;
    let port = free_port();
    let (a, b, c, canary) = (
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
        Backend::start("canary").await,
    );
    w.register("host-a", &a).await;
    w.register("host-b", &b).await;
    w.register("host-c", &c).await;
    let (synapse, haproxy) = w.with_haproxy(port, |t| t).await;
    routes_to(port, &["a", "b", "c"]).await;
    let mut slowest = Duration::ZERO;
    for i in 0..8 {
        let name = format!("canary-{i}");
        w.register(&name, &canary).await;
        let server = format!("{name}_127.0.0.1:{}", canary.port());
        eventually(TIMEOUT, || async {
            World::live_servers(&haproxy).await.contains(&server)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1250)).await;
        let deleted = tokio::time::Instant::now();
        w.deregister(&name).await;
        eventually(TIMEOUT, || async {
            !World::live_servers(&haproxy).await.contains(&server)
                && !w.server_lines().iter().any(|l| l.contains(&server))
        })
        .await;
        slowest = slowest.max(deleted.elapsed());
        tokio::time::sleep(Duration::from_millis(1250).saturating_sub(deleted.elapsed())).await;
    }
    assert_eq!(synapse.get(|c| &c.mass_removal_trips), 0);
    // Held, a deletion would wait the 30 s hold.
    assert!(
        slowest < Duration::from_secs(5),
        "slowest deletion {slowest:?}"
    );
    println!("guard churn: 8 add/delete cycles, slowest deletion applied in {slowest:?}");
    routes_to(port, &["a", "b", "c"]).await;
    synapse.stop().await;
}

/// A registry wipe is held: 20 of 24 servers deleted at once stay routed (the guard
/// trips once and holds), and so do the last servers of a prefix emptied
/// (`use_previous_backends`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_wipe_is_held() {
    let w = World::start("guard-wipe").await;
    let port = free_port();
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    w.register_many(0..24, &[&a, &b]).await;
    let (synapse, haproxy) = w.with_haproxy(port, |t| t).await;
    eventually(TIMEOUT, || async {
        World::live_servers(&haproxy).await.len() == 24
    })
    .await;

    // 20 of 24 in one transaction.
    let ops: Vec<etcd_client::TxnOp> = (0..20)
        .map(|i| etcd_client::TxnOp::delete(w.key(&format!("i-{i:02}")), None))
        .collect();
    w.client
        .kv_client()
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .expect("txn");
    let wiped = tokio::time::Instant::now();
    // The trip is counted as it happens; the holding gauge is set by the apply that
    // keeps the last good set, a moment after.
    eventually(TIMEOUT, || async {
        synapse.get(|c| &c.mass_removal_trips) == 1 && synapse.get(|c| &c.mass_removal_holding) == 1
    })
    .await;
    // Still held 5 s later: HAProxy has every server, and routes to both backends.
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(wiped.elapsed())).await;
    assert_eq!(World::live_servers(&haproxy).await.len(), 24);
    routes_to(port, &["a", "b"]).await;

    // The whole prefix emptied: the last set stays (with the guard holding meanwhile).
    let ops: Vec<etcd_client::TxnOp> = (20..24)
        .map(|i| etcd_client::TxnOp::delete(w.key(&format!("i-{i:02}")), None))
        .collect();
    w.client
        .kv_client()
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .expect("txn");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(World::live_servers(&haproxy).await.len() >= 4);
    routes_to(port, &["a", "b"]).await;
    println!(
        "guard wipe: tripped once, 24 of 24 still routed {:?} after the wipe",
        wiped.elapsed()
    );
    synapse.stop().await;
}

/// Issue 17, every source: a static `default_servers` entry HAProxy refuses (a host name
/// that does not resolve) is quarantined like a registration; the service's other static
/// server and the etcd service are routed, and the file passes `haproxy -c`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_server_haproxy_refuses_is_quarantined() {
    let w = World::start("quarantine-static").await;
    let (port, static_port) = (free_port(), free_port());
    let (a, b) = (Backend::start("a").await, Backend::start("b").await);
    w.register("host-a", &a).await;
    let (synapse, _haproxy) = w
        .with_haproxy(port, |t| {
            t.replace(
                r#""services": {"web": {"#,
                &format!(
                    r#""services": {{"static": {{"discovery": {{"method": "base"}},
                       "default_servers": [
                         {{"name": "good", "host": "127.0.0.1", "port": {}}},
                         {{"name": "bad", "host": "no-such-host.invalid", "port": 80}}],
                       "haproxy": {{"port": {static_port}}}}},
                       "web": {{"#,
                    b.port()
                ),
            )
        })
        .await;
    routes_to(port, &["a"]).await;
    routes_to(static_port, &["b"]).await;
    eventually(TIMEOUT, || async {
        let q = quarantined_in(&synapse, "static");
        match q.get("bad_no-such-host.invalid:80") {
            Some(e) if e.contains("could not resolve") => Ok(()),
            _ => Err(format!("quarantined: {q:?}")),
        }
    })
    .await;
    w.file_passes_check()
        .expect("haproxy -c on the file on disk");
    assert!(synapse.is_running());
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
